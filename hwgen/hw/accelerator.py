"""The whole-network accelerator: one planned network as one component.

:class:`Accelerator` implements :class:`hwgen.hw.accel_if.AccelSignature` (image in through
``img_wr``, ``start``/``busy``/``done``/``error``, int8 logits through the registered
``out_addr``/``out_data`` read, the ``cycles`` counter) around:

* the **activation arena**: one byte-wide block RAM of ``plan.arena_bytes`` (one read port:
  the patch feeder, or the logit read-out while idle; one write port: the image loader
  while idle, the output writer while busy), tensors at the planned addresses;
* the **weight store** (section A of weights.bin in ``C``-byte words), the **depthwise tap
  memory** (the depthwise blocks, channel-major bytes) and the **channel store** (section B
  in 64-bit words: int32 bias + requantisation scale per channel), all initialised from
  the compiler's weight image;
* the :class:`hwgen.hw.systolic.SystolicConv` (R x C array + C-lane requantiser) that runs
  every layer (see :mod:`hwgen.hw.layer_io` for how each op maps onto it), fed by
  :class:`~hwgen.hw.layer_io.PatchFeeder`, :class:`~hwgen.hw.layer_io.WeightFeeder`,
  :class:`~hwgen.hw.layer_io.BiasFeeder` and drained by
  :class:`~hwgen.hw.layer_io.OutputWriter`;
* :class:`~hwgen.hw.layer_io.MaxPoolUnit` for max pooling (serial, one element per
  ``k*k + 3`` cycles) and :class:`~hwgen.hw.layer_io.AddUnit` (the
  :class:`hwgen.hw.add.Adder` engine, two cycles per element) for residual adds,
  :class:`~hwgen.hw.layer_io.AvgPoolUnit` (the :class:`hwgen.hw.pool.PoolUnit` engine in
  average mode) for average pooling;
* the :class:`hwgen.hw.sequencer.Sequencer` walking the layer program.

The image arrives in CHW raster order (``img_wr.addr = c*H*W + p``) and is stored at
``in_addr + p * in_pitch + c``. Latency: ``cycles`` (the sum of the layers' run times plus
a few cycles per layer, :meth:`Accelerator.layer_cycles` through the debug port).

With ``debug=True`` the signature adds ``dbg_addr``/``dbg_data`` (registered read of the
per-layer cycle counts, one per program descriptor).
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .bram import BlockRam, kept_reg
from .credit import SkidBuffer, StreamSlice
from .dsp import Mult18
from .accel_if import OUT_LATENCY, AccelParams, AccelSignature
from .layer_io import (KIND_ADD, KIND_ARRAY, KIND_AVGPOOL, KIND_DW, KIND_MAXPOOL,
                       MEM_LATENCY, AddUnit,
                       AvgPoolUnit, BiasFeeder, MaxPoolUnit, OutputWriter, PatchFeeder, Placer,
                       WeightFeeder, avgpool_configs, layer_descriptors, weight_stores)
from .sequencer import Sequencer
from .systolic import SystolicConv, SystolicParams

__all__ = ["Accelerator", "AccelDebugSignature", "WSTORE_LATENCY"]

#: Read latency of the weight store (:class:`hwgen.hw.bram.BlockRam` latency 8: its read
#: address reaches about a hundred blocks through a tree of copies).
WSTORE_LATENCY = 8


class AccelDebugSignature(AccelSignature):
    """:class:`AccelSignature` plus ``dbg_addr``/``dbg_data`` (per-layer cycle counts)."""

    def __init__(self, params: AccelParams, n_layers: int):
        self.params = params
        members = dict(AccelSignature(params).members.items())
        self.dbg_bits = max(1, ceil_log2(n_layers))
        members.update(dbg_addr=In(self.dbg_bits), dbg_data=Out(32))
        wiring.Signature.__init__(self, members)

    def __eq__(self, other):
        return isinstance(other, AccelDebugSignature) and other.params == self.params


class Accelerator(wiring.Component):
    """The network accelerator of one :class:`hwgen.mapper.plan.Plan` (module docstring).

    Parameters
    ----------
    plan: a plan of a QGraph (its weight image and program initialise the memories).
    debug: add the per-layer cycle read port.
    use_primitive: MULT18X18D instances (True), behavioural multipliers (False) or by
        platform (None).
    """

    def __init__(self, plan, debug: bool = False, use_primitive: bool | None = None):
        self.plan = plan
        e = plan.engines
        self.rows, self.cols = e.sa_rows, e.sa_cols
        self.layers = layer_descriptors(plan, self.cols, self.rows,
                                        dw_unit=bool(e.dw_lanes))
        descs = [l.fields for l in self.layers]
        run = [f for f in descs if not f["skip"] and f["kind"] == KIND_ARRAY]
        self.sa = SystolicParams(
            rows=self.rows, cols=self.cols, in_lanes=1,
            max_k=max(f["groups"] * f["k"] for f in run),
            max_pixels=max(f["pixels"] for f in run),
            max_groups=max(f["groups"] for f in run),
            max_otiles=max(f["otiles"] for f in run), use_primitive=use_primitive)
        self.max_out_c = max(f["out_c"] for f in run)
        c, h, w = plan.graph.input_shape
        self.accel_params = AccelParams(c * h * w, plan.graph.output_shape[0])
        sig = (AccelDebugSignature(self.accel_params, len(descs)) if debug
               else AccelSignature(self.accel_params))
        self.debug = debug
        self.use_primitive = use_primitive
        super().__init__(sig)

    def describe(self) -> str:
        """What this accelerator instantiates (the engines that are really built)."""
        kinds = {f["kind"] for f in (l.fields for l in self.layers) if not f["skip"]}
        units = [n for k, n in ((KIND_DW, "depthwise 3x3"), (KIND_MAXPOOL, "max pool"),
                                (KIND_AVGPOOL, "average pool"), (KIND_ADD, "residual add"))
                 if k in kinds]
        return (f"systolic array {self.rows}x{self.cols} with a {self.cols}-lane requantiser"
                + "".join(f", {u} unit" for u in units))

    @property
    def layer_names(self) -> list[str]:
        """Name of the layer of each program descriptor (the debug port's index)."""
        return [l.name for l in self.layers]

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        R, C = self.rows, self.cols
        words, dw_bytes, _, ch_words, _ = weight_stores(plan, C)

        prim = self.use_primitive
        lat = MEM_LATENCY
        assert lat == OUT_LATENCY, "logits are read straight from the arena"
        m.submodules.arena = arena = BlockRam(8, plan.arena_bytes, use_primitive=prim,
                                              name="arena", latency=lat)
        # the weight store is the largest memory (about half the 85F's block RAMs, spread
        # over the die): three more read stages than the others (a tree of address copies)
        m.submodules.wstore = wstore = BlockRam(8 * C, len(words), words, writable=False,
                                                use_primitive=prim, name="wstore",
                                                latency=WSTORE_LATENCY)
        m.submodules.tstore = tstore = BlockRam(8, len(dw_bytes), [v & 0xFF for v in dw_bytes],
                                                writable=False, use_primitive=prim,
                                                name="tstore", latency=lat)
        m.submodules.chstore = chstore = BlockRam(64, len(ch_words), ch_words, writable=False,
                                                  use_primitive=prim, name="chstore",
                                                  latency=lat)
        a_w, a_r = _WritePort(arena), _ReadPort(arena, signed(8))
        w_r, t_r, c_r = _ReadPort(wstore), _ReadPort(tstore, signed(8)), _ReadPort(chstore)

        m.submodules.sconv = sconv = SystolicConv(self.sa, channels=self.max_out_c)
        descs = [l.fields for l in self.layers]
        m.submodules.seq = seq = Sequencer(descs, R, len(sconv.param.addr), C)
        m.submodules.patch = patch = PatchFeeder(self.use_primitive)
        m.submodules.wfeed = wfeed = WeightFeeder(C, WSTORE_LATENCY)
        m.submodules.bfeed = bfeed = BiasFeeder(C)
        m.submodules.writer = writer = OutputWriter(C, sconv.o_stream.payload.shape())
        d = seq.desc
        on_array = d.kind == KIND_ARRAY
        # the units that write the arena: (runs this layer, write requester, arena reader);
        # pooling and add units exist only when the network has such layers
        units = [(on_array, writer, patch)]
        # the writer's count compare is registered on its own (a layer's units are busy from
        # the second cycle after its start on, so the compare's one-cycle-old value is never
        # seen alone)
        wr_all = Signal()
        m.d.sync += wr_all.eq(writer.count == d.beats)
        # the array's busy (an OR over its counters and flags) registered too: wr_all says
        # every beat is written, so a busy a cycle late only holds done back a cycle
        sc_busy = Signal()
        m.d.sync += sc_busy.eq(sconv.busy)
        done = {KIND_ARRAY: wr_all & patch.done & wfeed.done & bfeed.done & ~sc_busy}
        kinds = {f["kind"] for f in descs if not f["skip"]}
        if KIND_MAXPOOL in kinds:
            m.submodules.maxpool = mpool = MaxPoolUnit()
            units.append((d.kind == KIND_MAXPOOL, mpool, mpool))
            done[KIND_MAXPOOL] = mpool.done
        if KIND_ADD in kinds:
            m.submodules.addu = addu = AddUnit(self.use_primitive)
            units.append((d.kind == KIND_ADD, addu, addu))
            done[KIND_ADD] = addu.done
        if KIND_AVGPOOL in kinds:
            cfgs, mw, mh = avgpool_configs(plan)
            m.submodules.avgu = avgu = AvgPoolUnit(cfgs, mw, mh, seq.ab, self.use_primitive)
            m.d.comb += avgu.index.eq(seq.index)
            units.append((d.kind == KIND_AVGPOOL, avgu, avgu))
            done[KIND_AVGPOOL] = avgu.done
        dw_rows = [f for f in descs if not f["skip"] and f["kind"] == KIND_DW]
        if dw_rows:
            from .dwunit import DwUnit
            dwu = DwUnit(max(f["in_w"] for f in dw_rows), max(f["out_c"] for f in dw_rows),
                         use_primitive=self.use_primitive, mem_latency=MEM_LATENCY)
            m.submodules.dwu = dwu
            units.append((d.kind == KIND_DW, dwu, dwu))
            done[KIND_DW] = dwu.done
        # every unit sees the layer's start through a register of its own (kept apart on
        # ECP5): the sequencer's state decode reaches no unit's enables directly
        def start_of(name, sel):
            return kept_reg(m, seq.run_start & sel, f"start_{name}", prim)
        for sel, wu, ru in units:
            if wu is not writer:
                m.d.comb += [wu.desc.eq(d), wu.start.eq(start_of(wu.__class__.__name__, sel)),
                             wu.rd_data.eq(a_r.data)]
        for name, u in (("patch", patch), ("wfeed", wfeed), ("bfeed", bfeed), ("writer", writer)):
            m.d.comb += [u.desc.eq(d), u.start.eq(start_of(name, on_array))]
        wiring.connect(m, patch.o_stream, sconv.a_stream)
        wiring.connect(m, wfeed.o_stream, sconv.w_stream)
        # the bias vector (C x 32 bits) crosses from the bias feeder to the array's
        # accumulators through a register stage of its own (its C x 32 bits load on copies
        # of the slice's flag, one per lane: v51s2 had the one flag's net at 12.1 ns)
        m.submodules.bslice = bslice = StreamSlice(bfeed.o_stream.payload.shape(),
                                                   full_rate=False, copies=C)
        wiring.connect(m, bfeed.o_stream, bslice.i_stream)
        wiring.connect(m, bslice.o_stream, sconv.b_stream)
        # between the array's output FIFO and the writer: a register stage that looks up the
        # beat's lane count (nvtab, filled per layer by the sequencer) and a stream register,
        # so no channel arithmetic sits on a ready path
        olay = sconv.o_stream.payload.shape()
        nv_depth = max(f["out_c"] for f in descs if not f["skip"])
        # (each word: nv - 1 and the flags nv == 1, nv == 2, so the writer compares nothing)
        m.submodules.nvtab = nvtab = BlockRam(10, nv_depth, use_primitive=False, name="nvtab")
        wlay = data.StructLayout({"beat": olay, "nv_m1": unsigned(8), "nv_one": unsigned(1),
                                  "nv_two": unsigned(1)})
        # (a skid buffer: its ready is a register, so the writer's ready stops there and
        # never reaches the FIFO's read enable and output register)
        m.submodules.oslice = oslice = SkidBuffer(wlay)
        so = sconv.o_stream
        s_v = Signal()
        s_beat = Signal(olay.size)
        take = so.valid & (~s_v | oslice.i_stream.ready)
        m.d.comb += [so.ready.eq(~s_v | oslice.i_stream.ready),
                     nvtab.w_en.eq(seq.pt_en), nvtab.w_addr.eq(seq.pt_addr),
                     nvtab.w_data.eq(Cat(seq.nv_data, seq.nv_data == 0, seq.nv_data == 1)),
                     nvtab.r_addr.eq(so.payload.ch), nvtab.r_en.eq(take),
                     oslice.i_stream.valid.eq(s_v),
                     oslice.i_stream.payload.beat.eq(s_beat),
                     oslice.i_stream.payload.nv_m1.eq(nvtab.r_data[:8]),
                     oslice.i_stream.payload.nv_one.eq(nvtab.r_data[8]),
                     oslice.i_stream.payload.nv_two.eq(nvtab.r_data[9]),
                     writer.i_stream.valid.eq(oslice.o_stream.valid),
                     writer.i_stream.payload.eq(oslice.o_stream.payload.beat),
                     writer.nv_m1.eq(oslice.o_stream.payload.nv_m1),
                     writer.nv_one.eq(oslice.o_stream.payload.nv_one),
                     writer.nv_two.eq(oslice.o_stream.payload.nv_two),
                     oslice.o_stream.ready.eq(writer.i_stream.ready)]
        with m.If(take):
            m.d.sync += [s_v.eq(1), s_beat.eq(so.payload)]
        with m.Elif(s_v & oslice.i_stream.ready):
            m.d.sync += s_v.eq(0)
        cfg = sconv.cfg
        # the layer's shape, registered here (static while the layer runs, settled long
        # before the array samples it with the layer's first beat)
        m.d.sync += [cfg.tiles_m1.eq(d.tiles_m1),
                     cfg.last_rows_m1.eq(d.last_rows_m1), cfg.k.eq(d.k), cfg.groups.eq(d.groups),
                     cfg.otiles.eq(d.otiles), cfg.beats.eq(d.gk),
                     cfg.cout_g.eq(d.cout_g), cfg.x_zp.eq(d.x_zp),
                     sconv.zero_point.eq(d.y_zp), sconv.lo.eq(d.lo), sconv.hi.eq(d.hi)]
        m.d.comb += [sconv.param.en.eq(seq.p_en), sconv.param.addr.eq(seq.p_addr),
                     sconv.param.data.eq(seq.p_data)]
        # weight and channel stores (the channel store: the sequencer, the bias feeder, or
        # the max-pool unit's rescale table)
        ch_addr = bfeed.rd_addr
        if KIND_MAXPOOL in kinds:
            ch_addr = Mux(on_array, bfeed.rd_addr, mpool.t_addr)
            m.d.comb += mpool.t_data.eq(c_r.data)
        t_addr = wfeed.t_addr
        if dw_rows:
            on_dw = d.kind == KIND_DW
            ch_addr = Mux(on_dw, dwu.c_addr, ch_addr)
            t_addr = Mux(on_dw, dwu.t_addr, t_addr)
            m.d.comb += [dwu.c_data.eq(c_r.data), dwu.t_data.eq(t_r.data)]
        m.d.comb += [w_r.addr.eq(wfeed.w_addr), wfeed.w_data.eq(w_r.data),
                     t_r.addr.eq(t_addr), wfeed.t_data.eq(t_r.data),
                     c_r.addr.eq(Mux(seq.ch_sel, seq.ch_addr, ch_addr)),
                     seq.ch_data.eq(c_r.data), bfeed.rd_data.eq(c_r.data)]

        # the write path: every unit's requests (and the image loader's) through the placer
        out_cs = [f["out_c"] for f in descs if not f["skip"]]
        m.submodules.ptable = ptable = BlockRam(17, max(out_cs), use_primitive=prim,
                                                name="ptable", latency=lat)
        m.submodules.placer = placer = Placer(len(ptable.r_addr), self.use_primitive)
        m.d.comb += [ptable.w_en.eq(seq.pt_en), ptable.w_addr.eq(seq.pt_addr),
                     ptable.w_data.eq(seq.pt_data), ptable.r_addr.eq(placer.t_addr),
                     placer.t_data.eq(ptable.r_data),
                     a_w.en.eq(placer.wr_en), a_w.addr.eq(placer.wr_addr),
                     a_w.data.eq(placer.wr_data)]
        layer_done = done[KIND_ARRAY]
        for k, v in done.items():
            if k != KIND_ARRAY:
                layer_done = Mux(d.kind == k, v, layer_done)
        # a write lands arena.write_stages cycles after the placer issued it
        w_pend = [placer.wr_en]
        for k in range(arena.write_stages):
            nxt = Signal(name=f"w_pend{k + 1}")
            m.d.sync += nxt.eq(w_pend[-1])
            w_pend.append(nxt)
        writing = placer.busy | Cat(*w_pend[1:]).any()
        # registered: the units' done flags and the write counts reach the sequencer's
        # state register through one flip-flop (the sequencer waits for it)
        done_r = Signal()
        m.d.sync += done_r.eq(layer_done & ~writing)
        m.d.comb += seq.layer_done.eq(done_r)

        # host side: image load, start, status, logits
        busy = Signal()
        count = Signal(32)
        iv, ov = plan.input_view, plan.output_view
        c_in, ih, iw = plan.graph.input_shape
        img_busy, img_c, img_p, img_data = self._image_loader(m, ih * iw, c_in)
        m.d.comb += [self.busy.eq(busy), self.img_wr.ready.eq(~busy)]
        with m.If(busy):
            for k, (sel, wu, ru) in enumerate(units):
                with (m.If if k == 0 else m.Elif)(sel):
                    m.d.comb += [placer.en.eq(wu.wr_en), placer.pix.eq(wu.wr_pix),
                                 placer.ch.eq(wu.wr_ch), placer.data.eq(wu.wr_data),
                                 a_r.addr.eq(ru.rd_addr)]
            m.d.comb += [placer.base.eq(d.out_addr), placer.pitch.eq(d.out_pitch)]
        with m.Else():
            m.d.comb += [placer.en.eq(img_busy[-1]), placer.pix.eq(img_p), placer.ch.eq(img_c),
                         placer.data.eq(img_data), placer.direct.eq(1),
                         placer.base.eq(iv.addr), placer.pitch.eq(iv.pitch),
                         a_r.addr.eq(ov.addr + self.out_addr)]
        m.d.comb += [patch.rd_data.eq(a_r.data), self.out_data.eq(a_r.data)]
        if self.debug:
            m.d.comb += [seq.dbg_addr.eq(self.dbg_addr), self.dbg_data.eq(seq.dbg_data)]

        m.d.sync += self.done.eq(0)
        with m.If((self.start | self.img_wr.valid) & busy):
            m.d.sync += self.error.eq(1)
        # a start waits until the image's last writes have landed
        pending = Signal()
        with m.If(~busy & self.start):
            m.d.sync += pending.eq(1)
        # quiet: in the cycle before, no image byte was on its way (loader, placer, arena
        # write stages) and none arrived, so none is now; a register, so the start decision
        # is one gate from flip-flops (a start waits at most a cycle more)
        quiet = Signal()
        m.d.sync += quiet.eq(~writing & ~Cat(*img_busy).any()
                             & ~(self.img_wr.valid & self.img_wr.ready))
        with m.If(~busy & (self.start | pending) & quiet):
            m.d.sync += [busy.eq(1), count.eq(1), self.error.eq(0), pending.eq(0)]
            m.d.comb += seq.go.eq(1)
        with m.Elif(busy):
            m.d.sync += count.eq(count + 1)
            with m.If(seq.finished):
                m.d.sync += [busy.eq(0), self.done.eq(1), self.cycles.eq(count + 1)]
        return m

    def _image_loader(self, m, hw: int, c_in: int):
        """Image bytes (``img_wr``, CHW raster ``addr = c * hw + p``) to placer requests:
        ``c = addr // hw`` as ``(addr * M) >> shift`` (exact over the image's addresses,
        checked here), then ``c * hw``, then ``p = addr - c * hw``, every product registered
        before it is used. ``addr * M`` is a :class:`~hwgen.hw.dsp.Mult18` (the block's own
        input and output registers: a multiplier's combinational path alone is most of a
        cycle) when both fit in 17 bits, else an inferred product into a register. Returns
        the stage valid bits, ``c``, ``p`` and the data of the last stage."""
        n = max(c_in * hw, 2)
        mul, shift = _divider_constants(hw, n)
        a1 = Signal(range(n), name="img_a1")
        fire = self.img_wr.valid & self.img_wr.ready
        m.d.sync += a1.eq(self.img_wr.payload.addr)
        if max(n - 1, mul).bit_length() <= 17:
            m.submodules.img_mul = mult = Mult18(use_primitive=self.use_primitive)
            m.d.comb += [mult.a.eq(a1), mult.b.eq(mul)]
            prod, mul_lat = mult.p, Mult18.LATENCY
        else:
            prod = Signal((n * mul).bit_length(), name="img_prod")
            m.d.sync += prod.eq(a1 * mul)
            mul_lat = 1
        # stages: 1 (a1), the product after mul_lat more, then c, then c * hw, then p
        nst = 1 + mul_lat + 3
        vs = [Signal(name=f"img_v{k}") for k in range(1, nst + 1)]
        ds = [Signal(signed(8), name=f"img_d{k}") for k in range(1, nst + 1)]
        as_ = [a1] + [Signal(range(n), name=f"img_a{k}") for k in range(2, nst)]
        m.d.sync += [vs[0].eq(fire), ds[0].eq(self.img_wr.payload.data)]
        m.d.sync += [vs[k].eq(vs[k - 1]) for k in range(1, nst)]
        m.d.sync += [ds[k].eq(ds[k - 1]) for k in range(1, nst)]
        m.d.sync += [as_[k].eq(as_[k - 1]) for k in range(1, nst - 1)]
        # the product belongs to stage 1 + mul_lat (index mul_lat)
        c_a, c_b, c_out = (Signal(range(max(c_in, 2)), name=f"img_c{k}") for k in range(3))
        ch = Signal(range(n), name="img_ch")
        p_out = Signal(24, name="img_p")
        m.d.sync += [c_a.eq(prod >> shift),                      # stage mul_lat + 2
                     c_b.eq(c_a), ch.eq(c_a * hw),               # stage mul_lat + 3
                     c_out.eq(c_b), p_out.eq(as_[-1] - ch)]      # stage mul_lat + 4
        return vs, c_out, p_out, ds[-1]


def _divider_constants(d: int, n: int) -> tuple[int, int]:
    """``(M, s)`` with ``(a * M) >> s == a // d`` for every ``0 <= a < n``."""
    import numpy as np
    a = np.arange(n, dtype=np.int64)
    for s in range(0, 40):
        mul = -(-(1 << s) // d)
        if mul * n < (1 << 62) and np.array_equal((a * mul) >> s, a // d):
            return mul, s
    raise ValueError(f"no multiply-shift divider for /{d} over [0, {n})")


class _ReadPort:
    """``addr``/``data`` view of a :class:`BlockRam` read port (``data`` reinterpreted)."""

    def __init__(self, ram, shape=None):
        self.addr = ram.r_addr
        self.data = ram.r_data if shape is None else ram.r_data.as_signed()


class _WritePort:
    def __init__(self, ram):
        self.addr, self.data, self.en = ram.w_addr, ram.w_data, ram.w_en
