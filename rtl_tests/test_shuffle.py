"""Channel-shuffle address permuter (hwgen/hw/shuffle.py).

Fast tier: the AddressRemap pipeline in Amaranth's simulator under random idle gaps and
random backpressure (no Verilator build), checked against hwgen.golden.ops.channel_shuffle
through the buffer layout, and the cycle count proven to be one beat per accepted cycle.
The Verilator run of the permuter is the shared shuffle+concat design in test_concat.py.
"""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwgen.golden import ops
from hwgen.hw import actbuf
from hwgen.hw.shuffle import AddressRemap, ShuffleParams, inverse_shuffle
from hwgen.ir import ChannelShuffle


def test_inverse_shuffle_matches_ir_permutation():
    for c, g in [(12, 3), (240, 3), (272, 4), (384, 8), (200, 2), (7, 1), (24, 24)]:
        perm = ChannelShuffle(name="s", inputs=("x",), output="y", groups=g).permutation(c)
        dest = inverse_shuffle(c, g)
        np.testing.assert_array_equal(dest[perm], np.arange(c))


def test_params_errors():
    with pytest.raises(ValueError, match="layout"):
        ShuffleParams(max_channels=8, max_pixels=4, depth=64, layout="nhwc")
    p = ShuffleParams(max_channels=16, max_pixels=4, depth=64, max_groups=4)
    with pytest.raises(ValueError, match="divide"):
        p.config(channels=10, groups=3, shuffle=True)
    with pytest.raises(ValueError, match="max_channels"):
        p.config(channels=17)


def _run_remap(params, cases, p_valid, p_ready, seed):
    """Stream every case through one AddressRemap; return per-case memory images and the
    (accepted beats, cycles with valid offered) counts."""
    dut = AddressRemap(params)
    rng = random.Random(seed)
    results = []
    counts = {"beats": 0, "valid_cycles": 0, "stall_cycles": 0}

    async def tb(ctx):
        for cfg, beats, depth in cases:
            for name, v in cfg.items():
                ctx.set(getattr(dut, name), v)
            await ctx.tick().repeat(3)
            mem = np.zeros(depth, np.int64)
            sent = got = 0
            while got < len(beats):
                offer = sent < len(beats) and rng.random() < p_valid
                if offer:
                    px, ch, val = beats[sent]
                    ctx.set(dut.i_stream.valid, 1)
                    ctx.set(dut.i_stream.payload, {"pixel": px, "channel": ch, "data": val & 0xFF})
                else:
                    ctx.set(dut.i_stream.valid, 0)
                ready = rng.random() < p_ready
                ctx.set(dut.o_stream.ready, ready)
                await ctx.delay(1e-9)
                if offer:
                    counts["valid_cycles"] += 1
                    if ctx.get(dut.i_stream.ready):
                        sent += 1
                        counts["beats"] += 1
                    else:
                        counts["stall_cycles"] += 1
                if ready and ctx.get(dut.o_stream.valid):
                    mem[ctx.get(dut.o_stream.payload.addr)] = ctx.get(dut.o_stream.payload.data)
                    got += 1
                await ctx.tick()
            ctx.set(dut.i_stream.valid, 0)
            results.append(mem)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return results, counts


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_remap_shuffle_pysim(layout):
    params = ShuffleParams(max_channels=48, max_pixels=16, depth=1024, max_groups=8,
                           layout=layout)
    rng = np.random.default_rng(3)
    cases, expect = [], []
    for c, g, shuffle, (h, w) in [(12, 3, True, (2, 3)), (48, 8, True, (1, 2)),
                                  (30, 5, True, (3, 3)), (40, 4, True, (4, 4)),
                                  (9, 1, False, (2, 2)), (7, 7, True, (1, 1))]:
        x = rng.integers(-128, 128, (1, c, h, w)).astype(np.int8)
        npx = h * w
        pitch = c + int(rng.integers(0, 3)) if layout == "hwc" else npx + int(rng.integers(0, 3))
        base = int(rng.integers(0, 50))
        cfg = params.config(channels=c, groups=g, shuffle=shuffle, base=base, pitch=pitch,
                            pixels=npx)
        order = [(p, ch) for p in range(npx) for ch in range(c)]
        rng.shuffle(order)                       # any write order works
        beats = [(p, ch, int(x[0, ch].reshape(-1)[p])) for p, ch in order]
        cases.append((cfg, beats, params.depth))
        y = ops.channel_shuffle(x, g) if shuffle else x
        expect.append((y[0], layout, base, pitch))
    mems, counts = _run_remap(params, cases, p_valid=0.7, p_ready=0.6, seed=5)
    for mem, (y, lay, base, pitch) in zip(mems, expect):
        got = actbuf.buffer_to_tensor(mem, y.shape, lay, base, pitch)
        np.testing.assert_array_equal(got, y)
    # every offered beat is accepted unless the consumer stalls: no cycle of its own
    assert counts["beats"] == sum(len(b) for _, b, _ in cases)
    assert counts["stall_cycles"] > 0  # backpressure reached the producer


def test_remap_full_rate_pysim():
    """With the consumer always ready, every cycle with valid input is one accepted beat and
    the last write leaves ``latency`` cycles after the last beat."""
    params = ShuffleParams(max_channels=24, max_pixels=8, depth=256, max_groups=4)
    dut = AddressRemap(params)
    c, g, npx = 24, 3, 8
    cfg = params.config(channels=c, groups=g, shuffle=True, pitch=c)
    beats = [(p, ch, (p * 31 + ch) & 0xFF) for p in range(npx) for ch in range(c)]
    log = {}

    async def tb(ctx):
        for name, v in cfg.items():
            ctx.set(getattr(dut, name), v)
        ctx.set(dut.o_stream.ready, 1)
        await ctx.tick().repeat(3)
        cycle, outs = 0, []
        for px, ch, val in beats:
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, {"pixel": px, "channel": ch, "data": val})
            await ctx.delay(1e-9)
            assert ctx.get(dut.i_stream.ready)
            if ctx.get(dut.o_stream.valid):
                outs.append(cycle)
            await ctx.tick()
            cycle += 1
        ctx.set(dut.i_stream.valid, 0)
        while len(outs) < len(beats):
            await ctx.delay(1e-9)
            if ctx.get(dut.o_stream.valid):
                outs.append(cycle)
            await ctx.tick()
            cycle += 1
        log["outs"] = outs

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    outs = log["outs"]
    assert outs == list(range(dut.latency, dut.latency + len(beats)))
