"""Pooling unit: 3x3 max pool, 3x3 average pool and global average pool on int8 lanes.

Stream format
-------------
``i_stream`` carries one pixel of ``lanes`` channels per beat; a tensor streams as channel
groups of ``lanes`` channels, each group one raster scan (rows top to bottom, pixels left to
right), groups back to back. ``o_stream`` carries the output pixels in the same order.

Geometry (run time, :meth:`PoolParams.config`)
---------------------------------------------
The unit walks the positions ``(y, x)`` of an extended raster ``YE x XE`` that covers every
window: the input ``H x W`` plus the bottom/right padding (and ceil-mode overhang) cells that
some window ends on. Input positions take one beat; the few padding positions (at most one
column per row and one row per group for 3x3/2 with pad 1) are generated inside, one cycle
each, without input. A line buffer (one block RAM word per column holding its two previous
rows, row length set at run time) and a 3x3 register window give the window whose
bottom-right cell is the current position; window ``(oy, ox)`` is
complete at ``(s*oy - pad_top + 2, s*ox - pad_left + 2)``, and the cells outside the input
(top/left/bottom/right padding) are masked: padding never wins a max and is not summed.

Modes
-----
* ``MAX``: comparator tree, one output per cycle per lane whenever a window completes
  (latency 4 cycles from the window's last beat: line buffer 2, column max 1, window max
  into the output register 1).
* ``AVG``: com.microsoft QLinearAveragePool, bit-exact (docs/arithmetic.md "AvgPool", the
  integer formulation of ``arith.avg_window_int``). Each completed window goes to
  :class:`AvgFinisher`, a sequential per-lane datapath (all lanes in lock step) in two
  halves that overlap on consecutive windows: the front sums the 9 taps
  ``D = round_sig(Ms*|x - x_zp|, 24)`` (one 24x8 :class:`hwgen.hw.dsp.UMul` per lane) with
  float32 rounding, one tap per 2 cycles; the back makes the two correctly rounded
  divisions (by the count, then by the output scale's significand) on one restoring divider
  per lane producing ``bits_per_cycle`` quotient bits per cycle, then the float32 add of
  the zero point and the round half to even. No general divider, no float unit, every step
  registered. Initiation interval ``PoolParams.avg_interval`` =
  max(25, 12 + 2*ceil(26/b)) cycles per window: 30 with the default b = 3, 25 from b = 5.
  The window stream stalls while the finisher is busy. For 3x3/2 a window completes every
  4 input pixels on average, so average pooling runs at about 1/7 of the input rate
  (ShuffleNet's only AvgPool, the stride-2 shortcut, is a small layer: about 90k output
  pixels for ShuffleNet 1x g=3, i.e. 2.7M / lanes cycles).
* ``GLOBAL``: com.microsoft QLinearGlobalAveragePool: per-lane int sum of the group's
  ``H*W`` pixels plus ``-x_zp*H*W``, then the conv requantiser
  (:class:`hwgen.hw.requant.Requantizer`, one lane, time-shared by the ``lanes`` lanes: its
  ``lanes`` results per group are due once per ``H*W`` input cycles). One output pixel per
  channel group.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwgen.golden import arith
from hwgen.ir import pool_out_size

from .dsp import UMul
from .requant import Requantizer, RequantParams, encode_scales

__all__ = ["PoolMode", "PoolParams", "PoolUnit", "AvgFinisher"]

K = 3  # window size of the windowed modes (MaxPool / AvgPool 3x3)


class PoolMode(enum.IntEnum):
    MAX = 0
    AVG = 1
    GLOBAL = 2


@dataclass(frozen=True)
class PoolParams:
    """Structure of a :class:`PoolUnit`.

    Parameters
    ----------
    lanes: channels per beat.
    max_width: largest extended row length ``XE`` (input width + right padding); the line
        buffer depth.
    max_height: largest extended column length ``YE``.
    bits_per_cycle: quotient bits per cycle of the average-pool divider (1..13).
    use_primitive: MULT18X18D instances (True), behavioural multipliers (False), or decided
        by the platform (None).
    max_pool, avg_pool, global_pool: which modes are built (the average path is most of
        the area: leave it out for networks without AvgPool).
    _inject_bug: test-only: the max tree lets a padding cell win (as 0).
    """
    lanes: int = 4
    max_width: int = 64
    max_height: int = 64
    bits_per_cycle: int = 3
    use_primitive: bool | None = None
    max_pool: bool = True
    avg_pool: bool = True
    global_pool: bool = True
    _inject_bug: bool = False

    def __post_init__(self):
        for name in ("lanes", "max_width", "max_height", "bits_per_cycle"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PoolParams.{name} must be a positive int, got {v!r}")
        if self.bits_per_cycle > 13:
            raise ValueError(f"PoolParams.bits_per_cycle must be at most 13, "
                             f"got {self.bits_per_cycle}")
        if not (self.max_pool or self.avg_pool or self.global_pool):
            raise ValueError("PoolParams: build at least one of max_pool, avg_pool, global_pool")

    def built(self, mode: PoolMode) -> bool:
        return {PoolMode.MAX: self.max_pool, PoolMode.AVG: self.avg_pool,
                PoolMode.GLOBAL: self.global_pool}[PoolMode(mode)]

    @property
    def pixel(self) -> data.ArrayLayout:
        return data.ArrayLayout(signed(8), self.lanes)

    @property
    def avg_interval(self) -> int:
        """Cycles per window of the average path (:class:`AvgFinisher`): max(front, back)."""
        return max(AvgFinisher.FRONT, AvgFinisher.back_cycles(self.bits_per_cycle))

    @property
    def y_width(self) -> int:
        return max(self.max_height, 2).bit_length()

    @property
    def x_width(self) -> int:
        return max(self.max_width, 2).bit_length()

    # --- run-time configuration --------------------------------------------------------
    def config(self, mode: PoolMode, height: int, width: int, *, stride: int = 2,
               padding=(0, 0, 0, 0), ceil_mode: bool = False, count_include_pad: bool = False,
               x_scale: float = 1.0, x_zp: int = 0, y_scale: float = 1.0, y_zp: int = 0,
               offset: int = 0, lo: int = -128, hi: int = 127) -> dict:
        """Register values for one pooling layer (the 3x3 window for MAX/AVG).

        ``padding`` is ``(top, left, bottom, right)``; ``offset`` is 128 for a model stored
        as uint8 (QLinearAveragePool adds the stored zero point). An AVG layer whose window
        is the whole input with no padding is run as GLOBAL (onnxruntime does the same).

        Raises ValueError naming the limit when the layer does not fit this unit.
        """
        mode = PoolMode(mode)
        t, l, b, r = padding
        if mode == PoolMode.AVG and (height, width) == (K, K) and (t, l, b, r) == (0, 0, 0, 0):
            mode = PoolMode.GLOBAL
        if not self.built(mode):
            raise ValueError(f"this pool unit was built without {mode.name} pooling "
                             f"(PoolParams.{mode.name.lower()}_pool=False)")
        cfg = dict(mode=int(mode), height=height, width=width, stride2=0, pad_top=0,
                   pad_left=0, out_h=1, out_w=1, ye=height, xe=width, cip=0, x_zp=x_zp,
                   ms=0, my=0, exp_bias=0, y_zp=0, offset=0, lo=lo, hi=hi, g_param=0, g_bias=0)
        if mode == PoolMode.GLOBAL:
            if height * width >= 1 << 16:
                raise ValueError(f"global average pool over {height}x{width} exceeds 65535 pixels")
            s = arith.gavg_scale(x_scale, y_scale, height * width)
            cfg.update(g_param=int(encode_scales(s)), y_zp=y_zp, g_bias=-x_zp * height * width)
            if height > self.max_height or width > self.max_width:
                raise ValueError(f"input {height}x{width} exceeds the pool unit's "
                                 f"{self.max_height}x{self.max_width}")
            return cfg
        if stride not in (1, 2):
            raise ValueError(f"pool stride {stride} not supported (1 or 2)")
        if max(padding) >= K or min(padding) < 0:
            raise ValueError(f"pool padding {padding} must be in 0..{K - 1}")
        oh = pool_out_size(height, K, stride, t, b, ceil_mode)
        ow = pool_out_size(width, K, stride, l, r, ceil_mode)
        if oh < 1 or ow < 1:
            raise ValueError(f"input {height}x{width} is smaller than the 3x3 pooling window")
        ye = max(height, (oh - 1) * stride - t + K)
        xe = max(width, (ow - 1) * stride - l + K)
        if ye > self.max_height or xe > self.max_width:
            raise ValueError(f"pooling {height}x{width} (padded walk {ye}x{xe}) exceeds the pool "
                             f"unit's {self.max_height}x{self.max_width}; "
                             f"raise max_width/max_height")
        cfg.update(stride2=int(stride == 2), pad_top=t, pad_left=l, out_h=oh, out_w=ow,
                   ye=ye, xe=xe, cip=int(count_include_pad))
        if mode == PoolMode.AVG:
            ms, es = arith.f32_parts(np.float32(x_scale))
            my, ey = arith.f32_parts(np.float32(y_scale))
            if not (1 << 23 <= int(ms) < 1 << 24 and 1 << 23 <= int(my) < 1 << 24):
                raise ValueError("average pool scales must be normal float32 numbers")
            cfg.update(ms=int(ms), my=int(my), exp_bias=int(es) - int(ey), y_zp=y_zp + offset,
                       offset=int(offset != 0))
            if not -200 <= cfg["exp_bias"] <= 200:
                raise ValueError("average pool x_scale / y_scale ratio out of range")
        return cfg


def _leading_one(bits):
    """(any set, index of the highest set bit) of ``bits`` (a list of 1-bit values), as a
    balanced tree of 2:1 muxes (log2 depth, unlike a priority chain)."""
    if len(bits) == 1:
        return bits[0], Const(0, 0)
    h = 1 << ((len(bits) - 1).bit_length() - 1)       # largest power of two below len
    any_lo, idx_lo = _leading_one(bits[:h])
    any_hi, idx_hi = _leading_one(bits[h:])
    w = (h - 1).bit_length()
    return any_hi | any_lo, Mux(any_hi, Cat(idx_hi, Const(0, w - len(idx_hi)), Const(1, 1)),
                                Cat(idx_lo, Const(0, w - len(idx_lo)), Const(0, 1)))


def _bitlen(m: Module, v, name: str):
    """Bit length of an unsigned value (index of the leading one + 1; 0 for 0)."""
    out = Signal(range(len(v) + 1), name=name)
    found, idx = _leading_one([v[i] for i in range(len(v))])
    m.d.comb += out.eq(Mux(found, idx + 1, 0))
    return out


def _round_sig(m: Module, mag, bits: int, name: str):
    """Round the unsigned ``mag`` to ``bits`` significant bits, half to even (comb).

    Returns a value of the same scale (dropped bits zero), one bit wider (carry out of the
    top). No shifter and no leading-one count: bit ``i`` is dropped iff ``mag`` has a one at
    or above ``i + bits`` (a suffix OR), and guard / sticky / lsb are AND-OR reductions, so
    the only carry chain is the final increment.
    """
    w = len(mag)
    nm = w - bits                                   # positions that can be dropped
    res = Signal(w + 1, name=f"{name}_res")
    if nm <= 0:
        m.d.comb += res.eq(mag)
        return res
    suf = [None] * (w + 1)
    suf[w] = Const(0, 1)
    for j in range(w - 1, bits - 1, -1):
        suf[j] = Signal(name=f"{name}_suf{j}")
        m.d.comb += suf[j].eq(mag[j] | suf[j + 1])
    mask = [suf[i + bits] for i in range(nm)]      # bit i is below the kept 24
    one = []                                        # one-hot: the lowest kept bit
    for i in range(nm + 1):
        if i == 0:
            one.append(~mask[0])
        elif i < nm:
            one.append(mask[i - 1] & ~mask[i])
        else:
            one.append(mask[nm - 1])
    guard = Signal(name=f"{name}_guard")
    sticky = Signal(name=f"{name}_sticky")
    lsb = Signal(name=f"{name}_lsb")
    m.d.comb += [
        guard.eq(_or_all([mag[i - 1] & one[i] for i in range(1, nm + 1)])),
        sticky.eq(_or_all([mag[i] & mask[i + 1] for i in range(nm - 1)])),
        lsb.eq(_or_all([mag[i] & one[i] for i in range(nm + 1)])),
    ]
    kept = Signal(w, name=f"{name}_kept")
    inc = Signal(w, name=f"{name}_inc")
    m.d.comb += [
        kept.eq(mag & ~Cat(*mask, Const(0, bits))),
        inc.eq(Mux(guard & (sticky | lsb), Cat(*one, Const(0, w - nm - 1)), 0)),
        res.eq(kept + inc),
    ]
    return res


def _max3(v):
    """Max of three signed values: the three comparisons in parallel, then a select (one
    comparator delay instead of a chain of two)."""
    a, b, c = v
    ab, ac, bc = a >= b, a >= c, b >= c
    return Mux(ab & ac, a, Mux(~ab & bc, b, c))


def _or_all(terms):
    if not terms:
        return Const(0, 1)
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out


class AvgFinisher(wiring.Component):
    """QLinearAveragePool arithmetic of one 3x3 window per lane, sequential, lanes in lock step.

    Two halves overlap on consecutive windows, every step registered (no long paths):

    * front: accept 1 cycle; the 9 taps are fed every other cycle through the 24x8
      multiplier (latency 4) and rounded (``D``, 1 register); the float32 running sum is a
      2-cycle loop in sign-magnitude form (cycle 1: ``|S| + |D|``, ``|S| - |D|``,
      ``|D| - |S|`` in parallel and a select; cycle 2: the rounding to 24 bits): 25 cycles;
    * back: normalise 2, divide by the count ``ceil(26/b)``, round 1, divide by ``My``
      ``ceil(26/b)``, round 1, zero point 4, round to an integer and clamp 3, idle 1
      (``b = bits_per_cycle``; each divider step is one subtraction whose sign selects).

    :attr:`interval` = max(front, back) cycles per window (30 with b = 3); the result waits
    on ``o_stream`` (the back stalls at its last step until it is taken). Per lane: one 24x8
    :class:`hwgen.hw.dsp.UMul` (2 MULT18X18D), three 38-bit adders and a rounder for the
    sum, a 26-bit divider step ``b`` times.

    Members
    -------
    i_stream: In(stream of {taps: 9 x pixel (row-major), mask: 9 bits (1 = inside the
        input), count: divisor 1..9}).
    o_stream: Out(stream of pixel): int8 results.
    x_zp, ms, my, exp_bias, y_zp (stored), offset (1: uint8 model, stored values +128),
    lo, hi: config (:meth:`PoolParams.config`).
    """

    DIV_STEPS = 26
    FRONT = 25

    @staticmethod
    def back_cycles(bits_per_cycle: int) -> int:
        c = -(-AvgFinisher.DIV_STEPS // bits_per_cycle)
        return 2 + 2 * (c + 1) + 4 + 3 + 1

    def __init__(self, params: PoolParams):
        self.params = params
        self.div_cycles = -(-self.DIV_STEPS // params.bits_per_cycle)
        self.interval = params.avg_interval
        px = params.pixel
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "taps": data.ArrayLayout(px, 9), "mask": unsigned(9), "count": unsigned(4)}))),
            "o_stream": Out(stream.Signature(px)),
            "x_zp": In(signed(8)),
            "ms": In(unsigned(24)),
            "my": In(unsigned(24)),
            "exp_bias": In(signed(9)),
            "y_zp": In(signed(10)),
            "offset": In(1),
            "lo": In(signed(8), init=-128),
            "hi": In(signed(8), init=127),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        ub = p.bits_per_cycle
        qbits = self.div_cycles * ub            # quotient bits produced (>= 26)

        taps = Signal(data.ArrayLayout(p.pixel, 9))
        mask = Signal(9)
        count = Signal(4)
        count_b = Signal(4)                     # the back half's copy of the count
        tap_i = Signal(range(10))               # taps fed to the multipliers
        acc_n = Signal(range(10))               # taps summed
        phase = Signal()                        # feed every other cycle
        div_n = Signal(range(self.div_cycles + 1))
        second = Signal()                       # 0: dividing by the count, 1: by My
        out_valid = Signal()
        feed = Signal()
        loop_b = Signal()                       # second cycle of the running-sum loop
        divisor = Signal(24)
        m.d.comb += [self.o_stream.valid.eq(out_valid), feed.eq(0)]

        # the count normalised to [2**23, 2**24): count = cnt_norm * 2**cnt_exp
        cnt_norm = Signal(24)
        cnt_exp = Signal(signed(6))
        with m.Switch(count_b):
            for c in range(1, 16):
                sh = 24 - c.bit_length()
                with m.Case(c):
                    m.d.comb += [cnt_norm.eq(c << sh), cnt_exp.eq(-sh)]

        tsel = Mux(tap_i < 9, tap_i, 0)
        lanes = []
        for ln in range(p.lanes):
            L = {}
            mul = UMul(24, 8, use_primitive=p.use_primitive)
            m.submodules[f"mul{ln}"] = mul
            assert mul.latency == 4
            d = Signal(signed(10), name=f"d{ln}")
            m.d.comb += d.eq(taps[tsel][ln] - self.x_zp)
            m.d.comb += [mul.a.eq(self.ms), mul.b.eq(Mux(d < 0, -d, d))]
            # sign, inside-the-input flag and "a tap was fed" travel beside the multiplier
            cur = Cat(d < 0, mask.bit_select(tsel, 1), feed)
            for k in range(4):
                r = Signal(3, name=f"inf{ln}_{k}")
                m.d.sync += r.eq(cur)
                cur = r
            dr = _round_sig(m, mul.p, 24, f"dq{ln}")         # |D| = float32(x_scale * |d|)
            dmag = Signal(33, name=f"Dm{ln}")
            dsgn = Signal(name=f"Ds{ln}")
            dval = Signal(name=f"Dv{ln}")
            m.d.sync += [dmag.eq(Mux(cur[1], dr, 0)), dsgn.eq(cur[0]), dval.eq(cur[2])]
            # running sum S in sign-magnitude: (sacc, macc)
            macc = Signal(37, name=f"Sm{ln}")
            sacc = Signal(name=f"Ss{ln}")
            s_sum = Signal(38, name=f"Ssum{ln}")
            s_d1 = Signal(signed(39), name=f"Sd1_{ln}")
            s_d2 = Signal(38, name=f"Sd2_{ln}")
            m.d.comb += [s_sum.eq(macc + dmag), s_d1.eq(macc - dmag), s_d2.eq(dmag - macc)]
            tm = Signal(38, name=f"Tm{ln}")          # |S + D|, registered
            ts = Signal(name=f"Ts{ln}")
            same = sacc == dsgn
            with m.If(dval):
                m.d.sync += [
                    tm.eq(Mux(same, s_sum, Mux(s_d1 >= 0, s_d1[:38], s_d2))),
                    ts.eq(Mux(same | (s_d1 >= 0), sacc, dsgn)),
                ]
            trnd = _round_sig(m, tm, 24, f"sq{ln}")         # S = float32(S + D)
            L.update(macc=macc, sacc=sacc, tm=tm, ts=ts, trnd=trnd, dval=dval)
            # back half: copy of the sum, normalisation
            sbm = Signal(37, name=f"Sbm{ln}")
            sbs = Signal(name=f"Sbs{ln}")
            sbl = Signal(range(38), name=f"Sbl{ln}")
            sbl_c = _bitlen(m, sbm, f"Sblc{ln}")
            snorm = Signal(24, name=f"Sn{ln}")
            m.d.comb += snorm.eq(Mux(sbl > 24, sbm >> (sbl - 24)[:6], sbm << (24 - sbl)[:5]))
            L.update(sbm=sbm, sbs=sbs, sbl=sbl, sbl_c=sbl_c, snorm=snorm)
            L["zero"] = Signal(name=f"zero{ln}")
            L["exp"] = Signal(signed(10), name=f"e{ln}")
            L["rem"] = Signal(25, name=f"rem{ln}")
            L["q"] = Signal(qbits, name=f"q{ln}")
            L["res"] = Signal(signed(8), name=f"res{ln}")
            m.d.comb += self.o_stream.payload[ln].eq(L["res"])
            # restoring division, ub steps per cycle; the subtraction's sign is the bit
            r = L["rem"]
            qn = L["q"]
            for u in range(ub):
                diff = Signal(signed(26), name=f"df{ln}_{u}")
                m.d.comb += diff.eq(r - divisor)
                r2 = Signal(25, name=f"r{ln}_{u}")
                m.d.comb += r2.eq(Mux(diff >= 0, diff[:25], r) << 1)
                q2 = Signal(qbits, name=f"qn{ln}_{u}")
                m.d.comb += q2.eq(Cat(diff >= 0, qn[:-1]))
                r, qn = r2, q2
            L["rem_next"], L["q_next"] = r, qn
            # rounding of the quotient to 24 bits, half to even
            q = L["q"]
            top = q[qbits - 1]
            mant = Signal(24, name=f"mant{ln}")
            guard = Signal(name=f"guard{ln}")
            sticky = Signal(name=f"sticky{ln}")
            low_t = q[:qbits - 25] if qbits > 25 else Const(0, 1)
            low_f = q[:qbits - 26] if qbits > 26 else Const(0, 1)
            m.d.comb += [
                mant.eq(Mux(top, q[qbits - 24:], q[qbits - 25:qbits - 1])),
                guard.eq(Mux(top, q[qbits - 25], q[qbits - 26])),
                sticky.eq(Mux(top, low_t != 0, low_f != 0) | (L["rem"] != 0)),
            ]
            mr = Signal(25, name=f"mr{ln}")
            m.d.comb += mr.eq(mant + (guard & (sticky | mant[0])))
            L["mant_r"] = Signal(24, name=f"mrn{ln}")
            m.d.comb += L["mant_r"].eq(Mux(mr[24], 1 << 23, mr[:24]))
            L["exp_r"] = Signal(signed(10), name=f"er{ln}")
            m.d.comb += L["exp_r"].eq(L["exp"] - 23 - ~top + mr[24])
            # zero point: v = mant * 2**ve; |v| in [1/4, 512) is exact at 2**-26
            L["ve"] = Signal(signed(11), name=f"ve{ln}")
            L["v26"] = Signal(36, name=f"v26_{ln}")
            L["vflag"] = Signal(2, name=f"vf{ln}")        # 1: result is y_zp, 2: saturate
            L["tot"] = Signal(signed(40), name=f"tot{ln}")
            L["tmag"] = Signal(40, name=f"tmag{ln}")
            L["tneg"] = Signal(name=f"tneg{ln}")
            L["w"] = Signal(41, name=f"w{ln}")
            w = _round_sig(m, L["tmag"], 24, f"w{ln}")
            L["w_c"] = w
            qi = Signal(16, name=f"qi{ln}")
            wr = L["w"]
            m.d.comb += qi.eq((wr >> 26) + (wr[25] & ((wr[:25] != 0) | wr[26])))
            qs = Signal(signed(17), name=f"qs{ln}")
            m.d.comb += qs.eq(Mux(L["tneg"], -qi, qi) - Mux(self.offset, 128, 0))
            L["qs"] = qs
            L["qr"] = Signal(signed(17), name=f"qr{ln}")
            lanes.append(L)

        # front: accept a window, feed the 9 taps, sum them; then hand the sums to the back
        back_idle = Signal()
        handover = Signal()
        with m.FSM(name="front"):
            with m.State("IDLE"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(self.i_stream.valid):
                    m.d.sync += [taps.eq(self.i_stream.payload.taps),
                                 mask.eq(self.i_stream.payload.mask),
                                 count.eq(self.i_stream.payload.count),
                                 tap_i.eq(0), acc_n.eq(0), phase.eq(0)]
                    m.d.sync += [L["macc"].eq(0) for L in lanes]
                    m.d.sync += [L["sacc"].eq(0) for L in lanes]
                    m.next = "TAPS"
            with m.State("TAPS"):
                m.d.sync += phase.eq(~phase)
                with m.If((tap_i < 9) & ~phase):
                    m.d.comb += feed.eq(1)
                    m.d.sync += tap_i.eq(tap_i + 1)
                m.d.sync += loop_b.eq(lanes[0]["dval"])
                with m.If(loop_b):
                    m.d.sync += acc_n.eq(acc_n + 1)
                    for L in lanes:
                        m.d.sync += [L["macc"].eq(L["trnd"]), L["sacc"].eq(L["ts"])]
                with m.If((acc_n == 9) & back_idle):
                    m.d.comb += handover.eq(1)
                    for L in lanes:
                        m.d.sync += [L["sbm"].eq(L["macc"]), L["sbs"].eq(L["sacc"])]
                    m.d.sync += count_b.eq(count)
                    m.next = "IDLE"
        # back: normalise, divide twice, add the zero point, round, clamp
        zp26 = Signal(signed(40))
        m.d.comb += zp26.eq(self.y_zp.as_signed() << 26)
        with m.FSM(name="back") as back:
            with m.State("IDLE"):
                with m.If(handover):
                    m.next = "NORM1"
            with m.State("NORM1"):
                for L in lanes:
                    m.d.sync += L["sbl"].eq(L["sbl_c"])
                m.next = "NORM2"
            with m.State("NORM2"):
                m.d.sync += [div_n.eq(0), second.eq(0), divisor.eq(cnt_norm)]
                for L in lanes:
                    m.d.sync += [L["zero"].eq(L["sbm"] == 0), L["rem"].eq(L["snorm"]),
                                 L["q"].eq(0), L["exp"].eq(L["sbl"] - 24 - cnt_exp)]
                m.next = "DIV"
            with m.State("DIV"):
                m.d.sync += div_n.eq(div_n + 1)
                for L in lanes:
                    m.d.sync += [L["rem"].eq(L["rem_next"]), L["q"].eq(L["q_next"])]
                with m.If(div_n == self.div_cycles - 1):
                    m.next = "ROUND"
            with m.State("ROUND"):
                m.d.sync += [div_n.eq(0), second.eq(1), divisor.eq(self.my)]
                for L in lanes:
                    m.d.sync += [L["rem"].eq(L["mant_r"]), L["q"].eq(0), L["exp"].eq(L["exp_r"])]
                with m.If(second):
                    m.next = "ZP1"
                with m.Else():
                    m.next = "DIV"
            with m.State("ZP1"):
                # rem: the 24-bit significand of v = mean / y_scale; exp: its exponent
                for L in lanes:
                    m.d.sync += L["ve"].eq(L["exp"] + self.exp_bias)
                m.next = "ZP2"
            with m.State("ZP2"):
                for L in lanes:
                    ve = L["ve"]
                    m.d.sync += [
                        L["v26"].eq(L["rem"][:24] << (ve + 26)[:4]),
                        L["vflag"].eq(Mux(L["zero"] | (ve <= -26), 1, Mux(ve >= -14, 2, 0))),
                    ]
                m.next = "ZP3"
            with m.State("ZP3"):
                for L in lanes:
                    plus = zp26 + L["v26"]
                    minus = zp26 - L["v26"]
                    big = Mux(L["sbs"], -(1 << 37), 1 << 37)      # |v| >= 512: saturates
                    m.d.sync += L["tot"].eq(Mux(L["vflag"] == 1, zp26,
                                                Mux(L["vflag"] == 2, big,
                                                    Mux(L["sbs"], minus, plus))))
                m.next = "ZP4"
            with m.State("ZP4"):
                for L in lanes:
                    m.d.sync += [L["tmag"].eq(Mux(L["tot"] < 0, -L["tot"], L["tot"])),
                                 L["tneg"].eq(L["tot"] < 0)]
                m.next = "W"
            with m.State("W"):
                for L in lanes:
                    m.d.sync += L["w"].eq(L["w_c"])              # float32(v + y_zp)
                m.next = "Q"
            with m.State("Q"):
                for L in lanes:
                    m.d.sync += L["qr"].eq(L["qs"])              # rne to an integer
                m.next = "OUT"
            with m.State("OUT"):
                with m.If(~out_valid):               # the previous result has been taken
                    for L in lanes:
                        m.d.sync += L["res"].eq(Mux(L["qr"] < self.lo, self.lo,
                                                    Mux(L["qr"] > self.hi, self.hi, L["qr"])))
                    m.d.sync += out_valid.eq(1)
                    m.next = "IDLE"
        m.d.comb += back_idle.eq(back.ongoing("IDLE"))
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += out_valid.eq(0)
        return m


class PoolUnit(wiring.Component):
    """3x3 max / 3x3 average / global average pooling over ``lanes`` int8 channels per beat.

    Throughput: MAX one input beat per cycle and one output beat per completed window (plus
    one internal cycle per extended padding position); AVG one window per
    :attr:`AvgFinisher.interval` cycles; GLOBAL one input beat per cycle (its output pixel
    per channel group takes ``lanes + 14`` cycles in the time-shared requantiser, hidden
    behind the next group unless ``H*W`` is smaller). Latency MAX 4 cycles from the
    window's last input beat. Backpressure on ``o_stream`` stalls the whole unit.

    Members
    -------
    i_stream: In(stream of pixel); o_stream: Out(stream of pixel).
    Config (stable during a layer; values from :meth:`PoolParams.config`): mode, height,
    width, ye, xe, stride2, pad_top, pad_left, out_h, out_w, cip (count_include_pad),
    x_zp, ms, my, exp_bias, y_zp, offset, lo, hi, g_param, g_bias.
    busy: Out(1): a layer is in progress (walk not back at the origin, or results in
    flight); change the config only while it is low.
    """

    def __init__(self, params: PoolParams):
        if not isinstance(params, PoolParams):
            raise TypeError(f"expected PoolParams, got {type(params).__name__}")
        self.params = p = params
        self._fin = AvgFinisher(p) if p.avg_pool else None
        yw, xw = p.y_width, p.x_width
        super().__init__({
            "i_stream": In(stream.Signature(p.pixel)),
            "o_stream": Out(stream.Signature(p.pixel)),
            "mode": In(2),
            "height": In(yw), "width": In(xw), "ye": In(yw), "xe": In(xw),
            "stride2": In(1), "pad_top": In(2), "pad_left": In(2),
            "out_h": In(yw), "out_w": In(xw), "cip": In(1),
            "x_zp": In(signed(8)), "ms": In(unsigned(24)), "my": In(unsigned(24)),
            "exp_bias": In(signed(9)), "y_zp": In(signed(10)), "offset": In(1),
            "lo": In(signed(8), init=-128), "hi": In(signed(8), init=127),
            "g_param": In(unsigned(30)), "g_bias": In(signed(24)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        lanes = p.lanes
        yw, xw = p.y_width, p.x_width
        is_max = self.mode == PoolMode.MAX
        is_avg = self.mode == PoolMode.AVG
        is_glob = self.mode == PoolMode.GLOBAL
        en = Signal()

        # --- stage A: position walk over the extended raster ------------------------
        y = Signal(yw)
        x = Signal(xw)
        virt = Signal()
        m.d.comb += virt.eq((y >= self.height) | (x >= self.width))
        a_valid = Signal()
        m.d.comb += [a_valid.eq(virt | self.i_stream.valid),
                     self.i_stream.ready.eq(en & ~virt)]
        # window (oy, ox) ends on padded row 2 + s*oy and padded column 2 + s*ox
        ry = Signal(yw + 1)
        rx = Signal(xw + 1)
        m.d.comb += [ry.eq(y + self.pad_top - (K - 1)), rx.eq(x + self.pad_left - (K - 1))]
        oy = Mux(self.stride2, ry >> 1, ry)
        ox = Mux(self.stride2, rx >> 1, rx)
        row_hit = Signal()
        col_hit = Signal()
        x_last = Signal()
        y_last = Signal()
        m.d.comb += [
            row_hit.eq((y + self.pad_top >= K - 1) & ~(self.stride2 & ry[0]) & (oy < self.out_h)),
            col_hit.eq((x + self.pad_left >= K - 1) & ~(self.stride2 & rx[0]) & (ox < self.out_w)),
            x_last.eq(x == self.xe - 1), y_last.eq(y == self.ye - 1),
        ]
        with m.If(en & a_valid):
            with m.If(x_last):
                m.d.sync += x.eq(0)
                with m.If(y_last):
                    m.d.sync += y.eq(0)
                with m.Else():
                    m.d.sync += y.eq(y + 1)
            with m.Else():
                m.d.sync += x.eq(x + 1)
        m.d.comb += en.eq(0)

        # --- line buffer and 3x3 window (latency 2 enabled cycles) ---------------------
        # One block RAM word per column holds that column's two previous rows; the read of
        # column x (stage A) returns rows y-2 and y-1, and stage B writes back rows y-1 and
        # y. Row length is the run-time ``xe`` (the walk restarts x at 0), so the buffer
        # serves every layer width up to ``max_width``.
        colw = data.ArrayLayout(p.pixel, K - 1)
        m.submodules.lines = lines = Memory(shape=colw, depth=p.max_width, init=[])
        lwp = lines.write_port()
        lrp = lines.read_port(transparent_for=(lwp,))   # width-1 rows rewrite the same word
        b_valid = Signal()
        b_x = Signal(xw)
        b_data = Signal(p.pixel)
        m.d.comb += [lrp.addr.eq(x), lrp.en.eq(en)]
        with m.If(en):
            m.d.sync += [b_valid.eq(a_valid), b_x.eq(x),
                         b_data.eq(Mux(virt, 0, self.i_stream.payload.as_value()))]
        new_col = [lrp.data[i] for i in range(K - 1)] + [b_data]
        m.d.comb += [lwp.addr.eq(b_x), lwp.en.eq(en & b_valid)]
        m.d.comb += [lwp.data[i].eq(new_col[i + 1]) for i in range(K - 1)]
        win = Signal(data.ArrayLayout(data.ArrayLayout(p.pixel, K), K))  # win[col][row]
        with m.If(en & b_valid):
            for j in range(K - 1):
                m.d.sync += win[j].eq(win[j + 1])
            for i in range(K):
                m.d.sync += win[K - 1][i].eq(new_col[i])
        # which window rows / columns lie inside the input (registered with the pixel)
        rv_a = Cat(*[(y + i >= K - 1) & (y + i - (K - 1) < self.height) for i in range(K)])
        cv_a = Cat(*[(x + j >= K - 1) & (x + j - (K - 1) < self.width) for j in range(K)])
        side_a = Cat(a_valid, row_hit & col_hit, (y == 0) & (x == 0), y_last & x_last,
                     rv_a, cv_a)
        s1 = Signal(len(side_a))
        s2 = Signal(len(side_a))
        with m.If(en):
            m.d.sync += [s1.eq(side_a), s2.eq(s1)]
        v2, emit2, first2, last2 = s2[0], s2[1], s2[2], s2[3]
        rv = [s2[4 + i] for i in range(K)]
        cv = [s2[4 + K + j] for j in range(K)]
        mask9 = Cat(*[rv[i] & cv[j] for i in range(K) for j in range(K)])
        nrow = Signal(2)
        ncol = Signal(2)
        m.d.comb += [nrow.eq(rv[0] + rv[1] + rv[2]), ncol.eq(cv[0] + cv[1] + cv[2])]
        count = Signal(4)
        with m.Switch(Cat(ncol, nrow)):
            for a in range(1, K + 1):
                for b in range(1, K + 1):
                    with m.Case(b | a << 2):
                        m.d.comb += count.eq(Mux(self.cip, K * K, a * b))

        max_valid = Signal()
        max_data = Signal(p.pixel)
        emit3 = Signal()
        gbusy = Signal()
        gout_valid = Signal()
        gout = Signal(p.pixel)
        glob_push = Signal()
        fin = self._fin
        fin_idle = Signal(init=1)
        if p.max_pool:
            # --- MAX: column max, window max, output register -----------------------------
            pad_val = 0 if p._inject_bug else -128
            colmax = [Signal(p.pixel, name=f"colmax{j}") for j in range(K)]
            cv3 = Signal(K)
            with m.If(en):
                m.d.sync += [emit3.eq(v2 & emit2 & is_max), cv3.eq(Cat(*cv))]
                for j in range(K):
                    for ln in range(lanes):
                        m.d.sync += colmax[j][ln].eq(_max3(
                            [Mux(rv[i], win[j][i][ln], pad_val) for i in range(K)]))
            with m.If(en):
                m.d.sync += max_valid.eq(emit3)
                for ln in range(lanes):
                    m.d.sync += max_data[ln].eq(_max3(
                        [Mux(cv3[j], colmax[j][ln], pad_val) for j in range(K)]))

        if p.avg_pool:
            # --- AVG: hand the window to the finisher -------------------------------------
            m.submodules.fin = fin = self._fin
            for name in ("x_zp", "ms", "my", "exp_bias", "y_zp", "offset", "lo", "hi"):
                m.d.comb += getattr(fin, name).eq(getattr(self, name))
            m.d.comb += [fin.i_stream.valid.eq(v2 & emit2 & is_avg),
                         fin.i_stream.payload.mask.eq(mask9),
                         fin.i_stream.payload.count.eq(count)]
            for i in range(K):
                for j in range(K):
                    m.d.comb += fin.i_stream.payload.taps[i * K + j].eq(win[j][i])

            m.d.comb += fin_idle.eq(fin.i_stream.ready)
        if p.global_pool:
            # --- GLOBAL: per-lane sums, time-shared requantiser ------------------------------
            gsum = [Signal(signed(24), name=f"gsum{ln}") for ln in range(lanes)]
            gbuf = [Signal(signed(32), name=f"gbuf{ln}") for ln in range(lanes)]
            gi = Signal(range(lanes + 1))
            go = Signal(range(lanes + 1))
            newest = [win[K - 1][K - 1][ln] for ln in range(lanes)]
            m.d.comb += glob_push.eq(v2 & last2 & is_glob)
            with m.If(en & v2 & is_glob):
                for ln in range(lanes):
                    nxt = Mux(first2, newest[ln], gsum[ln] + newest[ln])
                    m.d.sync += gsum[ln].eq(nxt)
                    with m.If(last2):
                        m.d.sync += gbuf[ln].eq(nxt + self.g_bias)
                with m.If(last2):
                    m.d.sync += [gbusy.eq(1), gi.eq(0), go.eq(0)]
            m.submodules.req = req = Requantizer(RequantParams(lanes=1, channels=1,
                                                               use_primitive=p.use_primitive))
            m.d.comb += [
                req.param.en.eq(1), req.param.addr.eq(0),
                req.param.data.as_value().eq(self.g_param),
                req.zero_point.eq(self.y_zp[:8]), req.lo.eq(self.lo), req.hi.eq(self.hi),
                req.i_stream.valid.eq(gbusy & (gi < lanes)),
                req.i_stream.payload.ch[0].eq(0),
                req.o_stream.ready.eq(gbusy & ~gout_valid),
            ]
            with m.Switch(gi):
                for ln in range(lanes):
                    with m.Case(ln):
                        m.d.comb += req.i_stream.payload.acc[0].eq(gbuf[ln])
            with m.If(req.i_stream.valid & req.i_stream.ready):
                m.d.sync += gi.eq(gi + 1)
            with m.If(req.o_stream.valid & req.o_stream.ready):
                with m.Switch(go):
                    for ln in range(lanes):
                        with m.Case(ln):
                            m.d.sync += gout[ln].eq(req.o_stream.payload[0])
                m.d.sync += go.eq(go + 1)
                with m.If(go == lanes - 1):
                    m.d.sync += gout_valid.eq(1)

        m.d.comb += self.busy.eq((y != 0) | (x != 0) | s1[0] | s2[0] | emit3 | max_valid
                                 | ~fin_idle | gbusy)

        # --- output mux and the global stall ------------------------------------------
        o = self.o_stream
        with m.If(is_max):
            m.d.comb += [o.valid.eq(max_valid), o.payload.eq(max_data),
                         en.eq(~max_valid | o.ready)]
        if p.avg_pool:
            with m.If(is_avg):
                m.d.comb += [o.valid.eq(fin.o_stream.valid), o.payload.eq(fin.o_stream.payload),
                             fin.o_stream.ready.eq(o.ready),
                             en.eq(~(fin.i_stream.valid & ~fin.i_stream.ready))]
        with m.If(is_glob):
            m.d.comb += [o.valid.eq(gout_valid), o.payload.eq(gout),
                         en.eq(~(glob_push & gbusy))]
            with m.If(gout_valid & o.ready):
                m.d.sync += [gout_valid.eq(0), gbusy.eq(0)]
        return m
