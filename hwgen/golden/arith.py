"""The integer arithmetic contract shared by the golden model and the hardware.

See docs/arithmetic.md for the bit-level description the hardware implements.

Requantisation (Conv2d, FullyConnected) reproduces ONNX Runtime's QLinearConv exactly:

    scale[c] = float32(float32(x_scale * w_scale[c]) / y_scale)      (float32 ops, in that order)
    acc      = sum((x - x_zp) * w) + bias                               (int32)
    y        = clamp(round_half_to_even(float32(float32(acc) * scale[c])) + y_zp, lo, hi)

Here it is evaluated with NumPy float32 (IEEE round-to-nearest-even on every op), which is
what ONNX Runtime's MLAS kernels do. :func:`requantize_int` is the pure-integer formulation
the hardware implements (normalise, 24x24-bit mantissa product, round half to even); tests
prove the two equal.

The other ops whose onnxruntime kernels compute in float32 (QLinearAdd, QLinearAveragePool,
QLinearConcat) have their float32 reference here too (``fma_f32``, ``rescale_lut``), and an
integer formulation built from the exact-dyadic helpers :func:`round_sig` and
:func:`round_int` (see :func:`add_int` and :func:`avg_window_int`).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "conv_scale", "requantize", "requantize_int", "decompose_scale", "SCALE_MIN", "SCALE_MAX",
    "fma_f32", "rescale_lut", "add_fixed_part", "add_f32", "add_int", "avg_window_int",
    "gavg_scale", "round_sig", "round_int", "f32_parts",
]

#: Valid requantisation scale range of the integer datapath: [2**-32, 2**8).
#: Inside it the mantissa exponent ``e`` of :func:`decompose_scale` lies in [16, 55].
SCALE_MIN = 2.0 ** -32
SCALE_MAX = 2.0 ** 8


def conv_scale(x_scale: float, w_scale: np.ndarray, y_scale: float) -> np.ndarray:
    """Per-channel float32 requantisation scale, computed as onnxruntime does."""
    xs = np.float32(x_scale)
    ws = np.asarray(w_scale, np.float32)
    return ((xs * ws).astype(np.float32) / np.float32(y_scale)).astype(np.float32)


def requantize(acc: np.ndarray, scale: np.ndarray, zero_point: int, lo: int = -128,
               hi: int = 127) -> np.ndarray:
    """int32 accumulators -> int8, float32 path (the reference).

    ``scale`` broadcasts against ``acc`` (per-channel scales: shape (C, 1, 1) for (N, C, H, W)).
    """
    f = np.asarray(acc, np.int32).astype(np.float32) * np.asarray(scale, np.float32)
    f = np.clip(f, np.float32(-2.0**24), np.float32(2.0**24))  # saturate before int conversion
    q = np.rint(f).astype(np.int64) + int(zero_point)
    return np.clip(q, lo, hi).astype(np.int8)


# --- pure-integer requantisation --------------------------------------------------------

def decompose_scale(scale) -> tuple[np.ndarray, np.ndarray]:
    """float32 scale -> (mantissa, exponent) with ``scale == mantissa * 2**-exponent`` exactly.

    ``mantissa`` is the 24-bit significand (2**23 <= m < 2**24, hidden bit included) and
    ``exponent`` lies in [16, 55] for every scale in the valid range [2**-32, 2**8).

    Raises
    ------
    ValueError
        If a scale is not finite, not positive, or outside [2**-32, 2**8): the integer
        requantiser's shifter covers exactly that range (onnxruntime's QLinearGlobalAveragePool
        rejects the same range).
    """
    s = np.asarray(scale, np.float32)
    bad = ~np.isfinite(s) | (s < np.float32(SCALE_MIN)) | (s >= np.float32(SCALE_MAX))
    if np.any(bad):
        v = s[bad] if s.ndim else s
        raise ValueError(f"requantisation scale {np.ravel(v)[0]!r} outside the supported range "
                         f"[2**-32, 2**8); rescale the tensors (quantisation parameters) so that "
                         f"x_scale * w_scale / y_scale falls inside it")
    bits = s.view(np.uint32).astype(np.int64)
    m = (bits & 0x7FFFFF) | 0x800000
    e = 150 - (bits >> 23)              # 127 + 23 - biased exponent
    return m, e


def _bitlen(v: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values < 2**53 (0 -> 0)."""
    _, ex = np.frexp(v.astype(np.float64))
    return np.where(v == 0, 0, ex).astype(np.int64)


def round_sig(mag: np.ndarray, bits: int = 24) -> np.ndarray:
    """Round non-negative integers (< 2**53) to ``bits`` significant bits, half to even.

    Returns the rounded value as an integer of the same scale (low bits zero); a carry out
    of the top (e.g. 0xFFFFFF8 -> 0x10000000) is kept, as IEEE rounding does.
    """
    mag = np.asarray(mag, np.int64)
    k = np.maximum(_bitlen(mag) - bits, 0)
    return round_int(mag, k) << k


def round_int(mag: np.ndarray, shift) -> np.ndarray:
    """``round_half_to_even(mag / 2**shift)`` for non-negative int64 ``mag`` and shift >= 0."""
    mag = np.asarray(mag, np.int64)
    shift = np.minimum(np.asarray(shift, np.int64), 62)
    q = mag >> shift
    rem = mag - (q << shift)
    half = np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 0)
    up = (shift > 0) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    return q + up


def requantize_int(acc: np.ndarray, m: np.ndarray, e: np.ndarray, zero_point: int,
                   lo: int = -128, hi: int = 127) -> np.ndarray:
    """int32 accumulators -> int8 with integer operations only (the hardware datapath).

    Bit-exact with :func:`requantize` for every int32 ``acc`` and every scale in
    [2**-32, 2**8) given as ``(m, e) = decompose_scale(scale)``:

    1. ``int32 -> float32``: ``A = |acc|``; if A >= 2**24 round A to 24 significant bits,
       half to even (the conversion ``float32(acc)``; the value stays an integer).
    2. Product: ``P = A' * m`` (at most 32 x 24 bits -> 56 bits, but A' has at most 24
       significant bits so the product has at most 48 significant bits), rounded to 24
       significant bits half to even (the float32 multiply).
    3. ``q = round_half_to_even(P' / 2**e)``, sign restored, ``+ zero_point``, clamp [lo, hi].

    ``m`` and ``e`` broadcast against ``acc`` like the float scale does.
    """
    acc = np.asarray(acc, np.int64)
    m = np.asarray(m, np.int64)
    e = np.asarray(e, np.int64)
    neg = acc < 0
    a = np.abs(acc)
    # 1. normalise: keep 24 significant bits (sh bits dropped, at most 8 for int32)
    sh = np.maximum(_bitlen(a) - 24, 0)
    a24 = round_int(a, sh)                     # < 2**24 (or == 2**24 after a carry)
    # 2. 24x24-bit mantissa product, rounded to 24 significant bits
    p = round_sig(a24 * m, 24)                 # exact value: p * 2**(sh - e)
    # 3. round to an integer (shift right by e - sh >= 8 in the valid range), saturate
    q = round_int(p, e - sh)
    q = np.minimum(q, 1 << 16)                 # saturation: int8 result clamps anyway
    y = np.where(neg, -q, q) + int(zero_point)
    return np.clip(y, lo, hi).astype(np.int8)


# --- float32 helpers for the other onnxruntime kernels --------------------------------

def fma_f32(a, b, c) -> np.ndarray:
    """Correctly rounded float32 ``a * b + c`` (one rounding), as x86 FMA3 vfmadd computes.

    ``a * b`` is formed exactly in float64 (24 x 24 bits), the sum with TwoSum, and the
    rounding to float32 is corrected where float64 rounding produced an exact float32 tie.
    """
    a = np.asarray(a, np.float32).astype(np.float64)
    b = np.asarray(b, np.float32).astype(np.float64)
    c = np.asarray(c, np.float32).astype(np.float64)
    p = a * b                                   # exact
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)             # TwoSum: p + c == s + err exactly
    r = s.astype(np.float32)
    diff = s - r.astype(np.float64)
    with np.errstate(over="ignore"):
        other = np.nextafter(r, np.where(diff > 0, np.float32(np.inf), np.float32(-np.inf)))
    half = np.abs(other.astype(np.float64) - r.astype(np.float64)) / 2
    tie = (diff != 0) & (np.abs(diff) == half) & (err != 0)
    # at a tie the exact value lies beyond it in the direction of err
    toward_other = tie & (np.sign(err) == np.sign(diff))
    return np.where(toward_other, other, r).astype(np.float32)


def rescale_lut(x_scale: float, x_zp: int, y_scale: float, y_zp: int) -> np.ndarray:
    """256-entry int8 table of QLinearConcat's (and QLinearLookup's) rescale:

    ``y = clamp(rne(float32(x_scale * float32(x - x_zp)) / y_scale) + y_zp, -128, 127)``,
    indexed by ``x + 128`` for int8 ``x``. The table depends only on ``x - x_zp``, so it is
    the same for the uint8 form of a tensor.
    """
    x = np.arange(-128, 128, dtype=np.int32)
    d = (np.float32(x_scale) * (x - int(x_zp)).astype(np.float32)).astype(np.float32)
    q = (d / np.float32(y_scale)).astype(np.float32)
    q = np.clip(q, np.float32(-128 - int(y_zp)), np.float32(127 - int(y_zp)))
    return (np.rint(q).astype(np.int32) + int(y_zp)).astype(np.int8)


def add_fixed_part(ra: np.float32, rb: np.float32, zpa: int, zpb: int, zpc: int) -> np.float32:
    """QLinearAdd's constant ``float(zpC) - (rA * zpA + rB * zpB)`` as onnxruntime's AVX2
    kernel (compiled with FMA contraction) computes it: ``rB * zpB`` rounded to float32, then
    ``fma(rA, zpA, .)``, then subtracted from ``zpC`` (found empirically: the other two
    orders each disagree with onnxruntime on some draws)."""
    t = (np.float32(rb) * np.float32(zpb)).astype(np.float32)
    u = fma_f32(np.float32(ra), np.float32(zpa), t)
    return np.float32(np.float32(zpc) - u)


def add_f32(a_raw, b_raw, ra, rb, fixed, lo_raw: int, hi_raw: int) -> np.ndarray:
    """QLinearAdd core on raw stored integers (int8, or uint8 as stored): float32
    ``rne(fma(a, rA, fma(b, rB, fixed)))`` saturated to [lo_raw, hi_raw]."""
    t = fma_f32(np.asarray(b_raw, np.float32), rb, fixed)
    t = fma_f32(np.asarray(a_raw, np.float32), ra, t)
    t = np.clip(t, np.float32(-2.0**30), np.float32(2.0**30))
    return np.clip(np.rint(t).astype(np.int64), lo_raw, hi_raw)


def f32_parts(x) -> tuple[np.ndarray, np.ndarray]:
    """float32 -> (signed integer significand, exponent) with x == sig * 2**exp exactly
    (normal and subnormal numbers; 0 -> (0, -149))."""
    x = np.asarray(x, np.float32)
    bits = x.view(np.uint32).astype(np.int64)
    ex = (bits >> 23) & 0xFF
    frac = bits & 0x7FFFFF
    sig = np.where(ex > 0, frac | 0x800000, frac)
    exp = np.where(ex > 0, ex - 150, -149)
    sig = np.where((bits >> 31) & 1, -sig, sig)
    return sig, exp


def add_int(a_raw, b_raw, ra, rb, fixed, lo_raw: int, hi_raw: int) -> np.ndarray:
    """Integer formulation of :func:`add_f32` (what a hardware residual-add lane computes).

    All constants are dyadic: ``rA = MA*2**EA``, ``rB = MB*2**EB``, ``fixed = MF*2**EF``.
    With ``L = min(EA, EB, EF)`` every intermediate is an integer multiple of ``2**L``:

    1. ``S1 = b*MB*2**(EB-L) + MF*2**(EF-L)``  (exact fixed-point sum)
    2. ``S1' = round_sig(S1, 24)``               (the first FMA's float32 rounding)
    3. ``S2 = a*MA*2**(EA-L) + S1'``
    4. ``S2' = round_sig(S2, 24)``               (the second FMA's rounding)
    5. ``y = clamp(round_int(S2' / 2**-L))``      (cvtps2dq: half to even), saturate.

    The fixed-point width is ``max(EA, EB, EF) - L + 33`` bits; it must stay below 62
    (true for scale ratios in [2**-14, 2**8) and zero points of int8/uint8).
    """
    ma, ea = f32_parts(np.float32(ra))
    mb, eb = f32_parts(np.float32(rb))
    mf, ef = f32_parts(np.float32(fixed))
    ea, eb, ef = int(ea), int(eb), int(ef)
    if mf == 0:
        ef = min(ea, eb)
    low = min(ea, eb, ef)
    if max(ea, eb, ef) - low + 33 > 62:
        raise ValueError("QLinearAdd scale ratios too far apart for the 62-bit integer datapath")
    a = np.asarray(a_raw, np.int64)
    b = np.asarray(b_raw, np.int64)

    def rsig(v):
        return np.where(v < 0, -round_sig(-v), round_sig(np.abs(v)))

    s1 = rsig(b * int(mb) * (1 << (eb - low)) + int(mf) * (1 << (ef - low)))
    s2 = rsig(a * int(ma) * (1 << (ea - low)) + s1)
    sh = -low
    if sh >= 0:
        q = np.where(s2 < 0, -round_int(-s2, sh), round_int(np.abs(s2), sh))
    else:
        q = s2 << -sh
    return np.clip(q, lo_raw, hi_raw)


# --- average pooling ------------------------------------------------------------------

def gavg_scale(x_scale: float, y_scale: float, count: int) -> np.float32:
    """QLinearGlobalAveragePool's float32 scale ``x_scale / (y_scale * float(count))``.

    Raises ValueError outside onnxruntime's computation range ([2**-32, 256), count < 2**24).
    """
    s = np.float32(np.float32(x_scale) / np.float32(np.float32(y_scale) * np.float32(count)))
    if count >= 1 << 24 or not (SCALE_MIN <= s < SCALE_MAX):
        raise ValueError(f"global average pool scale {float(s)!r} (x_scale / (y_scale * {count})) "
                         f"outside [2**-32, 2**8); change the output quantisation")
    return s


def _norm24(mag, exp):
    """Normalise non-zero magnitudes (< 2**25) to [2**23, 2**24) adjusting the exponent."""
    bl = _bitlen(mag)
    sh = 24 - bl
    mag = np.where(sh >= 0, mag << np.maximum(sh, 0), mag >> np.maximum(-sh, 0))
    return mag, exp - sh


def _div_round(num, den, exp):
    """float32 ``num * 2**exp / den`` correctly rounded, for 24-bit normalised ``num``
    (2**23 <= num < 2**24) and 1 <= den < 2**24: returns (24-bit magnitude, exponent)."""
    g = 32
    q = (num << g) // den                 # >= 2**31 / 2**24 * 2**23 ... at least 25 bits
    sticky = ((num << g) - q * den) != 0
    t = (q << 1) | sticky.astype(np.int64)  # one more bit: exact sticky below the rounding
    r = round_sig(t, 24)
    return _strip(r, exp - g - 1)


def _strip(mag, exp):
    """(mag, exp) with mag < 2**25 by dropping trailing zero bits (value unchanged)."""
    bl = _bitlen(mag)
    sh = np.maximum(bl - 24, 0)
    return mag >> sh, exp + sh


def avg_window_int(diffs, valid, count, x_scale: float, y_scale: float, y_zp_stored: int):
    """Integer formulation of one QLinearAveragePool window (see ops.avgpool).

    ``diffs``: int array (T, ...) of ``x - x_zp`` for the T window taps in onnxruntime's
    order (rows, then columns); ``valid``: bool (T, ...), False for padding cells;
    ``count``: divisor per output (int array broadcasting against ``diffs[0]``).
    Returns the stored-domain integer before saturation.

    Steps, all on integers (``x_scale = Ms * 2**Es``, ``y_scale = My * 2**Ey``):

    1. ``D = round_sig(Ms * d, 24)`` per tap (the float32 dequantisation), units ``2**Es``;
    2. ``S = round_sig(S + D, 24)`` tap after tap (the float32 running sum);
    3. ``m = S / count`` and ``v = m / My`` as correctly rounded divisions (quotient to 25
       bits plus a sticky bit, then round half to even to 24 bits);
    4. ``w = round_sig(v + y_zp, 24)`` (the float32 add of the zero point), then
       ``round_int`` (half to even) to an integer.
    """
    ms, es = f32_parts(np.float32(x_scale))
    my, ey = f32_parts(np.float32(y_scale))
    ms, es, my, ey = int(ms), int(es), int(my), int(ey)
    diffs = np.asarray(diffs, np.int64)
    s = np.zeros(diffs.shape[1:], np.int64)            # signed, units 2**es
    for d, ok in zip(diffs, valid):
        dd = np.where(d < 0, -round_sig(-d * ms), round_sig(np.abs(d) * ms))
        t = s + np.where(ok, dd, 0)
        s = np.where(t < 0, -round_sig(-t), round_sig(np.abs(t)))
    neg = s < 0
    mag = np.abs(s)
    nz = mag > 0
    mag1 = np.where(nz, mag, 1 << 23)
    sm, se = _strip(mag1, np.full(mag.shape, es, np.int64))
    sm, se = _norm24(sm, se)
    cnt = np.broadcast_to(np.asarray(count, np.int64), mag.shape)
    mm, me = _div_round(sm, cnt, se)                    # mean
    mm, me = _norm24(mm, me)
    vm, ve = _div_round(mm, np.int64(my), me - ey)      # / y_scale
    # w = v + zp (float32 add), then round to integer
    zp = int(y_zp_stored)
    low = np.maximum(np.minimum(ve, 0), -60)
    sh_v = ve - low                                     # >= 0 unless capped
    v_al = np.where(sh_v >= 0, vm << np.clip(sh_v, 0, 62),
                    (vm >> np.clip(-sh_v, 0, 62)) | ((vm & ((np.int64(1) << np.clip(-sh_v, 0, 62)) - 1)) != 0))
    v_al = np.where(neg, -v_al, v_al)
    v_al = np.where(nz, v_al, 0)
    tot = v_al + (np.int64(zp) << (-low))
    w = np.where(tot < 0, -round_sig(-tot), round_sig(np.abs(tot)))
    w = np.where(nz, w, np.int64(zp) << (-low))
    q = np.where(w < 0, -round_int(-w, -low), round_int(np.abs(w), -low))
    return q
