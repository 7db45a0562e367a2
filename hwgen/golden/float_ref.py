"""Float32 reference of a Graph: the model the quantised network approximates.

Weights are used as float, every fused activation is applied, pooling follows ONNX float
semantics (max pooling pads with -inf; average pooling with ``count_include_pad`` divides by
the window clipped to the padded input, otherwise by the cells inside the input).
"""
from __future__ import annotations

import numpy as np

from .. import ir
from .ops import _pool_geometry, _taps, conv_taps, pads4, pair

__all__ = ["run_float"]


def _conv(x, w, b, stride, padding, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = pair(stride)
    t, l, bo, r = pads4(padding)
    oh = ir.pool_out_size(h, kh, sh, t, bo)
    ow = ir.pool_out_size(wd, kw, sw, l, r)
    xp = np.zeros((n, c, h + t + bo, wd + l + r), np.float64)
    xp[:, :, t:t + h, l:l + wd] = x
    acc = conv_taps(xp, w.astype(np.float64), (sh, sw), (oh, ow), groups)
    return acc + np.asarray(b, np.float64)[None, :, None, None]


def _maxpool(x, node):
    (kh, kw), (sh, sw), (t, l), (oh, ow), (ph, pw) = _pool_geometry(
        x, node.kernel, node.stride, node.padding, node.ceil_mode)
    n, c, h, w = x.shape
    xp = np.full((n, c, ph, pw), -np.inf)
    xp[:, :, t:t + h, l:l + w] = x
    out = np.full((n, c, oh, ow), -np.inf)
    for _, _, v in _taps(xp, kh, kw, sh, sw, oh, ow):
        np.maximum(out, v, out=out)
    return out


def _avgpool(x, node):
    (kh, kw), (sh, sw), (t, l), (oh, ow), (ph, pw) = _pool_geometry(
        x, node.kernel, node.stride, node.padding, node.ceil_mode)
    n, c, h, w = x.shape
    xp = np.zeros((n, c, ph, pw))
    xp[:, :, t:t + h, l:l + w] = x
    acc = np.zeros((n, c, oh, ow))
    for _, _, v in _taps(xp, kh, kw, sh, sw, oh, ow):
        acc += v
    pt, pl, pb, pr = node.padding
    hs, ws = np.arange(oh) * sh - t, np.arange(ow) * sw - l
    if node.count_include_pad:
        ch = np.minimum(hs + kh, h + pb) - hs
        cw = np.minimum(ws + kw, w + pr) - ws
    else:
        ch = np.minimum(hs + kh, h) - np.maximum(hs, 0)
        cw = np.minimum(ws + kw, w) - np.maximum(ws, 0)
    return acc / (ch[:, None] * cw[None, :])


def _eval(node, xs):
    if isinstance(node, ir.Conv2d):
        return node.act.apply(_conv(xs[0], node.weight, node.bias, node.stride, node.padding, node.groups))
    if isinstance(node, ir.FullyConnected):
        flat = xs[0].reshape(xs[0].shape[0], -1)
        y = flat @ node.weight.astype(np.float64).T + node.bias.astype(np.float64)
        return node.act.apply(y).reshape(flat.shape[0], -1, 1, 1)
    if isinstance(node, ir.MaxPool):
        return _maxpool(xs[0], node)
    if isinstance(node, ir.AvgPool):
        return _avgpool(xs[0], node)
    if isinstance(node, ir.GlobalAvgPool):
        return xs[0].mean(axis=(2, 3), keepdims=True)
    if isinstance(node, ir.Add):
        return node.act.apply(xs[0] + xs[1])
    if isinstance(node, ir.Concat):
        return node.act.apply(np.concatenate(xs, axis=1))
    if isinstance(node, ir.ChannelShuffle):
        n, c, h, w = xs[0].shape
        return xs[0][:, node.permutation(c)]
    if isinstance(node, ir.ChannelSlice):
        return xs[0][:, node.start:node.stop]
    raise ir.IRError(node.name, f"the float reference has no rule for op {node.op}")


def run_float(graph: ir.Graph, x, all_tensors: bool = False):
    """Run ``graph`` in floating point on ``x`` (N, C, H, W).

    Returns the first graph output as float32 (N, C, H, W), or with ``all_tensors`` a dict
    of every tensor (float64 internally, the graph's values before any rounding).
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 4 or x.shape[1:] != graph.input_shape:
        raise ValueError(f"input must be (N, {', '.join(map(str, graph.input_shape))}), got {x.shape}")
    t = {graph.input_name: x}
    for node in graph.nodes:
        t[node.output] = _eval(node, [t[i] for i in node.inputs])
    if all_tensors:
        return t
    return t[graph.outputs[0]].astype(np.float32)
