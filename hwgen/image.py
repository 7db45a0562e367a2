"""Minimal PNG reading/writing (8-bit gray, gray+alpha, RGB, RGBA; non-interlaced) and
nearest-neighbour resizing, so `hwgen sim/run --input x.png` needs no imaging library."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIG = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


class ImageError(ValueError):
    """An image file hwgen cannot read."""


def read_png(path) -> np.ndarray:
    """(H, W, C) uint8 with C = 1 (gray) or 3 (RGB); alpha is dropped."""
    data = Path(path).read_bytes()
    if not data.startswith(_SIG):
        raise ImageError(f"{path}: not a PNG file")
    pos, idat, hdr = 8, [], None
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if hdr is None:
        raise ImageError(f"{path}: no IHDR chunk")
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in _CHANNELS or interlace:
        raise ImageError(f"{path}: only 8-bit non-interlaced gray/RGB(A) PNGs are supported "
                         f"(bit depth {depth}, colour type {ctype}, interlace {interlace})")
    ch = _CHANNELS[ctype]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ImageError(f"{path}: corrupt image data ({e})") from None
    stride = w * ch
    if len(raw) != h * (stride + 1):
        raise ImageError(f"{path}: truncated image data")
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 255
        elif f in (1, 3, 4):
            cur = np.zeros(stride, np.int32)
            for x in range(stride):   # left-dependent filters are sequential by nature
                a = cur[x - ch] if x >= ch else 0
                b = prev[x]
                c = prev[x - ch] if x >= ch else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[x] = (line[x] + pred) & 255
        else:
            raise ImageError(f"{path}: bad PNG filter type {f}")
        out[y] = cur
        prev = cur
    img = out.reshape(h, w, ch)
    return img[:, :, :3] if ch == 4 else img[:, :, :1] if ch == 2 else img


def write_png(path, img: np.ndarray) -> None:
    """(H, W, 1|3) or (H, W) uint8 -> PNG (filter 0)."""
    img = np.asarray(img, np.uint8)
    img = img[:, :, None] if img.ndim == 2 else img
    h, w, ch = img.shape
    ctype = {1: 0, 3: 2, 4: 6}[ch]
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    Path(path).write_bytes(_SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def resize_nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = (np.arange(h) * img.shape[0] // h).clip(0, img.shape[0] - 1)
    xs = (np.arange(w) * img.shape[1] // w).clip(0, img.shape[1] - 1)
    return img[ys][:, xs]
