"""cocotb bench of rtl_tests.test_systolic.SystolicTop: random layers vs hwgen.golden.ops."""
import json
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from harness import tb_config
from hwgen.golden import arith, ops
from hwgen.hw import systolic as S
from hwgen.hw.im2col import Im2colParams, Im2colShape


def _pack(vals, width):
    mask = (1 << width) - 1
    out = 0
    for i, v in enumerate(vals):
        out |= (int(v) & mask) << (i * width)
    return out


def _unpack(x, width, n):
    mask, half = (1 << width) - 1, 1 << (width - 1)
    vals = []
    for i in range(n):
        v = (x >> (i * width)) & mask
        vals.append(v - (1 << width) if v >= half else v)
    return vals


class Source:
    """valid/ready driver: holds valid until the beat is taken; random idle gaps."""

    def __init__(self, dut, prefix, rng, p_idle):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.rng, self.p_idle = rng, p_idle
        self.beats, self.i, self.showing = [], 0, False
        self.first_fire = self.last_fire = None
        self.valid.value = 0

    def load(self, beats):
        self.beats, self.i, self.showing = list(beats), 0, False

    def drive(self):
        if not self.showing:
            if self.i < len(self.beats) and self.rng.random() >= self.p_idle:
                self.payload.value = self.beats[self.i]
                self.showing = True
        self.valid.value = int(self.showing)

    def sample(self, cycle):
        if self.showing and int(self.ready.value):
            if self.first_fire is None:
                self.first_fire = cycle
            self.last_fire = cycle
            self.i += 1
            self.showing = False


class Sink:
    def __init__(self, dut, prefix, rng, p_stall, width, lanes):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.rng, self.p_stall, self.width, self.lanes = rng, p_stall, width, lanes
        self.got, self.meta, self.last_fire = [], [], None
        self.ready.value = 0

    def drive(self):
        self.ready.value = int(self.rng.random() >= self.p_stall)

    def sample(self, cycle):
        if int(self.ready.value) and int(self.valid.value):
            v = int(self.payload.value)
            self.got.append(_unpack(v, self.width, self.lanes))
            self.meta.append(v >> (self.width * self.lanes))
            self.last_fire = cycle


def _case_data(case, rng):
    """Random int8 tensors for one case (extreme: zero points and weights at the rails)."""
    cin, cout, h, w = case["cin"], case["cout"], case["h"], case["w"]
    k, g = case.get("k", 1), case.get("groups", 1)
    if case.get("extreme"):
        x_zp = int(rng.choice([-128, 127]))
        x = rng.choice(np.array([-128, 127], np.int8), size=(cin, h, w))
        shape = (cout, cin * h * w) if case["kind"] == "fc" else (cout, cin // g, k, k)
        wt = rng.choice(np.array([-128, 127], np.int8), size=shape)
        if x_zp == -128:
            wt[0] = 127   # all products at the positive rail for output 0
        bias = rng.choice(np.array([-(1 << 24), (1 << 24)], np.int32), size=cout)
    else:
        x_zp = int(rng.integers(-128, 128))
        x = rng.integers(-128, 128, size=(cin, h, w), dtype=np.int8)
        shape = (cout, cin * h * w) if case["kind"] == "fc" else (cout, cin // g, k, k)
        wt = rng.integers(-128, 128, size=shape, dtype=np.int8)
        bias = rng.integers(-(1 << 24), 1 << 24, size=cout, dtype=np.int32)
    return x, x_zp, wt.astype(np.int8), bias.astype(np.int32)


class TB:
    def __init__(self, dut, cfg):
        self.dut, self.cfg = dut, cfg
        self.sp = S.SystolicParams(**cfg["sp"])
        self.ip = Im2colParams(**cfg["ip"]) if "ip" in cfg else None
        rng = random.Random(cfg["seed"])
        self.a = Source(dut, "a_stream", rng, cfg["p_idle"])
        self.w = Source(dut, "w_stream", rng, cfg["p_idle"])
        self.b = Source(dut, "b_stream", rng, cfg["p_idle"])
        self.p = Source(dut, "p_stream", rng, cfg["p_idle"]) if self.ip else None
        self.requant = bool(cfg.get("requant"))
        self.o = Sink(dut, "o_stream", rng, cfg["p_stall"], 8 if self.requant else 32,
                      self.sp.cols)
        self.cycle = 0
        if self.ip:
            dut.use_im2col.value = 0

    async def reset(self):
        cocotb.start_soon(Clock(self.dut.clk, 10, unit="ns").start())
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def run(self, n_out, limit):
        srcs = [s for s in (self.a, self.w, self.b, self.p) if s is not None]
        for s in srcs:
            s.first_fire = s.last_fire = None
        self.o.got, self.o.meta, self.o.last_fire = [], [], None
        start = self.cycle
        while len(self.o.got) < n_out or any(s.i < len(s.beats) for s in srcs):
            await RisingEdge(self.dut.clk)
            for s in srcs:
                s.drive()
            self.o.drive()
            await ReadOnly()
            for s in srcs:
                s.sample(self.cycle)
            self.o.sample(self.cycle)
            self.cycle += 1
            assert len(self.o.got) <= n_out, "more output beats than the layer has"
            assert self.cycle - start < limit, (
                f"timeout: {len(self.o.got)}/{n_out} outputs, sources at "
                f"{[(s.i, len(s.beats)) for s in srcs]}")
        # the array must go idle with no extra output
        await RisingEdge(self.dut.clk)
        for s in srcs:
            s.valid.value = 0
        self.o.ready.value = 1
        for _ in range(12):
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            assert not int(self.dut.o_stream__valid.value), "extra output beat after the layer"
            self.cycle += 1
        await RisingEdge(self.dut.clk)
        assert not int(self.dut.busy.value), "array still busy after the layer"


async def _load_requant(dut, rng, acc, layer):
    """Random per-channel scales (output spread over int8), zero point and clamp; writes the
    requantiser's scale memory. ``acc`` is the golden int32 result, used to size y_scale."""
    x_scale = 0.02
    w_scale = rng.uniform(0.5, 2.0, size=layer.cout).astype(np.float32) * 0.01
    spread = float(np.abs(acc.astype(np.float64)).mean()) + 1.0
    y_scale = float(x_scale * 0.01 * spread / 60.0)
    scale = arith.conv_scale(x_scale, w_scale, y_scale)
    y_zp = int(rng.integers(-60, 60))
    lo, hi = (-128, 127) if rng.random() < 0.5 else (y_zp, min(127, y_zp + 90))
    from hwgen.hw.requant import encode_scales
    words = encode_scales(scale)
    dut.zero_point.value, dut.lo.value, dut.hi.value = y_zp, lo, hi
    for ch, wv in enumerate(words):
        dut.param__en.value = 1
        dut.param__addr.value = ch
        dut.param__data.value = int(wv)
        await RisingEdge(dut.clk)
    dut.param__en.value = 0
    return {"scale": scale, "y_zp": y_zp, "lo": lo, "hi": hi}


@cocotb.test()
async def layers(dut):
    cfg = tb_config()
    tb = TB(dut, cfg)
    sp = tb.sp
    await tb.reset()
    rng = np.random.default_rng(cfg["seed"])
    result = {"checked": 0, "bench": []}
    for case in cfg["cases"]:
        x, x_zp, wt, bias = _case_data(case, rng)
        if tb.requant:   # a bias that does not swamp the products: outputs spread over int8
            bias = (bias // 4096).astype(np.int32)
        k, g = case.get("k", 1), case.get("groups", 1)
        stride, pad = case.get("stride", 1), case.get("pad", 0)
        if case["kind"] == "fc":
            layer = S.layer_for_fc(x.size, case["cout"], x_zp)
            patches = x.reshape(1, -1)
            expect = ops.conv2d_acc(x.reshape(1, -1, 1, 1), x_zp, wt.reshape(*wt.shape, 1, 1),
                                    bias)[0].reshape(case["cout"], 1)
        else:
            layer = S.layer_for_conv(x.shape, wt.shape, stride, pad, g, x_zp)
            patches = S.conv_patches_1x1(x) if k == 1 else None
            expect = ops.conv2d_acc(x[None], x_zp, wt, bias, stride, pad, g)[0]
            expect = expect.reshape(expect.shape[0], -1)
        dut.cfg.value = int(sp.config_layout.const(layer.config(sp)).as_bits())
        if case.get("im2col"):
            shape = Im2colShape(x.shape[0], x.shape[1], x.shape[2], stride, (pad,) * 4, x_zp)
            oh, ow = shape.out_hw(tb.ip.kernel)
            assert oh * ow == layer.pixels
            dut.i2c_cfg.value = int(tb.ip.config_layout.const(shape.config(tb.ip)).as_bits())
            dut.use_im2col.value = 1
            tb.a.load([])
            tb.p.load(int(v) & 0xFF for v in x.transpose(1, 2, 0).reshape(-1))
        else:
            if tb.ip:
                dut.use_im2col.value = 0
                tb.p.load([])
            tb.a.load(_pack(v, 8) for v in S.pack_activations(sp, layer, patches))
        tb.w.load(_pack(v, 8) for v in S.pack_weights(sp, layer, wt))
        tb.b.load(_pack(v, 32) for v in S.pack_bias(sp, layer, bias))
        n_out = S.output_beats(sp, layer)
        if tb.requant:
            qp = await _load_requant(dut, rng, expect, layer)
        bench = bool(case.get("bench"))   # cycle count: no valid gaps, no backpressure
        for src in (tb.a, tb.w, tb.b, tb.p):
            if src is not None:
                src.p_idle = 0.0 if bench else cfg["p_idle"]
        tb.o.p_stall = 0.0 if bench else cfg["p_stall"]
        await tb.run(n_out, limit=20 * (layer.compute_cycles(sp) + layer.pixels * layer.k
                                        * layer.groups) + 2000)
        got = S.unpack_outputs(sp, layer, np.array(tb.o.got, np.int64).astype(np.int32))
        dut._log.info(f"case {case}: {layer}, {n_out} output beats")
        if tb.requant:   # int8 outputs of the array + requantiser vs the golden QLinearConv
            y_zp, lo, hi = qp["y_zp"], qp["lo"], qp["hi"]
            if case["kind"] == "fc":
                expect = ops.fully_connected(x[None], x_zp, wt, bias, qp["scale"], y_zp, lo,
                                             hi)[0].reshape(-1, 1)
            else:
                expect = ops.conv2d(x[None], x_zp, wt, bias, qp["scale"], y_zp, stride, pad, g,
                                    lo, hi)[0]
                expect = expect.reshape(expect.shape[0], -1)
            dut._log.info(f"requant case: scale {qp['scale'][:3]}.., zp {y_zp}, clamp [{lo}, "
                          f"{hi}], output spread {np.unique(expect).size} values")
        np.testing.assert_array_equal(got, expect, err_msg=f"case {case}")
        chb = sp.ch_bits
        meta = np.array([(v & ((1 << chb) - 1), v >> chb) for v in tb.o.meta], np.int64)
        np.testing.assert_array_equal(meta, S.output_order(sp, layer),
                                      err_msg=f"(ch, pix) of the output beats, case {case}")
        if case["kind"] == "fc" and not tb.requant:   # the int8 FC output from these accumulators
            scale = arith.conv_scale(0.05, np.full(case["cout"], 0.01, np.float32), 0.1)
            y = ops.fully_connected(x[None], x_zp, wt, bias, scale, 3)[0, :, 0, 0]
            np.testing.assert_array_equal(arith.requantize(got[:, 0], scale, 3), y)
        if bench:
            src = tb.p if case.get("im2col") else tb.a
            cycles = tb.o.last_fire - src.first_fire + 1
            b = {"case": case, "cycles": cycles, "macs": layer.macs, "peak": sp.peak_macs,
                 "compute_cycles": layer.compute_cycles(sp),
                 "macs_per_cycle": layer.macs / cycles,
                 "utilisation": layer.macs / cycles / sp.peak_macs}
            dut._log.info(f"bench: {b}")
            result["bench"].append(b)
        result["checked"] += 1
    if cfg.get("result_path"):
        with open(cfg["result_path"], "w") as f:
            json.dump(result, f)
