"""cocotb bench of the PoolUnit: 3x3 max, 3x3 average and global average pooling.

Every draw is one layer with a random mode, geometry (odd/even sizes, 1x1, padding 0/1,
ceil mode, stride 1/2, count_include_pad both ways), channel count (not a multiple of the
lanes), quantisation parameters (scale ratios from saturation to tiny, uint8 offset) and
clamp; the tensor streams in as channel groups of ``lanes`` channels with random idle gaps
and random backpressure, and the output is compared bit-exact with hwgen.golden.ops
(maxpool / avgpool / global_avgpool). Full-rate draws (no gaps, always ready) prove the max
pool accepts one beat per cycle: its input is stalled exactly on the padding positions the
unit walks itself.

Config keys: seed, draws, lanes, max_width, max_height, interval (AvgFinisher), modes.
"""
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from harness import tb_config
from hwgen.golden import ops
from hwgen.hw.pool import PoolMode, PoolParams


class TB:
    def __init__(self, dut, cfg):
        self.dut = dut
        self.cfg = cfg
        self.lanes = cfg["lanes"]
        self.params = PoolParams(lanes=cfg["lanes"], max_width=cfg["max_width"],
                                 max_height=cfg["max_height"])
        self.rng = random.Random(cfg["seed"])
        self.nrng = np.random.default_rng(cfg["seed"])

    async def start(self):
        cocotb.start_soon(Clock(self.dut.clk, 10, unit="ns").start())
        self.dut.rst.value = 1
        self.dut.i_stream__valid.value = 0
        self.dut.o_stream__ready.value = 0
        await RisingEdge(self.dut.clk)
        await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    def draw(self, mode):
        rng, nrng, p = self.rng, self.nrng, self.params
        while True:
            c = rng.randint(1, 3 * self.lanes)
            h = rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 12])
            w = rng.choice([1, 2, 3, 4, 5, 6, 7, 11, 13])
            xs = float(np.float32(rng.uniform(0.005, 0.2)))
            ys = float(np.float32(xs * 2.0 ** rng.uniform(-5, 5)))
            if rng.random() < 0.25:
                ys = xs * rng.choice([1.0, 0.5, 2.0])   # exact ratios: half-way ties
            xz, yz = rng.randint(-128, 127), rng.randint(-128, 127)
            lo, hi = -128, 127
            if rng.random() < 0.3:          # a fused ReLU-like clamp
                lo = rng.randint(-128, 0)
                hi = rng.randint(lo, 127)
            x = nrng.integers(-128, 128, (1, c, h, w)).astype(np.int8)
            if rng.random() < 0.15:
                x[:] = rng.choice([-128, 127])   # saturated inputs
            elif rng.random() < 0.1:
                x[:] = xz                        # every cell at the zero point: a zero sum
            try:
                if mode == PoolMode.GLOBAL:
                    cfg = p.config(mode, h, w, x_scale=xs, x_zp=xz, y_scale=ys, y_zp=yz,
                                   lo=lo, hi=hi)
                    y = ops.global_avgpool(x, xs, xz, ys, yz, lo, hi)
                else:
                    stride = rng.choice([2, 2, 2, 1])
                    pad = rng.choice([0, 1])
                    padding = (pad,) * 4 if rng.random() < 0.8 else tuple(
                        rng.randint(0, 1) for _ in range(4))
                    ceil = rng.random() < 0.5
                    cip = rng.random() < 0.5
                    off = rng.choice([0, 128])
                    cfg = p.config(mode, h, w, stride=stride, padding=padding, ceil_mode=ceil,
                                   count_include_pad=cip, x_scale=xs, x_zp=xz, y_scale=ys,
                                   y_zp=yz, offset=off, lo=lo, hi=hi)
                    if mode == PoolMode.MAX:
                        y = ops.maxpool(x, 3, stride, padding, ceil)
                    else:
                        y = ops.avgpool(x, xs, xz, ys, yz, 3, stride, padding, ceil, cip,
                                        lo, hi, offset=off)
            except ValueError:
                continue                     # outside the unit's or onnxruntime's range
            return cfg, x[0], y[0]

    def beats(self, x):
        c, h, w = x.shape
        out = []
        for g in range(0, c, self.lanes):
            for yy in range(h):
                for xx in range(w):
                    word = 0
                    for ln in range(self.lanes):
                        word |= (int(x[min(g + ln, c - 1), yy, xx]) & 0xFF) << (8 * ln)
                    out.append(word)
        return out

    def unpack(self, words, shape):
        c, oh, ow = shape
        y = np.zeros(shape, np.int64)
        k = 0
        for g in range(0, c, self.lanes):
            for oy in range(oh):
                for ox in range(ow):
                    for ln in range(self.lanes):
                        v = (words[k] >> (8 * ln)) & 0xFF
                        if g + ln < c:
                            y[g + ln, oy, ox] = v - 256 if v >= 128 else v
                    k += 1
        return y.astype(np.int8)

    async def run_layer(self, cfg, x, n_out, p_valid, p_ready):
        dut, rng = self.dut, self.rng
        for k, v in cfg.items():
            getattr(dut, k).value = v
        await RisingEdge(dut.clk)
        await RisingEdge(dut.clk)
        beats = self.beats(x)
        got = []
        i = 0
        stats = {"cycles": 0, "stalled": 0, "first": None, "last_out": None}
        while len(got) < n_out or i < len(beats):
            offer = i < len(beats) and rng.random() < p_valid
            dut.i_stream__valid.value = int(offer)
            if offer:
                dut.i_stream__payload.value = beats[i]
            ready = rng.random() < p_ready
            dut.o_stream__ready.value = int(ready)
            await ReadOnly()
            if offer:
                if stats["first"] is None:
                    stats["first"] = stats["cycles"]
                if dut.i_stream__ready.value:
                    i += 1
                else:
                    stats["stalled"] += 1
            if ready and dut.o_stream__valid.value:
                got.append(int(dut.o_stream__payload.value))
                stats["last_out"] = stats["cycles"]
            stats["cycles"] += 1
            assert stats["cycles"] < 400 * (len(beats) + 50), "pool unit hung"
            await RisingEdge(dut.clk)
        dut.i_stream__valid.value = 0
        dut.o_stream__ready.value = 0
        # the sequencer reconfigures only when the unit is idle (trailing padding walked)
        for _ in range(200):
            await ReadOnly()
            busy = int(dut.busy.value)
            extra = int(dut.o_stream__valid.value)
            await RisingEdge(dut.clk)
            if not busy:
                break
        assert not busy and not extra, "pool unit still busy or holding an extra output"
        return got, stats


@cocotb.test()
async def pool_unit(dut):
    cfg = tb_config()
    tb = TB(dut, cfg)
    await tb.start()
    modes = [PoolMode(m) for m in cfg["modes"]]
    for d in range(cfg["draws"]):
        mode = modes[d % len(modes)]
        full_rate = d < len(modes)                 # first draw of each mode: no gaps
        lcfg, x, y = tb.draw(mode)
        c = x.shape[0]
        groups = -(-c // tb.lanes)
        n_out = groups * y.shape[1] * y.shape[2]
        pv, pr = (1.0, 1.0) if full_rate else (0.75, 0.7)
        got, stats = await tb.run_layer(lcfg, x, n_out, pv, pr)
        np.testing.assert_array_equal(
            tb.unpack(got, y.shape), y,
            err_msg=f"draw {d}: {mode.name} {x.shape} cfg {lcfg}")
        if full_rate and mode == PoolMode.MAX:
            ye, xe, h, w = lcfg["ye"], lcfg["xe"], lcfg["height"], lcfg["width"]
            pad_positions = groups * (ye * xe - h * w)
            trailing = (ye * xe - 1) - ((h - 1) * xe + (w - 1))   # walked after the last beat
            # one beat per cycle: the input waits only while the unit walks padding cells
            assert stats["stalled"] == pad_positions - trailing, (stats, pad_positions, trailing)
            span = stats["last_out"] - stats["first"] + 1
            assert span <= groups * lcfg["ye"] * lcfg["xe"] + 6, (span, stats)
        if full_rate and mode == PoolMode.AVG:
            windows = n_out
            assert stats["cycles"] <= windows * cfg["interval"] + 4 * len(tb.beats(x)) + 20
        dut._log.info(f"draw {d}: {mode.name} {tuple(x.shape)} -> {tuple(y.shape)} "
                      f"{stats['cycles']} cycles, input stalled {stats['stalled']}")
