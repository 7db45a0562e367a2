"""Depthwise convolution engine (hwgen.hw.dwconv) against hwgen.golden.ops.conv2d_acc.

Fast tier: two builds (stride 2 on a 9x7 image with 6 channels on 4 lanes; a MobileNet
0.25-like 16-channel 24x24 stride-1 layer on 8 lanes, which also measures utilisation) and
pure-Python parameter/geometry checks. Slow tier: more geometries (k=5, k=7, 1x1 spatial,
asymmetric padding, stride 2 on odd sizes, one lane), the engine + requantiser composition,
and a deliberately broken engine (pads with 0 instead of x_zp) that must fail.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest

from hwgen.hw.dwconv import DwConvEngine, DwConvParams, DwConvRequant
from rtl_tests import harness


def _cfg_id(p: DwConvParams, requant: bool = False) -> str:
    t, l, b, r = p.padding
    bug = f"_bug_{p._inject_bug}" if p._inject_bug else ""
    return (f"dwconv{'q' if requant else ''}_c{p.channels}_{p.height}x{p.width}_k{p.k}s{p.stride}"
            f"p{t}{l}{b}{r}_l{p.lanes}{bug}")


def run_engine(p: DwConvParams, *, trials: int = 10, seed: int = 0, measure: dict | None = None,
               measure_only: bool = False, requant: bool = False) -> None:
    """Build ``p`` (one Verilator build per structural configuration) and run the cocotb tests
    (``requant``: the DwConvRequant composition, int8 outputs against ``ops.conv2d``)."""
    config = {"params": asdict(p), "trials": trials, "seed": seed, "measure_only": measure_only,
              "requant": requant}
    if measure:
        config["measure"] = measure
    dut = DwConvRequant(p) if requant else DwConvEngine(p)
    harness.run(dut, toplevel="dwconv", test_module="cocotb_dwconv", config=config,
                build_name=_cfg_id(p, requant))


def measure_cycles(p: DwConvParams, *, tensors: int = 1, seed: int = 0) -> dict:
    """Simulate ``p`` with the input always valid and the output always ready.

    Returns a dict with ``cycles`` (first accepted input beat to last accepted output beat,
    inclusive, for ``tensors`` tensors back to back), ``out_beats``, ``macs``,
    ``ideal_cycles`` (``tensors * p.stream_beats``), ``mac_utilisation`` (useful MACs /
    (cycles * lanes * k * k)) and ``beat_utilisation`` (output beats per cycle). Also checks
    the outputs bit-exact. This is the measurement bench/ should reuse.
    """
    build = harness.BUILD_ROOT / harness.simulator() / _cfg_id(p)
    build.mkdir(parents=True, exist_ok=True)
    result = build / f"measure_{os.getpid()}.json"
    run_engine(p, seed=seed, measure={"tensors": tensors, "result": str(result)},
               measure_only=True)
    return json.loads(result.read_text())


FAST_S2 = DwConvParams(channels=6, height=9, width=7, k=3, stride=2, padding=1, lanes=4)
MOBILENET_S1 = DwConvParams(channels=16, height=24, width=24, k=3, stride=1, padding=1, lanes=8)


def test_dwconv_stride2_odd():
    run_engine(FAST_S2, trials=40)


def test_dwconv_stride1_mobilenet_utilisation(tmp_path):
    result = tmp_path / "util.json"
    run_engine(MOBILENET_S1, trials=6, measure={"tensors": 2, "result": str(result),
                                                "min_util": 0.9})
    res = json.loads(result.read_text())
    assert res["mac_utilisation"] >= 0.9, res
    print(f"dwconv {MOBILENET_S1}: {res['cycles']} cycles for {res['tensors']} tensors, "
          f"MAC utilisation {res['mac_utilisation']:.3f}")


@pytest.mark.slow
def test_dwconv_broken_variant_is_caught():
    """An engine that pads with 0 instead of x_zp must fail the bit-exact comparison."""
    bad = DwConvParams(channels=3, height=5, width=4, k=3, stride=1, padding=1, lanes=2,
                       _inject_bug="pad_zero")
    with pytest.raises(AssertionError, match="Arrays are not equal"):   # a data mismatch
        run_engine(bad, trials=6)


SLOW = [
    DwConvParams(channels=5, height=1, width=1, k=3, stride=1, padding=1, lanes=4),
    DwConvParams(channels=3, height=11, width=9, k=5, stride=2, padding=2, lanes=2),
    DwConvParams(channels=12, height=13, width=10, k=5, stride=1, padding=2, lanes=8),
    DwConvParams(channels=9, height=7, width=8, k=3, stride=2, padding=(0, 0, 1, 1), lanes=8),
    DwConvParams(channels=4, height=6, width=5, k=3, stride=1, padding=0, lanes=1),
    DwConvParams(channels=2, height=9, width=9, k=7, stride=1, padding=3, lanes=2),
    DwConvParams(channels=8, height=2, width=3, k=3, stride=2, padding=(1, 0, 1, 2), lanes=8),
]


@pytest.mark.slow
@pytest.mark.parametrize("p", SLOW, ids=_cfg_id)
def test_dwconv_slow(p):
    run_engine(p, trials=20, seed=1)


@pytest.mark.slow
def test_dwconv_requant():
    """Engine + requantiser (QLinearConv depthwise) bit-exact with ops.conv2d."""
    run_engine(DwConvParams(channels=6, height=7, width=8, k=3, stride=1, padding=1, lanes=4),
               trials=25, seed=2, requant=True)


# -- parameter checks and geometry (no simulation) --------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(k=4), "k must be 3, 5 or 7"),
    (dict(stride=3), "stride must be 1 or 2"),
    (dict(lanes=0), "lanes must be a positive int"),
    (dict(channels=2.0), "channels must be a positive int"),
    (dict(padding=(2, 0, 1, 0)), "top\\+bottom and left\\+right must each be at most k-1=2"),
    (dict(padding=-1), "non-negative"),
    (dict(height=1, padding=0), "smaller than the 3x3 kernel"),
    (dict(_inject_bug="nope"), "_inject_bug"),
])
def test_params_rejects(kwargs, match):
    base = dict(channels=4, height=5, width=5, k=3, stride=1, padding=1, lanes=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DwConvParams(**base)


def test_params_padding_type():
    with pytest.raises(TypeError, match="padding"):
        DwConvParams(channels=1, height=5, width=5, padding=(1, 1, 1))


@pytest.mark.parametrize("p", [FAST_S2, MOBILENET_S1] + SLOW, ids=_cfg_id)
def test_emission_order(p):
    """The invariant the engine relies on: emission positions strictly increase, so at most
    one output per beat, and the flush covers the last one."""
    from hwgen.golden.ops import pool_out_size
    t, l, b, r = p.padding
    assert p.out_height == pool_out_size(p.height, p.k, p.stride, t, b)
    assert p.out_width == pool_out_size(p.width, p.k, p.stride, l, r)
    pos = [p.emit_position(g, oy, ox) for g in range(p.groups)
           for oy in range(p.out_height) for ox in range(p.out_width)]
    assert all(b > a for a, b in zip(pos, pos[1:]))
    assert pos[0] >= 0 and pos[-1] == p.stream_beats - 1 or p.flush_beats == 0
    assert pos[-1] < p.stream_beats


def test_mobilenet_layer_stream_beats():
    assert MOBILENET_S1.stream_beats == 2 * 24 * 24 + 25
    assert MOBILENET_S1.dsp_count == 72


@pytest.mark.parametrize("k, width", [(3, 4), (3, 1), (5, 2)])
def test_linewindow_pysim(k, width):
    """LineWindow alone (Amaranth simulator): random bubbles and stalls; every window cell
    equals the pixel (k-1-j) + (k-1-i)*width positions before the newest one."""
    import random

    from amaranth import unsigned
    from amaranth.sim import Simulator

    from hwgen.hw.linebuf import LineWindow

    dut = LineWindow(unsigned(8), k, width)
    rng = random.Random(k * 10 + width)
    checked = []

    async def tb(ctx):
        n, x = 0, 0             # next pixel index and its column
        b_idx, b2_idx, c_idx = None, None, None
        for _ in range(400):
            en, valid = rng.random() < 0.8, rng.random() < 0.7
            ctx.set(dut.en, en)
            ctx.set(dut.i_valid, valid)
            ctx.set(dut.i_x, x)
            ctx.set(dut.i_data, n % 251)
            await ctx.tick()
            if en:
                if b2_idx is not None:
                    c_idx = b2_idx
                b2_idx = b_idx
                b_idx = n if valid else None
                if valid:
                    n, x = n + 1, (x + 1) % width
            if c_idx is None:
                continue
            win = ctx.get(dut.window)
            for j in range(k):
                for i in range(k):
                    src = c_idx - (k - 1 - j) - (k - 1 - i) * width
                    if src >= 0:
                        assert win[j][i] == src % 251, (c_idx, j, i)
            checked.append(c_idx)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert len(set(checked)) > 100
