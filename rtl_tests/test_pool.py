"""Pooling unit (hwgen/hw/pool.py): 3x3 max, 3x3 average (QLinearAveragePool), global
average (QLinearGlobalAveragePool), bit-exact with hwgen.golden.ops under random stalls.

Fast tier: one Verilator build (3 lanes) running many random layers of all three modes, and
an Amaranth-simulator run of a deliberately broken max tree that the same comparison must
catch. Slow tier: other lane counts and divider speeds.
"""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwgen.golden import ops
from hwgen.hw.pool import PoolMode, PoolParams, PoolUnit
from rtl_tests import harness


def _run(params: PoolParams, *, draws, seed, modes=(0, 1, 2), tag="fast"):
    harness.run(PoolUnit(params), toplevel="pool_unit", test_module="cocotb_pool",
                config=dict(seed=seed, draws=draws, lanes=params.lanes,
                            max_width=params.max_width, max_height=params.max_height,
                            interval=params.avg_interval, modes=list(modes)),
                build_name=f"pool_l{params.lanes}_b{params.bits_per_cycle}_{tag}")


def test_pool_unit():
    _run(PoolParams(lanes=3, max_width=16, max_height=16), draws=36, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("params", [
    PoolParams(lanes=8, max_width=16, max_height=16, bits_per_cycle=3),
    PoolParams(lanes=1, max_width=32, max_height=16, bits_per_cycle=1),
], ids=["l8b3", "l1b1"])
def test_pool_unit_slow(params):
    _run(params, draws=60, seed=11, tag="slow")


def test_pool_config_errors():
    p = PoolParams(lanes=2, max_width=8, max_height=8)
    with pytest.raises(ValueError, match="max_width"):
        p.config(PoolMode.MAX, 8, 8, padding=(1, 1, 1, 1), ceil_mode=True)
    with pytest.raises(ValueError, match="stride"):
        p.config(PoolMode.MAX, 5, 5, stride=3)
    with pytest.raises(ValueError, match="smaller"):
        p.config(PoolMode.MAX, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        p.config(PoolMode.GLOBAL, 4, 4, x_scale=1.0, y_scale=1e-6)
    with pytest.raises(ValueError, match="bits_per_cycle"):
        PoolParams(bits_per_cycle=20)
    # a 3x3 AvgPool over a 3x3 input without padding is onnxruntime's global kernel
    assert p.config(PoolMode.AVG, 3, 3)["mode"] == PoolMode.GLOBAL
    with pytest.raises(ValueError, match="without AVG"):
        PoolParams(avg_pool=False).config(PoolMode.AVG, 5, 5, padding=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="at least one"):
        PoolParams(max_pool=False, avg_pool=False, global_pool=False)


def _pysim_max(params, x, padding, ceil):
    """Stream x (C, H, W) through a PoolUnit in MAX mode in Amaranth's simulator."""
    dut = PoolUnit(params)
    cfg = params.config(PoolMode.MAX, x.shape[1], x.shape[2], stride=2, padding=padding,
                        ceil_mode=ceil)
    y = ops.maxpool(x[None], 3, 2, padding, ceil)[0]
    lanes = params.lanes
    beats = [[int(x[min(g + ln, x.shape[0] - 1), r, c]) for ln in range(lanes)]
             for g in range(0, x.shape[0], lanes)
             for r in range(x.shape[1]) for c in range(x.shape[2])]
    n_out = -(-x.shape[0] // lanes) * y.shape[1] * y.shape[2]
    got = []
    rng = random.Random(0)

    async def tb(ctx):
        for k, v in cfg.items():
            ctx.set(getattr(dut, k), v)
        await ctx.tick().repeat(2)
        i = 0
        while len(got) < n_out:
            offer = i < len(beats) and rng.random() < 0.8
            ctx.set(dut.i_stream.valid, offer)
            if offer:
                ctx.set(dut.i_stream.payload, beats[i])
            ready = rng.random() < 0.7
            ctx.set(dut.o_stream.ready, ready)
            await ctx.delay(1e-9)
            if offer and ctx.get(dut.i_stream.ready):
                i += 1
            if ready and ctx.get(dut.o_stream.valid):
                got.append(list(ctx.get(dut.o_stream.payload)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    out = np.zeros(y.shape, np.int64)
    k = 0
    for g in range(0, x.shape[0], lanes):
        for oy in range(y.shape[1]):
            for ox in range(y.shape[2]):
                for ln in range(lanes):
                    if g + ln < x.shape[0]:
                        out[g + ln, oy, ox] = got[k][ln]
                k += 1
    return out.astype(np.int8), y


def test_pool_max_pysim_and_broken_variant():
    """The comparison catches a hardware bug: with ``_inject_bug`` padding cells take part
    in the max as 0, which wins over all-negative windows at the border."""
    x = -np.random.default_rng(4).integers(1, 128, (3, 5, 6)).astype(np.int8)
    # a max-only unit (the other modes not built), as a SqueezeNet accelerator would use
    good = PoolParams(lanes=2, max_width=8, max_height=8, avg_pool=False, global_pool=False)
    got, want = _pysim_max(good, x, (1, 1, 1, 1), True)
    np.testing.assert_array_equal(got, want)
    bad = PoolParams(lanes=2, max_width=8, max_height=8, avg_pool=False, global_pool=False,
                     _inject_bug=True)
    got, want = _pysim_max(bad, x, (1, 1, 1, 1), True)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(got, want)


def test_round_sig_logic_matches_golden():
    """The float32 rounder of the average path (leading-one tree + thermometer mask) equals
    arith.round_sig on edge values and random draws, for several widths."""
    from amaranth import Module, Signal

    from hwgen.golden.arith import round_sig
    from hwgen.hw.pool import _bitlen, _round_sig
    for width in (5, 24, 25, 37, 40):
        bits = 24 if width > 24 else 3
        m = Module()
        v = Signal(width)
        bl = _bitlen(m, v, "bl")
        rs = _round_sig(m, v, bits, "rs")
        rng = random.Random(width)
        vals = [0, 1, (1 << width) - 1, (1 << width) - 2, 0b1011 << (width - 4)]
        vals += [rng.getrandbits(rng.randint(1, width)) for _ in range(200)]
        sim = Simulator(m)

        async def tb(ctx, vals=vals, width=width, bits=bits, v=v, bl=bl, rs=rs):
            for val in vals:
                ctx.set(v, val)
                await ctx.delay(1e-9)
                assert ctx.get(bl) == val.bit_length()
                assert ctx.get(rs) == int(round_sig(np.int64(val), bits)), (width, val)

        sim.add_testbench(tb)
        sim.run()
