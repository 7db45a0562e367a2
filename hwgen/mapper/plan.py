"""Budget-aware mapping of a quantised graph onto the engine overlay of one device.

:func:`plan` turns a :class:`~hwgen.ir.QGraph` and a :class:`~boards.Board` into a
:class:`Plan`: the engine sizes, the per-layer schedule with estimated cycles, the
activation buffer plan and the weight placement. :func:`check_fit` raises
:class:`MapperFitError` before any synthesis when the plan does not fit.

The pipeline, top to bottom
---------------------------
1. **Classify** every node (:func:`_classify`) onto the units :mod:`hwgen.hw.accelerator`
   builds: Conv2d 1x1 (grouped or not, any stride), K x K Conv2d with groups=1,
   FullyConnected and GlobalAvgPool (a global AvgPool) -> the systolic array, fed one patch
   byte per cycle by the patch feeder (kinds sa, im2col, fc, gap); depthwise 3x3 -> the
   one-lane depthwise unit; MaxPool -> the serial max-pool unit; AvgPool 3x3 -> the
   average-pool unit; Add -> the add unit; Concat / ChannelShuffle / ChannelSlice -> address
   remaps (0 cycles) when possible, else a copy (one byte per cycle; not built yet).
2. **Alias** (:func:`_aliases`): a Concat input is written straight into its channel range
   of the Concat's buffer, a ChannelShuffle input is written through the shuffle permutation
   (hw/shuffle.py), a ChannelSlice is a read view. Conditions: the remapped tensor is
   produced by a node (not the graph input), has that one consumer, and shares the
   quantisation parameters (else onnxruntime rescales: a copy with a 256-entry table); a
   Concat's fused clamp is folded into its producers' clamps.
3. **Liveness and buffer plan** (:func:`_buffers`): every *storage* (a tensor written by an
   engine, with everything aliased into it) is live from its first write to its last read
   (the graph input from step 0, graph outputs to the end). Storages are placed in one
   activation arena, largest first at the lowest 16-byte-aligned offset free during their
   whole lifetime. For a chain this is exactly a ping-pong pair; tensors kept alive across
   layers (residual inputs, concat halves) land in further regions (the skip buffer).
   Layout of a tensor (``hwc``, pixel-major): ``addr = base + pixel * pitch + channel`` with
   ``pitch`` = the storage's channels (hw/actbuf.py).
4. **Engine sizing** (:func:`_search`): exhaustive search over the array R x C (each in
   1, 2, 3, 4, 6, 8, 12, ... 32), minimising the estimated cycles (hwgen/mapper/cost.py)
   under ``margin`` x the device's LUT4, MULT18X18D and DP16KD; among the configurations
   within 1 % of the fastest, the one using the smallest fraction of the budget (sum of the
   three fractions). Everything else is fixed by what the accelerator builds: one
   activation byte per cycle into the array (L = 1), a C-lane requantiser (Q = C), one
   depthwise lane (P = 1 when the network has depthwise layers, else 0) and one lane in
   the pool and add units (V = 1). Weights must fit on chip if any configuration allows it; only otherwise is
   the fastest configuration without on-chip weights taken and the weights placed after.
5. **Weight placement**: every layer's int8 weights (in the engine's stream order, padded
   to the engine's lanes), int32 biases and requantisation parameters in block RAM when the
   whole model fits; otherwise the largest layers move to external SDRAM until the rest
   fits, and the plan reports the bytes per inference and the bandwidth they need (the
   SDRAM streamer is a later issue: such a plan fails :func:`check_fit`).

Block-RAM accounting (DP16KD = 18 Kbit), as :class:`hwgen.hw.accelerator.Accelerator`
instantiates the memories (explicit stores through :func:`hwgen.mapper.cost.bram_blocks`,
i.e. :func:`hwgen.hw.bram.dp16kd_geometry`; inferred ones through
:func:`hwgen.mapper.cost.dp16kd_for`):

* activation arena: ``arena_bytes`` bytes, byte-wide;
* weight store: on-chip section-A bytes (weights padded to C lanes) in ``8*C``-bit words;
  depthwise tap store: the depthwise weights again, byte-wide; channel store: section B
  (8 bytes per output channel: int32 bias + scale word, and the op constants) in 64-bit
  words;
* the array's activation store: R rows x 2 banks of ``2**ceil(log2(sa_max_k))`` bytes;
  one ``30``-bit x (most output channels) parameter memory per requantiser lane; the place
  table (17 bits per output channel); the depthwise unit's two line buffers; the
  average-pool unit's line buffer; the host link's staging buffer. The sequencer's
  descriptor table is logic (LUT4 per descriptor).

Limits are ``floor(budget * margin)`` for LUT4, MULT18X18D and DP16KD alike.

Nothing is tiled: the patch feeder reads the arena directly (no im2col line buffer) and the
depthwise unit's line buffers hold the widest depthwise input row (``line_width``; a layer
wider than ``max_line_width`` is refused), so every layer runs in one band.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .. import ir
from . import cost

__all__ = ["plan", "check_fit", "Plan", "Engines", "LayerPlan", "View", "Place", "Storage",
           "Usage", "FitProblem", "MapperError", "MapperFitError", "quick_fit",
           "WEIGHTS_HEADER_BYTES", "WEIGHTS_SECTION_A"]

#: weights.bin: header bytes (see firmware/README.md), and where section A (weights) starts.
WEIGHTS_HEADER_BYTES = 32
WEIGHTS_SECTION_A = 64
#: Activation storages start on multiples of this many bytes.
ACT_ALIGN = 16
#: Search space: the array sides (hw/systolic.py allows 1..64 rows and columns; 3 x 2**k
#: steps let the search use the DSPs a power-of-two step would leave idle and pad fewer
#: lanes for group convs with 10, 20, 40 channels per group). The rest is what the
#: accelerator builds: L = 1 activation byte per cycle (the byte-wide arena), Q = C
#: requantiser lanes (SystolicConv), P = 1 depthwise lane (hw/dwunit.py) and V = 1 lane in
#: the pool and add units.
_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
SA_ROWS = _STEPS
SA_COLS = _STEPS
SA_LANES = (1,)
DW_LANES = (1,)
VEC_LANES = (1,)
#: Configurations within this factor of the fastest count as equally fast (smaller wins).
TIE = 1.01
#: Default widest line buffer (pixels) of the depthwise unit; wider depthwise layers are
#: refused (MapperError).
MAX_LINE_WIDTH = 256


class MapperError(ir.IRError):
    """A layer the engines cannot run (the message names the node, the limit and the fix)."""


@dataclass(frozen=True)
class FitProblem:
    """One resource that overflows: ``need`` > ``have`` ``unit`` (``have`` after margin)."""
    resource: str
    need: int
    have: int
    unit: str
    layer: str | None = None
    detail: str = ""


class MapperFitError(ValueError):
    """The model does not fit the device. ``problems`` lists every overflowing resource;
    the message names the layer and resource, by how much, and what would fit."""

    def __init__(self, message: str, problems: tuple[FitProblem, ...] = (),
                 suggestions: tuple[str, ...] = ()):
        self.problems = tuple(problems)
        self.suggestions = tuple(suggestions)
        super().__init__(message)


# --- plan data -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Engines:
    """Unit sizes and buffer depths of the accelerator the plan builds
    (:class:`hwgen.hw.accelerator.Accelerator`).

    Parameters
    ----------
    sa_rows, sa_cols: systolic array R x C (R output pixels x C output channels per beat).
    sa_lanes: L, activation bytes per cycle into the array: 1 (the patch feeder reads the
        byte-wide arena).
    sa_max_k: longest patch vector ``groups * K`` of an array layer (activation store:
        2 banks x R rows of ``2**ceil(log2(sa_max_k))`` bytes).
    dw_lanes, dw_k: depthwise unit lanes P (1, or 0 when the model has no depthwise layer;
        the weight image's depthwise blocks are channel-major with P = 1) and kernel (3).
    rq_lanes: requantiser lanes Q: C (the array's SystolicConv requantises a whole beat).
    vec_lanes: V, lanes of the pool and add units: 1.
    line_width: the depthwise unit's line-buffer width in pixels (widest depthwise input).
    im2col_k, im2col_row_bytes: largest K x K conv kernel and row (W * C bytes) on the
        array (0: none); informational, the patch feeder has no line buffer.
    pool_k: largest pooling window (0: no windowed pool). has_*: which units exist.
    """
    sa_rows: int
    sa_cols: int
    sa_lanes: int
    sa_max_k: int
    dw_lanes: int
    dw_k: int
    rq_lanes: int
    vec_lanes: int
    line_width: int
    im2col_k: int = 0
    im2col_row_bytes: int = 0
    pool_k: int = 0
    dw_max_groups: int = 0
    has_add: bool = False
    has_maxpool: bool = False
    has_avgpool: bool = False
    has_gap: bool = False
    has_copy: bool = False

    @property
    def sa_macs(self) -> int:
        return self.sa_rows * self.sa_cols

    @property
    def dw_macs(self) -> int:
        return self.dw_lanes * self.dw_k * self.dw_k

    @property
    def mac_units(self) -> int:
        """Multipliers doing MACs: R*C + P*K*K."""
        return self.sa_macs + self.dw_macs

    @property
    def act_word_bytes(self) -> int:
        """Width of the activation arena's word: one byte (every unit reads and writes the
        arena one byte per cycle)."""
        return 1

    def describe(self) -> str:
        """The units the accelerator builds, e.g. ``systolic array 6x12 with a 12-lane
        requantiser, depthwise unit (1 lane, 3x3), max pool unit``."""
        s = (f"systolic array {self.sa_rows}x{self.sa_cols} with a {self.rq_lanes}-lane "
             f"requantiser")
        if self.sa_lanes != 1:
            s += f" ({self.sa_lanes} activation bytes per cycle)"
        if self.dw_lanes:
            s += (f", depthwise unit ({self.dw_lanes} lane{'s' if self.dw_lanes > 1 else ''}, "
                  f"{self.dw_k}x{self.dw_k})")
        for flag, name in ((self.has_maxpool, "max pool"), (self.has_avgpool, "average pool"),
                           (self.has_add, "residual add")):
            if flag:
                s += f", {name} unit"
        if self.has_copy:
            s += ", copies (no copy unit is built yet)"
        return s


@dataclass(frozen=True)
class Usage:
    """Estimated resources of one part of the design."""
    name: str
    lut4: int
    mult18: int
    dp16kd: int


@dataclass(frozen=True)
class View:
    """Where a consumer reads a tensor: ``addr + pixel * pitch + channel``."""
    tensor: str
    addr: int
    pitch: int
    channels: int
    pixels: int


@dataclass(frozen=True)
class Place:
    """Where a producer writes its output: channel ``c`` of pixel ``p`` goes to
    ``addr + p * pitch + post + s(pre + c)`` with ``s`` the shuffle permutation
    ``j -> (j % n) * g + j // n`` over ``shuffle_channels = g * n`` channels (identity when
    ``shuffle_groups == 0``)."""
    tensor: str
    storage: str
    addr: int
    pitch: int
    pre: int = 0
    shuffle_groups: int = 0
    shuffle_channels: int = 0
    post: int = 0

    def channel(self, c):
        """Storage channel of output channel ``c`` (NumPy arrays broadcast)."""
        j = np.asarray(c) + self.pre
        if self.shuffle_groups:
            n = self.shuffle_channels // self.shuffle_groups
            j = (j % n) * self.shuffle_groups + j // n
        return j + self.post


@dataclass(frozen=True)
class Storage:
    """A block of the activation arena: one engine-written tensor plus its aliases."""
    name: str
    addr: int
    size: int
    channels: int
    pixels: int
    first: int
    last: int
    tensors: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """One scheduled layer (one IR node). ``engine``: systolic, im2col+systolic, dwconv,
    pool, add, copy or remap (an address remap: 0 cycles, no descriptor work)."""
    index: int
    name: str
    op: str
    kind: str
    engine: str
    in_shapes: tuple[tuple[int, int, int], ...]
    out_shape: tuple[int, int, int]
    macs: int
    cycles: int
    ideal_cycles: int
    bands: int
    inputs: tuple[View, ...]
    output: Place | None
    lo: int
    hi: int
    w_addr: int = 0
    w_bytes: int = 0
    ch_addr: int = 0
    ch_bytes: int = 0
    const_addr: int = 0
    const_bytes: int = 0
    placement: str = "none"      # "bram", "sdram" or "none" (no weights)
    ext_bytes: int = 0           # bytes streamed from SDRAM per inference


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything the mapper decided for one model on one device (see the module docstring).

    ``limits`` are the device budgets times ``margin`` (floored): ``{"lut4", "mult18",
    "dp16kd"}``. ``problems`` is empty when the plan fits (:func:`check_fit`).
    """
    model: str
    board: object
    margin: float
    engines: Engines
    layers: tuple[LayerPlan, ...]
    storages: tuple[Storage, ...]
    arena_bytes: int
    peak_live_bytes: int
    peak_layer: str
    usage: tuple[Usage, ...]
    limits: Mapping[str, int]
    weights_bytes: int           # weights.bin size
    onchip_weight_bytes: int
    external_weight_bytes: int
    problems: tuple[FitProblem, ...]
    qg: ir.QGraph | None = field(default=None, repr=False)
    graph: ir.Graph | None = field(default=None, repr=False)
    input_view: View | None = None
    output_view: View | None = None

    # -- totals ----------------------------------------------------------------------------
    @property
    def cycles(self) -> int:
        """Estimated cycles per inference (sum of the layers)."""
        return sum(l.cycles for l in self.layers)

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def mac_units(self) -> int:
        return self.engines.mac_units

    @property
    def utilization(self) -> float:
        """MACs / (cycles * mac_units)."""
        return self.macs / (self.cycles * self.mac_units) if self.cycles else 0.0

    def total(self, resource: str) -> int:
        return sum(getattr(u, resource) for u in self.usage)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def external_layers(self) -> tuple[str, ...]:
        return tuple(l.name for l in self.layers if l.placement == "sdram")

    @property
    def external_bytes_per_inference(self) -> int:
        return sum(l.ext_bytes for l in self.layers)

    @property
    def external_bytes_per_cycle(self) -> float:
        return self.external_bytes_per_inference / self.cycles if self.cycles else 0.0

    def layer(self, name: str) -> LayerPlan:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def summary(self) -> dict:
        """JSON-ready totals (the figures a report shows)."""
        return {
            "model": self.model, "board": self.board.name, "device": self.board.device,
            "margin": self.margin, "fits": self.fits,
            "engines": {k: getattr(self.engines, k) for k in (
                "sa_rows", "sa_cols", "sa_lanes", "dw_lanes", "dw_k", "rq_lanes", "vec_lanes",
                "line_width")},
            "cycles": self.cycles, "macs": self.macs, "mac_units": self.mac_units,
            "utilization": self.utilization,
            "resources": {r: {"used": self.total(r), "limit": self.limits[r],
                              "available": getattr(self.board.budget, r)}
                          for r in ("lut4", "mult18", "dp16kd")},
            "usage": [{"name": u.name, "lut4": u.lut4, "mult18": u.mult18, "dp16kd": u.dp16kd}
                      for u in self.usage],
            "arena_bytes": self.arena_bytes, "peak_live_bytes": self.peak_live_bytes,
            "peak_layer": self.peak_layer,
            "weights_bytes": self.weights_bytes,
            "onchip_weight_bytes": self.onchip_weight_bytes,
            "external_weight_bytes": self.external_weight_bytes,
            "external_layers": list(self.external_layers),
            "external_bytes_per_inference": self.external_bytes_per_inference,
            "external_bytes_per_cycle": self.external_bytes_per_cycle,
            "problems": [p.__dict__ for p in self.problems],
        }


# --- 1. classification ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Info:
    """Engine-independent facts of one node."""
    kind: str            # sa, im2col, fc, dw, maxpool, avgpool, gap, add, remap, copy
    macs: int = 0
    pixels: int = 0      # systolic: output pixels
    k: int = 0           # systolic: reduction per group; windows: kernel
    cout: int = 0
    groups: int = 1
    c: int = 0
    h: int = 0
    w: int = 0
    stride: int = 1
    top: int = 0
    left: int = 0
    oh: int = 0
    ow: int = 0
    elements: int = 0    # vector ops: output elements
    kern: int = 0        # im2col: kernel size


def _classify(g: ir.Graph, n: ir.Node) -> _Info:
    ins = g.in_shapes(n)
    out = g.shapes[n.output]
    macs = g.node_macs(n)
    if isinstance(n, ir.FullyConnected):
        return _Info("fc", macs, pixels=1, k=n.weight.shape[1], cout=n.out_features)
    if isinstance(n, ir.Conv2d):
        c, h, w = ins[0]
        kh, kw = n.kernel
        t, l, b, r = n.padding
        if n.is_depthwise:
            if (kh, kw) != (3, 3):
                raise MapperError(n.name, f"depthwise kernel {kh}x{kw}: the depthwise unit "
                                          f"runs 3x3 kernels")
            if n.stride[0] not in (1, 2) or n.stride[1] not in (1, 2):
                raise MapperError(n.name, f"depthwise stride {n.stride}: the depthwise unit runs "
                                          f"strides 1 and 2")
            if t + b > kh - 1 or l + r > kw - 1:
                raise MapperError(n.name, f"depthwise padding {n.padding} (top, left, bottom, right) "
                                          f"exceeds k-1 = {kh - 1} per axis; use 'same' padding")
            return _Info("dw", macs, k=kh, c=c, h=h, w=w, stride=n.stride[0], top=t, left=l,
                         oh=out[1], ow=out[2])
        if n.groups > 1 and (kh, kw) != (1, 1):
            raise MapperError(n.name, f"grouped {kh}x{kw} convolution with {n.groups} groups: "
                                      f"the systolic array runs grouped convs only as 1x1 and the "
                                      f"depthwise engine needs groups = in = out channels")
        pixels = out[1] * out[2]
        kind = "sa" if (kh, kw) == (1, 1) and not any(n.padding) else "im2col"
        if kind == "im2col" and n.stride[0] != n.stride[1]:
            raise MapperError(n.name, f"stride {n.stride}: the im2col feeder needs equal strides")
        return _Info(kind, macs, pixels=pixels, k=(c // n.groups) * kh * kw, cout=n.out_channels,
                     groups=n.groups, c=c, h=h, w=w, stride=n.stride[0], top=t, left=l,
                     oh=out[1], ow=out[2], kern=kh)
    if isinstance(n, (ir.MaxPool, ir.AvgPool)):
        c, h, w = ins[0]
        kh, kw = n.kernel
        if isinstance(n, ir.AvgPool) and (kh, kw) == (h, w) and not any(n.padding):
            return _Info("gap", c=c, h=h, w=w, oh=1, ow=1, elements=c)   # run as global
        if (kh, kw) != (3, 3) or n.stride[0] != n.stride[1] or n.stride[0] not in (1, 2):
            raise MapperError(n.name, f"pool window {kh}x{kw} stride {n.stride}: the pool unit "
                                      f"runs 3x3 windows with stride 1 or 2 (and global "
                                      f"average pools)")
        return _Info("maxpool" if isinstance(n, ir.MaxPool) else "avgpool", k=kh, c=c, h=h, w=w,
                     stride=n.stride[0], top=n.padding[0], left=n.padding[1], oh=out[1],
                     ow=out[2], elements=int(np.prod(out)))
    if isinstance(n, ir.GlobalAvgPool):
        c, h, w = ins[0]
        return _Info("gap", c=c, h=h, w=w, oh=1, ow=1, elements=c)
    if isinstance(n, ir.Add):
        return _Info("add", c=out[0], h=out[1], w=out[2], elements=int(np.prod(out)))
    if isinstance(n, (ir.Concat, ir.ChannelShuffle, ir.ChannelSlice)):
        return _Info("copy", c=out[0], h=out[1], w=out[2], elements=int(np.prod(out)))
    raise MapperError(n.name, f"op {n.op} has no engine")


# --- 2. aliases ---------------------------------------------------------------------------------

def _same_q(a: ir.QParams, b: ir.QParams) -> bool:
    return np.float32(a.scale) == np.float32(b.scale) and a.zero_point == b.zero_point


def _own_clamp(qg: ir.QGraph | None, n: ir.Node) -> tuple[int, int]:
    if qg is None:
        return (-128, 127)
    return ir.clamp_range(getattr(n, "act", ir.Act.NONE), qg.act_q[n.output])


def _aliases(g: ir.Graph, qg: ir.QGraph | None):
    """Decide which Concat / ChannelShuffle / ChannelSlice nodes are free address remaps.

    Returns ``(free, wmap, fold)``: the names of free nodes; for every tensor the write map
    ``(root, pre, shuffle_groups, shuffle_channels, post)``; for every tensor the clamp its
    writer must apply on top of its own (a folded Concat activation).
    """
    cons: dict[str, list[ir.Node]] = {t: [] for t in g.shapes}
    for n in g.nodes:
        for t in n.inputs:
            cons[t].append(n)
    prod = {n.output: n for n in g.nodes}
    wmap: dict[str, tuple] = {}
    fold: dict[str, tuple[int, int]] = {}
    free: set[str] = set()
    q = qg.act_q if qg is not None else None

    def remappable(t: str, n: ir.Node) -> bool:
        p = prod.get(t)
        return (p is not None and t not in g.outputs and len(cons[t]) == 1
                and list(n.inputs).count(t) == 1 and not isinstance(p, ir.ChannelSlice)
                and (q is None or _same_q(q[t], q[n.output])))

    for n in reversed(g.nodes):
        o = n.output
        wmap.setdefault(o, (o, 0, 0, 0, 0))
        fold.setdefault(o, (-128, 127))
        if isinstance(n, ir.Concat):
            lo, hi = _own_clamp(qg, n)
            lo, hi = max(lo, fold[o][0]), min(hi, fold[o][1])
            ok = all(remappable(t, n) for t in n.inputs)
            if ok:
                for t in n.inputs:
                    plo, phi = _own_clamp(qg, prod[t])
                    if max(plo, lo) > min(phi, hi):
                        ok = False
            if ok:
                root, pre, sg, sc, post = wmap[o]
                off = 0
                for t in n.inputs:
                    wmap[t] = (root, pre + off, sg, sc, post)
                    fold[t] = (lo, hi)
                    off += g.shapes[t][0]
                free.add(n.name)
        elif isinstance(n, ir.ChannelShuffle):
            t = n.inputs[0]
            root, pre, sg, sc, post = wmap[o]
            if remappable(t, n) and sg == 0:
                wmap[t] = (root, 0, n.groups, g.shapes[t][0], post + pre)
                fold[t] = fold[o]
                free.add(n.name)
        elif isinstance(n, ir.ChannelSlice):
            t = n.inputs[0]
            ok = (wmap[o] == (o, 0, 0, 0, 0) and o not in g.outputs and fold[o] == (-128, 127)
                  and (q is None or _same_q(q[t], q[o])))
            if ok:
                free.add(n.name)
    for t in g.inputs:
        wmap.setdefault(t, (t, 0, 0, 0, 0))
        fold.setdefault(t, (-128, 127))
    return free, wmap, fold


# --- 3. liveness and buffer plan -------------------------------------------------------------------

def _buffers(g: ir.Graph, free: set[str], wmap: dict):
    """Storages with their lifetimes, allocated in one arena.

    Returns ``(storages, views, places, arena, peak, peak_step)``."""
    nsteps = len(g.nodes)
    # read views: (root, channel offset) of every plainly readable tensor
    views: dict[str, tuple[str, int]] = {}
    for t in g.inputs:
        views[t] = (t, 0)
    for n in g.nodes:
        o = n.output
        if isinstance(n, ir.ChannelSlice) and n.name in free:
            root, off = views[n.inputs[0]]
            views[o] = (root, off + n.start)
        else:
            root, pre, sg, sc, post = wmap[o]
            if sg == 0:
                views[o] = (root, post + pre)
    # root storage of every tensor: where it is written (or, for a free slice, viewed)
    root_of = {t: t for t in g.inputs}
    for n in g.nodes:
        sliced = isinstance(n, ir.ChannelSlice) and n.name in free
        root_of[n.output] = views[n.output][0] if sliced else wmap[n.output][0]
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    for t in g.shapes:
        r = root_of[t]
        members.setdefault(r, []).append(t)
    for t in g.inputs:
        first[root_of[t]] = 0
    for i, n in enumerate(g.nodes):
        if n.name in free:
            continue
        r = root_of[n.output]
        first[r] = min(first.get(r, i), i)
        for t in n.inputs:
            rr = root_of[t]
            last[rr] = max(last.get(rr, i), i)
    for t in g.outputs:
        last[root_of[t]] = nsteps
    roots = [r for r in members if r in first]
    for r in roots:
        last.setdefault(r, first[r])
    size = {r: int(np.prod(g.shapes[r])) for r in roots}
    # allocate: each storage at the lowest aligned offset free over its whole lifetime, in
    # several orders (largest first, earliest first, longest-lived first); keep the best
    def place(order):
        addr: dict[str, int] = {}
        for r in order:
            busy = sorted((addr[o], addr[o] + size[o]) for o in addr
                          if not (last[o] < first[r] or last[r] < first[o]))
            a = 0
            for lo, hi in busy:
                if a + size[r] <= lo:
                    break
                a = max(a, -(-hi // ACT_ALIGN) * ACT_ALIGN)
            addr[r] = a
        return addr, max((addr[r] + size[r] for r in roots), default=0)

    orders = (sorted(roots, key=lambda r: (-size[r], first[r], r)),
              sorted(roots, key=lambda r: (first[r], -size[r], r)),
              sorted(roots, key=lambda r: (first[r] - last[r], -size[r], r)),
              sorted(roots, key=lambda r: (-size[r] * (last[r] - first[r] + 1), r)))
    addr, arena = min((place(o) for o in orders), key=lambda x: x[1])
    peak, peak_step = 0, 0
    for i in range(nsteps + 1):
        live = sum(size[r] for r in roots if first[r] <= i <= last[r])
        if live > peak:
            peak, peak_step = live, i
    storages = tuple(Storage(r, addr[r], size[r], g.shapes[r][0], g.shapes[r][1] * g.shapes[r][2],
                             first[r], last[r], tuple(members[r]))
                     for r in sorted(roots, key=lambda r: (addr[r], first[r])))
    return storages, views, addr, arena, peak, min(peak_step, nsteps - 1)


# --- 4. weights and engine cost ---------------------------------------------------------------------

def _weight_block_bytes(info: _Info, cols: int, dw_lanes: int) -> int:
    """Bytes of a layer's int8 weights in its engine's stream order (padded lanes)."""
    if info.kind in ("sa", "im2col", "fc"):
        cout_g = info.cout // info.groups
        return info.groups * -(-cout_g // cols) * info.k * cols
    if info.kind == "dw":
        return -(-info.c // dw_lanes) * info.k * info.k * dw_lanes
    return 0


def _param_block_bytes(info: _Info, n: ir.Node, needs_table) -> tuple[int, int]:
    """(channel-parameter bytes, op-constant bytes) of a layer in section B."""
    if info.kind in ("sa", "im2col", "fc", "dw"):
        o = info.cout if info.kind != "dw" else info.c
        return cost.CHANNEL_PARAM_BYTES * o, 0
    if info.kind == "gap":
        return cost.CHANNEL_PARAM_BYTES, 0
    if info.kind == "add":
        return 0, 32
    if info.kind == "avgpool":
        return 0, 16
    if info.kind in ("maxpool", "copy"):
        return 0, 256 * sum(needs_table)
    return 0, 0


def _layer_cycles(info: _Info, e: Engines) -> tuple[int, int, int]:
    """(cycles, ideal cycles, bands) of one layer on engines ``e`` (cost.py's formulas;
    nothing is tiled into bands, see the module docstring)."""
    kind = info.kind
    if kind in ("sa", "im2col", "fc"):
        cyc = cost.sa_layer_cycles(info.pixels, info.k, info.cout // info.groups, info.groups,
                                   e.sa_rows, e.sa_cols)
        return cyc, -(-info.macs // e.sa_macs), 1
    if kind == "gap":      # on the array: one group per channel, weights 1, one pixel
        cyc = cost.sa_layer_cycles(1, info.h * info.w, 1, info.c, e.sa_rows, e.sa_cols)
        return cyc, info.c * info.h * info.w, 1
    if kind == "dw":
        return (cost.dw_layer_cycles(info.c, info.h, info.w), -(-info.macs // e.dw_macs), 1)
    if kind == "maxpool":
        return (cost.maxpool_cycles(info.c, info.oh, info.ow, info.k, info.k),
                info.c * info.h * info.w, 1)
    if kind == "avgpool":
        ye, xe = cost.pool_extent(info.h, info.w, info.k, info.stride, info.top, info.left,
                                  info.oh, info.ow)
        return (cost.avgpool_cycles(info.c, ye, xe, info.oh, info.ow),
                info.c * info.h * info.w, 1)
    if kind == "add":
        return cost.add_cycles(info.c, info.h, info.w), info.c * info.h * info.w, 1
    if kind == "copy":
        beats = info.c * info.h * info.w
        return beats + cost.seq_cycles(info.c), beats, 1
    return 0, 0, 1                                                   # remap


# --- the model facts the search needs ----------------------------------------------------------------

@dataclass
class _Model:
    g: ir.Graph
    qg: ir.QGraph | None
    nodes: tuple
    infos: tuple
    free: set
    wmap: dict
    fold: dict
    storages: tuple
    views: dict
    addr: dict
    arena: int
    peak: int
    peak_step: int
    needs_table: dict


def _model(g: ir.Graph, qg: ir.QGraph | None) -> _Model:
    infos = tuple(_classify(g, n) for n in g.nodes)
    free, wmap, fold = _aliases(g, qg)
    infos = tuple(_Info("remap", c=i.c, h=i.h, w=i.w) if n.name in free else i
                  for n, i in zip(g.nodes, infos))
    storages, views, addr, arena, peak, pstep = _buffers(g, free, wmap)
    needs_table = {}
    for n, info in zip(g.nodes, infos):
        if info.kind in ("copy", "maxpool") and qg is not None:
            needs_table[n.name] = tuple(not _same_q(qg.act_q[t], qg.act_q[n.output])
                                        for t in n.inputs)
        else:
            needs_table[n.name] = tuple(False for _ in n.inputs)
    return _Model(g, qg, g.nodes, infos, free, wmap, fold, storages, views, addr, arena, peak,
                  pstep, needs_table)


def _out_channels(info: _Info) -> int:
    return info.cout if info.kind in ("sa", "im2col", "fc") else info.c


def _engines_limits(m: _Model, line_width: int) -> dict:
    """Structural sizes that depend on the model only. Raises :class:`MapperError` for a
    depthwise layer wider than ``line_width`` (the depthwise unit's line buffer)."""
    kinds = {i.kind for i in m.infos}
    arr = [i for i in m.infos if i.kind in ("sa", "im2col", "fc", "gap")]
    dws = [i for i in m.infos if i.kind == "dw"]
    pools = [i for i in m.infos if i.kind in ("maxpool", "avgpool")]
    avgs = [i for i in m.infos if i.kind == "avgpool"]
    im2 = [i for i in m.infos if i.kind == "im2col"]
    for n, i in zip(m.nodes, m.infos):
        if i.kind == "dw" and i.w > line_width:
            raise MapperError(n.name, f"depthwise input {i.w} pixels wide: the depthwise unit's "
                                      f"line buffer holds {line_width} (max_line_width)")
    run = [i for i in m.infos if i.kind != "remap"]
    return dict(
        sa_max_k=max([i.groups * i.k if i.kind != "gap" else i.c * i.h * i.w for i in arr],
                     default=1),
        dw_k=max([i.k for i in dws], default=0),
        line_width=max([i.w for i in dws], default=0),
        avg_width=max([cost.pool_extent(i.h, i.w, i.k, i.stride, i.top, i.left, i.oh,
                                        i.ow)[1] for i in avgs], default=0),
        im2col_k=max([i.kern for i in im2], default=0),
        im2col_row_bytes=max([i.w * i.c for i in im2], default=0),
        pool_k=max([i.k for i in pools], default=0),
        dw_max_channels=max([i.c for i in dws], default=0),
        rq_channels=max([_out_channels(i) for i in arr], default=1),
        max_channels=max([_out_channels(i) for i in run], default=1),
        has_add="add" in kinds, has_maxpool="maxpool" in kinds, has_avgpool="avgpool" in kinds,
        has_gap="gap" in kinds, has_copy="copy" in kinds, has_dw=bool(dws), has_im2col=bool(im2),
        has_remap=bool(kinds & {"remap"}),
    )


def _store_words(m: _Model, e: Engines, onchip: list[bool] | None) -> tuple[int, int, int]:
    """(weight-store words of ``8*C`` bits, depthwise tap bytes, channel-store words of 64
    bits) of the on-chip layers, as hwgen.hw.layer_io.weight_stores lays them out."""
    C = e.sa_cols
    wbytes = taps = chans = 0
    for i, info in enumerate(m.infos):
        if onchip is not None and not onchip[i]:
            continue
        nb = _weight_block_bytes(info, C, max(e.dw_lanes, 1))
        wbytes += -(-nb // C) * C
        if info.kind == "dw":
            taps += info.c * info.k * info.k
        b, q = _param_block_bytes(info, m.nodes[i], m.needs_table[m.nodes[i].name])
        chans += (-(-b // 16) * 16 + -(-q // 16) * 16) // cost.CHANNEL_PARAM_BYTES
    return wbytes // C, taps, chans


def _usage(m: _Model, e: Engines, s: dict, onchip: list[bool] | None) -> list[Usage]:
    """Resource estimate of every unit for engines ``e`` (weights of layers with
    ``onchip[i]`` False are external); see cost.py for the constants and their calibration."""
    R, C, P = e.sa_rows, e.sa_cols, e.dw_lanes
    u = [Usage("systolic", cost.LUT_SA_BASE + cost.LUT_PER_MAC * R * C, R * C,
               cost.sa_store_blocks(R, e.sa_max_k))]
    rq = s["rq_channels"]     # hw/requant.py: each lane has its own parameter memory
    u.append(Usage("requant", cost.LUT_PER_REQUANT_LANE * e.rq_lanes
                   + e.rq_lanes * cost.lutram_lut4(rq, cost.REQUANT_PARAM_BITS),
                   cost.REQUANT_DSP_PER_LANE * e.rq_lanes,
                   e.rq_lanes * cost.requant_param_blocks(rq)))
    u.append(Usage("feeders", cost.LUT_FEEDERS + cost.LUT_FEEDER_PER_COL * C, cost.DSP_ADDRESS,
                   cost.bram_blocks(cost.PLACE_BITS, s["max_channels"])))       # place table
    if P:
        nb = cost.DW_LINE_BUFFERS
        u.append(Usage("dwconv", cost.LUT_DW * P + nb * cost.lutram_lut4(e.line_width, 9),
                       cost.DW_DSP * P, nb * cost.dp16kd_for(e.line_width, 9)))
    if e.has_maxpool:
        u.append(Usage("maxpool", cost.LUT_MAXPOOL, 0, 0))
    if e.has_avgpool:
        u.append(Usage("avgpool", cost.LUT_AVGPOOL + cost.lutram_lut4(s["avg_width"], 16),
                       cost.AVGPOOL_DSP, cost.dp16kd_for(s["avg_width"], 16)))
    if e.has_add:
        u.append(Usage("add", cost.LUT_ADD, cost.ADD_DSP, 0))
    if e.has_copy:
        u.append(Usage("copy", cost.LUT_COPY, 0, 0))
    ndesc = len(m.nodes)
    u.append(Usage("sequencer", cost.LUT_SEQUENCER + cost.LUT_PER_DESCRIPTOR * ndesc
                   + (cost.LUT_REMAP if s["has_remap"] else 0), 0, 0))
    u.append(Usage("host link", cost.LUT_HOST, 0, cost.dp16kd_for(cost.HOST_BUFFER_BYTES, 8)))
    u.append(Usage("activations", 0, 0, cost.bram_blocks(8, m.arena)))
    words, taps, chans = _store_words(m, e, onchip)
    u.append(Usage("weights", 0, 0, cost.bram_blocks(8 * C, words)
                   + cost.bram_blocks(8, taps)))                  # weight store + tap store
    u.append(Usage("channel params", 0, 0, cost.bram_blocks(64, chans)))
    return u


def _limits(board, margin: float) -> dict:
    b = board.budget
    return {"lut4": int(b.lut4 * margin), "mult18": int(b.mult18 * margin),
            "dp16kd": int(b.dp16kd * margin)}


def _make_engines(s: dict, R, C, L=1, P=None, Q=None, V=1) -> Engines:
    """Engines of an R x C array; the rest as built (L = 1, P = 1 iff the model has depthwise
    layers, Q = C, V = 1) unless given."""
    P = (1 if s["has_dw"] else 0) if P is None else P
    Q = C if Q is None else Q
    return Engines(sa_rows=R, sa_cols=C, sa_lanes=L, sa_max_k=s["sa_max_k"], dw_lanes=P,
                   dw_k=s["dw_k"] if P else 0, rq_lanes=Q, vec_lanes=V, line_width=s["line_width"],
                   im2col_k=s["im2col_k"], im2col_row_bytes=s["im2col_row_bytes"],
                   pool_k=s["pool_k"], dw_max_groups=-(-s["dw_max_channels"] // P) if P else 0,
                   has_add=s["has_add"], has_maxpool=s["has_maxpool"],
                   has_avgpool=s["has_avgpool"], has_gap=s["has_gap"], has_copy=s["has_copy"])


def _candidates(s: dict):
    """(R, C, L, P, Q, V) of every configuration the accelerator can build: the array sides
    vary; L = 1, P = 1 iff depthwise layers exist, Q = C, V = 1."""
    P = 1 if s["has_dw"] else 0
    for R in SA_ROWS:
        for C in SA_COLS:
            yield R, C, SA_LANES[0], P, C, VEC_LANES[0]


def _dsp(s: dict, R, C, L, P, Q, V) -> int:
    """MULT18X18D of a configuration (the same count :func:`_usage` gives)."""
    d = R * C + cost.REQUANT_DSP_PER_LANE * Q + cost.DSP_ADDRESS + cost.DW_DSP * P
    if s["has_add"]:
        d += cost.ADD_DSP * V
    if s["has_avgpool"]:
        d += cost.AVGPOOL_DSP * V
    return d


def _search(m: _Model, s: dict, lim: dict, onchip_weights: bool):
    """Fastest engine configuration that fits ``lim`` (module docstring, step 4); None if
    nothing fits. With ``onchip_weights`` False the weights' block RAM is not counted."""
    sa_inf = [i for i in m.infos if i.kind in ("sa", "im2col", "fc", "gap")]
    other = sum(_layer_cycles(i, _make_engines(s, 1, 1))[0] for i in m.infos
                if i.kind not in ("sa", "im2col", "fc", "gap"))   # independent of R x C
    onchip = None if onchip_weights else [False] * len(m.infos)
    cands = []
    for R, C, L, P, Q, V in _candidates(s):
        if _dsp(s, R, C, L, P, Q, V) > lim["mult18"]:
            continue
        e = _make_engines(s, R, C, L, P, Q, V)
        cands.append((sum(_layer_cycles(i, e)[0] for i in sa_inf) + other, (R, C, L, P, Q, V)))
    # fastest first: the first configuration that fits sets the bar, then only the ones
    # within TIE of it compete on the fraction of the budget they use
    cands.sort(key=lambda c: c[0])
    best = []
    fastest = None
    for cyc, cfg in cands:
        if fastest is not None and cyc > fastest * TIE:
            break
        e = _make_engines(s, *cfg)
        u = _usage(m, e, s, onchip)
        tot = {r: sum(getattr(x, r) for x in u) for r in ("lut4", "mult18", "dp16kd")}
        if any(tot[r] > lim[r] for r in tot):
            continue
        fastest = cyc if fastest is None else fastest
        best.append((sum(tot[r] / max(1, lim[r]) for r in tot), cyc, e))
    if not best:
        return None
    return min(best, key=lambda b: (b[0], b[1]))[2]


# --- 5. placement and layer plans ----------------------------------------------------------------------

def _weight_addresses(m: _Model, e: Engines):
    """Byte addresses in weights.bin: section A (weights, C-byte aligned) then section B
    (biases / parameters, 16-byte aligned). Returns per-node dicts and the total size."""
    C = e.sa_cols
    a = WEIGHTS_SECTION_A
    wa = {}
    for n, info in zip(m.nodes, m.infos):
        nb = _weight_block_bytes(info, C, max(e.dw_lanes, 1))
        if nb:
            wa[n.name] = (a, nb)
            a += -(-nb // C) * C
    b = -(-a // 16) * 16
    pa = {}
    for n, info in zip(m.nodes, m.infos):
        bb, qb = _param_block_bytes(info, n, m.needs_table[n.name])
        pa[n.name] = (b, bb, b + -(-bb // 16) * 16, qb)
        b += -(-bb // 16) * 16 + -(-qb // 16) * 16
    return wa, pa, b


def _place_weights(m: _Model, e: Engines, s: dict, lim: dict) -> list[bool]:
    """On-chip flags per node: all weights when they fit, else the largest layers go
    external until the rest fits."""
    onchip = [True] * len(m.infos)
    order = sorted((i for i, inf in enumerate(m.infos)
                    if _weight_block_bytes(inf, e.sa_cols, max(e.dw_lanes, 1))),
                   key=lambda i: -_weight_block_bytes(m.infos[i], e.sa_cols, max(e.dw_lanes, 1)))
    for i in [None] + order:
        if i is not None:
            onchip[i] = False
        u = _usage(m, e, s, onchip)
        if sum(x.dp16kd for x in u) <= lim["dp16kd"]:
            return onchip
    return onchip


def _view(m: _Model, t: str) -> View:
    """Where tensor ``t`` is read: its storage's address plus its channel offset."""
    root, off = m.views[t]
    c, h, w = m.g.shapes[t]
    return View(t, m.addr[root] + off, m.g.shapes[root][0], c, h * w)


def _layers(m: _Model, e: Engines, onchip: list[bool], wa, pa) -> tuple[LayerPlan, ...]:
    g = m.g
    out = []
    pitch = {st.name: st.channels for st in m.storages}
    view = lambda t: _view(m, t)   # noqa: E731

    for i, (n, info) in enumerate(zip(m.nodes, m.infos)):
        cyc, ideal, bands = _layer_cycles(info, e)
        engine = {"sa": "systolic", "fc": "systolic", "im2col": "im2col+systolic",
                  "dw": "dwconv", "maxpool": "pool", "avgpool": "pool", "gap": "systolic",
                  "add": "add", "copy": "copy", "remap": "remap"}[info.kind]
        place = None
        if info.kind != "remap":
            root, pre, sg, sc, post = m.wmap[n.output]
            place = Place(n.output, root, m.addr[root], pitch[root], pre, sg, sc, post)
        lo, hi = _own_clamp(m.qg, n)
        flo, fhi = m.fold.get(n.output, (-128, 127))
        lo, hi = max(lo, flo), min(hi, fhi)
        inputs = tuple(view(t) for t in n.inputs) if info.kind != "remap" else ()
        kw = {}
        if n.name in wa:
            w_addr, w_bytes = wa[n.name]
            ch_addr, ch_bytes, const_addr, const_bytes = pa[n.name]
            ext = 0
            if not onchip[i]:
                tiles = -(-info.pixels // e.sa_rows) if info.kind in ("sa", "im2col", "fc") else 1
                ext = w_bytes * tiles * bands + ch_bytes + const_bytes
            kw = dict(w_addr=w_addr, w_bytes=w_bytes, ch_addr=ch_addr, ch_bytes=ch_bytes,
                      const_addr=const_addr, const_bytes=const_bytes,
                      placement="bram" if onchip[i] else "sdram", ext_bytes=ext)
        elif pa[n.name][1] or pa[n.name][3]:
            ch_addr, ch_bytes, const_addr, const_bytes = pa[n.name]
            kw = dict(ch_addr=ch_addr, ch_bytes=ch_bytes, const_addr=const_addr, const_bytes=const_bytes,
                      placement="bram")
        out.append(LayerPlan(
            index=i, name=n.name, op=n.op, kind=info.kind, engine=engine,
            in_shapes=tuple(g.in_shapes(n)), out_shape=g.shapes[n.output], macs=info.macs,
            cycles=cyc, ideal_cycles=ideal, bands=bands, inputs=inputs, output=place,
            lo=lo, hi=hi, **kw))
    return tuple(out)


def _kib(b: float) -> str:
    return f"{b / 1024:.0f} KiB" if b >= 10240 else f"{b / 1024:.1f} KiB"


def _problems(m: _Model, e: Engines, usage, lim, layers, board, margin) -> tuple[FitProblem, ...]:
    probs = []
    tot = {r: sum(getattr(u, r) for u in usage) for r in ("lut4", "mult18", "dp16kd")}
    ext = [l for l in layers if l.placement == "sdram"]
    if ext:
        need = sum(l.w_bytes + l.ch_bytes + l.const_bytes for l in layers if l.w_bytes)
        others = sum(u.dp16kd for u in usage if u.name not in ("weights", "channel params"))
        have = max(0, lim["dp16kd"] - others) * 2048
        big = max(ext, key=lambda l: l.w_bytes)
        probs.append(FitProblem(
            "block RAM (weights)", need, have, "bytes", big.name,
            f"the weights need {_kib(need)} of block RAM; the {board.device} has "
            f"{_kib(board.budget.bram_bytes)} (x{margin:g} margin = {_kib(lim['dp16kd'] * 2048)}), "
            f"of which activations and engine buffers take {_kib(others * 2048)}, leaving "
            f"{_kib(have)}: {len(ext)} layer(s) would stream from SDRAM "
            f"({', '.join(l.name for l in sorted(ext, key=lambda l: -l.w_bytes)[:4])}"
            f"{', ...' if len(ext) > 4 else ''}; largest '{big.name}' {_kib(big.w_bytes)}), "
            f"which the accelerator does not support yet"))
    if tot["dp16kd"] > lim["dp16kd"]:
        act = next(u for u in usage if u.name == "activations")
        probs.append(FitProblem(
            "block RAM (activations)", tot["dp16kd"] - sum(u.dp16kd for u in usage
                                                          if u.name in ("weights", "channel params")),
            lim["dp16kd"], "DP16KD", m.g.nodes[m.peak_step].name,
            f"activations need an arena of {_kib(m.arena)} ({act.dp16kd} DP16KD; peak live "
            f"{_kib(m.peak)} at layer '{m.g.nodes[m.peak_step].name}') plus engine buffers, "
            f"more than the {lim['dp16kd']} DP16KD ({_kib(lim['dp16kd'] * 2048)}) of the "
            f"{board.device} after the x{margin:g} margin, even with every weight in SDRAM"))
    for r, name in (("mult18", "MULT18X18D"), ("lut4", "LUT4")):
        if tot[r] > lim[r]:
            probs.append(FitProblem(name, tot[r], lim[r], name, None,
                                    f"the smallest engines need {tot[r]} {name}, the "
                                    f"{board.device} has {getattr(board.budget, r)} "
                                    f"(x{margin:g} margin = {lim[r]})"))
    return tuple(probs)


def plan(qg: ir.QGraph | ir.Graph, board, margin: float = 0.85, strict: bool = False,
         source: tuple[str, dict] | None = None, max_line_width: int = MAX_LINE_WIDTH) -> Plan:
    """Map a quantised graph onto ``board``.

    Parameters
    ----------
    qg: the quantised graph (a float :class:`ir.Graph` gives a sizing-only plan: no weight
        image, no quantisation-dependent decisions).
    board: a :class:`boards.Board` (its budget: LUT4, MULT18X18D, DP16KD).
    margin: fraction of each budget the plan may use (0 < margin <= 1).
    strict: raise :class:`MapperFitError` (:func:`check_fit`) when the plan does not fit.
    source: ``(zoo model name, options)`` the graph was built from, so that a fit error can
        suggest concrete smaller options.
    max_line_width: widest line buffer (pixels) the depthwise unit may have; a wider
        depthwise layer raises :class:`MapperError` (nothing is tiled into bands).

    Raises
    ------
    MapperError: a layer no engine can run (names the node).
    MapperFitError: with ``strict``, when the plan does not fit.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    if max_line_width < 8:
        raise ValueError(f"max_line_width must be at least 8 pixels, got {max_line_width}")
    g = qg.graph if isinstance(qg, ir.QGraph) else qg
    q = qg if isinstance(qg, ir.QGraph) else None
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise MapperError("<graph>", f"the accelerator takes one input and one output, the graph "
                                     f"has {len(g.inputs)} and {len(g.outputs)}")
    m = _model(g, q)
    s = _engines_limits(m, max_line_width)
    lim = _limits(board, margin)
    e = _search(m, s, lim, True) if _min_fits(m, s, lim, True) else None
    if e is None:
        e = _search(m, s, lim, False)
    if e is None:   # nothing fits even with external weights: the smallest engines
        e = _make_engines(s, 1, 1)
        onchip = [False] * len(m.infos)
    else:
        onchip = _place_weights(m, e, s, lim)
    usage = tuple(_usage(m, e, s, onchip))
    wa, pa, wsize = _weight_addresses(m, e)
    layers = _layers(m, e, onchip, wa, pa)
    probs = _problems(m, e, usage, lim, layers, board, margin)
    onb = sum(l.w_bytes + l.ch_bytes + l.const_bytes for l in layers if l.placement == "bram")
    exb = sum(l.w_bytes + l.ch_bytes + l.const_bytes for l in layers if l.placement == "sdram")
    p = Plan(model=g.name, board=board, margin=margin, engines=e, layers=layers,
             storages=m.storages, arena_bytes=m.arena, peak_live_bytes=m.peak,
             peak_layer=g.nodes[m.peak_step].name, usage=usage, limits=lim,
             weights_bytes=wsize, onchip_weight_bytes=onb, external_weight_bytes=exb,
             problems=probs, qg=q, graph=g, input_view=_view(m, g.input_name),
             output_view=_view(m, g.outputs[0]))
    if strict:
        check_fit(p, source)
    return p


# --- fit check and suggestions ---------------------------------------------------------------------------

def _min_fits(m: _Model, s: dict, lim: dict, onchip_weights: bool) -> bool:
    """Whether the smallest engines fit (a lower bound on every configuration's needs)."""
    e = _make_engines(s, 1, 1)
    u = _usage(m, e, s, None if onchip_weights else [False] * len(m.infos))
    return all(sum(getattr(x, r) for x in u) <= lim[r] for r in lim)


def quick_fit(g: ir.Graph, board, margin: float = 0.85) -> bool:
    """Whether ``g`` fits ``board`` with the smallest engines (weights, activations and the
    minimum engine buffers): the cheap test behind the suggestions."""
    m = _model(g, None)
    return _min_fits(m, _engines_limits(m, MAX_LINE_WIDTH), _limits(board, margin), True)


#: Option values tried by :func:`_suggest`, per zoo model, each list from large to small.
_SHRINK = {
    "mobilenet": {"alpha": [0.75, 0.5, 0.25, 0.125], "resolution": [192, 160, 128, 96, 64],
                  "classes": [100, 10, 2]},
    "squeezenet": {"resolution": [128, 96, 64, 48], "classes": [100, 10, 2]},
    "shufflenet": {"scale": [1.0, 0.5, 0.25], "resolution": [160, 128, 96, 64],
                   "classes": [100, 10, 2]},
    "xception": {"width": [0.5, 0.25, 0.125], "middle_repeats": [4, 2, 1],
                 "resolution": [160, 128, 96, 71], "classes": [100, 10, 2]},
}


def _flag(k: str, v) -> str:
    return f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"


def _suggest(source: tuple[str, dict] | None, g: ir.Graph, board, margin: float) -> list[str]:
    """Concrete ways to fit: smaller zoo options (re-planned), and larger devices."""
    out = []
    if source is not None:
        from ..models import build, options
        name, opts = source
        # shapes decide the fit: build with random weights (a weights file has other shapes)
        opts = {k: v for k, v in opts.items() if v is not None and k not in ("weights", "seed")}
        full = {**options(name), **opts}
        if name == "squeezenet" and full.get("resolution") is None:
            full["resolution"] = 224
        shrink = {k: [v for v in vs if full.get(k) is not None and v < full[k]]
                  for k, vs in _SHRINK.get(name, {}).items()}
        found: list[dict] = []

        def fits(change):
            try:
                gg = build(name, **{**opts, **change})
            except ValueError:
                return False
            return quick_fit(gg, board, margin)

        for k, vs in shrink.items():                        # one option: the largest value
            for v in vs:
                if fits({k: v}):
                    found.append({k: v})
                    break
        if len(found) < 2:
            keys = list(shrink)
            for a in range(len(keys)):
                for b in range(a + 1, len(keys)):
                    for va in shrink[keys[a]]:
                        if any(set(f) <= {keys[a], keys[b]} and f.get(keys[a], va) >= va
                                   for f in found):
                            continue          # a single change with a larger value fits
                        hit = next((vb for vb in shrink[keys[b]] if fits({keys[a]: va, keys[b]: vb})),
                                   None)
                        if hit is not None:
                            found.append({keys[a]: va, keys[b]: hit})
                            break
                    if len(found) >= 3:
                        break
                if len(found) >= 3:
                    break
        for ch in found[:3]:
            out.append(" ".join(_flag(k, v) for k, v in ch.items()))
    from boards import BOARDS
    bigger = [b for b in BOARDS.values() if b.family == board.family
              and b.budget.dp16kd > board.budget.dp16kd and quick_fit(g, b, margin)]
    if bigger:
        out.append(f"a larger device: --device {min(bigger, key=lambda b: b.budget.dp16kd).device}")
    return out


def check_fit(p: Plan, source: tuple[str, dict] | None = None) -> None:
    """Raise :class:`MapperFitError` if ``p`` does not fit its device.

    The message names the overflowing resource and layer, the amount needed and available
    (after the margin), and what would fit: with ``source`` (the zoo model and options the
    graph came from) concrete smaller options checked by re-planning, and larger devices.
    """
    if not p.problems:
        return
    g = p.graph
    sugg = _suggest(source, g, p.board, p.margin) if g is not None else []
    lines = [f"{p.model} does not fit the {p.board.family.upper()} {p.board.device} "
             f"({p.board.part}) with the engines it needs:"]
    for pr in p.problems:
        lines.append(f"  - {pr.resource}" + (f" at layer '{pr.layer}'" if pr.layer else "")
                     + f": {pr.detail}")
        if pr.unit in ("bytes",):
            lines[-1] += f" (short by {_kib(pr.need - pr.have)})"
        else:
            lines[-1] += f" (short by {pr.need - pr.have} {pr.unit})"
    if sugg:
        lines.append("  What would fit: " + "; or ".join(sugg) + ".")
    else:
        wt = sum(l.w_bytes + l.ch_bytes + l.const_bytes for l in p.layers)
        from boards import BOARDS
        top = max((b for b in BOARDS.values() if b.family == p.board.family),
                  key=lambda b: b.budget.dp16kd)
        lines.append(f"  What would fit: no {p.board.family.upper()} device holds this model "
                     f"without SDRAM weight streaming (a later hwgen version): its weights and "
                     f"parameters take {_kib(wt)} and the largest device, the {top.device}, has "
                     f"{_kib(int(top.budget.dp16kd * p.margin) * 2048)} of block RAM after the "
                     f"x{p.margin:g} margin, part of which the activations need "
                     f"({_kib(p.arena_bytes)}); "
                     + ("no smaller option of this zoo model fits either."
                        if source is not None else
                        "use fewer classes, a smaller width multiplier or a lower resolution."))
    raise MapperFitError("\n".join(lines), p.problems, tuple(sugg))
