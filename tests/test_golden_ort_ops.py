"""Every golden integer op against onnxruntime's integer kernel, element for element.

Each test builds a one-node QOperator ONNX model with onnx.helper (int8 and uint8 forms),
runs onnxruntime on random inputs with random quantisation parameters, and requires the
golden output to be identical (no tolerance).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwgen.golden import arith, ops

DT = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
      np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}


def run_node(op, inputs, consts, out_dtype, attrs=None, domain=""):
    """Run one ONNX node. ``inputs``: list of (name, array) fed at run time; ``consts``: list
    of (name, array) initialisers; input order is the order of ``names``."""
    feeds = dict(inputs)
    names = [n for n, _ in inputs] + [n for n, _ in consts]
    return run_node_ordered(op, names, feeds, dict(consts), out_dtype, attrs, domain)


def run_node_ordered(op, names, feeds, consts, out_dtype, attrs=None, domain=""):
    node = helper.make_node(op, names, ["y"], domain=domain or None, **(attrs or {}))
    g_inputs = [helper.make_tensor_value_info(n, DT[np.asarray(a).dtype], np.asarray(a).shape)
                for n, a in feeds.items()]
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()]
    out = helper.make_tensor_value_info("y", DT[np.dtype(out_dtype)], None)
    graph = helper.make_graph([node], "t", g_inputs, [out], initializer=inits)
    opsets = [helper.make_opsetid("", 13)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def rand_scale(rng, lo=1e-3, hi=0.2):
    return np.float32(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def to_stored(x_i8, dtype):
    """int8 golden values -> stored form (uint8 = int8 + 128)."""
    return x_i8 if dtype == np.int8 else (x_i8.astype(np.int16) + 128).astype(np.uint8)


def zp_arr(zp_i8, dtype):
    return np.array(zp_i8 if dtype == np.int8 else zp_i8 + 128, dtype)


DTYPES = [np.int8, np.uint8]
IDS = ["int8", "uint8"]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qlinearconv(dtype):
    rng = np.random.default_rng(1)
    cases = [  # (C, O, k, stride, pads (t, l, b, r), groups)
        (3, 8, 3, 2, (0, 0, 1, 1), 1), (8, 8, 3, 1, (1, 1, 1, 1), 8), (8, 16, 1, 1, (0, 0, 0, 0), 1),
        (6, 12, 3, 2, (1, 1, 1, 1), 3), (4, 8, 3, 2, (1, 1, 1, 1), 4), (5, 7, 2, 1, (0, 1, 1, 0), 1),
    ]
    for trial in range(24):
        c, o, k, s, pads, g = cases[trial % len(cases)]
        x = rng.integers(-128, 128, (2, c, 7, 6), dtype=np.int8)
        w = rng.integers(-127, 128, (o, c // g, k, k), dtype=np.int8)
        bias = rng.integers(-20000, 20000, o, dtype=np.int32)
        xs, ys = rand_scale(rng), rand_scale(rng, 0.01, 0.5)
        ws = np.array([rand_scale(rng, 1e-3, 0.05) for _ in range(o)], np.float32)
        xzp, yzp = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
        names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"]
        consts = dict(xs=xs, xz=zp_arr(xzp, dtype), w=w, ws=ws, wz=np.zeros(o, np.int8),
                      ys=ys, yz=zp_arr(yzp, dtype), b=bias)
        y = run_node_ordered("QLinearConv", names, {"x": to_stored(x, dtype)}, consts, dtype,
                             dict(kernel_shape=[k, k], strides=[s, s], group=g,
                                  pads=[pads[0], pads[1], pads[2], pads[3]]))
        gold = ops.conv2d(x, xzp, w, bias, arith.conv_scale(xs, ws, ys), yzp, s, pads, g)
        np.testing.assert_array_equal(to_stored(gold, dtype), y)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qlinearadd(dtype):
    rng = np.random.default_rng(2)
    off = 0 if dtype == np.int8 else 128
    for trial in range(60):
        shape = (1, 3, 5, 7 + trial % 5)
        a = rng.integers(-128, 128, shape, dtype=np.int8)
        b = rng.integers(-128, 128, shape, dtype=np.int8)
        sa, sb, sy = rand_scale(rng), rand_scale(rng), rand_scale(rng)
        za, zb, zy = (int(v) for v in rng.integers(-128, 128, 3))
        names = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
        consts = {"as": sa, "az": zp_arr(za, dtype), "bs": sb, "bz": zp_arr(zb, dtype),
                  "ys": sy, "yz": zp_arr(zy, dtype)}
        y = run_node_ordered("QLinearAdd", names, {"a": to_stored(a, dtype), "b": to_stored(b, dtype)},
                             consts, dtype, domain="com.microsoft")
        gold = ops.add(a, sa, za, b, sb, zb, sy, zy, offset=off)
        np.testing.assert_array_equal(to_stored(gold, dtype), y)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qlinearaveragepool(dtype):
    rng = np.random.default_rng(3)
    off = 0 if dtype == np.int8 else 128
    cases = [  # kernel, stride, pads, ceil, count_include_pad, H, W
        (3, 2, (1, 1, 1, 1), 0, 0, 9, 8), (3, 2, (1, 1, 1, 1), 0, 1, 9, 8), (2, 2, (0, 0, 0, 0), 0, 0, 6, 6),
        (3, 2, (0, 0, 0, 0), 1, 0, 8, 8), (3, 1, (1, 1, 1, 1), 0, 0, 5, 5), (3, 2, (0, 0, 1, 1), 1, 1, 7, 9),
        (5, 5, (0, 0, 0, 0), 0, 0, 5, 5),   # whole input: onnxruntime's global kernel
    ]
    for trial in range(28):
        k, s, pads, ceil, cip, h, w = cases[trial % len(cases)]
        x = rng.integers(-128, 128, (2, 3, h, w), dtype=np.int8)
        xs, ys = rand_scale(rng), rand_scale(rng)
        xz, yz = (int(v) for v in rng.integers(-128, 128, 2))
        consts = {"xs": xs, "xz": zp_arr(xz, dtype), "ys": ys, "yz": zp_arr(yz, dtype)}
        y = run_node_ordered("QLinearAveragePool", ["x", "xs", "xz", "ys", "yz"],
                             {"x": to_stored(x, dtype)}, consts, dtype,
                             dict(kernel_shape=[k, k], strides=[s, s], pads=list(pads),
                                  ceil_mode=ceil, count_include_pad=cip), domain="com.microsoft")
        gold = ops.avgpool(x, xs, xz, ys, yz, k, s, pads, bool(ceil), bool(cip), offset=off)
        np.testing.assert_array_equal(to_stored(gold, dtype), y)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qlinearglobalaveragepool(dtype):
    rng = np.random.default_rng(4)
    for trial in range(30):
        h, w = [(7, 7), (3, 3), (1, 1), (6, 5), (12, 12)][trial % 5]
        x = rng.integers(-128, 128, (2, 9, h, w), dtype=np.int8)
        xs, ys = rand_scale(rng), rand_scale(rng)
        xz, yz = (int(v) for v in rng.integers(-128, 128, 2))
        consts = {"xs": xs, "xz": zp_arr(xz, dtype), "ys": ys, "yz": zp_arr(yz, dtype)}
        y = run_node_ordered("QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"],
                             {"x": to_stored(x, dtype)}, consts, dtype, dict(channels_last=0),
                             domain="com.microsoft")
        gold = ops.global_avgpool(x, xs, xz, ys, yz)
        np.testing.assert_array_equal(to_stored(gold, dtype), y)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qlinearconcat(dtype):
    rng = np.random.default_rng(5)
    for trial in range(30):
        n_in = 2 + trial % 2
        xs = [rng.integers(-128, 128, (1, 2 + i, 4, 3), dtype=np.int8) for i in range(n_in)]
        qs = [(rand_scale(rng), int(rng.integers(-128, 128))) for _ in range(n_in)]
        ys, yz = rand_scale(rng), int(rng.integers(-128, 128))
        if trial % 3 == 0:
            qs[0] = (ys, yz)  # same qparams: a plain copy
        names, feeds, consts = ["ys", "yz"], {}, {"ys": ys, "yz": zp_arr(yz, dtype)}
        for i, (x, (s, z)) in enumerate(zip(xs, qs)):
            names += [f"x{i}", f"s{i}", f"z{i}"]
            feeds[f"x{i}"] = to_stored(x, dtype)
            consts[f"s{i}"], consts[f"z{i}"] = s, zp_arr(z, dtype)
        y = run_node_ordered("QLinearConcat", names, feeds, consts, dtype, dict(axis=1),
                             domain="com.microsoft")
        gold = ops.concat([(x, s, z) for x, (s, z) in zip(xs, qs)], ys, yz)
        np.testing.assert_array_equal(to_stored(gold, dtype), y)


def test_rescale_table_exhaustive():
    """The whole 256-entry table against onnxruntime, for many parameter draws."""
    rng = np.random.default_rng(6)
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16)
    for trial in range(40):
        (s0, z0), (s1, z1) = [(rand_scale(rng, 1e-4, 1.0), int(rng.integers(-128, 128))) for _ in range(2)]
        ys, yz = rand_scale(rng, 1e-4, 1.0), int(rng.integers(-128, 128))
        consts = {"ys": ys, "yz": np.int8(yz), "s0": s0, "z0": np.int8(z0), "s1": s1, "z1": np.int8(z1)}
        y = run_node_ordered("QLinearConcat", ["ys", "yz", "x0", "s0", "z0", "x1", "s1", "z1"],
                             {"x0": x, "x1": x}, consts, np.int8, dict(axis=1), domain="com.microsoft")
        np.testing.assert_array_equal(ops.concat([(x, s0, z0), (x, s1, z1)], ys, yz), y)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_maxpool(dtype):
    rng = np.random.default_rng(7)
    cases = [(3, 2, (0, 0, 0, 0), 1, 8, 8), (3, 2, (1, 1, 1, 1), 0, 9, 7), (2, 2, (0, 0, 0, 0), 0, 6, 6),
             (3, 2, (0, 0, 1, 1), 1, 7, 10), (3, 1, (1, 1, 1, 1), 0, 4, 5), (3, 2, (1, 1, 1, 1), 1, 10, 10)]
    for trial in range(18):
        k, s, pads, ceil, h, w = cases[trial % len(cases)]
        # mostly very negative values so that a padding cell would win if it could
        x = rng.integers(-128, -120 if trial % 2 else 128, (2, 3, h, w), dtype=np.int8)
        y = run_node_ordered("MaxPool", ["x"], {"x": to_stored(x, dtype)}, {}, dtype,
                             dict(kernel_shape=[k, k], strides=[s, s], pads=list(pads), ceil_mode=ceil))
        np.testing.assert_array_equal(to_stored(ops.maxpool(x, k, s, pads, bool(ceil)), dtype), y)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qgemm_fully_connected(dtype):
    """com.microsoft QGemm (what Gemm becomes in QOperator exports) == fully_connected."""
    rng = np.random.default_rng(8)
    for trial in range(20):
        k, o = [(48, 10), (7, 3), (130, 17)][trial % 3]
        x = rng.integers(-128, 128, (3, k), dtype=np.int8)
        w = rng.integers(-127, 128, (o, k), dtype=np.int8)
        bias = rng.integers(-30000, 30000, o, dtype=np.int32)
        xs, ys = rand_scale(rng), rand_scale(rng, 0.01, 0.5)
        ws = np.array([rand_scale(rng, 1e-3, 0.05) for _ in range(o)], np.float32)
        xz, yz = (int(v) for v in rng.integers(-128, 128, 2))
        names = ["x", "xs", "xz", "w", "ws", "wz", "b", "ys", "yz"]
        consts = dict(xs=xs, xz=zp_arr(xz, dtype), w=w, ws=ws, wz=np.zeros(o, np.int8), b=bias,
                      ys=ys, yz=zp_arr(yz, dtype))
        y = run_node_ordered("QGemm", names, {"x": to_stored(x, dtype)}, consts, dtype,
                             dict(transB=1), domain="com.microsoft")
        gold = ops.fully_connected(x, xz, w, bias, arith.conv_scale(xs, ws, ys), yz)
        np.testing.assert_array_equal(to_stored(gold.reshape(3, o), dtype), y)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_qlinearadd_stress(dtype):
    """QLinearAdd differences are a few per million elements when the float order is wrong
    (measured): 1500 draws x 256 elements per dtype pin the FMA order exactly."""
    rng = np.random.default_rng(12)
    off = 0 if dtype == np.int8 else 128
    for trial in range(1500):
        a = rng.integers(-128, 128, (1, 1, 16, 16), dtype=np.int8)
        b = rng.integers(-128, 128, (1, 1, 16, 16), dtype=np.int8)
        sa, sb, sy = rand_scale(rng), rand_scale(rng), rand_scale(rng)
        za, zb, zy = (int(v) for v in rng.integers(-128, 128, 3))
        consts = {"as": sa, "az": zp_arr(za, dtype), "bs": sb, "bz": zp_arr(zb, dtype),
                  "ys": sy, "yz": zp_arr(zy, dtype)}
        y = run_node_ordered("QLinearAdd", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"],
                             {"a": to_stored(a, dtype), "b": to_stored(b, dtype)}, consts, dtype,
                             domain="com.microsoft")
        np.testing.assert_array_equal(to_stored(ops.add(a, sa, za, b, sb, zb, sy, zy, offset=off), dtype), y)
