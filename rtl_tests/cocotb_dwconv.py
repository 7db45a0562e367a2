"""cocotb testbench of hwgen.hw.dwconv.DwConvEngine (driven by rtl_tests/test_dwconv.py).

Config (JSON from the pytest side): ``params`` (DwConvParams fields), ``trials``, ``seed``,
``requant`` (the DUT is a DwConvRequant: int8 outputs against ``ops.conv2d``), optional
``measure`` ({"tensors": n, "result": path, "min_util": f}).

Every trial draws a random tensor batch, weights, biases and input zero point (extremes
-128/127 and saturating tensors included), writes weights and biases through the engine's
write ports, streams 1..3 tensors back to back under random ``valid`` gaps and random
``ready`` backpressure, and compares every int32 accumulator with
``hwgen.golden.ops.conv2d_acc(..., groups=channels)``.

Cycle measurement (used for the utilisation figure and by bench/): :meth:`TB.stream` counts
clock cycles from the first accepted input beat to the last accepted output beat
(inclusive); with ``gap=0`` and ``backpressure=0`` that is the engine's sustained time for
the tensors. ``lane utilisation = useful MACs / (cycles * lanes * k * k)``.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from harness import tb_config
from hwgen.golden import ops
from hwgen.hw.dwconv import DwConvParams
from hwgen.hw.requant import encode_scales


def _pack(values, bits):
    mask = (1 << bits) - 1
    out = 0
    for i, v in enumerate(values):
        out |= (int(v) & mask) << (bits * i)
    return out


def _unpack_signed(word, bits, n):
    mask = (1 << bits) - 1
    half = 1 << (bits - 1)
    vals = []
    for i in range(n):
        v = (word >> (bits * i)) & mask
        vals.append(v - (1 << bits) if v >= half else v)
    return vals


class TB:
    """Clock, reset, weight loader and a cycle-accurate stream driver/monitor."""

    def __init__(self, dut, params: DwConvParams, seed: int = 0, requant: bool = False):
        self.dut, self.p = dut, params
        self.requant = requant
        self.out_bits = 8 if requant else 32
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)

    async def start(self):
        d = self.dut
        cocotb.start_soon(Clock(d.clk, 10, unit="ns").start())
        d.rst.value = 1
        d.i_stream__valid.value = 0
        d.i_stream__payload.value = 0
        d.o_stream__ready.value = 0
        d.w_wr__en.value = 0
        d.b_wr__en.value = 0
        d.x_zp.value = 0
        if self.requant:
            d.scale_wr__en.value = 0
        for _ in range(3):
            await RisingEdge(d.clk)
        d.rst.value = 0
        await RisingEdge(d.clk)

    async def wait_idle(self, limit=10_000):
        for _ in range(limit):
            await ReadOnly()
            if int(self.dut.idle.value):
                await RisingEdge(self.dut.clk)
                return
            await RisingEdge(self.dut.clk)
        raise AssertionError("engine never became idle")

    async def load(self, w, bias, x_zp, rq=None):
        """Write weights (C,1,k,k) int8 and biases (C,) int32 (lanes past C get junk) and, for
        the requantising variant, ``rq = (scale (C,) float32, y_zp, lo, hi)``."""
        d, p = self.dut, self.p
        P, K, G = p.lanes, p.k, p.groups
        junk_w = self.np_rng.integers(-128, 128, size=(G * P, K, K))
        junk_w[:p.channels] = w[:, 0]
        junk_b = self.np_rng.integers(-2**31, 2**31, size=G * P)
        junk_b[:p.channels] = bias
        await self.wait_idle()
        d.x_zp.value = int(x_zp) & 0xFF
        for g in range(G):
            for ky in range(K):
                for kx in range(K):
                    d.w_wr__en.value = 1
                    d.w_wr__group.value = g
                    d.w_wr__tap.value = ky * K + kx
                    d.w_wr__data.value = _pack(junk_w[g * P:(g + 1) * P, ky, kx], 8)
                    await RisingEdge(d.clk)
            d.w_wr__en.value = 0
            d.b_wr__en.value = 1
            d.b_wr__group.value = g
            d.b_wr__data.value = _pack(junk_b[g * P:(g + 1) * P], 32)
            await RisingEdge(d.clk)
            d.b_wr__en.value = 0
        d.w_wr__en.value = 0
        d.b_wr__en.value = 0
        if rq is not None:
            scale, y_zp, lo, hi = rq
            for c, word in enumerate(encode_scales(scale)):
                d.scale_wr__en.value = 1
                d.scale_wr__addr.value = c
                d.scale_wr__data.value = int(word)
                await RisingEdge(d.clk)
            d.scale_wr__en.value = 0
            d.y_zp.value = int(y_zp) & 0xFF
            d.lo.value = int(lo) & 0xFF
            d.hi.value = int(hi) & 0xFF

    def beats(self, x):
        """Input beats of one (C,H,W) int8 tensor in engine order (group, y, x)."""
        p = self.p
        P, G = p.lanes, p.groups
        xp = self.np_rng.integers(-128, 128, size=(G * P, p.height, p.width))
        xp[:p.channels] = x
        return [_pack(xp[g * P:(g + 1) * P, y, xx], 8)
                for g in range(G) for y in range(p.height) for xx in range(p.width)]

    def unbeats(self, words):
        """Output beats of one tensor -> (C, OH, OW) int32."""
        p = self.p
        P, G, OH, OW = p.lanes, p.groups, p.out_height, p.out_width
        a = np.array([_unpack_signed(wd, self.out_bits, P) for wd in words], np.int64)
        a = a.reshape(G, OH, OW, P).transpose(0, 3, 1, 2).reshape(G * P, OH, OW)
        return a[:p.channels].astype(np.int8 if self.requant else np.int32)

    async def stream(self, tensors, gap=0.0, backpressure=0.0, limit=None):
        """Stream tensors back to back; return (list of (C,OH,OW) outputs, cycles).

        ``gap``: probability of an idle cycle before presenting each beat; ``backpressure``:
        probability that ``o_stream.ready`` is low in a cycle. ``cycles``: from the first
        accepted input beat to the last accepted output beat, inclusive.
        """
        d, p, rng = self.dut, self.p, self.rng
        beats = [b for t in tensors for b in self.beats(t)]
        n_out = len(tensors) * p.out_beats
        limit = limit or 50 * (len(beats) + n_out) + 1000
        words = []
        i = 0
        valid = False
        cycle = 0
        first_in = last_out = None
        while len(words) < n_out:
            await RisingEdge(d.clk)
            cycle += 1
            if cycle > limit:
                raise AssertionError(f"timeout: {len(words)}/{n_out} output beats, "
                                     f"{i}/{len(beats)} input beats after {limit} cycles")
            if not valid and i < len(beats) and (gap == 0 or rng.random() >= gap):
                valid = True
                d.i_stream__payload.value = beats[i]
            d.i_stream__valid.value = int(valid)
            ready = backpressure == 0 or rng.random() >= backpressure
            d.o_stream__ready.value = int(ready)
            await ReadOnly()
            if valid and int(d.i_stream__ready.value):
                if first_in is None:
                    first_in = cycle
                i += 1
                valid = False
            if ready and int(d.o_stream__valid.value):
                words.append(d.o_stream__payload.value.to_unsigned())
                last_out = cycle
        await RisingEdge(d.clk)
        d.i_stream__valid.value = 0
        d.o_stream__ready.value = 0
        assert i == len(beats), f"outputs complete but only {i}/{len(beats)} inputs accepted"
        per = p.out_beats
        outs = [self.unbeats(words[k * per:(k + 1) * per]) for k in range(len(tensors))]
        return outs, last_out - first_in + 1

    # -- random draws ------------------------------------------------------------------------
    def draw(self, n):
        p, g, rng = self.p, self.np_rng, self.rng
        shape = (p.channels, p.height, p.width)
        mode = rng.choice(["uniform", "uniform", "extreme", "narrow"])
        if mode == "uniform":
            xs = [g.integers(-128, 128, size=shape) for _ in range(n)]
        elif mode == "extreme":
            xs = [g.choice(np.array([-128, 127]), size=shape) for _ in range(n)]
        else:
            xs = [g.integers(-3, 4, size=shape) for _ in range(n)]
        wmode = rng.choice(["uniform", "extreme"])
        wshape = (p.channels, 1, p.k, p.k)
        if wmode == "uniform":
            w = g.integers(-128, 128, size=wshape)
        else:
            w = g.choice(np.array([-128, 127]), size=wshape)
        bmode = rng.choice(["small", "small", "wrap"])
        if bmode == "small":
            bias = g.integers(-2**20, 2**20, size=p.channels)
        else:
            bias = g.choice(np.array([-2**31, 2**31 - 1]), size=p.channels)
        x_zp = rng.choice([-128, 127, 0, rng.randint(-128, 127)])
        return ([x.astype(np.int8) for x in xs], w.astype(np.int8), bias.astype(np.int32),
                x_zp, f"x={mode} w={wmode} b={bmode} x_zp={x_zp}")

    def draw_requant(self):
        """Per-channel float32 scales (typical and extreme), output zero point, clamp range."""
        g, rng = self.np_rng, self.rng
        scale = (2.0 ** g.uniform(-18, -4, size=self.p.channels)).astype(np.float32)
        if rng.random() < 0.3:
            scale[g.integers(0, self.p.channels)] = np.float32(2.0 ** -32)
        y_zp = rng.choice([-128, 0, 127, rng.randint(-128, 127)])
        lo, hi = rng.choice([(-128, 127), (y_zp, 127), (y_zp, min(127, y_zp + 50))])
        return scale, y_zp, lo, hi

    def golden(self, x, x_zp, w, bias, rq=None):
        p = self.p
        if rq is not None:
            scale, y_zp, lo, hi = rq
            return ops.conv2d(x[None], x_zp, w, bias, scale, y_zp, p.stride, p.padding,
                              groups=p.channels, lo=lo, hi=hi)[0]
        return ops.conv2d_acc(x[None], x_zp, w, bias, p.stride, p.padding,
                              groups=p.channels)[0]


def _params(cfg) -> DwConvParams:
    return DwConvParams(**cfg["params"])


@cocotb.test()
async def dwconv_random(dut):
    """Random tensors/weights/zero points under random gaps and backpressure, bit-exact."""
    cfg = tb_config()
    if cfg.get("measure_only"):
        return
    p = _params(cfg)
    requant = cfg.get("requant", False)
    tb = TB(dut, p, cfg.get("seed", 0), requant=requant)
    await tb.start()
    for trial in range(cfg.get("trials", 10)):
        n = tb.rng.choice([1, 1, 2, 3])
        xs, w, bias, x_zp, desc = tb.draw(n)
        rq = tb.draw_requant() if requant else None
        if rq is not None:
            desc += f" y_zp={rq[1]} lo={rq[2]} hi={rq[3]}"
        gap = tb.rng.choice([0.0, 0.1, 0.3, 0.6])
        bp = tb.rng.choice([0.0, 0.1, 0.3, 0.6])
        await tb.load(w, bias, x_zp, rq)
        outs, _ = await tb.stream(xs, gap=gap, backpressure=bp)
        for k, (x, got) in enumerate(zip(xs, outs)):
            want = tb.golden(x, x_zp, w, bias, rq)
            np.testing.assert_array_equal(
                got, want, err_msg=f"trial {trial} tensor {k}/{n}: {desc} gap={gap} bp={bp} "
                                   f"{p}")


@cocotb.test()
async def dwconv_measure(dut):
    """Cycle count with the input always valid and the output always ready (see module doc)."""
    cfg = tb_config()
    meas = cfg.get("measure")
    if not meas:
        return
    p = _params(cfg)
    tb = TB(dut, p, cfg.get("seed", 0) + 1)
    await tb.start()
    xs, w, bias, x_zp, desc = tb.draw(meas.get("tensors", 1))
    await tb.load(w, bias, x_zp)
    outs, cycles = await tb.stream(xs)
    for x, got in zip(xs, outs):
        np.testing.assert_array_equal(got, tb.golden(x, x_zp, w, bias), err_msg=desc)
    t = len(xs)
    res = {
        "params": {k: v for k, v in asdict(p).items() if not k.startswith("_")},
        "tensors": t,
        "cycles": cycles,
        "out_beats": t * p.out_beats,
        "macs": t * p.macs,
        "ideal_cycles": t * p.stream_beats,
        "mac_utilisation": t * p.macs / (cycles * p.lanes * p.k * p.k),
        "beat_utilisation": t * p.out_beats / cycles,
    }
    with open(meas["result"], "w") as f:
        json.dump(res, f)
    if "min_util" in meas:
        assert res["mac_utilisation"] >= meas["min_util"], res
