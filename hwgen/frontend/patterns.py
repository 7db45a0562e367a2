"""Small helpers shared by the ONNX importer and exporter."""
from __future__ import annotations

__all__ = ["same_pads"]


def same_pads(in_hw, kernel, strides, upper: bool = True) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding of ONNX ``auto_pad`` SAME_UPPER / SAME_LOWER.

    The output is ``ceil(in / stride)``; the total padding ``(out - 1) * stride + k - in``
    is split evenly, the odd cell going to the end (SAME_UPPER) or the start (SAME_LOWER).
    """
    pads = []
    for size, k, s in zip(in_hw, kernel, strides):
        out = -(-size // s)
        total = max(0, (out - 1) * s + k - size)
        small = total // 2
        pads.append((small, total - small) if upper else (total - small, small))
    (t, b), (l, r) = pads
    return (t, l, b, r)
