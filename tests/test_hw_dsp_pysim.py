"""Fast Amaranth-pysim checks of the multiplier primitives and the requantiser datapath."""
import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from hwgen.golden import arith, ops
from hwgen.hw.add import CONFIG_LAYOUT, Adder, AddParams, add_config
from hwgen.hw.dsp import Mult18, UMul
from hwgen.hw.requant import Requantizer, RequantParams, encode_scales


def _run(dut, tb):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def _pipe_check(dut, pairs, latency, expect):
    """Drive one operand pair per cycle with random ce; check latency counted in ce cycles."""
    rng = np.random.default_rng(3)
    got = []

    async def tb(ctx):
        i = 0
        history = []
        for _ in range(len(pairs) * 3 + 20):
            ce = int(rng.random() < 0.7)
            a, b = pairs[min(i, len(pairs) - 1)]
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.ce, ce)
            await ctx.tick()
            if ce:
                history.append((a, b))
                i += 1
                if len(history) >= latency:
                    got.append((history[-latency], ctx.get(dut.p)))
    _run(dut, tb)
    assert len(got) > len(pairs) // 2
    for (a, b), p in got:
        assert p == expect(a, b), (a, b, p)


def test_mult18_behavioural_latency_and_ce():
    rng = np.random.default_rng(0)
    edge = [(-2**17, -2**17), (2**17 - 1, -2**17), (2**17 - 1, 2**17 - 1), (0, 5)]
    pairs = edge + [tuple(int(v) for v in rng.integers(-2**17, 2**17, 2)) for _ in range(200)]
    _pipe_check(Mult18(use_primitive=False), pairs, Mult18.LATENCY, lambda a, b: a * b)


@pytest.mark.parametrize("wa,wb,fabric,dsps,lat", [(24, 24, 0, 4, 5), (24, 24, 49, 3, 5),
                                                   (24, 8, 0, 2, 4), (17, 17, 0, 1, 3)])
def test_umul(wa, wb, fabric, dsps, lat):
    dut = UMul(wa, wb, use_primitive=False, fabric_max_bits=fabric)
    assert (dut.dsp_count, dut.latency) == (dsps, lat)
    rng = np.random.default_rng(1)
    pairs = [((1 << wa) - 1, (1 << wb) - 1), (0, (1 << wb) - 1)]
    pairs += [(int(rng.integers(0, 1 << wa)), int(rng.integers(0, 1 << wb))) for _ in range(150)]
    _pipe_check(dut, pairs, dut.latency, lambda a, b: a * b)


def test_primitive_netlist_instantiates_mult18x18d():
    text = rtlil.convert(UMul(24, 24, use_primitive=True), name="umul")
    assert text.count("MULT18X18D") >= 4
    assert "REG_OUTPUT_CLK" in text and "GSR" in text


def test_umul_rejects_bad_width():
    with pytest.raises(ValueError, match="a_width"):
        UMul(0, 8)


def test_requant_params_checked():
    with pytest.raises(ValueError, match="lanes"):
        RequantParams(lanes=0)
    with pytest.raises(ValueError, match="outside the supported range"):
        encode_scales(np.float32([300.0]))


def test_requantizer_pysim_matches_golden():
    """A few hundred values through the Amaranth simulator (the cocotb test does thousands)."""
    p = RequantParams(lanes=2, channels=4, use_primitive=False)
    dut = Requantizer(p)
    rng = np.random.default_rng(0)
    scales = np.float32([2.0**-3, 3 * 2.0**-9, 0.0123, 2.0**-20])
    words = encode_scales(scales)
    n = 160
    acc = rng.integers(-2**31, 2**31, (n, 2))
    acc[:60] = rng.integers(-1200, 1200, (60, 2))
    acc[60:80] = (2 * rng.integers(-200, 200, (20, 2)) + 1) * 4   # ties at scale 2**-3
    ch = rng.integers(0, 4, (n, 2))
    ch[60:80] = 0
    acc[80] = [2**31 - 1, -2**31]
    acc[81] = [0, (3 << 24) + 1]
    zp, lo, hi = 7, 7, 127
    got = []

    async def tb(ctx):
        ctx.set(dut.zero_point, zp)
        ctx.set(dut.lo, lo)
        ctx.set(dut.hi, hi)
        for i, w in enumerate(words):
            ctx.set(dut.param.en, 1)
            ctx.set(dut.param.addr, i)
            ctx.set(dut.param.data, {"m": int(w) & 0xFFFFFF, "e": int(w) >> 24})
            await ctx.tick()
        ctx.set(dut.param.en, 0)
        i = 0
        while len(got) < n:
            ctx.set(dut.i_stream.valid, int(i < n and rng.random() < 0.8))
            if i < n:
                ctx.set(dut.i_stream.payload, {"acc": [int(v) for v in acc[i]],
                                               "ch": [int(v) for v in ch[i]]})
            ctx.set(dut.o_stream.ready, int(rng.random() < 0.7))
            _, _, iv, ir, ov, ordy, pl = await ctx.tick().sample(
                dut.i_stream.valid, dut.i_stream.ready, dut.o_stream.valid,
                dut.o_stream.ready, dut.o_stream.payload)
            i += bool(iv and ir)
            if ov and ordy:
                got.append([int(v) for v in pl])

    _run(dut, tb)
    exp = arith.requantize(acc.astype(np.int32), scales[ch], zp, lo, hi)
    np.testing.assert_array_equal(np.array(got), exp)


def test_add_config_pack_matches_layout():
    cfg = add_config(0.02, -3, 0.05, 17, 0.04, -128, lo=-128, hi=127, offset=128)
    assert CONFIG_LAYOUT.const(cfg.as_dict()).as_value().value == cfg.pack()


def test_add_config_errors():
    with pytest.raises(ValueError, match="a_zp"):
        add_config(0.1, 200, 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match="offset"):
        add_config(0.1, 0, 0.1, 0, 0.1, 0, offset=3)
    with pytest.raises(ValueError, match="64-bit datapath"):
        add_config(1e-12, 0, 0.3, 0, 1.0, 0)


def test_adder_pysim_matches_golden():
    """Two parameter sets (one with float32 double rounding) through the Amaranth simulator."""
    dut = Adder(AddParams(lanes=2, use_primitive=False))
    rng = np.random.default_rng(5)
    n = 120
    qps = [(0.0123, 5, 0.0371, -20, 0.0419, -7, -7, 127, 0),
           (2.0**-5, 0, 2.0**-6 * (1 + 3 * 2.0**-23), 0, 2.0**-5, 31, -128, 127, 128)]
    cases = []
    for sa, za, sb, zb, sy, zy, lo, hi, off in qps:
        a = rng.integers(-128, 128, (n, 2)).astype(np.int8)
        b = rng.integers(-128, 128, (n, 2)).astype(np.int8)
        exp = ops.add(a.reshape(1, n, 2, 1), sa, za, b.reshape(1, n, 2, 1), sb, zb, sy, zy,
                      lo, hi, offset=off).reshape(n, 2)
        cases.append((add_config(sa, za, sb, zb, sy, zy, lo, hi, off), a, b, exp))
    results = []

    async def tb(ctx):
        for cfg, a, b, _ in cases:
            ctx.set(dut.config, cfg.as_dict())
            got, i = [], 0
            while len(got) < n:
                ctx.set(dut.a_stream.valid, int(i < n and rng.random() < 0.8))
                ctx.set(dut.b_stream.valid, int(i < n and rng.random() < 0.8))
                if i < n:
                    ctx.set(dut.a_stream.payload, [int(v) for v in a[i]])
                    ctx.set(dut.b_stream.payload, [int(v) for v in b[i]])
                ctx.set(dut.o_stream.ready, int(rng.random() < 0.7))
                _, _, av, ar, bv, br, ov, ordy, pl = await ctx.tick().sample(
                    dut.a_stream.valid, dut.a_stream.ready, dut.b_stream.valid,
                    dut.b_stream.ready, dut.o_stream.valid, dut.o_stream.ready,
                    dut.o_stream.payload)
                assert bool(av and ar) == bool(bv and br)
                i += bool(av and ar)
                if ov and ordy:
                    got.append([int(v) for v in pl])
            results.append(np.array(got))
            ctx.set(dut.a_stream.valid, 0)
            ctx.set(dut.b_stream.valid, 0)

    _run(dut, tb)
    for (_, _, _, exp), got in zip(cases, results):
        np.testing.assert_array_equal(got, exp)
