"""Line buffer + sliding K x K window over a raster stream, in block RAM.

A :class:`LineWindow` keeps the last ``k - 1`` rows of a raster-ordered stream of pixels
(each pixel an arbitrary Amaranth shape, e.g. ``ArrayLayout(signed(8), lanes)``) in
``k - 1`` ``lib.memory.Memory`` row buffers of ``width`` pixels (block RAM on ECP5:
``bits(pixel)`` bits x ``width`` words each), and a ``k x k`` register window that shifts
left by one column per pixel.

It knows nothing about image boundaries: rows are simply consecutive runs of ``width``
pixels, so several images (or channel groups) can stream back to back and the caller masks
the window cells that fall outside the image it is computing (padding). This keeps the
buffer reusable by the depthwise engine and by an im2col feeder.
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["LineWindow"]


class LineWindow(wiring.Component):
    """Sliding ``k x k`` window over a raster stream of ``width``-pixel rows.

    Storage: ``k - 1`` row memories of ``width`` pixels (block RAM on ECP5); row ``y`` is
    written into memory ``y mod (k-1)`` at the same time as the ``k - 1`` rows above it are
    read from the same column (read-before-write), so no data flows from a memory output
    back into a memory, and every memory output goes straight into a register (an ECP5
    DP16KD without output register has about 6 ns clock-to-out).

    Pipeline: a pixel presented on ``i_data`` (with ``i_valid``, at column ``i_x``) in a
    cycle where ``en`` is high is written and its column read (stage A); the memory output
    is registered (stage B), rotated into row order and shifted into the window (stage C):
    the window whose bottom-right cell is that pixel is on ``window`` after the third edge
    with ``en`` high (``LATENCY = 3`` enabled cycles), one pixel per cycle, no gaps needed
    between rows. Nothing moves while ``en`` is low (a global stall); cycles with ``en``
    high and ``i_valid`` low are bubbles and do not shift the window.

    Parameters
    ----------
    pixel : shape
        Shape of one pixel (e.g. ``data.ArrayLayout(signed(8), lanes)``).
    k : int
        Window size, 2..15.
    width : int
        Row length in pixels (the column index ``i_x`` counts ``0 .. width-1``).

    Members
    -------
    en : In(1)
        Global advance.
    i_valid, i_x, i_data : In
        Stage A: the pixel and its column. ``i_x`` must go ``0, 1, .., width-1, 0, ..``
        over the valid pixels; a row may be cut short by restarting at 0 (the rows above
        then hold stale data, which the caller masks as padding).
    window : Out(ArrayLayout(ArrayLayout(pixel, k), k))
        ``window[j][i]``: column ``j`` (0 = oldest / leftmost), row ``i`` (0 = oldest / top).
        Cell ``(j, i)`` is the pixel ``(k-1-j) + (k-1-i) * width`` positions before the
        newest pixel; the caller masks cells outside its image.
    """

    LATENCY = 3

    def __init__(self, pixel, k: int, width: int):
        if not isinstance(k, int) or not 2 <= k <= 15:
            raise ValueError(f"LineWindow k must be an int in 2..15, got {k!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"LineWindow width must be a positive int, got {width!r}")
        self.pixel, self.k, self.width = pixel, k, width
        super().__init__({
            "en": In(1),
            "i_valid": In(1),
            "i_x": In(range(max(width, 2))),
            "i_data": In(pixel),
            "window": Out(data.ArrayLayout(data.ArrayLayout(self.pixel, k), k)),
        })

    def elaborate(self, platform):
        m = Module()
        k, R = self.k, self.k - 1
        ry = Signal(range(max(R, 2)))      # memory that receives the current row
        fire = self.en & self.i_valid
        with m.If(fire & (self.i_x == self.width - 1)):
            m.d.sync += ry.eq(Mux(ry == R - 1, 0, ry + 1))

        raw = []
        b_valid, b_ry, b_data = Signal(), Signal.like(ry), Signal(self.pixel)
        c_valid, c_ry, c_data = Signal(), Signal.like(ry), Signal(self.pixel)
        for r in range(R):
            mem = Memory(shape=self.pixel, depth=self.width, init=[])
            m.submodules[f"row{r}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()          # not transparent: reads the row being replaced
            m.d.comb += [wp.addr.eq(self.i_x), wp.data.eq(self.i_data),
                         wp.en.eq(fire & (ry == r)), rp.addr.eq(self.i_x), rp.en.eq(self.en)]
            reg = Signal(self.pixel, name=f"raw{r}")
            with m.If(self.en):
                m.d.sync += reg.eq(rp.data)
            raw.append(reg)
        with m.If(self.en):
            m.d.sync += [b_valid.eq(self.i_valid), b_ry.eq(ry), b_data.eq(self.i_data),
                         c_valid.eq(b_valid), c_ry.eq(b_ry), c_data.eq(b_data)]

        # row i of the new column (i = 0 oldest) is in memory (ry + i) mod (k-1)
        new_col = []
        for i in range(R):
            v = Signal(self.pixel, name=f"col{i}")
            with m.Switch(c_ry):
                for r in range(R):
                    with m.Case(r):
                        m.d.comb += v.eq(raw[(r + i) % R])
            new_col.append(v)
        new_col.append(c_data)
        with m.If(self.en & c_valid):
            for j in range(k - 1):
                m.d.sync += self.window[j].eq(self.window[j + 1])
            for i in range(k):
                m.d.sync += self.window[k - 1][i].eq(new_col[i])
        return m
