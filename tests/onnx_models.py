"""Hand-built ONNX models that mimic what other projects' exporters write (test helper).

torch is not a dependency of hwgen, so instead of exporting torchvision / Keras models the
tests build graphs with ``onnx.helper`` in the shape those exporters produce:

* :func:`keras_like` — tf2onnx / Keras MobileNet style: asymmetric ``Pad`` before stride-2
  convs, ``Clip(0, 6)`` ReLU6, BatchNormalization, ``ReduceMean`` over H, W, 1x1 conv head
  + ``Reshape(-1, classes)``; dynamic batch.
* :func:`torchvision_like` — torchvision ShuffleNet v2 / MobileNet v2 style: Conv + BN + Relu,
  ``MaxPool`` with ``ceil_mode=1``, ``Split`` and ``Slice`` on channels, ``Concat``,
  Reshape-Transpose-Reshape channel shuffle, inverted residual ``Add``, ``AveragePool``,
  ``GlobalAveragePool`` + ``Flatten`` + ``Gemm``; batch fixed to 1 (torch.onnx default).

:func:`quantize` runs onnxruntime's own ``quant_pre_process`` + ``quantize_static`` on them.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Builder:
    """Accumulates nodes and seeded random initializers of an NCHW float model."""

    def __init__(self, name: str, in_shape, batch="N", seed: int = 0):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.in_shape = tuple(in_shape)
        self.batch = batch
        self.shapes = {"input": tuple(in_shape)}
        self.n = 0

    def _uid(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, inputs, n_out=1, name=None, **attrs):
        name = name or self._uid(op.lower() + "_")
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def conv(self, x, cin, cout, k=3, stride=1, pads=None, group=1, bias=True, bn=False,
             act=None):
        p = (k // 2,) * 4 if pads is None else tuple(pads)
        fan = cin // group * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan), (cout, cin // group, k, k)).astype(np.float32)
        name = self._uid("conv")
        ins = [x, self.init(name + ".w", w)]
        if bias:
            ins.append(self.init(name + ".b", self.rng.normal(0, 0.1, cout).astype(np.float32)))
        y = self.node("Conv", ins, name=name, kernel_shape=[k, k], strides=[stride, stride],
                      pads=list(p), group=group)
        if bn:
            bname = self._uid("bn")
            prm = [self.init(f"{bname}.{t}", np.asarray(v, np.float32)) for t, v in (
                ("g", self.rng.uniform(0.5, 1.5, cout)), ("b", self.rng.normal(0, 0.2, cout)),
                ("m", self.rng.normal(0, 0.2, cout)), ("v", self.rng.uniform(0.5, 2.0, cout)))]
            y = self.node("BatchNormalization", [y] + prm, name=bname, epsilon=1e-3)
        return self.act(y, act)

    def act(self, y, act):
        if act == "relu":
            return self.node("Relu", [y])
        if act == "relu6":
            lo = self.init(self._uid("c"), np.array(0.0, np.float32))
            hi = self.init(self._uid("c"), np.array(6.0, np.float32))
            return self.node("Clip", [y, lo, hi])
        return y

    def pad(self, x, t, l, b, r):
        pads = self.init(self._uid("pads"), np.array([0, 0, t, l, 0, 0, b, r], np.int64))
        val = self.init(self._uid("padv"), np.array(0.0, np.float32))
        return self.node("Pad", [x, pads, val], mode="constant")

    def const_i64(self, vals):
        return self.init(self._uid("shape"), np.array(vals, np.int64))

    def gemm(self, x, fin, fout):
        name = self._uid("fc")
        w = self.rng.normal(0, np.sqrt(1.0 / fin), (fout, fin)).astype(np.float32)
        b = self.rng.normal(0, 0.1, fout).astype(np.float32)
        return self.node("Gemm", [x, self.init(name + ".w", w), self.init(name + ".b", b)],
                         name=name, transB=1)

    def model(self, output, out_shape, opset: int = OPSET) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [self.batch, *self.in_shape])
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, [self.batch, *out_shape])
        g = helper.make_graph(self.nodes, self.name, [inp], [out], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="hwgen-tests")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def keras_like(seed: int = 0, res: int = 32, classes: int = 10, bn: bool = True) -> onnx.ModelProto:
    """MobileNet-v1-like graph as tf2onnx writes a Keras model (NCHW input, dynamic batch).
    ``bn=False``: BatchNormalization already folded, as tf2onnx usually does."""
    b = Builder("keras_like", (3, res, res), batch="N", seed=seed)
    conv = b.conv
    b.conv = lambda *a, **k: conv(*a, **{**k, "bn": k.get("bn", False) and bn,
                                         "bias": k.get("bias", True) or not bn})
    x = b.pad("input", 0, 0, 1, 1)                                    # Keras 'valid' + ZeroPadding2D
    x = b.conv(x, 3, 8, 3, 2, pads=(0, 0, 0, 0), bias=False, bn=True, act="relu6")
    x = b.conv(x, 8, 8, 3, 1, group=8, bias=False, bn=True, act="relu6")   # depthwise
    x = b.conv(x, 8, 16, 1, bias=False, bn=True, act="relu6")
    x = b.pad(x, 0, 0, 1, 1)
    x = b.conv(x, 16, 16, 3, 2, pads=(0, 0, 0, 0), group=16, bias=False, bn=True, act="relu6")
    x = b.conv(x, 16, 32, 1, bias=False, bn=True, act="relu6")
    x = b.conv(x, 32, 32, 3, 1, group=32, bias=False, bn=True, act="relu6")
    x = b.conv(x, 32, 32, 1, bias=False, bn=True, act="relu6")
    x = b.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
    x = b.conv(x, 32, classes, 1, bias=True)
    x = b.node("Reshape", [x, b.const_i64([-1, classes])])
    return b.model(x, (classes,))


def torchvision_like(seed: int = 0, res: int = 32, classes: int = 10) -> onnx.ModelProto:
    """ShuffleNet-v2 / MobileNet-v2-like graph as torch.onnx writes it (batch fixed to 1)."""
    b = Builder("torchvision_like", (3, res, res), batch=1, seed=seed)
    x = b.conv("input", 3, 16, 3, 2, bias=False, bn=True, act="relu")
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    h = -(-(res // 2 - 3) // 2) + 1
    # ShuffleNet v2 unit: split, branch, concat, shuffle
    s = b.init(b._uid("split"), np.array([8, 8], np.int64))
    x1, x2 = b.node("Split", [x, s], n_out=2, axis=1)
    y = b.conv(x2, 8, 8, 1, bias=False, bn=True, act="relu")
    y = b.conv(y, 8, 8, 3, group=8, bias=False, bn=True)
    y = b.conv(y, 8, 8, 1, bias=False, bn=True, act="relu")
    x = b.node("Concat", [x1, y], axis=1)
    x = b.node("Reshape", [x, b.const_i64([1, 2, 8, h, h])])
    x = b.node("Transpose", [x], perm=[0, 2, 1, 3, 4])
    x = b.node("Reshape", [x, b.const_i64([1, 16, h, h])])
    # second unit with Slice instead of Split (torch's chunk exports either)
    x1 = b.node("Slice", [x, b.const_i64([0]), b.const_i64([8]), b.const_i64([1])])
    x2 = b.node("Slice", [x, b.const_i64([8]), b.const_i64([16]), b.const_i64([1])])
    y = b.conv(x2, 8, 8, 1, bias=False, bn=True, act="relu")
    y = b.conv(y, 8, 8, 3, group=8, bias=False, bn=True)
    y = b.conv(y, 8, 8, 1, bias=False, bn=True, act="relu")
    x = b.node("Concat", [x1, y], axis=1)
    x = b.node("Reshape", [x, b.const_i64([1, 2, 8, h, h])])
    x = b.node("Transpose", [x], perm=[0, 2, 1, 3, 4])
    x = b.node("Reshape", [x, b.const_i64([1, 16, h, h])])
    # MobileNet v2 inverted residual
    y = b.conv(x, 16, 48, 1, bias=False, bn=True, act="relu6")
    y = b.conv(y, 48, 48, 3, group=48, bias=False, bn=True, act="relu6")
    y = b.conv(y, 48, 16, 1, bias=False, bn=True)
    x = b.node("Add", [x, y])
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv(x, 16, 32, 1, bias=False, bn=True, act="relu")
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.gemm(x, 32, classes)
    return b.model(x, (classes,))


def keras_dense(seed: int = 0, res: int = 16, classes: int = 5) -> onnx.ModelProto:
    """A Keras classifier with a Dense head as tf2onnx writes it: ReduceMean(keepdims=0),
    MatMul + Add (quant_pre_process fuses them into Gemm before quantisation)."""
    b = Builder("keras_dense", (3, res, res), batch="N", seed=seed)
    x = b.pad("input", 0, 0, 1, 1)
    x = b.conv(x, 3, 8, 3, 2, pads=(0, 0, 0, 0), bias=False, bn=True, act="relu")
    x = b.conv(x, 8, 16, 1, bias=True, act="relu6")
    y = b.node("ReduceMean", [x], axes=[2, 3], keepdims=0)
    w = b.init("dense.w", b.rng.normal(0, 0.3, (16, classes)).astype(np.float32))
    y = b.node("MatMul", [y, w])
    y = b.node("Add", [y, b.init("dense.b", b.rng.normal(0, 0.1, classes).astype(np.float32))])
    return b.model(y, (classes,))


MODELS = {"keras_like": keras_like, "torchvision_like": torchvision_like,
          "keras_dense": keras_dense}
SHAPES = {"keras_like": (3, 32, 32), "torchvision_like": (3, 32, 32), "keras_dense": (3, 16, 16)}


class RandomReader:
    """onnxruntime CalibrationDataReader of seeded random images."""

    def __init__(self, shape, n: int = 8, seed: int = 1, name: str = "input"):
        rng = np.random.default_rng(seed)
        self._data = iter([{name: rng.normal(0, 1, (1, *shape)).astype(np.float32)}
                           for _ in range(n)])

    def get_next(self):
        return next(self._data, None)


def quantize(float_path, out_path, fmt: str = "qdq", per_channel: bool = True,
             activation: str = "int8", n_calib: int = 8, preprocess: bool = True,
             **options) -> str:
    """quant_pre_process + quantize_static, as a user of onnxruntime would run them
    (``preprocess=False``: quantize_static alone, Pad and MatMul + Add stay unfused)."""
    from onnxruntime.quantization import (QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = os.fspath(out_path) + ".pre.onnx"
    if preprocess:
        quant_pre_process(os.fspath(float_path), pre, skip_symbolic_shape=True)
    else:
        onnx.save(onnx.load(os.fspath(float_path)), pre)
    shape = [d.dim_value for d in onnx.load(pre).graph.input[0].type.tensor_type.shape.dim][1:]
    quantize_static(
        pre, os.fspath(out_path), RandomReader(shape, n_calib),
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        per_channel=per_channel,
        activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8, **options)
    os.remove(pre)
    return os.fspath(out_path)


# --- running onnxruntime and comparing it with the golden model ---------------------------

def ort_session(model: onnx.ModelProto, optimize: bool = True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_run_all(model: onnx.ModelProto, x: np.ndarray, extra: dict[str, int],
                optimize: bool = True) -> dict[str, np.ndarray]:
    """Run ``model`` on the batch ``x`` with the tensors ``extra`` (name -> onnx elem type)
    added as graph outputs; images one by one when the file fixes N = 1."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name, elem in extra.items():
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    sess = ort_session(m, optimize)
    inp = sess.get_inputs()[0]
    names = [o.name for o in sess.get_outputs()]
    fixed = isinstance(inp.shape[0], int)
    chunks = [x[i:i + 1] for i in range(len(x))] if fixed else [x]
    res = [sess.run(names, {inp.name: c}) for c in chunks]
    return {n: np.concatenate([r[k] for r in res]) for k, n in enumerate(names)}


def to_int8(a: np.ndarray) -> np.ndarray:
    """onnxruntime int8/uint8 tensor -> the IR's internal int8 form."""
    a = np.asarray(a)
    return (a.astype(np.int16) - 128).astype(np.int8) if a.dtype == np.uint8 else a.astype(np.int8)


def compare_with_ort(qg, int_names: dict, model: onnx.ModelProto, xs: np.ndarray,
                     optimize: bool = True, onnx_names: dict | None = None) -> dict:
    """Layer by layer (each IR node fed onnxruntime's own input tensors) and end to end.

    Layer by layer reads onnxruntime's tensors by adding them as graph outputs; end to end
    runs the file unchanged (with int8 QDQ files those extra outputs stop onnxruntime's
    int8 -> uint8 rewrite, so some layers run in float only in the probed run).

    Returns a dict: ``layers`` (list of (node name, op, identical fraction, max abs step
    difference)), ``min_identical``, ``max_step``, ``top1`` (fraction of inputs whose top-1
    matches), ``median_step`` (median absolute end-to-end difference), ``max_end_step``,
    ``end_identical``.
    """
    from hwgen.golden import runner
    g = qg.graph
    elem = TensorProto.UINT8 if qg.io_dtype == "uint8" else TensorProto.INT8
    pick, fpick = {}, {}
    for t in g.shapes:
        cands = int_names.get(t, [])
        if cands:
            pick[t] = cands[0]
        elif onnx_names and onnx_names.get(t) and t != g.input_name:
            fpick[t] = onnx_names[t][0]    # a float island: ORT's float tensor, quantized
        elif t != g.input_name:  # the input may be quantized only after a float Pad
            raise AssertionError(f"no integer ONNX tensor found for IR tensor '{t}'")
    extra = {n: elem for n in pick.values()} | {n: TensorProto.FLOAT for n in fpick.values()}
    out = ort_run_all(model, xs, extra, optimize)
    n = len(xs)
    ort_t = {t: to_int8(out[name]).reshape((n, *g.shapes[t])) for t, name in pick.items()}
    ort_t |= {t: qg.act_q[t].quantize(out[name]).reshape((n, *g.shapes[t]))
              for t, name in fpick.items()}
    ort_t.setdefault(g.input_name, qg.input_q.quantize(xs))
    offset = 128 if qg.io_dtype == "uint8" else 0
    layers = []
    for node in g.nodes:
        y = runner._node(qg, node, [ort_t[i] for i in node.inputs], offset)
        ref = ort_t[node.output]
        d = np.abs(y.astype(np.int32) - ref.astype(np.int32))
        layers.append((node.name, node.op, float(np.mean(d == 0)), int(d.max())))
    # end to end: the file as a user runs it (extra graph outputs change onnxruntime's
    # int8 fusions), its first output turned back into integer steps
    xq = ort_t[g.input_name]
    np.testing.assert_array_equal(xq, qg.input_q.quantize(xs))
    xin = (xq.astype(np.int16) + 128).astype(np.uint8) if offset else xq
    y = to_int8(runner.run(qg, xin)).astype(np.int32)
    first = model.graph.output[0].name
    y_ort = ort_run_all(model, xs, {}, optimize)[first]
    if np.issubdtype(y_ort.dtype, np.floating):
        q = qg.output_q
        y_ort = np.rint(y_ort / np.float32(q.scale)).astype(np.int32) + q.zero_point
    else:
        y_ort = to_int8(y_ort)
    ref = y_ort.astype(np.int32).reshape(y.shape)
    d = np.abs(y - ref)
    return {
        "layers": layers,
        "min_identical": min(l[2] for l in layers),
        "max_step": max(l[3] for l in layers),
        "top1": float(np.mean(y.reshape(n, -1).argmax(1) == ref.reshape(n, -1).argmax(1))),
        "median_step": float(np.median(d)),
        "max_end_step": int(d.max()),
        "end_identical": float(np.mean(d == 0)),
    }
