"""Layer program and weight image: round trips, corruption checks, the weight blocks in the
engines' stream order (checked against hwgen.hw.systolic's packers), channel records, op
constants, copies with rescale tables, folded Concat clamps, uint8 models, build files."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from boards import get_board
from hwgen import golden, ir
from hwgen.golden import arith
from hwgen.hw import systolic
from hwgen.hw.add import add_config
from hwgen.mapper import plan
from hwgen.mapper import program as pg
from hwgen.models import build
from hwgen.quantize import quantize

B85 = get_board("ulx3s", "85F")


def _mixed_graph() -> ir.Graph:
    """Every op kind the program encodes: im2col conv, free slice, copied shuffle (its input
    has other consumers), depthwise, concat, add, max / average / whole-input average pools,
    FC."""
    rng = np.random.default_rng(3)

    def conv(name, inp, o, i, k, groups=1, pad=0, act=ir.Act.RELU):
        return ir.Conv2d(name=name, inputs=(inp,), output=name, out_channels=o, kernel=(k, k),
                         padding=pad, groups=groups, act=act,
                         weight=rng.normal(0, 0.4, (o, i // groups, k, k)),
                         bias=rng.normal(0, 0.1, o))

    nodes = [
        conv("c1", "input", 8, 3, 3, pad=1),
        ir.ChannelSlice(name="s1", inputs=("c1",), output="s1", start=2, stop=6),
        ir.ChannelShuffle(name="sh", inputs=("c1",), output="sh", groups=2),
        conv("d1", "sh", 8, 8, 3, groups=8, pad=1, act=ir.Act.NONE),
        conv("p1", "s1", 8, 4, 1),
        ir.Concat(name="cat", inputs=("d1", "p1"), output="cat", act=ir.Act.RELU),
        conv("c2", "cat", 16, 16, 1, act=ir.Act.NONE),
        ir.Add(name="add", inputs=("c2", "cat"), output="add", act=ir.Act.RELU),
        ir.MaxPool(name="mp", inputs=("add",), output="mp", kernel=3, stride=2, padding=1),
        ir.AvgPool(name="ap", inputs=("mp",), output="ap", kernel=3, stride=1, padding=1),
        # an AvgPool over the whole input: onnxruntime runs it as the global average pool
        ir.AvgPool(name="gap", inputs=("ap",), output="gap", kernel=4, stride=1),
        ir.FullyConnected(name="fc", inputs=("gap",), output="fc", out_features=5,
                          weight=rng.normal(0, 0.3, (5, 16)), bias=rng.normal(0, 0.1, 5)),
    ]
    return ir.Graph("mixed", {"input": (3, 8, 8)}, ("fc",), nodes)


@pytest.fixture(scope="module")
def mixed():
    return quantize(_mixed_graph())


@pytest.fixture(scope="module")
def shuffle_qg():
    return quantize(build("shufflenet", groups=3, scale=0.5, resolution=64, classes=10))


@pytest.fixture(scope="module")
def vww_qg():
    return quantize(build("mobilenet", alpha=0.25, resolution=96, classes=2))


def _x(qg, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, (1, *qg.graph.input_shape)).astype(np.int8)


def _check_sim(p, qg, seeds=(0, 1)):
    for s in seeds:
        x = _x(qg, s)
        if qg.io_dtype == "uint8":
            x = (x.astype(np.int16) + 128).astype(np.uint8)
        exp = golden.run(qg, x, all_tensors=True)          # int8 internal form throughout
        np.testing.assert_array_equal(pg.simulate(p, x, expect=exp), golden.run(qg, x))


# --- program.bin ------------------------------------------------------------------------------------

def test_program_round_trip(mixed, shuffle_qg, vww_qg):
    for qg in (mixed, shuffle_qg, vww_qg):
        p = plan(qg, B85)
        data = pg.encode_program(p)
        prog = pg.decode_program(data)
        assert prog.descriptors == pg.descriptors(p)
        assert len(data) == pg.HEADER.size + len(prog.descriptors) * pg.DESCRIPTOR.size + 4
        assert pg.DESCRIPTOR.size == 96 and pg.HEADER.size == 64
        assert prog.arena_bytes == p.arena_bytes
        c, h, w = qg.graph.input_shape
        assert prog.input == {"addr": p.input_view.addr, "pitch": c, "c": c, "h": h, "w": w}
        assert prog.output["c"] == qg.graph.output_shape[0]
        e = p.engines
        assert (prog.engines["sa_rows"], prog.engines["sa_cols"], prog.engines["dw_lanes"]) == (
            e.sa_rows, e.sa_cols, e.dw_lanes)
        w = pg.weight_image(p)
        assert prog.weights_bytes == len(w)
        import zlib
        assert prog.weights_crc32 == zlib.crc32(w)


def test_descriptor_fields(mixed):
    p = plan(mixed, B85)
    ds = pg.descriptors(p)
    byname = {}
    for d in ds:
        byname.setdefault(p.layers[d.node].name, []).append(d)
    g = mixed.graph
    q = mixed.act_q
    c1 = byname["c1"][0]
    assert (c1.op, c1.engine, c1.kh, c1.sh, c1.pad_top) == (pg.OPS["Conv2dIm2col"], 1, 3, 1, 1)
    assert c1.flags & pg.FLAGS["im2col"]
    assert (c1.x_zp, c1.y_zp) == (q["input"].zero_point, q["c1"].zero_point)
    assert (c1.in_c, c1.in_h, c1.in_w, c1.out_c) == (3, 8, 8, 8)
    # the slice is a view: free, and p1 reads c1's storage from channel 2 on
    s1 = byname["s1"][0]
    assert s1.flags & pg.FLAGS["remap"] and s1.engine == 0 and s1.cycles == 0
    p1 = byname["p1"][0]
    c1v = p.layers[0].output
    assert p1.in0_addr == c1v.addr + 2 and p1.in0_pitch == 8 and p1.in0_c == 4
    # c1 has two consumers, so the shuffle is a copy with a read-side gather of 2 groups
    sh = byname["sh"][0]
    assert sh.op == pg.OPS["ChannelShuffle"] and sh.engine == pg.ENGINES["copy"] and sh.groups == 2
    # the quantiser gave the concat inputs the concat's qparams: a free concat whose ReLU is
    # folded into d1's clamp (d1 has no activation of its own)
    cat = byname["cat"][0]
    assert cat.flags & pg.FLAGS["remap"]
    d1, p1o = byname["d1"][0], byname["p1"][0]
    assert (d1.lo, d1.hi) == ir.clamp_range(ir.Act.RELU, q["cat"])
    assert (d1.out_pre, p1o.out_pre, d1.out_pitch) == (0, 8, 16) and d1.out_addr == p1o.out_addr
    add = byname["add"][0]
    assert add.n_inputs == 2 and add.in1_zp == q["cat"].zero_point and add.const_bytes == 32
    assert byname["ap"][0].const_bytes == 16
    assert byname["gap"][0].ch_bytes == 8 and byname["gap"][0].op == pg.OPS["GlobalAvgPool"]
    mp = byname["mp"][0]
    assert (mp.op, mp.engine, mp.kh, mp.sh, mp.pad_top, mp.const_bytes) == (5, 3, 3, 2, 1, 0)
    fc = byname["fc"][0]
    assert fc.op == pg.OPS["FullyConnected"] and fc.w_bytes == p.engines.sa_cols * 16 * -(-5 // p.engines.sa_cols)
    assert len(ds) == len(g.nodes)


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "version"])
def test_corrupted_program_is_rejected(mixed, damage):
    data = bytearray(pg.encode_program(plan(mixed, B85)))
    if damage == "flip":
        data[100] ^= 0x10
        match = "CRC32 mismatch"
    elif damage == "truncate":
        data = data[:-50]
        match = "truncated"
    elif damage == "magic":
        data[0:4] = b"XXXX"
        match = "not an hwgen program"
    else:
        data[4:6] = struct.pack("<H", 99)
        match = "version 99"
    with pytest.raises(pg.ProgramFormatError, match=match):
        pg.decode_program(bytes(data))


def test_corrupted_weight_image_is_rejected(mixed):
    w = bytearray(pg.weight_image(plan(mixed, B85)))
    hdr = pg.decode_weight_image(bytes(w))
    assert hdr["section_a"][0] == 64 and hdr["total"] == len(w) - 4
    w[hdr["section_b"][0]] ^= 1
    with pytest.raises(pg.ProgramFormatError, match="CRC32"):
        pg.decode_weight_image(bytes(w))
    with pytest.raises(pg.ProgramFormatError, match="bytes"):
        pg.decode_weight_image(bytes(w[:-9]))


# --- weights.bin content -------------------------------------------------------------------------

def test_weight_blocks_match_the_engine_stream_order(vww_qg, mixed):
    for qg in (vww_qg, mixed):
        p = plan(qg, B85)
        img = pg.weight_image(p)
        e = p.engines
        sp = systolic.SystolicParams(rows=e.sa_rows, cols=e.sa_cols, in_lanes=e.sa_lanes)
        for lp, node in zip(p.layers, qg.graph.nodes):
            if not lp.w_bytes:
                continue
            blk = np.frombuffer(img[lp.w_addr:lp.w_addr + lp.w_bytes], np.int8)
            w = qg.weights[node.name].weight
            if lp.kind == "dw":
                c, k = w.shape[0], w.shape[2]
                want = np.zeros((-(-c // e.dw_lanes), k * k, e.dw_lanes), np.int8)
                for ch in range(c):
                    for tap in range(k * k):
                        want[ch // e.dw_lanes, tap, ch % e.dw_lanes] = w[ch, 0, tap // k, tap % k]
                np.testing.assert_array_equal(blk, want.ravel())
            else:
                if isinstance(node, ir.FullyConnected):
                    layer = systolic.layer_for_fc(w.shape[1], w.shape[0])
                else:
                    layer = systolic.layer_for_conv(lp.in_shapes[0], w.shape, node.stride,
                                                    node.padding, node.groups)
                one = systolic.pack_weights(sp, layer, w)[: layer.groups * layer.otiles(sp) * layer.k]
                np.testing.assert_array_equal(blk, one.astype(np.int8).ravel())
            assert (lp.w_addr - 64) % e.sa_cols == 0           # whole weight-store words


def test_fc_weights_follow_the_arena_order():
    """An FC on a (C, H, W) input: columns reordered from c*H*W + p to p*C + c."""
    rng = np.random.default_rng(5)
    fc = ir.FullyConnected(name="fc", inputs=("input",), output="y", out_features=3,
                           weight=rng.normal(size=(3, 2 * 2 * 2)), bias=np.zeros(3))
    qg = quantize(ir.Graph("fc", {"input": (2, 2, 2)}, ("y",), (fc,)))
    p = plan(qg, B85)
    lp = p.layers[0]
    img = pg.weight_image(p)
    C = p.engines.sa_cols
    blk = np.frombuffer(img[lp.w_addr:lp.w_addr + lp.w_bytes], np.int8).reshape(-1, 8, C)
    w = qg.weights["fc"].weight
    for o in range(3):
        for pix in range(4):
            for c in range(2):
                assert blk[o // C, pix * 2 + c, o % C] == w[o, c * 4 + pix]
    _check_sim(p, qg)


def test_channel_records_and_constants(mixed):
    p = plan(mixed, B85)
    img = pg.weight_image(p)
    q = mixed.act_q
    for lp, node in zip(p.layers, mixed.graph.nodes):
        if isinstance(node, (ir.Conv2d, ir.FullyConnected)):
            w = mixed.weights[node.name]
            rec = np.frombuffer(img[lp.ch_addr:lp.ch_addr + lp.ch_bytes],
                                dtype=[("bias", "<i4"), ("scale", "<u4")])
            np.testing.assert_array_equal(rec["bias"], w.bias)
            m = (rec["scale"] & 0xFFFFFF).astype(np.float64)
            e = (rec["scale"] >> 24).astype(np.int64)
            want = arith.conv_scale(q[node.inputs[0]].scale, w.scale, q[node.output].scale)
            np.testing.assert_array_equal((m * 2.0 ** -e).astype(np.float32), want)
            assert np.all((e >= 16) & (e <= 55))
    gap = p.layer("gap")
    bias, sc = struct.unpack_from("<iI", img, gap.ch_addr)
    h, w_ = gap.in_shapes[0][1:]
    assert bias == -q["ap"].zero_point * h * w_
    assert np.float32((sc & 0xFFFFFF) * 2.0 ** -(sc >> 24)) == arith.gavg_scale(q["ap"].scale, q["gap"].scale, h * w_)
    add = p.layer("add")
    a_m, b_m, fixed, a_sh, b_sh, rsh, off, lo, hi = struct.unpack_from("<IIqBBBBbb", img, add.const_addr)
    cfg = add_config(q["c2"].scale, q["c2"].zero_point, q["cat"].scale, q["cat"].zero_point,
                     q["add"].scale, q["add"].zero_point, add.lo, add.hi)
    assert (a_m, b_m, fixed, a_sh, b_sh, rsh, off, lo, hi) == (
        cfg.a_m, cfg.b_m, cfg.fixed, cfg.a_sh, cfg.b_sh, cfg.rshift, cfg.offset, cfg.lo, cfg.hi)
    ap = p.layer("ap")
    xs, ys, xzp, yzp, fl, lo, hi = struct.unpack_from("<IIbbBbb", img, ap.const_addr)
    assert xs == np.float32(q["mp"].scale).view(np.uint32) and yzp == q["ap"].zero_point and fl == 0


# --- execution through the arena -----------------------------------------------------------------

def test_mixed_graph_runs_bit_exact(mixed):
    _check_sim(plan(mixed, B85), mixed)


def test_copied_concat_with_rescale_tables(mixed):
    """Give one concat input other qparams: the concat becomes a copy, one descriptor per
    input, that input through a 256-entry table; still bit-exact."""
    q = dict(mixed.act_q)
    q["p1"] = ir.QParams(q["p1"].scale * 1.37, q["p1"].zero_point + 3)
    qg = ir.QGraph(mixed.graph, q, mixed.weights, mixed.io_dtype)
    p = plan(qg, B85)
    assert p.layer("cat").engine == "copy" and p.layer("cat").cycles > 0
    parts = [d for d in pg.descriptors(p) if p.layers[d.node].name == "cat"]
    assert [d.part for d in parts] == [0, 1] and [d.out_pre for d in parts] == [0, 8]
    assert not parts[0].flags & pg.FLAGS["table"] and parts[1].flags & pg.FLAGS["table"]
    img = pg.weight_image(p)
    lut = np.frombuffer(img[parts[1].const_addr:parts[1].const_addr + 256], np.int8)
    np.testing.assert_array_equal(lut, arith.rescale_lut(q["p1"].scale, q["p1"].zero_point,
                                                         q["cat"].scale, q["cat"].zero_point))
    assert pg.decode_program(pg.encode_program(p)).descriptors == pg.descriptors(p)
    _check_sim(p, qg)


def test_folded_concat_clamp_is_bit_exact(mixed):
    """A concat whose ReLU really clamps (zero point above -128): folded into both
    producers' clamps, the arena result still equals the golden concat."""
    q = dict(mixed.act_q)
    nq = ir.QParams(q["cat"].scale, -20)
    for t in ("d1", "p1", "cat"):
        q[t] = nq
    qg = ir.QGraph(mixed.graph, q, mixed.weights, mixed.io_dtype)
    p = plan(qg, B85)
    assert p.layer("cat").engine == "remap"
    assert p.layer("d1").lo == -20 and p.layer("p1").lo == -20
    _check_sim(p, qg, seeds=(0, 1, 2))


def test_uint8_model_runs_bit_exact(shuffle_qg):
    qg = ir.QGraph(shuffle_qg.graph, shuffle_qg.act_q, shuffle_qg.weights, "uint8")
    p = plan(qg, B85)
    assert all(d.flags & pg.FLAGS["uint8"] for d in pg.descriptors(p))
    _check_sim(p, qg, seeds=(3,))


# --- build files --------------------------------------------------------------------------------------

def test_write_build_files(tmp_path, vww_qg):
    p = plan(vww_qg, B85)
    files = pg.write_build_files(p, tmp_path / "build")
    assert sorted(f.name for f in (tmp_path / "build").iterdir()) == [
        "layers.json", "program.bin", "weights.bin"]
    prog = pg.decode_program(files["program"].read_bytes())
    pg.decode_weight_image(files["weights"].read_bytes())
    assert prog.descriptors == pg.descriptors(p)
    d = json.loads(files["layers"].read_text())
    assert d["format"] == "hwgen-layers" and d["fits"] is True and d["device"] == "85F"
    assert d["cycles"] == p.cycles == sum(l["cycles"] for l in d["layers"])
    assert d["macs"] == 7489664 == sum(l["macs"] for l in d["layers"])
    assert d["utilization"] == pytest.approx(d["macs"] / (d["cycles"] * d["mac_units"]))
    assert [l["name"] for l in d["layers"]] == [n.name for n in vww_qg.graph.nodes]
    pw2 = next(l for l in d["layers"] if l["name"] == "pw2")
    assert pw2["engine"] == "systolic" and pw2["in_shapes"] == [[8, 48, 48]]
    assert pw2["out_shape"] == [16, 48, 48] and pw2["weights"]["placement"] == "bram"
    assert pw2["inputs"][0]["addr"] == p.layer("pw2").inputs[0].addr
    assert pw2["output"]["addr"] == p.layer("pw2").output.addr
    assert d["resources"]["dp16kd"]["used"] <= d["resources"]["dp16kd"]["limit"] == 176
    # unchanged content: files are not rewritten; no temporary files are left behind
    before = {k: f.stat().st_mtime_ns for k, f in files.items()}
    pg.write_build_files(p, tmp_path / "build")
    assert {k: f.stat().st_mtime_ns for k, f in files.items()} == before
    assert len(list((tmp_path / "build").iterdir())) == 3


def test_float_plan_has_no_weight_image():
    p = plan(build("mobilenet", alpha=0.25, resolution=96, classes=2), B85)
    with pytest.raises(ValueError, match="quantise"):
        pg.weight_image(p)
