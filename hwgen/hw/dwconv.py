"""Depthwise convolution engine: K x K window from block-RAM line buffers, P channel lanes.

Data order
----------
Channels are processed in ``G = ceil(channels / lanes)`` groups of ``P = lanes`` channels
(group ``g`` holds channels ``g*P .. g*P+P-1``; lanes past ``channels`` in the last group
carry don't-care data and produce don't-care outputs).

* ``i_stream``: for each group ``g = 0 .. G-1``, the ``height x width`` image in raster
  order; one beat = the ``P`` int8 values of one pixel (lane ``i`` = channel ``g*P + i``).
  Tensors follow each other back to back; no gap is needed between groups or tensors.
* ``o_stream``: for each group, the ``out_height x out_width`` outputs in raster order; one
  beat = ``P`` int32 accumulators ``acc = sum((x - x_zp) * w) + bias`` (int32 wrap-around),
  bit-exact with ``hwgen.golden.ops.conv2d_acc(..., groups=channels)``.
* Weights: ``w_wr`` writes the ``P`` int8 weights of tap ``tap = ky * k + kx`` of group
  ``group`` (lane ``i`` = channel ``group*P + i``, i.e. ``weight[c, 0, ky, kx]``); ``b_wr``
  writes the ``P`` int32 biases of a group. Both are plain memory write ports (one write per
  cycle when ``en`` is high); write them while ``idle`` is high. ``x_zp`` must be stable
  while a tensor streams.

Padding cells are masked: their product is forced to 0, which is exactly the contribution
of a cell holding ``x_zp`` (``(x_zp - x_zp) * w``), as QLinearConv pads.

How it works
------------
The input beats (and, after the last beat of a tensor, a few internal *flush* beats that
consume nothing) form one continuous raster stream of ``width``-pixel rows across groups
and tensors. A :class:`~hwgen.hw.linebuf.LineWindow` turns it into a K x K window per beat.
Output ``(g, oy, ox)`` is emitted when the window's newest cell is stream position
``g*H*W + (oy*s - top + k-1)*W + (ox*s - left + k-1)``; window cells outside the image of
group ``g`` (padding, or neighbouring rows/groups) are masked. Requiring
``top + bottom <= k-1`` and ``left + right <= k-1`` makes these positions strictly
increasing, so at most one output is emitted per beat and the engine never needs extra
cycles per row or per group: right/bottom padding outputs are emitted while the next
row/group streams in. Only the very end of a tensor needs ``flush_beats`` extra cycles.

The emitted windows enter a free-running multiply-accumulate pipeline (``P*k*k``
:class:`~hwgen.hw.dsp.Mult18`, a registered adder tree, the bias add) that ends in an output
FIFO. A credit counter admits windows only while the FIFO has room for everything in
flight, so backpressure on ``o_stream`` stalls the front end (and ``i_stream.ready``) one
cycle after the credits run out; the multipliers never stall, ``o_stream.ready`` reaches no
input-side logic combinationally, and the stall signal is a flip-flop. All stage-A
decisions (emission, row/group/tensor ends) are registered flags, so no wide comparator
sits in a next-state path.

Throughput and latency
----------------------
One input beat per cycle; at stride 1 one output beat (``P*k*k`` MACs) per cycle per channel
group, i.e. a tensor takes ``params.stream_beats = G*H*W + flush_beats`` cycles plus the
pipeline latency (``params.latency`` cycles from the beat that completes a window to that
output's ``o_stream.valid``, 13 for k=3). Measured in Verilator (rtl_tests/test_dwconv.py
``measure_cycles``), 16 channels 24x24, k=3, P=8, stride 1: 1190 cycles for 1152 output
beats, 96.8 % MAC utilisation (97.6 % for 4 tensors back to back). Stride 2 is input-bound:
one output per about 4 input beats.

Resources: ``P*k*k`` MULT18X18D (one (x - x_zp) x w product each: a 9 x 8-bit product
does not leave room to pack two in one 18 x 18 multiplier); line buffers
``(k-1) x width x P`` 9-bit values (``x - x_zp``, subtracted on entry) in block RAM;
``k*k*P`` 9-bit window registers. yosys ``synth_ecp5`` of P=8, k=3, width 48 (32 channels):
72 MULT18X18D, 4 DP16KD, 1112 LUT4 + 849 CCU2C, 272 TRELLIS_DPR16X4 (weight, bias and
output-FIFO LUT RAM), 5435 TRELLIS_FF. nextpnr-ecp5 (LFE5U-85F, router2, in a serial-I/O
wrapper): 153 MHz at P=2; 86 MHz at P=8, where the padding-mask flip-flops fan out to all
72 multipliers across the chip (replicating them per lane is the next step).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..ir import pool_out_size
from .dsp import Mult18
from .linebuf import LineWindow
from .requant import PARAM_LAYOUT, Requantizer, RequantParams

__all__ = ["DwConvParams", "DwConvEngine", "DwConvRequant"]

_BUGS = (None, "pad_zero", "no_mask")


def _pads(v) -> tuple[int, int, int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v, v, v)
    try:
        v = tuple(v)
    except TypeError:
        raise TypeError(f"DwConvParams padding must be an int, a (ph, pw) pair or "
                        f"(top, left, bottom, right), got {v!r}") from None
    if len(v) == 2:
        v = (v[0], v[1], v[0], v[1])
    if len(v) != 4 or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise TypeError(f"DwConvParams padding must be an int, a (ph, pw) pair or "
                        f"(top, left, bottom, right) of ints, got {v!r}")
    return v


@dataclass(frozen=True)
class DwConvParams:
    """Structure of one depthwise convolution engine instance.

    Parameters
    ----------
    channels : int
        Number of channels (= groups of the convolution).
    height, width : int
        Input image size.
    k : int
        Kernel size: 3, 5 or 7 (square kernels).
    stride : int
        1 or 2 (both axes).
    padding : int, (ph, pw) or (top, left, bottom, right)
        Zero-point padding. ``top + bottom`` and ``left + right`` must each be at most
        ``k - 1`` (every "same" padding qualifies).
    lanes : int
        Channels processed in parallel (P), 1..64.
    """
    channels: int
    height: int
    width: int
    k: int = 3
    stride: int = 1
    padding: int | tuple = 0
    lanes: int = 8
    _inject_bug: str | None = field(default=None, repr=False)

    def __post_init__(self):
        for name in ("channels", "height", "width", "k", "stride", "lanes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DwConvParams {name} must be a positive int, got {v!r}")
        if self.k not in (3, 5, 7):
            raise ValueError(f"DwConvParams k must be 3, 5 or 7, got {self.k}")
        if self.stride not in (1, 2):
            raise ValueError(f"DwConvParams stride must be 1 or 2, got {self.stride}")
        if self.lanes > 64:
            raise ValueError(f"DwConvParams lanes must be at most 64, got {self.lanes}")
        pads = _pads(self.padding)
        object.__setattr__(self, "padding", pads)
        t, l, b, r = pads
        if min(pads) < 0:
            raise ValueError(f"DwConvParams padding must be non-negative, got {pads}")
        if t + b > self.k - 1 or l + r > self.k - 1:
            raise ValueError(
                f"DwConvParams padding {pads} (top, left, bottom, right) is too large for "
                f"k={self.k}: top+bottom and left+right must each be at most k-1={self.k - 1} "
                f"(the engine emits at most one output per input pixel); use 'same' padding "
                f"or pad the tensor before the engine")
        if self.height + t + b < self.k or self.width + l + r < self.k:
            raise ValueError(
                f"DwConvParams input {self.height}x{self.width} with padding {pads} is "
                f"smaller than the {self.k}x{self.k} kernel: no output")
        if self._inject_bug not in _BUGS:
            raise ValueError(f"DwConvParams _inject_bug must be one of {_BUGS}")

    # -- geometry ---------------------------------------------------------------------------
    @property
    def groups(self) -> int:
        """Channel groups G = ceil(channels / lanes)."""
        return -(-self.channels // self.lanes)

    @property
    def out_height(self) -> int:
        t, _, b, _ = self.padding
        return pool_out_size(self.height, self.k, self.stride, t, b)

    @property
    def out_width(self) -> int:
        _, l, _, r = self.padding
        return pool_out_size(self.width, self.k, self.stride, l, r)

    def emit_position(self, g: int, oy: int, ox: int) -> int:
        """Stream position (beat index in the tensor) at which output (g, oy, ox) is emitted."""
        t, l, _, _ = self.padding
        s, k, h, w = self.stride, self.k, self.height, self.width
        return g * h * w + (oy * s - t + k - 1) * w + (ox * s - l + k - 1)

    @property
    def in_beats(self) -> int:
        """Input beats per tensor: G * height * width."""
        return self.groups * self.height * self.width

    @property
    def out_beats(self) -> int:
        """Output beats per tensor: G * out_height * out_width."""
        return self.groups * self.out_height * self.out_width

    @property
    def stream_beats(self) -> int:
        """Internal beats (cycles at full rate) per tensor: input beats + flush beats."""
        last = self.emit_position(self.groups - 1, self.out_height - 1, self.out_width - 1)
        return max(self.in_beats, last + 1)

    @property
    def flush_beats(self) -> int:
        """Beats after the last input beat of a tensor that consume no input."""
        return self.stream_beats - self.in_beats

    @property
    def macs(self) -> int:
        """Useful multiply-accumulates per tensor."""
        return self.channels * self.out_height * self.out_width * self.k * self.k

    @property
    def dsp_count(self) -> int:
        """MULT18X18D blocks: one per lane and tap."""
        return self.lanes * self.k * self.k

    @property
    def tree_stages(self) -> int:
        """Register stages of the adder tree over the k*k products (one per level)."""
        return ceil_log2(self.k * self.k)

    @property
    def mac_latency(self) -> int:
        """Cycles from a window's launch to its write into the output FIFO."""
        return Mult18.LATENCY + self.tree_stages + 1

    @property
    def fifo_depth(self) -> int:
        """Output FIFO depth (covers the credit loop so a ready consumer sees no bubbles)."""
        return self.mac_latency + 5

    @property
    def latency(self) -> int:
        """Cycles from the input beat completing a window to that output's o_stream.valid
        (3 window stages + MAC pipeline + 2 FIFO cycles), without stalls."""
        return 3 + self.mac_latency + 2


class DwConvEngine(wiring.Component):
    """Depthwise K x K convolution, P lanes, int32 accumulator output (see module docs).

    Throughput: one input beat per cycle; at stride 1 one ``P``-lane output beat per cycle
    (``P*k*k`` MACs/cycle), ``params.flush_beats`` extra cycles per tensor. Latency:
    ``params.latency`` cycles from the beat completing a window to the output beat.

    Parameters
    ----------
    params : DwConvParams
    use_primitive : bool or None
        Passed to every :class:`~hwgen.hw.dsp.Mult18` (``None``: MULT18X18D iff the platform
        is ECP5, else the behavioural model).

    Members
    -------
    i_stream : In(stream.Signature(ArrayLayout(signed(8), lanes)))
    o_stream : Out(stream.Signature(ArrayLayout(signed(32), lanes)))
    x_zp : In(signed(8))
        Input zero point.
    w_wr : In(Signature(en, group, tap, data: ArrayLayout(signed(8), lanes)))
    b_wr : In(Signature(en, group, data: ArrayLayout(signed(32), lanes)))
    idle : Out(1)
        No tensor partially streamed and nothing in flight.
    """

    def __init__(self, params: DwConvParams, *, use_primitive: bool | None = None):
        if not isinstance(params, DwConvParams):
            raise TypeError(f"DwConvEngine expects DwConvParams, got {type(params).__name__}")
        self.params = p = params
        self._use_primitive = use_primitive
        gr = range(max(p.groups, 2))
        px = data.ArrayLayout(signed(8), p.lanes)
        acc = data.ArrayLayout(signed(32), p.lanes)
        super().__init__({
            "i_stream": In(stream.Signature(px)),
            "o_stream": Out(stream.Signature(acc)),
            "x_zp": In(signed(8)),
            "w_wr": In(wiring.Signature({
                "en": Out(1), "group": Out(gr), "tap": Out(range(p.k * p.k)), "data": Out(px)})),
            "b_wr": In(wiring.Signature({"en": Out(1), "group": Out(gr), "data": Out(acc)})),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        K, KK, P, S = p.k, p.k * p.k, p.lanes, p.stride
        H, W, G = p.height, p.width, p.groups
        OH, OW = p.out_height, p.out_width
        T, L, _, _ = p.padding
        N = p.stream_beats
        px = data.ArrayLayout(signed(8), P)
        acc_layout = data.ArrayLayout(signed(32), P)

        # ---- weight and bias memories ----------------------------------------------------
        m.submodules.wmem = wmem = Memory(shape=data.ArrayLayout(px, KK), depth=G, init=[])
        wwp = wmem.write_port(granularity=1)
        wrp = wmem.read_port()
        m.d.comb += [wwp.addr.eq(self.w_wr.group),
                     wwp.en.eq(Mux(self.w_wr.en, Const(1, KK) << self.w_wr.tap, 0))]
        m.d.comb += [wwp.data[t].eq(self.w_wr.data) for t in range(KK)]
        m.submodules.bmem = bmem = Memory(shape=acc_layout, depth=G, init=[])
        bwp = bmem.write_port()
        brp = bmem.read_port()
        m.d.comb += [bwp.addr.eq(self.b_wr.group), bwp.en.eq(self.b_wr.en),
                     bwp.data.eq(self.b_wr.data)]

        # ---- stage A: beat source, position counters, emission -----------------------------
        # Every decision of this stage comes from a register (no wide compare in the
        # next-state path): `emit` says whether the beat at A completes the next output's
        # window, `dist` counts beats to that output, `*_last` flags mark row/group/tensor ends.
        first = p.emit_position(0, 0, 0)
        step_col = S
        step_row = p.emit_position(0, 1, 0) - p.emit_position(0, 0, OW - 1)
        step_grp = p.emit_position(1, 0, 0) - p.emit_position(0, OH - 1, OW - 1)
        adv = Signal(init=1)    # global advance of stages A..C (a register: see credits)
        rem = Signal(range(N), init=N - 1)          # beats left in the tensor after this one
        last = Signal(init=N == 1)                  # this beat is the tensor's last
        in_last = Signal(init=p.in_beats == 1)      # this beat is the last input beat
        at_start = Signal(init=1)                   # no beat of the tensor consumed yet
        x = Signal(range(max(W, 2)))
        flushing = Signal()
        emit = Signal(init=first == 0)
        dist = Signal(range(max(first, step_row, step_grp, S) + 1), init=first)
        ox, oy, og = Signal(range(OW)), Signal(range(OH)), Signal(range(G))
        ox_last = Signal(init=OW == 1)
        oy_last = Signal(init=OH == 1)
        og_last = Signal(init=G == 1)
        cw = signed(ceil_log2(max(H, W) * 2 + 2 * K) + 2)
        col0 = Signal(cw, init=-L)
        row0 = Signal(cw, init=-T)

        a_valid = Signal()
        m.d.comb += [a_valid.eq(flushing | self.i_stream.valid),
                     self.i_stream.ready.eq(adv & ~flushing)]

        def reset_tensor():
            m.d.sync += [rem.eq(N - 1), last.eq(N == 1), in_last.eq(p.in_beats == 1),
                         at_start.eq(1), x.eq(0), flushing.eq(0), emit.eq(first == 0),
                         dist.eq(first), ox.eq(0), oy.eq(0), og.eq(0), ox_last.eq(OW == 1),
                         oy_last.eq(OH == 1), og_last.eq(G == 1), col0.eq(-L), row0.eq(-T)]

        def next_last(counter, n):   # flag "counter will be at n-1" after an increment
            return counter == n - 2 if n >= 2 else Const(1)

        fire = a_valid & adv
        with m.If(fire):
            with m.If(last):
                reset_tensor()
            with m.Else():
                m.d.sync += [rem.eq(rem - 1), last.eq(rem == 1), at_start.eq(0),
                             in_last.eq(rem == N - p.in_beats + 1),
                             x.eq(Mux(x == W - 1, 0, x + 1))]
                if N > p.in_beats:
                    with m.If(in_last):
                        m.d.sync += flushing.eq(1)
                with m.If(emit):
                    with m.If(ox_last):
                        m.d.sync += [ox.eq(0), ox_last.eq(OW == 1), col0.eq(-L)]
                        with m.If(oy_last):
                            m.d.sync += [oy.eq(0), oy_last.eq(OH == 1), row0.eq(-T)]
                            with m.If(og_last):     # tensor's last output: none until reset
                                m.d.sync += [og.eq(0), og_last.eq(G == 1), emit.eq(0), dist.eq(0)]
                            with m.Else():
                                m.d.sync += [og.eq(og + 1), og_last.eq(next_last(og, G)),
                                             dist.eq(step_grp - 1), emit.eq(step_grp == 1)]
                        with m.Else():
                            m.d.sync += [oy.eq(oy + 1), oy_last.eq(next_last(oy, OH)),
                                         row0.eq(row0 + S), dist.eq(step_row - 1),
                                         emit.eq(step_row == 1)]
                    with m.Else():
                        m.d.sync += [ox.eq(ox + 1), ox_last.eq(next_last(ox, OW)),
                                     col0.eq(col0 + S), dist.eq(step_col - 1),
                                     emit.eq(step_col == 1)]
                with m.Elif(dist != 0):
                    m.d.sync += [dist.eq(dist - 1), emit.eq(dist == 1)]

        # ---- stages B, C: line buffer and window --------------------------------------------
        # the zero point is subtracted on entry: the buffers hold 9-bit x - x_zp, so the
        # window feeds the multipliers through a single masking LUT
        m.submodules.window = lw = LineWindow(data.ArrayLayout(signed(9), P), K, W)
        m.d.comb += [lw.en.eq(adv), lw.i_valid.eq(a_valid), lw.i_x.eq(x)]
        m.d.comb += [lw.i_data[lane].eq(self.i_stream.payload[lane] - self.x_zp)
                     for lane in range(P)]
        # metadata travels with the beat through the window's stages B, B2 to C
        b_valid, b_emit, b_og = Signal(), Signal(), Signal.like(og)
        b_col0, b_row0 = Signal.like(col0), Signal.like(row0)
        b2_valid, b2_emit, b2_og = Signal(), Signal(), Signal.like(og)
        b2_col0, b2_row0 = Signal.like(col0), Signal.like(row0)
        c_valid, c_emit, c_og = Signal(), Signal(), Signal.like(og)
        c_rmask, c_cmask = Signal(K), Signal(K)
        assert LineWindow.LATENCY == 3
        with m.If(adv):
            m.d.sync += [b_valid.eq(a_valid), b_emit.eq(a_valid & emit), b_og.eq(og),
                         b_col0.eq(col0), b_row0.eq(row0),
                         b2_valid.eq(b_valid), b2_emit.eq(b_emit), b2_og.eq(b_og),
                         b2_col0.eq(b_col0), b2_row0.eq(b_row0),
                         c_valid.eq(b2_valid), c_emit.eq(b2_valid & b2_emit), c_og.eq(b2_og)]
            for i in range(K):   # window cells inside the image of the output's group
                m.d.sync += [c_rmask[i].eq((b2_row0 + i >= 0) & (b2_row0 + i < H)),
                             c_cmask[i].eq((b2_col0 + i >= 0) & (b2_col0 + i < W))]
        m.d.comb += [wrp.addr.eq(b2_og), wrp.en.eq(adv)]   # weights of C's group

        # ---- credits: room in the output FIFO for everything launched ----------------------
        # `adv` is registered: it is low in the cycle after the credits ran out (whether or
        # not C emits), so the stall signal fans out straight from a flip-flop.
        D = p.fifo_depth
        credits = Signal(range(D + 1), init=D)
        launch = Signal()
        m.d.comb += launch.eq(c_emit & adv)
        o_fire = self.o_stream.valid & self.o_stream.ready
        credits_next = Signal.like(credits)
        m.d.comb += credits_next.eq(credits - launch + o_fire)
        m.d.sync += [credits.eq(credits_next), adv.eq(credits_next != 0)]
        m.d.comb += self.idle.eq(at_start & ~b_valid & ~b2_valid & ~c_valid & (credits == D))

        # ---- MAC pipeline (free running) ---------------------------------------------------
        Ls = Mult18.LATENCY + p.tree_stages
        v_sr = [launch] + [Signal(name=f"v{n}") for n in range(1, Ls + 2)]
        g_sr = [c_og] + [Signal.like(og, name=f"g{n}") for n in range(1, Ls + 1)]
        m.d.sync += [v_sr[n + 1].eq(v_sr[n]) for n in range(Ls + 1)]
        m.d.sync += [g_sr[n + 1].eq(g_sr[n]) for n in range(Ls)]
        m.d.comb += brp.addr.eq(g_sr[Ls - 1])

        m.submodules.fifo = fifo = SyncFIFOBuffered(width=P * 32, depth=D)
        acc_r = Signal(acc_layout)
        tw = 17 + ceil_log2(KK)
        for lane in range(P):
            prods = []
            for i in range(K):
                for j in range(K):
                    xv = lw.window[j][i][lane]
                    ok = c_rmask[i] & c_cmask[j]
                    a = Signal(signed(9), name=f"a{lane}_{i}_{j}")
                    if p._inject_bug == "pad_zero":
                        m.d.comb += a.eq(Mux(ok, xv, -self.x_zp))   # pads with 0, not x_zp
                    elif p._inject_bug == "no_mask":
                        m.d.comb += a.eq(xv)
                    else:
                        m.d.comb += a.eq(Mux(ok, xv, 0))
                    mul = Mult18(use_primitive=self._use_primitive)
                    m.submodules[f"mul{lane}_{i}_{j}"] = mul
                    m.d.comb += [mul.a.eq(a), mul.b.eq(wrp.data[i * K + j][lane])]
                    prods.append(mul.p[:17].as_signed())
            total = _adder_tree(m, prods, tw, f"t{lane}")
            s = Signal(signed(33), name=f"s{lane}")
            m.d.comb += s.eq(total + brp.data[lane])
            m.d.sync += acc_r[lane].eq(s[:32].as_signed())
        m.d.comb += [fifo.w_en.eq(v_sr[Ls + 1]), fifo.w_data.eq(acc_r),
                     self.o_stream.valid.eq(fifo.r_rdy), self.o_stream.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.o_stream.ready)]
        return m


def _adder_tree(m: Module, terms, width: int, name: str):
    """Sum ``terms`` with a binary tree, a register after every level (two chained ~20-bit
    adds do not meet 150 MHz on ECP5): ``ceil_log2(len(terms))`` register stages."""
    level = 0
    while len(terms) > 1:
        nxt = []
        for j in range(0, len(terms), 2):
            s = Signal(signed(width), name=f"{name}_l{level}_{j // 2}")
            m.d.sync += s.eq(terms[j] + terms[j + 1] if j + 1 < len(terms) else terms[j])
            nxt.append(s)
        terms = nxt
        level += 1
    return terms[0]


class DwConvRequant(wiring.Component):
    """Quantized depthwise convolution (QLinearConv with groups = channels): a
    :class:`DwConvEngine` followed by a :class:`~hwgen.hw.requant.Requantizer`.

    Same input order, weight and bias ports as :class:`DwConvEngine`; ``o_stream`` carries
    ``P`` int8 outputs per beat in the engine's output order, bit-exact with
    ``hwgen.golden.ops.conv2d(..., groups=channels)``. Lane ``i`` of a beat of group ``g``
    is requantised with the scale of channel ``g*P + i`` (written through ``scale_wr`` as
    words from :func:`hwgen.hw.requant.encode_scales`, address = channel).

    Throughput as the engine's; latency ``params.latency + Requantizer.LATENCY`` cycles.
    MULT18X18D: ``P*k*k`` (engine) + ``4*P`` (requantiser).

    Members
    -------
    i_stream, w_wr, b_wr, x_zp : as :class:`DwConvEngine`
    o_stream : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
    y_zp, lo, hi : In(signed(8))
        Output zero point and clamp range; change only when no tensor is in flight.
    scale_wr : In(Signature(en, addr, data: PARAM_LAYOUT))
    idle : Out(1)
        The convolution engine is idle (the requantiser may still hold its last outputs).
    """

    def __init__(self, params: DwConvParams, *, use_primitive: bool | None = None):
        self.conv = DwConvEngine(params, use_primitive=use_primitive)
        self.params = params
        self.rq = Requantizer(RequantParams(lanes=params.lanes, channels=params.channels,
                                            use_primitive=use_primitive))
        members = dict(self.conv.signature.members)
        members["o_stream"] = Out(stream.Signature(data.ArrayLayout(signed(8), params.lanes)))
        members["y_zp"] = In(signed(8))
        members["lo"] = In(signed(8), init=-128)
        members["hi"] = In(signed(8), init=127)
        members["scale_wr"] = In(wiring.Signature({
            "en": Out(1), "addr": Out(self.rq.params.ch_bits), "data": Out(PARAM_LAYOUT)}))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        P, C = p.lanes, p.channels
        m.submodules.conv = conv = self.conv
        m.submodules.rq = rq = self.rq
        for name in ("i_stream", "w_wr", "b_wr"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(conv, name))
        wiring.connect(m, wiring.flipped(self.scale_wr), rq.param)
        wiring.connect(m, rq.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [conv.x_zp.eq(self.x_zp), rq.zero_point.eq(self.y_zp), rq.lo.eq(self.lo),
                     rq.hi.eq(self.hi), self.idle.eq(conv.idle)]

        # channel tags: output beats come group by group, out_height*out_width per group
        n = Signal(range(p.out_height * p.out_width))
        g = Signal(range(p.groups))
        m.d.comb += [rq.i_stream.valid.eq(conv.o_stream.valid),
                     conv.o_stream.ready.eq(rq.i_stream.ready),
                     rq.i_stream.payload.acc.eq(conv.o_stream.payload)]
        for lane in range(P):
            ch = g * P + lane
            m.d.comb += rq.i_stream.payload.ch[lane].eq(Mux(ch < C, ch, 0))
        with m.If(conv.o_stream.valid & rq.i_stream.ready):
            with m.If(n == p.out_height * p.out_width - 1):
                m.d.sync += [n.eq(0), g.eq(Mux(g == p.groups - 1, 0, g + 1))]
            with m.Else():
                m.d.sync += n.eq(n + 1)
        return m
