"""Residual add: two int8 streams -> int8, bit-exact with onnxruntime's QLinearAdd.

The arithmetic is :func:`hwgen.golden.ops.add` (onnxruntime's AVX2 kernel, with FMA)::

    rA = float32(a_scale / y_scale)        rB = float32(b_scale / y_scale)
    F  = float32(y_zp - (rA * a_zp + rB * b_zp))      (arith.add_fixed_part)
    y  = clamp(rne(fma(a, rA, fma(b, rB, F))) - offset, lo, hi)

on the stored integers ``a, b`` (int8, or uint8 models: ``offset = 128`` added to values and
zero points).  All three constants are dyadic, so with ``L = min(exponents of rA, rB, F, 0)``
(each with its trailing zero bits stripped) every intermediate is an integer multiple of
``2**L`` and the unit works on 64-bit fixed-point integers in units of ``2**L``
(see also :func:`hwgen.golden.arith.add_int`):

    S1  = b * mB << sB  +  F'          (exact)     S1' = S1 rounded to 24 significant bits
    S2  = a * mA << sA  +  S1'         (exact)     S2' = S2 rounded to 24 significant bits
    q   = S2' / 2**(-L) rounded half to even,  y = clamp(q - offset, lo, hi)

The two roundings to 24 significant bits (the float32 results of the two FMAs) use a
"smear" of the magnitude (prefix OR from the top) to build the masks of the kept, round and
sticky bits, so no leading-zero counter or normalising shifter is needed.  The per-tensor
constants come from :func:`add_config`.

Latency :attr:`Adder.LATENCY` (30) cycles, one beat (``lanes`` sums) per cycle,
4 MULT18X18D per lane (two 24 x 8 products).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hwgen.golden import arith
from hwgen.hw.dsp import UMul
from hwgen.hw.pipe import Pipe

__all__ = ["AddParams", "Adder", "AddConfig", "add_config", "CONFIG_LAYOUT"]

W = 64  # fixed-point datapath width (signed)

#: Per-tensor configuration of an :class:`Adder` (from :func:`add_config`).
CONFIG_LAYOUT = data.StructLayout({
    "a_m": unsigned(24), "a_sh": unsigned(6),   # rA = a_m * 2**(a_sh + L)
    "b_m": unsigned(24), "b_sh": unsigned(6),   # rB = b_m * 2**(b_sh + L)
    "fixed": signed(W),                          # F  = fixed * 2**L
    "rshift": unsigned(6),                       # -L
    "offset": unsigned(8),                       # 0 (int8 model) or 128 (uint8 model)
    "lo": signed(8), "hi": signed(8),            # final clamp (fused ReLU)
})


@dataclass(frozen=True)
class AddConfig:
    """Integer constants of one QLinearAdd (fields of :data:`CONFIG_LAYOUT`)."""
    a_m: int
    a_sh: int
    b_m: int
    b_sh: int
    fixed: int
    rshift: int
    offset: int
    lo: int
    hi: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def pack(self) -> int:
        """The configuration as one integer, bit-packed as :data:`CONFIG_LAYOUT`."""
        word, pos = 0, 0
        for name, field in CONFIG_LAYOUT:
            width = field.width
            word |= (getattr(self, name) & ((1 << width) - 1)) << pos
            pos += width
        return word


def _strip(sig: int, exp: int) -> tuple[int, int]:
    """Remove trailing zero bits of a dyadic ``sig * 2**exp`` (0 stays (0, exp))."""
    if sig == 0:
        return 0, exp
    while sig % 2 == 0:
        sig //= 2
        exp += 1
    return sig, exp


def add_config(a_scale: float, a_zp: int, b_scale: float, b_zp: int, y_scale: float,
               y_zp: int, lo: int = -128, hi: int = 127, offset: int = 0) -> AddConfig:
    """Per-tensor constants for :class:`Adder`, derived exactly as :func:`golden.ops.add`.

    Raises
    ------
    ValueError
        If the zero points / clamp / offset are out of range, or the scale ratios
        ``a_scale / y_scale`` and ``b_scale / y_scale`` are so far apart (or so small) that
        the sum needs more than the 64-bit fixed-point datapath; requantise one input first.
    """
    for name, v, lo_, hi_ in (("a_zp", a_zp, -128, 127), ("b_zp", b_zp, -128, 127),
                              ("y_zp", y_zp, -128, 127), ("lo", lo, -128, 127),
                              ("hi", hi, -128, 127)):
        if not isinstance(v, (int, np.integer)) or not lo_ <= int(v) <= hi_:
            raise ValueError(f"add_config: {name}={v!r} must be an int in [{lo_}, {hi_}]")
    if lo > hi:
        raise ValueError(f"add_config: lo={lo} > hi={hi}")
    if offset not in (0, 128):
        raise ValueError(f"add_config: offset must be 0 (int8) or 128 (uint8), got {offset!r}")
    ra = np.float32(np.float32(a_scale) / np.float32(y_scale))
    rb = np.float32(np.float32(b_scale) / np.float32(y_scale))
    for name, r in (("a_scale / y_scale", ra), ("b_scale / y_scale", rb)):
        if not (np.isfinite(r) and r >= np.float32(2.0 ** -126)):
            raise ValueError(f"add_config: scale ratio {name} = {float(r)!r} must be a finite, "
                             f"positive, normal float32")
    fixed = arith.add_fixed_part(ra, rb, int(a_zp) + offset, int(b_zp) + offset,
                                 int(y_zp) + offset)
    (ma, ea), (mb, eb), (mf, ef) = (_strip(int(s), int(e)) for s, e in
                                    (arith.f32_parts(ra), arith.f32_parts(rb),
                                     arith.f32_parts(fixed)))
    low = min(ea, eb, 0) if mf == 0 else min(ea, eb, ef, 0)
    sa, sb, rsh = ea - low, eb - low, -low
    fx = mf << (ef - low) if mf else 0
    bound = 255 * (ma << sa) + 255 * (mb << sb) + abs(fx)
    if max(sa, sb, rsh) > 63 or bound >= 1 << (W - 2):
        raise ValueError(
            f"add_config: scale ratios {float(ra)!r} and {float(rb)!r} need a fixed-point sum "
            f"wider than the adder's {W}-bit datapath; rescale the inputs so that "
            f"a_scale / y_scale and b_scale / y_scale lie within about 2**20 of each other "
            f"and above 2**-20")
    return AddConfig(a_m=ma, a_sh=sa, b_m=mb, b_sh=sb, fixed=fx, rshift=rsh, offset=offset,
                     lo=int(lo), hi=int(hi))


@dataclass(frozen=True)
class AddParams:
    """Structure of an :class:`Adder`.

    Parameters
    ----------
    lanes : int
        Elements per beat of each input stream, >= 1.
    use_primitive : bool or None
        MULT18X18D instances (True), behavioural multipliers (False), or by platform (None).
    _inject_bug : bool
        Test-only: drop the sticky bits of the first float32 rounding.
    """
    lanes: int = 1
    use_primitive: bool | None = None
    _inject_bug: bool = False

    def __post_init__(self):
        if not isinstance(self.lanes, int) or isinstance(self.lanes, bool) or self.lanes < 1:
            raise ValueError(f"AddParams.lanes must be a positive int, got {self.lanes!r}")

    @property
    def lane_layout(self) -> data.ArrayLayout:
        return data.ArrayLayout(signed(8), self.lanes)

    #: MULT18X18D per lane (two 24 x 8 products).
    DSP_PER_LANE = 4


def _or4(m: Module, y, k: int, name: str):
    """One radix-4 level of a prefix OR: ``y | y >> k | y >> 2k | y >> 3k`` (one LUT4)."""
    s = Signal(len(y), name=name)
    m.d.comb += s.eq(y | (y >> k) | (y >> 2 * k) | (y >> 3 * k))
    return s


class Adder(wiring.Component):
    """Element-wise QLinearAdd of two int8 streams, ``lanes`` elements per beat.

    A beat is consumed from both inputs at once (``a_stream.ready`` needs ``b_stream.valid``
    and vice versa); the whole pipeline stalls on output backpressure.  Latency
    :attr:`LATENCY` (30) cycles, throughput one beat per cycle, 4 MULT18X18D per lane.

    Members
    -------
    a_stream, b_stream : In(stream.Signature(ArrayLayout(signed(8), lanes)))
    o_stream : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
    config : In(CONFIG_LAYOUT)
        Per-tensor constants from :func:`add_config` (``AddConfig.pack()``); registered
        inside, so change them only while the pipeline is empty.
    """

    LATENCY = 30

    def __init__(self, params: AddParams):
        if not isinstance(params, AddParams):
            self._MustUse__silence = True
            raise TypeError(f"Adder needs AddParams, got {type(params).__name__}")
        self.params = params
        lay = params.lane_layout
        super().__init__({
            "a_stream": In(stream.Signature(lay)),
            "b_stream": In(stream.Signature(lay)),
            "o_stream": Out(stream.Signature(lay)),
            "config": In(CONFIG_LAYOUT),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        cfg = Signal(CONFIG_LAYOUT, name="cfg_r")  # registered: static while a layer runs
        m.d.sync += cfg.eq(self.config)
        en = Signal()
        take = Signal()
        m.d.comb += [
            en.eq(~self.o_stream.valid | self.o_stream.ready),
            take.eq(self.a_stream.valid & self.b_stream.valid),
            self.a_stream.ready.eq(en & self.b_stream.valid),
            self.b_stream.ready.eq(en & self.a_stream.valid),
        ]
        pipe = Pipe(m, en)
        valid = pipe.valid_chain(take, self.LATENCY)
        m.d.comb += self.o_stream.valid.eq(valid[-1])
        reg, delay = pipe.reg, pipe.delay

        # config-derived constants, registered once (static while a layer runs)
        c_lo_p = Signal(signed(11))                 # clamp bounds in the magnitude domain
        c_hi_p = Signal(signed(11))
        c_lo_n = Signal(signed(11))
        c_hi_n = Signal(signed(11))
        m.d.sync += [c_lo_p.eq(cfg.lo + cfg.offset), c_hi_p.eq(cfg.hi + cfg.offset),
                     c_lo_n.eq(-cfg.offset - cfg.lo), c_hi_n.eq(-cfg.offset - cfg.hi)]
        stk_final = Signal(W, name="stk_final")     # bits below the final round bit (S25)
        # bit i set iff i < rshift - 1 (a thermometer: one small comparator per bit)
        m.d.sync += stk_final.eq(Cat(*(C(i + 2, 7) <= cfg.rshift for i in range(W))))

        def round24(x_signed, name, bug=False):
            """Signed W-bit integer -> (sign, magnitude rounded to 24 significant bits, half
            to even).  6 stages: |x|, smear (2), masked bits, reductions, add."""
            neg = reg(1, f"{name}_neg", x_signed < 0)
            mag = reg(unsigned(W - 1), f"{name}_mag",
                      Mux(x_signed < 0, -x_signed, x_signed)[:W - 1])
            # smear (prefix OR from the top: bit i = any(mag[i:])) over two stages: a
            # register between the levels keeps the mapper from turning it into a ripple
            win = reg(unsigned(W - 1), f"{name}_win",
                      _or4(m, _or4(m, mag, 1, f"{name}_o1"), 4, f"{name}_o4"))
            magb = reg(unsigned(W - 1), f"{name}_magb", mag)
            sm = reg(unsigned(W - 1), f"{name}_smear", _or4(m, win, 16, f"{name}_o16"))
            mag2 = reg(unsigned(W - 1), f"{name}_mag2", magb)
            lsb_sel = (sm >> 23) & ~(sm >> 24)         # lowest kept bit
            rnd_sel = (sm >> 24) & ~(sm >> 25)         # round bit
            rbits = reg(unsigned(W - 1), f"{name}_rbits", mag2 & rnd_sel)
            sbits = reg(unsigned(W - 1), f"{name}_sbits", 0 if bug else mag2 & (sm >> 25))
            lbits = reg(unsigned(W - 1), f"{name}_lbits", mag2 & lsb_sel)
            lsel = reg(unsigned(W - 1), f"{name}_lsel", lsb_sel)
            trunc = reg(unsigned(W - 1), f"{name}_trunc", mag2 & ~(sm >> 24))
            up = rbits.any() & (sbits.any() | lbits.any())
            incv = reg(unsigned(W - 1), f"{name}_inc", Mux(up, lsel, 0))
            trunc2 = reg(unsigned(W - 1), f"{name}_trunc2", trunc)
            rmag = reg(unsigned(W), f"{name}_rmag", trunc2 + incv)
            return delay(neg, 5, f"{name}_neg"), rmag

        for lane in range(p.lanes):
            L = f"l{lane}_"
            # S1: inputs
            a1 = reg(signed(8), L + "a1", self.a_stream.payload[lane])
            b1 = reg(signed(8), L + "b1", self.b_stream.payload[lane])
            # S2: stored value (+ offset); S3: sign and magnitude (<= 255)
            ar = reg(signed(10), L + "ar", a1 + cfg.offset)
            br = reg(signed(10), L + "br", b1 + cfg.offset)
            na = reg(1, L + "na", ar < 0)
            nb = reg(1, L + "nb", br < 0)
            am = reg(unsigned(8), L + "am", Mux(ar < 0, -ar, ar)[:8])
            bm = reg(unsigned(8), L + "bm", Mux(br < 0, -br, br)[:8])
            # S4..S7: |a| * mA, |b| * mB (24 x 8 on 2 DSPs each, latency 4)
            prods = []
            for nm, mag, mant in (("a", am, cfg.a_m), ("b", bm, cfg.b_m)):
                mul = UMul(24, 8, use_primitive=p.use_primitive)
                m.submodules[L + "mul_" + nm] = mul
                m.d.comb += [mul.a.eq(mant), mul.b.eq(mag), mul.ce.eq(en)]
                assert mul.latency == 4
                prods.append(mul.p)
            pa, pb = prods
            na6 = delay(na, 4, L + "na")
            nb6 = delay(nb, 4, L + "nb")
            # S8: signed products; S9, S10: aligned to units of 2**L
            sa7 = reg(signed(33), L + "sa7", Mux(na6, -pa, pa))
            sb7 = reg(signed(33), L + "sb7", Mux(nb6, -pb, pb))
            # (two stages: shift by the low 3 bits, then by the high 3 bits times 8)
            ta7x = reg(signed(40), L + "ta7x", sa7 << cfg.a_sh[:3])
            tb7x = reg(signed(40), L + "tb7x", sb7 << cfg.b_sh[:3])
            ta8 = reg(signed(W), L + "ta8", (ta7x << Cat(C(0, 3), cfg.a_sh[3:]))[:W])
            tb8 = reg(signed(W), L + "tb8", (tb7x << Cat(C(0, 3), cfg.b_sh[3:]))[:W])
            # S11: first FMA, exact sum; S12..S17: rounded to float32 (sign, magnitude)
            s1 = reg(signed(W), L + "s1", tb8 + cfg.fixed)
            n15, m15 = round24(s1, L + "r1", bug=p._inject_bug)
            ta15 = delay(ta8, 7, L + "ta")
            # S18: second FMA, exact sum; S19..S24: rounded to float32
            s2 = reg(signed(W), L + "s2", Mux(n15, ta15 - m15, ta15 + m15))
            n20, m20 = round24(s2, L + "r2")
            # S25, S26: |S2'| / 2**-L: integer part with the round bit below it; sticky bits
            # (two stages: by the high 3 bits times 8, then by the low 3 bits)
            y20x = reg(unsigned(W + 1), L + "y20x", (m20 << 1) >> Cat(C(0, 3), cfg.rshift[3:]))
            st20x = reg(1, L + "st20x", (m20 & stk_final).any())
            y21 = reg(unsigned(W + 1), L + "y21", y20x >> cfg.rshift[:3])
            st21 = reg(1, L + "st21", st20x)
            neg21 = reg(1, L + "neg21", delay(n20, 1, L + "n20"))
            # S27: low 10 bits of the integer part, any higher bit, round-half-even increment
            ip = y21[1:]
            ip22 = reg(unsigned(10), L + "ip22", ip[:10])
            big22 = reg(1, L + "big22", ip[10:].any())
            up22 = reg(1, L + "up22", y21[0] & (st21 | ip[0]))
            neg22 = reg(1, L + "neg22", neg21)
            # S28: magnitude saturated at 1023 (the int8 clamp follows anyway)
            sat = big22 | (ip22.all() & up22)
            q23 = reg(unsigned(10), L + "q23", Mux(sat, 1023, ip22 + up22))
            neg23 = reg(1, L + "neg23", neg22)
            # S29: sign, remove the offset; clamp flags (all in parallel); S30: clamp
            v24 = reg(signed(12), L + "v24",
                      Mux(neg23, -cfg.offset - q23, q23 - cfg.offset))
            neg24 = reg(1, L + "neg24", neg23)
            lt_p = reg(1, L + "lt_p24", q23 < c_lo_p)    # q - offset < lo
            gt_p = reg(1, L + "gt_p24", q23 > c_hi_p)    # q - offset > hi
            lt_n = reg(1, L + "lt_n24", q23 > c_lo_n)    # -offset - q < lo
            gt_n = reg(1, L + "gt_n24", q23 < c_hi_n)    # -offset - q > hi
            y = Mux(Mux(neg24, lt_n, lt_p), cfg.lo, Mux(Mux(neg24, gt_n, gt_p), cfg.hi, v24))
            y25 = reg(signed(8), L + "y25", y[:8])
            m.d.comb += self.o_stream.payload[lane].eq(y25)
        return m
