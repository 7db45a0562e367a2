"""cocotb testbench of hwgen.hw.add.Adder against hwgen.golden.ops.add (QLinearAdd).

Each batch draws quantisation parameters from one of several profiles (random scale ratios,
dyadic ratios that make exact ties, ratios of 1 + j * 2**-23 whose low mantissa bits are
lost in the float32 rounding of the first or the second FMA (double rounding), extreme but
supported ratios), a
random zero point per tensor, int8 or uint8 storage (offset 0 / 128) and a random clamp,
then streams random int8 pairs (full range and saturating values) with independent random
idle cycles on both inputs and random backpressure on the output.
"""
import cocotb
import numpy as np

from harness import tb_config
from hwgen.golden import ops
from hwgen.hw.add import add_config
from tb_streams import StreamTB, pack_lanes


def f32(x):
    return float(np.float32(x))


class TB(StreamTB):
    def __init__(self, dut, cfg):
        super().__init__(dut, cfg, inputs=("a_stream", "b_stream"), name="adder")

    def pack(self, vals):
        return pack_lanes(vals, 8)

    async def stream(self, a, b):
        """Send beats a[i], b[i] on the two inputs independently; return received beats."""
        return await super().stream([self.pack(v) for v in a], [self.pack(v) for v in b],
                                    lockstep=True)

    def draw_qparams(self, profile):
        r = self.rng
        zp = [r.randint(-128, 127) for _ in range(3)]
        if profile == 0:      # random ratios around 1
            sy = f32(2.0 ** r.uniform(-10, 0))
            sa, sb = (f32(sy * 2.0 ** r.uniform(-4, 2)) for _ in range(2))
        elif profile == 1:    # dyadic ratios: exact products, ties at .5
            sy = 2.0 ** -r.randint(3, 9)
            sa, sb = (sy * r.choice([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]) for _ in range(2))
        elif profile == 2:    # 1 + j*2**-23: the float32 sum drops low bits (double rounding)
            sy = 2.0 ** -r.randint(3, 9)
            sa = sy * (1 + r.randint(1, 8) * 2.0 ** -23)
            sb = sy * r.choice([0.5, 1.5, 0.25])
            if r.random() < 0.5:
                zp[0] = 0
        elif profile == 3:    # the same for the first FMA: rB = 0.5 * (1 + j*2**-23), rA = 1
            sy = 2.0 ** -r.randint(3, 9)
            sa = sy
            sb = sy * 0.5 * (1 + r.randint(1, 8) * 2.0 ** -23)
            zp[0] = zp[1] = 0
        else:                 # far apart, still inside the 64-bit datapath
            sy = f32(2.0 ** r.uniform(-8, -2))
            sa = f32(sy * 2.0 ** r.uniform(-12, -6))
            sb = f32(sy * 2.0 ** r.uniform(3, 6))
        return sa, zp[0], sb, zp[1], sy, zp[2]

    def draw_clamp(self, zy):
        r = self.rng
        kind = r.randint(0, 2)
        if kind == 0:
            return -128, 127
        if kind == 1:
            return zy, 127
        return zy, min(127, zy + r.randint(0, 200))


@cocotb.test()
async def add_random(dut):
    cfg = tb_config()
    tb = TB(dut, cfg)
    await tb.reset()
    r, total = tb.rng, 0
    for batch in range(cfg["batches"]):
        profiles = cfg.get("profiles", [0, 1, 2, 3, 4])
        profile = profiles[batch % len(profiles)]
        sa, za, sb, zb, sy, zy = tb.draw_qparams(profile)
        lo, hi = tb.draw_clamp(zy)
        offset = r.choice([0, 128])
        c = add_config(sa, za, sb, zb, sy, zy, lo, hi, offset)
        dut.config.value = c.pack()
        n = cfg["beats"]
        a = np.array([[r.randint(-128, 127) for _ in range(tb.lanes)] for _ in range(n)], np.int8)
        b = np.array([[r.randint(-128, 127) for _ in range(tb.lanes)] for _ in range(n)], np.int8)
        got = np.array(await tb.stream(a.tolist(), b.tolist()), np.int64)
        exp = ops.add(a.reshape(1, n, tb.lanes, 1), sa, za, b.reshape(1, n, tb.lanes, 1), sb, zb,
                      sy, zy, lo, hi, offset=offset).reshape(n, tb.lanes).astype(np.int64)
        bad = np.argwhere(got != exp)
        if len(bad):
            lines = [f"beat {i} lane {l}: a={a[i, l]} b={b[i, l]}: got {got[i, l]} "
                     f"expected {exp[i, l]}" for i, l in bad[:8]]
            raise AssertionError(
                f"batch {batch} (profile {profile}, scales {sa!r} {sb!r} {sy!r}, zps {za} {zb} "
                f"{zy}, offset {offset}, clamp [{lo}, {hi}]): {len(bad)} mismatches\n"
                + "\n".join(lines))
        total += got.size
    dut._log.info(f"{total} sums match the golden QLinearAdd")
