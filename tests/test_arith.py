"""The integer datapaths of hwgen.golden.arith equal their float32 references bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from hwgen.golden import arith


def random_scales(rng, n):
    """float32 scales spread over the whole valid range [2**-32, 2**8), endpoints included."""
    s = np.exp2(rng.uniform(-32, 8, n)).astype(np.float32)
    s = s[(s >= arith.SCALE_MIN) & (s < arith.SCALE_MAX)]
    edge = np.array([2.0**-32, np.nextafter(np.float32(256), np.float32(0)), 1.0, 0.5, 2.0**-20,
                     np.nextafter(np.float32(1), np.float32(2)), 0.75, 1 / 3], np.float32)
    return np.concatenate([edge, s])


def check_requant(acc, scales, zp=0, lo=-128, hi=127):
    m, e = arith.decompose_scale(scales)
    ref = arith.requantize(acc, scales, zp, lo, hi)
    got = arith.requantize_int(acc, m, e, zp, lo, hi)
    np.testing.assert_array_equal(got, ref)


def test_decompose_scale_is_exact():
    rng = np.random.default_rng(0)
    s = random_scales(rng, 100_000)
    m, e = arith.decompose_scale(s)
    assert m.min() >= 1 << 23 and m.max() < 1 << 24
    assert e.min() >= 16 and e.max() <= 55
    np.testing.assert_array_equal(np.ldexp(m.astype(np.float64), -e), s.astype(np.float64))


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan, 2.0**-33, 256.0, 1e30])
def test_decompose_scale_rejects(bad):
    with pytest.raises(ValueError, match="outside the supported range"):
        arith.decompose_scale(np.float32(bad))


def test_requantize_int_random_millions():
    """2M random accumulators over the full int32 range and the full scale range."""
    rng = np.random.default_rng(1)
    for _ in range(4):
        n = 500_000
        scales = random_scales(rng, n)[:n]
        mag = np.exp2(rng.uniform(0, 31, scales.size)).astype(np.int64)
        acc = (mag * rng.choice([-1, 1], scales.size)).clip(-2**31, 2**31 - 1).astype(np.int32)
        zp = int(rng.integers(-128, 128))
        check_requant(acc, scales, zp)


def test_requantize_int_in_range_outputs():
    """Scales and accumulators chosen so that outputs land inside int8 (no saturation)."""
    rng = np.random.default_rng(2)
    n = 1_000_000
    scales = np.exp2(rng.uniform(-32, 7.9, n)).astype(np.float32)
    target = rng.uniform(-140, 140, n)
    acc = np.clip(np.rint(target / scales.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
    check_requant(acc, scales, 0)
    check_requant(acc, scales, -128, lo=-128, hi=127)


def test_requantize_int_large_accumulators():
    """|acc| >= 2**24: the int32 -> float32 conversion rounds (ties included)."""
    rng = np.random.default_rng(3)
    base = rng.integers(2**24, 2**31 - 256, 500_000)
    # force exact conversion ties: low bits = 1000..0 below the 24-bit mantissa
    k = np.floor(np.log2(base)).astype(np.int64) - 23
    tie = (base >> k << k) | (np.int64(1) << (k - 1))
    acc = np.concatenate([base, tie, -base, -tie, [2**31 - 1, -2**31, 2**24 + 1, 2**24 + 3]])
    acc = acc.clip(-2**31, 2**31 - 1).astype(np.int32)
    scales = np.exp2(rng.uniform(-32, -23, acc.size)).astype(np.float32)
    check_requant(acc, scales, int(rng.integers(-128, 128)))


def test_requantize_int_ties():
    """acc * scale exactly half-way between integers: round half to even, both signs."""
    k = np.arange(1, 31)
    scales = np.exp2(-k.astype(np.float64)).astype(np.float32)
    odd = np.arange(-255, 256, 2)
    acc = (odd[None, :] * (np.int64(1) << (k[:, None] - 1)))
    ok = np.abs(acc) < 2**31
    acc_f = acc[ok].astype(np.int32)
    sc = np.broadcast_to(scales[:, None], acc.shape)[ok]
    assert np.any(np.modf(acc_f.astype(np.float64) * sc)[0] == 0.5)
    check_requant(acc_f, sc, 3)
    # product ties: the 48-bit mantissa product lands exactly half-way at 24 bits
    m = np.float32(1 + 2.0**-23)          # mantissa 0x800001
    acc2 = np.arange(-2**20, 2**20, 7, dtype=np.int32)
    check_requant(acc2, np.full(acc2.shape, m * np.float32(2.0**-14), np.float32), 0)


def test_requantize_int_saturation_and_clamps():
    rng = np.random.default_rng(4)
    acc = rng.integers(-2**31, 2**31, 200_000).astype(np.int32)
    scales = np.exp2(rng.uniform(0, 7.99, acc.size)).astype(np.float32)
    check_requant(acc, scales, 5)
    check_requant(acc, scales, -128, lo=-128, hi=-128 + 60)   # ReLU6-style clamp
    check_requant(np.array([0, 1, -1], np.int32), np.float32(1.0), 127)


def test_requantize_int_per_channel_broadcast():
    rng = np.random.default_rng(5)
    acc = rng.integers(-2**20, 2**20, (2, 16, 5, 5)).astype(np.int32)
    s = np.exp2(rng.uniform(-20, -10, 16)).astype(np.float32)[None, :, None, None]
    check_requant(acc, s, -7)


def test_fma_f32_against_exact_rationals():
    """fma_f32 is the correctly rounded a*b+c: check against Python fractions."""
    from fractions import Fraction
    rng = np.random.default_rng(6)
    a = rng.integers(-255, 256, 3000).astype(np.float32)
    b = np.exp2(rng.uniform(-14, 8, 3000)).astype(np.float32)
    c = (rng.uniform(-300, 300, 3000) * np.exp2(rng.integers(-30, 1, 3000))).astype(np.float32)
    # add cases that produce exact float32 ties after a float64 rounding
    c[:50] = np.float32(2.0**-60) * np.sign(rng.uniform(-1, 1, 50)).astype(np.float32)
    a[:50] = 3
    b[:50] = np.float32(1 + 2.0**-23)
    got = arith.fma_f32(a, b, c)
    for ai, bi, ci, gi in zip(a, b, c, got):
        exact = Fraction(float(ai)) * Fraction(float(bi)) + Fraction(float(ci))
        lo = np.float32(float(exact))
        cand = [lo, np.nextafter(lo, np.float32(np.inf)), np.nextafter(lo, np.float32(-np.inf))]
        best = min(cand, key=lambda v: (abs(Fraction(float(v)) - exact),
                                        int(np.float32(v).view(np.uint32)) & 1))
        assert gi == best, (ai, bi, ci, gi, best)


def test_add_int_equals_add_f32():
    """Integer (fixed-point) QLinearAdd datapath == the float32 kernel, on all input pairs."""
    rng = np.random.default_rng(7)
    a = np.repeat(np.arange(-128, 128), 256)
    b = np.tile(np.arange(-128, 128), 256)
    for trial in range(40):
        off = 128 * (trial % 2)
        sa, sb, sy = np.exp2(rng.uniform(-10, -1, 3)).astype(np.float32)
        za, zb, zy = (int(v) for v in rng.integers(-128, 128, 3))
        ra, rb = np.float32(sa / sy), np.float32(sb / sy)
        if not (2.0**-14 <= ra < 256 and 2.0**-14 <= rb < 256):
            continue
        fixed = arith.add_fixed_part(ra, rb, za + off, zb + off, zy + off)
        ref = arith.add_f32(a + off, b + off, ra, rb, fixed, off - 128, off + 127)
        got = arith.add_int(a + off, b + off, ra, rb, fixed, off - 128, off + 127)
        np.testing.assert_array_equal(got, ref)


def test_round_helpers():
    v = np.array([0, 1, 2, 3, 5, 6, 7, 0xFFFFFF, 0x1FFFFFF, 0x1000001, 0x1000003, 0x2000006], np.int64)
    np.testing.assert_array_equal(arith.round_sig(v, 24),
                                  [0, 1, 2, 3, 5, 6, 7, 0xFFFFFF, 0x2000000, 0x1000000, 0x1000004, 0x2000008])
    np.testing.assert_array_equal(arith.round_int(np.array([5, 6, 7, 10, 14], np.int64), 2), [1, 2, 2, 2, 4])


@pytest.mark.parametrize("regime", ["random", "equal_scales_ties", "tiny_out_scale"])
def test_avgpool_int_equals_float_kernel(regime):
    """Integer average-pool datapath == onnxruntime's float32 kernel (ops.avgpool)."""
    from hwgen.golden import ops
    rng = np.random.default_rng({"random": 8, "equal_scales_ties": 9, "tiny_out_scale": 10}[regime])
    geoms = [(3, 2, (1, 1, 1, 1), False, False, 9, 8), (3, 2, (1, 1, 1, 1), False, True, 9, 8),
             (2, 2, (0, 0, 0, 0), False, False, 6, 6), (3, 2, (0, 0, 1, 1), True, True, 7, 9),
             (3, 1, (1, 1, 1, 1), False, False, 5, 5)]
    for trial in range(60):
        k, s, pads, ceil, cip, h, w = geoms[trial % len(geoms)]
        x = rng.integers(-128, 128, (1, 4, h, w), dtype=np.int8)
        xs = np.float32(np.exp2(rng.uniform(-12, 2)))
        ys = {"random": np.float32(np.exp2(rng.uniform(-12, 2))),
              "equal_scales_ties": xs,
              "tiny_out_scale": np.float32(xs * np.float32(np.exp2(rng.uniform(-3, 0))))}[regime]
        xz, yz = (int(v) for v in rng.integers(-128, 128, 2))
        off = 128 * (trial % 2)
        ref = ops.avgpool(x, xs, xz, ys, yz, k, s, pads, ceil, cip, offset=off)
        got = ops.avgpool_int(x, xs, xz, ys, yz, k, s, pads, ceil, cip, offset=off)
        np.testing.assert_array_equal(got, ref)
