"""Post-training int8 quantisation: Graph (float) -> QGraph.

Rules (the contract the golden model and the hardware share):

- Weights: symmetric per output channel, int8 in [-127, 127]:
  ``w_scale[o] = max|w[o]| / 127`` (float32), ``wq = clip(rne(w / w_scale[o]))``.
- Bias: int32 ``rne(b / (x_scale * w_scale[o]))``, saturated to the int32 range.
- Activations: per tensor, asymmetric int8 from the calibrated [min, max] (always widened
  to include 0): ``scale = (max - min) / 255``, ``zp = clip(rne(-128 - min / scale))``.
  A tensor whose range starts at 0 (every ReLU output) gets ``zp = -128``; a ReLU6 output
  gets exactly [0, 6] (``scale = 6/255``, ``zp = -128``).
- Sharing, so that data movement is free in hardware: ChannelShuffle, ChannelSlice and
  MaxPool outputs share their input's qparams; every Concat input shares the Concat
  output's qparams (the producers quantise straight into the concat buffer). Tensors tied
  by these rules form one group whose range is the union of its members' ranges; a tensor
  consumed only by a Concat with a fused ReLU/ReLU6 contributes its range after that
  activation (clamping it early is what the Concat would do anyway).
- Calibration: ``calib`` float images (N, C, H, W), or ``n_calib`` seeded synthetic images
  uniform in [-1, 1] (the input range the zoo models assume); the graph input's qparams
  come from the calibration range (so [-1, 1] -> scale 2/255, zp -1).
"""
from __future__ import annotations

import numpy as np

from . import ir
from .golden.arith import SCALE_MAX, SCALE_MIN, conv_scale
from .golden.float_ref import run_float

__all__ = ["quantize", "fold_bn", "qparams_from_range", "quantize_weights", "calibration_images"]

#: Smallest activation scale the quantiser emits (a constant tensor still gets a valid scale).
MIN_ACT_SCALE = 2.0 ** -20
#: Smallest per-channel weight scale (an all-zero filter).
MIN_W_SCALE = 2.0 ** -24


def fold_bn(weight, bias, gamma, beta, mean, var, eps: float = 1e-5):
    """Fold batch norm into the preceding conv / dense layer.

    ``w' = w * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)`` per
    output channel (axis 0 of ``weight``). ``bias`` may be None (zero). Returns float32
    ``(w', b')``.
    """
    w = np.asarray(weight, np.float64)
    o = w.shape[0]
    b = np.zeros(o) if bias is None else np.asarray(bias, np.float64)
    for name, v in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var), ("bias", b)):
        if np.shape(v) != (o,):
            raise ValueError(f"fold_bn: {name} has shape {np.shape(v)}, expected ({o},) "
                             f"(one per output channel of the weight {w.shape})")
    g = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    w2 = w * g.reshape((o,) + (1,) * (w.ndim - 1))
    b2 = (b - np.asarray(mean, np.float64)) * g + np.asarray(beta, np.float64)
    return w2.astype(np.float32), b2.astype(np.float32)


def qparams_from_range(lo: float, hi: float, relu6: bool = False) -> ir.QParams:
    """Asymmetric int8 qparams covering [lo, hi] widened to include 0."""
    if relu6:
        return ir.QParams(np.float32(6.0) / np.float32(255.0), -128)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = np.float32(max((hi - lo) / 255.0, MIN_ACT_SCALE))
    zp = int(np.clip(np.rint(-128.0 - lo / float(scale)), -128, 127))
    return ir.QParams(scale, zp)


def quantize_weights(w, b, x_scale: float) -> ir.QWeights:
    """Symmetric per-output-channel int8 weights and int32 bias for input scale ``x_scale``."""
    w = np.asarray(w, np.float32)
    o = w.shape[0]
    amax = np.abs(w.reshape(o, -1)).max(axis=1)
    ws = np.maximum(amax / np.float32(127.0), np.float32(MIN_W_SCALE)).astype(np.float32)
    shp = (o,) + (1,) * (w.ndim - 1)
    wq = np.clip(np.rint(w / ws.reshape(shp)), -127, 127).astype(np.int8)
    bq = np.rint(np.asarray(b, np.float64) / (np.float64(np.float32(x_scale)) * ws.astype(np.float64)))
    bq = np.clip(bq, -2**31, 2**31 - 1).astype(np.int32)
    return ir.QWeights(wq, ws, bq)


def calibration_images(shape, n: int = 8, seed: int = 0) -> np.ndarray:
    """``n`` seeded synthetic float32 images of (C, H, W) ``shape``, uniform in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, *shape)).astype(np.float32)


class _Groups:
    """Union-find over tensor names."""

    def __init__(self, names):
        self.parent = {n: n for n in names}

    def find(self, a):
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def quantize(graph: ir.Graph, calib=None, n_calib: int = 8, seed: int = 0) -> ir.QGraph:
    """Post-training int8 quantisation of ``graph`` (rules in the module docstring).

    Parameters
    ----------
    graph: float graph (BN already folded; see :func:`fold_bn`).
    calib: float32 calibration inputs (N, C, H, W); default ``n_calib`` synthetic images.
    n_calib, seed: number and seed of the synthetic calibration images.

    Raises
    ------
    ValueError
        If the calibration data has the wrong shape, or a layer's requantisation scale
        ``x_scale * w_scale / y_scale`` falls outside the integer datapath's range
        [2**-32, 2**8) (the message names the node).
    """
    if calib is None:
        calib = calibration_images(graph.input_shape, n_calib, seed)
    calib = np.asarray(calib, np.float32)
    if calib.ndim != 4 or calib.shape[1:] != graph.input_shape:
        raise ValueError(f"calibration data must be (N, {', '.join(map(str, graph.input_shape))}), "
                         f"got {calib.shape}")
    t = run_float(graph, calib, all_tensors=True)

    consumers = {name: graph.consumers(name) for name in graph.shapes}
    relu6_out = set()
    for node in graph.nodes:
        if getattr(node, "act", ir.Act.NONE) is ir.Act.RELU6:
            relu6_out.add(node.output)

    # per-tensor range; a tensor only feeding activated Concats is seen after that activation
    rng = {}
    for name, v in t.items():
        lo, hi = float(v.min()), float(v.max())
        cons = consumers[name]
        if (cons and name not in graph.outputs and name != graph.input_name
                and all(isinstance(c, ir.Concat) and c.act is not ir.Act.NONE for c in cons)):
            lo = max(lo, 0.0)
            if all(c.act is ir.Act.RELU6 for c in cons):
                hi = min(hi, 6.0)
                relu6_out.add(name)
        rng[name] = (lo, hi)

    groups = _Groups(graph.shapes)
    for node in graph.nodes:
        if isinstance(node, (ir.ChannelShuffle, ir.ChannelSlice, ir.MaxPool, ir.Concat)):
            for i in node.inputs:
                groups.union(node.output, i)

    members: dict[str, list[str]] = {}
    for name in graph.shapes:
        members.setdefault(groups.find(name), []).append(name)
    act_q = {}
    for root, names in members.items():
        lo = min(rng[n][0] for n in names)
        hi = max(rng[n][1] for n in names)
        relu6 = any(n in relu6_out for n in names) and lo >= 0.0 and hi <= 6.0
        q = qparams_from_range(lo, hi, relu6)
        for n in names:
            act_q[n] = q

    weights = {}
    for node in graph.nodes:
        if isinstance(node, (ir.Conv2d, ir.FullyConnected)):
            xq, yq = act_q[node.inputs[0]], act_q[node.output]
            qw = quantize_weights(node.weight, node.bias, xq.scale)
            s = conv_scale(xq.scale, qw.scale, yq.scale)
            if s.min() < SCALE_MIN or s.max() >= SCALE_MAX:
                raise ValueError(f"node '{node.name}': requantisation scale range [{s.min():.3g}, "
                                 f"{s.max():.3g}] outside [2**-32, 2**8); its weights or "
                                 f"activations have a degenerate range")
            weights[node.name] = qw
    return ir.QGraph(graph, act_q, weights, "int8")
