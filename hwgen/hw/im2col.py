"""im2col window feeder: raster pixel stream -> K x K patch vectors for the MAC array.

The input is one image in raster order, channels innermost (for y, for x, for c: one int8
per beat; i.e. the (C, H, W) tensor transposed to (H, W, C)). The output is, for every output
pixel in raster order, its patch vector of ``K * K * C`` values in (ky, kx, c) order, with
padded cells holding the input zero point (so they add 0 to ``sum((x - x_zp) * w)``). That is
exactly the ``a_stream`` order of :class:`hwgen.hw.systolic.SystolicArray` with ``in_lanes=1``
for ``groups=1``, and :func:`hwgen.hw.systolic.pack_weights` lays out the (O, C, K, K)
weights in the matching (ky, kx, c) order.

Rows are kept in a circular line buffer of ``rows`` (default K + 2) image rows in one block
RAM (``rows * max_row_len`` bytes). The writer may run up to ``rows`` image rows ahead of the
lowest row the current output row needs; the reader waits for a row only until it is
complete. Stride and padding are run-time configuration (:class:`Im2colShape`), kernel size
is structural.

Throughput: one patch byte per cycle when the rows it needs are present; each input byte is
accepted in one cycle. A frame of ``OH * OW * K * K * C`` output bytes therefore takes about
that many cycles after the first K rows arrive. Latency input -> output: 3 cycles after the
last needed row is complete (address register, block-RAM read, block-RAM output
register).
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["Im2colParams", "Im2colShape", "Im2col"]


@dataclass(frozen=True)
class Im2colParams:
    """Structure of an :class:`Im2col` feeder.

    Parameters
    ----------
    kernel : int
        K of the K x K window (1..11).
    max_width, max_height, max_channels : int
        Largest input image (W, H) and channel count.
    max_row_len : int or None
        Largest ``W * C`` (bytes per image row); default ``max_width * max_channels``.
    rows : int or None
        Line-buffer rows, at least K + 1 (K + 2 default: stride 2 never waits for room).
    use_primitive : bool or None
        Line buffer as DP16KD with output register (True), behavioural (False), or by
        platform (None).
    """
    kernel: int = 3
    max_width: int = 224
    max_height: int = 224
    max_channels: int = 64
    max_row_len: int | None = None
    rows: int | None = None
    use_primitive: bool | None = None

    def __post_init__(self):
        for name, lo, hi in (("kernel", 1, 11), ("max_width", 1, 4096), ("max_height", 1, 4096),
                             ("max_channels", 1, 4096)):
            v = getattr(self, name)
            if not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"Im2colParams.{name} must be an int in {lo}..{hi}, got {v!r}")
        if self.max_row_len is None:
            object.__setattr__(self, "max_row_len", self.max_width * self.max_channels)
        if self.rows is None:
            object.__setattr__(self, "rows", self.kernel + 2)
        if not isinstance(self.rows, int) or self.rows < self.kernel + 1:
            raise ValueError(f"Im2colParams.rows must be >= kernel + 1 = {self.kernel + 1}, "
                             f"got {self.rows!r}")
        if self.rows * self.max_row_len > 1 << 20:
            raise ValueError(f"im2col line buffer of {self.rows} x {self.max_row_len} bytes is "
                             f"too large; lower max_row_len")

    @property
    def depth(self) -> int:
        return self.rows * self.max_row_len

    @property
    def config_layout(self) -> data.StructLayout:
        K = self.kernel
        hw = ceil_log2(self.max_height + 1)
        ww = ceil_log2(self.max_width + 1)
        rl = ceil_log2(self.max_row_len + 1)
        return data.StructLayout({
            "height": unsigned(hw), "width": unsigned(ww),
            "channels": unsigned(ceil_log2(self.max_channels + 1)),
            "row_len": unsigned(rl),
            "stride": unsigned(2), "pad_top": unsigned(ceil_log2(K)),
            "pad_left": unsigned(ceil_log2(K)),
            "out_h": unsigned(hw), "out_w": unsigned(ww),
            "col0": signed(rl + 2), "col_step": unsigned(rl + 1),
            "slot0": unsigned(ceil_log2(self.rows)),
            "addr0": unsigned(ceil_log2(self.depth + 1)),
            "row_step": unsigned(ceil_log2(self.depth + 1)),
            "frame_len": unsigned(ceil_log2(self.depth + 1)),
            "zp": signed(8),
        })


@dataclass(frozen=True)
class Im2colShape:
    """One conv's input geometry: (C, H, W) input, stride, padding (top, left, bottom, right),
    input zero point. :meth:`config` gives the feeder's run-time configuration."""
    channels: int
    height: int
    width: int
    stride: int = 1
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    zp: int = 0

    def out_hw(self, kernel: int) -> tuple[int, int]:
        from ..ir import pool_out_size
        t, l, b, r = self.padding
        return (pool_out_size(self.height, kernel, self.stride, t, b),
                pool_out_size(self.width, kernel, self.stride, l, r))

    def config(self, p: Im2colParams) -> dict:
        K = p.kernel
        t, l, b, r = self.padding
        oh, ow = self.out_hw(K)
        errs = []
        if self.stride not in (1, 2, 3):
            errs.append(f"stride {self.stride} (1..3 supported)")
        if max(self.padding) > K - 1 or min(self.padding) < 0:
            errs.append(f"padding {self.padding} (0..{K - 1})")
        if self.width > p.max_width or self.height > p.max_height:
            errs.append(f"image {self.height}x{self.width} > {p.max_height}x{p.max_width}")
        if self.channels > p.max_channels or self.width * self.channels > p.max_row_len:
            errs.append(f"{self.channels} channels x width {self.width} > max_channels "
                        f"{p.max_channels} / max_row_len {p.max_row_len}")
        if oh < 1 or ow < 1:
            errs.append(f"image {self.height}x{self.width} smaller than the {K}x{K} window")
        if not -128 <= self.zp <= 127:
            errs.append(f"zero point {self.zp}")
        if errs:
            raise ValueError("im2col cannot run this conv: " + "; ".join(errs))
        c = self.channels
        return {"height": self.height, "width": self.width, "channels": c,
                "row_len": self.width * c, "stride": self.stride,
                "pad_top": t, "pad_left": l, "out_h": oh, "out_w": ow,
                "col0": -l * c, "col_step": self.stride * c, "slot0": (-t) % p.rows,
                "addr0": ((-t) % p.rows) * self.width * c,
                "row_step": self.stride * self.width * c, "frame_len": p.rows * self.width * c,
                "zp": self.zp}


class Im2col(wiring.Component):
    """K x K patch-vector generator with a circular line buffer (see the module docstring).

    Members
    -------
    cfg : In(params.config_layout)
        :meth:`Im2colShape.config`; hold stable during a frame.
    i_stream : In(stream.Signature(signed(8)))
        Raster (y, x, c) input pixels of one frame after another.
    o_stream : Out(stream.Signature(ArrayLayout(signed(8), 1)))
        Patch bytes, (oy, ox, ky, kx, c) order; one byte per cycle.
    """

    def __init__(self, params: Im2colParams):
        if not isinstance(params, Im2colParams):
            raise TypeError(f"expected Im2colParams, got {type(params).__name__}")
        self.params = params
        super().__init__({
            "cfg": In(params.config_layout),
            "i_stream": In(stream.Signature(signed(8))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(8), 1))),
        })

    def elaborate(self, platform):
        p = self.params
        K, NR = p.kernel, p.rows
        cfg = self.cfg
        m = Module()
        from .dsp import use_primitive_for
        from .systolic import ByteRam
        m.submodules.mem = ram = ByteRam(p.depth, use_primitive_for(platform, p.use_primitive))

        hmax = p.max_height + NR + K + 4
        rl = p.max_row_len

        # ---- writer ------------------------------------------------------------------------
        wy = Signal(range(p.max_height + 1))          # complete rows of this frame
        w_pos = Signal(range(rl + 1))
        w_slot = Signal(range(NR))
        w_rowbase = Signal(range(p.depth + 1))
        w_done = Signal()
        r_done = Signal()        # the frame's last patch byte has been read
        g_done = Signal()        # ... has been generated
        iy_base = Signal(signed(ceil_log2(hmax) + 2))  # first input row of the current output row
        a1_valid = Signal()
        a1_rowbase = Signal.like(iy_base)
        # lowest row still needed: that of the beat waiting in stage A1, else the generator's
        lowest = Mux(a1_valid, a1_rowbase, iy_base)
        # the writer may fill rows below rlim = max(0, lowest) + NR; registered (one cycle
        # late is safe: lowest never decreases within a frame)
        rlim = Signal(range(p.max_height + NR + 2))
        m.d.sync += rlim.eq(Mux(lowest < 0, 0, lowest) + NR)
        i = self.i_stream
        m.d.comb += i.ready.eq(~w_done & (r_done | (wy < rlim)))
        i_fire = i.valid & i.ready
        m.d.comb += [ram.w_addr.eq(w_rowbase + w_pos), ram.w_data.eq(i.payload),
                     ram.w_en.eq(i_fire)]
        with m.If(i_fire):
            with m.If(w_pos == cfg.row_len - 1):
                m.d.sync += [w_pos.eq(0), wy.eq(wy + 1)]
                with m.If(w_slot == NR - 1):
                    m.d.sync += [w_slot.eq(0), w_rowbase.eq(0)]
                with m.Else():
                    m.d.sync += [w_slot.eq(w_slot + 1), w_rowbase.eq(w_rowbase + cfg.row_len)]
                with m.If(wy == cfg.height - 1):
                    m.d.sync += w_done.eq(1)
            with m.Else():
                m.d.sync += w_pos.eq(w_pos + 1)

        # ---- reader: patch-byte generator ------------------------------------------------
        # Count-down loop counters and incrementally kept positions / addresses (no
        # multiply, no compare-with-cfg chain in front of the stage-A1 register).
        c_rem = Signal(range(p.max_channels + 1))
        kx_rem = Signal(range(K))
        ky_rem = Signal(range(K))
        ox_rem = Signal(range(p.max_width + 1))
        oy_rem = Signal(range(p.max_height + 1))
        sw = ceil_log2(p.max_width + K + 4) + 2
        ix_base = Signal(signed(sw))                         # ox * s - pad_left
        ix_cur = Signal(signed(sw))                          # ix_base + kx
        iy_cur = Signal(signed(len(iy_base)))                # iy_base + ky
        aw = ceil_log2(p.depth + 1) + 2
        xb_addr = Signal(signed(aw))                         # ix_base * C
        col_addr = Signal(signed(aw))                        # ix * C + c
        base_slot = Signal(range(NR))                        # line-buffer slot of iy_base
        base_addr = Signal(range(p.depth + 1))               # base_slot * row_len
        ky_slot = Signal(range(NR))                          # slot of iy_cur
        ky_addr = Signal(range(p.depth + 1))                 # ky_slot * row_len

        fresh = Signal(init=1)
        iy = iy_cur
        pad = (iy_cur < 0) | (iy_cur >= cfg.height) | (ix_cur < 0) | (ix_cur >= cfg.width)
        raddr = Signal(range(p.depth + 1))
        m.d.comb += raddr.eq(ky_addr + col_addr)
        nslot = Signal(range(2 * NR))
        nslot_addr = Signal(range(2 * p.depth + 1))
        m.d.comb += [nslot.eq(base_slot + cfg.stride), nslot_addr.eq(base_addr + cfg.row_step)]
        wrap = nslot >= NR
        nbase_slot = Mux(wrap, nslot - NR, nslot)
        nbase_addr = Mux(wrap, nslot_addr - cfg.frame_len, nslot_addr)
        gen = ~g_done & ~fresh
        frame_last = Signal()
        m.d.comb += frame_last.eq((c_rem == 0) & (kx_rem == 0) & (ky_rem == 0) & (ox_rem == 0)
                                  & (oy_rem == 0))

        # stage A1: the generated beat, registered (address, padding, the row it needs)
        a1_addr = Signal.like(raddr)
        a1_pad, a1_last = Signal(), Signal()
        a1_iy = Signal.like(iy)
        a1_ok = Signal()    # its row is complete (registered; rechecked every cycle)
        o = self.o_stream
        # stages B, C: RAM read and RAM output register, advancing together
        v_b, pad_b, o_valid, pad_c = Signal(), Signal(), Signal(), Signal()
        advance = ~o_valid | o.ready
        a1_go = advance & a1_valid & a1_ok
        a1_take = ~a1_valid | a1_go
        m.d.comb += [ram.r_addr.eq(a1_addr), ram.r_en.eq(advance), o.valid.eq(o_valid),
                     o.payload[0].eq(Mux(pad_c, cfg.zp, ram.r_data))]
        with m.If(advance):
            m.d.sync += [v_b.eq(a1_go), pad_b.eq(a1_pad), o_valid.eq(v_b), pad_c.eq(pad_b)]
        with m.If(a1_take):
            m.d.sync += [a1_valid.eq(gen), a1_addr.eq(raddr), a1_pad.eq(pad), a1_iy.eq(iy),
                         a1_rowbase.eq(iy_base), a1_last.eq(frame_last),
                         a1_ok.eq(pad | (iy < wy))]
        with m.Else():
            m.d.sync += a1_ok.eq(a1_pad | (a1_iy < wy))
        with m.If(a1_go & a1_last):
            m.d.sync += r_done.eq(1)
        step = a1_take & gen
        with m.If(step):
            m.d.sync += col_addr.eq(col_addr + 1)
            with m.If(c_rem != 0):
                m.d.sync += c_rem.eq(c_rem - 1)
            with m.Else():
                m.d.sync += c_rem.eq(cfg.channels - 1)
                with m.If(kx_rem != 0):
                    m.d.sync += [kx_rem.eq(kx_rem - 1), ix_cur.eq(ix_cur + 1)]
                with m.Else():
                    m.d.sync += [kx_rem.eq(K - 1), ix_cur.eq(ix_base), col_addr.eq(xb_addr)]
                    with m.If(ky_rem != 0):
                        m.d.sync += [ky_rem.eq(ky_rem - 1), iy_cur.eq(iy_cur + 1)]
                        with m.If(ky_slot == NR - 1):
                            m.d.sync += [ky_slot.eq(0), ky_addr.eq(0)]
                        with m.Else():
                            m.d.sync += [ky_slot.eq(ky_slot + 1), ky_addr.eq(ky_addr + cfg.row_len)]
                    with m.Else():
                        m.d.sync += [ky_rem.eq(K - 1), iy_cur.eq(iy_base), ky_slot.eq(base_slot),
                                     ky_addr.eq(base_addr)]
                        with m.If(ox_rem != 0):
                            m.d.sync += [ox_rem.eq(ox_rem - 1), ix_base.eq(ix_base + cfg.stride),
                                         ix_cur.eq(ix_base + cfg.stride),
                                         xb_addr.eq(xb_addr + cfg.col_step),
                                         col_addr.eq(xb_addr + cfg.col_step)]
                        with m.Else():
                            m.d.sync += [ox_rem.eq(cfg.out_w - 1), ix_base.eq(-cfg.pad_left),
                                         ix_cur.eq(-cfg.pad_left), xb_addr.eq(cfg.col0),
                                         col_addr.eq(cfg.col0)]
                            with m.If(oy_rem != 0):
                                m.d.sync += [oy_rem.eq(oy_rem - 1),
                                             iy_base.eq(iy_base + cfg.stride),
                                             iy_cur.eq(iy_base + cfg.stride),
                                             base_slot.eq(nbase_slot), base_addr.eq(nbase_addr),
                                             ky_slot.eq(nbase_slot), ky_addr.eq(nbase_addr)]
                            with m.Else():
                                m.d.sync += g_done.eq(1)

        # ---- frame hand-over: both sides done -> next frame ----------------------------------
        with m.If(w_done & r_done):
            m.d.sync += [w_done.eq(0), r_done.eq(0), g_done.eq(0), wy.eq(0), w_slot.eq(0),
                         w_rowbase.eq(0)]

        # a frame's reader counters start from cfg once its first input beat has arrived
        # (cfg may change between frames)
        with m.If(w_done & r_done):
            m.d.sync += fresh.eq(1)
        with m.Elif(fresh):
            m.d.sync += [c_rem.eq(cfg.channels - 1), kx_rem.eq(K - 1), ky_rem.eq(K - 1),
                         ox_rem.eq(cfg.out_w - 1), oy_rem.eq(cfg.out_h - 1),
                         iy_base.eq(-cfg.pad_top), iy_cur.eq(-cfg.pad_top),
                         ix_base.eq(-cfg.pad_left), ix_cur.eq(-cfg.pad_left),
                         xb_addr.eq(cfg.col0), col_addr.eq(cfg.col0),
                         base_slot.eq(cfg.slot0), ky_slot.eq(cfg.slot0),
                         base_addr.eq(cfg.addr0), ky_addr.eq(cfg.addr0)]
            with m.If(i_fire):
                m.d.sync += fresh.eq(0)
        return m
