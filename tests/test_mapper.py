"""Mapper: fits and refusals on every ULX3S device, the schedule's cycle accounting, the
buffer plan's liveness (no two live tensors overlap; a broken plan is caught), tiling,
fit-error messages with suggestions that really fit, and the cost model's formulas."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from boards import BOARDS, get_board
from hwgen import golden, ir
from hwgen.mapper import MapperError, MapperFitError, check_fit, cost, plan, quick_fit
from hwgen.mapper.program import simulate
from hwgen.models import build
from hwgen.quantize import quantize

DEVICES = ("12F", "25F", "45F", "85F")

NETS = {
    "vww": ("mobilenet", dict(alpha=0.25, resolution=96, classes=2)),
    "mobilenet224": ("mobilenet", dict(alpha=0.25, resolution=224, classes=1000)),
    "squeezenet": ("squeezenet", dict(resolution=64, classes=10)),
    "shufflenet": ("shufflenet", dict(groups=3, scale=0.5, resolution=64, classes=10)),
    "xception": ("xception", dict(width=0.125, middle_repeats=1, resolution=71, classes=10)),
    "xception_w025": ("xception", dict(width=0.25, middle_repeats=1, resolution=71, classes=10)),
}

#: Which device each network fits without SDRAM (the rest must refuse clearly).
FITS = {
    "vww": {"85F"},
    "mobilenet224": set(),
    "squeezenet": set(),          # 0.73M weights: more than any ULX3S's block RAM
    "shufflenet": {"85F"},
    "xception": {"85F"},
    "xception_w025": set(),       # 0.62M weights
}


@pytest.fixture(scope="module")
def graphs():
    return {k: build(name, **opts) for k, (name, opts) in NETS.items()}


@pytest.fixture(scope="module")
def qgraphs(graphs):
    return {k: quantize(graphs[k]) for k in ("vww", "shufflenet", "xception")}


_PLANS: dict = {}


def _plan(graphs, key, device, **kw):
    k = (key, device, tuple(sorted(kw.items())))
    if k not in _PLANS:
        _PLANS[k] = plan(graphs[key], get_board("ulx3s", device), **kw)
    return _PLANS[k]


@pytest.fixture(scope="module")
def qplans(qgraphs):
    return {k: plan(qg, get_board("ulx3s", "85F")) for k, qg in qgraphs.items()}


# --- fits and refusals --------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(NETS))
def test_fit_or_refuse_on_every_device(graphs, key):
    for dev in DEVICES:
        p = _plan(graphs, key, dev)
        assert p.fits == (dev in FITS[key]), (key, dev, p.problems)
        if p.fits:
            check_fit(p)                                    # no exception
            for r in ("lut4", "mult18", "dp16kd"):
                assert p.total(r) <= p.limits[r] <= getattr(p.board.budget, r)
            assert not p.external_layers
        else:
            with pytest.raises(MapperFitError) as ei:
                check_fit(p)
            assert ei.value.problems == p.problems
            assert str(ei.value).startswith(f"{p.model} does not fit the ULX3S {dev}")


def test_quantized_and_float_plans_agree(graphs, qplans):
    for key in ("vww", "shufflenet", "xception"):
        f, q = _plan(graphs, key, "85F"), qplans[key]
        assert (f.engines, f.cycles, f.arena_bytes) == (q.engines, q.cycles, q.arena_bytes)


def test_mobilenet224_refused_for_weights_not_activations(graphs):
    p = _plan(graphs, "mobilenet224", "85F")
    assert [pr.resource for pr in p.problems] == ["block RAM (weights)"]
    pr = p.problems[0]
    assert pr.layer == "fc" and pr.need > pr.have
    # what goes external and the bandwidth it needs
    assert "fc" in p.external_layers
    ext = [l for l in p.layers if l.placement == "sdram"]
    assert p.external_bytes_per_inference == sum(l.ext_bytes for l in ext) > 0
    fc = p.layer("fc")
    assert fc.ext_bytes == fc.w_bytes + fc.ch_bytes + fc.const_bytes    # one pixel tile
    assert p.external_bytes_per_cycle == pytest.approx(p.external_bytes_per_inference / p.cycles)
    assert p.external_weight_bytes + p.onchip_weight_bytes == sum(
        l.w_bytes + l.ch_bytes + l.const_bytes for l in p.layers)


def test_fit_error_names_layer_resource_amount_and_suggestions(graphs):
    p = _plan(graphs, "mobilenet224", "85F")
    with pytest.raises(MapperFitError) as ei:
        check_fit(p, NETS["mobilenet224"])
    msg = str(ei.value)
    pr = p.problems[0]
    assert "block RAM (weights)" in msg and "'fc'" in msg
    assert f"{pr.need / 1024:.0f} KiB" in msg                           # what it needs
    assert "416 KiB (x0.85 margin = 352 KiB)" in msg                   # what the 85F has
    assert f"short by {(pr.need - pr.have) / 1024:.0f} KiB" in msg
    assert ei.value.suggestions and "What would fit: " + ei.value.suggestions[0] in msg
    # every suggested option set really fits when re-planned
    name, opts = NETS["mobilenet224"]
    for s in ei.value.suggestions:
        assert s.startswith("--")
        ch = {k.replace("-", "_"): (float(v) if "." in v else int(v))
              for k, v in re.findall(r"--([a-z-]+) (\S+)", s)}
        g = build(name, **{**opts, **ch})
        assert plan(g, get_board("ulx3s", "85F")).fits, s
    # strict planning raises the same error
    with pytest.raises(MapperFitError):
        plan(graphs["mobilenet224"], get_board("ulx3s", "85F"), strict=True)


def test_fit_error_suggests_larger_device(graphs):
    p = _plan(graphs, "vww", "45F")
    with pytest.raises(MapperFitError) as ei:
        check_fit(p, NETS["vww"])
    assert "a larger device: --device 85F" in ei.value.suggestions
    assert quick_fit(graphs["vww"], get_board("ulx3s", "85F"))
    assert not quick_fit(graphs["vww"], get_board("ulx3s", "45F"))


def test_fit_error_without_any_fitting_option_is_numeric(graphs):
    p = _plan(graphs, "squeezenet", "85F")
    with pytest.raises(MapperFitError) as ei:
        check_fit(p, NETS["squeezenet"])
    msg = str(ei.value)
    assert "no ULX3S device holds this model without SDRAM" in msg
    assert "the largest device, the 85F, has 352 KiB" in msg


def test_small_devices_refuse_with_both_resources(graphs):
    p = _plan(graphs, "vww", "12F")
    res = {pr.resource for pr in p.problems}
    assert res == {"block RAM (weights)", "block RAM (activations)"}
    act = next(pr for pr in p.problems if pr.resource == "block RAM (activations)")
    assert act.need > act.have == p.limits["dp16kd"] == int(32 * 0.85)
    # a 1 x 1 array with its requantiser lane, the address multipliers and the depthwise
    # unit just fits the 12F's 28 MULT18X18D after the margin
    assert p.total("mult18") == 1 + cost.REQUANT_DSP_PER_LANE + cost.DSP_ADDRESS + cost.DW_DSP
    assert p.total("mult18") <= p.limits["mult18"] == int(28 * 0.85)


def test_margin(graphs):
    a = _plan(graphs, "vww", "85F")
    b = _plan(graphs, "vww", "85F", margin=1.0)
    assert a.limits == {"lut4": int(83640 * 0.85), "mult18": int(156 * 0.85), "dp16kd": 176}
    assert b.limits == {"lut4": 83640, "mult18": 156, "dp16kd": 208}
    assert b.cycles <= a.cycles
    with pytest.raises(ValueError, match="margin"):
        plan(graphs["vww"], get_board("ulx3s", "85F"), margin=0)


# --- schedule, cycles, engines -----------------------------------------------------------------

ENGINE_OF = {"pw": "systolic", "dw": "dwconv", "conv": "im2col+systolic", "fc": "systolic"}


@pytest.mark.parametrize("key", ["vww", "shufflenet", "xception", "squeezenet"])
def test_schedule_cycles_and_utilization(graphs, key):
    g = graphs[key]
    p = _plan(graphs, key, "85F")
    assert [l.name for l in p.layers] == [n.name for n in g.nodes]
    assert p.cycles == sum(l.cycles for l in p.layers)
    assert p.macs == g.macs()
    assert p.mac_units == p.engines.sa_rows * p.engines.sa_cols + p.engines.dw_lanes * p.engines.dw_k ** 2
    assert p.utilization == p.macs / (p.cycles * p.mac_units)
    assert 0 < p.utilization < 1
    for l, n in zip(p.layers, g.nodes):
        if isinstance(n, ir.Conv2d):
            kind = "dw" if n.is_depthwise else ("pw" if n.kernel == (1, 1) else "conv")
            assert l.engine == ENGINE_OF[kind], l.name
            assert l.cycles >= l.ideal_cycles == -(-l.macs // (
                p.engines.dw_macs if kind == "dw" else p.engines.sa_macs))
        elif isinstance(n, ir.FullyConnected):
            assert l.engine == "systolic"
        elif l.kind == "gap":            # a global average pool runs on the array
            assert isinstance(n, (ir.GlobalAvgPool, ir.AvgPool)) and l.engine == "systolic"
        elif isinstance(n, (ir.MaxPool, ir.AvgPool)):
            assert l.engine == "pool"
        elif isinstance(n, ir.Add):
            assert l.engine == "add" and l.cycles > 0
        else:   # the quantiser's shared qparams make every concat / shuffle a remap
            assert l.engine == "remap" and l.cycles == 0 and l.macs == 0


@pytest.mark.parametrize("key", list(NETS))
def test_engines_are_what_the_accelerator_builds(graphs, key):
    """One activation byte per cycle into the array, a C-lane requantiser, one depthwise lane
    when there are depthwise layers, one pool/add lane; the search's MULT18X18D prefilter
    agrees with the resource model."""
    from hwgen.mapper.plan import _dsp, _engines_limits, _model
    g = graphs[key]
    s = _engines_limits(_model(g, None), 256)
    has_dw = any(isinstance(n, ir.Conv2d) and n.is_depthwise for n in g.nodes)
    for dev in ("45F", "85F"):
        p = _plan(graphs, key, dev)
        e = p.engines
        assert (e.sa_lanes, e.rq_lanes, e.vec_lanes, e.dw_lanes) == (1, e.sa_cols, 1, int(has_dw))
        assert e.dw_k == (3 if has_dw else 0) and e.act_word_bytes == 1
        assert all(l.bands == 1 for l in p.layers)
        assert p.total("mult18") == _dsp(s, e.sa_rows, e.sa_cols, 1, e.dw_lanes, e.rq_lanes, 1)
        d = e.describe()
        assert d.startswith(f"systolic array {e.sa_rows}x{e.sa_cols} with a {e.sa_cols}-lane "
                            f"requantiser")
        assert ("depthwise unit (1 lane, 3x3)" in d) == has_dw and "L=" not in d


def test_engine_resources_follow_the_model(graphs):
    p = _plan(graphs, "vww", "85F")
    e = p.engines
    R, C = e.sa_rows, e.sa_cols
    dsp = {u.name: u.mult18 for u in p.usage}
    # MobileNet has no max / average pool or add: no such units
    assert dsp == {"systolic": R * C, "requant": 4 * C, "feeders": cost.DSP_ADDRESS,
                   "dwconv": 9 + 4, "sequencer": 0, "host link": 0, "activations": 0,
                   "weights": 0, "channel params": 0}
    assert p.total("mult18") == sum(dsp.values())
    lut = {u.name: u.lut4 for u in p.usage}
    assert lut["systolic"] >= cost.LUT_PER_MAC * R * C
    bram = {u.name: u.dp16kd for u in p.usage}
    # the byte-wide arena (55,296 bytes: 27 blocks of 2048 x 9), the array's activation
    # store (the global pool's 256 x 3 x 3 patch: 2 banks of 4096 bytes per row), one
    # parameter memory per requantiser lane (256 channels x 30 bits)
    assert p.arena_bytes == 55296 and bram["activations"] == 27
    assert e.sa_max_k == 256 * 9 and bram["systolic"] == R * 4
    # dw line buffers: 48 words, distributed RAM
    assert bram["requant"] == C and bram["dwconv"] == 0 and bram["host link"] == 1
    assert bram["feeders"] == 1                                 # place table, 256 x 17
    # weights: every on-chip byte of the weight store is counted
    assert bram["weights"] * 18432 >= 8 * sum(l.w_bytes for l in p.layers)      # 18 Kbit each
    # squeezenet has no depthwise layers: no depthwise unit at all
    q = _plan(graphs, "squeezenet", "85F")
    assert q.engines.dw_lanes == 0 and "dwconv" not in {u.name for u in q.usage}
    assert "maxpool" in {u.name for u in q.usage} and "add" not in {u.name for u in q.usage}


@pytest.mark.parametrize("key", ["vww", "shufflenet"])
def test_store_blocks_match_the_accelerator_memories(qplans, key):
    """The weight, tap and channel stores the accelerator instantiates (from the plan's
    weight image) take exactly the DP16KD the mapper counts."""
    from hwgen.hw.layer_io import weight_stores
    p = qplans[key]
    C = p.engines.sa_cols
    words, taps, _, ch, _ = weight_stores(p, C)
    bram = {u.name: u.dp16kd for u in p.usage}
    assert bram["weights"] == cost.bram_blocks(8 * C, len(words)) + cost.bram_blocks(8, len(taps))
    assert bram["channel params"] == cost.bram_blocks(64, len(ch))
    assert bram["activations"] == cost.bram_blocks(8, p.arena_bytes)


def test_cycle_model_formulas():
    """The array's cycle model on the measured MobileNet 0.25/96 layers (its 4 x 12 array,
    ``hwgen sim mobilenet --alpha 0.25 --resolution 96 --classes 2 --json`` per_layer_cycles
    in the comments). The 12-column array has two operand-register stages (a tree of copies),
    one more than SA_PIPE and SA_DRAIN_GAP count; a 4-column array has one."""
    seq = cost.SEQ_OVERHEAD
    assert (cost.sa_operand_stages(4), cost.sa_operand_stages(12)) == (1, 2)
    pipe, gap = cost.SA_PIPE + 1, cost.SA_DRAIN_GAP + 1      # the 4 x 12 array
    # compute-bound pw8 (1x1 128 -> 128 at 6x6; 13,423): first tile load 4*128, nine tiles of
    # 11 output tiles x 128 beats, the last step's 4 rows x 8 channels, sequencer 128 + 16
    assert cost.sa_layer_cycles(36, 128, 128, 1, 4, 12) == (512 + 9 * 11 * 128 + 32 + pipe
                                                             + 128 + seq) == 13423
    # load-bound conv1 (3x3 s2, 3 -> 8, 48x48 out; 62,353): 27 patch bytes per pixel, then
    # the last tile's one step of 27 beats and its 4 x 8 output bytes
    assert cost.sa_layer_cycles(2304, 27, 8, 1, 4, 12) == 2304 * 27 + 27 + 32 + pipe + 8 + seq
    # writer-bound pw2 (1x1 8 -> 16 at 48x48; 36,999): first load, first step (its bias
    # vector: 12 records + the feeder's gap), then 16 output bytes per pixel
    assert cost.sa_layer_cycles(2304, 8, 16, 1, 4, 12) == (32 + 12 + cost.SA_BIAS_GAP
                                                           + 2304 * 16 + pipe + 16 + seq)
    # a short step waits for the previous drain: 4 pixels, K = 4 -> 4 + 10 cycles per step
    # on a 4 x 4 array (one operand stage)
    assert cost.sa_layer_cycles(4, 4, 3, 1, 4, 4) == (16 + (4 + cost.SA_DRAIN_GAP) + 4 * 3
                                                      + cost.SA_PIPE + 3 + seq)
    # the global average pool on the array (256 groups of 9, one pixel; 5,709): the whole
    # patch loads before the first step; each group's step of 9 beats waits for the previous
    # group's one-row drain (1 + the drain gap)
    assert cost.sa_layer_cycles(1, 9, 1, 256, 4, 12) == (2304 + 256 * (1 + gap)
                                                         + 1 + pipe + 256 + seq) == 5712
    # the other units
    assert cost.dw_layer_cycles(8, 48, 48) == 8 * 2304 + 48 + cost.DW_LATENCY + 8 + seq
    # small planes wait for the parameter loader: two channels per h*w + 18 cycles
    # (MobileNet dw14, 256 x 3x3: 3,773 measured; ShuffleNet stage 4, 120 x 2x2: 1,486 before
    # the last pipeline changes)
    assert cost.dw_layer_cycles(256, 3, 3) == 128 * (9 + 18) + 3 + cost.DW_LATENCY + 256 + seq
    assert cost.dw_layer_cycles(120, 2, 2) == 60 * (4 + 18) + 2 + cost.DW_LATENCY + 120 + seq
    from hwgen.hw.layer_io import MEM_LATENCY
    assert cost.MAXPOOL_EXTRA == 2 * MEM_LATENCY + 1            # hw/layer_io.MaxPoolUnit
    assert cost.maxpool_cycles(24, 16, 16, 3, 3) == (24 * 256 * (9 + 2 * MEM_LATENCY + 1)
                                                     + cost.MAXPOOL_LATENCY + 24 + seq)
    assert cost.add_cycles(60, 8, 8) == 2 * 60 * 64 + cost.ADD_LATENCY + 60 + seq
    assert cost.avg_interval() == 30                       # hw/pool.py, 3 quotient bits a cycle
    assert cost.avgpool_cycles(24, 17, 17, 8, 8) == 24 * 64 * 30 + cost.AVGPOOL_LATENCY + 24 + seq
    # memories
    assert cost.bram_blocks(8, 55296) == 27 and cost.bram_blocks(96, 18141) == 99
    assert cost.bram_blocks(8, 0) == 1 and cost.bram_blocks(64, 2740) == 12
    assert cost.sa_store_blocks(6, 2304) == 24 and cost.sa_store_blocks(4, 256) == 4
    assert cost.dp16kd_for(2048, 8) == 1 and cost.dp16kd_for(4096, 8) == 2
    assert cost.dp16kd_for(2048, 128) == 15 and cost.dp16kd_for(512, 72) == 2
    assert cost.dp16kd_for(64, 8) == 0 and cost.lutram_lut4(64, 8) > 0


def test_nothing_is_tiled_and_the_line_buffer_is_the_widest_dw_row(graphs):
    p = _plan(graphs, "vww", "85F")
    assert p.engines.line_width == 48                      # dw2: 8 x 48 x 48 input
    assert all(l.bands == 1 for l in p.layers)
    assert _plan(graphs, "vww", "85F", max_line_width=48).engines == p.engines
    with pytest.raises(MapperError, match="node 'dw2'.*48 pixels wide.*holds 32"):
        plan(graphs["vww"], get_board("ulx3s", "85F"), max_line_width=32)


# --- buffer plan ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["vww", "shufflenet", "xception", "squeezenet", "mobilenet224"])
def test_live_storages_never_overlap(graphs, key):
    g = graphs[key]
    p = _plan(graphs, key, "85F")
    by_name = {s.name: s for s in p.storages}
    assert p.peak_live_bytes <= p.arena_bytes
    for s in p.storages:
        assert s.size == s.channels * s.pixels and 0 <= s.addr and s.addr + s.size <= p.arena_bytes
        assert s.addr % 16 == 0
    peak = 0
    for i in range(len(g.nodes) + 1):
        live = sorted((s.addr, s.addr + s.size, s.name) for s in p.storages if s.first <= i <= s.last)
        for (a0, a1, n0), (b0, b1, n1) in zip(live, live[1:]):
            assert a1 <= b0, f"step {i}: storages {n0} and {n1} overlap"
        peak = max(peak, sum(b - a for a, b, _ in live))
        if i == len(g.nodes):
            break
        lp = p.layers[i]
        # what a layer reads and writes is live at its step, and lies inside its storage
        owner = {}
        for s in p.storages:
            for t in s.tensors:
                owner[t] = s
        for v in lp.inputs:
            s = owner[v.tensor]
            assert s.first <= i <= s.last, (lp.name, v.tensor)
            assert s.addr <= v.addr and v.addr + (v.pixels - 1) * v.pitch + v.channels <= s.addr + s.size
        if lp.output is not None:
            s = by_name[lp.output.storage]
            assert s.first <= i <= s.last
            ch = lp.output.channel(np.arange(lp.out_shape[0]))
            assert ch.min() >= 0 and ch.max() < s.channels and len(set(ch.tolist())) == len(ch)
    assert peak == p.peak_live_bytes
    # a chain network needs only its two largest neighbours at the peak (ping-pong)
    if key == "vww":
        sizes = [int(np.prod(g.shapes[n.output])) for n in g.nodes]
        assert p.arena_bytes == max(a + b for a, b in zip(sizes, sizes[1:]))


def test_concat_and_shuffle_are_address_remaps(graphs):
    p = _plan(graphs, "shufflenet", "85F")
    g = graphs["shufflenet"]
    for n in g.nodes:
        if isinstance(n, ir.ChannelShuffle):
            prod = p.layer(g.producer(n.inputs[0]).name)
            assert prod.output.shuffle_groups == n.groups
            assert prod.output.shuffle_channels == g.shapes[n.inputs[0]][0]
        if isinstance(n, ir.Concat):
            offs = [p.layer(g.producer(t).name).output.pre for t in n.inputs]
            assert offs == [0, g.shapes[n.inputs[0]][0]]
    q = _plan(graphs, "squeezenet", "85F")
    e1, e3 = q.layer("fire2.expand1x1").output, q.layer("fire2.expand3x3").output
    assert e1.storage == e3.storage == "fire2.concat" and (e1.pre, e3.pre) == (0, 64)
    assert e1.pitch == 128


@pytest.mark.parametrize("key", ["vww", "shufflenet", "xception"])
def test_program_runs_bit_exact_through_the_arena(qgraphs, qplans, key):
    qg, p = qgraphs[key], qplans[key]
    x = np.random.default_rng(7).integers(-128, 128, (1, *qg.graph.input_shape)).astype(np.int8)
    exp = golden.run(qg, x, all_tensors=True)
    np.testing.assert_array_equal(simulate(p, x, expect=exp), exp[qg.graph.outputs[0]])


def test_overlapping_plan_is_caught(qgraphs, qplans):
    """Move one storage onto another that is live at the same time: the arena simulation
    reports the clobbered tensor at the layer that reads it."""
    p = qplans["shufflenet"]
    qg = qgraphs["shufflenet"]
    # a: a tensor still to be read (a skip / residual input) when b is written
    a, b = next((a, b) for a in p.storages for b in p.storages
                if a.first < b.first < a.last and b.size <= a.size)
    shift = a.addr - b.addr

    def mv(v):
        return dataclasses.replace(v, addr=v.addr + shift) if v.tensor in b.tensors else v

    layers = []
    for l in p.layers:
        out = l.output
        if out is not None and out.storage == b.name:
            out = dataclasses.replace(out, addr=out.addr + shift)
        layers.append(dataclasses.replace(l, inputs=tuple(mv(v) for v in l.inputs), output=out))
    bad = dataclasses.replace(p, layers=tuple(layers))
    x = np.zeros((1, *qg.graph.input_shape), np.int8)
    exp = golden.run(qg, x, all_tensors=True)
    with pytest.raises(AssertionError, match="overwrote"):
        simulate(bad, x, expect=exp)


# --- unsupported layers ------------------------------------------------------------------------------

def test_unmappable_layer_names_the_node():
    rng = np.random.default_rng(0)
    conv = ir.Conv2d(name="gconv3x3", inputs=("input",), output="y", out_channels=8,
                     kernel=(3, 3), padding=1, groups=2,
                     weight=rng.normal(size=(8, 2, 3, 3)), bias=np.zeros(8))
    g = ir.Graph("bad", {"input": (4, 8, 8)}, ("y",), (conv,))
    with pytest.raises(MapperError, match="node 'gconv3x3'.*grouped 3x3"):
        plan(g, get_board("ulx3s", "85F"))
    dw = ir.Conv2d(name="dw_bigpad", inputs=("input",), output="y", out_channels=4,
                   kernel=(3, 3), padding=2, groups=4,
                   weight=rng.normal(size=(4, 1, 3, 3)), bias=np.zeros(4))
    g = ir.Graph("bad2", {"input": (4, 8, 8)}, ("y",), (dw,))
    with pytest.raises(MapperError, match="dw_bigpad.*padding"):
        plan(g, get_board("ulx3s", "85F"))
    mp = ir.MaxPool(name="mp2x2", inputs=("input",), output="y", kernel=2, stride=2)
    g = ir.Graph("bad3", {"input": (4, 8, 8)}, ("y",), (mp,))
    with pytest.raises(MapperError, match="mp2x2.*3x3 windows"):
        plan(g, get_board("ulx3s", "85F"))


def test_every_board_has_a_plan(graphs):
    assert {b.device for b in BOARDS.values()} == set(DEVICES)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["squeezenet", "mobilenet224", "xception_w025"])
def test_refused_models_still_run_bit_exact_through_the_arena(graphs, key):
    """The plan of a model that does not fit (weights for SDRAM) still has a valid buffer
    plan and program: what the later SDRAM streamer will run."""
    qg = quantize(graphs[key])
    p = plan(qg, get_board("ulx3s", "85F"))
    assert not p.fits and p.external_layers
    x = np.random.default_rng(1).integers(-128, 128, (1, *qg.graph.input_shape)).astype(np.int8)
    exp = golden.run(qg, x, all_tensors=True)
    np.testing.assert_array_equal(simulate(p, x, expect=exp), exp[qg.graph.outputs[0]])
