"""Whole-graph integer runner: walks a QGraph op by op with the functions of ops.py."""
from __future__ import annotations

import numpy as np

from .. import ir
from . import arith, ops

__all__ = ["run", "top1", "agreement"]


def _same(a: ir.QParams, b: ir.QParams) -> bool:
    return np.float32(a.scale) == np.float32(b.scale) and a.zero_point == b.zero_point


def _passthrough(x, qin: ir.QParams, qout: ir.QParams):
    """Data-movement ops keep their input's qparams; if the quantiser chose others,
    requantise through the rescale table (the one QLinearConcat uses)."""
    return x if _same(qin, qout) else ops.rescale(x, qin.scale, qin.zero_point, qout.scale, qout.zero_point)


def _node(qg: ir.QGraph, node: ir.Node, xs, offset: int):
    q = qg.act_q
    qin = [q[t] for t in node.inputs]
    qout = q[node.output]
    lo, hi = ir.clamp_range(getattr(node, "act", ir.Act.NONE), qout)
    if isinstance(node, ir.Conv2d):
        w = qg.weights[node.name]
        scale = arith.conv_scale(qin[0].scale, w.scale, qout.scale)
        return ops.conv2d(xs[0], qin[0].zero_point, w.weight, w.bias, scale, qout.zero_point,
                          node.stride, node.padding, node.groups, lo, hi)
    if isinstance(node, ir.FullyConnected):
        w = qg.weights[node.name]
        scale = arith.conv_scale(qin[0].scale, w.scale, qout.scale)
        return ops.fully_connected(xs[0], qin[0].zero_point, w.weight, w.bias, scale,
                                   qout.zero_point, lo, hi)
    if isinstance(node, ir.MaxPool):
        y = ops.maxpool(xs[0], node.kernel, node.stride, node.padding, node.ceil_mode)
        return _passthrough(y, qin[0], qout)
    if isinstance(node, ir.AvgPool):
        return ops.avgpool(xs[0], qin[0].scale, qin[0].zero_point, qout.scale, qout.zero_point,
                           node.kernel, node.stride, node.padding, node.ceil_mode,
                           node.count_include_pad, offset=offset)
    if isinstance(node, ir.GlobalAvgPool):
        return ops.global_avgpool(xs[0], qin[0].scale, qin[0].zero_point, qout.scale, qout.zero_point)
    if isinstance(node, ir.Add):
        return ops.add(xs[0], qin[0].scale, qin[0].zero_point, xs[1], qin[1].scale,
                       qin[1].zero_point, qout.scale, qout.zero_point, lo, hi, offset=offset)
    if isinstance(node, ir.Concat):
        return ops.concat([(x, qi.scale, qi.zero_point) for x, qi in zip(xs, qin)],
                          qout.scale, qout.zero_point, lo, hi)
    if isinstance(node, ir.ChannelShuffle):
        return _passthrough(ops.channel_shuffle(xs[0], node.groups), qin[0], qout)
    if isinstance(node, ir.ChannelSlice):
        return _passthrough(ops.channel_slice(xs[0], node.start, node.stop), qin[0], qout)
    raise ir.IRError(node.name, f"the golden model has no integer rule for op {node.op}")


def run(qg: ir.QGraph, x, all_tensors: bool = False):
    """Run a quantised graph in integer arithmetic, op by op.

    Parameters
    ----------
    qg: the quantised graph.
    x: int8 (N, C, H, W) input, quantised with ``qg.input_q``. For ``qg.io_dtype == "uint8"``
        the input is uint8 (int8 + 128) and the output is returned as uint8 too; the adds and
        average pools then round as onnxruntime's uint8 kernels do (see ops.add).
    all_tensors: return a dict of every tensor (int8, internal form) instead.

    Returns
    -------
    The first graph output (N, C, H, W) in the graph's io dtype, or the dict of tensors.
    """
    g = qg.graph
    x = np.asarray(x)
    want = np.uint8 if qg.io_dtype == "uint8" else np.int8
    if x.dtype != want:
        raise TypeError(f"graph '{g.name}' takes {np.dtype(want).name} input (io_dtype "
                        f"{qg.io_dtype}), got {x.dtype}; quantise it with qg.input_q first")
    if x.ndim != 4 or x.shape[1:] != g.input_shape:
        raise ValueError(f"input must be (N, {', '.join(map(str, g.input_shape))}), got {x.shape}")
    offset = 128 if qg.io_dtype == "uint8" else 0
    if offset:
        x = (x.astype(np.int16) - 128).astype(np.int8)
    t = {g.input_name: x}
    for node in g.nodes:
        t[node.output] = _node(qg, node, [t[i] for i in node.inputs], offset)
    if all_tensors:
        return t
    y = t[g.outputs[0]]
    return (y.astype(np.int16) + 128).astype(np.uint8) if offset else y


def top1(logits) -> np.ndarray:
    """Index of the largest class score per image (first one on ties)."""
    a = np.asarray(logits)
    return a.reshape(a.shape[0], -1).argmax(axis=1)


def agreement(qg: ir.QGraph, xs=None, n: int = 16, seed: int = 0) -> dict:
    """Float-vs-int8 agreement on N inputs.

    Parameters
    ----------
    qg: quantised graph. xs: float inputs (N, C, H, W); ``None`` draws ``n`` seeded
    synthetic images (the quantiser's calibration distribution, uniform in [-1, 1]).

    Returns
    -------
    dict with ``top1_agreement`` (fraction of inputs whose float and int8 top-1 class
    match), ``n``, ``max_abs_err`` and ``mean_abs_err`` of the dequantised int8 output
    against the float output, and ``output_scale``.
    """
    from .float_ref import run_float
    g = qg.graph
    if xs is None:
        xs = np.random.default_rng(seed).uniform(-1, 1, (n, *g.input_shape)).astype(np.float32)
    xs = np.asarray(xs, np.float32)
    yf = run_float(g, xs)
    xq = qg.input_q.quantize(xs)
    if qg.io_dtype == "uint8":
        xq = (xq.astype(np.int16) + 128).astype(np.uint8)
    yq = run(qg, xq)
    if qg.io_dtype == "uint8":
        yq = (yq.astype(np.int16) - 128).astype(np.int8)
    yd = qg.output_q.dequantize(yq)
    err = np.abs(yd - yf)
    return {
        "top1_agreement": float(np.mean(top1(yf) == top1(yd))),
        "n": int(xs.shape[0]),
        "max_abs_err": float(err.max()),
        "mean_abs_err": float(err.mean()),
        "output_scale": float(qg.output_q.scale),
    }
