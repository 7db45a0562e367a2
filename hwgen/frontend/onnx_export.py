"""hwgen IR -> ONNX: float models and QDQ models that onnxruntime runs bit-exactly.

Both exports have one input ``"input"`` of shape ``(N, C, H, W)`` float32 with a symbolic
batch ``N``, and the graph's outputs under their IR names (a FullyConnected output is
``(N, classes)``). Files are written atomically: a temporary file in the target directory,
renamed over the target once complete, so a failed export leaves nothing behind.

QDQ layout (what ``onnxruntime.quantization.quantize_static`` writes, with the QGraph's
exact numbers): every IR tensor ``t`` is produced in float as ``t/f``, quantized by
``QuantizeLinear`` to ``t/q`` and dequantized back to ``t`` for its consumers. Conv / Gemm
weights are int8 initializers dequantized per output channel (axis 0), biases int32 with
scale ``x_scale * w_scale``. A fused ReLU / ReLU6 whose clamp is the whole int8 range
(zero point -128 after a ReLU, [0, 6] range after a ReLU6: what hwgen's quantizer and
quantize_static produce) is not written at all, as quantize_static does: the output
quantisation is the clamp, and ``load`` gives back act NONE with the same arithmetic.
Any other clamp is written after the op's own quantisation, as ``DequantizeLinear ->
Relu/Clip -> QuantizeLinear`` with the same parameters (exact). With graph optimisations on,
onnxruntime fuses these into QLinearConv, QGemm, QLinearAdd, QLinearConcat,
QLinearAveragePool and QLinearGlobalAveragePool and reproduces ``hwgen.golden.run``.

Measured with onnxruntime 1.32 on x86-64: uint8 exports fuse completely and are bit-exact.
With int8 activations onnxruntime fuses convs only through its int8 -> uint8 rewrite,
which skips a tensor read by several ops (SqueezeNet fire modules, residual branches);
the convs around such a tensor run in float there, a few elements one step apart.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import ir

__all__ = ["OnnxExportError", "export_float", "export_qdq", "to_float_model", "to_qdq_model"]

OPSET = 17
IR_VERSION = 8
INPUT = "input"


class OnnxExportError(ValueError):
    """A graph that cannot be written as ONNX; the message names the node."""


class _Writer:
    def __init__(self, graph: ir.Graph, batch):
        self.g = graph
        self.batch = batch
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.flat: set[str] = set()      # ONNX names holding (N, features)
        self._consts: dict[tuple, str] = {}
        self._n = 0

    def uid(self, base: str) -> str:
        self._n += 1
        return f"{base}#{self._n}"

    def init(self, name: str, arr) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def const(self, arr, dtype) -> str:
        arr = np.asarray(arr, dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"const#{len(self._consts)}", arr)
        return self._consts[key]

    def node(self, op: str, inputs, output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output

    def as_4d(self, name: str, tensor: str) -> str:
        """A (N, C, H, W) view of an ONNX tensor (FC outputs are (N, features))."""
        if name not in self.flat:
            return name
        return self.node("Reshape", [name, self.const([0, -1, 1, 1], np.int64)],
                         self.uid(name + "/4d"), self.uid(tensor + "/reshape"))

    def as_flat(self, name: str, tensor: str) -> str:
        if name in self.flat:
            return name
        return self.node("Reshape", [name, self.const([0, -1], np.int64)],
                         self.uid(name + "/flat"), self.uid(tensor + "/flatten"))

    def act(self, x: str, act: ir.Act, out: str, name: str) -> str:
        if act is ir.Act.RELU:
            return self.node("Relu", [x], out, name)
        if act is ir.Act.RELU6:
            return self.node("Clip", [x, self.const(0.0, np.float32), self.const(6.0, np.float32)],
                             out, name)
        return x

    def op(self, node: ir.Node, ins: list[str], out: str, w: str | None = None,
           b: str | None = None) -> str:
        """Emit the float op of ``node`` reading ONNX tensors ``ins``, writing ``out``
        (without its activation)."""
        n = node.name
        if isinstance(node, ir.Conv2d):
            return self.node("Conv", [self.as_4d(ins[0], node.inputs[0]), w, b], out, n,
                             kernel_shape=list(node.kernel), strides=list(node.stride),
                             pads=list(node.padding), group=node.groups, dilations=[1, 1])
        if isinstance(node, ir.FullyConnected):
            self.flat.add(out)
            return self.node("Gemm", [self.as_flat(ins[0], node.inputs[0]), w, b], out, n, transB=1)
        if isinstance(node, (ir.MaxPool, ir.AvgPool)):
            attrs = dict(kernel_shape=list(node.kernel), strides=list(node.stride),
                         pads=list(node.padding), ceil_mode=int(node.ceil_mode))
            if isinstance(node, ir.AvgPool):
                attrs["count_include_pad"] = int(node.count_include_pad)
            return self.node(node.op.replace("AvgPool", "AveragePool"),
                             [self.as_4d(ins[0], node.inputs[0])], out, n, **attrs)
        if isinstance(node, ir.GlobalAvgPool):
            return self.node("GlobalAveragePool", [self.as_4d(ins[0], node.inputs[0])], out, n)
        if isinstance(node, ir.Add):
            a, c = (self.as_4d(i, t) for i, t in zip(ins, node.inputs))
            return self.node("Add", [a, c], out, n)
        if isinstance(node, ir.Concat):
            return self.node("Concat", [self.as_4d(i, t) for i, t in zip(ins, node.inputs)], out, n,
                             axis=1)
        if isinstance(node, ir.ChannelSlice):
            return self.node("Slice", [self.as_4d(ins[0], node.inputs[0]),
                                       self.const([node.start], np.int64),
                                       self.const([node.stop], np.int64),
                                       self.const([1], np.int64)], out, n)
        raise OnnxExportError(f"node '{node.name}': no ONNX export for op {node.op}")

    def shuffle(self, node: ir.ChannelShuffle, x: str, out: str, qdq=None) -> str:
        """Reshape-Transpose-Reshape; ``qdq(name, tensor)`` re-quantizes between the steps."""
        c, h, w = self.g.shapes[node.inputs[0]]
        g = node.groups
        x = self.as_4d(x, node.inputs[0])
        r1 = self.node("Reshape", [x, self.const([0, g, c // g, h, w], np.int64)],
                       self.uid(out + "/5d"), node.name)
        if qdq:
            r1 = qdq(r1)
        t = self.node("Transpose", [r1], self.uid(out + "/5dT"), node.name + "/transpose",
                      perm=[0, 2, 1, 3, 4])
        if qdq:
            t = qdq(t)
        return self.node("Reshape", [t, self.const([0, c, h, w], np.int64)], out,
                         node.name + "/reshape2")

    def value_info(self, name: str, tensor: str, elem=TensorProto.FLOAT):
        shape = self.g.shapes[tensor]
        dims = [self.batch, shape[0]] if name in self.flat else [self.batch, *shape]
        return helper.make_tensor_value_info(name, elem, dims)

    def model(self, inputs, outputs, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="hwgen")
        m.ir_version = IR_VERSION
        try:
            onnx.checker.check_model(m)
        except Exception as e:  # pragma: no cover - a bug in the writer
            raise OnnxExportError(f"the exported model does not check: {e}") from None
        return m


def _names(graph: ir.Graph) -> dict[str, str]:
    """IR tensor -> ONNX name; the graph input is always "input"."""
    names = {t: t for t in graph.shapes}
    if graph.input_name != INPUT:
        names[graph.input_name] = INPUT
        if INPUT in names and INPUT != graph.input_name:
            names[INPUT] = INPUT + "_"
    return names


def _check_graph(graph):
    if not isinstance(graph, ir.Graph):
        raise TypeError(f"expected an ir.Graph, got {type(graph).__name__}")
    if len(graph.inputs) != 1:
        raise OnnxExportError(f"graph '{graph.name}' has {len(graph.inputs)} inputs; one supported")


def to_float_model(graph: ir.Graph, batch="N") -> onnx.ModelProto:
    """The float ONNX model of ``graph`` (see :func:`export_float`)."""
    _check_graph(graph)
    w = _Writer(graph, batch)
    names = _names(graph)
    for node in graph.nodes:
        ins = [names[t] for t in node.inputs]
        out = names[node.output]
        act = getattr(node, "act", ir.Act.NONE)
        pre = out if act is ir.Act.NONE else out + "/pre"
        if isinstance(node, ir.ChannelShuffle):
            w.shuffle(node, ins[0], out)
            continue
        wt = bs = None
        if isinstance(node, (ir.Conv2d, ir.FullyConnected)):
            wt = w.init(node.name + ".weight", np.asarray(node.weight, np.float32))
            bs = w.init(node.name + ".bias", np.asarray(node.bias, np.float32))
        w.op(node, ins, pre, wt, bs)
        if act is not ir.Act.NONE:
            if pre in w.flat:
                w.flat.add(out)
            w.act(pre, act, out, node.name + "/" + act.value)
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *graph.input_shape])
    outs = [w.value_info(names[t], t) for t in graph.outputs]
    return w.model([inp], outs, graph.name)


def to_qdq_model(qgraph: ir.QGraph, batch="N") -> onnx.ModelProto:
    """The QDQ ONNX model of ``qgraph`` (see :func:`export_qdq`)."""
    if not isinstance(qgraph, ir.QGraph):
        raise TypeError(f"expected an ir.QGraph, got {type(qgraph).__name__}")
    graph = qgraph.graph
    _check_graph(graph)
    w = _Writer(graph, batch)
    u8 = qgraph.io_dtype == "uint8"
    zp_dtype = np.uint8 if u8 else np.int8
    names = _names(graph)
    qp: dict[str, tuple[str, str]] = {}

    def qparams(t: str) -> tuple[str, str]:
        if t not in qp:
            q = qgraph.act_q[t]
            qp[t] = (w.init(names[t] + "/scale", np.array(q.scale, np.float32)),
                     w.init(names[t] + "/zero_point", np.array(q.zero_point + (128 if u8 else 0),
                                                                 zp_dtype)))
        return qp[t]

    def quant(x: str, t: str, q_name: str, dq_name: str) -> str:
        s, z = qparams(t)
        qn = w.node("QuantizeLinear", [x, s, z], q_name, q_name + "/QuantizeLinear")
        dq = w.node("DequantizeLinear", [qn, s, z], dq_name, dq_name + "/DequantizeLinear")
        if x in w.flat:
            w.flat.update((qn, dq))
        return dq

    in_t = graph.input_name
    dq_of = {in_t: quant(INPUT, in_t, INPUT + "/q", INPUT + "/dq")}
    for node in graph.nodes:
        t = node.output
        out = names[t]
        ins = [dq_of[i] for i in node.inputs]
        act = getattr(node, "act", ir.Act.NONE)
        if isinstance(node, ir.ChannelShuffle):
            f = w.shuffle(node, ins[0], out + "/f",
                          qdq=lambda x, t=t: quant(x, t, x + "/q", x + "/dq"))
        else:
            wt = bs = None
            if isinstance(node, (ir.Conv2d, ir.FullyConnected)):
                qw = qgraph.weights[node.name]
                o = qw.weight.shape[0]
                ws = np.asarray(qw.scale, np.float32)
                wi = w.init(node.name + ".weight_q", np.asarray(qw.weight, np.int8))
                wsn = w.init(node.name + ".weight_scale", ws)
                wzn = w.init(node.name + ".weight_zero_point", np.zeros(o, np.int8))
                wt = w.node("DequantizeLinear", [wi, wsn, wzn], node.name + ".weight",
                            node.name + ".weight/DequantizeLinear", axis=0)
                xs = np.float32(qgraph.act_q[node.inputs[0]].scale)
                bi = w.init(node.name + ".bias_q", np.asarray(qw.bias, np.int32))
                bsn = w.init(node.name + ".bias_scale", (xs * ws).astype(np.float32))
                bzn = w.init(node.name + ".bias_zero_point", np.zeros(o, np.int32))
                bs = w.node("DequantizeLinear", [bi, bsn, bzn], node.name + ".bias",
                            node.name + ".bias/DequantizeLinear", axis=0)
            if isinstance(node, ir.FullyConnected) and ins[0] not in w.flat:
                # flatten in the integer domain so that DQ -> Gemm -> Q fuses into QGemm
                src = node.inputs[0]
                flat = w.as_flat(ins[0], src)
                w.flat.add(flat)
                ins = [quant(flat, src, flat + "/q", flat + "/dq")]
            f = w.op(node, ins, out + "/f", wt, bs)
        if ir.clamp_range(act, qgraph.act_q[t]) != (-128, 127):
            # a clamp inside the int8 range: the op's own quantisation, then the clamp as
            # DQ -> act -> Q with the same parameters (exact)
            a = quant(f, t, out + "/f/q", out + "/f/dq")
            f = w.act(a, act, out + "/act", node.name + "/" + act.value)
            if a in w.flat:
                w.flat.add(f)
        dq_of[t] = quant(f, t, out + "/q", out)
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [batch, *graph.input_shape])
    outs = [w.value_info(dq_of[t], t) for t in graph.outputs]
    return w.model([inp], outs, graph.name)


def _write_atomic(model: onnx.ModelProto, path) -> str:
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise OnnxExportError(f"cannot write '{path}': directory '{d}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".hwgen-", suffix=".onnx.tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def export_float(graph: ir.Graph, path, batch="N") -> str:
    """Write ``graph`` as a float ONNX model onnxruntime runs.

    Parameters
    ----------
    graph: the float graph (a :class:`ir.QGraph`'s ``.graph`` works too).
    path: target file; written atomically (nothing is left behind on error).
    batch: the batch dimension: a symbolic name (default ``"N"``) or a fixed int.

    Returns
    -------
    The path written.
    """
    return _write_atomic(to_float_model(graph, batch), path)


def export_qdq(qgraph: ir.QGraph, path, batch="N") -> str:
    """Write ``qgraph`` as a QDQ ONNX model with its exact scales, zero points and int8
    weights; onnxruntime (graph optimisations on) reproduces ``hwgen.golden.run`` on it.

    The input is float (quantized by the first QuantizeLinear with ``qgraph.input_q``), the
    outputs are dequantized floats, as ``quantize_static`` writes them. Activations are int8,
    or uint8 (zero points + 128) when ``qgraph.io_dtype == "uint8"``.

    Parameters
    ----------
    qgraph: the quantized graph.
    path: target file; written atomically (nothing is left behind on error).
    batch: the batch dimension: a symbolic name (default ``"N"``) or a fixed int.

    Returns
    -------
    The path written. ``load`` of it gives a QGraph with the same ops, names, QParams and
    integer weights (a fused activation whose clamp is the whole int8 range comes back as
    act NONE: the same arithmetic).
    """
    return _write_atomic(to_qdq_model(qgraph, batch), path)
