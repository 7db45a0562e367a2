"""A FIFO that hands out credits, so the pipeline in front of it never stalls.

A pipeline whose stages all advance on one enable (the stream way of handling
backpressure) puts that enable on every register of every stage: on the 85F the
requantiser's and the array drain's enables were thousands of flip-flops spread across the
die, the design's critical path. With credits the pipeline runs free (no enable at all) and
only its *entry* is gated: a beat enters (``issue``) only while ``allow`` says the FIFO at
the end has a slot reserved for it; the beat reaches the FIFO any number of cycles later
(``w_en``/``w_data``, no ready) and leaves through an ordinary stream.

``allow`` is a register. The count of beats issued and not yet read (reads credited one
cycle late, through a register: never an under-estimate) decides it, so no path runs from the
consumer's ``ready`` into the producer.
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Shape, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .bram import kept_reg
from .dsp import use_primitive_for

__all__ = ["CreditFifo", "SkidBuffer", "StreamSlice"]


class CreditFifo(wiring.Component):
    """``depth``-entry FIFO of ``width``-bit beats with credit-based admission.

    Parameters
    ----------
    shape : shape-castable
        Beat shape (``w_data`` and the ``o_stream`` payload).
    depth : int
        FIFO entries; also the most beats in flight (issued, not yet read). For full
        throughput make it at least the producer's latency from ``issue`` to ``w_en`` plus
        ``lag`` plus 4.
    lag : int
        The producer may act on ``allow`` up to ``lag`` cycles late: a beat issued in cycle
        ``t`` must have seen ``allow`` high in cycle ``t - j`` for one fixed ``j <= lag``
        (e.g. through ``j`` registers). ``allow`` in cycle ``t`` reserves room for the
        ``lag + 1`` beats of cycles ``t .. t + lag``.
    skid : bool
        Read through a :class:`SkidBuffer`: the consumer's ``ready`` then reaches only the
        skid buffer's registers (placed next to the consumer), not the FIFO's pointers and
        level. The FIFO is then unbuffered (the skid buffer is its output register), so a
        beat takes as long as without the skid buffer; the rate stays one per cycle.
    copies : int
        With ``skid``: copies of the skid buffer's read pointer (:class:`SkidBuffer`).
    buffered : bool or None
        With ``skid``: keep the FIFO's output register in front of the skid buffer (a beat
        takes a cycle more; the distributed RAM's read then ends in a register next to it,
        not in the skid buffer's entries by the consumer). Default: ``not skid``.

    Members
    -------
    issue : In(1)
        A beat entered the producer's pipeline this cycle (at most one per cycle).
    allow : Out(1)
        Registered: issuing is allowed (see ``lag``).
    w_en, w_data : In
        A beat arrives at the FIFO (no ready: there is always room for an issued beat; in
        simulation an overflow means the producer broke the contract).
    o_stream : Out(stream.Signature(width))
        The beats in arrival order (registered output).
    overflow : Out(1)
        Sticky: a beat arrived at a full FIFO (the producer broke the credit contract).
    busy : Out(1)
        Beats issued and not yet read (one cycle late after the last read).
    """

    def __init__(self, shape, depth: int, lag: int = 0, skid: bool = False, copies: int = 1,
                 buffered: bool | None = None):
        self._MustUse__silence = True     # not elaborated if the checks below fail
        if not isinstance(lag, int) or lag < 0:
            raise ValueError(f"CreditFifo lag must be a non-negative int, got {lag!r}")
        if not isinstance(depth, int) or depth < lag + 2:
            raise ValueError(f"CreditFifo depth must be an int >= lag + 2, got {depth!r}")
        self._MustUse__silence = False
        self.shape, self.depth, self.lag, self.skid = shape, depth, lag, skid
        self.copies = copies
        self.buffered = not skid if buffered is None else buffered
        self.width = Shape.cast(shape).width
        super().__init__({
            "issue": In(1), "allow": Out(1, init=1),
            "w_en": In(1), "w_data": In(shape),
            "o_stream": Out(stream.Signature(shape)),
            "overflow": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        # with the skid buffer the FIFO is unbuffered by default (its entries are distributed
        # RAM read straight into the skid buffer's entries, whose enables are flip-flops);
        # buffered, its output register loads on its own flags and the skid buffer's ready,
        # both registers
        fifo_cls = SyncFIFOBuffered if self.buffered else SyncFIFO
        m.submodules.fifo = fifo = fifo_cls(width=self.width, depth=self.depth)
        o = self.o_stream
        m.d.comb += [fifo.w_en.eq(self.w_en), fifo.w_data.eq(self.w_data)]
        out_busy = 0
        if self.skid:
            m.submodules.skid = sb = SkidBuffer(self.shape, copies=self.copies)
            m.d.comb += [sb.i_stream.valid.eq(fifo.r_rdy), sb.i_stream.payload.eq(fifo.r_data),
                         fifo.r_en.eq(sb.i_stream.ready)]
            wiring.connect(m, sb.o_stream, wiring.flipped(o))
            out_busy = sb.busy
            fifo_pop = fifo.r_rdy & sb.i_stream.ready
        else:
            m.d.comb += [o.valid.eq(fifo.r_rdy), o.payload.eq(fifo.r_data),
                         fifo.r_en.eq(o.ready)]
            fifo_pop = o.valid & o.ready
        # sticky: a beat arrived with the FIFO full (a broken producer; tests check it)
        with m.If(self.w_en & ~fifo.w_rdy):
            m.d.sync += self.overflow.eq(1)
        popped = Signal()
        m.d.sync += popped.eq(fifo_pop)
        cnt = Signal(range(self.depth + 1))
        nxt = Signal(range(self.depth + 2))
        m.d.comb += nxt.eq(cnt + self.issue - popped)
        m.d.sync += [cnt.eq(nxt), self.allow.eq(nxt + self.lag + 1 <= self.depth)]
        m.d.comb += self.busy.eq((cnt != 0) | out_busy)
        return m


class SkidBuffer(wiring.Component):
    """Two-entry stream buffer whose ``i_stream.ready`` is a flip-flop: the consumer's
    ``ready`` reaches only this buffer's pointer and flag registers, never the producer and
    never the beats' data registers. One beat per cycle, a beat takes a cycle more.
    ``busy``: a beat is held.

    An entry that holds no beat loads the producer's payload every cycle (its enable is a
    flip-flop, "entry free", with no logic behind it: the data bits may be spread over the
    die, so a wide enable net gets the whole cycle); the entry under the write pointer is
    free whenever a beat can be taken, so it holds the beat from the cycle it is taken.
    The output is the entry under the read pointer (one 2:1 multiplexer on the data). A pop
    moves the read pointer and the count: a handful of flip-flops, where a shifting skid
    register would put the consumer's ``ready`` on the enable of every data bit.

    ``copies``: the read pointer in that many copies, each selecting an equal slice of the
    payload's bits (a wide payload spread over the die does not hang on one flip-flop's
    net: v57 seed 3, the weight feeder's pointer to 96 multiplexers, 9.5 ns of routing).
    """

    def __init__(self, shape, copies: int = 1):
        self._MustUse__silence = True
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(f"SkidBuffer copies must be an int >= 1, got {copies!r}")
        self._MustUse__silence = False
        self.shape, self.copies = shape, copies
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape)), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        ent = [Signal(self.shape, name=f"ent{k}") for k in (0, 1)]
        wp, rp = Signal(), Signal()
        count = Signal(range(3))
        not_full, nonempty = Signal(init=1), Signal()     # count < 2, count != 0
        # the read pointer's copies (each toggles on its own output: distinct logic, so
        # synthesis keeps them apart), one per slice of the payload
        n = Shape.cast(self.shape).width
        step = max(1, -(-n // self.copies))
        los = range(0, max(n, 1), step)
        rps = [rp] + [Signal(name=f"rp_c{j}") for j in range(1, len(los))]
        e0, e1 = Value.cast(ent[0]), Value.cast(ent[1])
        out = Cat(*[Mux(r, e1[lo:lo + step], e0[lo:lo + step]) for r, lo in zip(rps, los)])
        m.d.comb += [i.ready.eq(not_full), o.valid.eq(nonempty),
                     o.payload.eq(out), self.busy.eq(nonempty)]
        take = Signal()
        pop = Signal()
        m.d.comb += [take.eq(i.valid & not_full), pop.eq(nonempty & o.ready)]
        held = [Signal(name=f"held{k}") for k in (0, 1)]
        for k in (0, 1):
            with m.If(~held[k]):
                m.d.sync += ent[k].eq(i.payload)
            with m.If(take & (wp == k)):
                m.d.sync += held[k].eq(1)
            with m.Elif(pop & (rp == k)):
                m.d.sync += held[k].eq(0)
        nxt = Signal(range(4))
        m.d.comb += nxt.eq(count + take - pop)
        m.d.sync += [count.eq(nxt), not_full.eq(nxt < 2), nonempty.eq(nxt != 0)]
        with m.If(take):
            m.d.sync += wp.eq(~wp)
        with m.If(pop):
            m.d.sync += [r.eq(~r) for r in rps]
        return m


class StreamSlice(wiring.Component):
    """One register stage in a stream (a beat takes a cycle more): splits a long route
    between producer and consumer into two hops.

    ``full_rate=True``: ``i_stream.ready`` is ``~full | o_stream.ready`` (one gate behind the
    consumer's ready, keep that a register), one beat per cycle. ``full_rate=False``:
    ``i_stream.ready`` is ``~full`` (a register) and the data register's enable does not
    depend on the consumer at all, at most one beat every two cycles (for wide, rare beats).
    ``copies`` (``full_rate=False`` only): the data register's enable comes from that many
    copies of the ``full`` flag (kept apart on ECP5), each loading an equal slice of the
    payload's bits, so a wide payload spread over the die does not hang on one flip-flop.
    """

    def __init__(self, shape, full_rate: bool = True, copies: int = 1):
        self._MustUse__silence = True     # not elaborated if the check below fails
        if copies < 1 or (copies > 1 and full_rate):
            raise ValueError(f"StreamSlice copies must be >= 1, and 1 with full_rate, "
                             f"got {copies!r}")
        self._MustUse__silence = False
        self.shape, self.full_rate, self.copies = shape, full_rate, copies
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        data = Signal(self.shape)
        full = Signal()
        m.d.comb += [o.valid.eq(full), o.payload.eq(data),
                     i.ready.eq(~full | o.ready if self.full_rate else ~full)]
        # the data register loads whenever it may (its enable never waits for the
        # producer's valid: a beat that is not there loads as junk behind full = 0)
        full_n = Mux(i.ready, i.valid, Mux(o.ready, 0, full))
        m.d.sync += full.eq(full_n)
        if self.copies == 1:
            with m.If(i.ready):
                m.d.sync += data.eq(i.payload)
            return m
        # full_rate=False: i.ready is ~full; each slice of the data loads on ~(its copy)
        prim = use_primitive_for(platform, None)
        raw, pay = Value.cast(data), Value.cast(i.payload)
        n = len(raw)
        step = -(-n // self.copies)
        for k, lo in enumerate(range(0, n, step)):
            f_k = kept_reg(m, full_n, f"full_c{k}", prim)
            with m.If(~f_k):
                m.d.sync += raw[lo:lo + step].eq(pay[lo:lo + step])
        return m
