"""ONNX export (float and QDQ) of zoo models: onnxruntime runs them, round trips hold."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import onnx_models as M
from hwgen import ir
from hwgen.frontend import onnx_export
from hwgen.frontend.onnx import (OnnxExportError, export_float, export_qdq, load,
                                 run_onnxruntime)
from hwgen.golden import runner
from hwgen.golden.float_ref import run_float

models = pytest.importorskip("hwgen.models")
quantize = pytest.importorskip("hwgen.quantize").quantize

# small versions of the four zoo networks (each exports and runs in well under a second)
ZOO = {
    "mobilenet": dict(alpha=0.25, resolution=32, classes=10),
    "squeezenet": dict(version="1.1", resolution=32, classes=10),
    "shufflenet": dict(groups=3, scale=0.5, resolution=32, classes=10),
    "xception": dict(width=0.0625, middle_repeats=1, resolution=71, classes=10),
}


@pytest.fixture(scope="module")
def zoo():
    return {name: models.build(name, **cfg) for name, cfg in ZOO.items()}


@pytest.fixture(scope="module")
def zoo_q(zoo):
    return {name: quantize(g) for name, g in zoo.items()}


def _x(graph, n=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *graph.input_shape)).astype(np.float32)


def _same_graph(a: ir.Graph, b: ir.Graph, weights: bool = True):
    """Same ops in the same order with the same parameters and (``weights``) float weights;
    names may differ."""
    assert len(a.nodes) == len(b.nodes)
    for x, y in zip(a.nodes, b.nodes):
        assert type(x) is type(y) and x.name == y.name, (x.name, y.name)
        for f in ("kernel", "stride", "padding", "groups", "ceil_mode",
                  "count_include_pad", "start", "stop", "out_channels", "out_features"):
            assert getattr(x, f, None) == getattr(y, f, None), (x.name, f)
        if isinstance(x, ir.ChannelShuffle):
            assert x.groups == y.groups
        for f in ("weight", "bias") if weights else ():
            if hasattr(x, f):
                np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
        if weights:
            assert getattr(x, "act", None) == getattr(y, "act", None), x.name
    assert a.input_shape == b.input_shape and a.output_shape == b.output_shape


@pytest.mark.parametrize("name", list(ZOO))
def test_export_float_runs_and_round_trips(tmp_path, zoo, name):
    g = zoo[name]
    p = export_float(g, tmp_path / f"{name}.onnx")
    m = onnx.load(p)
    assert m.graph.input[0].name == "input"
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == list(g.input_shape)
    x = _x(g)
    y = run_onnxruntime(p, x)
    np.testing.assert_allclose(y.reshape(-1), run_float(g, x).reshape(-1), rtol=1e-4, atol=1e-4)
    g2 = load(p)
    assert isinstance(g2, ir.Graph)
    _same_graph(g, g2)
    np.testing.assert_array_equal(run_float(g2, x), run_float(g, x))


def _fused_ops(path):
    """Op types onnxruntime runs after its graph optimisations."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(path) + ".opt.onnx"
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    os.remove(so.optimized_model_filepath)
    return ops


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("io_dtype", ["int8", "uint8"])
def test_export_qdq_round_trip_and_fusion(tmp_path, zoo_q, name, io_dtype):
    qg = zoo_q[name]
    if io_dtype == "uint8":
        qg = ir.QGraph(qg.graph, qg.act_q, qg.weights, "uint8")
    p = export_qdq(qg, tmp_path / f"{name}_q.onnx")
    # load(export_qdq(qg)) has the same arithmetic: same ops, qparams and integer weights
    q2 = load(p)
    assert isinstance(q2, ir.QGraph) and q2.io_dtype == io_dtype
    _same_graph(qg.graph, q2.graph, weights=False)   # float weights: dequantized ints
    assert q2.input_q == qg.input_q
    for a, b in zip(qg.graph.nodes, q2.graph.nodes):
        assert q2.act_q[b.output] == qg.act_q[a.output], a.name
        # a clamp that is the whole int8 range is not written (as quantize_static does)
        assert (ir.clamp_range(getattr(b, "act", ir.Act.NONE), q2.act_q[b.output])
                == ir.clamp_range(getattr(a, "act", ir.Act.NONE), qg.act_q[a.output])), a.name
        if a.name in qg.weights:
            for f in ("weight", "scale", "bias"):
                np.testing.assert_array_equal(getattr(q2.weights[b.name], f),
                                              getattr(qg.weights[a.name], f))
    x = qg.input_q.quantize(_x(qg.graph, 2))
    if io_dtype == "uint8":
        x = (x.astype(np.int16) + 128).astype(np.uint8)
    np.testing.assert_array_equal(runner.run(q2, x), runner.run(qg, x))
    # onnxruntime fuses the QDQ groups into its integer kernels. With int8 activations on
    # x86-64 it fuses convs only through its int8 -> uint8 rewrite, which skips a tensor
    # read by several ops (fire modules, residuals): the convs around it run in float.
    ops = _fused_ops(p)
    assert "QLinearConv" in ops, ops
    if io_dtype == "uint8" or name == "mobilenet":
        assert "Conv" not in ops and "Gemm" not in ops and "AveragePool" not in ops, ops
        assert "GlobalAveragePool" not in ops and "Add" not in ops and "Concat" not in ops, ops


@pytest.mark.parametrize("name", ["mobilenet", "shufflenet"])
def test_export_qdq_bit_exact_uint8(tmp_path, zoo_q, name):
    """uint8 QDQ export: onnxruntime's output is the golden model's, bit for bit."""
    qg = zoo_q[name]
    qg = ir.QGraph(qg.graph, qg.act_q, qg.weights, "uint8")
    p = export_qdq(qg, tmp_path / "q.onnx")
    xf = _x(qg.graph, 8, seed=3)
    y_ort = run_onnxruntime(p, xf)                      # dequantized float output
    xq = (qg.input_q.quantize(xf).astype(np.int16) + 128).astype(np.uint8)
    y = runner.run(qg, xq)
    yd = qg.output_q.dequantize(y.astype(np.int16) - 128)
    np.testing.assert_array_equal(yd.reshape(y_ort.shape), y_ort)


def test_export_is_atomic(tmp_path, zoo, monkeypatch):
    g = zoo["mobilenet"]
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    # a failure while writing leaves the old file and no temporary behind
    def fail(*a):
        raise OSError("disk full")
    monkeypatch.setattr(onnx_export.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        export_float(g, target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]
    with pytest.raises(OnnxExportError, match="does not exist"):
        export_float(g, tmp_path / "no" / "dir.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]
    with pytest.raises(TypeError, match="QGraph"):
        export_qdq(g, tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_fixed_batch_and_run_onnxruntime_stacks(tmp_path, zoo):
    g = zoo["shufflenet"]
    p = export_float(g, tmp_path / "b1.onnx", batch=1)
    dims = onnx.load(p).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1
    x = _x(g, 3)
    y = run_onnxruntime(p, x)                         # 3 runs of one image, stacked
    assert y.shape == (3, 10)
    for i in range(3):
        np.testing.assert_array_equal(y[i:i + 1], run_onnxruntime(p, x[i:i + 1]))
    _same_graph(g, load(p))


def test_export_ir_graph_with_other_input_name(tmp_path):
    """Whatever the IR calls its input, the file's input is "input"."""
    rng = np.random.default_rng(0)
    c = ir.Conv2d(name="c", inputs=("image",), output="y", out_channels=4, kernel=3,
                  padding=1, act=ir.Act.RELU6, weight=rng.normal(0, 0.3, (4, 2, 3, 3)),
                  bias=np.zeros(4))
    sh = ir.ChannelShuffle(name="s", inputs=("y",), output="z", groups=2)
    sl = ir.ChannelSlice(name="sl", inputs=("z",), output="w", start=1, stop=3)
    g = ir.Graph("t", {"image": (2, 6, 6)}, ("w",), (c, sh, sl))
    p = export_float(g, tmp_path / "t.onnx")
    assert onnx.load(p).graph.input[0].name == "input"
    x = _x(g)
    np.testing.assert_allclose(run_onnxruntime(p, x), run_float(g, x), rtol=1e-5, atol=1e-5)
    _same_graph(g, load(p))
    # the writer emits exactly the Reshape-Transpose-Reshape pattern the importer recognises
    ops = [n.op_type for n in onnx_export.to_float_model(g).graph.node]
    assert ops == ["Conv", "Clip", "Reshape", "Transpose", "Reshape", "Slice"]
    assert M.OPSET == onnx_export.OPSET


def test_fc_outputs_feeding_other_ops(tmp_path):
    """FC outputs are (N, features) in ONNX; an Add/Concat of them gets a Reshape to 4-D."""
    rng = np.random.default_rng(1)
    nodes = (
        ir.Conv2d(name="c", inputs=("input",), output="x", out_channels=4, kernel=1,
                  act=ir.Act.RELU, weight=rng.normal(0, 0.5, (4, 2, 1, 1)), bias=np.zeros(4)),
        ir.GlobalAvgPool(name="gap", inputs=("x",), output="p"),
        ir.FullyConnected(name="fa", inputs=("p",), output="a", out_features=3,
                          weight=rng.normal(0, 0.5, (3, 4)), bias=np.zeros(3)),
        ir.FullyConnected(name="fb", inputs=("p",), output="b", out_features=3,
                          weight=rng.normal(0, 0.5, (3, 4)), bias=np.ones(3)),
        ir.Add(name="add", inputs=("a", "b"), output="s"),
        ir.Concat(name="cat", inputs=("s", "a"), output="y"),
    )
    g = ir.Graph("fcs", {"input": (2, 5, 5)}, ("y",), nodes)
    x = _x(g, 4)
    p = export_float(g, tmp_path / "f.onnx")
    np.testing.assert_allclose(run_onnxruntime(p, x).reshape(4, -1),
                               run_float(g, x).reshape(4, -1), rtol=1e-5, atol=1e-5)
    _same_graph(g, load(p))
    q = quantize(g)
    qg = ir.QGraph(q.graph, q.act_q, q.weights, "uint8")
    pq = export_qdq(qg, tmp_path / "q.onnx")
    xq = (qg.input_q.quantize(x).astype(np.int16) + 128).astype(np.uint8)
    y = runner.run(qg, xq)
    y_ort = run_onnxruntime(pq, x)
    yd = qg.output_q.dequantize(y.astype(np.int16) - 128)
    np.testing.assert_array_equal(yd.reshape(y_ort.shape), y_ort)
