"""Pointwise / group-conv / im2col-conv / fully-connected MAC array (R x C int8 MACs).

Dataflow: output-stationary outer product
-----------------------------------------
The array holds an ``R x C`` block of int32 accumulators: R output pixels (rows) times C
output channels (columns). Every cycle one *beat* enters: R activations ``x[p0 + r, j]`` (the
same reduction index ``j`` of R pixels) and C weights ``w[o0 + c, j]``; every PE does
``acc[r][c] += (x[r] - x_zp) * w[c]`` (a tile's first beat starts from its bias). After the
``K`` beats of a tile (K = reduction length per group: ``Cin/groups * kh * kw``) the R x C
sums are complete, are copied to a shadow register bank in the same cycle and drained (one
pixel row of C int32 per cycle) while the accumulators already run the next tile. Why this
dataflow:

* MobileNet 0.25 pointwise layers have 8..256 channels and 48x48..3x3 pixels; their
  reduction (Cin) is short, so a weight-stationary array would reload its R*C weights every
  few pixels. Output-stationary needs no partial-sum buffer at all (the whole reduction runs
  in place), and each weight beat is used by R pixels, each activation by C channels.
* The two overheads are hidden: the drain of tile ``t`` (R cycles) overlaps the K beats of
  tile ``t + 1`` (no stall when ``K >= max(R + 7, 8)``), and the activations of the next
  pixel tile are loaded into the other half of a double-buffered activation store while the
  current one is reused for every output-channel tile and group.
* Group conv (ShuffleNet g = 2, 3, 4, 8, and groups that do not divide into lanes) is block
  tiling: each group is an independent ``pixels x K`` by ``K x Cout/g`` matmul reading its own
  slice ``[g*K, (g+1)*K)`` of the pixel's activation vector. K x K standard convs use the same
  array on the patch vectors of :class:`hwgen.hw.im2col.Im2col`; FullyConnected is one pixel
  whose patch vector is the flattened (C, H, W) input.
* Activations and weights are broadcast along rows / columns (fanout C and R, one register
  stage each) instead of being skewed through neighbour registers: same MAC count, no
  fill/drain skew, and the array is simple to stall.

Interfaces (the mapper lays out buffers to match)
-------------------------------------------------
Loop order of a layer (``n_pt = ceil(pixels / R)``, ``otiles = ceil(Cout/groups / C)``)::

    for pt in range(n_pt):                       # pixel tile: pixels [pt*R, pt*R + nrows)
        a_stream: for each of its nrows pixels: the pixel's patch vector (length groups*K,
                  group-major, then (ky, kx, ci)), as ceil(groups*K / L) beats of L bytes
        for g in range(groups):
            for ot in range(otiles):             # channels g*Cout/g + ot*C + c
                w_stream: K beats of C int8 weights  w[o, g, k]   (0 for lanes past Cout/g)
                b_stream: 1 beat of C int32 biases (prefetched one tile ahead)
                o_stream: nrows beats of C int32 accumulators (rows in pixel order)

Lanes past ``Cout/groups`` in the last output tile of a group carry ``bias`` lanes only and
are ignored by the consumer. The weight stream is the single weight-fetch interface: it
replays the layer's weights for every pixel tile in the order above, so a block-RAM store
(an address counter) and an SDRAM streamer serve it alike. :func:`pack_activations`,
:func:`pack_weights`, :func:`pack_bias` and :func:`unpack_outputs` are these orders in NumPy.

Throughput and latency
----------------------
One beat (R*C MACs) per cycle while the current pixel tile is loaded and ``w_stream`` is
valid. Loading a pixel tile takes ``nrows * ceil(groups*K/L)`` cycles and overlaps the
previous tile's ``groups * otiles * K`` compute cycles, so the array is compute bound when
``otiles * L >= R`` (e.g. 64 -> 64 channels on 8 x 8 with L = 2). Latency from a tile's last
beat to its first output beat: 11 cycles, 12 with more than 4 columns (activation RAM: a
per-row address register, the RAM, its output register: 3, x - x_zp: 1, operand registers:
1, or 2 through a tree of copies with more than 4 columns, MULT18X18D: 3, accumulate: 1,
shadow register: 1, output register: 1). The output has no
backpressure: the consumer hands out credits (``o_allow``, :class:`hwgen.hw.credit.CreditFifo`)
and a row drains only with one, so no ready signal reaches the array's wide registers.
A layer's first beat waits one extra cycle (cfg sampling).
Measured (cocotb, no stalls, 1x1 conv 64 -> 64 on 8x8 pixels, whole layer incl. first load
and last drain): 4 x 4, L = 1: 98.4 % of peak; 8 x 8, L = 2: 93.8 %; 3 x 5, L = 1: 94.5 %.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .credit import CreditFifo
from .bram import kept_reg, kept_tree, kept_tree_latency, registered_write
from .dsp import Mult18, use_primitive_for

__all__ = ["SystolicParams", "SystolicLayer", "SystolicArray", "SystolicConv", "ByteRam",
           "pack_activations", "pack_weights", "pack_bias", "unpack_outputs", "output_order",
           "output_beats", "layer_for_conv", "layer_for_fc", "conv_patches_1x1"]

ACC = signed(32)


@dataclass(frozen=True)
class SystolicParams:
    """Structure of a :class:`SystolicArray`.

    Parameters
    ----------
    rows : int
        R, output pixels computed in parallel (1..64).
    cols : int
        C, output channels computed in parallel (1..64).
    in_lanes : int
        L, activation bytes per ``a_stream`` beat (1, 2, 4 or 8).
    max_k : int
        Longest per-pixel patch vector ``groups * K`` (activation store: ``2 * max_k`` bytes
        per row); e.g. 1024 for MobileNet's FC, 576 for a 3x3 conv on 64 channels.
    max_pixels : int
        Most output pixels in one layer.
    max_groups : int
        Most conv groups.
    max_otiles : int
        Most output-channel tiles per group (``ceil(Cout/groups / C)``).
    use_primitive : bool or None
        Passed to :class:`hwgen.hw.dsp.Mult18` (None: ECP5 primitive iff the platform is ECP5).
    """
    rows: int = 8
    cols: int = 8
    in_lanes: int = 1
    max_k: int = 1024
    max_pixels: int = 65535
    max_groups: int = 8
    max_otiles: int = 256
    use_primitive: bool | None = None
    _inject_bug: bool = False

    def __post_init__(self):
        for name, lo, hi in (("rows", 1, 64), ("cols", 1, 64), ("max_k", 1, 1 << 16),
                             ("max_pixels", 1, 1 << 24), ("max_groups", 1, 1024),
                             ("max_otiles", 1, 1 << 16)):
            v = getattr(self, name)
            if not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"SystolicParams.{name} must be an int in {lo}..{hi}, got {v!r}")
        if self.in_lanes not in (1, 2, 4, 8):
            raise ValueError(f"SystolicParams.in_lanes must be 1, 2, 4 or 8, got {self.in_lanes!r}")
        if self.use_primitive not in (None, True, False):
            raise ValueError(f"SystolicParams.use_primitive must be None/True/False, "
                             f"got {self.use_primitive!r}")

    @property
    def words(self) -> int:
        """Activation-store words per bank (one bank per pixel tile, two banks)."""
        return -(-self.max_k // self.in_lanes)

    @property
    def peak_macs(self) -> int:
        return self.rows * self.cols

    @property
    def config_layout(self) -> data.StructLayout:
        return data.StructLayout({
            "tiles_m1": unsigned(ceil_log2(self.max_pixels + 1)),
            "last_rows_m1": unsigned(max(1, ceil_log2(self.rows))),
            "k": unsigned(ceil_log2(self.max_k + 1)),
            "groups": unsigned(ceil_log2(self.max_groups + 1)),
            "otiles": unsigned(ceil_log2(self.max_otiles + 1)),
            "beats": unsigned(ceil_log2(self.words + 1)),
            "cout_g": unsigned(self.ch_bits),
            "x_zp": signed(8),
        })

    @property
    def ch_bits(self) -> int:
        return ceil_log2(self.max_groups * self.max_otiles * self.cols + 1)

    @property
    def out_layout(self) -> data.StructLayout:
        """``o_stream`` payload: C accumulators, the output channel of lane 0 and the pixel."""
        return data.StructLayout({
            "acc": data.ArrayLayout(ACC, self.cols),
            "ch": unsigned(self.ch_bits),
            "pix": unsigned(ceil_log2(self.max_pixels + 1)),
        })


@dataclass(frozen=True)
class SystolicLayer:
    """One layer as the array sees it: ``pixels`` output pixels, each a dot product of a
    ``groups * k`` patch vector; ``cout`` output channels in ``groups`` groups."""
    pixels: int
    k: int
    cout: int
    groups: int = 1
    x_zp: int = 0

    def __post_init__(self):
        if min(self.pixels, self.k, self.cout, self.groups) < 1:
            raise ValueError(f"SystolicLayer sizes must be positive: {self}")
        if self.cout % self.groups:
            raise ValueError(f"SystolicLayer: cout {self.cout} is not a multiple of groups "
                             f"{self.groups}")
        if not -128 <= self.x_zp <= 127:
            raise ValueError(f"SystolicLayer: x_zp {self.x_zp} outside int8")

    @property
    def cout_g(self) -> int:
        return self.cout // self.groups

    def otiles(self, p: SystolicParams) -> int:
        return -(-self.cout_g // p.cols)

    def beats(self, p: SystolicParams) -> int:
        return -(-(self.groups * self.k) // p.in_lanes)

    def tiles(self, p: SystolicParams) -> int:
        return -(-self.pixels // p.rows)

    @property
    def macs(self) -> int:
        return self.pixels * self.cout * self.k

    def compute_cycles(self, p: SystolicParams) -> int:
        """Cycles with a beat in the array (the lower bound of the layer's run time)."""
        return self.tiles(p) * self.groups * self.otiles(p) * self.k

    def check(self, p: SystolicParams) -> None:
        """Raise ValueError naming the limit when the layer does not fit ``p``."""
        lim = [("pixels", self.pixels, p.max_pixels), ("groups*k", self.groups * self.k, p.max_k),
               ("groups", self.groups, p.max_groups), ("otiles", self.otiles(p), p.max_otiles)]
        for name, v, hi in lim:
            if v > hi:
                raise ValueError(f"layer {name} = {v} exceeds the systolic array limit {hi}; "
                                 f"raise SystolicParams.max_{name.split('*')[-1]}")

    def config(self, p: SystolicParams) -> dict:
        """Values of :attr:`SystolicParams.config_layout` for this layer."""
        self.check(p)
        tiles = self.tiles(p)
        return {"tiles_m1": tiles - 1,
                "last_rows_m1": self.pixels - (tiles - 1) * p.rows - 1,
                "k": self.k, "groups": self.groups,
                "otiles": self.otiles(p), "beats": self.beats(p), "cout_g": self.cout_g,
                "x_zp": self.x_zp}


def layer_for_conv(in_shape, weight_shape, stride=1, padding=0, groups: int = 1,
                   x_zp: int = 0) -> SystolicLayer:
    """The :class:`SystolicLayer` of a (group / K x K) conv on a (C, H, W) input."""
    from ..ir import pool_out_size
    from ..golden.ops import pads4, pair
    c, h, w = in_shape
    o, cg, kh, kw = weight_shape
    sh, sw = pair(stride)
    t, l, b, r = pads4(padding)
    oh, ow = pool_out_size(h, kh, sh, t, b), pool_out_size(w, kw, sw, l, r)
    if cg * groups != c:
        raise ValueError(f"weight {weight_shape} does not fit {c} input channels in {groups} "
                         f"groups")
    if groups > 1 and (kh, kw) != (1, 1):
        raise ValueError("the systolic array runs grouped convs only as 1x1 (K x K group "
                         "convs are depthwise-engine work)")
    return SystolicLayer(pixels=oh * ow, k=cg * kh * kw, cout=o, groups=groups, x_zp=x_zp)


def layer_for_fc(features: int, out_features: int, x_zp: int = 0) -> SystolicLayer:
    """FullyConnected: one pixel whose patch vector is the flattened (C, H, W) input."""
    return SystolicLayer(pixels=1, k=features, cout=out_features, groups=1, x_zp=x_zp)


def conv_patches_1x1(x: np.ndarray) -> np.ndarray:
    """(C, H, W) int8 -> (H*W, C) patch vectors of a 1x1 conv (raster pixel order)."""
    c = x.shape[0]
    return np.ascontiguousarray(np.asarray(x).reshape(c, -1).T)


def pack_activations(p: SystolicParams, layer: SystolicLayer, patches: np.ndarray) -> np.ndarray:
    """(pixels, groups*k) int8 patch vectors -> (beats, L) ``a_stream`` payloads."""
    patches = np.asarray(patches)
    kt = layer.groups * layer.k
    if patches.shape != (layer.pixels, kt):
        raise ValueError(f"patches {patches.shape}, expected ({layer.pixels}, {kt})")
    nb = layer.beats(p)
    out = np.zeros((layer.pixels, nb * p.in_lanes), np.int8)
    out[:, :kt] = patches
    return out.reshape(-1, p.in_lanes)


def _weight_blocks(p, layer, wmat):
    """(cout, k) -> (groups, otiles, k, C) with zero lanes past cout_g."""
    og, ot = layer.cout_g, layer.otiles(p)
    blk = np.zeros((layer.groups, ot * p.cols, layer.k), wmat.dtype)
    blk[:, :og] = wmat.reshape(layer.groups, og, layer.k)
    return blk.reshape(layer.groups, ot, p.cols, layer.k).transpose(0, 1, 3, 2)


def pack_weights(p: SystolicParams, layer: SystolicLayer, w: np.ndarray) -> np.ndarray:
    """Conv weight (O, I/g, kh, kw) or FC weight (O, F) int8 -> (beats, C) ``w_stream``
    payloads for the whole layer (replayed once per pixel tile)."""
    w = np.asarray(w)
    wmat = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1) if w.ndim == 4 else w
    if wmat.shape != (layer.cout, layer.k):
        raise ValueError(f"weight {w.shape} does not give ({layer.cout}, {layer.k})")
    one = _weight_blocks(p, layer, wmat).reshape(-1, p.cols)
    return np.tile(one, (layer.tiles(p), 1))


def pack_bias(p: SystolicParams, layer: SystolicLayer, bias: np.ndarray) -> np.ndarray:
    """(O,) int32 -> (beats, C) ``b_stream`` payloads: one per (pixel tile, group, otile)."""
    og, ot = layer.cout_g, layer.otiles(p)
    blk = np.zeros((layer.groups, ot * p.cols), np.int64)
    blk[:, :og] = np.asarray(bias, np.int64).reshape(layer.groups, og)
    return np.tile(blk.reshape(-1, p.cols), (layer.tiles(p), 1))


def output_beats(p: SystolicParams, layer: SystolicLayer) -> int:
    return layer.pixels * layer.groups * layer.otiles(p)


def output_order(p: SystolicParams, layer: SystolicLayer) -> np.ndarray:
    """(beats, 2) int: the ``(ch, pix)`` of every ``o_stream`` beat of the layer, in order."""
    og, ot = layer.cout_g, layer.otiles(p)
    order = []
    for pt in range(layer.tiles(p)):
        p0 = pt * p.rows
        for g in range(layer.groups):
            for t in range(ot):
                order += [(g * og + t * p.cols, p0 + r)
                          for r in range(min(p.rows, layer.pixels - p0))]
    return np.array(order, np.int64).reshape(-1, 2)


def unpack_outputs(p: SystolicParams, layer: SystolicLayer, beats: np.ndarray) -> np.ndarray:
    """(beats, C) int32 ``o_stream`` payloads -> (cout, pixels) int32 accumulators."""
    beats = np.asarray(beats)
    og, ot = layer.cout_g, layer.otiles(p)
    if beats.shape != (output_beats(p, layer), p.cols):
        raise ValueError(f"got {beats.shape} output beats, expected "
                         f"({output_beats(p, layer)}, {p.cols})")
    out = np.zeros((layer.cout, layer.pixels), np.int32)
    i = 0
    for pt in range(layer.tiles(p)):
        p0 = pt * p.rows
        nrows = min(p.rows, layer.pixels - p0)
        for g in range(layer.groups):
            for t in range(ot):
                n = min(p.cols, og - t * p.cols)
                c0 = g * og + t * p.cols
                out[c0:c0 + n, p0:p0 + nrows] = beats[i:i + nrows, :n].T
                i += nrows
    return out


class SystolicArray(wiring.Component):
    """R x C int8 x int8 -> int32 output-stationary MAC array (see the module docstring for
    the dataflow, the stream orders and the throughput).

    Parameters
    ----------
    params : SystolicParams

    Members
    -------
    cfg : In(params.config_layout)
        Layer shape (:meth:`SystolicLayer.config`); set it at least two cycles before the
        layer's first ``a_stream`` beat (values derived from it are registered) and hold it
        stable while ``busy`` or any stream of the layer is still moving.
    a_stream : In(stream.Signature(ArrayLayout(signed(8), L)))
        Patch vectors, pixel-major.
    w_stream : In(stream.Signature(ArrayLayout(signed(8), C)))
        Weights, one beat per reduction index per output tile.
    b_stream : In(stream.Signature(ArrayLayout(signed(32), C)))
        Biases, one beat per output tile (the accumulators start from it); taken when the
        tile's first beat reaches the accumulators, so it waits at the stream's head (valid,
        payload stable) while the tile's first beats are issued.
    o_stream : Out(stream.Signature(params.out_layout, always_ready=True))
        ``acc[c] = sum((x - x_zp) * w) + bias`` (int32 wrap-around) of output channel
        ``ch + c`` at output pixel ``pix``, one pixel row per beat; no ready: a beat is
        taken the cycle it is valid.
    o_allow : In(1)
        Credit from the consumer: a row leaves in cycle ``t + ALLOW_LAG`` only if
        ``o_allow`` was high in cycle ``t`` (:class:`hwgen.hw.credit.CreditFifo` with
        ``lag=ALLOW_LAG`` counting ``o_stream.valid``). ``o_allow`` is registered on
        entry (the FIFO may sit far away).
    busy : Out(1)
        A tile is loaded, in flight or draining.
    """

    ALLOW_LAG = 3      # o_allow to the row leaving (o_stream.valid), in cycles

    def __init__(self, params: SystolicParams):
        if not isinstance(params, SystolicParams):
            raise TypeError(f"expected SystolicParams, got {type(params).__name__}")
        self.params = params
        p = params
        super().__init__({
            "cfg": In(p.config_layout),
            "a_stream": In(stream.Signature(data.ArrayLayout(signed(8), p.in_lanes))),
            "w_stream": In(stream.Signature(data.ArrayLayout(signed(8), p.cols))),
            "b_stream": In(stream.Signature(data.ArrayLayout(ACC, p.cols))),
            "o_stream": Out(stream.Signature(p.out_layout, always_ready=True)),
            "o_allow": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        p = self.params
        R, C, L = p.rows, p.cols, p.in_lanes
        AW = max(1, ceil_log2(p.words))  # word address bits inside one bank
        lb = ceil_log2(L)
        cfg = self.cfg
        prim = use_primitive_for(platform, p.use_primitive)
        m = Module()

        # ---- activation store: R rows x L lanes of byte RAMs, 2 banks of 2**AW words, ------
        # ---- read latency 2 (DP16KD output register) -------------------------------------
        rams = []
        for r in range(R):
            row = []
            for l in range(L):
                ram = ByteRam(2 << AW, prim, write_reg=True)
                m.submodules[f"act_r{r}_l{l}"] = ram
                row.append(ram)
            rams.append(row)

        full = [Signal(name="full0"), Signal(name="full1")]

        # Control is built from count-down counters and registered per-tile facts, so no
        # subtract/compare chain sits in front of a wide enable. A layer's cfg is sampled
        # when its first a_stream beat is offered (loader) and when its first tile is loaded
        # (issue); each costs one cycle per layer.
        pw = ceil_log2(p.max_pixels + 1)

        # ---- loader: a_stream -> bank wr_bank ---------------------------------------------
        w_fresh = Signal(init=1)          # waiting for a layer's first beat
        beat_rem = Signal(range(p.words + 1))
        row_rem = Signal(range(R))
        w_trem = Signal(pw)               # pixel tiles left after the current one
        w_nrows = Signal(range(R + 1))    # rows of the tile being loaded
        w_last = Signal()                 # it is the layer's last tile
        wr_bank = Signal()
        wr_row = Signal(range(R))
        wr_beat = Signal(AW + 1)
        wr_base = Signal(pw)
        bank_nrows = [Signal(range(R + 1), name=f"bank{b}_nrows") for b in (0, 1)]
        bank_last = [Signal(name=f"bank{b}_last") for b in (0, 1)]
        bank_pix = [Signal(pw, name=f"bank{b}_pix") for b in (0, 1)]
        a = self.a_stream
        m.d.comb += a.ready.eq(~w_fresh & ~Mux(wr_bank, full[1], full[0]))
        a_fire = a.valid & a.ready
        # the write reaches the RAMs one cycle after the beat is taken, from registers of
        # each block's own (ByteRam write_reg; on ECP5 kept apart: the blocks may sit far
        # apart)
        for r in range(R):
            for l in range(L):
                ram = rams[r][l]
                m.d.comb += [ram.w_addr.eq(Cat(wr_beat[:AW], wr_bank)),
                             ram.w_data.eq(a.payload[l]),
                             ram.w_en.eq(a_fire & (wr_row == r))]

        # tile bookkeeping from the configuration's tile count and last-tile rows: no
        # subtraction or comparison of pixel counts at a tile boundary; "at zero" flags of
        # the beat and row counters are registers too
        beat_z, row_z = Signal(), Signal()
        # the configuration's derived values, registered (cfg is static while a layer runs
        # and settles before its first beat), and "the next tile is the last" as a flag
        lr_p1 = Signal.like(w_nrows)
        lr_z, tiles_z, tiles_1, beats_z = Signal(), Signal(), Signal(), Signal()
        beats_m1 = Signal.like(beat_rem)
        m.d.sync += [lr_p1.eq(cfg.last_rows_m1 + 1), lr_z.eq(cfg.last_rows_m1 == 0),
                     tiles_z.eq(cfg.tiles_m1 == 0), tiles_1.eq(cfg.tiles_m1 == 1),
                     beats_m1.eq(cfg.beats - 1), beats_z.eq(cfg.beats == 1)]
        w_nl = Signal()                   # w_trem == 1
        with m.If(w_fresh & a.valid):
            last0 = tiles_z
            m.d.sync += [w_fresh.eq(0), w_trem.eq(cfg.tiles_m1), w_last.eq(last0),
                         w_nl.eq(tiles_1),
                         w_nrows.eq(Mux(last0, lr_p1, R)),
                         row_rem.eq(Mux(last0, cfg.last_rows_m1, R - 1)),
                         row_z.eq(Mux(last0, lr_z, R == 1)),
                         beat_rem.eq(beats_m1), beat_z.eq(beats_z),
                         wr_row.eq(0), wr_beat.eq(0), wr_base.eq(0)]
        tile_loaded = Signal()
        with m.If(a_fire):
            with m.If(beat_z):
                m.d.sync += [beat_rem.eq(beats_m1), beat_z.eq(beats_z), wr_beat.eq(0)]
                with m.If(row_z):
                    m.d.comb += tile_loaded.eq(1)
                    for b in (0, 1):
                        with m.If(wr_bank == b):
                            m.d.sync += [bank_nrows[b].eq(w_nrows), bank_last[b].eq(w_last),
                                         bank_pix[b].eq(wr_base)]
                    nlast = w_nl
                    m.d.sync += [wr_bank.eq(~wr_bank), wr_row.eq(0), wr_base.eq(wr_base + R),
                                 w_trem.eq(w_trem - 1), w_last.eq(nlast),
                                 w_nl.eq(w_trem == 2),
                                 w_nrows.eq(Mux(nlast, lr_p1, R)),
                                 row_rem.eq(Mux(nlast, cfg.last_rows_m1, R - 1)),
                                 row_z.eq(Mux(nlast, lr_z, R == 1))]
                    with m.If(w_last):
                        m.d.sync += w_fresh.eq(1)
                with m.Else():
                    m.d.sync += [row_rem.eq(row_rem - 1), row_z.eq(row_rem == 1),
                                 wr_row.eq(wr_row + 1)]
            with m.Else():
                m.d.sync += [beat_rem.eq(beat_rem - 1), beat_z.eq(beat_rem == 1),
                             wr_beat.eq(wr_beat + 1)]

        # ---- issue: bank rd_bank x w_stream -> beats ---------------------------------------
        r_fresh = Signal(init=1)          # next tile starts a layer: load counts from cfg
        rd_bank = Signal()
        k_rem = Signal(range(p.max_k + 1))
        ot_rem = Signal(range(p.max_otiles + 1))
        g_rem = Signal(range(p.max_groups + 1))
        k_first = Signal()
        jbase = Signal(range(p.max_k + 1))   # first patch index of the current group
        j = Signal(range(p.max_k + 1))       # jbase + beat index in the group
        pending = Signal()     # a tile's last beat issued, its drain not finished
        is_last = Signal()                # k_rem == 0, registered
        k1 = Signal()                     # cfg.k == 1, registered (cfg settles long before)
        m.d.sync += k1.eq(cfg.k == 1)
        ot_z, g_z = Signal(), Signal()    # ot_rem == 0, g_rem == 0, registered
        tile_end = is_last & ot_z & g_z
        have = Mux(rd_bank, full[1], full[0])
        w, bs = self.w_stream, self.b_stream
        # A tile's bias waits at the head of b_stream (valid and stable until taken): its
        # first beat issues only when the bias is there and no other first beat is still on
        # its way to the accumulators; b_stream is taken (ready) when that beat reaches them.
        # bias_r is a free-running copy of the payload (no enable on its C x 32 bits): the
        # payload is stable from the first beat's issue to the accumulators' use.
        bias_r = Signal(data.ArrayLayout(ACC, C))
        m.d.sync += bias_r.eq(bs.payload)
        bias_ok = bs.valid                # the next tile's bias is there
        bias_used = Signal()              # a first beat is in flight
        # have & ~r_fresh & ~(is_last & pending) & ~(k_first & bias_used) as a register,
        # set from the next-state values of its terms (below): ready is one gate from
        # flip-flops, and the counters' enables two
        rdy_base = Signal()
        m.d.comb += w.ready.eq(rdy_base & ~(k_first & ~bias_ok))
        issue = w.valid & w.ready
        # the read address reaches each row's RAMs through a register of that row's own
        # (kept apart on ECP5), so the RAM data arrive one stage later (stage s2x below)
        rd_addr = []
        for r in range(R):
            rd_addr.append(kept_reg(m, Cat((j >> lb)[:AW], rd_bank), f"rd_r{r}", prim))
        for r in range(R):
            for l in range(L):
                m.d.comb += rams[r][l].r_addr.eq(rd_addr[r])
        # j + 1 and jbase + 1 are registers of their own, so no adder sits behind the issue
        # decision (its flags set the selects of j's and jbase's multiplexers only)
        j_p1 = Signal(range(p.max_k + 1), init=1)
        jbase_p1 = Signal(range(p.max_k + 1), init=1)
        # (r_fresh, rd_bank, k_first, is_last, pending, bias_used and full take their next
        # values n_* below, which also set rdy_base)
        with m.If(r_fresh & have):
            m.d.sync += [k_rem.eq(cfg.k - 1), ot_rem.eq(cfg.otiles - 1),
                         g_rem.eq(cfg.groups - 1),
                         j.eq(0), jbase.eq(0), j_p1.eq(1), jbase_p1.eq(1),
                         ot_z.eq(cfg.otiles == 1), g_z.eq(cfg.groups == 1)]
        with m.If(issue):
            with m.If(is_last):
                m.d.sync += [k_rem.eq(cfg.k - 1), j.eq(jbase), j_p1.eq(jbase_p1)]
                with m.If(ot_z):
                    m.d.sync += [ot_rem.eq(cfg.otiles - 1), ot_z.eq(cfg.otiles == 1)]
                    with m.If(g_z):
                        m.d.sync += [g_rem.eq(cfg.groups - 1), g_z.eq(cfg.groups == 1),
                                     jbase.eq(0), j.eq(0), jbase_p1.eq(1), j_p1.eq(1)]
                    with m.Else():
                        m.d.sync += [g_rem.eq(g_rem - 1), g_z.eq(g_rem == 1),
                                     jbase.eq(j_p1), j.eq(j_p1),
                                     jbase_p1.eq(j_p1 + 1), j_p1.eq(j_p1 + 1)]
                with m.Else():
                    m.d.sync += [ot_rem.eq(ot_rem - 1), ot_z.eq(ot_rem == 1)]
            with m.Else():
                m.d.sync += [k_rem.eq(k_rem - 1), j.eq(j_p1), j_p1.eq(j_p1 + 1)]

        # a bank counts as full once its last write has landed (a cycle after the beat)
        tl_r, tl_bank = Signal(), Signal()
        m.d.sync += [tl_r.eq(tile_loaded), tl_bank.eq(wr_bank)]

        # ---- stages 1, 2: RAM read (output register); stage 3: x - x_zp -------------------
        flag_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1,
                                         "nrows": unsigned(ceil_log2(R + 1)),
                                         "ch": unsigned(p.ch_bits),
                                         "pix": unsigned(ceil_log2(p.max_pixels + 1))})
        s1 = Signal(flag_layout)
        s1_lane = Signal(max(lb, 1))
        s1_w = Signal(data.ArrayLayout(signed(8), C))
        s1_otz, s1_gz = Signal(), Signal()
        m.d.sync += [s1.valid.eq(issue), s1.first.eq(k_first), s1.last.eq(is_last),
                     s1_otz.eq(ot_z), s1_gz.eq(g_z),
                     s1.nrows.eq(Mux(rd_bank, bank_nrows[1], bank_nrows[0])),
                     s1.pix.eq(Mux(rd_bank, bank_pix[1], bank_pix[0])),
                     s1_lane.eq(j[:lb] if lb else 0), s1_w.eq(w.payload)]
        s2 = Signal(flag_layout)
        s2_lane = Signal(max(lb, 1))
        s2_w = Signal(data.ArrayLayout(signed(8), C))
        m.d.sync += [s2.eq(s1), s2_lane.eq(s1_lane), s2_w.eq(s1_w)]
        # the beat's first output channel, counted here from the registered flags of the
        # issued beats (not in the issue logic: no adder behind the issue decision)
        ch_base = Signal(p.ch_bits)    # first output channel of the current tile
        grp_base = Signal(p.ch_bits)   # first output channel of the current group
        m.d.sync += s2.ch.eq(ch_base)
        with m.If(s1.valid & s1.last):
            with m.If(s1_otz):
                with m.If(s1_gz):
                    m.d.sync += [ch_base.eq(0), grp_base.eq(0)]
                with m.Else():
                    m.d.sync += [ch_base.eq(grp_base + cfg.cout_g),
                                 grp_base.eq(grp_base + cfg.cout_g)]
            with m.Else():
                m.d.sync += ch_base.eq(ch_base + C)
        s2x = Signal(flag_layout)
        s2x_lane = Signal(max(lb, 1))
        s2x_w = Signal(data.ArrayLayout(signed(8), C))
        m.d.sync += [s2x.eq(s2), s2x_lane.eq(s2_lane), s2x_w.eq(s2_w)]
        s2, s2_lane, s2_w = s2x, s2x_lane, s2x_w
        s3 = Signal(flag_layout)
        s3_w = Signal(data.ArrayLayout(signed(8), C))
        m.d.sync += [s3.eq(s2), s3_w.eq(s2_w)]
        # per-row copies of the beat flags (distinct logic, so synthesis keeps them apart):
        # they fan out to one row of C accumulators each instead of all R*C
        row_flags = data.StructLayout({"valid": 1, "first": 1, "load": 1})
        s3_a = [Signal(signed(9), name=f"s3_a{r}") for r in range(R)]
        s3_f = [Signal(row_flags, name=f"s3_f{r}") for r in range(R)]
        for r in range(R):
            lanes = [rams[r][l].r_data for l in range(L)]
            sel = lanes[0]
            for l in range(1, L):
                sel = Mux(s2_lane == l, lanes[l], sel)
            zp = cfg.x_zp
            if p._inject_bug and r == R - 1:
                zp = 0   # deliberately broken: last row ignores the zero point
            live = s2.valid & (s2.nrows > r)
            m.d.sync += [s3_a[r].eq(Mux(live, sel - zp, 0)), s3_f[r].valid.eq(live),
                         s3_f[r].first.eq(s2.first & live), s3_f[r].load.eq(s2.last & live)]

        # ---- multipliers: Mult18, latency 3, each fed from operand registers of its own ----
        # (kept apart on ECP5: a row's or column's multipliers sit in DSP sites spread over
        # the die, a shared operand register would reach them all in one cycle). A row's
        # activation reaches its C multipliers through a tree of copies (four loads each:
        # TL stages); a column's weight reaches its R the same way: with TL = 2 a copy per
        # multiplier of the column's weight, then the multiplier's own copy (a chain the
        # placer can stretch towards each DSP site; one register per column for all R
        # was a 10 ns hop in a bad placement).
        TL = kept_tree_latency(C)
        assert TL in (1, 2)
        w_src = [[s3_w[c].as_unsigned() if TL == 1 else
                  kept_reg(m, s3_w[c].as_unsigned(), f"w_d_r{r}_c{c}", prim)
                  for c in range(C)] for r in range(R)]
        prods = [[None] * C for _ in range(R)]
        for r in range(R):
            a_ops = kept_tree(m, s3_a[r].as_unsigned(), C, f"a_r{r}_c", prim)
            for c in range(C):
                mul = Mult18(use_primitive=p.use_primitive)
                m.submodules[f"mul_r{r}_c{c}"] = mul
                w_op = kept_reg(m, w_src[r][c], f"w_r{r}_c{c}", prim)
                m.d.comb += [mul.a.eq(a_ops[c].as_signed()), mul.b.eq(w_op.as_signed())]
                prods[r][c] = mul.p[:17].as_signed()   # 9 x 8 bit product: 17 bits
        dly = s3
        for i in range(Mult18.LATENCY + TL):
            nxt = Signal(flag_layout, name=f"sm{i}")
            m.d.sync += nxt.eq(dly)
            dly = nxt
        # A row's "first" (it selects the bias for C x 32 accumulator bits) and "load" (the
        # shadow's load enable, C x 32 flip-flops) reach the accumulators as copies per
        # column half (16 loads each, kept apart on ECP5) through a tree of copies
        # (four loads each): FL stages, tapped that much earlier from the row's flag chain
        # (chain[k] is k cycles after s3; the products land in chain[LATENCY + TL]'s cycle)
        FL = kept_tree_latency(2 * C)
        row_dly, row_first, row_load = [], [], []
        for r in range(R):
            chain = [s3_f[r]]
            for i in range(Mult18.LATENCY + TL):
                nxt = Signal(row_flags, name=f"sm{i}_r{r}")
                m.d.sync += nxt.eq(chain[-1])
                chain.append(nxt)
            row_first.append(kept_tree(m, chain[Mult18.LATENCY + TL - FL].first, 2 * C,
                                       f"first_r{r}_", prim))
            # the shadow loads a cycle after the last beat's accumulation
            row_load.append(kept_tree(m, chain[Mult18.LATENCY + TL + 1 - FL].load, 2 * C,
                                      f"load_r{r}_", prim))
            row_dly.append(chain[-1])

        # ---- accumulate; on the last beat copy the sums to the shadow bank -----------------
        acc = [[Signal(ACC, name=f"acc_r{r}_c{c}") for c in range(C)] for r in range(R)]
        shadow = [[Signal(ACC, name=f"sh_r{r}_c{c}") for c in range(C)] for r in range(R)]
        # the shadow shift enable of each row, one register per (row, column half) (kept
        # apart on ECP5): 16 flip-flops per copy instead of the whole row's C x 32; computed
        # once per (row, group of four columns) from the group's own copies of o_allow (so
        # synthesis keeps the groups' logic apart), eight copies each
        NG = -(-C // 4)
        row_shift_d = [[Signal(name=f"row_shift_d{r}_{g}") for g in range(NG)] for r in range(R)]
        row_shift = []
        for r in range(R):
            row_shift.append(Cat(*[
                kept_reg(m, Cat(*[row_shift_d[r][g]] * (2 * min(4, C - 4 * g))),
                         f"row_shift{r}_{g}", prim) for g in range(NG)]))
        # the shadow takes the finished sums from the accumulators a cycle after the last
        # beat (acc then holds them, even when the next tile's first beat lands in that
        # cycle): no adder in front of the shadow registers
        halves = (slice(0, 16), slice(16, 32))
        for r in range(R):
            for c in range(C):
                s = Signal(ACC, name=f"sum_r{r}_c{c}")
                # invalid beats carry x = 0, so their product is 0: acc needs no enable;
                # a tile starts from its bias
                start = Cat(*[Mux(row_first[r][2 * c + h], bias_r[c][sl], acc[r][c][sl])
                              for h, sl in enumerate(halves)])
                m.d.comb += s.eq(start.as_signed() + prods[r][c])
                m.d.sync += acc[r][c].eq(s)
                nxt_row = shadow[r + 1][c] if r + 1 < R else Const(0, 32)
                for h, sl in enumerate(halves):
                    with m.If(row_load[r][2 * c + h]):
                        m.d.sync += shadow[r][c][sl].eq(acc[r][c][sl])
                    with m.Elif(row_shift[r][2 * c + h]):
                        m.d.sync += shadow[r][c][sl].eq(nxt_row[sl])

        # ---- drain: shadow row 0 -> o_stream ----------------------------------------------
        sh_ch = Signal(p.ch_bits)
        sh_pix = Signal(ceil_log2(p.max_pixels + 1))
        # no backpressure: a row leaves in a cycle when the consumer allowed it
        # ALLOW_LAG cycles before (o_allow, a credit: see hwgen.hw.credit); the output
        # register loads every cycle (no enable), o_stream.valid marks the cycles that
        # carry a row
        o = self.o_stream
        allow_in, allow_r = Signal(), Signal()     # o_allow one and two cycles late
        m.d.sync += [allow_in.eq(self.o_allow), allow_r.eq(allow_in)]
        o_valid, o_data, in_data = Signal(), Signal(p.out_layout), Signal(p.out_layout)
        m.d.comb += [o.valid.eq(o_valid), o.payload.eq(o_data)]
        dly_l = Signal(flag_layout)      # the flags of the stage the shadow loads in
        m.d.sync += dly_l.eq(dly)
        load = Signal()                  # dly_l.valid & dly_l.last, registered
        m.d.sync += load.eq(dly.valid & dly.last)
        # the rows left to drain (sh_rows) as a thermometer code, therm[r] = sh_rows > r, and
        # dly_l.nrows as one (tl): the per-row shift enables below are then a gate or two
        # from registers
        therm, tl = Signal(R + 1), Signal(R + 1)     # bit R stays 0
        m.d.sync += [tl[r].eq(dly.nrows > r) for r in range(R)]
        move = therm[0] & allow_r        # sh_rows != 0
        # the tile's first beat took bias_r: the bias leaves the stream a cycle later (a
        # registered ready), and only then may the next tile's first beat issue
        consumed = Signal()
        m.d.sync += consumed.eq(dly.valid & dly.first)
        m.d.comb += bs.ready.eq(consumed)
        with m.If(load):
            m.d.sync += [sh_ch.eq(dly_l.ch), sh_pix.eq(dly_l.pix), therm.eq(tl)]
        with m.Elif(move):
            m.d.sync += [sh_pix.eq(sh_pix + 1), therm.eq(therm[1:])]
        # the shadow shifts up one row per drained row: row 0 is always the next one (no
        # wide row multiplexer); row r shifts when `move & (sh_rows > r)`, computed one
        # cycle ahead (from allow_in and the next sh_rows) into a register per row: short,
        # local enable nets instead of one wide one
        # (sh_rows_n > r for the next sh_rows_n, from the thermometer codes: without a load
        # it is therm[r + 1] | therm[r] & ~allow_r, as therm[r] implies therm[0], so
        # Mux(move, therm[r + 1], therm[r]) in six inputs, one slice, not two LUT levels)
        for g in range(NG):
            allow_in_g = kept_reg(m, self.o_allow, f"allow_in_g{g}", prim)
            allow_r_g = kept_reg(m, allow_in_g, f"allow_r_g{g}", prim)
            m.d.comb += [row_shift_d[r][g].eq(allow_in_g & Mux(load, tl[r], therm[r + 1]
                                                               | (therm[r] & ~allow_r_g)))
                         for r in range(R)]
        m.d.comb += [in_data.acc[c].eq(shadow[0][c]) for c in range(C)]
        m.d.comb += [in_data.ch.eq(sh_ch), in_data.pix.eq(sh_pix)]
        m.d.sync += [o_valid.eq(move), o_data.eq(in_data)]

        # the next values of the issue's flags, and rdy_base (ready's register) from them
        # (with r_fresh & have no beat issues; consumed wins over a new first beat; the last
        # row leaving, move & ~therm[1], clears pending)
        fresh_go = r_fresh & have
        t_end = issue & tile_end
        n_bias_used = Mux(consumed, 0, Mux(issue & k_first, 1, bias_used))
        n_k_first = Mux(fresh_go, 1, Mux(issue, is_last, k_first))
        n_is_last = Mux(fresh_go | (issue & is_last), k1, Mux(issue, k_rem == 1, is_last))
        n_pending = Mux(move & ~therm[1], 0, Mux(issue & is_last, 1, pending))
        n_r_fresh = Mux(fresh_go, 0, Mux(t_end, Mux(rd_bank, bank_last[1], bank_last[0]),
                                         r_fresh))
        n_rd_bank = rd_bank ^ t_end
        n_full = [Mux(tl_r & (tl_bank == b), 1, Mux(t_end & (rd_bank == b), 0, full[b]))
                  for b in (0, 1)]
        n_have = Mux(n_rd_bank, n_full[1], n_full[0])
        m.d.sync += [bias_used.eq(n_bias_used), k_first.eq(n_k_first), is_last.eq(n_is_last),
                     pending.eq(n_pending), r_fresh.eq(n_r_fresh), rd_bank.eq(n_rd_bank),
                     full[0].eq(n_full[0]), full[1].eq(n_full[1])]
        m.d.sync += rdy_base.eq(n_have & ~n_r_fresh & ~(n_is_last & n_pending)
                                & ~(n_k_first & n_bias_used))

        m.d.comb += self.busy.eq(full[0] | full[1] | tl_r | pending | o_valid | (wr_row != 0)
                                 | (wr_beat != 0) | ~w_fresh)
        return m


class ByteRam(wiring.Component):
    """Simple dual-port int8 RAM, one write port, one read port with read latency 2
    (``r_en`` high: both read register stages advance; low: both hold).

    On ECP5 (``primitive``) one DP16KD per 2048 words in 9-bit mode with the B-port output
    register on (REGMODE_B = OUTREG): the block RAM's clock-to-out without it (5.8 ns in
    nextpnr's -6 model) alone would cap the array below 150 MHz. Elsewhere a behavioural
    ``Memory`` read port followed by one register, cycle-identical. ``write_reg``: the write
    port is registered (a write lands a cycle after ``w_en``), on ECP5 in registers of each
    block's own.
    """

    def __init__(self, depth: int, primitive: bool, write_reg: bool = False):
        self.depth, self.primitive, self.write_reg = depth, primitive, write_reg
        aw = ceil_log2(depth)
        super().__init__({"w_addr": In(aw), "w_data": In(signed(8)), "w_en": In(1),
                          "r_addr": In(aw), "r_en": In(1, init=1), "r_data": Out(signed(8))})

    def elaborate(self, platform):
        m = Module()
        if not self.primitive:
            mem = Memory(shape=signed(8), depth=self.depth, init=[])
            m.submodules.mem = mem
            wp, rp = mem.write_port(), mem.read_port()
            w_addr, w_data, w_en = self.w_addr, self.w_data, self.w_en
            if self.write_reg:
                w_addr, w_data, w_en = registered_write(m, w_addr, w_data, w_en)
            m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en),
                         rp.addr.eq(self.r_addr), rp.en.eq(self.r_en)]
            with m.If(self.r_en):
                m.d.sync += self.r_data.eq(rp.data)
            return m
        nblk = -(-self.depth // 2048)
        outs = []
        sel = Signal(range(max(nblk, 2)))
        aw = len(self.r_addr)
        if nblk > 1:
            sel2 = Signal.like(sel)
            with m.If(self.r_en):   # pipelined with the RAM's two read stages
                m.d.sync += [sel.eq(self.r_addr[11:]), sel2.eq(sel)]
            sel = sel2
        for b in range(nblk):
            do = Signal(18, name=f"do{b}")
            ports = {}
            w_addr, w_data = self.w_addr, self.w_data
            wen = self.w_en if nblk == 1 else self.w_en & (self.w_addr[11:] == b)
            if self.write_reg:      # the write reaches each block from registers of its own
                wq = kept_reg(m, Cat(w_addr[:min(aw, 11)], w_data, wen), f"wr{b}", True)
                w_addr, w_data, wen = wq, wq[min(aw, 11):-1], wq[-1]
            for i in range(14):
                ports[f"i_ADA{i}"] = w_addr[i - 3] if 3 <= i < 3 + min(aw, 11) else Const(0, 1)
                ports[f"i_ADB{i}"] = self.r_addr[i - 3] if 3 <= i < 3 + min(aw, 11) else Const(0, 1)
            for i in range(18):
                ports[f"i_DIA{i}"] = w_data[i] if i < 8 else Const(0, 1)
                ports[f"i_DIB{i}"] = Const(0, 1)
                ports[f"o_DOB{i}"] = do[i]
            for i in range(3):
                ports[f"i_CSA{i}"] = Const(0, 1)
                ports[f"i_CSB{i}"] = Const(0, 1)
            m.submodules[f"bram{b}"] = Instance(
                "DP16KD",
                p_DATA_WIDTH_A=9, p_DATA_WIDTH_B=9, p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000",
                p_CSDECODE_B="0b000", p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL",
                p_GSR="DISABLED",
                i_CLKA=ClockSignal("sync"), i_CLKB=ClockSignal("sync"),
                i_WEA=wen, i_CEA=Const(1, 1), i_OCEA=Const(1, 1), i_RSTA=Const(0, 1),
                i_WEB=Const(0, 1), i_CEB=self.r_en, i_OCEB=self.r_en, i_RSTB=Const(0, 1),
                **ports)
            outs.append(do[:8].as_signed())
        out = outs[0]
        for b in range(1, nblk):
            out = Mux(sel == b, outs[b], out)
        m.d.comb += self.r_data.eq(out)
        return m


class SystolicConv(wiring.Component):
    """:class:`SystolicArray` followed by a C-lane :class:`hwgen.hw.requant.Requantizer`:
    int8 in, int8 out, ``y = clamp(rne(f32(acc) * scale[ch]) + y_zp, lo, hi)`` exactly as
    :func:`hwgen.golden.ops.conv2d` / ``fully_connected``.

    Lane ``c`` of an output beat is channel ``ch + c`` of pixel ``pix`` (lanes past the
    group's ``Cout/groups`` are to be ignored, as for the array). Latency: the array's plus
    two input registers and ``Requantizer.LATENCY`` (19) cycles; throughput that of the
    array. A small FIFO carries ``(ch, pix)`` past the requantiser. DSPs: ``R*C + 4*C``.

    Parameters
    ----------
    params : SystolicParams
    channels : int
        Depth of the requantiser's per-channel scale memory (most output channels of a layer).

    Members
    -------
    cfg, a_stream, w_stream, b_stream, busy
        As :class:`SystolicArray`.
    zero_point, lo, hi : In(signed(8))
        Output zero point and clamp (:func:`hwgen.ir.clamp_range`).
    param : In(Requantizer param signature)
        Write port of the per-channel scale memory (:func:`hwgen.hw.requant.encode_scales`).
    o_stream : Out(stream.Signature(StructLayout{y: C x int8, ch, pix}))
    """

    #: Output FIFO entries: the requantiser's latency plus the credit loop, so a consumer
    #: taking a beat every cycle never starves the array.
    FIFO_DEPTH = 32

    def __init__(self, params: SystolicParams, channels: int):
        from .requant import Requantizer, RequantParams
        self.params = params
        self.array = SystolicArray(params)
        # lanes past a layer's last channel read the words after it (no clamp in front of
        # the parameter memory's address): cols - 1 spare words
        self.requant = Requantizer(RequantParams(lanes=params.cols,
                                                 channels=channels + params.cols - 1,
                                                 use_primitive=params.use_primitive))
        out = data.StructLayout({"y": data.ArrayLayout(signed(8), params.cols),
                                 "ch": unsigned(params.ch_bits),
                                 "pix": unsigned(ceil_log2(params.max_pixels + 1))})
        sig = dict(self.array.signature.members.items())
        del sig["o_stream"], sig["o_allow"]
        rq = self.requant.signature.members
        super().__init__({**sig, "zero_point": rq["zero_point"], "lo": rq["lo"], "hi": rq["hi"],
                          "param": rq["param"], "o_stream": Out(stream.Signature(out))})

    def elaborate(self, platform):
        from amaranth.lib.fifo import SyncFIFOBuffered
        from .requant import Requantizer
        p = self.params
        m = Module()
        m.submodules.array = sa = self.array
        m.submodules.requant = rq = self.requant
        for name in ("a_stream", "w_stream", "b_stream"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(sa, name))
        wiring.connect(m, wiring.flipped(self.param), rq.param)
        out = self.o_stream.payload.shape()
        # read through its output register and a skid buffer: the consumer's ready reaches
        # the skid buffer's flags, not the FIFO's output register (v56s2: its ~100-bit
        # enable behind level & ready, 9.9 ns), and the distributed RAM's read ends in that
        # register, not in the skid buffer's entries by the consumer (v58 seed 1: 11.9 ns)
        m.submodules.out = cf = CreditFifo(out, self.FIFO_DEPTH, lag=SystolicArray.ALLOW_LAG,
                                           skid=True, buffered=True)
        m.d.comb += [sa.cfg.eq(self.cfg), self.busy.eq(sa.busy | cf.busy),
                     rq.zero_point.eq(self.zero_point), rq.lo.eq(self.lo), rq.hi.eq(self.hi)]
        # array -> requantiser -> output FIFO with no backpressure anywhere on the way: the
        # requantiser runs free (ready tied high) and the array drains a row only with a
        # credit from the output FIFO (o_allow); (ch, pix) ride a small FIFO alongside
        meta = data.StructLayout({"ch": unsigned(p.ch_bits),
                                  "pix": unsigned(ceil_log2(p.max_pixels + 1))})
        m.submodules.meta = mfifo = SyncFIFOBuffered(width=meta.size,
                                                     depth=Requantizer.LATENCY + 6)
        src = sa.o_stream
        m.d.comb += [sa.o_allow.eq(cf.allow), cf.issue.eq(src.valid),
                     mfifo.w_en.eq(src.valid), mfifo.w_data.eq(Cat(src.payload.ch, src.payload.pix))]
        # two register stages into the requantiser: the beat's channel is copied once per
        # lane (kept apart on ECP5: each lane's parameter memory is a block RAM of its own,
        # anywhere on the die), then each lane's parameter address ch + c (lanes past the
        # layer's channels read words past the last channel, the memory is deep enough, so
        # no clamp); the accumulators and valid follow through two plain registers
        rq_in = Signal.like(rq.i_stream.payload)
        acc_a = Signal.like(src.payload.acc)
        v_a, rq_v = Signal(), Signal()
        m.d.sync += [v_a.eq(src.valid), rq_v.eq(v_a), acc_a.eq(src.payload.acc)]
        for c in range(p.cols):
            ch_c = kept_reg(m, src.payload.ch, f"rq_ch{c}",
                            use_primitive_for(platform, p.use_primitive))
            m.d.sync += [rq_in.acc[c].eq(acc_a[c]), rq_in.ch[c].eq(ch_c + c)]
        m.d.comb += [rq.i_stream.valid.eq(rq_v), rq.i_stream.payload.eq(rq_in)]
        md = Signal(meta)
        y = Signal(out)
        m.d.comb += [rq.o_stream.ready.eq(1), md.eq(mfifo.r_data),
                     mfifo.r_en.eq(rq.o_stream.valid),
                     y.y.eq(rq.o_stream.payload), y.ch.eq(md.ch), y.pix.eq(md.pix),
                     cf.w_en.eq(rq.o_stream.valid), cf.w_data.eq(y)]
        wiring.connect(m, cf.o_stream, wiring.flipped(self.o_stream))
        return m
