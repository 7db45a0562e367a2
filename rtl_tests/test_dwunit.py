"""Run-time-configurable depthwise unit (hwgen.hw.dwunit.DwUnit) against hwgen.golden.ops.conv2d.

A bench component (:class:`DwBench`) holds the unit's three memories (byte-wide arena, tap memory,
64-bit channel store, all with a read latency of 1..5 cycles: ``mem_latency - 1`` more registers on
each read data) behind one load port and exposes the write requests. Each run loads two layers into
disjoint regions (inputs at ``in_addr > 0`` with a pitch larger than the channel count, taps at
``w_base``, records at ``ch_base``), starts them back to back (the second in the cycle after
``done``), captures every write request and checks that each (pix, ch) is written exactly once with
the int8 value of ``ops.conv2d`` (random tensors, weights, biases, per-channel scales sized so that
the outputs spread over many codes, x_zp/y_zp, clamp ranges).
The cycle count of every layer (start to done) is checked against the streaming goal.

Every case runs with ``mem_latency`` 1, 2 and 5 (unit and bench memories matching; the small
simulator pair also with 3 and 4). Fast tier: three Verilator builds (cocotb_dwunit, one per latency)
running every geometry (12 layers in 6 back-to-back pairs: stride 1, 2 and 1x2, padding
(1,1,1,1), (0,0,1,1), (1,0,1,1) and none, 6x6 .. 12x12, 9x16, 2x3, 1x1, 1..8 channels);
Amaranth-simulator runs of a small layer pair, of the same pair through a unit that pads with 0
instead of ``x_zp`` (must fail), through units whose mem_latency differs from the memories' (1
vs 2, 2 vs 4, 4 vs 3: must fail), and of a real MobileNet depthwise layer (descriptor and
weight stores from hwgen.hw.layer_io).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from amaranth import Const, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwgen.golden import arith, ops
from hwgen.hw.dwunit import DwUnit, check_desc
from hwgen.hw.layer_io import DESC
from hwgen.hw.requant import encode_scales
from rtl_tests import harness

ARENA_BITS, TAP_BITS, CH_BITS = 12, 9, 6
MAX_WIDTH = 16


class DwBench(wiring.Component):
    """DwUnit + arena / tap / channel-store memories; ``ld_*`` writes memory ``ld_sel``
    (0 arena, 1 taps, 2 channel store). The memories' read latency is ``mem_latency``
    (default: the unit's ``unit_latency``); each cycle above 1 adds a register on each read
    data."""

    def __init__(self, max_width=MAX_WIDTH, bug=None, unit_latency=1, mem_latency=None):
        self.unit = DwUnit(max_width, 64, use_primitive=False, mem_latency=unit_latency,
                           _inject_bug=bug)
        self.mem_latency = unit_latency if mem_latency is None else mem_latency
        super().__init__({
            "desc": In(DESC), "start": In(1), "done": Out(1),
            "ld_en": In(1), "ld_sel": In(2), "ld_addr": In(ARENA_BITS), "ld_data": In(64),
            "wr_en": Out(1), "wr_pix": Out(24), "wr_ch": Out(16), "wr_data": Out(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = u = self.unit
        m.d.comb += [u.desc.eq(self.desc), u.start.eq(self.start), self.done.eq(u.done),
                     self.wr_en.eq(u.wr_en), self.wr_pix.eq(u.wr_pix), self.wr_ch.eq(u.wr_ch),
                     self.wr_data.eq(u.wr_data)]
        for sel, (name, shape, bits, addr, dat) in enumerate([
                ("arena", signed(8), ARENA_BITS, u.rd_addr, u.rd_data),
                ("taps", signed(8), TAP_BITS, u.t_addr, u.t_data),
                ("chs", 64, CH_BITS, u.c_addr, u.c_data)]):
            mem = Memory(shape=shape, depth=1 << bits, init=[])
            m.submodules[name] = mem
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.en.eq(self.ld_en & (self.ld_sel == sel)), wp.addr.eq(self.ld_addr),
                         wp.data.eq(self.ld_data), rp.addr.eq(addr[:bits])]
            out = rp.data
            for k in range(self.mem_latency - 1):      # output register(s)
                reg = Signal.like(rp.data, name=f"{name}_q{k}")
                m.d.sync += reg.eq(out)
                out = reg
            m.d.comb += dat.eq(out)
        return m


def make_layer(rng, h, w, c, stride, pad, in_addr, w_base, ch_base):
    """One random depthwise layer: DESC fields, memory loads and the golden output."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    t, l, b, r = pad
    oh, ow = (h + t + b - 3) // sh + 1, (w + l + r - 3) // sw + 1
    pitch = c + int(rng.integers(1, 4))
    x = rng.integers(-128, 128, (1, c, h, w), dtype=np.int8)
    if rng.random() < 0.2:
        x[...] = rng.choice([-128, 127])          # saturating tensor
    wt = rng.integers(-128, 128, (c, 1, 3, 3), dtype=np.int8)
    x_zp, y_zp = int(rng.integers(-128, 128)), int(rng.integers(-60, 61))
    # scales and biases sized to the layer's sums, so that the outputs spread over many codes
    # (about +-40 around y_zp, some clamped) and a wrong tap, pixel or mask shows
    sums = ops.conv2d_acc(x, x_zp, wt, None, (sh, sw), (t, l, b, r), groups=c)
    spread = max(float(np.std(sums)), 1.0)
    bias = rng.integers(-int(2 * spread) - 1, int(2 * spread) + 1, c).astype(np.int32)
    xs, ys = float(rng.uniform(0.01, 0.05)), float(rng.uniform(0.02, 0.2))
    wsc = (rng.uniform(0.5, 1.5, c) * 40 * ys / (xs * spread)).astype(np.float32)
    scale = arith.conv_scale(xs, wsc, ys)
    lo, hi = int(rng.integers(-128, y_zp - 10)), int(rng.integers(y_zp + 10, 128))
    if rng.random() < 0.4:
        lo, hi = -128, 127
    y = ops.conv2d(x, x_zp, wt, bias, scale, y_zp, (sh, sw), (t, l, b, r), groups=c,
                   lo=lo, hi=hi)[0]
    assert y.shape == (c, oh, ow)
    f = {k: 0 for k in DESC.members}
    f.update(in_addr=in_addr, in_pitch=pitch, in_h=h, in_w=w, kh=3, kw=3, sh=sh, sw=sw,
             pad_t=t, pad_l=l, out_h=oh, out_w=ow, out_c=c, groups=c, cin_g=1,
             x_zp=x_zp, y_zp=y_zp, lo=lo, hi=hi, w_base=w_base, ch_base=ch_base)
    check_desc(f, MAX_WIDTH, 64)
    loads = []
    for yy in range(h):
        for xx in range(w):
            for cc in range(c):
                loads.append((0, in_addr + (yy * w + xx) * pitch + cc, int(x[0, cc, yy, xx]) & 0xff))
    for i, v in enumerate(wt.reshape(-1)):
        loads.append((1, w_base + i, int(v) & 0xff))
    me = encode_scales(scale)
    for cc in range(c):
        loads.append((2, ch_base + cc, (int(bias[cc]) & 0xffffffff) | (int(me[cc]) << 32)))
    end = in_addr + h * w * pitch
    assert end <= 1 << ARENA_BITS and w_base + 9 * c <= 1 << TAP_BITS
    assert ch_base + c <= 1 << CH_BITS
    name = f"{h}x{w}c{c}s{sh}{sw}p{t}{l}{b}{r}"
    return {"name": name, "desc": Const.cast(DESC.const(f)).value, "fields": f,
            "loads": loads, "expected": y.astype(int).tolist(), "end": end}


def make_run(rng, geoms):
    """Two layers (geometries (h, w, c, stride, pad)) in disjoint memory regions."""
    layers, a0, t0, c0 = [], int(rng.integers(1, 40)), int(rng.integers(1, 20)), 1
    for h, w, c, s, p in geoms:
        lay = make_layer(rng, h, w, c, s, p, a0, t0, c0)
        layers.append(lay)
        a0, t0, c0 = lay["end"] + int(rng.integers(0, 20)), t0 + 9 * c + 3, c0 + c + 1
    return {"loads": [ld for lay in layers for ld in lay["loads"]],
            "layers": [{k: lay[k] for k in ("name", "desc", "fields", "expected")}
                       for lay in layers]}


S_SAME = (1, 1, 1, 1)
TF_S2 = (0, 0, 1, 1)
RUNS = [   # pairs of layers run back to back
    [(6, 6, 3, 1, S_SAME), (12, 12, 8, 2, TF_S2)],
    [(7, 5, 5, 2, TF_S2), (12, 12, 8, 1, S_SAME)],
    [(6, 6, 8, 2, S_SAME), (7, 5, 1, 1, S_SAME)],
    [(5, 7, 4, 1, (0, 0, 0, 0)), (2, 3, 6, 1, S_SAME)],         # tiny planes: loader stalls
    [(9, 16, 2, (1, 2), (1, 0, 1, 1)), (7, 7, 7, 2, S_SAME)],   # sh != sw, odd stride-2 'same'
    [(12, 12, 8, 1, S_SAME), (1, 1, 3, 1, S_SAME)],
]


def check_layer(layer, writes, cycles):
    """``writes``: (pix, ch, data) tuples of one layer. Bit-exact, each element once."""
    exp = np.array(layer["expected"], np.int64)
    c, oh, ow = exp.shape
    got = np.full(exp.shape, 999, np.int64)
    count = np.zeros(exp.shape, np.int64)
    for pix, ch, val in writes:
        assert ch < c and pix < oh * ow, (layer["name"], pix, ch)
        got[ch, pix // ow, pix % ow] = val
        count[ch, pix // ow, pix % ow] += 1
    np.testing.assert_array_equal(count, np.ones_like(count), err_msg=layer["name"] + " counts")
    np.testing.assert_array_equal(got, exp, err_msg=layer["name"])


def cycle_budget(fields) -> int:
    """Streaming goal: one input byte per cycle, a fixed per-layer overhead (setup, first
    parameter load, flush, pipeline latency); tiny planes wait for the 9-cycle loader."""
    return fields["out_c"] * max(fields["in_h"] * fields["in_w"], 10) + 2 * fields["in_w"] + 60


# -- Amaranth simulator (small pair; also the broken-variant check) ----------------------------

def run_pysim(run, bug=None, max_width=MAX_WIDTH, latency=1, mem_latency=None):
    from amaranth.sim import Simulator
    dut = DwBench(max_width=max_width, bug=bug, unit_latency=latency, mem_latency=mem_latency)
    results = []

    async def tb(ctx):
        for sel, addr, val in run["loads"]:
            ctx.set(dut.ld_en, 1)
            ctx.set(dut.ld_sel, sel)
            ctx.set(dut.ld_addr, addr)
            ctx.set(dut.ld_data, val)
            await ctx.tick()
        ctx.set(dut.ld_en, 0)
        await ctx.tick()
        for layer in run["layers"]:
            ctx.set(dut.desc.as_value(), layer["desc"])
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            writes, cycles = [], 1
            while True:
                if ctx.get(dut.wr_en):
                    writes.append((ctx.get(dut.wr_pix), ctx.get(dut.wr_ch), ctx.get(dut.wr_data)))
                if ctx.get(dut.done):
                    break
                await ctx.tick()
                cycles += 1
                assert cycles < 20000, "timeout"
            results.append((layer, writes, cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return results


SMALL = [(5, 4, 3, 1, S_SAME), (6, 6, 2, 2, TF_S2)]


@pytest.mark.parametrize("latency", [1, 2, 3, 4, 5])
def test_dwunit_pysim_small(latency):
    run = make_run(np.random.default_rng(7), SMALL)
    for layer, writes, cycles in run_pysim(run, latency=latency):
        check_layer(layer, writes, cycles)
        assert cycles <= cycle_budget(layer["fields"]), (layer["name"], cycles)


@pytest.mark.parametrize("unit_lat, mem_lat", [(1, 2), (2, 4), (4, 3)])
def test_dwunit_latency_mismatch_is_caught(unit_lat, mem_lat):
    """A unit whose mem_latency differs from its memories' read latency must fail
    bit-exactness."""
    run = make_run(np.random.default_rng(7), SMALL)
    with pytest.raises(AssertionError, match="Arrays are not equal"):
        for layer, writes, cycles in run_pysim(run, latency=unit_lat, mem_latency=mem_lat):
            check_layer(layer, writes, cycles)


def test_dwunit_pad_zero_bug_is_caught():
    """A unit that pads with 0 instead of x_zp must fail the bit-exact comparison."""
    run = make_run(np.random.default_rng(7), SMALL)
    with pytest.raises(AssertionError, match="Arrays are not equal"):
        for layer, writes, cycles in run_pysim(run, bug="pad_zero"):
            check_layer(layer, writes, cycles)


# -- Verilator: every geometry, one build per latency ----------------------------------------------

@pytest.mark.parametrize("latency", [1, 2, 5])
def test_dwunit_verilator(tmp_path, latency):
    rng = np.random.default_rng(2026)
    runs = [make_run(rng, g) for g in RUNS]
    result = tmp_path / "cycles.json"
    harness.run(DwBench(unit_latency=latency), toplevel="dwbench", test_module="cocotb_dwunit",
                config={"runs": runs, "result": str(result)},
                build_name="dwunit" if latency == 1 else f"dwunit_lat{latency}")
    measured = json.loads(result.read_text())
    fields = {lay["name"]: lay for r in runs for lay in r["layers"]}
    assert len(measured) == sum(len(r["layers"]) for r in runs)
    lines = []
    for name, cycles in measured:
        ff = fields[name]["fields"]
        ideal = ff["out_c"] * ff["in_h"] * ff["in_w"]
        lines.append(f"lat{latency} {name}: {cycles} cycles, C*H*W = {ideal}")
        assert cycles <= cycle_budget(ff), (name, cycles, ideal)
    print("\n".join(lines))


def random_geoms(rng, n):
    """``n`` random valid geometries (h, w, c, (sh, sw), (t, l, b, r)), up to 14 x 14 x 6."""
    out = []
    while len(out) < n:
        h, w = (int(v) for v in rng.integers(1, 15, 2))
        c = int(rng.integers(1, 7))
        s = tuple(int(v) for v in rng.integers(1, 3, 2))
        t, b = [(0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (2, 0)][int(rng.integers(0, 6))]
        l, r = [(0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (2, 0)][int(rng.integers(0, 6))]
        if h + t + b >= 3 and w + l + r >= 3:
            out.append((h, w, c, s, (t, l, b, r)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("latency", [1, 2, 5])
def test_dwunit_verilator_random(tmp_path, latency):
    """Random geometries (strides, asymmetric and cropping paddings) through the same build."""
    rng = np.random.default_rng(11)
    geoms = random_geoms(rng, 40)
    runs = [make_run(rng, geoms[i:i + 2]) for i in range(0, len(geoms), 2)]
    result = tmp_path / "cycles.json"
    harness.run(DwBench(unit_latency=latency), toplevel="dwbench", test_module="cocotb_dwunit",
                config={"runs": runs, "result": str(result)},
                # own build dirs: test-all runs tiers in parallel
                build_name="dwunit_random" if latency == 1 else f"dwunit_random_lat{latency}")
    fields = {lay["name"]: lay["fields"] for r in runs for lay in r["layers"]}
    measured = json.loads(result.read_text())
    assert len(measured) == len(geoms)
    for name, cycles in measured:
        assert cycles <= cycle_budget(fields[name]), (name, cycles)


@pytest.mark.parametrize("latency", [1, 2, 5])
def test_dwunit_real_mobilenet_layer(latency):
    """A depthwise layer of a real plan: the descriptor from layer_io.layer_descriptors and
    the tap bytes / channel records from layer_io.weight_stores (relocated into the bench),
    against ops.conv2d with the network's quantised weights and scales."""
    import boards
    from hwgen import flow, mapper
    from hwgen.hw import layer_io
    qg = flow.quantized("mobilenet", alpha=0.25, resolution=32, classes=3)
    plan = mapper.plan(qg, boards.get_board("ulx3s", "85F"))
    cols = plan.engines.sa_cols
    _, dw_bytes, _, ch_words, _ = layer_io.weight_stores(plan, cols)
    descs = {d.name: d.fields for d in layer_io.layer_descriptors(plan, cols)}
    dws = [lp.name for lp in plan.layers if lp.kind == "dw"]
    assert len(dws) == 13
    for n in dws:                      # every depthwise layer of the network fits the unit
        check_desc(descs[n], 16, 256)
    name = "dw2"
    lp = next(lp for lp in plan.layers if lp.name == name)
    f = dict(descs[name])
    check_desc(f, MAX_WIDTH * 2, 64)
    c, h, w = f["out_c"], f["in_h"], f["in_w"]
    qw = qg.weights[name]
    scale = arith.conv_scale(qg.act_q[lp.inputs[0].tensor].scale, qw.scale,
                             qg.act_q[name].scale)
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, c, h, w), dtype=np.int8)
    sh, sw, t, l = f["sh"], f["sw"], f["pad_t"], f["pad_l"]
    b = (f["out_h"] - 1) * sh + 3 - h - t
    r = (f["out_w"] - 1) * sw + 3 - w - l
    y = ops.conv2d(x, f["x_zp"], qw.weight, qw.bias, scale, f["y_zp"], (sh, sw), (t, l, b, r),
                   groups=c, lo=f["lo"], hi=f["hi"])[0]
    # relocate: input at 5 (the plan's pitch), taps at 3, records at 1
    loads = []
    for yy in range(h):
        for xx in range(w):
            for cc in range(c):
                loads.append((0, 5 + (yy * w + xx) * f["in_pitch"] + cc,
                              int(x[0, cc, yy, xx]) & 0xff))
    loads += [(1, 3 + i, dw_bytes[f["w_base"] + i] & 0xff) for i in range(9 * c)]
    loads += [(2, 1 + i, ch_words[f["ch_base"] + i]) for i in range(c)]
    f.update(in_addr=5, w_base=3, ch_base=1)
    layer = {"name": name, "desc": Const.cast(DESC.const(f)).value,
             "expected": y.astype(int).tolist()}
    (lay, writes, cycles), = run_pysim({"loads": loads, "layers": [layer]}, max_width=32,
                                       latency=latency)
    check_layer(lay, writes, cycles)
    assert cycles <= cycle_budget(f), cycles
