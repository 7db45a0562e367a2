"""Run-time-configurable depthwise 3 x 3 convolution unit of the whole-network accelerator.

:class:`DwUnit` runs one depthwise ``Conv2d`` layer (groups = channels, multiplier 1) described
by a :data:`hwgen.hw.layer_io.DESC` entry, next to :class:`~hwgen.hw.layer_io.MaxPoolUnit` /
:class:`~hwgen.hw.layer_io.AddUnit` (same port style: arena read port, write requests to the
:class:`~hwgen.hw.layer_io.Placer`, no back-pressure). The geometry (input size, stride 1/2
per axis, top/left padding, output size, channels, zero points, clamp) is read from the
descriptor at run time; only the line-buffer length (``max_width``) is fixed at build time.

Data flow
---------
Channels are processed one after the other, each channel's ``in_h x in_w`` plane read from
the arena in raster order, one byte per cycle (address ``in_addr + c + p * in_pitch`` kept
by an incremental counter: ``+ in_pitch`` per pixel, ``in_addr + c + 1`` at a new channel).
The planes of consecutive channels form one continuous raster stream of ``in_w``-pixel rows
through a 3 x 3 line-buffer window (two ``max_width``-word block RAMs holding ``x - x_zp``,
9 bits); output ``(c, oy, ox)`` is taken from the window when the newest stream position is
``c*H*W + (oy*sh - pad_t + 2)*W + (ox*sw - pad_l + 2)`` (a distance counter with run-time
steps, precomputed during an 8-cycle setup), window cells outside the channel's image are
masked to 0 -- exactly the contribution of an ``x_zp`` padding cell. With ``pad_t + pad_b <= 2``
and ``pad_l + pad_r <= 2`` these positions strictly increase, so right/bottom-padding outputs
are produced while the next row/channel streams in: no gap between rows or channels; only the
last channel needs a few flush beats.

Each taken window goes through 9 :class:`~hwgen.hw.dsp.Mult18` (registered on both sides), a
registered adder tree with the bias as tenth term, and a one-lane
:class:`~hwgen.hw.requant.Requantizer`. Outputs leave in (channel, oy, ox) order as write
requests ``wr_pix = oy*out_w + ox`` (counter), ``wr_ch = c``.

Per-channel parameters are prefetched by a loader while the previous channel streams: 9 tap
bytes (tap memory, ``w_base + 9c + tap``, incremental pointer) and the 64-bit channel record
(``ch_base + c``: int32 bias, scale mantissa/exponent) into one of two register sets (by
channel parity); the scale goes into a 4-entry ring of the requantiser's parameter memory.
Channel ``n`` is loaded once the multipliers have taken the last window of channel ``n - 2``
(its set is then free); the stream stalls only if it reaches a channel whose
parameters are not loaded yet (planes smaller than about 9 pixels).

Timing: issue (counters) -> arena read -> registered byte -> line-buffer write/read ->
registered BRAM output -> window shift -> mask/weight select into the multiplier input
registers -> 3 multiplier stages -> 4 adder-tree levels -> requantiser (19) -> write request.
Cycles per layer (start to done): ``C*H*W + W + 45`` or less (setup, first parameter load,
flush beats, pipeline latency; no per-channel overhead), e.g. 1209 for 12x12x8 and 2108 for
MobileNet-0.25's 16x16x8 ``dw2`` (rtl_tests/test_dwunit.py); ``mem_latency=L`` (memories with
an L-cycle read latency, L in 1..4: DP16KD with the output register, plus fabric registers
around the row multiplexer of a memory spread over the chip) adds L - 1 stages behind each
read port and exactly L - 1 cycles per layer (1212 for 12x12x8 with L = 4): the loader's
data stage moves by L - 1 too, and every loader / register-set timing margin stays the same.
Planes under 9 pixels stall on the parameter loader (9 cycles per channel: the tap memory
gives one byte per cycle).

Resources (yosys synth_ecp5, max_width=128, max_channels=256): 13 MULT18X18D (9 taps + 4
requantiser), 2 DP16KD (line buffers), 8 TRELLIS_DPR16X4, about 1735 LUT4 + 693 CCU2C and
2685 FF (mem_latency=1) / 1741 LUT4 + 693 CCU2C and 2710 FF (mem_latency=2); nextpnr-ecp5 out of
context on the 85F, seeds 1-3: 137.7-138.7 MHz (mem_latency=1), 134.1-144.2 MHz (mem_latency=2).
mem_latency=4: 1771 LUT4 + 693 CCU2C, 2760 FF, 129.4-137.0 MHz with the loader's old compares
(li + 1 <= cm1, li <= freed + 1: the critical path); with li < cm1 and a freed_p1 register,
1755 LUT4 + 700 CCU2C, 2777 FF, 139.2-149.2 MHz (critical path now the stream's dist counter);
the same code at mem_latency=1: 1784 LUT4 + 701 CCU2C, 2702 FF, 133.7-136.6 MHz (dist counter).
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .bram import kept_reg, registered_write
from .dsp import Mult18, use_primitive_for
from .layer_io import DESC
from .requant import Requantizer, RequantParams

__all__ = ["DwUnit", "check_desc"]

_BUGS = (None, "pad_zero")


def check_desc(f: dict, max_width: int | None = None, max_channels: int | None = None) -> None:
    """Raise ValueError when the descriptor fields ``f`` (a :data:`DESC` dict, as
    :func:`hwgen.hw.layer_io.layer_descriptors` fills it) describe a depthwise layer the unit
    cannot run: kernel other than 3 x 3, stride other than 1/2, padding sums above 2 (bottom /
    right padding implied by out_h / out_w), an input wider than ``max_width`` or more than
    ``max_channels`` channels."""
    if (f["kh"], f["kw"]) != (3, 3):
        raise ValueError(f"DwUnit runs 3x3 kernels, got {f['kh']}x{f['kw']}")
    if f["sh"] not in (1, 2) or f["sw"] not in (1, 2):
        raise ValueError(f"DwUnit strides must be 1 or 2, got {f['sh']}x{f['sw']}")
    h, w, oh, ow, c = f["in_h"], f["in_w"], f["out_h"], f["out_w"], f["out_c"]
    if min(h, w, oh, ow, c) < 1:
        raise ValueError("DwUnit needs a non-empty input and output")
    t, l = f["pad_t"], f["pad_l"]
    b = (oh - 1) * f["sh"] + 3 - h - t      # implied bottom / right padding (< 0: unused
    r = (ow - 1) * f["sw"] + 3 - w - l      # input rows / columns, as floor division crops)
    if t > 2 or l > 2 or t + b > 2 or l + r > 2:
        raise ValueError(f"DwUnit padding (t={t}, l={l}, b={b}, r={r}): top+bottom and "
                         f"left+right must each be at most 2")
    if t + b < -4:
        raise ValueError(f"DwUnit: {-(t + b)} unused input rows at the bottom (at most 4)")
    if max_width is not None and w > max_width:
        raise ValueError(f"DwUnit: input width {w} exceeds max_width={max_width}")
    if max_channels is not None and c > max_channels:
        raise ValueError(f"DwUnit: {c} channels exceed max_channels={max_channels}")


class DwUnit(wiring.Component):
    """Depthwise 3 x 3 convolution of one layer per ``start``, geometry from ``desc``.

    Parameters
    ----------
    max_width : int
        Widest input row (line-buffer words).
    max_channels : int
        Most channels of a layer (checked by :meth:`check`; counters are 16 bits).
    k_max : int
        Largest kernel: 3 (the only size built).
    use_primitive : bool or None
        MULT18X18D instances (True), behavioural multipliers (False), or by platform (None).
    mem_latency : int
        Read latency (1..5) of all three read ports (arena, taps, channel store): the data
        for an address presented in cycle t is expected in cycle t + mem_latency (memories
        always enabled, never stalled). 2 suits DP16KD with the output register on, 3 to 5 a
        memory with fabric registers around its row multiplexer; the unit's stream pipeline
        simply gets mem_latency - 1 more stages and the loader's data stage moves with it
        (same throughput, one cycle more per layer per extra stage).

    Members
    -------
    desc : In(DESC), stable while running. start : In(1) pulse. done : Out(1), idle (every
    write request issued), init 1.
    rd_addr / rd_data : arena read port (data ``mem_latency`` cycles after the address).
    t_addr / t_data : depthwise tap memory read port (``mem_latency``).
    c_addr / c_data : channel-store read port (64-bit records, ``mem_latency``).
    wr_en, wr_pix, wr_ch, wr_data : write requests (no back-pressure).
    """

    SETUP = 8

    def __init__(self, max_width: int, max_channels: int, k_max: int = 3, use_primitive=None,
                 mem_latency: int = 1, _inject_bug: str | None = None):
        if k_max != 3:
            raise ValueError(f"DwUnit supports k_max=3 only, got {k_max!r}")
        if not isinstance(max_width, int) or not 2 <= max_width <= 1 << 14:
            raise ValueError(f"DwUnit max_width must be an int in 2..16384, got {max_width!r}")
        if not isinstance(max_channels, int) or not 1 <= max_channels < 1 << 16:
            raise ValueError(f"DwUnit max_channels must be in 1..65535, got {max_channels!r}")
        if mem_latency not in (1, 2, 3, 4, 5, 6) or isinstance(mem_latency, bool):
            raise ValueError(f"DwUnit mem_latency must be 1..6, got {mem_latency!r}")
        if _inject_bug not in _BUGS:
            raise ValueError(f"_inject_bug must be one of {_BUGS}")
        self.max_width, self.max_channels = max_width, max_channels
        self.use_primitive = use_primitive
        self.mem_latency = mem_latency
        self._inject_bug = _inject_bug
        super().__init__({
            "desc": In(DESC), "start": In(1), "done": Out(1, init=1),
            "rd_addr": Out(24), "rd_data": In(signed(8)),
            "t_addr": Out(24), "t_data": In(signed(8)),
            "c_addr": Out(24), "c_data": In(64),
            "wr_en": Out(1), "wr_pix": Out(24), "wr_ch": Out(16), "wr_data": Out(signed(8)),
        })

    def check(self, f: dict) -> None:
        """:func:`check_desc` against this unit's build parameters."""
        check_desc(f, self.max_width, self.max_channels)

    def elaborate(self, platform):
        m = Module()
        d = self.desc
        xb = max(1, ceil_log2(self.max_width))
        L = self.mem_latency
        x = L - 1               # extra stages behind every read port (0..4)

        # ---- per-layer constants, computed continuously from desc (valid SETUP cycles
        # after desc settles); no multiplication, every stage registered ----------------------
        def r(shape, name, value):
            s = Signal(shape, name=name)
            m.d.sync += s.eq(value)
            return s

        W, H = d.in_w, d.in_h
        wm1 = r(16, "wm1", W - 1)
        hm1 = r(16, "hm1", H - 1)
        cm1 = r(16, "cm1", d.out_c - 1)
        owm1 = r(16, "owm1", d.out_w - 1)
        ohm1 = r(16, "ohm1", d.out_h - 1)
        w1 = r(16, "w_r", W)
        wm2 = r(17, "wm2", wm1 - 1)         # used only when the counter is not at its last
        hm2 = r(17, "hm2", hm1 - 1)
        owm2 = r(17, "owm2", owm1 - 1)
        ohm2 = r(17, "ohm2", ohm1 - 1)
        cm2 = r(17, "cm2", cm1 - 1)
        h1 = r(16, "h_r", H)
        sh_w = r(18, "sh_w", Mux(d.sh == 2, W << 1, W))                      # sh * W
        first = r(18, "first", Mux(d.pad_t == 0, W << 1, Mux(d.pad_t == 1, W, 0))
                  + (2 - d.pad_l[:2]))                                     # (2-t)*W + 2-l
        sw_ow = r(18, "sw_ow", Mux(d.sw == 2, owm1 << 1, owm1))             # (OW-1) * sw
        sh_oh = r(18, "sh_oh", Mux(d.sh == 2, ohm1 << 1, ohm1))             # (OH-1) * sh
        step_row = r(signed(19), "step_row", sh_w - sw_ow)
        rows_left = r(3, "rows_left", (h1 - sh_oh)[:3])                      # 1..7
        rlw_a = r(19, "rlw_a", Mux(rows_left[0], w1, 0) + Mux(rows_left[1], w1 << 1, 0))
        rlw_b = r(19, "rlw_b", Mux(rows_left[2], w1 << 2, 0))
        rl_w = r(19, "rl_w", rlw_a + rlw_b)
        step_grp = r(signed(20), "step_grp", rl_w - sw_ow)
        row_m1 = r(18, "row_m1", step_row - 1)
        row_is1 = r(1, "row_is1", step_row == 1)
        grp_m1 = r(18, "grp_m1", step_grp - 1)
        grp_is1 = r(1, "grp_is1", step_grp == 1)
        col_m1 = r(18, "col_m1", d.sw - 1)
        col_is1 = r(1, "col_is1", d.sw == 1)
        # the window's top row / left column at the first output and one step further
        # (row0 / col0 step through registers holding their next value: no adder between
        # the issue decision and them)
        row_i = r(signed(18), "row_i", -d.pad_t)
        col_i = r(signed(18), "col_i", -d.pad_l)
        row_ip = r(signed(18), "row_ip", d.sh - d.pad_t)
        col_ip = r(signed(18), "col_ip", d.sw - d.pad_l)
        sh_l = r(2, "sh_l", d.sh)
        sw_l = r(2, "sw_l", d.sw)

        # ---- control -----------------------------------------------------------------------
        busy = Signal()         # a layer is running (until its last write request)
        # the stream is issuing: from the setup's end to the last emission (the issue
        # decision go = live & ok is a register of its own, see go_k)
        live = Signal()
        lrun = Signal()         # loader active (from start to the last write request)
        setup = Signal(range(self.SETUP + 1))
        # setup != 0 and setup == 1 as registers of their own (no compare of the counter in
        # front of the stream's enables)
        in_setup, setup_end = Signal(), Signal()
        m.d.comb += self.done.eq(~busy)

        # ---- parameter loader: channel li's 9 taps on t_addr (one per cycle, lk = 0..8),
        # its record on c_addr with the last tap (held for all 9 cycles); data L cycles
        # later (lv1, lk1, li1 = the issue state delayed by L); channels back to back,
        # 9 cycles each ---------------------------------------------------------------------
        ld_ch = Signal(16)      # channels loaded completely
        li = Signal(16)         # channel being read (next to read when idle)
        lact = Signal()
        lk = Signal(4)
        tptr, cptr = Signal(24), Signal(24)
        freed = Signal(16)      # channels whose last window the multipliers took
        freed_p1 = Signal(17)   # freed + 1, its own register (no adder before the compares)
        m.d.comb += [self.t_addr.eq(tptr), self.c_addr.eq(cptr)]
        wset = [[Signal(signed(8), name=f"w{s}_{t}") for t in range(9)] for s in range(2)]
        bset = [Signal(signed(32), name=f"bias{s}") for s in range(2)]
        # issue state delayed by 1 .. L cycles: stage 1 keeps the whole channel index (for
        # ld_ch), later stages only the two bits the register sets / ring slots need
        lvd, lkd, lid = [lact], [lk], [li]
        for k in range(1, L + 1):
            lvk, lkk = Signal(name=f"lv_d{k}"), Signal(4, name=f"lk_d{k}")
            lik = Signal(16 if k == 1 else 2, name=f"li_d{k}")
            m.d.sync += [lvk.eq(lvd[-1]), lkk.eq(lkd[-1]), lik.eq(lid[-1][:len(lik)])]
            lvd.append(lvk), lkd.append(lkk), lid.append(lik)
        lv1, lk1, li1 = lvd[L], lkd[L], lid[L]      # data stage (t_data / c_data valid)
        # ld_ch counts the channel one cycle after its last address, whatever the latency
        # (stage 1); its data (last tap, bias, requantiser ring slot) lands L - 1 cycles later.
        # RAW: ld_ch visible in cycle A; ok in A + 1, the first go of the channel at A + 1 at
        # the earliest, its first window at the multiplier inputs (S5 + x) in A + 6 + x; the
        # last tap / bias registers hold the new values from A + x on (ring slot written at
        # the end of A + x, read by the requantiser much later): 6 cycles of margin, the
        # same for every latency since both sides move with x
        ld_v, ld_i = lvd[1] & (lkd[1] == 8), lid[1]
        with m.If(ld_v):
            m.d.sync += ld_ch.eq(ld_i + 1)
        # channel n may load once the multipliers took the last window of channel n - 2
        # (its register set is free)
        # registered decisions (freed only grows: a stale value only delays a load):
        # may_r "channel li may load" for the next cycle, nxt_r "channel li + 1 may load"
        # (li + 1 <= cm1 written li < cm1, freed + 1 kept in freed_p1: compares only, the
        # loader decision is the unit's critical path)
        c_cur = (li <= cm1) & (li <= freed_p1)
        c_nxt = (li < cm1) & (li <= freed)
        may_r, nxt_r = Signal(), Signal()
        # lk == 8 as a register (lk is 0 whenever lact is low): the loader's enables come
        # from flip-flops
        lk8 = Signal()
        m.d.sync += lk8.eq(lact & (lk == 7))
        m.d.sync += [may_r.eq(Mux(lk8, c_nxt, c_cur)), nxt_r.eq(c_nxt)]
        with m.If(lact):
            m.d.sync += [lk.eq(lk + 1), tptr.eq(tptr + 1)]
            with m.If(lk8):
                m.d.sync += [cptr.eq(cptr + 1), li.eq(li + 1), lk.eq(0), lact.eq(lrun & nxt_r)]
        with m.Elif(lrun & may_r):
            m.d.sync += [lact.eq(1), lk.eq(0)]

        m.submodules.rq = rq = Requantizer(RequantParams(lanes=1, channels=4,
                                                         use_primitive=self.use_primitive))
        m.d.comb += [rq.zero_point.eq(d.y_zp), rq.lo.eq(d.lo), rq.hi.eq(d.hi),
                     rq.o_stream.ready.eq(1)]
        # the requantiser's parameter write goes through registers (the channel store's
        # output may be far from the ring's distributed RAM): its slot is written a cycle
        # later, still long before the requantiser reads it
        p_en = Signal()
        pw_addr, pw_data, pw_en = registered_write(m, li1[:2], self.c_data[32:62], p_en)
        m.d.comb += [rq.param.en.eq(pw_en), rq.param.addr.eq(pw_addr),
                     rq.param.data.as_value().eq(pw_data)]
        with m.If(lv1):
            with m.Switch(lk1):
                for t in range(9):
                    with m.Case(t):
                        with m.If(li1[0]):
                            m.d.sync += wset[1][t].eq(self.t_data)
                        with m.Else():
                            m.d.sync += wset[0][t].eq(self.t_data)
            with m.If(lk1 == 8):
                m.d.comb += p_en.eq(1)
                with m.If(li1[0]):
                    m.d.sync += bset[1].eq(self.c_data[:32])
                with m.Else():
                    m.d.sync += bset[0].eq(self.c_data[:32])

        # ---- stream issue: arena address, position, emission ---------------------------------
        ix, iy = Signal(16), Signal(16)
        addr, cbase = Signal(24), Signal(24)
        cbase_p1 = Signal(24)    # cbase + 1, a register of its own (no adder behind cbase)
        emit = Signal()
        # cycles to the next emission: below 8 * max_width (first <= 2W + 2, a row step <= 2W,
        # a group step <= 7W), so a short down-counter
        dist = Signal((8 * self.max_width + 2).bit_length())
        ox, oy, og = Signal(16), Signal(16), Signal(16)
        row0, col0 = Signal(signed(18), name="row0"), Signal(signed(18), name="col0")
        row0_p, col0_p = Signal(signed(18), name="row0_p"), Signal(signed(18), name="col0_p")
        go = Signal()
        # "counter at its last value" flags, registers (no wide compare before the enables)
        x_last, y_last, ox_last, oy_last, og_last = (
            Signal(name=n) for n in ("x_last", "y_last", "ox_last", "oy_last", "og_last"))
        og_adv = emit & ox_last & oy_last
        # og + 1 in a register of its own, and compares only as wide as the channel count
        og_p1 = Signal(16)
        cb = max(1, ceil_log2(self.max_channels + 1))
        # ok: "parameters of the stream's output channel og are loaded" for the next cycle:
        # og of the next cycle compared with ld_ch of this one (ld_ch only grows, so it may
        # lag by a cycle, never lead)
        ok_n = Mux(go & og_adv, ld_ch[:cb] > og_p1[:cb], ld_ch[:cb] > og[:cb])
        # live's next value, and go itself a register (live & ok of the next cycle):
        # the issue decision reaches the stream's ~200 flip-flops straight from a flip-flop
        live_n = Mux(go & og_adv & og_last, 0, Mux(setup_end, 1, Mux(self.start, 0, live)))
        # go in three copies (kept apart on ECP5): the position / emission control, the read
        # address, the metadata chains (v54s3: the one go 3.4 ns from the control)
        go_k = kept_reg(m, Cat(*[live_n & ok_n] * 3), "dwu_go",
                        use_primitive_for(platform, self.use_primitive))
        go_a, go_s = Signal(), Signal()
        m.d.sync += live.eq(live_n)
        m.d.comb += [go.eq(go_k[0]), go_a.eq(go_k[1]), go_s.eq(go_k[2]),
                     self.rd_addr.eq(addr)]

        with m.If(self.start):     # the loader starts at once, the stream after the setup
            m.d.sync += [busy.eq(1), setup.eq(self.SETUP), lrun.eq(1), ld_ch.eq(0),
                         li.eq(0), lact.eq(0), tptr.eq(d.w_base), cptr.eq(d.ch_base), freed.eq(0),
                         freed_p1.eq(1), in_setup.eq(1), setup_end.eq(self.SETUP == 1)]
        with m.Elif(in_setup):
            m.d.sync += [setup.eq(setup - 1), in_setup.eq(~setup_end), setup_end.eq(setup == 2)]
        # the setup's last cycle never meets a start (a start comes only while the unit is
        # idle), so the stream's registers load on setup_end alone (start is not in front
        # of their enables)
        with m.If(setup_end):
            m.d.sync += [ix.eq(0), iy.eq(0), cbase.eq(d.in_addr),
                         cbase_p1.eq(d.in_addr + 1),
                         emit.eq(first == 0), dist.eq(first), ox.eq(0), oy.eq(0), og.eq(0),
                         og_p1.eq(1),
                         row0.eq(row_i), col0.eq(col_i), row0_p.eq(row_ip), col0_p.eq(col_ip),
                         x_last.eq(wm1 == 0), y_last.eq(hm1 == 0), ox_last.eq(owm1 == 0),
                         oy_last.eq(ohm1 == 0), og_last.eq(cm1 == 0)]

        with m.If(go):
            with m.If(x_last):
                m.d.sync += [ix.eq(0), x_last.eq(wm1 == 0)]
                with m.If(y_last):
                    m.d.sync += [iy.eq(0), y_last.eq(hm1 == 0), cbase.eq(cbase_p1),
                                 cbase_p1.eq(cbase_p1 + 1)]
                with m.Else():
                    m.d.sync += [iy.eq(iy + 1), y_last.eq(iy == hm2)]
            with m.Else():
                m.d.sync += [ix.eq(ix + 1), x_last.eq(ix == wm2)]
            with m.If(emit):
                with m.If(ox_last):
                    m.d.sync += [ox.eq(0), ox_last.eq(owm1 == 0), col0.eq(col_i),
                                 col0_p.eq(col_ip)]
                    with m.If(oy_last):
                        m.d.sync += [oy.eq(0), oy_last.eq(ohm1 == 0), row0.eq(row_i),
                                     row0_p.eq(row_ip)]
                        with m.If(og_last):
                            m.d.sync += emit.eq(0)              # and live (live_n)
                        with m.Else():
                            m.d.sync += [og.eq(og_p1), og_p1.eq(og_p1 + 1), og_last.eq(og == cm2),
                                         dist.eq(grp_m1),
                                         emit.eq(grp_is1)]
                    with m.Else():
                        m.d.sync += [oy.eq(oy + 1), oy_last.eq(oy == ohm2), row0.eq(row0_p),
                                     row0_p.eq(row0_p + sh_l), dist.eq(row_m1),
                                     emit.eq(row_is1)]
                with m.Else():
                    m.d.sync += [ox.eq(ox + 1), ox_last.eq(ox == owm2), col0.eq(col0_p),
                                 col0_p.eq(col0_p + sw_l), dist.eq(col_m1), emit.eq(col_is1)]
            with m.Else():      # emit == (dist == 0) always: not emitting means dist > 0
                m.d.sync += [dist.eq(dist - 1), emit.eq(dist == 1)]
        # the read address in one enable (setup_end and go never meet) and a data select
        # from registers: the step's decision reaches its flip-flops' enable only
        with m.If(setup_end | go_a):
            m.d.sync += addr.eq(Mux(setup_end, d.in_addr,
                                    Mux(x_last & y_last, cbase_p1, addr + d.in_pitch)))

        # ---- metadata pipeline: issue -> S1 (arena data) -> S2 (line buffer) -> S3 (BRAM
        # out) -> S4 (window shift) -> S5 (window, multiplier inputs); with mem_latency = L
        # the arena data arrives x = L - 1 cycles later and every stage from S2 on is x
        # later (index + x) ------------------------------------------------------------------------
        def chain(value, n, name):
            out = [value]
            for k in range(1, n + 1):
                s = Signal.like(value, name=f"{name}{k}") if isinstance(value, Signal) \
                    else Signal(len(value), name=f"{name}{k}")
                m.d.sync += s.eq(out[-1])
                out.append(s)
            return out

        rmask_i, cmask_i = Signal(3), Signal(3)
        for i in range(3):
            m.d.comb += [rmask_i[i].eq((row0 + i >= 0) & (row0 + i <= hm1)),
                         cmask_i[i].eq((col0 + i >= 0) & (col0 + i <= wm1))]
        emit_s = Signal()
        m.d.comb += emit_s.eq(go_s & emit)
        v = chain(go_s, 4 + x, "v")
        e = chain(emit_s, 5 + x, "e")
        elast_s = Signal()           # the channel's last output
        m.d.comb += elast_s.eq(go_s & og_adv)
        el = chain(elast_s, 5 + x, "el")
        ogc = chain(og, 5 + x, "og")
        rm = chain(rmask_i, 5 + x, "rm")
        cm = chain(cmask_i, 5 + x, "cm")
        xc = chain(ix[:xb], 2 + x, "x")
        xl_i = Signal()
        m.d.comb += xl_i.eq(x_last)
        xl = chain(xl_i, 2 + x, "xl")

        # S1 + x (arena data) -> S2 + x: arena byte registered, zero point subtracted
        d2 = Signal(signed(8))
        m.d.sync += d2.eq(self.rd_data)
        val2 = Signal(signed(9))
        m.d.comb += val2.eq(d2 - d.x_zp)
        # S2: line buffers (row y-2 in memory ry, row y-1 in the other), read-before-write
        ry = Signal()
        with m.If(v[2 + x] & xl[2 + x]):
            m.d.sync += ry.eq(~ry)
        raws = []
        for k in range(2):
            mem = Memory(shape=signed(9), depth=self.max_width, init=[])
            m.submodules[f"row{k}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [wp.addr.eq(xc[2 + x]), wp.data.eq(val2),
                         wp.en.eq(v[2 + x] & (ry == k)), rp.addr.eq(xc[2 + x]), rp.en.eq(1)]
            raw = Signal(signed(9), name=f"raw{k}")      # S4
            m.d.sync += raw.eq(rp.data)
            raws.append(raw)
        ry3, ry4 = Signal(), Signal()
        val3, val4 = Signal(signed(9)), Signal(signed(9))
        m.d.sync += [ry3.eq(ry), ry4.eq(ry3), val3.eq(val2), val4.eq(val3)]
        # S4: new column (top = row y-2 = memory ry), shift into the window
        col = [Mux(ry4, raws[1], raws[0]), Mux(ry4, raws[0], raws[1]), val4]
        win = [[Signal(signed(9), name=f"win{j}_{i}") for i in range(3)] for j in range(3)]
        with m.If(v[4 + x]):
            for i in range(3):
                m.d.sync += [win[0][i].eq(win[1][i]), win[1][i].eq(win[2][i]),
                             win[2][i].eq(col[i])]

        # ---- S5: multipliers (window cell x tap), adder tree with the bias ------------------
        e5, og5, rm5, cm5 = e[5 + x], ogc[5 + x], rm[5 + x], cm[5 + x]
        # freed from stage 5 whatever the latency: x cycles before the multipliers take
        # channel n's last window (cycle T + x when el[5] is high in T). WAR on the register
        # set: freed visible T + 1 -> may_r / nxt_r T + 2 -> first tap address of channel
        # n + 2 at T + 3 at the earliest -> data T + 3 + L -> set changes from T + 4 + L =
        # T + x + 5 on: 5 cycles after its last read, for every latency. WAR on the
        # requantiser ring (4 slots, channel n + 2 writes the slot of n - 2): written at the
        # end of T + 11 + L; channel n - 2's last window (at least two windows earlier)
        # reaches the requantiser's parameter read (S1 after stage 12 + x) by T + x + 6
        with m.If(el[5]):
            m.d.sync += [freed.eq(ogc[5] + 1), freed_p1.eq(ogc[5] + 2)]
        sel = og5[0]
        prods = []
        for i in range(3):
            for j in range(3):
                ok = rm5[i] & cm5[j]
                a = Signal(signed(9), name=f"a{i}{j}")
                if self._inject_bug == "pad_zero":
                    m.d.comb += a.eq(Mux(ok, win[j][i], -d.x_zp))
                else:
                    m.d.comb += a.eq(Mux(ok, win[j][i], 0))
                mul = Mult18(use_primitive=self.use_primitive)
                m.submodules[f"mul{i}{j}"] = mul
                m.d.comb += [mul.a.eq(a), mul.b.eq(Mux(sel, wset[1][i * 3 + j],
                                                            wset[0][i * 3 + j]))]
                prods.append(mul.p[:17].as_signed())
        b6, b7, b8 = Signal(signed(32)), Signal(signed(32)), Signal(signed(32))
        m.d.sync += [b6.eq(Mux(sel, bset[1], bset[0])), b7.eq(b6), b8.eq(b7)]
        terms = prods + [b8]                     # all valid at S8
        level = 0
        while len(terms) > 1:
            nxt = []
            for k in range(0, len(terms), 2):
                s = Signal(signed(32), name=f"t{level}_{k // 2}")
                m.d.sync += s.eq(terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k])
                nxt.append(s)
            terms = nxt
            level += 1
        assert level == 4
        acc12 = terms[0]
        v12 = chain(e5, 7, "mv")[7]
        slot12 = chain(og5[:2], 7, "slot")[7]
        m.d.comb += [rq.i_stream.valid.eq(v12), rq.i_stream.payload.acc[0].eq(acc12),
                     rq.i_stream.payload.ch[0].eq(slot12)]

        # ---- write requests --------------------------------------------------------------------
        # (counters with registered "at last value" flags, set when the setup ends -- long
        # before the first write request -- so no compare chain sits before the enables)
        wx, wy, wc, wp_ = Signal(16), Signal(16), Signal(16), Signal(24)
        wx_last, wy_last, wc_last = Signal(), Signal(), Signal()
        o = rq.o_stream
        m.d.comb += [self.wr_en.eq(o.valid & busy), self.wr_pix.eq(wp_), self.wr_ch.eq(wc),
                     self.wr_data.eq(o.payload[0])]
        with m.If(self.start):
            m.d.sync += [wx.eq(0), wy.eq(0), wc.eq(0), wp_.eq(0)]
        with m.Elif(setup_end):
            m.d.sync += [wx_last.eq(owm1 == 0), wy_last.eq(ohm1 == 0), wc_last.eq(cm1 == 0)]
        with m.Elif(o.valid & busy):
            m.d.sync += [wx.eq(wx + 1), wp_.eq(wp_ + 1), wx_last.eq(wx == owm2)]
            with m.If(wx_last):
                m.d.sync += [wx.eq(0), wx_last.eq(owm1 == 0), wy.eq(wy + 1),
                             wy_last.eq(wy == ohm2)]
                with m.If(wy_last):
                    m.d.sync += [wy.eq(0), wy_last.eq(ohm1 == 0), wp_.eq(0), wc.eq(wc + 1),
                                 wc_last.eq(wc == cm2)]
                    with m.If(wc_last):
                        m.d.sync += [busy.eq(0), lrun.eq(0)]
        return m
