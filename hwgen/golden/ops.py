"""Integer reference of every op, bit-exact with onnxruntime's integer kernels.

All tensors are NumPy arrays of shape (N, C, H, W); activations are int8. Each function
matches one onnxruntime (1.32, x86-64 AVX2) kernel element for element:

=====================  ===============================================================
function               onnxruntime kernel
=====================  ===============================================================
conv2d, conv2d_acc     QLinearConv (per-channel int8 weights, int32 bias)
fully_connected        QLinearConv 1x1 / QGemm (same requantisation)
maxpool                MaxPool (int8/uint8)
avgpool                com.microsoft QLinearAveragePool
global_avgpool         com.microsoft QLinearGlobalAveragePool
add                    com.microsoft QLinearAdd
concat, rescale        com.microsoft QLinearConcat (lookup table per input)
channel_shuffle/slice  Reshape-Transpose-Reshape / Split, Slice (pure data movement)
=====================  ===============================================================

The arithmetic of each is written out in docs/arithmetic.md. Loops run over kernel taps
only; every tap is one vectorised NumPy operation over all pixels. Integer sums are formed
in float64 (exact below 2**53, and BLAS-fast), then converted to int32.
"""
from __future__ import annotations

import numpy as np

from ..ir import pool_out_size
from . import arith

__all__ = [
    "conv2d_acc", "conv2d", "fully_connected", "maxpool", "avgpool", "global_avgpool", "add",
    "rescale", "concat", "channel_shuffle", "channel_slice", "pads4", "pair", "avgpool_int",
]


def pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def pads4(v) -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right); an int or a (ph, pw) pair is symmetric."""
    if isinstance(v, (int, np.integer)):
        return (int(v),) * 4
    v = tuple(int(i) for i in v)
    if len(v) == 2:
        return (v[0], v[1], v[0], v[1])
    if len(v) != 4:
        raise ValueError(f"padding must be an int, a pair or (top, left, bottom, right), got {v!r}")
    return v


def _check4(x, name="x"):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {x.shape}")
    return x


def _i8(x, name="x"):
    x = _check4(x, name)
    if x.dtype != np.int8:
        raise TypeError(f"{name} must be int8, got {x.dtype}")
    return x


def conv_taps(xp: np.ndarray, wf: np.ndarray, stride, out_hw, groups: int) -> np.ndarray:
    """sum over taps of the padded float64 input ``xp`` (N, C, Hp, Wp) times ``wf``
    (O, C/groups, kh, kw): float64 (N, O, OH, OW). Exact for int8 data (sums < 2**53); shared
    by the integer conv (on x - x_zp) and the float reference."""
    n, c = xp.shape[:2]
    o, cg, kh, kw = wf.shape
    (sh, sw), (oh, ow) = stride, out_hw
    og = o // groups
    acc = np.zeros((n, o, oh, ow), np.float64)
    depthwise = cg == 1 and groups == c
    for i, j, v in _taps(xp, kh, kw, sh, sw, oh, ow):
        if depthwise:
            # output channel k reads input channel k // og (channel multiplier og)
            src = v if og == 1 else np.repeat(v, og, axis=1)
            acc += src * wf[:, 0, i, j][None, :, None, None]
        elif groups == 1:
            # one BLAS GEMM (float64: exact) per tap: (O, C) @ (C, N*OH*OW)
            cols = v.transpose(1, 0, 2, 3).reshape(c, -1)
            acc += (wf[:, :, i, j] @ cols).reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
        else:
            vg = v.reshape(n, groups, cg, oh * ow)
            wg = wf[:, :, i, j].reshape(groups, og, cg)
            acc += np.matmul(wg[None], vg).reshape(n, o, oh, ow)
    return acc


def _taps(xp, kh, kw, sh, sw, oh, ow):
    """Yield (i, j, view) for every kernel tap: view[n, c, y, x] = xp[n, c, y*sh+i, x*sw+j]."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


# --- convolution ---------------------------------------------------------------------

def conv2d_acc(x, x_zp: int, w, bias=None, stride=1, padding=0, groups: int = 1) -> np.ndarray:
    """int32 accumulators of a (group) convolution: ``sum((x - x_zp) * w) + bias``.

    Parameters
    ----------
    x: int8 (N, C, H, W). x_zp: input zero point; padding cells hold ``x_zp`` and so add 0.
    w: int8 (O, C/groups, kh, kw). bias: int32 (O,) or None.
    stride: int or (sh, sw). padding: int, (ph, pw) or (top, left, bottom, right).

    Returns
    -------
    int32 (N, O, OH, OW), exact (onnxruntime accumulates in int32 the same sums).
    """
    x = _i8(x)
    w = np.asarray(w)
    if w.ndim != 4 or w.dtype != np.int8:
        raise TypeError(f"weight must be int8 (O, C/groups, kh, kw), got {w.dtype} {w.shape}")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if c % groups or o % groups or cg != c // groups:
        raise ValueError(f"weight {w.shape} does not fit input channels {c} in {groups} groups")
    sh, sw = pair(stride)
    t, l, b, r = pads4(padding)
    oh = pool_out_size(h, kh, sh, t, b)
    ow = pool_out_size(wd, kw, sw, l, r)
    if oh < 1 or ow < 1:
        raise ValueError(f"input {h}x{wd} smaller than kernel {kh}x{kw} with padding {(t, l, b, r)}")
    xp = np.zeros((n, c, h + t + b, wd + l + r), np.float64)
    xp[:, :, t:t + h, l:l + wd] = x.astype(np.float64) - float(x_zp)
    out = conv_taps(xp, w.astype(np.float64), (sh, sw), (oh, ow), groups).astype(np.int64)
    if bias is not None:
        out += np.asarray(bias, np.int64)[None, :, None, None]
    return out.astype(np.int32)  # int32 wrap-around, as onnxruntime's accumulator


def conv2d(x, x_zp: int, w, bias, scale, y_zp: int, stride=1, padding=0, groups: int = 1,
           lo: int = -128, hi: int = 127) -> np.ndarray:
    """QLinearConv: :func:`conv2d_acc`, then ``requantize`` with the per-channel float32
    ``scale`` (from :func:`arith.conv_scale`), output zero point and clamp [lo, hi]."""
    acc = conv2d_acc(x, x_zp, w, bias, stride, padding, groups)
    s = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (acc.shape[1],))
    return arith.requantize(acc, s[None, :, None, None], y_zp, lo, hi)


def fully_connected(x, x_zp: int, w, bias, scale, y_zp: int, lo: int = -128,
                    hi: int = 127) -> np.ndarray:
    """Dense layer on the flattened (C*H*W) input; output (N, O, 1, 1). Same arithmetic as
    a 1x1 QLinearConv: int32 ``sum((x - x_zp) * w) + bias``, float32 requantisation."""
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise TypeError(f"x must be int8, got {x.dtype}")
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.float64) - float(x_zp)
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[1] != flat.shape[1]:
        raise ValueError(f"weight {w.shape} does not match {flat.shape[1]} input features")
    acc = (flat @ w.astype(np.float64).T).astype(np.int64)
    if bias is not None:
        acc += np.asarray(bias, np.int64)[None, :]
    acc = acc.astype(np.int32)
    s = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (w.shape[0],))
    return arith.requantize(acc, s[None, :], y_zp, lo, hi).reshape(n, -1, 1, 1)


# --- pooling ---------------------------------------------------------------------------

def _pool_geometry(x, kernel, stride, padding, ceil_mode):
    n, c, h, w = x.shape
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    t, l, b, r = pads4(padding)
    oh = pool_out_size(h, kh, sh, t, b, ceil_mode)
    ow = pool_out_size(w, kw, sw, l, r, ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"input {h}x{w} is smaller than the pooling window {kh}x{kw}")
    # padded canvas large enough for every window (ceil mode may run past the padding)
    ph = max(h + t + b, (oh - 1) * sh + kh)
    pw = max(w + l + r, (ow - 1) * sw + kw)
    return (kh, kw), (sh, sw), (t, l), (oh, ow), (ph, pw)


def maxpool(x, kernel, stride, padding=0, ceil_mode: bool = False) -> np.ndarray:
    """MaxPool on int8: padding cells never win (they are -inf in ONNX)."""
    x = _i8(x)
    (kh, kw), (sh, sw), (t, l), (oh, ow), (ph, pw) = _pool_geometry(x, kernel, stride, padding, ceil_mode)
    n, c, h, w = x.shape
    xp = np.full((n, c, ph, pw), -129, np.int16)
    xp[:, :, t:t + h, l:l + w] = x
    out = np.full((n, c, oh, ow), -129, np.int16)
    for _, _, v in _taps(xp, kh, kw, sh, sw, oh, ow):
        np.maximum(out, v, out=out)
    return out.astype(np.int8)


def avgpool(x, x_scale: float, x_zp: int, y_scale: float, y_zp: int, kernel, stride,
            padding=0, ceil_mode: bool = False, count_include_pad: bool = False,
            lo: int = -128, hi: int = 127, offset: int = 0) -> np.ndarray:
    """com.microsoft QLinearAveragePool.

    onnxruntime dequantises every input ``d = float32(x_scale * float(x - x_zp))``, sums the
    window's cells inside the input in float32 (row by row, left to right, from 0.0),
    divides by the count (``kh*kw`` with count_include_pad, else the cells inside the
    input) in float32, and quantises ``clamp(rne(float32(sum / y_scale) + float(y_zp)))``,
    the zero point added in float32 *before* rounding. The zero point in that sum is the
    stored one, so ``offset`` = 128 reproduces the uint8 form of a model (values and zero
    points stored +128).

    A window equal to the whole input with no padding runs onnxruntime's global-average
    kernel instead (:func:`global_avgpool`), as onnxruntime does.
    """
    x = _i8(x)
    n, c, h, w = x.shape
    kh, kw = pair(kernel)
    if (kh, kw) == (h, w) and pads4(padding) == (0, 0, 0, 0):
        return global_avgpool(x, x_scale, x_zp, y_scale, y_zp, lo, hi)
    (kh, kw), (sh, sw), (t, l), (oh, ow), (ph, pw) = _pool_geometry(x, kernel, stride, padding, ceil_mode)
    d = (np.float32(x_scale) * (x.astype(np.int32) - int(x_zp)).astype(np.float32)).astype(np.float32)
    dp = np.zeros((n, c, ph, pw), np.float32)
    dp[:, :, t:t + h, l:l + w] = d
    acc = np.zeros((n, c, oh, ow), np.float32)
    for _, _, v in _taps(dp, kh, kw, sh, sw, oh, ow):
        acc += v                                  # padding adds +0.0: exact no-op
    if count_include_pad:
        cnt = np.full((oh, ow), kh * kw, np.float32)
    else:
        hs = np.arange(oh) * sh - t
        ws = np.arange(ow) * sw - l
        ch = np.minimum(hs + kh, h) - np.maximum(hs, 0)
        cw = np.minimum(ws + kw, w) - np.maximum(ws, 0)
        cnt = (ch[:, None] * cw[None, :]).astype(np.float32)
    mean = (acc / cnt).astype(np.float32)
    q = ((mean / np.float32(y_scale)).astype(np.float32) + np.float32(int(y_zp) + offset)).astype(np.float32)
    q = np.clip(q, np.float32(-2.0**30), np.float32(2.0**30))
    y = np.clip(np.rint(q).astype(np.int64), -128 + offset, 127 + offset) - offset
    return np.clip(y, lo, hi).astype(np.int8)


def avgpool_int(x, x_scale: float, x_zp: int, y_scale: float, y_zp: int, kernel, stride,
                padding=0, ceil_mode: bool = False, count_include_pad: bool = False,
                lo: int = -128, hi: int = 127, offset: int = 0) -> np.ndarray:
    """:func:`avgpool` computed with integer operations only (:func:`arith.avg_window_int`),
    the datapath a hardware average-pool lane implements. Bit-exact with :func:`avgpool`."""
    x = _i8(x)
    n, c, h, w = x.shape
    kh, kw = pair(kernel)
    if (kh, kw) == (h, w) and pads4(padding) == (0, 0, 0, 0):
        return global_avgpool(x, x_scale, x_zp, y_scale, y_zp, lo, hi)
    (kh, kw), (sh, sw), (t, l), (oh, ow), (ph, pw) = _pool_geometry(x, kernel, stride, padding, ceil_mode)
    dp = np.zeros((n, c, ph, pw), np.int64)
    dp[:, :, t:t + h, l:l + w] = x.astype(np.int64) - int(x_zp)
    vp = np.zeros((n, c, ph, pw), bool)
    vp[:, :, t:t + h, l:l + w] = True
    diffs = np.stack([v for _, _, v in _taps(dp, kh, kw, sh, sw, oh, ow)])
    valid = np.stack([v for _, _, v in _taps(vp, kh, kw, sh, sw, oh, ow)])
    if count_include_pad:
        cnt = np.full((oh, ow), kh * kw, np.int64)
    else:
        hs = np.arange(oh) * sh - t
        ws = np.arange(ow) * sw - l
        cnt = ((np.minimum(hs + kh, h) - np.maximum(hs, 0))[:, None]
               * (np.minimum(ws + kw, w) - np.maximum(ws, 0))[None, :])
    q = arith.avg_window_int(diffs, valid, cnt, x_scale, y_scale, int(y_zp) + offset)
    y = np.clip(q, -128 + offset, 127 + offset) - offset
    return np.clip(y, lo, hi).astype(np.int8)


def global_avgpool(x, x_scale: float, x_zp: int, y_scale: float, y_zp: int, lo: int = -128,
                   hi: int = 127) -> np.ndarray:
    """com.microsoft QLinearGlobalAveragePool: integer sum, then one float32 scale.

    ``acc = sum(x) - x_zp * H*W`` (int32), ``scale = float32(x_scale / float32(y_scale *
    H*W))``, ``y = clamp(rne(float32(acc) * scale) + y_zp)``: the conv requantisation
    (so :func:`arith.requantize_int` is its integer datapath). Output (N, C, 1, 1).
    """
    x = _i8(x)
    n, c, h, w = x.shape
    s = arith.gavg_scale(x_scale, y_scale, h * w)
    acc = x.astype(np.int64).sum(axis=(2, 3), keepdims=True) - int(x_zp) * h * w
    return arith.requantize(acc.astype(np.int32), s, y_zp, lo, hi)


# --- element-wise ------------------------------------------------------------------------

def add(a, a_scale: float, a_zp: int, b, b_scale: float, b_zp: int, y_scale: float, y_zp: int,
        lo: int = -128, hi: int = 127, offset: int = 0) -> np.ndarray:
    """com.microsoft QLinearAdd as onnxruntime's AVX2 kernel computes it.

    ``rA = float32(a_scale / y_scale)``, ``rB = float32(b_scale / y_scale)``,
    ``F = float32(y_zp - (rA*a_zp + rB*b_zp))`` (see :func:`arith.add_fixed_part`),
    ``y = sat(rne(fma(a, rA, fma(b, rB, F))))`` on the *stored* integers. Because the
    stored values (not ``a - a_zp``) enter the float arithmetic, a uint8 model (values and
    zero points stored +128) rounds differently: pass ``offset=128`` to reproduce it.
    ``lo``/``hi`` clamp the int8 result afterwards (fused ReLU).
    """
    a = _i8(a, "a")
    b = _i8(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"add inputs differ in shape: {a.shape} vs {b.shape}")
    ra = np.float32(np.float32(a_scale) / np.float32(y_scale))
    rb = np.float32(np.float32(b_scale) / np.float32(y_scale))
    fixed = arith.add_fixed_part(ra, rb, int(a_zp) + offset, int(b_zp) + offset, int(y_zp) + offset)
    y = arith.add_f32(a.astype(np.int32) + offset, b.astype(np.int32) + offset, ra, rb, fixed,
                      -128 + offset, 127 + offset) - offset
    return np.clip(y, lo, hi).astype(np.int8)


def rescale(x, x_scale: float, x_zp: int, y_scale: float, y_zp: int) -> np.ndarray:
    """Requantise an int8 tensor to other qparams through QLinearConcat's 256-entry table."""
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise TypeError(f"x must be int8, got {x.dtype}")
    lut = arith.rescale_lut(x_scale, x_zp, y_scale, y_zp)
    return lut[x.astype(np.int32) + 128]


def concat(inputs, y_scale: float, y_zp: int, lo: int = -128, hi: int = 127) -> np.ndarray:
    """com.microsoft QLinearConcat on the channel axis.

    ``inputs``: sequence of ``(x, x_scale, x_zp)``. An input whose float32 scale and zero
    point equal the output's is copied; any other goes through :func:`rescale`.
    """
    parts = []
    for x, s, zp in inputs:
        x = _i8(x)
        if np.float32(s) == np.float32(y_scale) and int(zp) == int(y_zp):
            parts.append(x)
        else:
            parts.append(rescale(x, s, zp, y_scale, y_zp))
    y = np.concatenate(parts, axis=1)
    if lo > -128 or hi < 127:
        y = np.clip(y, lo, hi).astype(np.int8)
    return y


def channel_shuffle(x, groups: int) -> np.ndarray:
    """ShuffleNet shuffle: output channel j = input channel (j % g) * (C/g) + j // g."""
    x = _check4(x)
    n, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"{c} channels are not divisible by shuffle groups {groups}")
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


def channel_slice(x, start: int, stop: int) -> np.ndarray:
    """Channels [start, stop)."""
    x = _check4(x)
    if not 0 <= start < stop <= x.shape[1]:
        raise ValueError(f"channel range [{start}, {stop}) outside 0..{x.shape[1]}")
    return x[:, start:stop]
