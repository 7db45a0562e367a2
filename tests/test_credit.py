"""CreditFifo: a free-running producer pipeline never overflows the FIFO, beats keep their
order, and with a consumer that is always ready the producer is never held back (with and
without the skid buffer on the read side)."""
from __future__ import annotations

import random

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from hwgen.hw.credit import CreditFifo, SkidBuffer, StreamSlice


def _run(depth, lag, latency, p_ready, p_want, n=300, seed=1, skid=False, copies=1,
         buffered=None):
    """Producer: wants to issue with probability ``p_want`` per cycle, sees ``allow``
    ``lag`` cycles late, the beat reaches the FIFO ``latency`` cycles after issue.
    Returns (beats received, cycles with an issue allowed-but-waiting, overflow, cycles)."""
    m = Module()
    m.submodules.cf = cf = CreditFifo(16, depth, lag=lag, skid=skid, copies=copies,
                                      buffered=buffered)
    allow_d = cf.allow
    for k in range(lag):
        nxt = Signal(name=f"allow_d{k}", init=1)
        m.d.sync += nxt.eq(allow_d)
        allow_d = nxt
    want = Signal()
    seq = Signal(16)
    issue = want & allow_d
    m.d.comb += cf.issue.eq(issue)
    v, dat = issue, seq
    for k in range(latency):
        nv, nd = Signal(name=f"v{k}"), Signal(16, name=f"d{k}")
        m.d.sync += [nv.eq(v), nd.eq(dat)]
        v, dat = nv, nd
    m.d.comb += [cf.w_en.eq(v), cf.w_data.eq(dat)]
    with m.If(issue):
        m.d.sync += seq.eq(seq + 1)

    got, stalled = [], [0]
    rng = random.Random(seed)
    sim = Simulator(m)
    sim.add_clock(1e-8)

    async def bench(ctx):
        for cycle in range(n * 20):
            ctx.set(want, rng.random() < p_want)
            ctx.set(cf.o_stream.ready, rng.random() < p_ready)
            await ctx.delay(1e-9)
            if ctx.get(want) and not ctx.get(issue):
                stalled[0] += 1
            if ctx.get(cf.o_stream.valid) and ctx.get(cf.o_stream.ready):
                got.append(ctx.get(cf.o_stream.payload))
            await ctx.tick()
            if len(got) >= n:
                return cycle

    out = {}

    async def wrap(ctx):
        out["cycles"] = await bench(ctx)
        out["overflow"] = ctx.get(cf.overflow)

    sim.add_testbench(wrap)
    sim.run()
    return got, stalled[0], out["overflow"], out["cycles"]


@pytest.mark.parametrize("depth,lag,latency", [(4, 0, 0), (8, 2, 3), (32, 2, 19), (6, 1, 7)])
@pytest.mark.parametrize("p_ready", [0.2, 0.7])
@pytest.mark.parametrize("skid", [False, True])
def test_never_overflows_and_keeps_order(depth, lag, latency, p_ready, skid):
    got, _, overflow, _ = _run(depth, lag, latency, p_ready, p_want=0.9, skid=skid)
    assert not overflow
    assert got == list(range(len(got))) and len(got) >= 300


def test_skid_pointer_copies_keep_order():
    """The skid buffer's read pointer in copies (each selects a slice of the payload): the
    beats still arrive whole and in order, with random back-pressure."""
    for copies in (2, 5, 16, 40):
        got, _, overflow, _ = _run(8, 2, 3, 0.5, p_want=0.9, skid=True, copies=copies)
        assert not overflow
        assert got == list(range(len(got))) and len(got) >= 300, copies


def test_buffered_skid_keeps_order_and_rate():
    """skid with the FIFO's output register kept (buffered=True): order kept under random
    back-pressure, and one beat per cycle with an always-ready consumer."""
    for depth, lag, latency in ((8, 2, 3), (32, 2, 19), (6, 1, 7)):
        got, _, overflow, _ = _run(depth, lag, latency, 0.4, p_want=0.9, skid=True,
                                   buffered=True)
        assert not overflow and got == list(range(len(got))) and len(got) >= 300
    got, stalled, overflow, cycles = _run(depth=32, lag=2, latency=19, p_ready=1.0,
                                          p_want=1.0, skid=True, buffered=True)
    assert not overflow and got == list(range(len(got))) and stalled == 0
    assert cycles <= 300 + 19 + 2 + 5


@pytest.mark.parametrize("skid", [False, True])
def test_full_throughput_when_consumer_always_ready(skid):
    """Depth >= latency + lag + 4: an always-ready consumer never holds the producer back
    (through the skid buffer too: one beat per cycle)."""
    got, stalled, overflow, cycles = _run(depth=32, lag=2, latency=19, p_ready=1.0, p_want=1.0,
                                          skid=skid)
    assert not overflow and got == list(range(len(got)))
    assert stalled == 0
    assert cycles <= 300 + 19 + 2 + 4     # one beat per cycle after the pipeline fills


def test_too_shallow_fifo_throttles_but_stays_correct():
    got, stalled, overflow, _ = _run(depth=4, lag=2, latency=10, p_ready=1.0, p_want=1.0)
    assert not overflow and got == list(range(len(got)))
    assert stalled > 0      # the credit loop, not the FIFO, limits the rate


def test_params_are_checked():
    with pytest.raises(ValueError, match="depth"):
        CreditFifo(8, 2, lag=1)
    with pytest.raises(ValueError, match="lag"):
        CreditFifo(8, 4, lag=-1)
    with pytest.raises(ValueError, match="copies"):
        StreamSlice(8, full_rate=True, copies=2)
    with pytest.raises(ValueError, match="copies"):
        StreamSlice(8, full_rate=False, copies=0)
    with pytest.raises(ValueError, match="SkidBuffer copies"):
        SkidBuffer(8, copies=0)


def _slice_run(full_rate, p_valid, p_ready, n=200, seed=3, copies=1):
    """StreamSlice between a random producer (valid, holds a beat until taken) and a random
    consumer: returns (beats received in order, cycles)."""
    m = Module()
    m.submodules.sl = sl = StreamSlice(16, full_rate=full_rate, copies=copies)
    rng = random.Random(seed)
    got = []
    sim = Simulator(m)
    sim.add_clock(1e-8)
    out = {}

    async def bench(ctx):
        nxt, offering = 0, False
        for cycle in range(n * 20):
            if not offering:
                offering = rng.random() < p_valid
            ctx.set(sl.i_stream.valid, offering)
            # junk while not valid: the slice must never pass it on
            ctx.set(sl.i_stream.payload, nxt if offering else 0xBEEF)
            ctx.set(sl.o_stream.ready, rng.random() < p_ready)
            await ctx.delay(1e-9)
            if ctx.get(sl.o_stream.valid) and ctx.get(sl.o_stream.ready):
                got.append(ctx.get(sl.o_stream.payload))
            if offering and ctx.get(sl.i_stream.ready):
                nxt, offering = nxt + 1, False
            await ctx.tick()
            if len(got) >= n:
                out["cycles"] = cycle
                return

    sim.add_testbench(bench)
    sim.run()
    return got, out["cycles"]


@pytest.mark.parametrize("full_rate,copies", [(False, 1), (True, 1), (False, 3)])
@pytest.mark.parametrize("p_valid,p_ready", [(0.5, 0.5), (1.0, 0.3), (0.3, 1.0)])
def test_stream_slice_keeps_order(full_rate, copies, p_valid, p_ready):
    """In order, no junk, whatever the handshakes; with the data register's enable split
    over copies of the flag (three slices of the 16 bits) too."""
    got, _ = _slice_run(full_rate, p_valid, p_ready, copies=copies)
    assert got == list(range(len(got))) and len(got) >= 200


@pytest.mark.parametrize("full_rate,per_beat", [(True, 1), (False, 2)])
def test_stream_slice_rate(full_rate, per_beat):
    """Always valid, always ready: one beat per cycle at full rate, one per two cycles
    otherwise."""
    got, cycles = _slice_run(full_rate, 1.0, 1.0)
    assert got == list(range(200))
    assert cycles <= per_beat * 200 + 2
