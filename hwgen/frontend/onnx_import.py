"""ONNX -> hwgen IR: float, QDQ and QOperator models.

The import runs in two passes:

1. :class:`_Lowering` reads the ONNX graph into *logical* ops. QuantizeLinear and
   DequantizeLinear are not ops here: they attach quantisation parameters (:class:`_Q`) to
   a logical tensor and make their input and output names aliases of it. QLinear* and the
   com.microsoft quantized ops become their float twin (QLinearConv -> Conv, QGemm -> Gemm,
   ...) with the quantisation of their inputs, outputs and weights recorded the same way.
   A QDQ model and the QOperator model quantize_static writes from the same float model
   therefore lower to the same logical graph.
2. :class:`_Builder` walks the logical ops in order and emits IR nodes, matching the
   patterns real exports contain: Conv + BatchNormalization + Relu/Clip, Pad merged into
   the next Conv / pool, Flatten/Reshape + Gemm (or MatMul + Add) as FullyConnected,
   Reshape-Transpose-Reshape as ChannelShuffle, Split/Slice on channels as ChannelSlice.
   Ops whose inputs are all constants are evaluated (weights reshaped in the graph, and
   the Shape -> Gather -> Unsqueeze -> Concat chains torch.onnx writes for a dynamic
   batch, where the batch size is a marker that may only be copied).

Quantized models: every IR tensor gets the QParams of its QuantizeLinear / QLinear op,
as int8 (uint8 zero points shifted by -128; ``QGraph.io_dtype`` is the input's type).
Where onnxruntime's quantizer leaves a data-movement op in float between DequantizeLinear
and QuantizeLinear with new parameters (QOperator Slice, ReduceMean, AveragePool; a QDQ
Relu kept after an Add), the IR op carries the new output QParams and the golden model
requantizes as onnxruntime does. ReLUs that quantize_static removed stay removed (act
NONE, zero point -128 gives the same clamp).

Every user error raises :class:`OnnxImportError` naming the ONNX node, its op and what
is supported. Unsupported on purpose: per-channel activation quantisation, asymmetric
weights, a quantized Relu re-quantized to a zero point above the int8 minimum, adding a
constant in a quantized model (run quant_pre_process to fuse MatMul + Add into Gemm),
BatchNormalization left in a quantized model, channels-last models.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import ir
from ..quantize import fold_bn
from .patterns import same_pads

__all__ = ["OnnxImportError", "ImportResult", "load", "load_model", "import_model"]

_MS = "com.microsoft"
_INT_MAX = 2**62


class OnnxImportError(ValueError):
    """An ONNX file hwgen cannot import; the message names the node, op and what is supported."""

    def __init__(self, message: str, node: str | None = None, op: str | None = None):
        self.node = node
        self.op = op
        if node is not None:
            message = f"node '{node}' ({op}): {message}"
        super().__init__(message)


# --- quantisation parameters of a logical tensor ------------------------------------------

@dataclass(frozen=True, eq=False)
class _Q:
    """Quantisation of one tensor as written in the file (zero point in the file's dtype)."""
    scale: np.ndarray       # float32, scalar or per-channel
    zero_point: np.ndarray  # int64, same shape as scale
    dtype: str              # "int8" | "uint8" | "int32"
    axis: int | None = None

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    def same(self, other: "_Q") -> bool:
        return (self.dtype == other.dtype and self.scale.shape == other.scale.shape
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    def qparams(self) -> ir.QParams:
        """int8 QParams (uint8 zero points shifted by -128)."""
        zp = int(self.zero_point.reshape(-1)[0]) - (128 if self.dtype == "uint8" else 0)
        return ir.QParams(float(self.scale.reshape(-1)[0]), zp)

    def describe(self) -> str:
        return (f"scale {self.scale.reshape(-1)[:4]}, zero point "
                f"{self.zero_point.reshape(-1)[:4]} ({self.dtype})")


_DTYPES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
           onnx.TensorProto.INT32: "int32"}


@dataclass(eq=False)
class _Op:
    """One logical op: a float ONNX op (quantized twins already mapped back)."""
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    onnx_op: str  # the op as written in the file (for messages)

    def err(self, msg: str) -> OnnxImportError:
        return OnnxImportError(msg, self.name, self.onnx_op)


# --- pass 1: ONNX -> logical ops ------------------------------------------------------------

_SHAPE_OPS = {"Shape", "Gather", "Cast", "Div", "Mul", "Sub"}
# ops evaluated when all their inputs are constants (weights reshaped in the graph, the
# Shape -> Gather -> Unsqueeze -> Concat chains torch.onnx writes for a dynamic batch)
_FOLDABLE = {"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten", "Concat", "Gather",
             "Cast", "Div", "Mul", "Sub", "Add", "Slice", "Identity"}
# the batch size inside a shape value computed from Shape(x): only moved, never computed with
BATCH = -(2 ** 40)
_FLOAT_OPS = {
    "Conv", "Relu", "Clip", "BatchNormalization", "Pad", "MaxPool", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "Concat", "Add", "Gemm", "MatMul", "Flatten",
    "Reshape", "Transpose", "Split", "Slice", "Squeeze", "Unsqueeze",
} | _SHAPE_OPS
_ALIAS_OPS = {"Identity", "Dropout"}
_PASS_THROUGH = {"MaxPool", "Reshape", "Transpose", "Flatten", "Split", "Slice", "Squeeze",
                 "Unsqueeze", "Pad"}
_SUPPORTED = sorted(_FLOAT_OPS | _ALIAS_OPS | {
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "Constant",
    "com.microsoft.QLinearConcat", "com.microsoft.QLinearAdd",
    "com.microsoft.QLinearGlobalAveragePool", "com.microsoft.QLinearAveragePool",
    "com.microsoft.QGemm"})


def _supported_list() -> str:
    return ", ".join(_SUPPORTED)


class _Lowering:
    """Pass 1: ONNX nodes -> logical ops, Q/DQ folded into tensor quantisation."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.g = model.graph
        self.alias: dict[str, str] = {}
        self.consts: dict[str, np.ndarray] = {}          # logical name -> float/int value
        self.qconst: dict[str, tuple[np.ndarray, _Q]] = {}  # logical constant -> (ints, q)
        self.q: dict[str, _Q] = {}                        # logical activation -> q
        self.ops: list[_Op] = []
        self.quantized = False
        self.float_view: set[str] = set()   # DequantizeLinear outputs of activations
        self.int_names: set[str] = set()    # ONNX tensors that hold integer activations
        self._names: set[str] = set()
        for init in self.g.initializer:
            try:
                self.consts[init.name] = numpy_helper.to_array(init)
            except Exception as e:  # external data missing, bad raw data, ...
                raise OnnxImportError(f"cannot read initializer '{init.name}': {e}") from None
        self.initializer_names = set(self.consts)

    # names
    def r(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def const(self, name: str, op: _Op | None = None, what: str = "input") -> np.ndarray:
        n = self.r(name)
        if n not in self.consts:
            if op is not None:
                raise op.err(f"{what} '{name}' must be a constant (initializer); a computed "
                             f"{what} is not supported")
            raise OnnxImportError(f"'{name}' must be a constant")
        return self.consts[n]

    def is_const(self, name: str) -> bool:
        return bool(name) and self.r(name) in self.consts

    def set_q(self, tensor: str, q: _Q, op: _Op):
        t = self.r(tensor)
        if t in self.consts:
            return
        if not q.per_tensor:
            raise op.err(f"activation '{tensor}' is quantized per channel; only per-tensor "
                         f"activation quantisation is supported")
        if q.dtype not in ("int8", "uint8"):
            raise op.err(f"activation '{tensor}' is quantized to {q.dtype}; int8 or uint8 supported")
        old = self.q.get(t)
        if old is not None and not old.same(q):
            raise op.err(f"tensor '{tensor}' is quantized twice with different parameters "
                         f"({old.describe()} vs {q.describe()}); re-quantisation of a tensor is "
                         f"not supported")
        self.q[t] = q

    def make_q(self, scale_name: str, zp_name: str, op: _Op, axis: int | None = None,
               dtype_hint: str = "uint8") -> _Q:
        scale = np.asarray(self.const(scale_name, op, "scale"), np.float32)
        if zp_name:
            zpa = self.const(zp_name, op, "zero point")
            dtype = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8",
                     np.dtype(np.int32): "int32"}.get(zpa.dtype)
            if dtype is None:
                raise op.err(f"zero point type {zpa.dtype} not supported (int8, uint8, int32)")
            zp = np.asarray(zpa, np.int64)
        else:
            dtype, zp = dtype_hint, np.zeros(scale.shape, np.int64)
        if zp.shape != scale.shape:
            zp = np.broadcast_to(zp, scale.shape).copy()
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise op.err(f"quantisation scale must be finite and positive, got {scale.reshape(-1)[:4]}")
        return _Q(scale, zp, dtype, axis)

    def qconst_from(self, name: str, q: _Q, op: _Op) -> str:
        """Register the integer constant ``name`` quantized with ``q``; its float value is the
        dequantized one. Returns the logical name."""
        n = self.r(name)
        # an integer constant read a second time (shared bias, ...): its float value has
        # replaced it in consts already
        ints = self.qconst[n][0] if n in self.qconst else self.const(name, op, "weight")
        if not np.issubdtype(ints.dtype, np.integer):
            raise op.err(f"quantized constant '{name}' has type {ints.dtype}, expected an integer type")
        f = _dequantize(ints, q)
        logical = n + "#q" if n in self.qconst and not self.qconst[n][1].same(q) else n
        self.consts[logical] = f
        self.qconst[logical] = (np.asarray(ints), q)
        return logical

    def node_name(self, node: onnx.NodeProto, i: int) -> str:
        base = node.name or f"{node.op_type}_{i}"
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def run(self):
        for i, node in enumerate(self.g.node):
            self.lower(node, i)

    def lower(self, node: onnx.NodeProto, i: int):
        name = self.node_name(node, i)
        domain = node.domain or ""
        opname = node.op_type if domain in ("", "ai.onnx") else f"{domain}.{node.op_type}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        op = _Op(node.op_type, name, list(node.input), list(node.output), attrs, opname)
        if domain not in ("", "ai.onnx", _MS):
            raise op.err(f"unknown operator domain '{domain}'; supported ops: {_supported_list()}")
        t = node.op_type
        if domain == _MS and t not in ("QLinearConcat", "QLinearAdd", "QLinearGlobalAveragePool",
                                       "QLinearAveragePool", "QGemm"):
            raise op.err(f"unsupported com.microsoft op; supported ops: {_supported_list()}")
        if domain in ("", "ai.onnx") and t not in _FLOAT_OPS | _ALIAS_OPS | {
                "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "Constant"}:
            raise op.err(f"unsupported op; supported ops: {_supported_list()}")
        getattr(self, "_" + t, self._float)(op)

    # --- individual ops
    def _float(self, op: _Op):
        if op.op in _FOLDABLE and all(self.is_const(i) for i in op.inputs if i) \
                and not any(self.r(i) in self.qconst for i in op.inputs if i):
            self.consts[op.outputs[0]] = _fold_const(self, op)
            return
        # an op on the integer tensor itself (QOperator MaxPool, Reshape, ...) keeps its
        # quantisation; on a DequantizeLinear output it runs in float and a QuantizeLinear
        # after it gives the output's quantisation
        if op.op in _PASS_THROUGH and op.inputs and op.inputs[0] not in self.float_view \
                and self.r(op.inputs[0]) in self.q:
            q = self.q[self.r(op.inputs[0])]
            for o in op.outputs:
                if o:
                    self.q.setdefault(o, q)
                    self.int_names.add(o)
        op.inputs = [self.r(i) if i else "" for i in op.inputs]
        self.ops.append(op)

    def _Identity(self, op: _Op):
        src = self.r(op.inputs[0])
        if op.outputs[0] in self.consts or op.outputs[0] in self.alias:
            return
        self.alias[op.outputs[0]] = src
    _Dropout = _Identity

    def _Constant(self, op: _Op):
        a = op.attrs
        if "value" in a:
            v = numpy_helper.to_array(a["value"])
        elif "value_float" in a:
            v = np.array(a["value_float"], np.float32)
        elif "value_floats" in a:
            v = np.array(a["value_floats"], np.float32)
        elif "value_int" in a:
            v = np.array(a["value_int"], np.int64)
        elif "value_ints" in a:
            v = np.array(a["value_ints"], np.int64)
        else:
            raise op.err(f"Constant with attributes {sorted(a)} not supported (value, value_float(s), "
                         f"value_int(s))")
        self.consts[op.outputs[0]] = v

    def _QuantizeLinear(self, op: _Op):
        self.quantized = True
        axis = op.attrs.get("axis", 1)
        if self.is_const(op.inputs[0]):
            # a quantized constant written as float + QuantizeLinear: keep float, record ints
            q = self.make_q(op.inputs[1], op.inputs[2] if len(op.inputs) > 2 else "", op, axis)
            f = np.asarray(self.const(op.inputs[0]), np.float32)
            ints = _quantize(f, q)
            self.consts[op.outputs[0]] = ints
            return
        q = self.make_q(op.inputs[1], op.inputs[2] if len(op.inputs) > 2 else "", op, None)
        self.set_q(op.inputs[0], q, op)
        self.alias[op.outputs[0]] = self.r(op.inputs[0])
        self.int_names.add(op.outputs[0])

    def _DequantizeLinear(self, op: _Op):
        self.quantized = True
        axis = op.attrs.get("axis", 1)
        x = op.inputs[0]
        zp_name = op.inputs[2] if len(op.inputs) > 2 else ""
        if self.is_const(x):
            xv = self.const(x)
            hint = _DTYPES.get(_np_to_onnx(xv.dtype), "int8")
            per_axis = np.ndim(self.const(op.inputs[1], op, "scale")) > 0
            q = self.make_q(op.inputs[1], zp_name, op, axis if per_axis else None, hint)
            logical = self.qconst_from(x, q, op)
            self.alias[op.outputs[0]] = logical
            return
        q = self.make_q(op.inputs[1], zp_name, op, None)
        self.set_q(x, q, op)
        self.alias[op.outputs[0]] = self.r(x)
        self.float_view.add(op.outputs[0])

    def _QLinearConv(self, op: _Op):
        self.quantized = True
        self.int_names.add(op.outputs[0])
        x, xs, xzp, w, ws, wzp, ys, yzp = op.inputs[:8]
        b = op.inputs[8] if len(op.inputs) > 8 else ""
        self.set_q(x, self.make_q(xs, xzp, op), op)
        wq = self.make_q(ws, wzp, op, 0 if np.size(self.const(ws, op, "scale")) > 1 else None)
        wl = self.qconst_from(w, wq, op)
        inputs = [self.r(x), wl]
        if b:
            bq = _Q((np.float32(self.const(xs)) * wq.scale).astype(np.float32),
                    np.zeros(wq.scale.shape, np.int64), "int32", 0)
            inputs.append(self.qconst_from(b, bq, op))
        self.ops.append(replace(op, op="Conv", inputs=inputs))
        self.set_q(op.outputs[0], self.make_q(ys, yzp, op), op)

    def _QLinearMatMul(self, op: _Op):
        self.quantized = True
        self.int_names.add(op.outputs[0])
        a, as_, azp, bw, bs, bzp, ys, yzp = op.inputs[:8]
        self.set_q(a, self.make_q(as_, azp, op), op)
        bq = self.make_q(bs, bzp, op, 1 if np.size(self.const(bs, op, "scale")) > 1 else None)
        bl = self.qconst_from(bw, bq, op)
        self.ops.append(replace(op, op="MatMul", inputs=[self.r(a), bl]))
        self.set_q(op.outputs[0], self.make_q(ys, yzp, op), op)

    def _QGemm(self, op: _Op):
        self.quantized = True
        self.int_names.add(op.outputs[0])
        ins = op.inputs + [""] * (9 - len(op.inputs))
        a, as_, azp, bw, bs, bzp, c, ys, yzp = ins[:9]
        if op.attrs.get("transA", 0):
            raise op.err("transA=1 is not supported")
        if not ys:
            raise op.err("QGemm with a float output (no y_scale) is not supported; quantize the "
                         "output too")
        self.set_q(a, self.make_q(as_, azp, op), op)
        trans_b = op.attrs.get("transB", 0)
        per_ch = np.size(self.const(bs, op, "scale")) > 1
        bq = self.make_q(bs, bzp, op, (0 if trans_b else 1) if per_ch else None)
        inputs = [self.r(a), self.qconst_from(bw, bq, op)]
        if c:
            cq = _Q((np.float32(self.const(as_)) * bq.scale).astype(np.float32),
                    np.zeros(bq.scale.shape, np.int64), "int32", 0)
            inputs.append(self.qconst_from(c, cq, op))
        self.ops.append(replace(op, op="Gemm", inputs=inputs,
                                attrs={k: v for k, v in op.attrs.items() if k != "domain"}))
        self.set_q(op.outputs[0], self.make_q(ys, yzp, op), op)

    def _QLinearAdd(self, op: _Op):
        self.quantized = True
        self.int_names.add(op.outputs[0])
        a, as_, azp, b, bs, bzp, cs, czp = (op.inputs + [""] * 8)[:8]
        for t, s, z in ((a, as_, azp), (b, bs, bzp)):
            if self.is_const(t):
                raise op.err("adding a constant tensor is not supported (only the sum of two "
                             "activation tensors, a residual connection); for a MatMul + Add "
                             "bias run onnxruntime.quantization.quant_pre_process before "
                             "quantizing (it fuses them into Gemm)")
            self.set_q(t, self.make_q(s, z, op), op)
        self.ops.append(replace(op, op="Add", inputs=[self.r(a), self.r(b)], attrs={}))
        self.set_q(op.outputs[0], self.make_q(cs, czp, op), op)

    def _QLinearConcat(self, op: _Op):
        self.quantized = True
        self.int_names.add(op.outputs[0])
        ys, yzp, rest = op.inputs[0], op.inputs[1], op.inputs[2:]
        if len(rest) % 3:
            raise op.err("expects (Y_scale, Y_zero_point, then X, X_scale, X_zero_point per input)")
        xs = []
        for k in range(0, len(rest), 3):
            t, s, z = rest[k:k + 3]
            if self.is_const(t):
                raise op.err("concatenating a constant tensor is not supported")
            self.set_q(t, self.make_q(s, z, op), op)
            xs.append(self.r(t))
        self.ops.append(replace(op, op="Concat", inputs=xs))
        self.set_q(op.outputs[0], self.make_q(ys, yzp, op), op)

    def _QLinearGlobalAveragePool(self, op: _Op):
        self.quantized = True
        self.int_names.add(op.outputs[0])
        x, xs, xzp, ys, yzp = op.inputs[:5]
        if op.attrs.get("channels_last", 0):
            raise op.err("channels_last=1 (NHWC) is not supported; export the model NCHW")
        self.set_q(x, self.make_q(xs, xzp, op), op)
        self.ops.append(replace(op, op="GlobalAveragePool", inputs=[self.r(x)], attrs={}))
        self.set_q(op.outputs[0], self.make_q(ys, yzp, op), op)

    def _QLinearAveragePool(self, op: _Op):
        self.quantized = True
        self.int_names.add(op.outputs[0])
        x, xs, xzp, ys, yzp = op.inputs[:5]
        if op.attrs.get("channels_last", 0):
            raise op.err("channels_last=1 (NHWC) is not supported; export the model NCHW")
        self.set_q(x, self.make_q(xs, xzp, op), op)
        attrs = {k: v for k, v in op.attrs.items() if k != "channels_last"}
        self.ops.append(replace(op, op="AveragePool", inputs=[self.r(x)], attrs=attrs))
        self.set_q(op.outputs[0], self.make_q(ys, yzp, op), op)


def _np_to_onnx(dt) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dt))


def _dequantize(ints: np.ndarray, q: _Q) -> np.ndarray:
    ints = np.asarray(ints)
    s, z = q.scale, q.zero_point
    if not q.per_tensor and q.axis is not None and ints.ndim:
        shape = [1] * ints.ndim
        shape[q.axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    else:
        s, z = s.reshape(-1)[0], z.reshape(-1)[0]
    return ((ints.astype(np.int64) - z).astype(np.float32) * np.float32(s)).astype(np.float32)


def _quantize(f: np.ndarray, q: _Q) -> np.ndarray:
    lo, hi = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-2**31, 2**31 - 1)}[q.dtype]
    s, z = q.scale, q.zero_point
    if not q.per_tensor and q.axis is not None:
        shape = [1] * f.ndim
        shape[q.axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    v = np.clip(np.rint(f / s) + z, lo, hi)
    return v.astype({"int8": np.int8, "uint8": np.uint8, "int32": np.int32}[q.dtype])


def _fold_const(low: _Lowering, op: _Op) -> np.ndarray:
    """Evaluate an op whose inputs are all constants (NumPy, ONNX semantics)."""
    ins = [np.asarray(low.const(i)) if i else None for i in op.inputs]
    x = ins[0]
    t = op.op
    if t in ("Div", "Mul", "Sub", "Add"):
        a, b = ins[0], ins[1]
        if np.any(a == BATCH) or np.any(b == BATCH):
            raise op.err("arithmetic on the batch size is not supported (the batch dimension "
                         "may only be copied)")
        if t == "Div":
            if np.issubdtype(a.dtype, np.integer):
                return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(a.dtype)
            return (a / b).astype(a.dtype)
        return {"Mul": np.multiply, "Sub": np.subtract, "Add": np.add}[t](a, b).astype(a.dtype)
    if t == "Identity":
        return x
    if t == "Cast":
        return x.astype(helper.tensor_dtype_to_np_dtype(op.attrs["to"]))
    if t == "Gather":
        return np.take(x, ins[1].astype(np.int64), axis=op.attrs.get("axis", 0))
    if t == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in ins], axis=op.attrs.get("axis", 0))
    if t == "Slice":
        axes = (list(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(ins[1]))))
        steps = list(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(axes)
        sl = [slice(None)] * x.ndim
        for ax, st, en, sp in zip(axes, ins[1], ins[2], steps):
            sl[int(ax)] = slice(int(st), int(min(en, 2**62)), int(sp))
        return x[tuple(sl)]
    if t == "Reshape":
        shape = [int(v) for v in ins[1]]
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return x.reshape(shape)
    if t == "Transpose":
        return np.transpose(x, op.attrs.get("perm"))
    if t == "Flatten":
        ax = op.attrs.get("axis", 1)
        return x.reshape(int(np.prod(x.shape[:ax])), -1)
    if t == "Squeeze":
        axes = op.attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = list(ins[1])
        return np.squeeze(x, tuple(int(a) for a in axes) if axes is not None else None)
    if t == "Unsqueeze":
        axes = op.attrs.get("axes")
        if axes is None:
            axes = list(ins[1])
        for a in sorted(int(v) % (x.ndim + len(axes)) for v in axes):
            x = np.expand_dims(x, a)
        return x
    raise op.err("cannot evaluate this op on constants")


# --- pass 2: logical ops -> IR ----------------------------------------------------------

@dataclass
class _Val:
    """What a logical tensor is, seen from the IR.

    kind: "t" an IR tensor (C,H,W); "flat" the IR tensor flattened to (N, C*H*W);
    "pad" the IR tensor padded by a pending Pad; "shuf5" / "shuf5t" the halves of a
    Reshape-Transpose-Reshape shuffle.
    """
    kind: str
    src: str
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    pad_value: float = 0.0   # real value of the padding
    pad_q: int | None = None  # its int8 value when quantized
    groups: int = 0
    origin: str = ""          # name of the op that made a pending value


@dataclass
class _Builder:
    """Pass 2: emits IR nodes for the logical ops, one handler ``_<Op>`` per ONNX op."""
    low: _Lowering
    nodes: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    vals: dict = field(default_factory=dict)
    producer: dict = field(default_factory=dict)   # IR tensor -> index in nodes
    uses: dict = field(default_factory=dict)       # logical tensor -> number of uses
    renamed: dict = field(default_factory=dict)
    batch: object = None
    qweights: dict = field(default_factory=dict)   # IR node -> (weight, bias, layout) names
    onnx_ops: dict = field(default_factory=dict)   # IR node name -> ONNX op (for messages)

    # helpers
    def val(self, name: str, op: _Op) -> _Val:
        if name not in self.vals:
            if self.low.is_const(name):
                raise op.err(f"input '{name}' is a constant; only weights may be constants here")
            raise op.err(f"input '{name}' is not produced by any supported node")
        return self.vals[name]

    def tensor(self, name: str, op: _Op) -> str:
        v = self.val(name, op)
        if v.kind == "t":
            return v.src
        if v.kind == "flat" and self.shapes[v.src][1:] == (1, 1):
            return v.src
        raise op.err(self._pending_msg(v))

    def _pending_msg(self, v: _Val) -> str:
        if v.kind == "pad":
            return (f"the output of Pad '{v.origin}' must feed a Conv, MaxPool or AveragePool "
                    f"(Pad is merged into their padding)")
        if v.kind in ("shuf5", "shuf5t"):
            return (f"the 5-D tensor of '{v.origin}' is only supported as part of the "
                    f"Reshape-Transpose-Reshape channel shuffle pattern")
        return "this op needs an (N, C, H, W) input, got a flattened (N, features) tensor"

    def add(self, node: ir.Node, op: _Op, logical_out: str, kind: str = "t"):
        try:
            shape = node.infer([self.shapes[t] for t in node.inputs])
        except ir.IRError as e:
            raise op.err(str(e).split(": ", 1)[-1]) from None
        self.shapes[node.output] = tuple(int(i) for i in shape)
        self.onnx_ops[node.name] = op.onnx_op
        self.producer[node.output] = len(self.nodes)
        self.nodes.append(node)
        self.vals[logical_out] = _Val(kind, node.output)

    def fusable(self, tensor_logical: str, op: _Op):
        """The IR node producing logical tensor ``tensor_logical`` if this op is its only user."""
        v = self.vals.get(tensor_logical)
        if v is None or v.kind not in ("t", "flat") or self.uses.get(tensor_logical, 0) != 1:
            return None
        idx = self.producer.get(v.src)
        if idx is None:
            return None
        # the IR tensor must not be used by anything else either (aliases)
        if sum(1 for k, w in self.vals.items() if w.src == v.src and self.uses.get(k, 0)) > 1:
            return None
        return idx

    def rename_output(self, idx: int, new_node: ir.Node, logical_out: str, kind: str):
        old = self.nodes[idx].output
        self.nodes[idx] = new_node
        self.shapes[new_node.output] = self.shapes.pop(old)
        self.producer.pop(old)
        self.producer[new_node.output] = idx
        self.renamed[old] = new_node.output
        self.vals[logical_out] = _Val(kind, new_node.output)

    def q(self, logical: str):
        return self.low.q.get(logical)

    def ints(self, name: str, op: _Op, what: str):
        return [int(v) for v in np.asarray(self.low.const(name, op, what)).reshape(-1)]

    # --- main loop
    def run(self):
        low = self.low
        for o in low.ops:
            for i in o.inputs:
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        for out in low.g.output:
            r = low.r(out.name)
            self.uses[r] = self.uses.get(r, 0) + 1
        for op in low.ops:
            if op.op in _FOLDABLE and op.inputs and all(low.is_const(i) for i in op.inputs if i):
                low.consts[op.outputs[0]] = _fold_const(low, op)
                continue
            handler = getattr(self, "_" + op.op)
            handler(op)
            if op.op in _PASS_THROUGH:
                self._requant_outputs(op)

    def _requant_outputs(self, op: _Op):
        """A data-movement op whose output is quantized differently from its input (QOperator
        models run it in float between DequantizeLinear and QuantizeLinear). IR MaxPool,
        ChannelShuffle and ChannelSlice requantize their output (the golden model rescales as
        QLinearConcat does); a pure alias (Reshape, Flatten) becomes a full-range ChannelSlice
        so that the new quantisation has a tensor of its own."""
        qin = self.q(op.inputs[0])
        for o in op.outputs:
            qout = self.q(o)
            if not o or o not in self.vals or qin is None or qout is None or qin.same(qout):
                continue
            v = self.vals[o]
            if v.kind not in ("t", "flat"):
                raise op.err("re-quantisation of a padded or reshaped-to-5-D tensor is not "
                             "supported")
            if v.src == o:
                continue
            c = self.shapes[v.src][0]
            self.add(ir.ChannelSlice(name=f"{op.name}/requant:{o}", inputs=(v.src,), output=o,
                                     start=0, stop=c), op, o, v.kind)

    # --- ops
    def _conv_like_pads(self, op: _Op, in_hw, kernel, strides):
        pads = op.attrs.get("pads", [0, 0, 0, 0])
        auto = op.attrs.get("auto_pad", "NOTSET")
        if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise op.err(f"auto_pad={auto!r} not supported (NOTSET, VALID, SAME_UPPER, SAME_LOWER)")
        if auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto.startswith("SAME"):
            pads = same_pads(in_hw, kernel, strides, upper=auto == "SAME_UPPER")
        if len(pads) != 4:
            raise op.err(f"pads {pads} must have 4 values (2-D only)")
        t, l, b, r = (int(p) for p in pads)  # ONNX: [x1_begin, x2_begin, x1_end, x2_end]
        if min(t, l, b, r) < 0:
            raise op.err(f"negative pads {pads} are not supported")
        return (t, l, b, r)

    def _check_2d(self, op: _Op, attr: str, n: int = 2):
        v = op.attrs.get(attr)
        if v is not None and len(v) != n:
            raise op.err(f"{attr}={list(v)}: only 2-D (N, C, H, W) ops are supported")

    def _in_with_pad(self, op: _Op):
        v = self.val(op.inputs[0], op)
        if v.kind == "pad":
            return v.src, v
        return self.tensor(op.inputs[0], op), None

    def _Conv(self, op: _Op):
        low = self.low
        x, pad = self._in_with_pad(op)
        w_name = op.inputs[1]
        if not low.is_const(w_name):
            raise op.err(f"weight '{w_name}' is not a constant; only constant (initializer) "
                         f"weights are supported")
        w = np.asarray(low.const(w_name), np.float32)
        if w.ndim != 4:
            raise op.err(f"weight shape {w.shape}: only 2-D convolutions are supported")
        for a in ("strides", "dilations", "kernel_shape"):
            self._check_2d(op, a)
        dil = op.attrs.get("dilations", [1, 1])
        if any(int(d) != 1 for d in dil):
            raise op.err(f"dilations={list(dil)} not supported (only 1)")
        kernel = tuple(op.attrs.get("kernel_shape", w.shape[2:]))
        if tuple(kernel) != tuple(w.shape[2:]):
            raise op.err(f"kernel_shape {kernel} does not match weight {w.shape}")
        strides = tuple(int(s) for s in op.attrs.get("strides", [1, 1]))
        groups = int(op.attrs.get("group", 1))
        c, h, wd = self.shapes[x]
        if pad is not None:
            h, wd = h + pad.pads[0] + pad.pads[2], wd + pad.pads[1] + pad.pads[3]
        pads = self._conv_like_pads(op, (h, wd), kernel, strides)
        if pad is not None:
            self._check_pad_value(op, pad, x, for_max=False)
            pads = tuple(a + b for a, b in zip(pads, pad.pads))
        b_name = op.inputs[2] if len(op.inputs) > 2 else ""
        bias = (np.asarray(low.const(b_name, op, "bias"), np.float32).reshape(-1) if b_name
                else np.zeros(w.shape[0], np.float32))
        node = ir.Conv2d(name=op.name, inputs=(x,), output=op.outputs[0], out_channels=w.shape[0],
                         kernel=kernel, stride=strides, padding=pads, groups=groups,
                         weight=w, bias=bias)
        self.add(node, op, op.outputs[0])
        self.qweights[op.name] = (w_name if low.r(w_name) in low.qconst else None,
                                  b_name if b_name and low.r(b_name) in low.qconst else None, None)

    def _check_pad_value(self, op: _Op, pad: _Val, x: str, for_max: bool):
        xq = self._ir_q(x)
        if xq is not None:
            zp = xq.qparams().zero_point
            pv = pad.pad_q if pad.pad_q is not None else int(xq.qparams().quantize(
                np.float32(pad.pad_value)))
            if for_max:
                ok = pv == -128 or (pv == zp and self._min_is(x, zp))
            else:
                ok = pv == zp
        else:
            if for_max:
                ok = pad.pad_value == -np.inf or (pad.pad_value == 0 and self._nonneg(x))
            else:
                ok = pad.pad_value == 0
        if not ok:
            kind = "MaxPool" if for_max else op.op
            raise op.err(f"Pad '{pad.origin}' value {pad.pad_value if pad.pad_q is None else pad.pad_q} "
                         f"cannot be merged into {kind}: Conv/AveragePool need padding with zero "
                         f"(the zero point when quantized), MaxPool needs padding that never wins")

    def _ir_q(self, ir_tensor: str):
        for k, v in self.vals.items():
            if v.src == ir_tensor and k in self.low.q:
                return self.low.q[k]
        return None

    def _nonneg(self, x: str) -> bool:
        idx = self.producer.get(x)
        n = self.nodes[idx] if idx is not None else None
        return getattr(n, "act", ir.Act.NONE) in (ir.Act.RELU, ir.Act.RELU6)

    def _min_is(self, x: str, zp: int) -> bool:
        return zp == -128 or self._nonneg(x)

    def _act(self, op: _Op) -> ir.Act:
        if op.op == "Relu":
            return ir.Act.RELU
        low = self.low
        lo = op.attrs.get("min")
        hi = op.attrs.get("max")
        if len(op.inputs) > 1 and op.inputs[1]:
            lo = float(np.asarray(low.const(op.inputs[1], op, "min")).reshape(-1)[0])
        if len(op.inputs) > 2 and op.inputs[2]:
            hi = float(np.asarray(low.const(op.inputs[2], op, "max")).reshape(-1)[0])
        if lo == 0 and (hi is None or hi >= 3.4e38):
            return ir.Act.RELU
        if lo == 0 and hi == 6:
            return ir.Act.RELU6
        raise op.err(f"Clip({lo}, {hi}) not supported: only Clip(0, 6) (ReLU6) and Clip(0) (ReLU)")

    def _Relu(self, op: _Op):
        act = self._act(op)
        src = op.inputs[0]
        v = self.val(src, op)
        if v.kind not in ("t", "flat"):
            raise op.err(self._pending_msg(v))
        qin, qout = self.q(src), self.q(op.outputs[0])
        if qin is not None and qout is not None and not qin.same(qout):
            # DQ -> Relu -> Q kept by the quantizer: a requantisation whose clamp at the
            # new zero point is the ReLU when that zero point is the int8 minimum
            if act is ir.Act.RELU and qout.qparams().zero_point == -128:
                x = self.tensor(src, op)
                self.add(ir.ChannelSlice(name=op.name, inputs=(x,), output=op.outputs[0],
                                         start=0, stop=self.shapes[x][0]), op, op.outputs[0],
                         v.kind)
                return
            raise op.err("a quantized activation with its own output quantisation is only "
                         "supported for a ReLU whose output zero point is the minimum")
        if qin is not None and qout is None:
            # a float Relu after a DequantizeLinear (QOperator with symmetric activations):
            # relu(dequantize(x)) is dequantize(max(x, zero point)), the fused clamp
            self.low.q[op.outputs[0]] = qin
        idx = self.fusable(src, op)
        node = self.nodes[idx] if idx is not None else None
        if isinstance(node, (ir.Conv2d, ir.FullyConnected, ir.Concat, ir.Add)):
            new = ir.Act.RELU6 if ir.Act.RELU6 in (act, node.act) else act
            self.rename_output(idx, replace(node, act=new, output=op.outputs[0]), op.outputs[0],
                               self.vals[src].kind)
            return
        if qin is not None and qin.qparams().zero_point == -128 and act is ir.Act.RELU:
            self.vals[op.outputs[0]] = v  # no-op on int8 data whose zero point is the minimum
            return
        raise op.err(f"{op.op} must follow a Conv, Gemm, Add or Concat whose only user it is "
                     f"(it is fused into that op)")
    _Clip = _Relu

    def _BatchNormalization(self, op: _Op):
        low = self.low
        if len(op.outputs) > 1 and any(op.outputs[1:]):
            raise op.err("training-mode BatchNormalization (extra outputs) is not supported")
        if self.q(op.inputs[0]) is not None:
            raise op.err("BatchNormalization on a quantized tensor is not supported: fold it into "
                         "the conv before quantizing (onnxruntime.quantization.quant_pre_process)")
        idx = self.fusable(op.inputs[0], op)
        node = self.nodes[idx] if idx is not None else None
        if not isinstance(node, ir.Conv2d) or node.act is not ir.Act.NONE:
            raise op.err("BatchNormalization must directly follow a Conv whose only user it is "
                         "(it is folded into the conv)")
        gamma, beta, mean, var = (np.asarray(low.const(n, op, "parameter"), np.float32)
                                  for n in op.inputs[1:5])
        eps = float(op.attrs.get("epsilon", 1e-5))
        try:
            w, b = fold_bn(node.weight, node.bias, gamma.reshape(-1), beta.reshape(-1),
                           mean.reshape(-1), var.reshape(-1), eps)
        except ValueError as e:
            raise op.err(str(e)) from None
        self.rename_output(idx, replace(node, weight=w, bias=b, output=op.outputs[0]),
                           op.outputs[0], "t")

    def _Pad(self, op: _Op):
        low = self.low
        mode = op.attrs.get("mode", "constant")
        if mode != "constant":
            raise op.err(f"mode={mode!r} not supported (only constant)")
        if "pads" in op.attrs:
            pads = list(op.attrs["pads"])
            value = float(op.attrs.get("value", 0.0))
            vq = None
        else:
            pads = self.ints(op.inputs[1], op, "pads")
            vq, value = None, 0.0
            if len(op.inputs) > 2 and op.inputs[2]:
                cv = np.asarray(low.const(op.inputs[2], op, "constant_value")).reshape(-1)
                if np.issubdtype(cv.dtype, np.integer):   # QOperator: quantized pad value
                    qx = self.q(op.inputs[0])
                    vq = int(cv[0]) - (128 if qx is not None and qx.dtype == "uint8" else 0)
                else:
                    value = float(cv[0])
            if len(op.inputs) > 3 and op.inputs[3]:
                axes = self.ints(op.inputs[3], op, "axes")
                full = [0] * 8
                for k, a in enumerate(axes):
                    a = a % 4
                    full[a], full[a + 4] = pads[k], pads[k + len(axes)]
                pads = full
        if len(pads) != 8:
            raise op.err(f"pads {pads}: only 4-D (N, C, H, W) tensors are supported")
        if any(pads[i] for i in (0, 1, 4, 5)):
            raise op.err(f"pads {pads}: padding is only supported on H and W")
        if min(pads) < 0:
            raise op.err(f"negative pads {pads} (cropping) are not supported")
        x = self.tensor(op.inputs[0], op)
        qin, qout = self.q(op.inputs[0]), self.q(op.outputs[0])
        if qin is not None and qout is not None and not qin.same(qout):
            raise op.err("Pad must keep the quantisation of its input")
        if qin is None and qout is not None and vq is None and value == 0.0:
            # a float Pad before the first QuantizeLinear: padding with 0 then quantizing is
            # quantizing then padding with the zero point
            self.low.q[op.inputs[0]] = qout
        self.vals[op.outputs[0]] = _Val("pad", x, (pads[2], pads[3], pads[6], pads[7]), value, vq,
                                        origin=op.name)

    def _pool(self, op: _Op, cls):
        for a in ("strides", "dilations", "kernel_shape"):
            self._check_2d(op, a)
        if any(int(d) != 1 for d in op.attrs.get("dilations", [1, 1])):
            raise op.err(f"dilations={list(op.attrs['dilations'])} not supported (only 1)")
        if op.attrs.get("storage_order", 0):
            raise op.err("storage_order=1 is not supported")
        if len(op.outputs) > 1 and op.outputs[1]:
            raise op.err("the Indices output of MaxPool is not supported")
        x, pad = self._in_with_pad(op)
        kernel = tuple(int(k) for k in op.attrs["kernel_shape"])
        strides = tuple(int(s) for s in op.attrs.get("strides", [1, 1]))
        c, h, w = self.shapes[x]
        ph, pw = (h, w) if pad is None else (h + pad.pads[0] + pad.pads[2],
                                             w + pad.pads[1] + pad.pads[3])
        pads = self._conv_like_pads(op, (ph, pw), kernel, strides)
        ceil = bool(op.attrs.get("ceil_mode", 0))
        cip = bool(op.attrs.get("count_include_pad", 0))
        if pad is not None:
            self._check_pad_value(op, pad, x, for_max=cls is ir.MaxPool)
            if cls is ir.AvgPool:
                if any(pads) and not cip:
                    raise op.err("an explicit Pad before an AveragePool that has its own padding "
                                 "with count_include_pad=0 cannot be represented")
                cip = True
            merged = tuple(a + b for a, b in zip(pads, pad.pads))
            want = (ir.pool_out_size(ph, kernel[0], strides[0], pads[0], pads[2], ceil),
                    ir.pool_out_size(pw, kernel[1], strides[1], pads[1], pads[3], ceil))
            got = (ir.pool_out_size(h, kernel[0], strides[0], merged[0], merged[2], ceil),
                   ir.pool_out_size(w, kernel[1], strides[1], merged[1], merged[3], ceil))
            if want != got:
                raise op.err(f"Pad '{pad.origin}' cannot be merged into the pooling with ceil_mode "
                             f"(the output size would change from {want} to {got})")
            pads = merged
        kw = dict(name=op.name, inputs=(x,), output=op.outputs[0], kernel=kernel, stride=strides,
                  padding=pads, ceil_mode=ceil)
        if cls is ir.AvgPool:
            kw["count_include_pad"] = cip
        try:
            node = cls(**kw)
        except ir.IRError as e:
            raise op.err(str(e).split(": ", 1)[-1]) from None
        self.add(node, op, op.outputs[0])

    def _MaxPool(self, op: _Op):
        self._pool(op, ir.MaxPool)

    def _AveragePool(self, op: _Op):
        self._pool(op, ir.AvgPool)

    def _Shape(self, op: _Op):
        v = self.val(op.inputs[0], op)
        shape = np.array([BATCH, *self._onnx_shape(v)], np.int64)
        start, end = op.attrs.get("start", 0), op.attrs.get("end")
        self.low.consts[op.outputs[0]] = shape[start:end]

    def _shape_arith(self, op: _Op):
        raise op.err("only supported on constants and shape values (Shape -> Gather -> "
                     "Concat chains); arithmetic on activations is not supported")
    _Gather = _Cast = _Div = _Mul = _Sub = _shape_arith

    def _GlobalAveragePool(self, op: _Op):
        x = self.tensor(op.inputs[0], op)
        self.add(ir.GlobalAvgPool(name=op.name, inputs=(x,), output=op.outputs[0]), op,
                 op.outputs[0])

    def _ReduceMean(self, op: _Op):
        axes = op.attrs.get("axes")
        if axes is None and len(op.inputs) > 1 and op.inputs[1]:
            axes = self.ints(op.inputs[1], op, "axes")
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            raise op.err(f"axes={axes}: only the mean over H and W (axes [2, 3]) is supported")
        x = self.tensor(op.inputs[0], op)
        keep = op.attrs.get("keepdims", 1)
        self.add(ir.GlobalAvgPool(name=op.name, inputs=(x,), output=op.outputs[0]), op,
                 op.outputs[0], "t" if keep else "flat")

    def _Concat(self, op: _Op):
        axis = op.attrs.get("axis")
        xs = [self.val(i, op) for i in op.inputs]
        if axis not in (1, -3) or any(v.kind != "t" for v in xs):
            raise op.err(f"axis={axis}: only concatenation on the channel axis of (N, C, H, W) "
                         f"tensors is supported")
        if len(xs) == 1:
            self.vals[op.outputs[0]] = xs[0]
            return
        self.add(ir.Concat(name=op.name, inputs=tuple(v.src for v in xs), output=op.outputs[0]),
                 op, op.outputs[0])

    def _Add(self, op: _Op):
        low = self.low
        a, b = op.inputs[:2]
        ca, cb = low.is_const(a), low.is_const(b)
        if ca or cb:
            t, c = (b, a) if ca else (a, b)
            cv = np.asarray(low.const(c), np.float32)
            idx = self.fusable(t, op)
            node = self.nodes[idx] if idx is not None else None
            o = node.bias.size if isinstance(node, (ir.Conv2d, ir.FullyConnected)) else -1
            per_channel = ((o,), (1, o)) if isinstance(node, ir.FullyConnected) else ((o, 1, 1),
                                                                                     (1, o, 1, 1))
            if self.q(t) is None and node is not None and o > 0 and node.act is ir.Act.NONE \
                    and cv.shape in per_channel:
                self.rename_output(idx, replace(node, bias=node.bias + cv.reshape(-1),
                                                output=op.outputs[0]),
                                   op.outputs[0], self.vals[t].kind)
                return
            raise op.err("adding a constant is only supported as the bias of the Conv / MatMul "
                         "right before it (float models)")
        x, y = self.tensor(a, op), self.tensor(b, op)
        self.add(ir.Add(name=op.name, inputs=(x, y), output=op.outputs[0]), op, op.outputs[0],
                 self.vals[a].kind)

    def _fc(self, op: _Op, w: np.ndarray, bias: np.ndarray, w_name: str, b_name: str,
            w_layout: str):
        v = self.val(op.inputs[0], op)
        if v.kind != "flat":
            raise op.err("the input of a Gemm/MatMul must be flattened to (N, features) "
                         "(Flatten or Reshape(N, -1) before it)")
        node = ir.FullyConnected(name=op.name, inputs=(v.src,), output=op.outputs[0],
                                 out_features=w.shape[0], weight=w, bias=bias)
        self.add(node, op, op.outputs[0], "flat")
        low = self.low
        self.qweights[op.name] = (w_name if low.r(w_name) in low.qconst else None,
                                  b_name if b_name and low.r(b_name) in low.qconst else None,
                                  w_layout)

    def _Gemm(self, op: _Op):
        low = self.low
        if op.attrs.get("transA", 0):
            raise op.err("transA=1 is not supported")
        w_name = op.inputs[1]
        if not low.is_const(w_name):
            raise op.err(f"weight '{w_name}' is not a constant; only constant weights are supported")
        w = np.asarray(low.const(w_name), np.float32)
        if w.ndim != 2:
            raise op.err(f"weight shape {w.shape}: a 2-D weight is required")
        trans_b = op.attrs.get("transB", 0)
        layout = "OF" if trans_b else "FO"
        w = w if trans_b else w.T
        alpha, beta = float(op.attrs.get("alpha", 1.0)), float(op.attrs.get("beta", 1.0))
        b_name = op.inputs[2] if len(op.inputs) > 2 else ""
        if (alpha != 1.0 or beta != 1.0) and low.quantized:
            raise op.err("alpha/beta other than 1 are not supported in quantized models")
        bias = np.zeros(w.shape[0], np.float32)
        if b_name:
            bv = np.asarray(low.const(b_name, op, "bias"), np.float32)
            if bv.size != w.shape[0]:
                raise op.err(f"bias shape {bv.shape}: one value per output "
                             f"({w.shape[0]},) is needed")
            bias = beta * bv.reshape(-1)
        self._fc(op, (alpha * w).astype(np.float32), bias.astype(np.float32), w_name, b_name, layout)

    def _MatMul(self, op: _Op):
        low = self.low
        w_name = op.inputs[1]
        if not low.is_const(w_name):
            raise op.err(f"weight '{w_name}' is not a constant; only a constant right operand "
                         f"is supported")
        w = np.asarray(low.const(w_name), np.float32)
        if w.ndim != 2:
            raise op.err(f"weight shape {w.shape}: a 2-D weight is required")
        self._fc(op, w.T, np.zeros(w.shape[1], np.float32), w_name, "", "FO")

    def _Flatten(self, op: _Op):
        if op.attrs.get("axis", 1) != 1:
            raise op.err(f"axis={op.attrs['axis']} not supported (only 1: (N, C*H*W))")
        v = self.val(op.inputs[0], op)
        if v.kind not in ("t", "flat"):
            raise op.err(self._pending_msg(v))
        self.vals[op.outputs[0]] = _Val("flat", v.src)

    def _onnx_shape(self, v: _Val) -> tuple[int, ...]:
        s = self.shapes[v.src]
        if v.kind == "flat":
            return (int(np.prod(s)),)
        if v.kind == "shuf5":
            return (v.groups, s[0] // v.groups, s[1], s[2])
        if v.kind == "shuf5t":
            return (s[0] // v.groups, v.groups, s[1], s[2])
        return s

    def _Reshape(self, op: _Op):
        if op.attrs.get("allowzero", 0):
            raise op.err("allowzero=1 is not supported")
        v = self.val(op.inputs[0], op)
        if v.kind == "pad":
            raise op.err(self._pending_msg(v))
        target = self.ints(op.inputs[1], op, "shape")
        self._reshape_to(op, v, target)

    def _reshape_to(self, op: _Op, v: _Val, target: list[int]):
        in_shape = self._onnx_shape(v)
        total = int(np.prod(in_shape))
        if not target:
            raise op.err("reshape to a scalar is not supported")
        b, rest = target[0], list(target[1:])
        if b not in (0, -1, 1, BATCH) and b != self.batch or BATCH in rest:
            raise op.err(f"shape {target}: the first dimension must stay the batch")
        rest = [in_shape[i] if d == 0 and i < len(in_shape) else d for i, d in enumerate(rest)]
        if b == -1:
            if -1 in rest:
                raise op.err(f"shape {target}: two inferred dimensions")
            if int(np.prod(rest)) != total:
                raise op.err(f"shape {target}: the batch dimension would change")
        elif rest.count(-1) == 1:
            known = int(np.prod([d for d in rest if d != -1]))
            if known == 0 or total % known:
                raise op.err(f"cannot reshape {in_shape} per image to {target}")
            rest[rest.index(-1)] = total // known
        rest = tuple(rest)
        if int(np.prod(rest)) != total:
            raise op.err(f"cannot reshape {in_shape} per image to {target}")
        s = self.shapes[v.src]
        out = op.outputs[0]
        if v.kind in ("t", "flat"):
            if len(rest) == 1:
                self.vals[out] = _Val("flat", v.src)
                return
            if rest == s or (len(rest) == 3 and rest == s):
                self.vals[out] = _Val("t", v.src)
                return
            if len(rest) == 4 and rest[0] * rest[1] == s[0] and rest[2:] == s[1:] and v.kind == "t":
                self.vals[out] = _Val("shuf5", v.src, groups=rest[0], origin=op.name)
                return
        elif v.kind == "shuf5t" and rest == s:
            self.add(ir.ChannelShuffle(name=v.origin, inputs=(v.src,), output=out,
                                       groups=v.groups), op, out)
            return
        raise op.err(f"reshape of {in_shape} (per image) to {target} is not supported: only "
                     f"flattening before Gemm/MatMul and the Reshape-Transpose-Reshape channel "
                     f"shuffle are")

    def _Transpose(self, op: _Op):
        v = self.val(op.inputs[0], op)
        perm = list(op.attrs.get("perm", []))
        if v.kind == "shuf5" and perm == [0, 2, 1, 3, 4]:
            self.vals[op.outputs[0]] = _Val("shuf5t", v.src, groups=v.groups, origin=v.origin)
            return
        raise op.err(f"perm={perm}: Transpose is only supported inside the Reshape-Transpose-"
                     f"Reshape channel shuffle (channels-last / NHWC models are not supported: "
                     f"export NCHW)")

    def _Squeeze(self, op: _Op):
        v = self.val(op.inputs[0], op)
        axes = op.attrs.get("axes")
        if axes is None and len(op.inputs) > 1 and op.inputs[1]:
            axes = self.ints(op.inputs[1], op, "axes")
        if v.kind == "t" and axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3] \
                and self.shapes[v.src][1:] == (1, 1):
            self.vals[op.outputs[0]] = _Val("flat", v.src)
            return
        raise op.err(f"axes={axes}: only squeezing H and W of a (N, C, 1, 1) tensor is supported")

    def _Unsqueeze(self, op: _Op):
        v = self.val(op.inputs[0], op)
        axes = op.attrs.get("axes")
        if axes is None and len(op.inputs) > 1 and op.inputs[1]:
            axes = self.ints(op.inputs[1], op, "axes")
        if v.kind == "flat" and axes is not None and sorted(int(a) for a in axes) == [2, 3] \
                and self.shapes[v.src][1:] == (1, 1):
            self.vals[op.outputs[0]] = _Val("t", v.src)
            return
        raise op.err(f"axes={axes}: only unsqueezing (N, C) to (N, C, 1, 1) is supported")

    def _slice_node(self, op: _Op, x: str, start: int, stop: int, out: str, name: str):
        c = self.shapes[x][0]
        if start == 0 and stop == c:
            self.vals[out] = _Val("t", x)
            return
        self.add(ir.ChannelSlice(name=name, inputs=(x,), output=out, start=start, stop=stop),
                 op, out)

    def _Split(self, op: _Op):
        axis = op.attrs.get("axis", 0)
        x = self.tensor(op.inputs[0], op)
        if axis not in (1, -3):
            raise op.err(f"axis={axis}: only splitting the channel axis (1) is supported")
        c = self.shapes[x][0]
        split = op.attrs.get("split")
        if split is None and len(op.inputs) > 1 and op.inputs[1]:
            split = self.ints(op.inputs[1], op, "split")
        n = len(op.outputs)
        if split is None:
            k = -(-c // n)
            split = [min(k, c - i * k) for i in range(n)]
        split = [int(s) for s in split]
        if sum(split) != c or len(split) != n or min(split) < 1:
            raise op.err(f"split {split} does not divide {c} channels into {n} parts")
        start = 0
        for k, (s, out) in enumerate(zip(split, op.outputs)):
            if out and self.uses.get(out, 0):
                self._slice_node(op, x, start, start + s, out, f"{op.name}/{k}")
            start += s

    def _Slice(self, op: _Op):
        x = self.tensor(op.inputs[0], op)
        if "starts" in op.attrs:
            starts, ends = list(op.attrs["starts"]), list(op.attrs["ends"])
            axes, steps = op.attrs.get("axes"), None
        else:
            starts = self.ints(op.inputs[1], op, "starts")
            ends = self.ints(op.inputs[2], op, "ends")
            axes = self.ints(op.inputs[3], op, "axes") if len(op.inputs) > 3 and op.inputs[3] else None
            steps = self.ints(op.inputs[4], op, "steps") if len(op.inputs) > 4 and op.inputs[4] else None
        axes = list(range(len(starts))) if axes is None else [int(a) % 4 for a in axes]
        c, h, w = self.shapes[x]
        dims = {1: c, 2: h, 3: w}
        sel = {}
        for a, s, e, st in zip(axes, starts, ends, steps or [1] * len(starts)):
            if st != 1:
                raise op.err(f"steps={steps}: only step 1 is supported")
            d = dims.get(a)
            if d is None:
                raise op.err(f"axes={axes}: slicing the batch axis is not supported")
            s = max(0, min(d, s + d if s < 0 else s))
            e = max(0, min(d, e + d if e < 0 else e))
            sel[a] = (s, e)
        for a in (2, 3):
            if a in sel and sel[a] != (0, dims[a]):
                raise op.err(f"axes={axes}: only slicing the channel axis is supported")
        s, e = sel.get(1, (0, c))
        if e <= s:
            raise op.err(f"empty channel slice [{s}, {e})")
        self._slice_node(op, x, s, e, op.outputs[0], op.name)



# --- entry points -------------------------------------------------------------------------

def _read(path) -> onnx.ModelProto:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise OnnxImportError(f"'{path}': no such file")
    try:
        model = onnx.load(path)
    except Exception as e:
        raise OnnxImportError(f"'{path}' is not a readable ONNX file: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not model.graph.node:
        raise OnnxImportError(f"'{path}' contains no ONNX graph nodes (empty or not an ONNX model)")
    return model


def load(path) -> ir.Graph | ir.QGraph:
    """Import an ONNX file: float -> :class:`ir.Graph`, QDQ/QOperator -> :class:`ir.QGraph`.

    Parameters
    ----------
    path: the .onnx file. Its input must be one (N, C, H, W) image tensor with fixed C, H,
        W; N may be symbolic or fixed (the IR is per image).

    Returns
    -------
    A float Graph (quantize it with :func:`hwgen.quantize.quantize`), or a QGraph for a
    model written by ``onnxruntime.quantization.quantize_static`` (QDQ or QOperator) or by
    :func:`hwgen.frontend.onnx.export_qdq`.

    Raises
    ------
    OnnxImportError
        For a malformed file or an unsupported op, attribute or pattern; the message names
        the ONNX node, its op and what is supported.
    """
    model = _read(path)
    name = model.graph.name or os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return load_model(model, name)


def _dim(d) -> int | None:
    return d.dim_value if d.HasField("dim_value") else None


def load_model(model: onnx.ModelProto, name: str = "model") -> ir.Graph | ir.QGraph:
    """Import an in-memory ONNX ModelProto (see :func:`load`)."""
    return import_model(model, name).graph


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_model` returns.

    graph: the imported Graph or QGraph.
    onnx_names: for every IR tensor, the ONNX tensor names that hold it (aliases through
        Q/DQ, Reshape, Flatten, ...). ``int_names``: those of them that hold the integer
        (quantized) values, for reading onnxruntime's intermediate tensors in tests.
    """
    graph: object
    onnx_names: dict
    int_names: dict


def import_model(model: onnx.ModelProto, name: str = "model") -> ImportResult:
    """Import an ONNX ModelProto and report which ONNX tensors each IR tensor came from."""
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise OnnxImportError(f"invalid ONNX model: {str(e).splitlines()[0]}") from None
    g = model.graph
    low = _Lowering(model)
    inputs = [i for i in g.input if i.name not in low.initializer_names]
    if len(inputs) != 1:
        raise OnnxImportError(f"the model has {len(inputs)} inputs "
                              f"({[i.name for i in inputs]}); exactly one image input is supported")
    inp = inputs[0]
    tt = inp.type.tensor_type
    dims = [_dim(d) for d in tt.shape.dim]
    if len(dims) != 4:
        raise OnnxImportError(f"input '{inp.name}' has rank {len(dims)}; an (N, C, H, W) image "
                              f"input is required")
    if any(d is None for d in dims[1:]):
        raise OnnxImportError(f"input '{inp.name}' shape {dims}: C, H and W must be fixed "
                              f"(only the batch N may be symbolic)")
    if dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4) and dims[1] > dims[3]:
        raise OnnxImportError(f"input '{inp.name}' shape {dims} looks channels-last (N, H, W, C); "
                              f"only NCHW models are supported: export with (N, C, H, W) input")
    low.run()
    b = _Builder(low)
    b.batch = dims[0]
    in_name = inp.name
    b.shapes[in_name] = tuple(dims[1:])
    b.vals[in_name] = _Val("t", in_name)
    b.run()
    outputs = []
    for o in g.output:
        r = low.r(o.name)
        v = b.vals.get(r)
        if v is None:
            if low.is_const(r):
                raise OnnxImportError(f"graph output '{o.name}' is a constant")
            raise OnnxImportError(f"graph output '{o.name}' is not produced by a supported node")
        if v.kind not in ("t", "flat"):
            raise OnnxImportError(f"graph output '{o.name}': {b._pending_msg(v)}")
        outputs.append(v.src)
    nodes = _prune(b.nodes, outputs)
    try:
        graph = ir.Graph(name, {in_name: tuple(dims[1:])}, tuple(outputs), tuple(nodes))
    except ir.IRError as e:
        raise OnnxImportError(str(e)) from None
    groups: dict[str, set] = {}
    for n in [i.name for i in g.input] + [o for nd in g.node for o in nd.output]:
        v = b.vals.get(low.r(n)) if n else None
        if v is not None and v.kind in ("t", "flat") and v.src in graph.shapes:
            groups.setdefault(v.src, set()).add(n)
    onnx_names = {t: sorted(ns) for t, ns in groups.items()}
    int_names = {t: [n for n in ns if n in low.int_names] for t, ns in onnx_names.items()}
    result = graph if not low.quantized else _qgraph(graph, b, low, in_name)
    return ImportResult(result, onnx_names, int_names)


def _prune(nodes, outputs):
    live = set(outputs)
    keep = []
    for n in reversed(nodes):
        if n.output in live:
            keep.append(n)
            live.update(n.inputs)
    return keep[::-1]


def _qgraph(graph: ir.Graph, b: _Builder, low: _Lowering, in_name: str) -> ir.QGraph:
    # quantisation of every IR tensor: any logical alias of it carries it
    tq: dict[str, _Q] = {}
    for logical, v in b.vals.items():
        if v.kind in ("t", "flat") and logical in low.q:
            old = tq.get(v.src)
            if old is not None and not old.same(low.q[logical]):
                raise OnnxImportError(f"tensor '{v.src}' has two quantisations "
                                      f"({old.describe()} / {low.q[logical].describe()})")
            tq[v.src] = low.q[logical]
    # ops that keep their input's quantisation
    for n in graph.nodes:
        if n.output not in tq and isinstance(n, (ir.MaxPool, ir.ChannelShuffle, ir.ChannelSlice)) \
                and n.inputs[0] in tq:
            tq[n.output] = tq[n.inputs[0]]
    act_q = {}
    for t in graph.shapes:
        if t not in tq:
            p = graph.producer(t)
            raise OnnxImportError(
                f"tensor '{t}' (output of {p.op if p else 'the graph input'} "
                f"'{p.name if p else t}') is not quantized: a quantized model must quantize every "
                f"tensor (float islands are not supported)",
                p.name if p else None, b.onnx_ops.get(p.name, p.op) if p else None)
        act_q[t] = tq[t].qparams()
    io_dtype = tq[in_name].dtype
    weights = {}
    for n in graph.nodes:
        if not isinstance(n, (ir.Conv2d, ir.FullyConnected)):
            continue
        w_name, b_name, layout = b.qweights[n.name]
        onnx_op = b.onnx_ops.get(n.name, n.op)
        if w_name is None:
            raise OnnxImportError("the weight is not quantized (float weights in a quantized "
                                  "model are not supported)", n.name, onnx_op)
        ints, q = low.qconst[low.r(w_name)]
        w = np.asarray(ints, np.int64)
        o = n.weight.shape[0]
        axis_ok = q.per_tensor or q.axis in ((0,) if layout in (None, "OF") else (1,))
        if not axis_ok:
            raise OnnxImportError(f"weight quantized along axis {q.axis}; only per output "
                                  f"channel (or per tensor) is supported", n.name, onnx_op)
        if layout == "FO":
            w = w.T
        w = w.reshape(n.weight.shape)
        zp = np.broadcast_to(q.zero_point.reshape(-1), (o,)).astype(np.int64)
        if q.dtype == "uint8":
            if np.any(zp != 128):
                raise OnnxImportError("asymmetric uint8 weights (zero point != 128) are not "
                                      "supported; quantize with weight_type=QInt8", n.name, onnx_op)
            w, zp = w - 128, zp - 128
        if np.any(zp != 0):
            raise OnnxImportError(f"weight zero point {zp[:4]} != 0: only symmetric weights are "
                                  f"supported", n.name, onnx_op)
        scale = np.broadcast_to(q.scale.reshape(-1), (o,)).astype(np.float32)
        if b_name is not None:
            bias = np.asarray(low.qconst[low.r(b_name)][0], np.int64).reshape(-1)
        else:
            # float (or absent) bias: quantize it as onnxruntime would with scale x_s * w_s
            xs = np.float32(act_q[n.inputs[0]].scale)
            bias = np.rint(n.bias / (xs * scale).astype(np.float32)).astype(np.int64)
        if np.any(np.abs(bias) > 2**31 - 1):
            raise OnnxImportError("bias does not fit int32", n.name, onnx_op)
        weights[n.name] = ir.QWeights(w.astype(np.int8), scale, bias.astype(np.int32))
    try:
        return ir.QGraph(graph, act_q, weights, io_dtype)
    except (ir.IRError, ValueError) as e:
        raise OnnxImportError(str(e)) from None
