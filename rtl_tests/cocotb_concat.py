"""cocotb bench of the ConcatBuffer (channel offset per producer + channel shuffle remap).

Each draw is one layer: two producers write random int8 tensors (C1 and C2 channels, H x W)
in random (pixel, channel) order with random idle gaps, the shuffle is on or off with a
random group count, base and pitch are random; then the whole tensor is read back through
the read port in natural order and compared with hwgen.golden.ops.concat (+ channel_shuffle).

Config keys: seed, draws, max_channels, max_pixels, depth, max_groups, layout, p_valid,
concurrent (also draw layers where both producers are valid at once), wrong_expect (flip
one expected value: the bench must then fail).
"""
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from harness import tb_config
from hwgen.golden import ops
from hwgen.hw import actbuf


class TB:
    def __init__(self, dut, cfg):
        self.dut = dut
        self.cfg = cfg
        self.rng = random.Random(cfg["seed"])
        self.nrng = np.random.default_rng(cfg["seed"])
        self.cycles = 0
        self.offered = 0
        self.accepted = 0

    async def start(self):
        cocotb.start_soon(Clock(self.dut.clk, 10, unit="ns").start())
        self.dut.rst.value = 1
        for k in range(2):
            getattr(self.dut, f"p{k}__valid").value = 0
        await RisingEdge(self.dut.clk)
        await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    def draw_layer(self):
        cfg, rng, nrng = self.cfg, self.rng, self.nrng
        maxc, maxp = cfg["max_channels"], cfg["max_pixels"]
        while True:
            c1 = rng.randint(1, maxc - 1)
            c2 = rng.randint(1, maxc - c1)
            c = c1 + c2
            h = rng.randint(1, 8)
            w = rng.randint(1, max(1, maxp // h))
            if h * w > maxp:
                continue
            divisors = [g for g in range(1, cfg["max_groups"] + 1) if c % g == 0]
            g = rng.choice(divisors)
            shuffle = rng.random() < 0.75 and g > 1
            npx = h * w
            pitch = (c if cfg["layout"] == "hwc" else npx) + rng.randint(0, 3)
            span = (npx * pitch if cfg["layout"] == "hwc" else c * pitch)
            if span + 1 > cfg["depth"]:
                continue
            base = rng.randint(0, cfg["depth"] - span - 1)
            x1 = nrng.integers(-128, 128, (1, c1, h, w)).astype(np.int8)
            x2 = nrng.integers(-128, 128, (1, c2, h, w)).astype(np.int8)
            return dict(c1=c1, c2=c2, h=h, w=w, g=g if shuffle else 1, shuffle=shuffle,
                        pitch=pitch, base=base, x1=x1, x2=x2)

    async def run_layer(self, L, concurrent):
        dut, rng = self.dut, self.rng
        dut.offset0.value = 0
        dut.offset1.value = L["c1"]
        dut.shuffle.value = int(L["shuffle"])
        dut.groups.value = L["g"]
        dut.n.value = (L["c1"] + L["c2"]) // L["g"]
        dut.base.value = L["base"]
        dut.pitch.value = L["pitch"]
        for _ in range(3):
            await RisingEdge(dut.clk)
        queues = []
        for x in (L["x1"], L["x2"]):
            c, npx = x.shape[1], x.shape[2] * x.shape[3]
            order = [(p, ch) for p in range(npx) for ch in range(c)]
            rng.shuffle(order)
            queues.append([(p, ch, int(x[0, ch].reshape(-1)[p])) for p, ch in order])
        pv = self.cfg["p_valid"]
        if concurrent:
            active = [0, 1]
        else:
            active = [0]
        idx = [0, 0]
        while any(idx[k] < len(queues[k]) for k in range(2)):
            if not concurrent:
                # producers take turns (the sequencer's one-layer-at-a-time schedule):
                # port 0 streams first, then port 1 (random gaps inside each)
                active = [0] if idx[0] < len(queues[0]) else [1]
            offers = []
            for k in range(2):
                valid = getattr(dut, f"p{k}__valid")
                if k in active and idx[k] < len(queues[k]) and rng.random() < pv:
                    px, ch, val = queues[k][idx[k]]
                    valid.value = 1
                    getattr(dut, f"p{k}__payload").value = (
                        px | (ch << self.pw) | ((val & 0xFF) << (self.pw + self.cw)))
                    offers.append(k)
                else:
                    valid.value = 0
            await ReadOnly()
            got = [k for k in offers if getattr(dut, f"p{k}__ready").value]
            self.cycles += 1
            if offers:
                self.offered += 1
            self.accepted += len(got)
            if not concurrent:
                assert len(got) == len(offers), "a lone producer was stalled"
            for k in got:
                idx[k] += 1
            await RisingEdge(dut.clk)
        dut.p0__valid.value = 0
        dut.p1__valid.value = 0
        while True:
            await ReadOnly()
            busy = int(dut.busy.value)
            await RisingEdge(dut.clk)
            if not busy:
                break

    async def read_tensor(self, L):
        dut = self.dut
        c = L["c1"] + L["c2"]
        npx = L["h"] * L["w"]
        ch, px = np.meshgrid(np.arange(c), np.arange(npx), indexing="ij")
        addrs = actbuf.address(self.cfg["layout"], L["base"], L["pitch"], ch, px).reshape(-1)
        vals = []
        await FallingEdge(dut.clk)
        for a in addrs:
            dut.r_addr.value = int(a)
            await FallingEdge(dut.clk)   # the registered read port samples on the rising edge
            vals.append(int(dut.r_data.value))
        v = np.array(vals, np.int64)
        return ((v + 128) % 256 - 128).astype(np.int8).reshape(c, L["h"], L["w"])


@cocotb.test()
async def concat_buffer(dut):
    cfg = tb_config()
    tb = TB(dut, cfg)
    tb.pw = max(1, (cfg["max_pixels"] - 1).bit_length())
    tb.cw = max(1, (cfg["max_channels"] - 1).bit_length())
    await tb.start()
    for i in range(cfg["draws"]):
        L = tb.draw_layer()
        concurrent = cfg["concurrent"] and i % 2 == 1
        before = (tb.offered, tb.accepted, tb.cycles)
        await tb.run_layer(L, concurrent)
        got = await tb.read_tensor(L)
        want = ops.concat([(L["x1"], 0.1, 0), (L["x2"], 0.1, 0)], 0.1, 0)
        if L["shuffle"]:
            want = ops.channel_shuffle(want, L["g"])
        want = want[0].copy()
        if cfg.get("wrong_expect"):
            want.reshape(-1)[0] ^= 1
        np.testing.assert_array_equal(got, want, err_msg=f"draw {i}: {L['c1']}+{L['c2']} ch "
                                      f"{L['h']}x{L['w']} shuffle={L['shuffle']} g={L['g']}")
        offered = tb.offered - before[0]
        accepted = tb.accepted - before[1]
        beats = (L["c1"] + L["c2"]) * L["h"] * L["w"]
        assert accepted == beats
        if not concurrent:
            # zero extra cycles: every cycle with a valid beat wrote one beat
            assert offered == beats, f"{offered} valid cycles for {beats} writes"
    dut._log.info(f"{cfg['draws']} layers, {tb.accepted} writes in {tb.cycles} cycles "
                  f"({tb.offered} with valid input)")
