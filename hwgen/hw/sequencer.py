"""Sequencer: walks the layer program, one layer at a time.

The program store (block RAM, one :data:`hwgen.hw.layer_io.DESC` word per program
descriptor, initialised from the compiler's program by
:func:`hwgen.hw.layer_io.layer_descriptors`) is read in order. Per layer the FSM

1. ``FETCH``/``FETCH2``/``LATCH``: reads the descriptor into the layer register (3 cycles); address
   remaps (``skip``) go straight to ``NEXT``;
2. ``PARAM``: one cycle per output channel: writes the channel's place-table entry (its
   offset in the output tensor's pixel, after concat offsets and channel shuffle) and, for
   systolic-array layers, copies its requantisation scale from the channel store into the
   requantiser's parameter memory (one record per output channel, or the single pooling
   record for every channel);
3. ``START``/``WAIT1``/``WAIT2``/``RUN``: pulses ``run_start`` (the feeders and the writer
   restart their loops; the accelerator registers the pulse per unit and ``layer_done``
   once, so the units' done flags are first looked at in ``RUN``) and waits for
   ``layer_done``;
4. ``NEXT``: stores the layer's cycle count (start of ``FETCH`` to the end of ``RUN``) in
   the layer-cycle memory (read back through ``dbg_addr``/``dbg_data``), then moves on;
   after the last descriptor pulses ``finished``.

Overhead per layer: about ``out_c + 9`` cycles outside ``RUN``.
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .bram import kept_reg
from .dsp import use_primitive_for
from .layer_io import DESC, MEM_LATENCY
from .requant import PARAM_LAYOUT

__all__ = ["Sequencer"]


class Sequencer(wiring.Component):
    """Layer-program FSM (see the module docstring).

    Parameters
    ----------
    descs: list of dicts, the :data:`DESC` values of each layer.
    rq_ch_bits: address width of the requantiser's parameter memory.

    Members
    -------
    go: In(1), start an inference. finished: Out(1), pulse after the last layer.
    desc: Out(DESC), the current layer. run_start: Out(1) pulse. layer_done: In(1).
    pt_en, pt_addr, pt_data: place-table write port (:class:`hwgen.hw.layer_io.Placer`):
    entry ``o`` = ``out_post + s(out_pre + o)`` for the layer's output channels.
    nv_data: written with ``pt_addr``: ``min(cols, cout_g - o % cout_g) - 1``, the lanes an
    array output beat starting at channel ``o`` carries, minus one
    (:class:`hwgen.hw.layer_io.OutputWriter`).
    ch_sel: Out(1), the sequencer owns the channel-store read port (``ch_addr``/``ch_data``).
    p_en, p_addr, p_data: requantiser parameter write port.
    dbg_addr: In, dbg_data: Out(32): registered read of the per-layer cycle counts.
    """

    #: Width of one program-ROM slice (each has its own copy of the descriptor index).
    ROM_SLICE = 128

    def __init__(self, descs: list[dict], rows: int, rq_ch_bits: int, cols: int = 1):
        self.descs = descs
        self.rows = rows
        self.cols = cols
        self.n = len(descs)
        self.ab = max(1, ceil_log2(self.n))
        super().__init__({
            "go": In(1), "finished": Out(1), "desc": Out(DESC), "run_start": Out(1),
            "layer_done": In(1), "ch_sel": Out(1),
            "pt_en": Out(1), "pt_addr": Out(16), "pt_data": Out(17), "nv_data": Out(8),
            "ch_addr": Out(24), "ch_data": In(64),
            "p_en": Out(1), "p_addr": Out(rq_ch_bits), "p_data": Out(PARAM_LAYOUT),
            "dbg_addr": In(self.ab), "dbg_data": Out(32), "index": Out(self.ab),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.lcyc = lmem = Memory(shape=unsigned(32), depth=self.n, init=[])
        lw = lmem.write_port()
        lr = lmem.read_port()
        m.d.comb += [lr.addr.eq(self.dbg_addr), self.dbg_data.eq(lr.data)]

        d = Signal(DESC)
        m.d.comb += self.desc.eq(d)
        idx = Signal(self.ab)
        m.d.comb += self.index.eq(idx)
        # The program ROM in slices of ROM_SLICE bits, each read through its own copy of
        # the descriptor index (on ECP5 kept apart): one index register would drive the
        # address inputs of every LUT of a ~1000-bit-wide ROM. FETCH loads the copies,
        # FETCH2 the slices' read registers, LATCH the descriptor.
        prim = use_primitive_for(platform, None)
        words = [DESC.const(f).as_value().value for f in self.descs]
        rom_data = []
        # the descriptor loads in LATCH, slice by slice, each slice's ~ROM_SLICE flip-flops
        # enabled by a register of its own set in FETCH2 (kept apart on ECP5): no decode of
        # the state in front of a thousand enables
        latch_n = Signal()               # the next cycle is LATCH
        slices = range(0, DESC.size, self.ROM_SLICE)
        latch = kept_reg(m, Cat(*[latch_n] * len(slices)), "latch", prim)
        for k, lo in enumerate(slices):
            w = min(self.ROM_SLICE, DESC.size - lo)
            mem = Memory(shape=unsigned(w), depth=self.n,
                         init=[(v >> lo) & ((1 << w) - 1) for v in words])
            m.submodules[f"rom{k}"] = mem
            rpk = mem.read_port()
            m.d.comb += rpk.addr.eq(kept_reg(m, idx, f"idx{k}", prim))
            rom_data.append(rpk.data)
            with m.If(latch[k]):
                m.d.sync += d.as_value()[lo:lo + len(rpk.data)].eq(rpk.data)
        rom_word = Signal(DESC)
        m.d.comb += rom_word.as_value().eq(Cat(*rom_data))
        lcyc = Signal(32)
        m.d.sync += lcyc.eq(lcyc + 1)
        o = Signal(17)
        more = Signal()                 # PARAM: channels left (o < out_c), a register
        # the channel store's address is registered (ch_addr, with ch_sel), its records
        # arrive MEM_LATENCY cycles after that
        pvs = [Signal(name=f"pv{k}") for k in range(MEM_LATENCY + 1)]
        pos = [Signal(17, name=f"po{k}") for k in range(MEM_LATENCY + 1)]
        pv0, pv, po0, po = pvs[0], pvs[-1], pos[0], pos[-1]
        m.d.sync += pv0.eq(0)
        m.d.sync += [pvs[k].eq(pvs[k - 1]) for k in range(1, MEM_LATENCY + 1)]
        m.d.sync += [pos[k].eq(pos[k - 1]) for k in range(1, MEM_LATENCY + 1)]
        m.d.sync += [self.ch_addr.eq(d.ch_base + Mux(d.ch_step, o, 0)), self.ch_sel.eq(0)]
        # the write leaves through registers (the channel store's output travels to the
        # requantiser's lanes in two hops): it lands MEM_LATENCY + 2 cycles after PARAM,
        # long before the layer's first result reaches the requantiser
        m.d.sync += [self.p_en.eq(pv), self.p_addr.eq(po),
                     self.p_data.m.eq(self.ch_data[32:56]), self.p_data.e.eq(self.ch_data[56:62])]
        # place table: s(j) = (j % sh_n) * sh_g + j // sh_n for j = out_pre + o, walked
        # incrementally (q = j // sh_n, r = j % sh_n, rg = r * sh_g) from the descriptor's
        # start values; without a shuffle s(j) = j.
        # Two register stages: S1 the shuffled index (or out_pre + o) and cout_g - og - 1,
        # S2 the table words (pt_* / nv_data registered).
        q, rg = Signal(16), Signal(17)
        # o % cout_g and r = j % sh_n as down-counters to their wrap (cout_g - 1 - o % cout_g,
        # sh_n - 1 - r), reloaded from registers set in LATCH: a compare with zero, not an
        # adder and a wide compare, sits in front of them (v57 seed 4: og == cout_g - 1,
        # 10 cells, 10.2 ns)
        og_left, r_left = Signal(16), Signal(16)
        cg_m1, shn_m1 = Signal(16), Signal(16)
        en1, addr1, idx1, lm1 = Signal(), Signal(16), Signal(17), Signal(signed(18))
        m.d.sync += [en1.eq(0), self.pt_en.eq(en1), self.pt_addr.eq(addr1),
                     self.pt_data.eq(d.out_post + idx1),
                     self.nv_data.eq(Mux(lm1 > self.cols - 1, self.cols - 1, lm1))]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.go):
                    m.d.sync += idx.eq(0)
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.sync += lcyc.eq(1)
                m.next = "FETCH2"
            with m.State("FETCH2"):
                m.d.comb += latch_n.eq(1)
                m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += [o.eq(0), q.eq(rom_word.sh_q0),
                             more.eq(rom_word.out_c != 0),
                             og_left.eq(rom_word.cout_g - 1), cg_m1.eq(rom_word.cout_g - 1),
                             r_left.eq(rom_word.sh_n - 1 - rom_word.sh_r0),
                             shn_m1.eq(rom_word.sh_n - 1), rg.eq(rom_word.sh_rg0)]
                with m.If(rom_word.skip):
                    m.next = "NEXT"
                with m.Else():
                    m.next = "PARAM"
            with m.State("PARAM"):
                # one output channel per cycle: its requantisation record (array layers)
                # and its place-table entry (every layer)
                m.d.sync += self.ch_sel.eq(1)
                with m.If(more):
                    m.d.sync += [pv0.eq(d.kind == 0), po0.eq(o), o.eq(o + 1),
                                 more.eq(o + 1 != d.out_c),
                                 en1.eq(1), addr1.eq(o),
                                 idx1.eq(Mux(d.sh_g != 0, rg + q, d.out_pre + o)),
                                 lm1.eq(og_left), r_left.eq(r_left - 1),
                                 rg.eq(rg + d.sh_g), og_left.eq(og_left - 1)]
                    with m.If(og_left == 0):
                        m.d.sync += og_left.eq(cg_m1)
                    with m.If(r_left == 0):
                        m.d.sync += [r_left.eq(shn_m1), rg.eq(0), q.eq(q + 1)]
                with m.Else():
                    m.next = "START"
            with m.State("START"):
                m.d.comb += self.run_start.eq(1)
                m.next = "WAIT1"
            # the units see run_start through registers of their own (START + 1), they are
            # busy from START + 2 on, and layer_done comes registered (START + 3)
            with m.State("WAIT1"):
                m.next = "WAIT2"
            with m.State("WAIT2"):
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.layer_done):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += [lw.en.eq(1), lw.addr.eq(idx), lw.data.eq(lcyc)]
                m.d.sync += idx.eq(idx + 1)
                with m.If(idx == self.n - 1):
                    m.next = "FIN"
                with m.Else():
                    m.next = "FETCH"
            with m.State("FIN"):
                m.d.comb += self.finished.eq(1)
                m.next = "IDLE"
        return m
