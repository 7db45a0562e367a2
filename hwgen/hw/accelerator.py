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

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .accel_if import AccelParams, AccelSignature
from .layer_io import (KIND_ADD, KIND_ARRAY, KIND_AVGPOOL, AddUnit, AvgPoolUnit,
                       BiasFeeder, MaxPoolUnit, avgpool_configs, OutputWriter, PatchFeeder,
                       WeightFeeder, layer_descriptors, weight_stores)
from .sequencer import Sequencer
from .systolic import SystolicConv, SystolicParams

__all__ = ["Accelerator", "AccelDebugSignature"]


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
        self.layers = layer_descriptors(plan, self.cols)
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

    @property
    def layer_names(self) -> list[str]:
        """Name of the layer of each program descriptor (the debug port's index)."""
        return [l.name for l in self.layers]

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        R, C = self.rows, self.cols
        words, dw_bytes, _, ch_words, _ = weight_stores(plan, C)

        m.submodules.arena = arena = Memory(shape=signed(8), depth=max(plan.arena_bytes, 2),
                                            init=[])
        m.submodules.wstore = wstore = Memory(shape=unsigned(8 * C), depth=len(words), init=words)
        m.submodules.tstore = tstore = Memory(shape=signed(8), depth=len(dw_bytes), init=dw_bytes)
        m.submodules.chstore = chstore = Memory(shape=unsigned(64), depth=len(ch_words),
                                                init=ch_words)
        a_w, a_r = arena.write_port(), arena.read_port()
        w_r, t_r, c_r = wstore.read_port(), tstore.read_port(), chstore.read_port()

        m.submodules.sconv = sconv = SystolicConv(self.sa, channels=self.max_out_c)
        descs = [l.fields for l in self.layers]
        m.submodules.seq = seq = Sequencer(descs, R, len(sconv.param.addr))
        m.submodules.patch = patch = PatchFeeder()
        m.submodules.wfeed = wfeed = WeightFeeder(C)
        m.submodules.bfeed = bfeed = BiasFeeder(C)
        m.submodules.writer = writer = OutputWriter(C, sconv.o_stream.payload.shape())
        m.submodules.maxpool = mpool = MaxPoolUnit()
        has_add = any(f["kind"] == KIND_ADD for f in descs)
        d = seq.desc
        on_array = d.kind == KIND_ARRAY
        on_add = d.kind == KIND_ADD
        if has_add:
            m.submodules.addu = addu = AddUnit(self.use_primitive)
            m.d.comb += [addu.desc.eq(d), addu.start.eq(seq.run_start & on_add),
                         addu.rd_data.eq(a_r.data)]
            units = [(on_array, writer, patch), (on_add, addu, addu), (1, mpool, mpool)]
            add_done = addu.done
        else:
            units = [(on_array, writer, patch), (1, mpool, mpool)]
            add_done = 1
        on_avg = d.kind == KIND_AVGPOOL
        avg_done = 1
        if any(f["kind"] == KIND_AVGPOOL for f in descs):
            cfgs, mw, mh = avgpool_configs(plan)
            m.submodules.avgu = avgu = AvgPoolUnit(cfgs, mw, mh, seq.ab, self.use_primitive)
            m.d.comb += [avgu.desc.eq(d), avgu.start.eq(seq.run_start & on_avg),
                         avgu.rd_data.eq(a_r.data), avgu.index.eq(seq.index)]
            units.insert(-1, (on_avg, avgu, avgu))
            avg_done = avgu.done

        for u in (patch, wfeed, bfeed, writer, mpool):
            m.d.comb += u.desc.eq(d)
        m.d.comb += [wfeed.tiles.eq(seq.tiles), bfeed.tiles.eq(seq.tiles),
                     patch.start.eq(seq.run_start & on_array),
                     wfeed.start.eq(seq.run_start & on_array),
                     bfeed.start.eq(seq.run_start & on_array),
                     writer.start.eq(seq.run_start & on_array),
                     mpool.start.eq(seq.run_start & ~on_array & ~on_add & ~on_avg)]
        wiring.connect(m, patch.o_stream, sconv.a_stream)
        wiring.connect(m, wfeed.o_stream, sconv.w_stream)
        wiring.connect(m, bfeed.o_stream, sconv.b_stream)
        wiring.connect(m, sconv.o_stream, writer.i_stream)
        cfg = sconv.cfg
        m.d.comb += [cfg.pixels.eq(d.pixels), cfg.k.eq(d.k), cfg.groups.eq(d.groups),
                     cfg.otiles.eq(d.otiles), cfg.beats.eq(d.groups * d.k),
                     cfg.cout_g.eq(d.cout_g), cfg.x_zp.eq(d.x_zp),
                     sconv.zero_point.eq(d.y_zp), sconv.lo.eq(d.lo), sconv.hi.eq(d.hi),
                     sconv.param.en.eq(seq.p_en), sconv.param.addr.eq(seq.p_addr),
                     sconv.param.data.eq(seq.p_data)]
        # weight and channel stores
        m.d.comb += [w_r.addr.eq(wfeed.w_addr), wfeed.w_data.eq(w_r.data),
                     t_r.addr.eq(wfeed.t_addr), wfeed.t_data.eq(t_r.data),
                     c_r.addr.eq(Mux(seq.ch_sel, seq.ch_addr,
                                     Mux(on_array, bfeed.rd_addr, mpool.t_addr))),
                     seq.ch_data.eq(c_r.data), bfeed.rd_data.eq(c_r.data),
                     mpool.t_data.eq(c_r.data)]
        m.d.comb += seq.layer_done.eq(Mux(on_array,
                                          (writer.count == d.beats) & patch.done & wfeed.done
                                          & bfeed.done & ~sconv.busy,
                                          mpool.done & add_done & avg_done))

        # host side: image load, start, status, logits
        busy = Signal()
        count = Signal(32)
        iv, ov = plan.input_view, plan.output_view
        _, ih, iw = plan.graph.input_shape
        hw = ih * iw
        ia = self.img_wr.payload.addr
        m.d.comb += [self.busy.eq(busy), self.img_wr.ready.eq(~busy)]
        with m.If(busy):
            for k, (sel, wu, ru) in enumerate(units):
                with (m.If if k == 0 else m.Elif)(sel):
                    m.d.comb += [a_w.en.eq(wu.wr_en), a_w.addr.eq(wu.wr_addr),
                                 a_w.data.eq(wu.wr_data), a_r.addr.eq(ru.rd_addr)]
        with m.Else():
            m.d.comb += [a_w.en.eq(self.img_wr.valid),
                         a_w.addr.eq(iv.addr + (ia % hw) * iv.pitch + ia // hw),
                         a_w.data.eq(self.img_wr.payload.data),
                         a_r.addr.eq(ov.addr + self.out_addr)]
        m.d.comb += [patch.rd_data.eq(a_r.data), mpool.rd_data.eq(a_r.data),
                     self.out_data.eq(a_r.data)]
        if self.debug:
            m.d.comb += [seq.dbg_addr.eq(self.dbg_addr), self.dbg_data.eq(seq.dbg_data)]

        m.d.sync += self.done.eq(0)
        with m.If((self.start | self.img_wr.valid) & busy):
            m.d.sync += self.error.eq(1)
        with m.If(~busy & self.start):
            m.d.sync += [busy.eq(1), count.eq(1), self.error.eq(0)]
            m.d.comb += seq.go.eq(1)
        with m.Elif(busy):
            m.d.sync += count.eq(count + 1)
            with m.If(seq.finished):
                m.d.sync += [busy.eq(0), self.done.eq(1), self.cycles.eq(count + 1)]
        return m
