"""Concat buffer: producers write disjoint channel ranges of one activation buffer.

``Concat`` on channels (SqueezeNet's fire expand1x1 ++ expand3x3, ShuffleNet's stride-2
branch ++ average-pool shortcut) costs nothing: producer port ``k`` adds its channel offset
``offset_k`` (the channels of the inputs before it) to each beat's channel index, then the
beat goes through the shared :class:`hwgen.hw.shuffle.AddressRemap` (so a channel shuffle of
the concatenated tensor composes with it: ``j = shuffle(offset_k + c)``) into the block-RAM
:class:`hwgen.hw.actbuf.ActivationBuffer`. Reading the buffer in natural order
(:func:`hwgen.hw.actbuf.address`) yields the concatenated (and shuffled) tensor.

Cycles: one write per cycle with no extra cycle as long as the producers take turns (the
sequencer runs one layer at a time, so the two convs of a fire module, or a branch and its
shortcut, are distinct phases). If two ports are valid in the same cycle the lower-numbered
one wins and the other is stalled (``ready`` low) for that cycle: still correct, and every
cycle still writes one beat. An ECP5 block RAM has two ports and one is the read port, so a
single write port is what maps to DP16KD (yosys maps a 2-write + 1-read memory to flip-flops).
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .actbuf import ActBufferParams, ActivationBuffer
from .shuffle import AddressRemap, ShuffleParams, remap_in_layout

__all__ = ["ConcatParams", "ConcatBuffer"]


@dataclass(frozen=True)
class ConcatParams:
    """Structural parameters of a :class:`ConcatBuffer`.

    Parameters
    ----------
    remap: the buffer geometry and shuffle limits (:class:`hwgen.hw.shuffle.ShuffleParams`);
        ``remap.depth`` is the buffer depth.
    ports: number of producer ports (2 for a fire module or a ShuffleNet stride-2 unit).
    """
    remap: ShuffleParams
    ports: int = 2

    def __post_init__(self):
        if not isinstance(self.remap, ShuffleParams):
            raise TypeError(f"ConcatParams.remap must be ShuffleParams, "
                            f"got {type(self.remap).__name__}")
        if not isinstance(self.ports, int) or not 1 <= self.ports <= 8:
            raise ValueError(f"ConcatParams.ports must be an int in 1..8, got {self.ports!r}")

    def offsets(self, channels: list[int]) -> list[int]:
        """Channel offset of each producer for inputs of ``channels`` channels each."""
        if len(channels) > self.ports:
            raise ValueError(f"{len(channels)} concat inputs but only {self.ports} producer ports")
        if sum(channels) > self.remap.max_channels:
            raise ValueError(f"concat of {sum(channels)} channels exceeds max_channels "
                             f"{self.remap.max_channels}")
        out, acc = [], 0
        for c in channels:
            out.append(acc)
            acc += c
        return out + [0] * (self.ports - len(channels))


class ConcatBuffer(wiring.Component):
    """Activation buffer with ``ports`` producer ports, each with a channel offset.

    Throughput one write per cycle (see the module docstring for simultaneous producers);
    write latency ``self.latency`` cycles (the remap pipeline) before a read sees it.

    Members
    -------
    p0 .. p{ports-1}: In(stream of {pixel, channel, data}), ``channel`` local to the producer.
    offset0 .. offset{ports-1}: In(channel_width): the producer's first concatenated channel.
    shuffle, groups, n, base, pitch: remap config (:class:`hwgen.hw.shuffle.AddressRemap`).
    r_addr: In(addr_width); r_data: Out(8), registered read (latency 1).
    busy: Out(1): a write is still in the remap pipeline.
    """

    def __init__(self, params: ConcatParams):
        if not isinstance(params, ConcatParams):
            raise TypeError(f"expected ConcatParams, got {type(params).__name__}")
        self.params = params
        rp = params.remap
        self._remap = AddressRemap(rp)
        self.latency = self._remap.latency
        members = {}
        for k in range(params.ports):
            members[f"p{k}"] = In(stream.Signature(remap_in_layout(rp)))
            members[f"offset{k}"] = In(rp.channel_width)
        members.update({
            "shuffle": In(1),
            "groups": In(rp.groups_width),
            "n": In(rp.channel_width + 1),
            "base": In(rp.addr_width),
            "pitch": In(rp.addr_width + 1),
            "r_addr": In(rp.addr_width),
            "r_data": Out(8),
            "busy": Out(1),
        })
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        rp = self.params.remap
        m.submodules.remap = remap = self._remap
        m.submodules.buf = buf = ActivationBuffer(ActBufferParams(rp.depth))
        for name in ("shuffle", "groups", "n", "base", "pitch"):
            m.d.comb += getattr(remap, name).eq(getattr(self, name))
        wiring.connect(m, remap.o_stream, buf.w_stream)
        m.d.comb += [buf.r_addr.eq(self.r_addr), self.r_data.eq(buf.r_data)]

        # fixed-priority arbiter: port 0 first
        ports = [getattr(self, f"p{k}") for k in range(self.params.ports)]
        offs = [getattr(self, f"offset{k}") for k in range(self.params.ports)]
        taken = Signal(name="taken_none")  # constant 0: nothing granted before port 0
        for k, (port, off) in enumerate(zip(ports, offs)):
            grant = Signal(name=f"grant{k}")
            m.d.comb += [grant.eq(port.valid & ~taken),
                         port.ready.eq(remap.i_stream.ready & ~taken)]
            with m.If(grant):
                m.d.comb += [
                    remap.i_stream.valid.eq(1),
                    remap.i_stream.payload.pixel.eq(port.payload.pixel),
                    remap.i_stream.payload.channel.eq(port.payload.channel + off),
                    remap.i_stream.payload.data.eq(port.payload.data),
                ]
            nxt = Signal(name=f"taken{k}")
            m.d.comb += nxt.eq(taken | port.valid)
            taken = nxt

        # busy while any write is in flight (for the sequencer's end-of-layer check)
        inflight = Signal(range(self.latency + 2))
        fire_in = remap.i_stream.valid & remap.i_stream.ready
        fire_out = remap.o_stream.valid & remap.o_stream.ready
        m.d.sync += inflight.eq(inflight + fire_in - fire_out)
        m.d.comb += self.busy.eq(inflight != 0)
        return m
