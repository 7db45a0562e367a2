"""Multiplier primitives: an explicit ECP5 ``MULT18X18D`` wrapper and wide products built from it.

Inferred ``a * b`` reaches only about 50-120 MHz through the open ECP5 flow; an explicitly
instantiated ``MULT18X18D`` with its input and output registers enabled, followed by one
fabric register, reaches 148-218 MHz (docs in ARCHITECTURE.md).  :class:`Mult18` is that
primitive behind a small wrapper with a cycle-identical behavioural model for simulation
(Verilator, Icarus, Amaranth pysim), so one design serves both.

:class:`UMul` builds an unsigned ``a_width x b_width`` product from 17-bit limbs: every limb
pair with a large product goes to a :class:`Mult18` (a 17-bit unsigned limb is a
non-negative 18-bit signed operand).  Optionally (``fabric_max_bits``) tiny limb pairs such
as 7 x 7 are built in fabric as a shift-add instead; yosys maps that to about 200 LUT4 per
7 x 7 piece, so the default keeps every piece on a DSP.

All registers advance only when ``ce`` is high, so a pipeline built from these blocks can
stall as a whole (drive ``ce`` from the pipeline's global enable).
"""
from __future__ import annotations

from amaranth import ClockSignal, Const, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Mult18", "UMul", "use_primitive_for"]


def use_primitive_for(platform, use_primitive: bool | None) -> bool:
    """Resolve the ``use_primitive`` switch: ``None`` means "instantiate the primitive iff the
    platform is an ECP5 platform" (``platform.family == "ecp5"``)."""
    if use_primitive is not None:
        return bool(use_primitive)
    return getattr(platform, "family", None) == "ecp5"


class Mult18(wiring.Component):
    """Signed 18 x 18 -> 36 multiplier, latency 3 enabled cycles, one product per cycle.

    On ECP5 (``use_primitive=True``, or ``None`` with an ECP5 platform) this is one
    ``MULT18X18D`` with input registers (A, B) and output register on ``CLK0``/``CE0``,
    followed by one fabric register; elsewhere a behavioural model with the same three
    register stages.

    Parameters
    ----------
    use_primitive : bool or None
        ``True``: instantiate ``MULT18X18D``; ``False``: behavioural model; ``None`` (default):
        decide from the platform passed to ``elaborate``.

    Members
    -------
    a, b : In(signed(18))
        Operands, sampled on a rising edge where ``ce`` is high.
    ce : In(1)
        Clock enable of all three register stages (default high).
    p : Out(signed(36))
        ``a * b`` of the operands sampled 3 enabled cycles earlier.
    """

    LATENCY = 3

    def __init__(self, *, use_primitive: bool | None = None):
        if use_primitive not in (None, True, False):
            self._MustUse__silence = True
            raise TypeError(f"use_primitive must be None, True or False, not {use_primitive!r}")
        self._use_primitive = use_primitive
        super().__init__({
            "a": In(signed(18)),
            "b": In(signed(18)),
            "ce": In(1, init=1),
            "p": Out(signed(36)),
        })

    def elaborate(self, platform):
        m = Module()
        prod = Signal(signed(36))
        if use_primitive_for(platform, self._use_primitive):
            # Only what yosys' own MULT18X18D mapping connects (A, B, C = 0, SIGNED*,
            # SOURCE*) plus the clock, clock enable and reset of bank 0; pins left open keep
            # nextpnr from routing hundreds of constant-0 arcs.
            ports = {}
            for i in range(18):
                ports[f"i_A{i}"] = self.a[i]
                ports[f"i_B{i}"] = self.b[i]
                ports[f"i_C{i}"] = Const(0, 1)
            for i in range(36):
                ports[f"o_P{i}"] = prod[i]
            ports["i_CLK0"] = ClockSignal("sync")
            ports["i_CE0"] = self.ce
            ports["i_RST0"] = Const(0, 1)
            m.submodules.mult = Instance(
                "MULT18X18D",
                p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
                p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
                p_REG_INPUTC_CLK="NONE",
                p_REG_PIPELINE_CLK="NONE",
                p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
                p_CLK0_DIV="ENABLED", p_CLK1_DIV="ENABLED", p_CLK2_DIV="ENABLED",
                p_CLK3_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED",
                p_CAS_MATCH_REG="FALSE", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
                p_RESETMODE="SYNC",
                i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1),
                i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
                **ports,
            )
        else:
            a_r = Signal(signed(18))
            b_r = Signal(signed(18))
            with m.If(self.ce):
                m.d.sync += [a_r.eq(self.a), b_r.eq(self.b), prod.eq(a_r * b_r)]
        with m.If(self.ce):
            m.d.sync += self.p.eq(prod)
        return m


def _fabric_mul(m: Module, a, b, width: int):
    """Unsigned shift-add product as a balanced tree of two-input adders (explicit
    signals, so yosys maps each add to a carry chain and never infers a DSP)."""
    terms = []
    for k in range(len(b)):
        t = Signal(width, name=f"{a.name}_t{k}")
        m.d.comb += t.eq(Mux(b[k], a << k, 0))
        terms.append(t)
    n = 0
    while len(terms) > 1:
        nxt = []
        for j in range(0, len(terms) - 1, 2):
            s = Signal(width, name=f"{a.name}_s{n}")
            n += 1
            m.d.comb += s.eq(terms[j] + terms[j + 1])
            nxt.append(s)
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


class UMul(wiring.Component):
    """Unsigned ``a_width x b_width`` multiplier from 18 x 18 DSP pieces, fully pipelined.

    Operands are split into 17-bit limbs (low limb first).  Each limb pair is a
    :class:`Mult18` (17-bit unsigned limbs are non-negative 18-bit signed operands), unless
    its widths multiply to at most ``fabric_max_bits``: then it is a registered fabric
    shift-add with the same 3-cycle latency.  The partial products are summed by a
    registered binary adder tree.

    Latency: ``3 + ceil(log2(number of partial products))`` enabled cycles (``self.latency``);
    throughput one product per enabled cycle.  DSP count ``self.dsp_count``: 24 x 24 uses
    4 DSPs (latency 5; 3 DSPs + a 7 x 7 fabric piece with ``fabric_max_bits=49``); 24 x 8
    uses 2 (latency 4); up to 17 x 17 uses 1 (latency 3).

    Parameters
    ----------
    a_width, b_width : int
        Operand widths, 1..34.
    use_primitive : bool or None
        Passed to every :class:`Mult18`.
    fabric_max_bits : int
        Limb pairs with ``wa * wb <= fabric_max_bits`` are built in fabric (default 0: none).

    Members
    -------
    a : In(unsigned(a_width)); b : In(unsigned(b_width)); ce : In(1)
    p : Out(unsigned(a_width + b_width))
    """

    LIMB = 17

    def __init__(self, a_width: int, b_width: int, *, use_primitive: bool | None = None,
                 fabric_max_bits: int = 0):
        for name, w in (("a_width", a_width), ("b_width", b_width)):
            if not isinstance(w, int) or not 1 <= w <= 2 * self.LIMB:
                self._MustUse__silence = True   # no "never used" warning for a rejected object
                raise ValueError(f"UMul {name} must be an int in 1..{2 * self.LIMB}, got {w!r}")
        self.a_width, self.b_width = a_width, b_width
        self._use_primitive = use_primitive
        self._pieces = []
        for ia, wa in self._limbs(a_width):
            for ib, wb in self._limbs(b_width):
                self._pieces.append((ia, wa, ib, wb, wa * wb > fabric_max_bits))
        n = len(self._pieces)
        self.latency = Mult18.LATENCY + (n - 1).bit_length()
        self.dsp_count = sum(1 for p in self._pieces if p[4])
        super().__init__({
            "a": In(unsigned(a_width)),
            "b": In(unsigned(b_width)),
            "ce": In(1, init=1),
            "p": Out(unsigned(a_width + b_width)),
        })

    @classmethod
    def _limbs(cls, width):
        out, lo = [], 0
        while lo < width:
            w = min(cls.LIMB, width - lo)
            out.append((lo, w))
            lo += w
        return out

    def elaborate(self, platform):
        m = Module()
        pw = self.a_width + self.b_width
        terms = []
        for k, (ia, wa, ib, wb, on_dsp) in enumerate(self._pieces):
            la = self.a[ia:ia + wa]
            lb = self.b[ib:ib + wb]
            shift = ia + ib
            if on_dsp:
                mul = Mult18(use_primitive=self._use_primitive)
                m.submodules[f"mul{k}"] = mul
                m.d.comb += [mul.a.eq(la), mul.b.eq(lb), mul.ce.eq(self.ce)]
                piece = mul.p.as_unsigned()[:wa + wb]
            else:
                # same three register stages as Mult18: inputs, product, output
                a_r, b_r = Signal(wa, name=f"fa{k}"), Signal(wb, name=f"fb{k}")
                p_r, p_o = Signal(wa + wb, name=f"fp{k}"), Signal(wa + wb, name=f"fo{k}")
                prod = _fabric_mul(m, a_r, b_r, wa + wb)
                with m.If(self.ce):
                    m.d.sync += [a_r.eq(la), b_r.eq(lb), p_r.eq(prod), p_o.eq(p_r)]
                piece = p_o
            t = Signal(pw, name=f"pp{k}")
            m.d.comb += t.eq(piece << shift)
            terms.append(t)
        level = 0
        while len(terms) > 1:
            nxt = []
            for j in range(0, len(terms), 2):
                s = Signal(pw, name=f"sum{level}_{j // 2}")
                if j + 1 < len(terms):
                    val = terms[j] + terms[j + 1]
                else:
                    val = terms[j]
                with m.If(self.ce):
                    m.d.sync += s.eq(val)
                nxt.append(s)
            terms = nxt
            level += 1
        m.d.comb += self.p.eq(terms[0])
        return m
