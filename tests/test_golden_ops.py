"""Golden ops and the whole-graph runner: semantics, errors, and a QOperator ONNX model of a
hand-built graph (every op kind) run by onnxruntime against golden.run, bit for bit."""
from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwgen import golden, ir
from hwgen.golden import ops
from hwgen.quantize import quantize


# --- op semantics --------------------------------------------------------------------

def naive_conv_acc(x, zp, w, b, stride, pads, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    t, l, bo, r = pads
    xp = np.full((n, c, h + t + bo, wd + l + r), zp, np.int64)
    xp[:, :, t:t + h, l:l + wd] = x
    oh = (h + t + bo - kh) // stride + 1
    ow = (wd + l + r - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for y in range(oh):
            for xx in range(ow):
                win = xp[:, g * cg:(g + 1) * cg, y * stride:y * stride + kh, xx * stride:xx * stride + kw]
                out[:, oc, y, xx] = ((win - zp) * w[oc]).sum(axis=(1, 2, 3)) + b[oc]
    return out


@pytest.mark.parametrize("c,o,k,s,pads,g", [
    (3, 4, 3, 2, (0, 0, 1, 1), 1), (4, 4, 3, 1, (1, 1, 1, 1), 4), (4, 8, 3, 2, (1, 0, 1, 2), 4),
    (6, 9, 1, 1, (0, 0, 0, 0), 3), (5, 2, 2, 1, (0, 0, 0, 0), 1)])
def test_conv2d_acc_matches_naive(c, o, k, s, pads, g):
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (2, c, 6, 7), dtype=np.int8)
    w = rng.integers(-127, 128, (o, c // g, k, k), dtype=np.int8)
    b = rng.integers(-1000, 1000, o).astype(np.int32)
    zp = int(rng.integers(-128, 128))
    np.testing.assert_array_equal(ops.conv2d_acc(x, zp, w, b, s, pads, g),
                                  naive_conv_acc(x, zp, w, b, s, pads, g))


def test_conv2d_acc_padding_contributes_zero():
    x = np.full((1, 1, 3, 3), 17, np.int8)
    w = np.ones((1, 1, 3, 3), np.int8)
    acc = ops.conv2d_acc(x, 17, w, None, 1, 1, 1)
    np.testing.assert_array_equal(acc, np.zeros((1, 1, 3, 3), np.int32))


def test_conv2d_clamps():
    x = np.full((1, 1, 1, 1), 100, np.int8)
    w = np.array([[[[1]]], [[[-1]]]], np.int8)
    y = ops.conv2d(x, 0, w, np.zeros(2, np.int32), np.float32(1.0), 0, lo=-90, hi=50)
    np.testing.assert_array_equal(y.ravel(), [50, -90])


def test_maxpool_padding_never_wins():
    x = np.full((1, 1, 4, 4), -128, np.int8)
    y = ops.maxpool(x, 3, 2, 1, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)
    assert (y == -128).all()


def test_channel_shuffle_matches_ir_permutation():
    x = np.arange(12, dtype=np.int8).reshape(1, 12, 1, 1)
    node = ir.ChannelShuffle(name="s", inputs=("a",), output="b", groups=3)
    np.testing.assert_array_equal(ops.channel_shuffle(x, 3)[0, :, 0, 0], node.permutation(12))
    np.testing.assert_array_equal(ops.channel_slice(x, 2, 5)[0, :, 0, 0], [2, 3, 4])


def test_concat_same_params_is_a_copy():
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (1, 2, 3, 3), dtype=np.int8)
    b = rng.integers(-128, 128, (1, 3, 3, 3), dtype=np.int8)
    y = ops.concat([(a, 0.1, 4), (b, 0.1, 4)], 0.1, 4)
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=1))


def test_rescale_identity_and_monotone():
    x = np.arange(-128, 128, dtype=np.int8)
    np.testing.assert_array_equal(ops.rescale(x, 0.05, 3, 0.05, 3), x)
    y = ops.rescale(x, 0.05, 3, 0.07, -10).astype(int)
    assert (np.diff(y) >= 0).all()


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="int8"):
        ops.maxpool(np.zeros((1, 1, 4, 4), np.float32), 2, 2)
    with pytest.raises(ValueError, match="groups"):
        ops.conv2d_acc(np.zeros((1, 4, 4, 4), np.int8), 0, np.zeros((4, 3, 1, 1), np.int8), None, 1, 0, 2)
    with pytest.raises(ValueError, match="outside"):
        ops.global_avgpool(np.zeros((1, 1, 2, 2), np.int8), 1e-12, 0, 1.0, 0)


# --- a hand-built graph with every op kind ---------------------------------------------------

def small_graph(seed=0):
    rng = np.random.default_rng(seed)

    def conv(name, x, cin, cout, k, s=1, p=0, g=1, act=ir.Act.RELU):
        w = rng.normal(0, np.sqrt(2.0 / (cin // g * k * k)), (cout, cin // g, k, k))
        return ir.Conv2d(name=name, inputs=(x,), output=name, out_channels=cout, kernel=k, stride=s,
                         padding=p, groups=g, act=act, weight=w, bias=rng.normal(0, 0.1, cout))

    nodes = [
        conv("c1", "input", 3, 12, 3, 2, (0, 0, 1, 1)),                 # (12, 8, 8)
        conv("dw", "c1", 12, 12, 3, 1, 1, 12, ir.Act.RELU6),
        conv("pw", "dw", 12, 12, 1, act=ir.Act.NONE),
        ir.ChannelShuffle(name="sh", inputs=("pw",), output="sh", groups=3),
        conv("gc", "sh", 12, 12, 1, g=3),
        ir.MaxPool(name="mp", inputs=("gc",), output="mp", kernel=3, stride=2, ceil_mode=True),  # (12,4,4)
        ir.ChannelSlice(name="s0", inputs=("mp",), output="s0", start=0, stop=6),
        ir.ChannelSlice(name="s1", inputs=("mp",), output="s1", start=6, stop=12),
        conv("e1", "s1", 6, 6, 3, 1, 1),
        conv("e2", "s0", 6, 4, 1, act=ir.Act.NONE),
        ir.Concat(name="cat", inputs=("s0", "e1", "e2"), output="cat", act=ir.Act.NONE),  # (16,4,4)
        conv("r", "cat", 16, 16, 1, act=ir.Act.NONE),
        ir.Add(name="add", inputs=("r", "cat"), output="add", act=ir.Act.RELU),
        ir.AvgPool(name="ap", inputs=("add",), output="ap", kernel=3, stride=2, padding=1),  # (16,2,2)
        conv("c9", "ap", 16, 10, 1),
        ir.GlobalAvgPool(name="gap", inputs=("c9",), output="gap"),
        ir.FullyConnected(name="fc", inputs=("gap",), output="fc", out_features=5,
                          weight=rng.normal(0, 0.3, (5, 10)), bias=rng.normal(0, 0.1, 5)),
    ]
    return ir.Graph("small", {"input": (3, 16, 16)}, ("fc",), nodes)


def to_qoperator_onnx(qg: ir.QGraph, batch: int) -> bytes:
    """Test-only QOperator export of a QGraph (int8, or uint8 for io_dtype "uint8")."""
    g = qg.graph
    u8 = qg.io_dtype == "uint8"
    zdt, off, elem = (np.uint8, 128, TensorProto.UINT8) if u8 else (np.int8, 0, TensorProto.INT8)
    nodes, inits = [], []

    seen = set()

    def const(name, arr):
        if name not in seen:
            seen.add(name)
            inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def qp(t):
        q = qg.act_q[t]
        return [const(f"{t}_s", np.float32(q.scale)), const(f"{t}_z", zdt(q.zero_point + off))]

    for n in g.nodes:
        x = n.inputs[0]
        if isinstance(n, ir.Conv2d):
            w = qg.weights[n.name]
            ins = [x, *qp(x), const(f"{n.name}_w", w.weight), const(f"{n.name}_ws", w.scale),
                   const(f"{n.name}_wz", np.zeros(len(w.scale), np.int8)), *qp(n.output),
                   const(f"{n.name}_b", w.bias)]
            t, l, b, r = n.padding
            lo, hi = ir.clamp_range(n.act, qg.act_q[n.output])
            raw = n.output if (lo, hi) == (-128, 127) else n.output + "_raw"
            nodes.append(helper.make_node("QLinearConv", ins, [raw], kernel_shape=list(n.kernel),
                                          strides=list(n.stride), pads=[t, l, b, r], group=n.groups))
            if raw != n.output:  # a fused ReLU the output range does not already imply
                nodes.append(helper.make_node("Clip", [raw, const(f"{n.name}_lo", zdt(lo + off)),
                                                       const(f"{n.name}_hi", zdt(hi + off))], [n.output]))
        elif isinstance(n, ir.FullyConnected):
            w = qg.weights[n.name]
            nodes.append(helper.make_node("Flatten", [x], [x + "_flat"]))
            ins = [x + "_flat", *qp(x), const(f"{n.name}_w", w.weight), const(f"{n.name}_ws", w.scale),
                   const(f"{n.name}_wz", np.zeros(len(w.scale), np.int8)), const(f"{n.name}_b", w.bias),
                   *qp(n.output)]
            nodes.append(helper.make_node("QGemm", ins, [n.output + "_2d"], domain="com.microsoft", transB=1))
            nodes.append(helper.make_node("Reshape", [n.output + "_2d", const(f"{n.name}_shape",
                                          np.array([batch, -1, 1, 1], np.int64))], [n.output]))
        elif isinstance(n, ir.MaxPool):
            t, l, b, r = n.padding
            nodes.append(helper.make_node("MaxPool", [x], [n.output], kernel_shape=list(n.kernel),
                                          strides=list(n.stride), pads=[t, l, b, r], ceil_mode=int(n.ceil_mode)))
        elif isinstance(n, ir.AvgPool):
            t, l, b, r = n.padding
            nodes.append(helper.make_node("QLinearAveragePool", [x, *qp(x), *qp(n.output)], [n.output],
                                          domain="com.microsoft", kernel_shape=list(n.kernel),
                                          strides=list(n.stride), pads=[t, l, b, r],
                                          ceil_mode=int(n.ceil_mode), count_include_pad=int(n.count_include_pad)))
        elif isinstance(n, ir.GlobalAvgPool):
            nodes.append(helper.make_node("QLinearGlobalAveragePool", [x, *qp(x), *qp(n.output)], [n.output],
                                          domain="com.microsoft", channels_last=0))
        elif isinstance(n, ir.Add):
            assert ir.clamp_range(n.act, qg.act_q[n.output]) == (-128, 127)
            nodes.append(helper.make_node("QLinearAdd", [x, *qp(x), n.inputs[1], *qp(n.inputs[1]),
                                                         *qp(n.output)], [n.output], domain="com.microsoft"))
        elif isinstance(n, ir.Concat):
            ins = qp(n.output)
            for i in n.inputs:
                ins += [i, *qp(i)]
            nodes.append(helper.make_node("QLinearConcat", ins, [n.output], domain="com.microsoft", axis=1))
        elif isinstance(n, ir.ChannelShuffle):
            c, h, w_ = g.shapes[x]
            nodes.append(helper.make_node("Reshape", [x, const(f"{n.name}_s1", np.array(
                [batch, n.groups, c // n.groups, h, w_], np.int64))], [n.name + "_5d"]))
            nodes.append(helper.make_node("Transpose", [n.name + "_5d"], [n.name + "_t"], perm=[0, 2, 1, 3, 4]))
            nodes.append(helper.make_node("Reshape", [n.name + "_t", const(f"{n.name}_s2", np.array(
                [batch, c, h, w_], np.int64))], [n.output]))
        elif isinstance(n, ir.ChannelSlice):
            nodes.append(helper.make_node("Slice", [x, const(f"{n.name}_a", np.array([n.start], np.int64)),
                                                    const(f"{n.name}_b", np.array([n.stop], np.int64)),
                                                    const(f"{n.name}_ax", np.array([1], np.int64))], [n.output]))
        else:
            raise AssertionError(n.op)
    c, h, w = g.input_shape
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("input", elem, [batch, c, h, w])],
                              [helper.make_tensor_value_info(g.outputs[0], elem, None)], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m.SerializeToString()


def test_runner_matches_onnxruntime_end_to_end():
    g = small_graph()
    qg = quantize(g, n_calib=4)
    x = qg.input_q.quantize(np.random.default_rng(5).uniform(-1, 1, (4, 3, 16, 16)))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(to_qoperator_onnx(qg, 4), so, providers=["CPUExecutionProvider"])
    got = golden.run(qg, x)
    np.testing.assert_array_equal(got, sess.run(None, {"input": x})[0])
    # and every intermediate tensor, layer by layer
    t = golden.run(qg, x, all_tensors=True)
    assert set(t) == set(g.shapes)
    for name, shape in g.shapes.items():
        assert t[name].shape == (4, *shape) and t[name].dtype == np.int8


def ort_run(qg, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(to_qoperator_onnx(qg, x.shape[0]), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_runner_uint8_matches_onnxruntime():
    """The uint8 form of the graph (values and zero points +128) against onnxruntime's
    uint8 kernels: the runner's offset-aware add and average pool reproduce them."""
    for seed in range(3):
        g = small_graph(seed)
        qg = quantize(g, n_calib=4, seed=seed)
        qu = ir.QGraph(g, qg.act_q, qg.weights, "uint8")
        x = qg.input_q.quantize(np.random.default_rng(seed).uniform(-1, 1, (3, 3, 16, 16)))
        xu = (x.astype(np.int16) + 128).astype(np.uint8)
        np.testing.assert_array_equal(golden.run(qu, xu), ort_run(qu, xu))


def test_runner_uint8_io():
    g = small_graph(1)
    qg = quantize(g, n_calib=2)
    qu = ir.QGraph(g, qg.act_q, qg.weights, "uint8")
    x = qg.input_q.quantize(np.random.default_rng(2).uniform(-1, 1, (2, 3, 16, 16)))
    xu = (x.astype(np.int16) + 128).astype(np.uint8)
    yu = golden.run(qu, xu)
    assert yu.dtype == np.uint8
    # only the add and the average pool may round differently in the uint8 form
    assert np.abs(yu.astype(int) - 128 - golden.run(qg, x).astype(int)).max() <= 2
    with pytest.raises(TypeError, match="uint8"):
        golden.run(qu, x)


def test_runner_rejects_bad_input():
    qg = quantize(small_graph(), n_calib=1)
    with pytest.raises(TypeError, match="int8"):
        golden.run(qg, np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\)"):
        golden.run(qg, np.zeros((1, 3, 8, 8), np.int8))


def test_float_vs_int_agreement_small_graph():
    qg = quantize(small_graph(), n_calib=8)
    res = golden.agreement(qg, n=32, seed=3)
    assert res["n"] == 32
    assert res["top1_agreement"] >= 0.8
    assert res["mean_abs_err"] < 8 * res["output_scale"]


def _zoo():
    try:
        from hwgen import models
        return models
    except ImportError as e:  # pragma: no cover - the zoo is another package of this project
        pytest.skip(f"hwgen.models not importable: {e}")


@pytest.mark.parametrize("name,opts", [
    ("mobilenet", dict(alpha=0.25, resolution=96, classes=2)),
    ("squeezenet", dict(version="1.1", resolution=64, classes=10)),
    ("shufflenet", dict(groups=3, scale=0.25, resolution=64, classes=10)),
    ("xception", dict(width=0.25, middle_repeats=1, resolution=71, classes=10)),
])
def test_zoo_agreement(name, opts):
    models = _zoo()
    g = models.build(name, **opts)
    qg = quantize(g, n_calib=4)
    # the whole network, exported as QOperator ONNX, against onnxruntime: bit-exact
    x = qg.input_q.quantize(np.random.default_rng(2).uniform(-1, 1, (2, *g.input_shape)))
    np.testing.assert_array_equal(golden.run(qg, x), ort_run(qg, x))
    xs = np.random.default_rng(1).uniform(-1, 1, (10, *g.input_shape)).astype(np.float32)
    res = golden.agreement(qg, xs)
    # Random zoo weights give close logits and (MobileNet) a very input-sensitive network:
    # quantising only the input already moves its logits by ~0.04. Require the int8 error
    # to stay well inside the spread of the logits and most top-1 decisions to agree.
    spread = float(golden.run_float(g, xs).std())
    assert res["mean_abs_err"] < 0.75 * spread, res
    assert res["top1_agreement"] >= 0.6, res


def test_mobilenet_runs_fast():
    """A 96x96 MobileNet 0.25 (7.5M MACs) runs well under a second (loose bound for CI)."""
    models = _zoo()
    qg = quantize(models.build("mobilenet", alpha=0.25, resolution=96, classes=2), n_calib=2)
    x = qg.input_q.quantize(np.random.default_rng(0).uniform(-1, 1, (1, 3, 96, 96)))
    golden.run(qg, x)
    t0 = time.perf_counter()
    golden.run(qg, x)
    assert time.perf_counter() - t0 < 1.0
