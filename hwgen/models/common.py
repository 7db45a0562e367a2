"""Shared machinery of the model zoo: a graph builder that draws BN-like random weights,
option checks, and the ``.npz`` weight-file format.

Random weights
--------------
Every zoo network is a batch-normalised network with BN folded into the convolutions, so
in the trained network the pre-activation of every conv has roughly unit variance per
channel. The builder imitates that without a forward pass: it keeps an estimate ``m2`` of
the mean square of every tensor (:data:`INPUT_M2` = 1/3 for the graph input: images
uniform in [-1, 1], which is TF's MobileNet / Keras Xception preprocessing and what
hwgen's calibration draws) and whether the tensor is non-negative (a ReLU output). Each
Conv2d / FullyConnected weight is drawn from a standard normal and every output filter is
rescaled to the norm ``std / sqrt(m2_in)``, so the expected square of each pre-activation
is ``std^2`` whatever the fan-in: ``std`` = 1, or :data:`RELU6_STD` = 2 before a ReLU6,
whose int8 range is fixed to [0, 6] (a pre-activation of std 1 would use a sixth of it).
This is He initialisation with the gain taken from the tensor actually feeding the layer
(a ReLU output has ``m2`` = 1/2 of its pre-activation: gain 2), which also covers linear
bottlenecks, residual sums and pools; like He's, it keeps the network at the edge of
chaos, so a small perturbation (quantisation noise) neither grows nor shrinks layer after
layer. (Zero-mean filters would make the features more input-dependent, but they make a
ReLU network chaotic: measured here, int8 noise then grows 1.2x per layer.) Biases are
drawn from N(0, (0.1 std)^2), like the small shifts a folded BN leaves (zero where a conv
has no BN of its own, e.g. Xception's depthwise halves). Estimates for ops without weights:

- a ReLU halves the mean square of a zero-mean sum; a sum with a non-negative input (a
  residual stream) keeps it;
- Add sums the mean squares of its inputs; Concat averages them weighted by channels;
- MaxPool 3x3 multiplies it by :data:`MAXPOOL_GAIN`, AvgPool 3x3 by :data:`AVGPOOL_GAIN`
  and GlobalAvgPool by :data:`GAP_GAIN` (measured on the zoo networks).

Measured on inputs uniform in [-1, 1] (``tests/test_models.py``): the RMS of every tensor
stays within 0.2-3.5 through all four networks (Xception with 16 middle blocks and
ShuffleNet's long residual stages included); the logits have a standard deviation of
0.3-1.2 over the classes. As in any random deep ReLU network the logits depend only
weakly on the input (their change between two random images is 2-5% of their spread);
with hwgen's quantiser the int8 output is within 1.5-3.5% (RMS) of the float one.

All draws come from one ``np.random.default_rng(seed)`` in node order, so a network is a
pure function of its options and ``seed``.

Weight files
------------
``weights=`` names an ``.npz`` file with, for every Conv2d and FullyConnected node, the
arrays ``"<node name>.weight"`` (the IR layout: (O, I/groups, kh, kw) or (O, C*H*W)) and
``"<node name>.bias"`` ((O,)), float32, BN already folded. A missing key or a wrong shape raises
:class:`hwgen.ir.IRError` naming the node and the expected shape; an array that no node
uses, a missing or unreadable file raise ValueError.
:func:`save_weights` writes such a file from any graph.
"""
from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from ..ir import (Act, Add, AvgPool, ChannelShuffle, Concat, Conv2d, FullyConnected, Graph,
                  GlobalAvgPool, IRError, MaxPool, Node)

__all__ = ["INPUT", "ModelBuilder", "save_weights", "load_weights", "same_padding",
           "check_number", "check_int", "check_choice", "check_weights_path",
           "MAXPOOL_GAIN", "AVGPOOL_GAIN", "GAP_GAIN", "BIAS_STD",
           "INPUT_M2", "RELU6_STD"]

#: Name of every zoo graph's input tensor.
INPUT = "input"

#: Mean square of the graph input: images uniform in [-1, 1] (TF's MobileNet / Keras
#: Xception preprocessing, and what hwgen's calibration draws).
INPUT_M2 = 1.0 / 3.0
#: Standard deviation of the random biases, relative to the pre-activation's.
BIAS_STD = 0.1
#: Pre-activation standard deviation before a ReLU6 (uses the fixed [0, 6] output range
#: well and rarely clips); 1 before any other activation.
RELU6_STD = 2.0

#: Mean-square gain of a 3x3 max pool (input -> output).
MAXPOOL_GAIN = 2.0
#: Mean-square gain of a 3x3 average pool.
AVGPOOL_GAIN = 0.7
#: Mean-square gain of a global average pool.
GAP_GAIN = 0.8


# --- option checks ---------------------------------------------------------------------

def check_number(model: str, option: str, value, lo: float, hi: float, *,
                 lo_open: bool = True) -> float:
    """``value`` as a float in (lo, hi] (or [lo, hi] when ``lo_open`` is False)."""
    allowed = f"{lo} {'<' if lo_open else '<='} {option} <= {hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{model}: {option}={value!r} is not a number; allowed: {allowed}")
    v = float(value)
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        raise ValueError(f"{model}: {option}={value!r} is out of range; allowed: {allowed}")
    return v


def check_int(model: str, option: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (no upper bound when ``hi`` is None)."""
    allowed = f"an integer {lo} <= {option}" + (f" <= {hi}" if hi is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{model}: {option}={value!r} is not an integer; allowed: {allowed}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"{model}: {option}={value!r} is out of range; allowed: {allowed}")
    return v


def check_choice(model: str, option: str, value, choices):
    """``value`` if it is one of ``choices`` (compared with ==)."""
    for c in choices:
        if value == c and type(value) is not bool:
            return c
    raise ValueError(f"{model}: {option}={value!r} is not supported; allowed: "
                     + ", ".join(repr(c) for c in choices))


def check_weights_path(model: str, weights):
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"{model}: weights={weights!r} is not a path; allowed: None (random "
                         f"weights) or the path of an .npz file")
    return os.fspath(weights)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one axis: output ``ceil(size/stride)``,
    the odd pixel of padding goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# --- weight files ----------------------------------------------------------------------

def load_weights(path) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` weight file, as a dict."""
    path = os.fspath(path)
    try:
        f = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"weights file '{path}' does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"weights file '{path}' is not a readable .npz file: {e}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"weights file '{path}' is a single .npy array, not an .npz archive of "
                         f"'<node>.weight' / '<node>.bias' arrays")
    try:
        with f:
            return {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"weights file '{path}' is not a readable .npz file: {e}") from None


def save_weights(graph: Graph, path) -> None:
    """Write every Conv2d / FullyConnected weight and bias of ``graph`` to ``path`` (.npz,
    keys ``"<node>.weight"``, ``"<node>.bias"``), the format ``weights=`` reads.
    The file is written at exactly ``path`` (no ``.npz`` suffix is appended)."""
    arrays = {}
    for n in graph.nodes:
        if isinstance(n, (Conv2d, FullyConnected)):
            arrays[f"{n.name}.weight"] = n.weight
            arrays[f"{n.name}.bias"] = n.bias
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)


# --- builder ---------------------------------------------------------------------------

class ModelBuilder:
    """Appends nodes in topological order; each method returns its output tensor's name
    (which is the node's name).

    Parameters
    ----------
    model: graph name.
    input_shape: (C, H, W) of the graph input, named :data:`INPUT`.
    seed: seed of the random weights.
    weights: None for random weights, or the path of an ``.npz`` weight file.
    """

    def __init__(self, model: str, input_shape, seed: int, weights=None):
        self.model = model
        self.input_shape = tuple(int(i) for i in input_shape)
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, int, int]] = {INPUT: self.input_shape}
        self.m2: dict[str, float] = {INPUT: INPUT_M2}
        self.nonneg: dict[str, bool] = {INPUT: False}
        self.weights_path = weights
        self.file = load_weights(weights) if weights is not None else None
        self.used: set[str] = set()

    # -- helpers
    def channels(self, x: str) -> int:
        return self.shapes[x][0]

    def _add(self, node: Node, m2: float, nonneg: bool) -> str:
        shape = node.infer([self.shapes[t] for t in node.inputs])
        self.nodes.append(node)
        self.shapes[node.output] = tuple(int(i) for i in shape)
        self.m2[node.output] = m2
        self.nonneg[node.output] = nonneg
        return node.output

    def _params(self, name: str, wshape, x: str, bias: bool, std: float = 1.0):
        if self.file is not None:
            return tuple(self._from_file(name, part, shape)
                         for part, shape in (("weight", wshape), ("bias", (wshape[0],))))
        w = self.rng.standard_normal(wshape).reshape(wshape[0], -1)
        w *= std / np.sqrt((w ** 2).sum(axis=1, keepdims=True) * self.m2[x])
        w = w.reshape(wshape)
        b = (self.rng.normal(0.0, std * BIAS_STD, wshape[0]) if bias else np.zeros(wshape[0]))
        return w.astype(np.float32), b.astype(np.float32)

    def _from_file(self, name: str, part: str, shape) -> np.ndarray:
        key = f"{name}.{part}"
        if key not in self.file:
            raise IRError(name, f"weights file '{self.weights_path}' has no array '{key}' "
                                f"(expected shape {tuple(shape)})")
        a = self.file[key]
        if tuple(a.shape) != tuple(shape):
            raise IRError(name, f"array '{key}' in weights file '{self.weights_path}' has shape "
                                f"{tuple(a.shape)}, expected {tuple(shape)}")
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
            raise IRError(name, f"array '{key}' in weights file '{self.weights_path}' has dtype "
                                f"{a.dtype}, expected a float array")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise IRError(name, f"array '{key}' in weights file '{self.weights_path}' has "
                                f"non-finite values")
        self.used.add(key)
        return a

    @staticmethod
    def _act_m2(m2: float, act: Act) -> float:
        return m2 * 0.5 if act is not Act.NONE else m2

    # -- ops
    def conv(self, name: str, x: str, out_channels: int, kernel: int, *, stride: int = 1,
             padding=0, groups: int = 1, act: Act = Act.NONE, bias: bool = True) -> str:
        """Conv2d (groups=1 standard, groups=C depthwise); ``bias=False`` gives a zero bias
        (a conv with no BN of its own, e.g. the depthwise half of a separable conv)."""
        cin = self.channels(x)
        if cin % groups:
            raise IRError(name, f"{cin} input channels are not divisible by groups {groups}")
        std = RELU6_STD if act is Act.RELU6 else 1.0
        w, b = self._params(name, (out_channels, cin // groups, kernel, kernel), x, bias, std)
        node = Conv2d(name=name, inputs=(x,), output=name, out_channels=out_channels,
                      kernel=(kernel, kernel), stride=(stride, stride), padding=padding,
                      groups=groups, act=act, weight=w, bias=b)
        m2 = std ** 2 * (1.0 + (BIAS_STD ** 2 if bias else 0.0))
        return self._add(node, self._act_m2(m2, act), act is not Act.NONE)

    def fc(self, name: str, x: str, out_features: int, act: Act = Act.NONE) -> str:
        n_in = int(np.prod(self.shapes[x]))
        w, b = self._params(name, (out_features, n_in), x, True)
        node = FullyConnected(name=name, inputs=(x,), output=name, out_features=out_features,
                              act=act, weight=w, bias=b)
        return self._add(node, self._act_m2(1.0 + BIAS_STD ** 2, act), act is not Act.NONE)

    def maxpool(self, name: str, x: str, kernel: int, stride: int, padding=0,
                ceil_mode: bool = False) -> str:
        node = MaxPool(name=name, inputs=(x,), output=name, kernel=kernel, stride=stride,
                       padding=padding, ceil_mode=ceil_mode)
        return self._add(node, self.m2[x] * MAXPOOL_GAIN, self.nonneg[x])

    def avgpool(self, name: str, x: str, kernel: int, stride: int, padding=0,
                ceil_mode: bool = False, count_include_pad: bool = False) -> str:
        node = AvgPool(name=name, inputs=(x,), output=name, kernel=kernel, stride=stride,
                       padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        return self._add(node, self.m2[x] * AVGPOOL_GAIN, self.nonneg[x])

    def global_avgpool(self, name: str, x: str) -> str:
        node = GlobalAvgPool(name=name, inputs=(x,), output=name)
        return self._add(node, self.m2[x] * GAP_GAIN, self.nonneg[x])

    def add(self, name: str, a: str, b: str, act: Act = Act.NONE) -> str:
        node = Add(name=name, inputs=(a, b), output=name, act=act)
        return self._add(node, self._sum_m2((a, b), act), self._sum_nonneg((a, b), act))

    def _sum_m2(self, xs, act: Act) -> float:
        """Mean square of act(sum of xs): a ReLU halves it when every input is zero-mean and
        leaves it about unchanged when a non-negative input (a ReLU output) is in the sum."""
        m2 = sum(self.m2[x] for x in xs)
        if act is not Act.NONE and not any(self.nonneg[x] for x in xs):
            m2 *= 0.5
        return m2

    def _sum_nonneg(self, xs, act: Act) -> bool:
        return act is not Act.NONE or all(self.nonneg[x] for x in xs)

    def concat(self, name: str, xs, act: Act = Act.NONE) -> str:
        node = Concat(name=name, inputs=tuple(xs), output=name, act=act)
        total = sum(self.channels(x) for x in xs)
        m2 = sum(self.channels(x) * self._sum_m2((x,), act) for x in xs) / total
        return self._add(node, m2, self._sum_nonneg(xs, act))

    def shuffle(self, name: str, x: str, groups: int) -> str:
        node = ChannelShuffle(name=name, inputs=(x,), output=name, groups=groups)
        return self._add(node, self.m2[x], self.nonneg[x])

    def graph(self, output: str) -> Graph:
        """The finished graph; with a weight file, every array in it must have been used."""
        if self.file is not None:
            unused = sorted(set(self.file) - self.used)
            if unused:
                more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
                raise ValueError(f"{self.model}: weights file '{self.weights_path}' has arrays no "
                                 f"node uses: {', '.join(unused[:5])}{more} (is it for another "
                                 f"model or other options?)")
        return Graph(self.model, {INPUT: self.input_shape}, (output,), tuple(self.nodes))

