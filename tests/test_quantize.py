"""Post-training quantiser: BN folding, qparams rules, sharing, weight and bias rounding."""
from __future__ import annotations

import numpy as np
import pytest

from hwgen import golden, ir
from hwgen.golden import arith
from hwgen.golden.float_ref import run_float
from hwgen.quantize import (calibration_images, fold_bn, qparams_from_range, quantize,
                            quantize_weights)


def conv(rng, name, x, cin, cout, k=1, s=1, p=0, g=1, act=ir.Act.RELU, bias_std=0.1):
    w = rng.normal(0, np.sqrt(2.0 / (cin // g * k * k)), (cout, cin // g, k, k))
    return ir.Conv2d(name=name, inputs=(x,), output=name, out_channels=cout, kernel=k, stride=s,
                     padding=p, groups=g, act=act, weight=w, bias=rng.normal(0, bias_std, cout))


def fire_graph(seed=0):
    """SqueezeNet-style fire module + ShuffleNet-style shuffle, slice, pool and add."""
    rng = np.random.default_rng(seed)
    nodes = [
        conv(rng, "c1", "input", 3, 8, 3, 2, 1),
        ir.MaxPool(name="mp", inputs=("c1",), output="mp", kernel=3, stride=2, ceil_mode=True),
        conv(rng, "sq", "mp", 8, 4),
        conv(rng, "e1", "sq", 4, 6),
        conv(rng, "e3", "sq", 4, 6, 3, 1, 1),
        ir.Concat(name="cat", inputs=("e1", "e3"), output="cat"),
        ir.ChannelShuffle(name="sh", inputs=("cat",), output="sh", groups=3),
        ir.ChannelSlice(name="sl", inputs=("sh",), output="sl", start=0, stop=6),
        conv(rng, "r6", "sl", 6, 6, act=ir.Act.RELU6),
        conv(rng, "lin", "r6", 6, 6, act=ir.Act.NONE),
        conv(rng, "lin2", "sl", 6, 6, act=ir.Act.NONE),
        ir.Add(name="add", inputs=("lin", "lin2"), output="add", act=ir.Act.NONE),
        ir.AvgPool(name="ap", inputs=("add",), output="ap", kernel=3, stride=2, padding=1),
        conv(rng, "br", "add", 6, 6, 3, 2, 1, act=ir.Act.NONE),
        ir.Concat(name="cat2", inputs=("ap", "br"), output="cat2", act=ir.Act.RELU),
        ir.GlobalAvgPool(name="gap", inputs=("cat2",), output="gap"),
        ir.FullyConnected(name="fc", inputs=("gap",), output="fc", out_features=4,
                          weight=rng.normal(0, 0.3, (4, 12)), bias=rng.normal(0, 0.1, 4)),
    ]
    return ir.Graph("fire", {"input": (3, 32, 32)}, ("fc",), nodes)


def test_fold_bn_matches_float_bn():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
    mean, var = rng.normal(size=5), rng.uniform(0.1, 2, 5)
    w2, b2 = fold_bn(w, b, gamma, beta, mean, var, eps=1e-3)
    x = rng.normal(size=(2, 3, 6, 6))

    def g(wt, bs):
        node = ir.Conv2d(name="c", inputs=("input",), output="c", out_channels=5, kernel=3,
                         weight=wt, bias=bs)
        return run_float(ir.Graph("g", {"input": (3, 6, 6)}, ("c",), [node]), x).astype(np.float64)

    y = g(w, b)
    y_bn = (y - mean[None, :, None, None]) / np.sqrt(var + 1e-3)[None, :, None, None] \
        * gamma[None, :, None, None] + beta[None, :, None, None]
    np.testing.assert_allclose(g(w2, b2), y_bn, rtol=1e-4, atol=1e-4)
    w3, b3 = fold_bn(w[:, :, 0, 0], None, gamma, beta, mean, var)   # dense layer, no bias
    assert w3.shape == (5, 3) and b3.shape == (5,)
    with pytest.raises(ValueError, match="gamma"):
        fold_bn(w, b, gamma[:3], beta, mean, var)


def test_qparams_from_range_rules():
    q = qparams_from_range(0.0, 5.1)
    assert q.zero_point == -128 and q.scale == pytest.approx(5.1 / 255)
    q = qparams_from_range(0.5, 2.0)                    # widened to include 0
    assert q.zero_point == -128 and q.scale == pytest.approx(2.0 / 255)
    q = qparams_from_range(-2.0, -0.5)
    assert q.zero_point == 127
    q = qparams_from_range(-1.0, 1.0)    # -128 + 1/scale = -0.5000007 rounds to -1
    assert q.zero_point == -1 and q.scale == np.float32(2 / 255)
    q = qparams_from_range(0.0, 3.0, relu6=True)
    assert (q.scale, q.zero_point) == (float(np.float32(6) / np.float32(255)), -128)
    assert ir.clamp_range(ir.Act.RELU6, q) == (-128, 127)
    # zero is exactly representable
    for lo, hi in [(-0.3, 7.7), (-5, 0.01), (-1e-3, 1e-3)]:
        q = qparams_from_range(lo, hi)
        assert q.dequantize(np.int8(q.zero_point)) == 0.0


def test_weights_and_bias_rounding():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    w[2] = 0.0                                          # an all-zero filter
    b = rng.normal(size=6).astype(np.float32) * 5
    b[4] = 1e12                                          # saturates
    qw = quantize_weights(w, b, 0.02)
    assert qw.weight.dtype == np.int8 and np.abs(qw.weight.astype(int)).max() <= 127
    amax = np.abs(qw.weight.astype(int)).reshape(6, -1).max(axis=1)
    assert all(amax[o] == 127 for o in range(6) if o != 2) and amax[2] == 0
    np.testing.assert_allclose(qw.weight * qw.scale[:, None, None, None], w,
                               atol=float(qw.scale.max()) / 2 + 1e-7)
    expect = np.rint(b.astype(np.float64) / (np.float64(np.float32(0.02)) * qw.scale.astype(np.float64)))
    expect = np.clip(expect, -2**31, 2**31 - 1)
    np.testing.assert_array_equal(qw.bias, expect.astype(np.int32))
    assert qw.bias[4] == 2**31 - 1


def test_quantize_rules_on_a_graph():
    g = fire_graph()
    qg = quantize(g, n_calib=4)
    q = qg.act_q
    # graph input from the synthetic calibration range [-1, 1]
    assert qg.input_q.zero_point in (-1, 0) and qg.input_q.scale == pytest.approx(2 / 255, rel=1e-2)
    # ReLU outputs: zero point -128
    for t in ("c1", "sq"):
        assert q[t].zero_point == -128
    # ReLU6: exactly [0, 6]
    assert (q["r6"].scale, q["r6"].zero_point) == (float(np.float32(6) / np.float32(255)), -128)
    # pass-through ops share their input's qparams; concat inputs share the output's
    assert q["mp"] == q["c1"]
    assert q["e1"] == q["e3"] == q["cat"] == q["sh"] == q["sl"]
    assert q["ap"] == q["br"] == q["cat2"]
    # concat with a fused ReLU: its inputs are quantised post-ReLU (zero point -128)
    assert q["cat2"].zero_point == -128
    # biases are in units of x_scale * w_scale
    for n in g.nodes:
        if isinstance(n, (ir.Conv2d, ir.FullyConnected)):
            w = qg.weights[n.name]
            xs = np.float64(np.float32(q[n.inputs[0]].scale))
            np.testing.assert_array_equal(w.bias, np.rint(n.bias.astype(np.float64) / (xs * w.scale)))
    # and the result runs
    x = qg.input_q.quantize(calibration_images(g.input_shape, 2, 9))
    assert golden.run(qg, x).shape == (2, 4, 1, 1)


def test_quantize_is_deterministic_and_uses_calib():
    g = fire_graph(1)
    a, b = quantize(g, seed=3), quantize(g, seed=3)
    assert all(a.act_q[t] == b.act_q[t] for t in g.shapes)
    calib = np.random.default_rng(0).uniform(-3, 3, (4, 3, 32, 32)).astype(np.float32)
    c = quantize(g, calib=calib)
    assert c.input_q.scale == pytest.approx(6 / 255, rel=0.02)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        quantize(g, calib=calib[:, :, :16])


def test_quantize_rejects_degenerate_requant_scale():
    rng = np.random.default_rng(2)
    c = conv(rng, "huge", "input", 3, 4, act=ir.Act.NONE)
    c = ir.Conv2d(name="huge", inputs=("input",), output="huge", out_channels=4, kernel=1,
                  weight=c.weight * 1e-6, bias=np.array([1e12, 0, 0, 0]))
    g = ir.Graph("bad", {"input": (3, 4, 4)}, ("huge",), [c])
    with pytest.raises(ValueError, match="node 'huge'.*outside"):
        quantize(g)


def test_quantized_scales_are_in_the_integer_range():
    qg = quantize(fire_graph(2))
    for n in qg.graph.nodes:
        if isinstance(n, (ir.Conv2d, ir.FullyConnected)):
            s = arith.conv_scale(qg.act_q[n.inputs[0]].scale, qg.weights[n.name].scale,
                                 qg.act_q[n.output].scale)
            arith.decompose_scale(s)   # raises if outside [2**-32, 2**8)


def test_agreement_fire_graph():
    qg = quantize(fire_graph(3), n_calib=8)
    res = golden.agreement(qg, n=24, seed=5)
    assert res["top1_agreement"] >= 0.75
    assert res["mean_abs_err"] < 8 * res["output_scale"]
