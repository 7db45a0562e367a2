"""cocotb testbench of hwgen.hw.requant.Requantizer against hwgen.golden.arith.requantize.

Each batch draws new per-channel scales (log-uniform over the whole valid range, typical
conv scales, dyadic scales that make exact ties, the range ends), a new zero point and clamp
(none / ReLU / ReLU6 / random), writes the parameter memory, then streams random beats
(uniform int32, values landing in the int8 range, exact product ties, float32 conversion
ties at |acc| >= 2**24, +-2**31-1, -2**31, 0) with random idle cycles on ``valid`` and random
backpressure on ``ready``.  Every output is compared with the golden model, element-wise.
"""
import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from harness import tb_config
from hwgen.golden import arith
from hwgen.hw.requant import encode_scales
from tb_streams import StreamTB, pack_lanes

EDGE_ACCS = [0, 1, -1, 2**31 - 1, -2**31, -2**31 + 1, 2**24, -2**24, 2**24 + 1, -(2**24 + 1),
             2**24 + 3, -(2**24 + 3), 2**25 + 2, 2**25 + 6, 2**31 - 64, 2**31 - 65, 2**31 - 192]


class TB(StreamTB):
    """Clock, reset, the two handshakes (idle on valid, backpressure on ready): see
    tb_streams.StreamTB; here the parameter memory load and the (acc, channel) packing."""

    def __init__(self, dut, cfg):
        super().__init__(dut, cfg, name="requantizer")
        self.channels = cfg["channels"]
        self.ch_bits = max(1, (self.channels - 1).bit_length())
        self.nrng = np.random.default_rng(cfg.get("seed", 0))

    async def reset(self):
        await super().reset("param__en")

    async def load(self, scales, zp, lo, hi):
        d = self.dut
        d.zero_point.value = zp
        d.lo.value = lo
        d.hi.value = hi
        for addr, word in enumerate(encode_scales(scales)):
            d.param__en.value = 1
            d.param__addr.value = addr
            d.param__data.value = int(word)
            await RisingEdge(d.clk)
        d.param__en.value = 0

    def pack(self, accs, chs):
        return pack_lanes(accs, 32) | pack_lanes(chs, self.ch_bits) << (32 * self.lanes)

    async def stream(self, beats):
        """Send ``beats`` (list of (accs, chs)) and return the received int8 beats."""
        return await super().stream([self.pack(*beat) for beat in beats])

    def draw_scales(self):
        r, n = self.nrng, self.channels
        kind = r.integers(0, 5, n)
        s = np.empty(n, np.float32)
        for c in range(n):
            if kind[c] == 0:      # anywhere in the valid range
                s[c] = np.float32(2.0 ** r.uniform(-32, 8))
            elif kind[c] in (1, 2):  # typical conv requantisation scales
                s[c] = np.float32(2.0 ** r.uniform(-16, -2))
            elif kind[c] == 3:    # dyadic j * 2**-k: exact ties are easy to hit
                s[c] = np.float32(int(r.integers(0, 128)) * 2 + 1) * np.float32(2.0) ** -int(r.integers(8, 22))
            else:
                s[c] = [np.float32(2.0 ** -32), np.nextafter(np.float32(256), np.float32(0)),
                        np.float32(2.0 ** -24), np.float32(1.0), np.float32(0.5)][int(r.integers(0, 5))]
        return s

    def draw_acc(self, scale):
        r = self.rng
        k = r.random()
        if k < 0.15:
            return r.randint(-2**31, 2**31 - 1)
        if k < 0.45:  # lands near the int8 output range
            v = int(round(r.uniform(-200, 200) / float(scale)))
            return max(-2**31, min(2**31 - 1, v))
        if k < 0.65:  # exact tie of the product when the scale is dyadic j * 2**-e
            m, e = arith.decompose_scale(scale)
            tz = (int(m) & -int(m)).bit_length() - 1
            ex = int(e) - tz          # scale == j * 2**-ex with j odd
            jj = int(m) >> tz
            limit = max(1, int(300 / jj))
            o = 2 * r.randint(-limit, limit) + 1
            v = o << (ex - 1) if ex >= 1 else o
            if -2**31 <= v < 2**31:
                return v
            return r.randint(-2**20, 2**20)
        if k < 0.8:   # float32(acc) conversion ties and near-ties, |acc| >= 2**24
            msb = r.randint(24, 30)
            drop = msb - 23
            head = r.randint(1 << 23, (1 << 24) - 1)
            low = (1 << (drop - 1)) + r.choice([0, 0, 1, -1])
            v = (head << drop) + low
            return v if r.random() < 0.5 else -v
        if k < 0.9:
            return r.choice(EDGE_ACCS)
        return r.randint(-3000, 3000)

    def draw_clamp(self):
        r = self.rng
        zp = r.randint(-128, 127)
        kind = r.randint(0, 3)
        if kind == 0:
            return zp, -128, 127
        if kind == 1:
            return zp, zp, 127                       # ReLU
        if kind == 2:
            return zp, zp, min(127, zp + r.randint(0, 255))  # ReLU6-like
        lo = r.randint(-128, 127)
        return zp, lo, r.randint(lo, 127)


@cocotb.test()
async def requant_random(dut):
    cfg = tb_config()
    tb = TB(dut, cfg)
    await tb.reset()
    total = 0
    for batch in range(cfg["batches"]):
        scales = tb.draw_scales()
        zp, lo, hi = tb.draw_clamp()
        await tb.load(scales, zp, lo, hi)
        beats, accs, chs = [], [], []
        for _ in range(cfg["beats"]):
            ch = [tb.rng.randrange(tb.channels) for _ in range(tb.lanes)]
            acc = [tb.draw_acc(scales[c]) for c in ch]
            beats.append((acc, ch))
            accs.append(acc)
            chs.append(ch)
        got = np.array(await tb.stream(beats), np.int64)
        accs = np.array(accs, np.int64).astype(np.int32)
        exp = arith.requantize(accs, scales[np.array(chs)], zp, lo, hi).astype(np.int64)
        bad = np.argwhere(got != exp)
        if len(bad):
            lines = [f"beat {b} lane {l}: acc={accs[b, l]} scale={scales[chs[b][l]]!r} zp={zp} "
                     f"lo={lo} hi={hi}: got {got[b, l]} expected {exp[b, l]}" for b, l in bad[:8]]
            raise AssertionError(f"batch {batch}: {len(bad)} mismatches\n" + "\n".join(lines))
        total += got.size
    dut._log.info(f"{total} requantised values match the golden model")
