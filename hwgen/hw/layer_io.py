"""Arena readers and writers of the accelerator, and the sequencer's per-layer descriptors.

Every compute layer of the program runs on the systolic array as a (grouped) convolution
``out[o, p] = sum_k (x[k] - x_zp) * w[o, k] + bias[o]`` followed by the requantiser:

* ``Conv2d`` 1x1 / K x K / grouped: the K x K patch of every output pixel is gathered
  from the arena by :class:`PatchFeeder` (padding cells hold ``x_zp``), the weights come
  from the weight store (section A of weights.bin, one ``C``-byte word per beat);
* ``FullyConnected``: a convolution whose kernel is the whole input (one output pixel,
  reduction order (pixel, channel), the order the weight image stores);
* depthwise ``Conv2d``: a grouped convolution with ``groups = C`` (one output channel per
  group), its weights from a byte-wide tap memory (channel-major copy of the depthwise
  blocks of weights.bin), lane 0 of each weight beat;
* ``GlobalAvgPool``: a grouped convolution over the whole input with weights 1 and bias 0
  (``sum(x - x_zp)``), requantised with the pool's scale (the channel record).

All block RAMs read with a latency of :data:`MEM_LATENCY` cycles (their output registers
on). The arena is byte-wide (one read and one write per cycle): :class:`PatchFeeder` delivers
one patch byte per cycle (``a_stream`` with ``L = 1``) and :class:`OutputWriter` stores one
output byte per cycle through the output place (pitch, channel offsets, channel shuffle).

:func:`layer_descriptors` derives the sequencer's descriptor table (:data:`DESC`) from a
:class:`~hwgen.mapper.plan.Plan` and its program descriptors; :func:`weight_stores`
splits weights.bin into the memories' initial contents.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import add as _add
from .credit import CreditFifo
from .bram import kept_reg, kept_tree, kept_tree_latency
from .dsp import Mult18, use_primitive_for
from ..mapper import program as prog
from ..mapper.plan import WEIGHTS_SECTION_A

__all__ = ["DESC", "KIND_ARRAY", "KIND_MAXPOOL", "KIND_ADD", "KIND_AVGPOOL", "KIND_DW", "MEM_LATENCY", "MaxPoolUnit", "AddUnit", "Placer",
           "AvgPoolUnit", "avgpool_configs", "MODE_WORD", "MODE_DW", "MODE_ONES", "LayerDesc", "layer_descriptors",
           "weight_stores", "PatchFeeder", "WeightFeeder", "BiasFeeder", "OutputWriter"]

#: Unit that runs a layer: the systolic array, the serial max-pool unit, the add unit, the
#: average-pool unit, the depthwise unit (:class:`hwgen.hw.dwunit.DwUnit`).
KIND_ARRAY, KIND_MAXPOOL, KIND_ADD, KIND_AVGPOOL, KIND_DW = 0, 1, 2, 3, 4
#: Read latency (cycles) of the accelerator's block RAMs (arena, stores, place table):
#: the read address into a root register (the arena and the stores have several readers:
#: their address multiplexer ends there), a copy per block, the block with its output
#: register, the row multiplexer in two registered levels (:class:`hwgen.hw.bram.BlockRam`
#: ``latency=6``): a memory spread over the whole chip is crossed in cycles of its own.
#: The root costs every layer two cycles (its first read, the place table's last write).
MEM_LATENCY = 6
_ADD_CFG = _add.CONFIG_LAYOUT
#: Weight source of a layer: weight-store words, depthwise tap bytes, constant 1 (pooling).
MODE_WORD, MODE_DW, MODE_ONES = 0, 1, 2

#: The sequencer's descriptor (one per program descriptor), all fields precomputed.
DESC = data.StructLayout({
    "skip": unsigned(1),          # address remap: nothing to run
    "kind": unsigned(3),          # KIND_*: which unit runs the layer
    "table": unsigned(1),         # output through the 256-entry rescale table at t_base
    "t_base": unsigned(24),       # channel-store word of the rescale table
    "mode": unsigned(2),          # MODE_*
    "bias_zero": unsigned(1),     # biases are 0 (pooling)
    "ch_step": unsigned(1),       # 1: one channel record per output channel, 0: one record
    "in_addr": unsigned(24), "in_pitch": unsigned(16),
    "in_h": unsigned(16), "in_w": unsigned(16),
    "kh": unsigned(8), "kw": unsigned(8), "sh": unsigned(8), "sw": unsigned(8),
    "pad_t": unsigned(8), "pad_l": unsigned(8),
    "out_h": unsigned(16), "out_w": unsigned(16),
    "groups": unsigned(16), "cin_g": unsigned(16), "k": unsigned(24),
    "cout_g": unsigned(16), "otiles": unsigned(16), "out_c": unsigned(16),
    "pixels": unsigned(24), "beats": unsigned(32),
    "x_zp": signed(8), "y_zp": signed(8), "lo": signed(8), "hi": signed(8),
    "w_base": unsigned(24), "ch_base": unsigned(24),
    "out_addr": unsigned(24), "out_pitch": unsigned(16), "out_pre": unsigned(16),
    "out_post": unsigned(16), "sh_g": unsigned(16), "sh_n": unsigned(16),
    "in1_addr": unsigned(24), "in1_pitch": unsigned(16),
    "tiles": unsigned(24),        # ceil(pixels / rows): pixel tiles of an array layer
    "gk": unsigned(24),           # groups * k: reduction beats of one output beat
    "wbeats": unsigned(32),       # groups * otiles * k: weight beats of one pixel tile
    "sh_q0": unsigned(16), "sh_r0": unsigned(16), "sh_rg0": unsigned(17),   # out_pre // sh_n,
                                  # out_pre % sh_n, sh_r0 * sh_g (the place table's start)
    "out_pix": unsigned(24),      # out_h * out_w
    # loop bounds minus one (the feeders compare counters with these: no subtraction)
    "cin_g_m1": unsigned(16), "kw_m1": unsigned(8), "kh_m1": unsigned(8),
    "groups_m1": unsigned(16), "out_w_m1": unsigned(16), "out_h_m1": unsigned(16),
    "otiles_m1": unsigned(16), "tiles_m1": unsigned(24), "wbeats_m1": unsigned(32),
    "last_rows_m1": unsigned(8),  # pixels in the last pixel tile - 1
    "row_stride": unsigned(24),   # in_w * in_pitch: one input row
    "col_step": unsigned(24),     # sw * in_pitch: next output pixel's window
    "row_step": unsigned(24),     # sh * in_w * in_pitch: next output row's window
    "org": unsigned(24),          # in_addr - (pad_t * in_w + pad_l) * in_pitch (mod 2**24)
    "add_cfg": unsigned(_ADD_CFG.size),    # packed hwgen.hw.add.CONFIG_LAYOUT
})


@dataclass(frozen=True)
class LayerDesc:
    """Python values of one :data:`DESC` entry (``fields``) and the layer's name."""
    name: str
    fields: dict


def weight_stores(plan, cols: int):
    """Initial contents of the weight memories from weights.bin.

    Returns ``(words, dw_bytes, dw_base, ch_words, b0)``: section A as ``cols``-byte words
    (int, little-endian lanes), the depthwise tap bytes (channel-major, per depthwise layer
    at ``dw_base[name]``), the 8-byte channel-store words of section B, and the byte address
    of channel-store word 0.
    """
    img = prog.weight_image(plan)[:-4]
    hdr = prog.decode_weight_image(prog.weight_image(plan))
    a0, an = hdr["section_a"]
    b0, bn = hdr["section_b"]
    a = np.frombuffer(img[a0:a0 + an], np.uint8)
    a = np.concatenate([a, np.zeros((-len(a)) % cols, np.uint8)]).reshape(-1, cols)
    words = [int.from_bytes(row.tobytes(), "little") for row in a] or [0]
    b0 = b0 - b0 % 8
    b = np.frombuffer(img[b0:], np.uint8)
    b = np.concatenate([b, np.zeros((-len(b)) % 8, np.uint8)])
    ch_words = [int(v) for v in b.view("<u8")] or [0]
    e = plan.engines
    dw, dw_base = [], {}
    for lp in plan.layers:
        if lp.kind == "dw":
            c = lp.out_shape[0]
            kk = lp.w_bytes // (-(-c // e.dw_lanes) * e.dw_lanes)
            blk = np.frombuffer(img[lp.w_addr:lp.w_addr + lp.w_bytes], np.int8)
            blk = blk.reshape(-1, kk, e.dw_lanes).transpose(0, 2, 1).reshape(-1, kk)[:c]
            dw_base[lp.name] = len(dw)
            dw.extend(int(v) for v in blk.reshape(-1))
    return words, dw or [0], dw_base, ch_words, b0


def _finish(f: dict, rows: int) -> dict:
    """Derived DESC fields (products and quotients the hardware must not compute)."""
    f["tiles"] = -(-f["pixels"] // rows)
    f["gk"] = f["groups"] * f["k"]
    f["wbeats"] = f["groups"] * f["otiles"] * f["k"]
    f["row_stride"] = f["in_w"] * f["in_pitch"]
    f["out_pix"] = f["out_h"] * f["out_w"]
    for k in ("cin_g", "kw", "kh", "groups", "out_w", "out_h", "otiles", "tiles", "wbeats"):
        f[f"{k}_m1"] = max(f[k] - 1, 0)
    f["last_rows_m1"] = max(f["pixels"] - max(f["tiles"] - 1, 0) * rows - 1, 0)
    f["col_step"] = f["sw"] * f["in_pitch"]
    f["row_step"] = f["sh"] * f["row_stride"]
    f["org"] = (f["in_addr"] - (f["pad_t"] * f["in_w"] + f["pad_l"]) * f["in_pitch"]) % (1 << 24)
    if f["sh_g"]:
        f["sh_q0"], f["sh_r0"] = divmod(f["out_pre"], f["sh_n"])
        f["sh_rg0"] = f["sh_r0"] * f["sh_g"]
    return f


def layer_descriptors(plan, cols: int, rows: int | None = None,
                      dw_unit: bool = True) -> list[LayerDesc]:
    """The sequencer's descriptors, one per program descriptor (firmware/README.md), with
    every loop bound and base address precomputed.

    Raises NotImplementedError for layers this accelerator does not run yet (windowed
    pooling, residual add, copies) naming the layer. ``rows``: the array's rows (default:
    the plan's). ``dw_unit``: depthwise layers the :class:`hwgen.hw.dwunit.DwUnit` can run
    (3x3, stride 1/2) go to it (``KIND_DW``), the others run on the array as grouped convs.
    """
    rows = rows or plan.engines.sa_rows
    _, _, dw_base, _, b0 = weight_stores(plan, cols)
    img = prog.weight_image(plan)
    ds = prog.descriptors(plan)
    by_index = {lp.index: lp for lp in plan.layers}
    out = []
    for d in ds:
        lp = by_index[d.node]
        f = {k: 0 for k in DESC.members}
        f.update(lo=d.lo, hi=d.hi, y_zp=d.y_zp, x_zp=d.x_zp)
        if d.flags & prog.FLAGS["remap"]:
            f["skip"] = 1
            out.append(LayerDesc(lp.name, _finish(f, rows)))
            continue
        if lp.kind == "maxpool":
            f.update(kind=KIND_MAXPOOL, in_addr=d.in0_addr, in_pitch=d.in0_pitch, in_h=d.in_h,
                     in_w=d.in_w, kh=d.kh, kw=d.kw, sh=d.sh, sw=d.sw, pad_t=d.pad_top,
                     pad_l=d.pad_left, out_h=d.out_h, out_w=d.out_w, out_c=d.out_c,
                     out_addr=d.out_addr, out_pitch=d.out_pitch, out_pre=d.out_pre,
                     out_post=d.out_post, sh_g=d.shuffle_groups,
                     sh_n=(d.shuffle_channels // d.shuffle_groups) if d.shuffle_groups else 0)
            if d.const_bytes:
                assert (d.const_addr - b0) % 8 == 0, (lp.name, d.const_addr)
                f.update(table=1, t_base=(d.const_addr - b0) // 8)
            out.append(LayerDesc(lp.name, _finish(f, rows)))
            continue
        if lp.kind == "add":
            f.update(kind=KIND_ADD, in_addr=d.in0_addr, in_pitch=d.in0_pitch,
                     in1_addr=d.in1_addr, in1_pitch=d.in1_pitch, out_h=d.out_h, out_w=d.out_w,
                     out_c=d.out_c, pixels=d.out_h * d.out_w,
                     out_addr=d.out_addr, out_pitch=d.out_pitch, out_pre=d.out_pre,
                     out_post=d.out_post, sh_g=d.shuffle_groups,
                     sh_n=(d.shuffle_channels // d.shuffle_groups) if d.shuffle_groups else 0)
            vals = struct.unpack_from("<IIqBBBBbb", img, d.const_addr)
            cfg = _add.AddConfig(a_m=vals[0], b_m=vals[1], fixed=vals[2], a_sh=vals[3],
                                 b_sh=vals[4], rshift=vals[5], offset=vals[6], lo=vals[7],
                                 hi=vals[8])
            f["add_cfg"] = cfg.pack()
            out.append(LayerDesc(lp.name, _finish(f, rows)))
            continue
        if lp.kind == "avgpool":
            f.update(kind=KIND_AVGPOOL, in_addr=d.in0_addr, in_pitch=d.in0_pitch, in_h=d.in_h,
                     in_w=d.in_w, out_h=d.out_h, out_w=d.out_w, out_c=d.out_c,
                     pixels=d.in_h * d.in_w,
                     out_addr=d.out_addr, out_pitch=d.out_pitch, out_pre=d.out_pre,
                     out_post=d.out_post, sh_g=d.shuffle_groups,
                     sh_n=(d.shuffle_channels // d.shuffle_groups) if d.shuffle_groups else 0)
            out.append(LayerDesc(lp.name, _finish(f, rows)))
            continue
        if lp.kind not in ("sa", "im2col", "fc", "dw", "gap"):
            raise NotImplementedError(
                f"layer '{lp.name}' ({lp.op}, {lp.kind}) runs on the {lp.engine} engine, which "
                f"the accelerator does not drive yet")
        c, h, w = d.in_c, d.in_h, d.in_w
        f.update(in_addr=d.in0_addr, in_pitch=d.in0_pitch, in_h=h, in_w=w, out_c=d.out_c,
                 out_addr=d.out_addr, out_pitch=d.out_pitch, out_pre=d.out_pre,
                 out_post=d.out_post, sh_g=d.shuffle_groups,
                 sh_n=(d.shuffle_channels // d.shuffle_groups) if d.shuffle_groups else 0,
                 ch_step=1)
        if d.ch_bytes:
            assert (d.ch_addr - b0) % 8 == 0, (lp.name, d.ch_addr)
            f["ch_base"] = (d.ch_addr - b0) // 8
        if lp.kind in ("fc", "gap"):
            f.update(kh=h, kw=w, sh=1, sw=1, pad_t=0, pad_l=0, out_h=1, out_w=1)
        else:
            f.update(kh=d.kh, kw=d.kw, sh=d.sh, sw=d.sw, pad_t=d.pad_top, pad_l=d.pad_left,
                     out_h=d.out_h, out_w=d.out_w)
        if lp.kind == "gap":
            f.update(groups=c, cin_g=1, mode=MODE_ONES, bias_zero=1, ch_step=0)
        elif lp.kind == "dw":
            f.update(groups=c, cin_g=1, mode=MODE_DW, w_base=dw_base[lp.name])
        else:
            g = d.groups if lp.kind != "fc" else 1
            f.update(groups=g, cin_g=c // g, mode=MODE_WORD)
            assert (d.w_addr - WEIGHTS_SECTION_A) % cols == 0
            f["w_base"] = (d.w_addr - WEIGHTS_SECTION_A) // cols
        f["k"] = f["kh"] * f["kw"] * f["cin_g"]
        f["cout_g"] = d.out_c // f["groups"]
        f["otiles"] = -(-f["cout_g"] // cols)
        f["pixels"] = f["out_h"] * f["out_w"]
        f["beats"] = f["pixels"] * f["groups"] * f["otiles"]
        if lp.kind == "dw" and dw_unit:
            from .dwunit import check_desc
            try:
                check_desc(f)
                f["kind"] = KIND_DW
            except ValueError:
                pass                    # a geometry the unit does not run: on the array
        out.append(LayerDesc(lp.name, _finish(f, rows)))
    return out


def local_desc(m, desc, platform=None):
    """A unit's own registered copy of the sequencer's descriptor (fields it does not use
    are trimmed by synthesis). The descriptor is static while a layer runs and settles
    several cycles before ``start`` (the sequencer's PARAM state lies between), so the copy
    costs nothing and keeps the long nets from the sequencer free of logic.

    On ECP5 the copy is kept flip-flop instances: yosys merges identical inferred
    flip-flops, so the units' plain copies of a field became one flip-flop driving every
    unit across the die (v56s1: one unit's copy of a flag feeding another's FIFO write
    enable, 6.7 ns of routing)."""
    return DESC(kept_reg(m, desc.as_value(), "desc_r", use_primitive_for(platform, None)))


class Placer(wiring.Component):
    """The arena write path of every unit: output channel ``j`` of pixel ``pix`` goes to
    ``base + pix * pitch + off(j)``, where ``off(j) = out_post + s(out_pre + j)`` comes
    from the place table (``s`` the channel shuffle; filled per layer by the sequencer)
    or, with ``direct``, is ``j`` itself (the image loader).

    A pure delay line, no back-pressure: a request (``en``, ``pix``, ``ch``, ``data``)
    reaches the arena write port ``MEM_LATENCY + 2`` cycles later; ``busy`` while any is on
    the way (a layer is done only when its writes have landed). ``pix < 2**17``,
    ``pitch < 2**17``: one :class:`hwgen.hw.dsp.Mult18` (registered inputs and outputs);
    ``base`` and ``pitch`` are per layer (static while its requests flow).

    Members
    -------
    en, pix, ch, data, direct, base, pitch: the request (``base``/``pitch`` per layer).
    t_addr: Out, t_data: In(17): the place table's read port (2-cycle read latency).
    wr_en, wr_addr, wr_data: Out, the arena write port. busy: Out(1).
    """
    def __init__(self, t_bits: int, use_primitive: bool | None = None):
        self.use_primitive = use_primitive
        super().__init__({
            "en": In(1), "pix": In(24), "ch": In(16), "data": In(signed(8)), "direct": In(1),
            "base": In(24), "pitch": In(16),
            "t_addr": Out(t_bits), "t_data": In(17),
            "wr_en": Out(1), "wr_addr": Out(24), "wr_data": Out(signed(8)), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        assert MEM_LATENCY >= 3
        # S1..S3: pix * pitch on a MULT18X18D registered at its inputs, its output and once
        # in the fabric; the request rides alongside; the place table is read at ch1 (its
        # data MEM_LATENCY cycles later, in stage S(1 + MEM_LATENCY))
        m.submodules.mul = mul = Mult18(use_primitive=self.use_primitive)
        m.d.comb += [mul.a.eq(self.pix[:17]), mul.b.eq(self.pitch)]
        v, chs, dats, dirs = [self.en], [self.ch], [self.data], [self.direct]
        for k in range(1, MEM_LATENCY + 2):
            v.append(Signal(name=f"v{k}"))
            chs.append(Signal(16, name=f"ch{k}"))
            dats.append(Signal(signed(8), name=f"dat{k}"))
            dirs.append(Signal(name=f"dir{k}"))
            m.d.sync += [v[k].eq(v[k - 1]), chs[k].eq(chs[k - 1]), dats[k].eq(dats[k - 1]),
                         dirs[k].eq(dirs[k - 1])]
        m.d.comb += self.t_addr.eq(chs[1])
        # S4: pixel address; then wait for the table's data
        sums = [Signal(24, name="sum4")]
        m.d.sync += sums[0].eq(self.base + mul.p[:24])
        for k in range(5, MEM_LATENCY + 2):
            sums.append(Signal(24, name=f"sum{k}"))
            m.d.sync += sums[-1].eq(sums[-2])
        # last stage: + channel offset (the table's data), registered into the write port
        n = MEM_LATENCY + 1
        off = Mux(dirs[n], chs[n], self.t_data)
        last = Signal()
        m.d.sync += [last.eq(v[n]), self.wr_addr.eq(sums[-1] + off), self.wr_data.eq(dats[n])]
        m.d.comb += [self.wr_en.eq(last), self.busy.eq(Cat(*v[1:], last).any())]
        return m


class _Count:
    """A counter from 0 to ``limit`` (a descriptor field, static while the unit runs) with a
    registered "at ``limit``" flag, and a registered "at ``limit - 1``" flag it takes its
    next value from when stepping (set from a compare with ``limit - 2``, registered here):
    enables built from these flags have no comparison behind them. ``wrap()`` restarts at
    0, ``step()`` counts up (only while not at the limit)."""

    def __init__(self, m, limit, name: str, width: int = 16):
        self.m = m
        self.value = Signal(width, name=name)
        self.last = Signal(name=f"{name}_last")
        self._pen = Signal(name=f"{name}_pen")          # value == limit - 1
        self._lim_z = Signal(name=f"{name}_lim_z")
        self._lim_1 = Signal(name=f"{name}_lim_1")
        self._lim_m2 = Signal(signed(width + 2), name=f"{name}_lim_m2")   # limit - 2
        m.d.sync += [self._lim_z.eq(limit == 0), self._lim_1.eq(limit == 1),
                     self._lim_m2.eq(limit - 2)]

    def wrap(self):
        self.m.d.sync += [self.value.eq(0), self.last.eq(self._lim_z), self._pen.eq(self._lim_1)]

    def step(self):
        self.m.d.sync += [self.value.eq(self.value + 1), self.last.eq(self._pen),
                          self._pen.eq(self.value == self._lim_m2)]

    def advance(self):
        """``wrap()`` at the last value, else ``step()``."""
        with self.m.If(self.last):
            self.wrap()
        with self.m.Else():
            self.step()

    def last_after_advance(self):
        """The value ``last`` takes after an ``advance()`` (from registers only)."""
        return Mux(self.last, self._lim_z, self._pen)


def nest_carries(m, counters, start, step, name: str):
    """Registered carries of nested counters (innermost first) that all wrap on ``start``
    and advance on ``step``, counter ``k`` only when every inner one is at its last value
    (see ``_Count.advance``): ``carry[k]`` = counters ``0..k`` all at their last values, a
    register (the enables of the outer counters are one gate from it, not a chain of ANDs).
    Its value after a step is computed from registers only (``step`` selects it, it is not
    in front of it)."""
    carry = [Signal(name=f"{name}_carry{k}") for k in range(len(counters))]
    stepped = []
    for k, c in enumerate(counters):
        moves = carry[k - 1] if k else Const(1, 1)    # counter k advances on this step
        stepped.append(Mux(moves, c.last_after_advance(), c.last))
        with m.If(start):
            m.d.sync += carry[k].eq(Cat(*(x._lim_z for x in counters[:k + 1])).all())
        with m.Elif(step):
            m.d.sync += carry[k].eq(Cat(*stepped).all())
    return carry


class PatchFeeder(wiring.Component):
    """Gathers the patch vectors of every output pixel from the byte-wide arena.

    Order: for each output pixel (raster), for each group, (ky, kx, ci) -- the systolic
    array's ``a_stream`` order with ``L = 1``; cells outside the input give ``x_zp``.
    Throughput one byte per cycle (counters, a nine-stage address pipeline with its two
    multiplications on registered MULT18X18Ds, the block-RAM read, three data registers,
    FIFO, skid buffer); latency ``MEM_LATENCY + 15``.

    Members
    -------
    desc: In(DESC), stable while running. start: In(1) pulse. done: Out(1), all bytes issued.
    rd_addr: Out(24), rd_data: In(signed(8)): the arena read port (registered read).
    o_stream: Out(stream of ArrayLayout(signed(8), 1)).
    """
    DEPTH = 24

    def __init__(self, use_primitive: bool | None = None):
        self.use_primitive = use_primitive
        super().__init__({
            "desc": In(DESC), "start": In(1), "done": Out(1, init=1),
            "rd_addr": Out(24), "rd_data": In(signed(8)),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(8), 1))),
        })

    def elaborate(self, platform):
        m = Module()
        d = local_desc(m, self.desc, platform)
        # read through a skid buffer: the array's issue logic reaches no FIFO pointer
        m.submodules.fifo = fifo = CreditFifo(signed(8), self.DEPTH, skid=True)
        run = Signal()
        # every counter has a registered "at its last value" flag (_Count): the counters'
        # enables are ANDs of flags, no comparison sits behind `issue`
        cnt = {n: _Count(m, lim, n) for n, lim in
               (("ci", d.cin_g_m1), ("kx", d.kw_m1), ("ky", d.kh_m1), ("g", d.groups_m1),
                ("ox", d.out_w_m1), ("oy", d.out_h_m1))}
        ci, kx, ky, g = (cnt[n].value for n in ("ci", "kx", "ky", "g"))
        iy0, ix0 = Signal(signed(18)), Signal(signed(18))
        cbase = Signal(16)
        # address pipeline: S1 coordinates, S2..S4 row * in_w (a MULT18X18D registered at
        # its inputs, its output and once in the fabric), S5 pixel, S6..S8 pixel * pitch
        # (the same), S9 address (registered into the block RAM), then the arena's
        # MEM_LATENCY read stages
        n = 12 + MEM_LATENCY       # the arena's data land in stage n - 3, registered 3 times
        v = [Signal(name=f"v{i}") for i in range(1, n + 1)]
        inb = [Signal(name=f"inb{i}") for i in range(1, n + 1)]
        s1_iy, s1_ix = Signal(signed(18)), Signal(signed(18))
        cs = [Signal(16, name=f"c{i}") for i in range(1, 9)]
        ixs = [Signal(16, name=f"ix{i}") for i in range(2, 5)]
        pix5 = Signal(17)
        m.submodules.mul_row = mul_row = Mult18(use_primitive=self.use_primitive)
        m.submodules.mul_pix = mul_pix = Mult18(use_primitive=self.use_primitive)

        m.d.comb += self.done.eq(~run)
        issue = run & fifo.allow
        iy = iy0 + ky
        ix = ix0 + kx
        m.d.sync += [v[0].eq(issue), s1_iy.eq(iy), s1_ix.eq(ix), cs[0].eq(cbase + ci),
                     inb[0].eq((iy >= 0) & (iy < d.in_h) & (ix >= 0) & (ix < d.in_w))]
        m.d.sync += [v[i].eq(v[i - 1]) for i in range(1, n)]
        m.d.sync += [inb[i].eq(inb[i - 1]) for i in range(1, n)]
        m.d.sync += [cs[i].eq(cs[i - 1]) for i in range(1, 8)]
        m.d.sync += [ixs[0].eq(s1_ix.as_unsigned()[:16]), ixs[1].eq(ixs[0]), ixs[2].eq(ixs[1])]
        m.d.comb += [mul_row.a.eq(s1_iy.as_unsigned()[:16]), mul_row.b.eq(d.in_w),
                     mul_pix.a.eq(pix5), mul_pix.b.eq(d.in_pitch)]
        m.d.sync += [pix5.eq(mul_row.p[:17] + ixs[2]),
                     self.rd_addr.eq(d.in_addr + mul_pix.p[:24] + cs[7])]
        raw0, raw, byte = Signal(signed(8)), Signal(signed(8)), Signal(signed(8))
        m.d.sync += [raw0.eq(self.rd_data), raw.eq(raw0), byte.eq(Mux(inb[-2], raw, d.x_zp))]
        m.d.comb += [fifo.issue.eq(issue), fifo.w_en.eq(v[-1]), fifo.w_data.eq(byte),
                     self.o_stream.valid.eq(fifo.o_stream.valid),
                     self.o_stream.payload.eq(fifo.o_stream.payload),
                     fifo.o_stream.ready.eq(self.o_stream.ready)]

        # counter k advances when counters 0..k-1 are all at their last values: that
        # condition is a register (carry[k - 1]), so every enable is issue & one flag
        order = [cnt[n] for n in ("ci", "kx", "ky", "g", "ox", "oy")]
        carry = nest_carries(m, order, self.start, issue, "pf")

        with m.If(self.start):
            m.d.sync += [run.eq(1), iy0.eq(-d.pad_t), ix0.eq(-d.pad_l), cbase.eq(0)]
            for c in cnt.values():
                c.wrap()
        with m.Elif(issue):
            order[0].advance()
            for k in range(1, 6):
                with m.If(carry[k - 1]):
                    order[k].advance()
            with m.If(carry[2]):
                m.d.sync += cbase.eq(cbase + d.cin_g)
            with m.If(carry[3]):
                m.d.sync += [cbase.eq(0), ix0.eq(ix0 + d.sw)]
            with m.If(carry[4]):
                m.d.sync += [ix0.eq(-d.pad_l), iy0.eq(iy0 + d.sh)]
            with m.If(carry[5]):
                m.d.sync += run.eq(0)
        return m


class WeightFeeder(wiring.Component):
    """Replays a layer's weight block once per pixel tile: ``groups * otiles * k`` beats of
    ``cols`` int8 (weight-store words; depthwise: the tap byte in lane 0; pooling: 1 in
    lane 0). One beat per cycle, latency ``w_latency + 3`` cycles (address register, the
    weight store's read, FIFO, skid buffer; ``MEM_LATENCY + 3`` from the tap memory).

    Members
    -------
    desc, start, done: as :class:`PatchFeeder` (pixel tiles: ``desc.tiles_m1 + 1``).
    w_addr / w_data: weight-store read port; t_addr / t_data: depthwise tap-memory read port.
    o_stream: Out(stream of ArrayLayout(signed(8), cols)).
    """
    DEPTH = 16

    def __init__(self, cols: int, w_latency: int = MEM_LATENCY):
        self.cols = cols
        self.w_latency = w_latency
        super().__init__({
            "desc": In(DESC), "start": In(1), "done": Out(1, init=1),
            "w_addr": Out(24), "w_data": In(8 * cols), "t_addr": Out(24), "t_data": In(signed(8)),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(8), cols))),
        })

    def elaborate(self, platform):
        m = Module()
        d = local_desc(m, self.desc, platform)
        C = self.cols
        # (the skid buffer's read pointer in a copy per lane: its multiplexers sit by the
        # array, wherever that is)
        m.submodules.fifo = fifo = CreditFifo(8 * C, self.DEPTH, skid=True, copies=C)
        run = Signal()
        pt = Signal(24)          # pixel tiles left after this one
        i = Signal(32)           # beat of the current replay
        # S1: address register; then the read stages of the weight store (w_latency) or the
        # tap memory (MEM_LATENCY)
        v = [Signal(name=f"v{k}") for k in range(1, max(self.w_latency, MEM_LATENCY) + 2)]
        m.d.comb += self.done.eq(~run)
        issue = run & fifo.allow
        addr = Signal(24)
        t_d = self.t_data
        m.d.sync += [v[0].eq(issue), addr.eq(d.w_base + i)]
        m.d.sync += [v[k].eq(v[k - 1]) for k in range(1, len(v))]
        m.d.comb += [self.w_addr.eq(addr), self.t_addr.eq(addr)]
        word = Signal(8 * C)
        with m.Switch(d.mode):
            with m.Case(MODE_WORD):
                m.d.comb += word.eq(self.w_data)
            with m.Case(MODE_DW):
                m.d.comb += word.eq(t_d.as_unsigned())
            with m.Default():
                m.d.comb += word.eq(1)
        landed = Mux(d.mode == MODE_WORD, v[self.w_latency], v[MEM_LATENCY])
        m.d.comb += [fifo.issue.eq(issue), fifo.w_en.eq(landed), fifo.w_data.eq(word),
                     self.o_stream.valid.eq(fifo.o_stream.valid),
                     self.o_stream.payload.eq(fifo.o_stream.payload),
                     fifo.o_stream.ready.eq(self.o_stream.ready)]
        # down-counters with registered "at zero" flags: no wide comparison behind issue
        rem, rem_z, pt_z = Signal(32), Signal(), Signal()
        with m.If(self.start):
            m.d.sync += [run.eq(1), pt.eq(d.tiles_m1), pt_z.eq(d.tiles_m1 == 0), i.eq(0),
                         rem.eq(d.wbeats_m1), rem_z.eq(d.wbeats_m1 == 0)]
        with m.Elif(issue):
            m.d.sync += [i.eq(i + 1), rem.eq(rem - 1), rem_z.eq(rem == 1)]
            with m.If(rem_z):
                m.d.sync += [i.eq(0), rem.eq(d.wbeats_m1), rem_z.eq(d.wbeats_m1 == 0),
                             pt.eq(pt - 1), pt_z.eq(pt == 1)]
                with m.If(pt_z):
                    m.d.sync += run.eq(0)
        return m


class BiasFeeder(wiring.Component):
    """One beat of ``cols`` int32 biases per (pixel tile, group, output tile) from the
    channel store (8-byte records: int32 bias, scale word); lanes past the group's channels
    are 0. At least ``nvalid + lat + 2`` cycles per beat (FILL: a record read per cycle,
    SETTLE: ``lat`` cycles while the last lands, OUT), ``lat`` = ``MEM_LATENCY + 1`` plus
    the lanes' copy tree (one stage up to four lanes, two above).

    Members
    -------
    desc, start, done: as :class:`WeightFeeder`.
    rd_addr: Out(24), rd_data: In(64): channel-store read port.
    o_stream: Out(stream of ArrayLayout(signed(32), cols)).
    """

    def __init__(self, cols: int):
        self.cols = cols
        super().__init__({
            "desc": In(DESC), "start": In(1), "done": Out(1, init=1),
            "rd_addr": Out(24), "rd_data": In(64),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(32), cols))),
        })

    def elaborate(self, platform):
        m = Module()
        d = local_desc(m, self.desc, platform)
        C = self.cols
        # tile / group / output-tile counters with registered "last" flags (_Count)
        pt_c, g_c, ot_c = (_Count(m, d.tiles_m1, "pt", 24), _Count(m, d.groups_m1, "g"),
                           _Count(m, d.otiles_m1, "ot"))
        c = Signal(range(C + 1))
        obase = Signal(24)       # g * cout_g + ot * C
        rem = Signal(signed(18))  # cout_g - ot * C
        vec = Signal(data.ArrayLayout(signed(32), C))
        # the read address is registered (one cycle), then the channel store's read, then the
        # record reaches each lane through a tree of copies (kept apart on ECP5: the lanes'
        # vector bits go to the array's accumulators, all over the die; above four lanes a
        # copy per group of four first, so the store's output register loads a few copies,
        # not one per lane: v57s1, 9.7 ns to a lane's copy)
        prim = use_primitive_for(platform, None)
        lat = MEM_LATENCY + 1 + kept_tree_latency(C)
        rd = kept_tree(m, self.rd_data[:32], C, "rd_l", prim)
        # a capture's valid and lane travel lat - 1 stages, then become the per-lane capture
        # enables (cap_en, below)
        cap_vs = [Signal(name=f"cap_v{k}") for k in range(lat - 1)]
        cap_ls = [Signal(range(C), name=f"cap_lane{k}") for k in range(lat - 1)]
        cap_v0, cap_lane0 = cap_vs[0], cap_ls[0]
        # records still to read for this beat (a down-counter: no comparison in FILL), and
        # the count of the next beat, min(rem - C, C) and min(cout_g, C), kept in registers
        # (rem is stable from OUT to the next OUT, at least lat + 2 cycles: rem - C
        # is registered, then clamped into another register)
        left = Signal(range(C + 1))
        nv_next, nv_first = Signal(range(C + 1)), Signal(range(C + 1))
        rem_c = Signal(signed(18))
        m.d.sync += rem_c.eq(rem - C)
        m.d.sync += [nv_next.eq(Mux(rem_c > C, C, Mux(rem_c < 0, 0, rem_c))),
                     nv_first.eq(Mux(d.cout_g > C, C, d.cout_g))]
        m.d.sync += self.rd_addr.eq(d.ch_base + obase + c)
        m.d.comb += self.o_stream.payload.eq(vec)
        m.d.sync += cap_v0.eq(0)
        m.d.sync += [cap_vs[k].eq(cap_vs[k - 1]) for k in range(1, lat - 1)]
        m.d.sync += [cap_ls[k].eq(cap_ls[k - 1]) for k in range(1, lat - 1)]
        # the vector is cleared the cycle after a beat leaves (a registered flag: the
        # array's ready does not reach the C x 32 vector bits); FILL's first capture lands
        # MEM_LATENCY cycles later
        clr = Signal()
        m.d.sync += clr.eq(0)
        out_v, take = Signal(), Signal()      # a beat is offered (state OUT), it leaves
        # a capture's enable per lane, a register (decoded a stage early): each lane's 32
        # enables come straight from a flip-flop of the lane's own. The clear reaches each
        # lane through a copy of its own too (one cycle after clr: still lat - 1 cycles
        # before the first capture, and a beat offered lat + 1 cycles after it), and wins
        # over the capture (they never meet), so it maps to the flip-flops' synchronous
        # reset: no gate in front of the 32 x cols enables
        cap_en = [Signal(name=f"cap_en{k}") for k in range(C)]
        m.d.sync += [cap_en[k].eq(cap_vs[-1] & (cap_ls[-1] == k)) for k in range(C)]
        for k in range(C):
            with m.If(kept_reg(m, clr, f"clr_l{k}", prim)):
                m.d.sync += vec[k].eq(0)
            with m.Elif(cap_en[k]):
                m.d.sync += vec[k].eq(rd[k])
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.done.eq(1)
                with m.If(self.start):
                    for k in (pt_c, g_c, ot_c):
                        k.wrap()
                    m.d.sync += [c.eq(0), obase.eq(0), rem.eq(d.cout_g), clr.eq(1),
                                 left.eq(Mux(d.bias_zero, 0, Mux(d.cout_g > C, C, d.cout_g)))]
                    m.next = "FILL"
            with m.State("FILL"):
                with m.If(left != 0):
                    m.d.sync += [cap_v0.eq(1), cap_lane0.eq(c), c.eq(c + 1), left.eq(left - 1)]
                with m.Else():
                    m.next = "SETTLE"
            for k in range(lat):                # the last record's read lands
                with m.State("SETTLE" if k == 0 else f"SETTLE{k}"):
                    if k + 1 < lat:
                        m.next = f"SETTLE{k + 1}"
                    else:
                        m.d.sync += out_v.eq(1)
                        m.next = "OUT"
            with m.State("OUT"):
                with m.If(take):
                    m.next = "FILL"
                    with m.If(ot_c.last & g_c.last & pt_c.last):
                        m.next = "IDLE"
        # OUT's work hangs on the registered out_v (high exactly in OUT), not on a decode of
        # the state register: the beat leaving reaches the counters through one gate
        m.d.comb += [self.o_stream.valid.eq(out_v), take.eq(out_v & self.o_stream.ready)]
        # the values the next beat needs, registered (obase and rem change only when a beat
        # leaves, and beats leave at least lat + 2 cycles apart): the sums, then the
        # choice by the counters' flags, so take only selects them (no adder and no flag
        # logic behind it)
        obase_c, obase_r = Signal(24), Signal(24)
        obase_nx, rem_nx = Signal(24), Signal(signed(18))
        m.d.sync += [obase_c.eq(obase + C), obase_r.eq(obase + rem),
                     obase_nx.eq(Mux(ot_c.last, Mux(g_c.last, 0, obase_r), obase_c)),
                     rem_nx.eq(Mux(ot_c.last, d.cout_g, rem_c))]
        with m.If(take):
            m.d.sync += [out_v.eq(0), clr.eq(1), c.eq(0), obase.eq(obase_nx), rem.eq(rem_nx),
                         left.eq(Mux(d.bias_zero, 0, Mux(ot_c.last, nv_first, nv_next)))]
        # the tile / group / output-tile counters advance a cycle after the beat left (from
        # a registered take; the FSM looked at their flags when it left, the next beat is
        # lat + 1 cycles away); a start (which wraps them) comes only to an idle unit, long
        # after its last beat left
        took = Signal()
        m.d.sync += took.eq(take)
        with m.If(took):
            ot_c.advance()
            with m.If(ot_c.last):
                g_c.advance()
                with m.If(g_c.last):
                    pt_c.step()
        return m


class OutputWriter(wiring.Component):
    """Stores the requantised output beats into the arena, one byte per cycle.

    Lane ``c`` of a beat ``{y, ch, pix}`` is output channel ``ch + c`` of pixel ``pix``;
    only the first ``nv`` lanes are written (``nv_m1 = nv - 1`` comes with the beat: the
    lanes up to the end of the channel group, looked up per channel by the accelerator, so
    no comparison of channel numbers sits between the beat and ``ready``). Channel
    ``j = ch + c`` goes to ``out_addr + pix * out_pitch + out_post + s(out_pre + j)``
    (:class:`Placer`) with ``s`` the channel shuffle (firmware/README.md). ``count``
    counts the beats whose lanes are all written since ``start``.

    Members
    -------
    desc: In(DESC). start: In(1). count: Out(32).
    i_stream: In(stream of {y: cols x int8, ch, pix}). nv_m1: In, lanes of the beat - 1;
    nv_one, nv_two: In, flags nv == 1 and nv == 2 (looked up with nv_m1).
    wr_en, wr_pix, wr_ch, wr_data: the write request (:class:`Placer`).
    """

    def __init__(self, cols: int, in_layout):
        self.cols = cols
        super().__init__({
            "desc": In(DESC), "start": In(1), "count": Out(32),
            "i_stream": In(stream.Signature(in_layout)), "nv_m1": In(range(cols)),
            "nv_one": In(1), "nv_two": In(1),
            "wr_en": Out(1), "wr_pix": Out(24), "wr_ch": Out(16), "wr_data": Out(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        C = self.cols
        s = self.i_stream
        # The beat being written is held here, its lanes leave from lane 0 of a shift
        # register and the channel counts up with them: no lane multiplexer, no adder on the
        # request. `ready` (~have | the lane being written is the last) is a register, set
        # from its next value; `cur` loads the payload whenever ready (a beat not valid then
        # leaves have low: nothing is written), else shifts, so no valid & ready decision
        # sits in front of its wide select. Each lane's select is a copy of ready of its own
        # (kept apart on ECP5, inverted: those flip-flops start at 0, ready at 1).
        cur = Signal.like(s.payload)
        nv = Signal(range(C))
        have = Signal()
        rdy = Signal(init=1)
        nxt = Signal(range(C + 1), init=1)     # the next lane's index
        # last: nxt == nv, a register (the beat's flags give it at the load), so ready's
        # next value is one gate behind the beat's valid and nv == 1 flag
        last = Signal()
        rdy_n = Mux(rdy, ~s.valid | self.nv_one, last)
        n_sel = kept_reg(m, Cat(*[~rdy_n] * C), "wr_nsel", use_primitive_for(platform, None))
        m.d.comb += [s.ready.eq(rdy),
                     self.wr_pix.eq(cur.pix), self.wr_ch.eq(cur.ch),
                     self.wr_data.eq(cur.y[0]), self.wr_en.eq(have)]
        m.d.sync += [rdy.eq(rdy_n),
                     cur.y[C - 1].eq(Mux(n_sel[C - 1], 0, s.payload.y[C - 1]))]
        m.d.sync += [cur.y[k].eq(Mux(n_sel[k], cur.y[k + 1], s.payload.y[k])) for k in range(C - 1)]
        with m.If(rdy):
            m.d.sync += [cur.ch.eq(s.payload.ch), cur.pix.eq(s.payload.pix), nv.eq(self.nv_m1),
                         have.eq(s.valid), nxt.eq(1), last.eq(self.nv_two)]
        with m.Else():
            m.d.sync += [cur.ch.eq(cur.ch + 1), nxt.eq(nxt + 1), last.eq(nxt + 1 == nv)]
        with m.If(self.start):
            m.d.sync += self.count.eq(0)
        with m.Elif(have & rdy):            # a beat's last lane is written
            m.d.sync += self.count.eq(self.count + 1)
        return m


class MaxPoolUnit(wiring.Component):
    """Serial max pooling: one output element per ``kh * kw + 2 * MEM_LATENCY + 1`` cycles.

    For each output pixel (raster) and channel, the window's cells inside the input are
    read from the arena one per cycle (padding and ceil-mode overhang never win, as in
    ONNX), the maximum goes through the rescale table when the input and output
    quantisation differ (``table``: the 256-byte :func:`hwgen.golden.arith.rescale_lut`
    block in the channel store), is clamped to ``[lo, hi]`` and written through the output
    place.

    Members
    -------
    desc, start, done: as :class:`PatchFeeder`.
    rd_addr / rd_data: arena read port. t_addr / t_data: channel-store read port.
    wr_en, wr_pix, wr_ch, wr_data: write request (:class:`Placer`).
    """

    def __init__(self):
        super().__init__({
            "desc": In(DESC), "start": In(1), "done": Out(1),
            "rd_addr": Out(24), "rd_data": In(signed(8)), "t_addr": Out(24), "t_data": In(64),
            "wr_en": Out(1), "wr_pix": Out(24), "wr_ch": Out(16), "wr_data": Out(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        d = local_desc(m, self.desc, platform)
        oy, ox, c, ky, kx = (Signal(16, name=n) for n in ("oy", "ox", "c", "ky", "kx"))
        iy0, ix0 = Signal(signed(18)), Signal(signed(18))
        pix = Signal(24)
        mx = Signal(signed(9))
        s1_v = Signal()
        iy = iy0 + ky
        ix = ix0 + kx
        inb = (iy >= 0) & (iy < d.in_h) & (ix >= 0) & (ix < d.in_w)
        # arena addresses walked incrementally (mod 2**24; cells outside the input are never
        # read): output row / pixel / window (with channel) / window row / tap
        aw, ap, ab, ar, a = (Signal(24, name=n) for n in ("a_orow", "a_opix", "a_win",
                                                             "a_wrow", "a_tap"))
        m.d.comb += self.rd_addr.eq(a)
        sv = [s1_v] + [Signal(name=f"s{k}_v") for k in range(2, MEM_LATENCY + 1)]
        m.d.sync += s1_v.eq(0)
        m.d.sync += [sv[k].eq(sv[k - 1]) for k in range(1, MEM_LATENCY)]
        with m.If(sv[-1] & (self.rd_data > mx)):
            m.d.sync += mx.eq(self.rd_data)
        idx = Signal(8)
        m.d.comb += [idx.eq(mx[:8] ^ 0x80), self.t_addr.eq(d.t_base + idx[3:])]
        tv = Signal(signed(8))
        m.d.comb += tv.eq(Mux(d.table, self.t_data.word_select(idx[:3], 8), mx[:8]).as_signed())
        m.d.comb += [self.wr_pix.eq(pix), self.wr_ch.eq(c),
                     self.wr_data.eq(Mux(tv < d.lo, d.lo, Mux(tv > d.hi, d.hi, tv)))]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.done.eq(1)
                with m.If(self.start):
                    m.d.sync += [oy.eq(0), ox.eq(0), c.eq(0), ky.eq(0), kx.eq(0), pix.eq(0),
                                 iy0.eq(-d.pad_t), ix0.eq(-d.pad_l), mx.eq(-129),
                                 aw.eq(d.org), ap.eq(d.org), ab.eq(d.org), ar.eq(d.org),
                                 a.eq(d.org)]
                    m.next = "TAP"
            with m.State("TAP"):
                m.d.sync += [s1_v.eq(inb), kx.eq(kx + 1), a.eq(a + d.in_pitch)]
                with m.If(kx == d.kw - 1):
                    m.d.sync += [kx.eq(0), ky.eq(ky + 1), ar.eq(ar + d.row_stride),
                                 a.eq(ar + d.row_stride)]
                    with m.If(ky == d.kh - 1):
                        m.d.sync += ky.eq(0)
                        m.next = "LAST"
            for k in range(MEM_LATENCY):        # the window's last reads land
                with m.State("LAST" if k == 0 else f"LAST{k}"):
                    m.next = f"LAST{k + 1}" if k + 1 < MEM_LATENCY else "TAB"
            for k in range(MEM_LATENCY):        # the rescale table's read
                with m.State("TAB" if k == 0 else f"TAB{k}"):
                    m.next = f"TAB{k + 1}" if k + 1 < MEM_LATENCY else "WRITE"
            with m.State("WRITE"):
                m.d.comb += self.wr_en.eq(1)
                m.d.sync += [mx.eq(-129), c.eq(c + 1), ab.eq(ab + 1), ar.eq(ab + 1),
                             a.eq(ab + 1)]
                m.next = "TAP"
                with m.If(c == d.out_c - 1):
                    nxt = ap + d.col_step
                    m.d.sync += [c.eq(0), ox.eq(ox + 1), ix0.eq(ix0 + d.sw), pix.eq(pix + 1),
                                 ap.eq(nxt), ab.eq(nxt), ar.eq(nxt), a.eq(nxt)]
                    with m.If(ox == d.out_w - 1):
                        nrow = aw + d.row_step
                        m.d.sync += [ox.eq(0), ix0.eq(-d.pad_l), oy.eq(oy + 1),
                                     iy0.eq(iy0 + d.sh), aw.eq(nrow), ap.eq(nrow), ab.eq(nrow),
                                     ar.eq(nrow), a.eq(nrow)]
                        with m.If(oy == d.out_h - 1):
                            m.next = "IDLE"
        return m


class AddUnit(wiring.Component):
    """Residual add through :class:`hwgen.hw.add.Adder` (one lane): element ``(p, c)`` of
    both inputs is read from the arena (two reads, one per cycle), the pair enters the
    adder, and its result is written through the output place. Two cycles per element.

    Members
    -------
    desc, start, done: as :class:`MaxPoolUnit`. rd_addr / rd_data: arena read port.
    wr_en, wr_pix, wr_ch, wr_data: write request (:class:`Placer`).
    """
    DEPTH = 8

    def __init__(self, use_primitive=None):
        self.use_primitive = use_primitive
        super().__init__({
            "desc": In(DESC), "start": In(1), "done": Out(1, init=1),
            "rd_addr": Out(24), "rd_data": In(signed(8)),
            "wr_en": Out(1), "wr_pix": Out(24), "wr_ch": Out(16), "wr_data": Out(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        d = local_desc(m, self.desc, platform)
        m.submodules.adder = adder = _add.Adder(_add.AddParams(lanes=1,
                                                               use_primitive=self.use_primitive))
        m.submodules.fifo = fifo = CreditFifo(16, self.DEPTH)
        m.d.comb += adder.config.eq(d.add_cfg)
        run = Signal()
        p, c = Signal(24), Signal(16)
        phase = Signal()
        svs = [Signal(name=f"s{k}_v") for k in range(MEM_LATENCY)]
        sps = [Signal(name=f"s{k}_ph") for k in range(MEM_LATENCY)]
        s1_v, s1_ph = svs[-1], sps[-1]
        a_reg = Signal(signed(8))
        # an element's credit is taken by its first read (phase 0); the second follows
        issue = run & (phase | fifo.allow)
        a0, a1 = Signal(24), Signal(24)       # pixel p of each input
        m.d.comb += self.rd_addr.eq(Mux(phase, a1, a0) + c)
        m.d.sync += [svs[0].eq(issue), sps[0].eq(phase)]
        m.d.sync += [svs[k].eq(svs[k - 1]) for k in range(1, MEM_LATENCY)]
        m.d.sync += [sps[k].eq(sps[k - 1]) for k in range(1, MEM_LATENCY)]
        with m.If(s1_v & ~s1_ph):
            m.d.sync += a_reg.eq(self.rd_data)
        m.d.comb += [fifo.issue.eq(issue & ~phase), fifo.w_en.eq(s1_v & s1_ph),
                     fifo.w_data.eq(Cat(a_reg, self.rd_data))]
        a, b, f = adder.a_stream, adder.b_stream, fifo.o_stream
        m.d.comb += [a.valid.eq(f.valid), b.valid.eq(f.valid),
                     a.payload[0].eq(f.payload[:8]), b.payload[0].eq(f.payload[8:]),
                     f.ready.eq(a.valid & a.ready)]
        with m.If(self.start):
            m.d.sync += [run.eq(1), p.eq(0), c.eq(0), phase.eq(0), a0.eq(d.in_addr),
                         a1.eq(d.in1_addr)]
        with m.Elif(issue):
            m.d.sync += phase.eq(~phase)
            with m.If(phase):
                m.d.sync += c.eq(c + 1)
                with m.If(c == d.out_c - 1):
                    m.d.sync += [c.eq(0), p.eq(p + 1), a0.eq(a0 + d.in_pitch),
                                 a1.eq(a1 + d.in1_pitch)]
                    with m.If(p == d.pixels - 1):
                        m.d.sync += run.eq(0)
        # write side
        wrun = Signal()
        wp, wc = Signal(24), Signal(16)
        o = adder.o_stream
        m.d.comb += [o.ready.eq(1), self.wr_en.eq(o.valid & wrun),
                     self.wr_pix.eq(wp), self.wr_ch.eq(wc), self.wr_data.eq(o.payload[0]),
                     self.done.eq(~wrun)]
        with m.If(self.start):
            m.d.sync += [wrun.eq(1), wp.eq(0), wc.eq(0)]
        with m.Elif(o.valid & wrun):
            m.d.sync += wc.eq(wc + 1)
            with m.If(wc == d.out_c - 1):
                m.d.sync += [wc.eq(0), wp.eq(wp + 1)]
                with m.If(wp == d.pixels - 1):
                    m.d.sync += wrun.eq(0)
        return m


def avgpool_configs(plan) -> tuple[list, int, int]:
    """Per program descriptor the :meth:`hwgen.hw.pool.PoolParams.config` of an average
    pool (None for other layers), from the constant block of weights.bin, and the widest /
    tallest padded walk the pool unit needs."""
    from .pool import PoolMode, PoolParams
    img = prog.weight_image(plan)
    probe = PoolParams(lanes=1, max_width=4096, max_height=4096, max_pool=False,
                       avg_pool=True, global_pool=False)
    cfgs, mw, mh = [], 8, 8
    for d in prog.descriptors(plan):
        if d.op != prog.OPS["AvgPool"] or d.flags & prog.FLAGS["remap"]:
            cfgs.append(None)
            continue
        xs, ys, x_zp, y_zp, fl, lo, hi = struct.unpack_from("<IIbbBbb", img, d.const_addr)
        f32 = lambda b: float(np.array([b], np.uint32).view(np.float32)[0])   # noqa: E731
        if (d.kh, d.kw) != (3, 3) or d.sh != d.sw:
            raise NotImplementedError(f"average pool {d.kh}x{d.kw}/{d.sh} (node {d.node}): the "
                                      f"pool unit runs 3x3 windows")
        cfg = probe.config(PoolMode.AVG, d.in_h, d.in_w, stride=d.sh,
                           padding=(d.pad_top, d.pad_left, d.pad_bottom, d.pad_right),
                           ceil_mode=bool(fl & 2), count_include_pad=bool(fl & 1),
                           x_scale=f32(xs), x_zp=x_zp, y_scale=f32(ys), y_zp=y_zp,
                           offset=128 if d.flags & prog.FLAGS["uint8"] else 0, lo=lo, hi=hi)
        cfgs.append(cfg)
        mw, mh = max(mw, cfg["xe"]), max(mh, cfg["ye"])
    return cfgs, mw, mh


class AvgPoolUnit(wiring.Component):
    """Average pooling through :class:`hwgen.hw.pool.PoolUnit` (one lane, AVG mode): each
    channel's input plane is read from the arena in raster order (one byte per cycle), the
    unit's outputs are written through the output place. The per-layer register values
    (:func:`avgpool_configs`) sit in a small ROM indexed by the program counter (entries
    of other layers repeat an average pool's geometry: the unit's walk must see a real
    geometry whenever it is idle).

    Throughput: the pool unit's (one window per ``AvgFinisher.interval`` cycles).

    Members
    -------
    index: In, the sequencer's descriptor index. desc, start, done: as :class:`AddUnit`.
    rd_addr / rd_data: arena read port. wr_en, wr_pix, wr_ch, wr_data: write request (:class:`Placer`).
    """
    DEPTH = 8

    def __init__(self, cfgs: list, max_width: int, max_height: int, index_bits: int,
                 use_primitive=None):
        from .pool import PoolParams, PoolUnit
        self.pool = PoolUnit(PoolParams(lanes=1, max_width=max_width, max_height=max_height,
                                        max_pool=False, avg_pool=True, global_pool=False,
                                        use_primitive=use_primitive))
        self.cfgs = cfgs
        self.names = [k for k in next(c for c in cfgs if c is not None)]
        super().__init__({
            "index": In(index_bits), "desc": In(DESC), "start": In(1), "done": Out(1, init=1),
            "rd_addr": Out(24), "rd_data": In(signed(8)),
            "wr_en": Out(1), "wr_pix": Out(24), "wr_ch": Out(16), "wr_data": Out(signed(8)),
        })

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory
        m = Module()
        d = local_desc(m, self.desc, platform)
        m.submodules.pool = pool = self.pool
        members = pool.signature.members
        lay = data.StructLayout({k: members[k].shape for k in self.names})
        # Every entry holds a real geometry (other layers: the first average pool's): with
        # height = width = 0 the pool unit would walk virtual padding positions while idle
        # and start the next average pool misaligned. Asynchronous read: valid from reset.
        safe = next(c for c in self.cfgs if c is not None)
        init = [lay.const({k: (c or safe)[k] for k in self.names}) for c in self.cfgs]
        m.submodules.cfgrom = rom = Memory(shape=lay, depth=len(init), init=init)
        rp = rom.read_port(domain="comb")
        m.d.comb += rp.addr.eq(self.index)
        for k in self.names:
            m.d.comb += getattr(pool, k).eq(getattr(rp.data, k))
        m.submodules.fifo = fifo = CreditFifo(8, self.DEPTH)
        run = Signal()
        p, c = Signal(24), Signal(16)
        svs = [Signal(name=f"s{k}_v") for k in range(MEM_LATENCY)]
        s1_v = svs[-1]
        issue = run & fifo.allow
        a, ac = Signal(24), Signal(24)        # element (p, c), element (0, c)
        m.d.comb += self.rd_addr.eq(a)
        m.d.sync += svs[0].eq(issue)
        m.d.sync += [svs[k].eq(svs[k - 1]) for k in range(1, MEM_LATENCY)]
        m.d.comb += [fifo.issue.eq(issue), fifo.w_en.eq(s1_v), fifo.w_data.eq(self.rd_data),
                     pool.i_stream.valid.eq(fifo.o_stream.valid),
                     pool.i_stream.payload.eq(fifo.o_stream.payload),
                     fifo.o_stream.ready.eq(pool.i_stream.ready)]
        with m.If(self.start):
            m.d.sync += [run.eq(1), p.eq(0), c.eq(0), a.eq(d.in_addr), ac.eq(d.in_addr)]
        with m.Elif(issue):
            m.d.sync += [p.eq(p + 1), a.eq(a + d.in_pitch)]
            with m.If(p == d.pixels - 1):
                m.d.sync += [p.eq(0), c.eq(c + 1), ac.eq(ac + 1), a.eq(ac + 1)]
                with m.If(c == d.out_c - 1):
                    m.d.sync += run.eq(0)
        wrun = Signal()
        wp, wc = Signal(24), Signal(16)
        o = pool.o_stream
        m.d.comb += [o.ready.eq(1), self.wr_en.eq(o.valid & wrun),
                     self.wr_pix.eq(wp), self.wr_ch.eq(wc), self.wr_data.eq(o.payload),
                     self.done.eq(~wrun & ~run & ~pool.busy)]
        with m.If(self.start):
            m.d.sync += [wrun.eq(1), wp.eq(0), wc.eq(0)]
        with m.Elif(o.valid & wrun):
            m.d.sync += wp.eq(wp + 1)
            with m.If(wp == d.out_pix - 1):
                m.d.sync += [wp.eq(0), wc.eq(wc + 1)]
                with m.If(wc == d.out_c - 1):
                    m.d.sync += wrun.eq(0)
        return m
