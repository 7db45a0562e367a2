"""A small CNN trained on scikit-learn's 8x8 handwritten digits, in pure NumPy (test helper).

The digits (1797 images, 8x8, grey levels 0..16) ship inside scikit-learn's package, so no
download is needed. Images are scaled to [-1, 1] (``x / 8 - 1``); the first
:data:`N_TRAIN` images train, the rest (397) test.

Network (MobileNet-style, every layer an :mod:`hwgen.ir` node):

==========  ===============================  ===========
node        op                               output
==========  ===============================  ===========
conv1       Conv2d 3x3/1 pad 1, 1 -> 16, ReLU  (16, 8, 8)
dw2         depthwise 3x3/2 pad 1, ReLU        (16, 4, 4)
pw2         pointwise 1x1, 16 -> 32, ReLU      (32, 4, 4)
fc          FullyConnected 512 -> 10           (10, 1, 1)
==========  ===============================  ===========

Training: He-normal init from a fixed seed, Adam (lr 5e-3 with cosine decay, batch 32,
40 epochs, random one-pixel shifts), softmax cross-entropy; forward and backward written
with NumPy slicing over the kernel positions (no Python loop over pixels). Deterministic
for a given NumPy/BLAS; about 5 s on one core; float test accuracy 96 % (381/397).
"""
from __future__ import annotations

import numpy as np

from hwgen import ir

N_TRAIN = 1400
CLASSES = 10


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 images (N, 1, 8, 8) in [-1, 1] and int labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images.astype(np.float32) / np.float32(8.0) - np.float32(1.0))[:, None]
    y = d.target.astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


# --- layers (forward returns a cache for backward) ----------------------------------------

def _pad(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x


def conv_forward(x, w, b, stride, pad, depthwise):
    """x (N, C, H, W), w (O, C or 1, k, k) -> (N, O, OH, OW)."""
    n, c, h, wd = x.shape
    k = w.shape[2]
    xp = _pad(x, pad)
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    y = np.zeros((n, w.shape[0], oh, ow), np.result_type(x, w))
    for i in range(k):
        for j in range(k):
            xs = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            if depthwise:
                y += xs * w[None, :, 0, i, j, None, None]
            else:
                y += np.einsum("nchw,oc->nohw", xs, w[:, :, i, j], optimize=True)
    return y + b[None, :, None, None]


def conv_backward(dy, x, w, stride, pad, depthwise):
    """Gradients (dx, dw, db) of :func:`conv_forward`."""
    k = w.shape[2]
    xp = _pad(x, pad)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    oh, ow = dy.shape[2:]
    for i in range(k):
        for j in range(k):
            sl = (slice(None), slice(None), slice(i, i + stride * oh, stride),
                  slice(j, j + stride * ow, stride))
            xs = xp[sl]
            if depthwise:
                dw[:, 0, i, j] = np.sum(dy * xs, axis=(0, 2, 3))
                dxp[sl] += dy * w[None, :, 0, i, j, None, None]
            else:
                dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dy, xs, optimize=True)
                dxp[sl] += np.einsum("nohw,oc->nchw", dy, w[:, :, i, j], optimize=True)
    dx = dxp[:, :, pad:dxp.shape[2] - pad, pad:dxp.shape[3] - pad] if pad else dxp
    return dx, dw, dy.sum(axis=(0, 2, 3))


# layer table: name, kind, (out, in per group, k), stride, pad
LAYERS = [
    ("conv1", "conv", (16, 1, 3), 1, 1),
    ("dw2", "dw", (16, 1, 3), 2, 1),
    ("pw2", "conv", (32, 16, 1), 1, 0),
]
FC_IN = 32 * 4 * 4


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = {}
    for name, _, (o, i, k), _, _ in LAYERS:
        p[name + ".w"] = rng.normal(0, np.sqrt(2.0 / (i * k * k)), (o, i, k, k)).astype(np.float32)
        p[name + ".b"] = np.zeros(o, np.float32)
    p["fc.w"] = rng.normal(0, np.sqrt(1.0 / FC_IN), (CLASSES, FC_IN)).astype(np.float32)
    p["fc.b"] = np.zeros(CLASSES, np.float32)
    return p


def forward(p, x, keep: bool = False):
    """Logits (N, 10); with ``keep`` also the per-layer caches for :func:`backward`."""
    caches = []
    for name, kind, _, stride, pad in LAYERS:
        z = conv_forward(x, p[name + ".w"], p[name + ".b"], stride, pad, kind == "dw")
        caches.append((name, kind, stride, pad, x, z))
        x = np.maximum(z, 0)
    flat = x.reshape(len(x), -1)
    logits = flat @ p["fc.w"].T + p["fc.b"]
    return (logits, caches, flat) if keep else logits


def backward(p, caches, flat, dlogits):
    g = {"fc.w": dlogits.T @ flat, "fc.b": dlogits.sum(0)}
    dx = (dlogits @ p["fc.w"]).reshape(len(flat), 32, 4, 4)
    for name, kind, stride, pad, x, z in reversed(caches):
        dz = dx * (z > 0)
        dx, g[name + ".w"], g[name + ".b"] = conv_backward(dz, x, p[name + ".w"], stride, pad,
                                                           kind == "dw")
    return g


def train(x, y, epochs: int = 40, batch: int = 32, lr: float = 5e-3, seed: int = 0):
    """Adam on softmax cross-entropy, cosine learning-rate decay, each epoch's images shifted
    by a random -1..1 pixel in each direction (background fill). Returns the parameter dict."""
    p = init_params(seed)
    rng = np.random.default_rng(seed + 1)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(a) for k, a in p.items()}
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    h, w = x.shape[2:]
    for ep in range(epochs):
        shift = rng.integers(0, 3, (len(x), 2))
        xa = np.stack([xp[i, :, a:a + h, c:c + w] for i, (a, c) in enumerate(shift)])
        lr_ep = lr * 0.5 * (1 + np.cos(np.pi * ep / epochs))
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            idx = order[s:s + batch]
            logits, caches, flat = forward(p, xa[idx], keep=True)
            e = np.exp(logits - logits.max(1, keepdims=True))
            prob = e / e.sum(1, keepdims=True)
            prob[np.arange(len(idx)), y[idx]] -= 1
            grads = backward(p, caches, flat, (prob / len(idx)).astype(np.float32))
            t += 1
            for k, gk in grads.items():
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                mh = m[k] / (1 - b1 ** t)
                vh = v[k] / (1 - b2 ** t)
                p[k] = (p[k] - lr_ep * mh / (np.sqrt(vh) + eps)).astype(np.float32)
    return p


def to_graph(p: dict[str, np.ndarray]) -> ir.Graph:
    """The trained network as an :class:`hwgen.ir.Graph` (input "input" (1, 8, 8), logits "fc")."""
    nodes, x = [], "input"
    for name, kind, (o, _, k), stride, pad in LAYERS:
        nodes.append(ir.Conv2d(name=name, inputs=(x,), output=name, out_channels=o, kernel=k,
                               stride=stride, padding=pad, groups=o if kind == "dw" else 1,
                               act=ir.Act.RELU, weight=p[name + ".w"], bias=p[name + ".b"]))
        x = name
    nodes.append(ir.FullyConnected(name="fc", inputs=(x,), output="fc", out_features=CLASSES,
                                   weight=p["fc.w"], bias=p["fc.b"]))
    return ir.Graph("digits_cnn", {"input": (1, 8, 8)}, ("fc",), tuple(nodes))


def trained_digits(seed: int = 0, epochs: int = 40):
    """Train on the first :data:`N_TRAIN` digits. Returns (graph, x_train, y_train, x_test,
    y_test, float test accuracy from this module's own forward pass)."""
    xtr, ytr, xte, yte = load_digits_split()
    p = train(xtr, ytr, epochs=epochs, seed=seed)
    acc = float(np.mean(forward(p, xte).argmax(1) == yte))
    return to_graph(p), xtr, ytr, xte, yte, acc
