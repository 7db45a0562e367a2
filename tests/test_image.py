import numpy as np
import pytest

from hwgen.image import ImageError, read_png, resize_nearest, write_png


@pytest.mark.parametrize("ch", [1, 3])
def test_png_round_trip(tmp_path, ch):
    img = np.random.default_rng(ch).integers(0, 256, (7, 5, ch), dtype=np.uint8)
    write_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_png(tmp_path / "a.png"), img)


def test_png_filters_sub_up_avg_paeth(tmp_path):
    import struct
    import zlib
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (4, 3, 3), dtype=np.int32)
    stride = 9
    raw = b""
    prev = np.zeros(stride, np.int32)
    for y, f in enumerate([1, 2, 3, 4]):
        cur = img[y].reshape(-1)
        enc = np.zeros(stride, np.int32)
        for x in range(stride):
            a = cur[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            if f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            enc[x] = (cur[x] - pred) & 255
        raw += bytes([f]) + bytes(enc.astype(np.uint8))
        prev = cur

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    (tmp_path / "f.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 4, 8, 2, 0, 0, 0))
                                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    np.testing.assert_array_equal(read_png(tmp_path / "f.png"), img.astype(np.uint8))


def test_bad_png(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="not a PNG"):
        read_png(tmp_path / "x.png")


def test_resize_nearest():
    img = np.arange(16).reshape(4, 4, 1)
    np.testing.assert_array_equal(resize_nearest(img, 2, 2)[:, :, 0], [[0, 2], [8, 10]])
