"""hwgen.hw.bram: DP16KD arrays with computed INITVALs.

* The INITVAL packing equals what yosys' own ECP5 block-RAM mapping writes for the same
  contents (9-bit and 18-bit modes), so an explicit instance holds what an inferred one would.
* The primitive implementation (address bits per mode, row select, column slices, write
  enables) behaves exactly like the behavioural one: simulated with a DP16KD model that
  decodes INITVAL the yosys way, under random reads and writes.
"""
import json
import random
import subprocess

import pytest
from amaranth import Elaboratable, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hwgen import tools
from hwgen.hw import bram
from hwgen.hw.bram import BlockRam, dp16kd_geometry, initvals


def test_geometry():
    assert dp16kd_geometry(8, 2048) == (9, 1, 1)
    assert dp16kd_geometry(8, 55296) == (9, 1, 27)
    assert dp16kd_geometry(96, 18141) == (9, 11, 9)       # 99 blocks (18-bit: 6 x 18 = 108)
    assert dp16kd_geometry(64, 2740) == (18, 4, 3)        # 12 (9-bit mode: 8 x 2 = 16)
    bits, c, r = dp16kd_geometry(17, 256)
    assert (bits, c, r) == (18, 1, 1)
    # the 36-bit mode (latency 1 only): a requantiser lane's 30-bit words in one block
    assert dp16kd_geometry(30, 267) == (36, 1, 1)
    assert dp16kd_geometry(30, 267, wide=False) == (18, 2, 1)
    assert dp16kd_geometry(64, 2740, wide=True) == (18, 4, 3)   # a tie stays narrow
    for w, dpt in [(8, 100), (30, 256), (64, 2740), (96, 18141), (1, 1)]:
        bits, c, r = dp16kd_geometry(w, dpt)
        words = bram.MODES[bits][0]
        assert c * bits >= w and r * words >= dpt
        for other, (ow, _) in bram.MODES.items():
            assert c * r <= -(-w // other) * -(-dpt // ow)


class _Rom(wiring.Component):
    def __init__(self, width, depth, init):
        self.w, self.d, self.i = width, depth, init
        super().__init__({"a": In(range(depth)), "q": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(self.w), depth=self.d, init=self.i)
        rp = mem.read_port()
        m.d.comb += [rp.addr.eq(self.a), self.q.eq(rp.data)]
        return m


@pytest.mark.parametrize("width,depth", [(9, 2048), (18, 1024), (36, 512)])
def test_initvals_match_yosys_inference(tmp_path, width, depth):
    from amaranth.back import verilog
    rnd = random.Random(width)
    init = [rnd.randrange(1 << width) for _ in range(depth)]
    (tmp_path / "t.v").write_text(verilog.convert(_Rom(width, depth, init), name="t",
                                                  emit_src=False))
    subprocess.run([tools.find("yosys"), "-q", "-p",
                    "read_verilog t.v; synth_ecp5 -top t -json t.json"],
                   cwd=tmp_path, check=True, env=tools.tool_env(), capture_output=True)
    cells = [c for c in json.loads((tmp_path / "t.json").read_text())["modules"]["t"]["cells"]
             .values() if c["type"] == "DP16KD"]
    assert len(cells) == 1
    par = cells[0]["parameters"]
    assert width in (int(par["DATA_WIDTH_A"], 2), int(par["DATA_WIDTH_B"], 2))
    mine = initvals(init, width)
    assert {k: int(cells[0]["parameters"][k], 2) for k in mine} == mine
    assert initvals(init, width) != initvals(init[:-1] + [init[-1] ^ 1], width)


class _DP16KDModel(Elaboratable):
    """Behaviour of one DP16KD as BlockRam uses it (port A writes, port B reads, NOREG),
    its contents decoded from INITVAL the way yosys' mapping lays them out."""

    def __init__(self, bits, wen, ren, ports, params, latency=1):
        self.bits, self.wen, self.ren, self.ports = bits, wen, ren, ports
        self.latency = latency
        n18 = []
        for row in range(64):
            v = params[f"p_INITVAL_{row:02X}"].value
            n18 += [(v >> (20 * s)) & 0x3FFFF for s in range(16)]
        if bits == 9:
            self.init = [(n18[a >> 1] >> (9 * (a & 1))) & 0x1FF for a in range(2048)]
        elif bits == 36:        # yosys' PDPW16KD: word a is 18-bit words 2a (low), 2a + 1
            self.init = [n18[2 * a] | n18[2 * a + 1] << 18 for a in range(512)]
        else:
            self.init = n18

    def elaborate(self, platform):
        from amaranth import Cat
        m = Module()
        p, bits = self.ports, self.bits
        lsb = {9: 3, 18: 4, 36: 5}[bits]
        mem = Memory(shape=unsigned(bits), depth=len(self.init), init=self.init)
        m.submodules.mem = mem
        wp, rp = mem.write_port(), mem.read_port()
        if bits == 18:
            m.d.comb += [wp.en.eq(self.wen & p["i_ADA0"] & p["i_ADA1"])]
        elif bits == 36:        # four byte enables (all on: whole words only)
            m.d.comb += [wp.en.eq(self.wen & p["i_ADA0"] & p["i_ADA1"] & p["i_ADA2"]
                                  & p["i_ADA3"])]
        else:
            m.d.comb += wp.en.eq(self.wen)
        if bits == 36:          # DIA/DIB in, DOA/DOB out: bits 0-17 / 18-35
            assert self.latency == 1
            m.d.comb += [wp.addr.eq(Cat(*[p[f"i_ADA{i}"] for i in range(lsb, 14)])),
                         wp.data.eq(Cat(*[p[f"i_DIA{i}"] for i in range(18)],
                                        *[p[f"i_DIB{i}"] for i in range(18)])),
                         rp.addr.eq(Cat(*[p[f"i_ADB{i}"] for i in range(lsb, 14)])),
                         rp.en.eq(self.ren)]
            m.d.comb += [p[f"o_DOA{i}"].eq(rp.data[i]) for i in range(18)]
            m.d.comb += [p[f"o_DOB{i}"].eq(rp.data[18 + i]) for i in range(18)]
            return m
        m.d.comb += [wp.addr.eq(Cat(*[p[f"i_ADA{i}"] for i in range(lsb, 14)])),
                     wp.data.eq(Cat(*[p[f"i_DIA{i}"] for i in range(bits)])),
                     rp.addr.eq(Cat(*[p[f"i_ADB{i}"] for i in range(lsb, 14)])),
                     rp.en.eq(self.ren)]
        if self.latency == 1:
            m.d.comb += [p[f"o_DOB{i}"].eq(rp.data[i]) for i in range(bits)]
        else:                                   # REGMODE_B = OUTREG, OCEB = ren
            with m.If(self.ren):
                m.d.sync += [p[f"o_DOB{i}"].eq(rp.data[i]) for i in range(bits)]
        return m


class _FFModel(Elaboratable):
    """TRELLIS_FF as BlockRam instantiates it (clock enable, no reset)."""

    def __init__(self, d, en, q):
        self.d, self.en, self.q = d, en, q

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.q.eq(self.d)
        return m


@pytest.mark.parametrize("width,depth,writable,latency",
                         [(8, 5000, True, 1), (96, 2500, False, 1), (64, 1500, False, 1),
                          (17, 300, True, 1), (30, 267, True, 1), (70, 1100, True, 1), (8, 5000, True, 2), (96, 2500, False, 2),
                          (8, 5000, True, 3), (64, 1500, False, 4), (8, 5000, True, 4),
                          (96, 2500, False, 4), (96, 2500, False, 5), (8, 20000, True, 5),
                          (12, 9000, False, 5), (8, 5000, True, 6), (8, 20000, True, 6),
                          (12, 9000, False, 6),
                          (96, 5000, False, 6), (17, 300, True, 6), (96, 5000, False, 7),
                          (8, 5000, True, 7), (96, 12000, False, 8), (8, 20000, True, 8)])
def test_primitive_equals_behavioural(monkeypatch, width, depth, writable, latency):
    monkeypatch.setattr(bram, "_instance", _DP16KDModel)
    monkeypatch.setattr(bram, "_ff_instance", _FFModel)
    rnd = random.Random(depth)
    init = [rnd.getrandbits(width) for _ in range(depth - 7)]
    prim = BlockRam(width, depth, init, writable=writable, use_primitive=True, latency=latency)
    ref = BlockRam(width, depth, init, writable=writable, use_primitive=False, latency=latency)

    class Pair(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.prim, m.submodules.ref = prim, ref
            return m

    top = Pair()
    sim = Simulator(top)
    sim.add_clock(1e-6)
    mism = []

    async def bench(ctx):
        reads = 0       # enabled cycles so far: the first `latency` outputs are start-up values
        for step in range(1500):
            a = rnd.randrange(depth)
            en = rnd.random() < 0.8
            reads += en
            for ram in (prim, ref):
                ctx.set(ram.r_addr, a)
                ctx.set(ram.r_en, en)
            if writable:
                wa, wd, we = rnd.randrange(depth), rnd.getrandbits(width), rnd.random() < 0.5
                for ram in (prim, ref):
                    ctx.set(ram.w_addr, wa)
                    ctx.set(ram.w_data, wd)
                    ctx.set(ram.w_en, we)
            await ctx.tick()
            if reads >= latency and ctx.get(prim.r_data) != ctx.get(ref.r_data):
                mism.append((step, a))

    sim.add_testbench(bench)
    sim.run()
    assert not mism, mism[:5]
    bits, cols, rows = dp16kd_geometry(width, depth, wide=latency == 1)
    assert prim.blocks == cols * rows and prim.geometry == (bits, cols, rows)
