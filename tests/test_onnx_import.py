"""ONNX import: float, QDQ and QOperator models; the patterns real exports contain; errors."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_models as M
from hwgen import ir
from hwgen.frontend.onnx import OnnxImportError, load, run_onnxruntime
from hwgen.golden.float_ref import run_float


def save(model, tmp_path, name="m.onnx"):
    p = os.path.join(tmp_path, name)
    onnx.save(model, p)
    return p


def float_close(graph, path, shape, n=3, seed=0):
    """The imported float graph computes what onnxruntime computes on the file."""
    x = np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype(np.float32)
    y = run_onnxruntime(path, x)
    ref = run_float(graph, x)
    np.testing.assert_allclose(ref.reshape(y.shape), y, rtol=1e-4, atol=1e-4)


# --- float models in exporter style -------------------------------------------------------

def test_keras_like_float(tmp_path):
    p = save(M.keras_like(), tmp_path)
    g = load(p)
    assert isinstance(g, ir.Graph)
    convs = [n for n in g.nodes if isinstance(n, ir.Conv2d)]
    assert [n.op for n in g.nodes].count("Conv2d") == 8
    # asymmetric ZeroPadding2D merged into the stride-2 convs, BN folded, Clip -> ReLU6
    assert convs[0].padding == (0, 0, 1, 1) and convs[0].stride == (2, 2)
    assert convs[3].padding == (0, 0, 1, 1) and convs[3].is_depthwise
    assert all(c.act is ir.Act.RELU6 for c in convs[:7]) and convs[7].act is ir.Act.NONE
    assert isinstance(g.nodes[7], ir.GlobalAvgPool)           # ReduceMean over H, W
    assert g.output_shape == (10, 1, 1)
    float_close(g, p, (3, 32, 32))


def test_torchvision_like_float(tmp_path):
    p = save(M.torchvision_like(), tmp_path)
    g = load(p)
    ops = [n.op for n in g.nodes]
    assert ops.count("ChannelShuffle") == 2 and ops.count("ChannelSlice") == 4
    mp = next(n for n in g.nodes if isinstance(n, ir.MaxPool))
    assert mp.ceil_mode and mp.kernel == (3, 3)
    shuffles = [n for n in g.nodes if isinstance(n, ir.ChannelShuffle)]
    assert all(s.groups == 2 for s in shuffles)
    slices = [(n.start, n.stop) for n in g.nodes if isinstance(n, ir.ChannelSlice)]
    assert slices == [(0, 8), (8, 16), (0, 8), (8, 16)]
    assert ops[-1] == "FullyConnected" and ops.count("Add") == 1 and ops.count("AvgPool") == 1
    acts = [n.act for n in g.nodes if isinstance(n, ir.Conv2d)]
    assert acts[:4] == [ir.Act.RELU, ir.Act.RELU, ir.Act.NONE, ir.Act.RELU]
    float_close(g, p, (3, 32, 32))


def _small(ops_fn, in_shape=(4, 8, 8), batch="N", opset=17, out_shape=None):
    b = M.Builder("t", in_shape, batch=batch)
    out, oshape = ops_fn(b)
    return b.model(out, oshape, opset)


@pytest.mark.parametrize("auto_pad, stride, want", [
    ("SAME_UPPER", 2, (0, 0, 1, 1)), ("SAME_LOWER", 2, (1, 1, 0, 0)),
    ("SAME_UPPER", 1, (1, 1, 1, 1)), ("VALID", 1, (0, 0, 0, 0))])
def test_conv_auto_pad(tmp_path, auto_pad, stride, want):
    def f(b):
        w = b.init("w", b.rng.normal(0, 0.3, (6, 4, 3, 3)).astype(np.float32))
        y = b.node("Conv", ["input", w], auto_pad=auto_pad, strides=[stride, stride])
        h = 8 // stride if auto_pad != "VALID" else 6
        return y, (6, h, h)
    p = save(_small(f), tmp_path)
    g = load(p)
    assert g.nodes[0].padding == want
    float_close(g, p, (4, 8, 8))


def test_pad_into_maxpool_after_relu_and_avgpool(tmp_path):
    def f(b):
        x = b.conv("input", 4, 8, 3, act="relu")
        x = b.pad(x, 1, 1, 1, 1)
        x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
        x = b.pad(x, 0, 0, 1, 1)
        x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
        return x, (8, 2, 2)
    p = save(_small(f), tmp_path)
    g = load(p)
    mp, ap = g.nodes[1], g.nodes[2]
    assert mp.padding == (1, 1, 1, 1)
    assert ap.padding == (0, 0, 1, 1) and ap.count_include_pad
    float_close(g, p, (4, 8, 8))


def test_matmul_add_head_and_squeeze(tmp_path):
    """Keras/tf2onnx head: ReduceMean(keepdims=0) -> MatMul -> Add(bias); also Squeeze."""
    def f(b):
        x = b.conv("input", 4, 8, 3, act="relu")
        y = b.node("ReduceMean", [x], axes=[2, 3], keepdims=0)
        w = b.init("mm.w", b.rng.normal(0, 0.3, (8, 5)).astype(np.float32))
        y = b.node("MatMul", [y, w])
        y = b.node("Add", [y, b.init("mm.b", np.arange(5, dtype=np.float32))])
        return y, (5,)
    p = save(_small(f), tmp_path)
    g = load(p)
    fc = g.nodes[-1]
    assert isinstance(fc, ir.FullyConnected) and fc.weight.shape == (5, 8)
    np.testing.assert_array_equal(fc.bias, np.arange(5, dtype=np.float32))
    float_close(g, p, (4, 8, 8))


def test_shuffle_with_inferred_batch_and_flatten_reshape(tmp_path):
    def f(b):
        x = b.conv("input", 4, 6, 1)
        x = b.node("Reshape", [x, b.const_i64([-1, 3, 2, 8, 8])])
        x = b.node("Transpose", [x], perm=[0, 2, 1, 3, 4])
        x = b.node("Reshape", [x, b.const_i64([-1, 6, 8, 8])])
        x = b.node("GlobalAveragePool", [x])
        x = b.node("Reshape", [x, b.const_i64([0, -1])])
        return b.gemm(x, 6, 3), (3,)
    p = save(_small(f), tmp_path)
    g = load(p)
    assert [n.op for n in g.nodes] == ["Conv2d", "ChannelShuffle", "GlobalAvgPool", "FullyConnected"]
    assert g.nodes[1].groups == 3
    float_close(g, p, (4, 8, 8))


def test_torch_dynamic_batch_shape_chains(tmp_path):
    """torch.onnx with a dynamic batch writes Shape -> Gather -> Unsqueeze -> Concat chains
    for x.view(n, g, c // g, h, w) and x.reshape(n, -1); they are evaluated at import."""
    def f(b):
        x = b.conv("input", 4, 6, 1, act="relu")
        shp = b.node("Shape", [x])
        n = b.node("Gather", [shp, b.init("i0", np.array(0, np.int64))], axis=0)
        c = b.node("Gather", [shp, b.init("i1", np.array(1, np.int64))], axis=0)
        cpg = b.node("Div", [c, b.init("g", np.array(3, np.int64))])
        dims = [b.node("Unsqueeze", [v, b.init(b._uid("ax"), np.array([0], np.int64))])
                for v in (n, cpg)]
        s1 = b.node("Concat", [dims[0], b.const_i64([3]), dims[1], b.const_i64([8, 8])], axis=0)
        x = b.node("Reshape", [x, s1])
        x = b.node("Transpose", [x], perm=[0, 2, 1, 3, 4])
        s2 = b.node("Concat", [dims[0], b.const_i64([-1, 8, 8])], axis=0)
        x = b.node("Reshape", [x, s2])
        x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        s3 = b.node("Concat", [dims[0], b.const_i64([-1])], axis=0)
        x = b.node("Reshape", [x, s3])
        return b.gemm(x, 96, 5), (5,)
    p = save(_small(f), tmp_path)
    g = load(p)
    assert [n.op for n in g.nodes] == ["Conv2d", "ChannelShuffle", "MaxPool", "FullyConnected"]
    assert g.nodes[1].groups == 3
    float_close(g, p, (4, 8, 8))


def test_split_equal_parts_opset18_and_identity(tmp_path):
    def f(b):
        x = b.node("Identity", ["input"])
        a, c = b.node("Split", [x], n_out=2, axis=1, num_outputs=2)
        return b.node("Concat", [c, a], axis=1), (4, 8, 8)
    p = save(_small(f, opset=18), tmp_path)
    g = load(p)
    assert [(n.start, n.stop) for n in g.nodes if isinstance(n, ir.ChannelSlice)] == [(0, 2), (2, 4)]
    assert g.nodes[-1].inputs == (g.nodes[1].output, g.nodes[0].output)
    float_close(g, p, (4, 8, 8))


def test_old_opset_attribute_forms(tmp_path):
    """Opset 10 exporters write Pad pads / Clip min, max / Split split as attributes."""
    def f(b):
        x = b.node("Pad", ["input"], mode="constant", pads=[0, 0, 0, 0, 0, 0, 1, 1])
        w = b.init("w", b.rng.normal(0, 0.3, (6, 4, 3, 3)).astype(np.float32))
        x = b.node("Conv", [x, w], strides=[2, 2])
        x = b.node("Clip", [x], min=0.0, max=6.0)
        a, c = b.node("Split", [x], n_out=2, axis=1, split=[2, 4])
        return b.node("Concat", [c, a], axis=1), (6, 4, 4)
    p = save(_small(f, opset=10), tmp_path)
    g = load(p)
    assert g.nodes[0].padding == (0, 0, 1, 1) and g.nodes[0].act is ir.Act.RELU6
    assert [(n.start, n.stop) for n in g.nodes[1:3]] == [(0, 2), (2, 6)]
    float_close(g, p, (4, 8, 8))


def test_fixed_batch_one_and_symbolic(tmp_path):
    for batch in (1, "batch"):
        def f(b):
            return b.conv("input", 4, 4, 3, act="relu6"), (4, 8, 8)
        g = load(save(_small(f, batch=batch), tmp_path))
        assert g.input_shape == (4, 8, 8) and g.nodes[0].act is ir.Act.RELU6


# --- quantized models ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    files = {}
    for name in ("keras_like", "torchvision_like"):
        fp = save(M.MODELS[name](), d, f"{name}.onnx")
        files[name, "float"] = fp
        for fmt in ("qdq", "qop"):
            for act in ("int8", "uint8"):
                files[name, fmt, act] = M.quantize(fp, os.path.join(d, f"{name}_{fmt}_{act}.onnx"),
                                                   fmt=fmt, activation=act)
    return files


@pytest.mark.parametrize("name", ["keras_like", "torchvision_like"])
@pytest.mark.parametrize("act", ["int8", "uint8"])
def test_qdq_and_qoperator_import_alike(quantized_files, name, act):
    """quantize_static's QDQ and QOperator files of one model import to the same QGraph
    (the same ops, the same float structure as the float import, the same numbers)."""
    fg = load(quantized_files[name, "float"])
    qd = load(quantized_files[name, "qdq", act])
    qo = load(quantized_files[name, "qop", act])
    for qg in (qd, qo):
        assert isinstance(qg, ir.QGraph) and qg.io_dtype == act
        assert [n.op for n in qg.graph.nodes] == [n.op for n in fg.nodes]
    for a, b in zip(qd.graph.nodes, qo.graph.nodes):
        same_in = all(qd.act_q[i] == qo.act_q[j] for i, j in zip(a.inputs, b.inputs))
        # In torchvision_like the formats differ after the first Slice: QOperator runs Slice
        # and AveragePool as float islands (DQ -> op -> Q) with their own calibrated output
        # quantisation (the IR op then requantizes), QDQ keeps the input's
        if name == "keras_like":
            assert qd.act_q[a.output] == qo.act_q[b.output], a.name
        if a.name in qd.weights:
            wa, wb = qd.weights[a.name], qo.weights[b.name]
            np.testing.assert_array_equal(wa.weight, wb.weight)
            np.testing.assert_array_equal(wa.scale, wb.scale)
            if same_in:
                np.testing.assert_array_equal(wa.bias, wb.bias)
    # the input quantisation is the file's first QuantizeLinear, zero point shifted for uint8
    m = onnx.load(quantized_files[name, "qdq", act])
    init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    q0 = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert qd.input_q.scale == float(np.float32(init[q0.input[1]]))
    assert qd.input_q.zero_point == int(init[q0.input[2]]) - (128 if act == "uint8" else 0)


def test_quantized_relu_vanishes_into_zero_point(quantized_files):
    """quantize_static drops Relu/Clip: the output range gives the clamp (zero point -128)."""
    qg = load(quantized_files["torchvision_like", "qop", "uint8"])
    first = qg.graph.nodes[0]
    assert qg.act_q[first.output].zero_point == -128


# --- errors -------------------------------------------------------------------------------

def _bad(tmp_path, nodes, inits=(), inputs=None, out=("y", [1, 4, 8, 8]), opset=17, domains=()):
    inputs = inputs or [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])]
    g = helper.make_graph(nodes, "bad", inputs,
                          [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]
                          + [helper.make_opsetid(d, 1) for d in domains])
    m.ir_version = 8
    return save(m, tmp_path)


def _w(name="w", shape=(4, 4, 3, 3)):
    return onnx.numpy_helper.from_array(np.ones(shape, np.float32), name)


def _c(name, v, dt=np.float32):
    return onnx.numpy_helper.from_array(np.asarray(v, dt), name)


ERRORS = {
    "unsupported op": (lambda: dict(nodes=[helper.make_node("Sigmoid", ["input"], ["y"], name="sig")]),
                       r"node 'sig' \(Sigmoid\): unsupported op; supported ops: .*Conv"),
    "dilation": (lambda: dict(nodes=[helper.make_node("Conv", ["input", "w"], ["y"], name="c1",
                                                      dilations=[2, 2], pads=[2, 2, 2, 2])],
                              inits=[_w()]),
                 r"node 'c1' \(Conv\): dilations=\[2, 2\] not supported \(only 1\)"),
    "non-constant weight": (lambda: dict(nodes=[helper.make_node("Conv", ["input", "input"], ["y"],
                                                                 name="c2")]),
                            r"node 'c2' \(Conv\): weight 'input' is not a constant"),
    "auto_pad": (lambda: dict(nodes=[helper.make_node("MaxPool", ["input"], ["y"], name="mp",
                                                      kernel_shape=[3, 3], auto_pad="FOO")]),
                 r"node 'mp' \(MaxPool\): auto_pad='FOO' not supported"),
    "unknown domain": (lambda: dict(nodes=[helper.make_node("Swish", ["input"], ["y"], name="sw",
                                                            domain="my.ops")], domains=["my.ops"]),
                       r"node 'sw' \(my.ops.Swish\): unknown operator domain 'my.ops'"),
    "ms op": (lambda: dict(nodes=[helper.make_node("QLinearSigmoid", ["input"], ["y"], name="qs",
                                                   domain="com.microsoft")],
                           domains=["com.microsoft"]),
              r"node 'qs' \(com.microsoft.QLinearSigmoid\): unsupported com.microsoft op"),
    "clip range": (lambda: dict(nodes=[helper.make_node("Conv", ["input", "w"], ["c"], name="c3",
                                                        pads=[1, 1, 1, 1]),
                                       helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="cl")],
                                inits=[_w(), _c("lo", 0.0), _c("hi", 3.0)]),
                   r"node 'cl' \(Clip\): Clip\(0.0, 3.0\) not supported"),
    "reflect pad": (lambda: dict(nodes=[helper.make_node("Pad", ["input", "p"], ["y"], name="pd",
                                                         mode="reflect")],
                                 inits=[_c("p", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)],
                                 out=("y", [1, 4, 10, 10])),
                    r"node 'pd' \(Pad\): mode='reflect' not supported"),
    "dangling pad": (lambda: dict(nodes=[helper.make_node("Pad", ["input", "p"], ["p1"], name="pd"),
                                         helper.make_node("Relu", ["p1"], ["y"], name="r")],
                                  inits=[_c("p", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)],
                                  out=("y", [1, 4, 10, 10])),
                     r"node 'r' \(Relu\): the output of Pad 'pd' must feed a Conv"),
    "concat axis": (lambda: dict(nodes=[helper.make_node("Concat", ["input", "input"], ["y"],
                                                         name="cc", axis=2)],
                                 out=("y", [1, 4, 16, 8])),
                    r"node 'cc' \(Concat\): axis=2: only concatenation on the channel axis"),
    "slice H": (lambda: dict(nodes=[helper.make_node("Slice", ["input", "s", "e", "a"], ["y"],
                                                     name="sl")],
                             inits=[_c("s", [0], np.int64), _c("e", [4], np.int64),
                                    _c("a", [2], np.int64)], out=("y", [1, 4, 4, 8])),
                r"node 'sl' \(Slice\): .*only slicing the channel axis"),
    "standalone relu": (lambda: dict(nodes=[helper.make_node("Relu", ["input"], ["y"], name="r0")]),
                        r"node 'r0' \(Relu\): Relu must follow a Conv, Gemm, Add or Concat"),
    "bn alone": (lambda: dict(nodes=[helper.make_node("BatchNormalization",
                                                      ["input", "g", "b", "m", "v"], ["y"], name="bn")],
                              inits=[_c(k, np.ones(4)) for k in "gbmv"]),
                 r"node 'bn' \(BatchNormalization\): BatchNormalization must directly follow a Conv"),
    "channels last": (lambda: dict(nodes=[helper.make_node("Transpose", ["input"], ["y"], name="tr",
                                                           perm=[0, 3, 1, 2])],
                                   inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         [1, 32, 32, 3])],
                                   out=("y", [1, 3, 32, 32])),
                      r"looks channels-last \(N, H, W, C\)"),
    "batch arithmetic": (lambda: dict(nodes=[helper.make_node("Shape", ["input"], ["s"], name="sh"),
                                             helper.make_node("Mul", ["s", "two"], ["s2"], name="mul"),
                                             helper.make_node("Reshape", ["input", "s2"], ["y"],
                                                              name="rs")],
                                      inits=[_c("two", [2, 1, 1, 1], np.int64)]),
                         r"node 'mul' \(Mul\): arithmetic on the batch size is not supported"),
    "mul activation": (lambda: dict(nodes=[helper.make_node("Mul", ["input", "two"], ["y"], name="m")],
                                    inits=[_c("two", 2.0)]),
                       r"node 'm' \(Mul\): only supported on constants and shape values"),
    "transpose": (lambda: dict(nodes=[helper.make_node("Transpose", ["input"], ["y"], name="tr",
                                                       perm=[0, 1, 3, 2])]),
                  r"node 'tr' \(Transpose\): perm=\[0, 1, 3, 2\]: Transpose is only supported inside"),
    "two inputs": (lambda: dict(nodes=[helper.make_node("Add", ["input", "b"], ["y"], name="a")],
                                inputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8, 8])
                                        for n in ("input", "b")]),
                   r"2 inputs \(\['input', 'b'\]\); exactly one image input"),
    "symbolic H": (lambda: dict(nodes=[helper.make_node("Relu", ["input"], ["y"], name="r")],
                                inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                      ["N", 4, "H", "W"])]),
                   r"C, H and W must be fixed"),
    "1-D conv": (lambda: dict(nodes=[helper.make_node("Conv", ["input", "w"], ["y"], name="c1d")],
                              inits=[_w(shape=(4, 4, 3))],
                              inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                    [1, 4, 8, 8])]),
                 r"node 'c1d' \(Conv\): weight shape \(4, 4, 3\): only 2-D convolutions"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_import_errors(tmp_path, case):
    build, pattern = ERRORS[case]
    before = set(os.listdir(tmp_path))
    p = _bad(tmp_path, **build())
    with pytest.raises(OnnxImportError, match=pattern):
        load(p)
    assert set(os.listdir(tmp_path)) == before | {os.path.basename(p)}  # nothing written


def test_malformed_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff\xff")
    with pytest.raises(OnnxImportError, match="junk.onnx"):
        load(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(OnnxImportError, match="no ONNX graph nodes"):
        load(empty)
    with pytest.raises(OnnxImportError, match="no such file"):
        load(tmp_path / "missing.onnx")
    # a structurally invalid graph (a node reads an undefined tensor)
    bad = _bad(tmp_path, nodes=[helper.make_node("Relu", ["nowhere"], ["y"], name="r")])
    with pytest.raises(OnnxImportError, match="invalid ONNX model"):
        load(bad)
    assert issubclass(OnnxImportError, ValueError)


def test_quantized_errors(tmp_path, quantized_files):
    # asymmetric uint8 weights are refused with the fix
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre = str(tmp_path / "pre.onnx")
    quant_pre_process(quantized_files["keras_like", "float"], pre, skip_symbolic_shape=True)
    out = str(tmp_path / "u8w.onnx")
    quantize_static(pre, out,
                    M.RandomReader((3, 32, 32), 2), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    with pytest.raises(OnnxImportError, match=r"node 'conv4_quant' \(QLinearConv\): "
                                              r"asymmetric uint8 weights .* weight_type=QInt8"):
        load(out)
    # BN left in a quantized graph (no quant_pre_process): a clear error with the fix
    out2 = str(tmp_path / "bn.onnx")
    quantize_static(quantized_files["keras_like", "float"], out2,
                    M.RandomReader((3, 32, 32), 2), quant_format=QuantFormat.QDQ)
    with pytest.raises(OnnxImportError, match=r"quant_pre_process"):
        load(out2)


def test_integer_input_model(tmp_path, quantized_files):
    """A QOperator model whose input is already uint8 (no QuantizeLinear): io_dtype uint8,
    and the golden model reproduces onnxruntime on it."""
    from hwgen.golden import runner
    m = onnx.load(quantized_files["torchvision_like", "qop", "uint8"])
    q0 = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    m.graph.node.remove(q0)
    del m.graph.input[:]
    m.graph.input.append(helper.make_tensor_value_info(q0.output[0], TensorProto.UINT8,
                                                       [1, 3, 32, 32]))
    p = save(m, tmp_path, "u8in.onnx")
    qg = load(p)
    assert isinstance(qg, ir.QGraph) and qg.io_dtype == "uint8"
    x = np.random.default_rng(3).integers(0, 256, (4, 3, 32, 32)).astype(np.uint8)
    y_ort = run_onnxruntime(p, x)                   # float: the model ends in DequantizeLinear
    y = runner.run(qg, x)
    np.testing.assert_array_equal(qg.output_q.dequantize(y.astype(np.int16) - 128).reshape(y_ort.shape),
                                  y_ort)
