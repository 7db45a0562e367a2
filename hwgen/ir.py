"""Graph IR: a typed, immutable graph of tensors and ops.

Layout
------
Every tensor inside the IR is one image of shape ``(C, H, W)`` (no batch axis); the
batch axis exists only at the edges (ONNX files, the golden runner, the CLI), which take
and return ``(N, C, H, W)``. A FullyConnected output is ``(classes, 1, 1)``.

Nodes are frozen dataclasses. Weights are float32 NumPy arrays made read-only; a
:class:`QGraph` adds the int8 quantisation of every tensor and weight. Graphs are built
once and never mutated: a pass returns a new graph (:meth:`Graph.replace_nodes`).

Shape inference runs in :class:`Graph`'s constructor; an inconsistency raises
:class:`IRError` naming the node.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

__all__ = [
    "Act", "IRError", "Node", "Conv2d", "FullyConnected", "ChannelShuffle", "ChannelSlice",
    "Concat", "Add", "MaxPool", "AvgPool", "GlobalAvgPool", "Graph", "QParams",
    "QWeights", "QGraph", "clamp_range", "pool_out_size",
]

Shape = tuple[int, int, int]


class IRError(ValueError):
    """A graph is inconsistent. The message names the node and what is wrong."""

    def __init__(self, node: str, message: str):
        self.node = node
        super().__init__(f"node '{node}': {message}")


class Act(enum.Enum):
    """Activation fused into the op that precedes it."""
    NONE = "none"
    RELU = "relu"
    RELU6 = "relu6"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Float reference of the activation."""
        if self is Act.RELU:
            return np.maximum(x, 0)
        if self is Act.RELU6:
            return np.clip(x, 0, 6)
        return x


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return v


def _pads(v) -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right); an int or (ph, pw) pair is symmetric."""
    if isinstance(v, int):
        return (v, v, v, v)
    v = tuple(int(i) for i in v)
    if len(v) == 2:
        return (v[0], v[1], v[0], v[1])
    if len(v) != 4:
        raise ValueError(f"padding must be an int, a pair or (top, left, bottom, right), got {v!r}")
    return v


def _frozen_array(a, dtype) -> np.ndarray:
    a = np.array(a, dtype=dtype, copy=True)
    a.setflags(write=False)
    return a


def pool_out_size(size: int, k: int, s: int, pad_before: int, pad_after: int,
                  ceil_mode: bool = False) -> int:
    """Output length of a pooling/conv window along one axis (ONNX/PyTorch semantics).

    With ``ceil_mode`` the last window may start in the padding on the right only if it
    starts inside the input or the left padding (PyTorch's rule, which ONNX Runtime follows).
    """
    span = size + pad_before + pad_after - k
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + pad_before:
        out -= 1
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class Node:
    """Base of every op. ``inputs`` and ``output`` are tensor names."""
    name: str
    inputs: tuple[str, ...]
    output: str

    n_inputs = 1

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.name:
            raise IRError("?", "a node needs a name")
        if self.n_inputs is not None and len(self.inputs) != self.n_inputs:
            raise IRError(self.name, f"{type(self).__name__} takes {self.n_inputs} input(s), "
                                     f"got {len(self.inputs)}")

    @property
    def op(self) -> str:
        return type(self).__name__

    def infer(self, shapes: list[Shape]) -> Shape:  # pragma: no cover - abstract
        raise NotImplementedError

    def macs(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return 0

    def params(self) -> int:
        return 0

    def describe(self) -> str:
        """Short human-readable parameter summary, used by `hwgen summary`."""
        return ""

    def _err(self, msg: str) -> IRError:
        return IRError(self.name, msg)


@dataclass(frozen=True, kw_only=True, eq=False)
class Conv2d(Node):
    """2-D convolution with groups: standard (groups=1), depthwise (groups=in=out),
    pointwise (kernel 1x1) and group conv. ``weight`` is (O, I/groups, kh, kw)."""
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1
    act: Act = Act.NONE
    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "kernel", _pair(self.kernel))
        object.__setattr__(self, "stride", _pair(self.stride))
        object.__setattr__(self, "padding", _pads(self.padding))
        object.__setattr__(self, "weight", _frozen_array(self.weight, np.float32))
        object.__setattr__(self, "bias", _frozen_array(self.bias, np.float32))
        if self.groups < 1 or self.out_channels % self.groups:
            raise self._err(f"out_channels {self.out_channels} is not a multiple of groups {self.groups}")
        if min(self.stride) < 1 or min(self.kernel) < 1 or min(self.padding) < 0:
            raise self._err(f"bad kernel {self.kernel}, stride {self.stride} or padding {self.padding}")
        kh, kw = self.kernel
        if self.weight.ndim != 4 or self.weight.shape[0] != self.out_channels or self.weight.shape[2:] != (kh, kw):
            raise self._err(f"weight shape {self.weight.shape} does not match out_channels "
                            f"{self.out_channels} and kernel {self.kernel}")
        if self.bias.shape != (self.out_channels,):
            raise self._err(f"bias shape {self.bias.shape}, expected ({self.out_channels},)")

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.weight.shape[1] == 1 and self.groups == self.out_channels

    def infer(self, shapes):
        c, h, w = shapes[0]
        if c % self.groups:
            raise self._err(f"input channels {c} not a multiple of groups {self.groups}")
        if self.weight.shape[1] != c // self.groups:
            raise self._err(f"weight has {self.weight.shape[1]} input channels per group, input has "
                            f"{c} channels in {self.groups} groups ({c // self.groups} per group)")
        t, l, b, r = self.padding
        oh = pool_out_size(h, self.kernel[0], self.stride[0], t, b)
        ow = pool_out_size(w, self.kernel[1], self.stride[1], l, r)
        if oh < 1 or ow < 1:
            raise self._err(f"input {h}x{w} is smaller than kernel {self.kernel} with padding {self.padding}")
        return (self.out_channels, oh, ow)

    def macs(self, in_shapes, out_shape):
        return int(np.prod(out_shape)) * int(np.prod(self.weight.shape[1:]))

    def params(self):
        return self.weight.size + self.bias.size

    def describe(self):
        kind = ("dw" if self.is_depthwise else "pw" if self.kernel == (1, 1) and self.groups == 1
                else f"g{self.groups}" if self.groups > 1 else "conv")
        return f"{kind} {self.kernel[0]}x{self.kernel[1]}/{self.stride[0]} {self.act.value}"


@dataclass(frozen=True, kw_only=True, eq=False)
class FullyConnected(Node):
    """Dense layer over the flattened (C*H*W) input; ``weight`` is (O, C*H*W). Output (O, 1, 1)."""
    out_features: int
    act: Act = Act.NONE
    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "weight", _frozen_array(self.weight, np.float32))
        object.__setattr__(self, "bias", _frozen_array(self.bias, np.float32))
        if self.weight.ndim != 2 or self.weight.shape[0] != self.out_features:
            raise self._err(f"weight shape {self.weight.shape}, expected ({self.out_features}, in_features)")
        if self.bias.shape != (self.out_features,):
            raise self._err(f"bias shape {self.bias.shape}, expected ({self.out_features},)")

    def infer(self, shapes):
        n = int(np.prod(shapes[0]))
        if n != self.weight.shape[1]:
            raise self._err(f"input has {n} features ({shapes[0]}), weight expects {self.weight.shape[1]}")
        return (self.out_features, 1, 1)

    def macs(self, in_shapes, out_shape):
        return self.weight.size

    def params(self):
        return self.weight.size + self.bias.size

    def describe(self):
        return f"fc {self.act.value}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ChannelShuffle(Node):
    """ShuffleNet channel shuffle: output channel j takes input channel (j % g) * n + j // g,
    with C = g * n."""
    groups: int

    def infer(self, shapes):
        c, h, w = shapes[0]
        if self.groups < 1 or c % self.groups:
            raise self._err(f"{c} channels are not divisible by shuffle groups {self.groups}")
        return (c, h, w)

    def permutation(self, channels: int) -> np.ndarray:
        """``perm`` such that ``out[j] = in[perm[j]]``."""
        n = channels // self.groups
        j = np.arange(channels)
        return (j % self.groups) * n + j // self.groups

    def describe(self):
        return f"shuffle g{self.groups}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ChannelSlice(Node):
    """Channels [start, stop) of the input (what Split/Slice on the channel axis become)."""
    start: int
    stop: int

    def infer(self, shapes):
        c, h, w = shapes[0]
        if not 0 <= self.start < self.stop <= c:
            raise self._err(f"channel range [{self.start}, {self.stop}) outside 0..{c}")
        return (self.stop - self.start, h, w)

    def describe(self):
        return f"channels {self.start}:{self.stop}"


@dataclass(frozen=True, kw_only=True, eq=False)
class Concat(Node):
    """Concatenation on the channel axis, then an optional activation."""
    act: Act = Act.NONE
    n_inputs = None

    def __post_init__(self):
        super().__post_init__()
        if len(self.inputs) < 2:
            raise self._err("Concat needs at least two inputs")

    def infer(self, shapes):
        hw = {s[1:] for s in shapes}
        if len(hw) != 1:
            raise self._err(f"inputs differ in spatial size: {shapes}")
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def describe(self):
        return f"concat {self.act.value}"


@dataclass(frozen=True, kw_only=True, eq=False)
class Add(Node):
    """Element-wise residual add of two tensors of the same shape, then an optional activation."""
    act: Act = Act.NONE
    n_inputs = 2

    def infer(self, shapes):
        if shapes[0] != shapes[1]:
            raise self._err(f"inputs differ in shape: {shapes[0]} vs {shapes[1]}")
        return shapes[0]

    def describe(self):
        return f"add {self.act.value}"


@dataclass(frozen=True, kw_only=True, eq=False)
class _Pool(Node):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: bool = False

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "kernel", _pair(self.kernel))
        object.__setattr__(self, "stride", _pair(self.stride))
        object.__setattr__(self, "padding", _pads(self.padding))
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise self._err(f"bad kernel {self.kernel}, stride {self.stride} or padding {self.padding}")
        if max(self.padding) >= max(self.kernel):
            raise self._err(f"padding {self.padding} must be smaller than kernel {self.kernel}")

    def infer(self, shapes):
        c, h, w = shapes[0]
        t, l, b, r = self.padding
        oh = pool_out_size(h, self.kernel[0], self.stride[0], t, b, self.ceil_mode)
        ow = pool_out_size(w, self.kernel[1], self.stride[1], l, r, self.ceil_mode)
        if oh < 1 or ow < 1:
            raise self._err(f"input {h}x{w} is smaller than the pooling window {self.kernel}")
        return (c, oh, ow)

    def describe(self):
        return (f"{self.kernel[0]}x{self.kernel[1]}/{self.stride[0]}"
                + (" ceil" if self.ceil_mode else ""))


@dataclass(frozen=True, kw_only=True, eq=False)
class MaxPool(_Pool):
    """Max pooling; padding never wins (ONNX semantics: padded cells are -inf)."""


@dataclass(frozen=True, kw_only=True, eq=False)
class AvgPool(_Pool):
    """Average pooling. ``count_include_pad``: divide by k*k (True) or by the cells inside
    the input (False)."""
    count_include_pad: bool = False


@dataclass(frozen=True, kw_only=True, eq=False)
class GlobalAvgPool(Node):
    """Mean over H and W; output (C, 1, 1)."""

    def infer(self, shapes):
        return (shapes[0][0], 1, 1)


@dataclass(frozen=True, eq=False)
class Graph:
    """A topologically ordered list of nodes with named graph inputs and outputs.

    Parameters
    ----------
    name: model name.
    inputs: mapping of graph-input tensor name to its (C, H, W) shape.
    outputs: names of the graph-output tensors.
    nodes: the ops, each after the producers of its inputs.
    """
    name: str
    inputs: Mapping[str, Shape]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]
    shapes: Mapping[str, Shape] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "inputs", {k: tuple(int(i) for i in v) for k, v in dict(self.inputs).items()})
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        shapes: dict[str, Shape] = dict(self.inputs)
        names = set()
        for node in self.nodes:
            if not isinstance(node, Node):
                raise TypeError(f"graph nodes must be ir.Node, got {type(node).__name__}")
            if node.name in names:
                raise IRError(node.name, "duplicate node name")
            names.add(node.name)
            for t in node.inputs:
                if t not in shapes:
                    raise IRError(node.name, f"input tensor '{t}' is not a graph input nor produced "
                                             f"by an earlier node")
            if node.output in shapes:
                raise IRError(node.name, f"output tensor '{node.output}' is already defined")
            shapes[node.output] = tuple(int(i) for i in node.infer([shapes[t] for t in node.inputs]))
        for t in self.outputs:
            if t not in shapes:
                raise IRError("<graph>", f"graph output '{t}' is never produced")
        object.__setattr__(self, "shapes", shapes)

    # --- queries -------------------------------------------------------------------
    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def producer(self, tensor: str) -> Node | None:
        for n in self.nodes:
            if n.output == tensor:
                return n
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def in_shapes(self, node: Node) -> list[Shape]:
        return [self.shapes[t] for t in node.inputs]

    def node_macs(self, node: Node) -> int:
        return node.macs(self.in_shapes(node), self.shapes[node.output])

    @property
    def input_name(self) -> str:
        return next(iter(self.inputs))

    @property
    def input_shape(self) -> Shape:
        return self.inputs[self.input_name]

    @property
    def output_shape(self) -> Shape:
        return self.shapes[self.outputs[0]]

    def macs(self) -> int:
        return sum(self.node_macs(n) for n in self.nodes)

    def params(self) -> int:
        return sum(n.params() for n in self.nodes)

    def replace_nodes(self, nodes, outputs=None) -> "Graph":
        """A new graph with other nodes (a pass's result); shapes are re-inferred."""
        return Graph(self.name, self.inputs, tuple(outputs) if outputs is not None else self.outputs,
                     tuple(nodes))


# --- quantisation annotations ---------------------------------------------------------

@dataclass(frozen=True)
class QParams:
    """int8 affine quantisation of one tensor: real = scale * (q - zero_point)."""
    scale: float
    zero_point: int

    def __post_init__(self):
        s = np.float32(self.scale)
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"quantisation scale must be finite and positive, got {self.scale!r}")
        if not -128 <= int(self.zero_point) <= 127:
            raise ValueError(f"int8 zero point must be in [-128, 127], got {self.zero_point}")
        object.__setattr__(self, "scale", float(s))
        object.__setattr__(self, "zero_point", int(self.zero_point))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """float -> int8 as ONNX QuantizeLinear does (float32 division, round half to even)."""
        q = np.rint(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, np.int32) - self.zero_point).astype(np.float32) * np.float32(self.scale)


@dataclass(frozen=True, eq=False)
class QWeights:
    """int8 weights of a Conv2d / FullyConnected node: symmetric per output channel.

    weight: int8, same shape as the node's float weight. scale: float32 (O,).
    bias: int32 (O,), in units of input_scale * scale[o].
    """
    weight: np.ndarray
    scale: np.ndarray
    bias: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "weight", _frozen_array(self.weight, np.int8))
        object.__setattr__(self, "scale", _frozen_array(self.scale, np.float32))
        object.__setattr__(self, "bias", _frozen_array(self.bias, np.int32))
        o = self.weight.shape[0]
        if self.scale.shape != (o,) or self.bias.shape != (o,):
            raise ValueError(f"weight scale {self.scale.shape} and bias {self.bias.shape} must be ({o},)")


def clamp_range(act: Act, q: QParams) -> tuple[int, int]:
    """int8 output clamp [lo, hi] for a fused activation under output quantisation ``q``."""
    lo, hi = -128, 127
    if act in (Act.RELU, Act.RELU6):
        lo = max(lo, q.zero_point)
    if act is Act.RELU6:
        hi = min(hi, q.zero_point + int(np.rint(np.float32(6.0) / np.float32(q.scale))))
    return lo, hi


@dataclass(frozen=True, eq=False)
class QGraph:
    """A graph with its int8 quantisation: every tensor's QParams, every Conv2d/FC's QWeights.

    ``io_dtype`` is the integer type at the graph's edges (``"int8"``, or ``"uint8"`` for an
    imported model whose inputs/outputs are uint8: values there are the int8 ones + 128).
    """
    graph: Graph
    act_q: Mapping[str, QParams]
    weights: Mapping[str, QWeights]
    io_dtype: str = "int8"

    def __post_init__(self):
        g = self.graph
        for t in g.shapes:
            if t not in self.act_q:
                raise IRError(g.producer(t).name if g.producer(t) else "<input>",
                              f"tensor '{t}' has no quantisation parameters")
        for n in g.nodes:
            if isinstance(n, (Conv2d, FullyConnected)):
                if n.name not in self.weights:
                    raise IRError(n.name, "no quantised weights")
                if self.weights[n.name].weight.shape != n.weight.shape:
                    raise IRError(n.name, f"quantised weight shape {self.weights[n.name].weight.shape} "
                                          f"!= float weight shape {n.weight.shape}")
        if self.io_dtype not in ("int8", "uint8"):
            raise ValueError(f"io_dtype must be int8 or uint8, got {self.io_dtype!r}")

    @property
    def input_q(self) -> QParams:
        return self.act_q[self.graph.input_name]

    @property
    def output_q(self) -> QParams:
        return self.act_q[self.graph.outputs[0]]


def conv_out_hw(h: int, w: int, node: Conv2d) -> tuple[int, int]:
    """Spatial output size of a conv (convenience for mappers and engines)."""
    t, l, b, r = node.padding
    return (pool_out_size(h, node.kernel[0], node.stride[0], t, b),
            pool_out_size(w, node.kernel[1], node.stride[1], l, r))

