"""Channel-shuffle address permuter: ``ChannelShuffle(g)`` as a remap of write addresses.

ShuffleNet's shuffle on ``C = g * n`` channels makes output channel ``j`` from input channel
``perm[j] = (j % g) * n + j // g`` (:meth:`hwgen.ir.ChannelShuffle.permutation`). Instead of
moving data, the producer's writes go to the *shuffled* position: input channel ``i`` is
stored as channel

    ``j = (i % n) * g + i // n``                    (the inverse permutation)

of the buffer layout (:mod:`hwgen.hw.actbuf`), so reading the buffer in natural order yields
the shuffled tensor. No copy, no extra cycle: one write per cycle, a fixed pipeline latency.

Division by ``n`` without a divider
-----------------------------------
``q = i // n`` is below ``g <= max_groups``, so it is the number of thresholds
``t_k = k * n`` (``k = 1 .. max_groups - 1``) that ``i`` reaches: ``max_groups - 1``
comparators against thresholds formed from ``n`` by shift-adds (registered).
Then ``r = i - t_q`` (``= i % n``) and ``j = r * g + q``, with ``r * g`` a shift-add over
the few bits of ``g``. No DSP, no sequential divider; ``n`` need not be a power of two.
The buffer address ``base + p * pitch + j`` (or ``base + j * pitch + p``) takes one
:class:`hwgen.hw.dsp.UMul` (one MULT18X18D up to 17 x 17 bits).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .actbuf import LAYOUTS
from .dsp import UMul

__all__ = ["ShuffleParams", "AddressRemap", "inverse_shuffle", "remap_channel"]


def inverse_shuffle(channels: int, groups: int) -> np.ndarray:
    """``dest`` with ``dest[i]`` = buffer channel of input channel ``i`` (the inverse of
    :meth:`hwgen.ir.ChannelShuffle.permutation`)."""
    if groups < 1 or channels % groups:
        raise ValueError(f"{channels} channels are not divisible by shuffle groups {groups}")
    n = channels // groups
    i = np.arange(channels)
    return (i % n) * groups + i // n


def remap_channel(channel, shuffle: bool, groups: int, n: int):
    """Python twin of the hardware channel remap (``n`` = channels per group)."""
    if not shuffle:
        return channel
    return (channel % n) * groups + channel // n


def _bits(v: int) -> int:
    return max(1, int(v).bit_length())


@dataclass(frozen=True)
class ShuffleParams:
    """Structural parameters of the address remap.

    Parameters
    ----------
    max_channels: largest channel count C (concatenated total) of any layer.
    max_pixels: largest H * W of any layer.
    depth: buffer depth (entries); sets the address width.
    max_groups: largest shuffle group count g (ShuffleNet: 1, 2, 3, 4, 8).
    layout: ``"hwc"`` or ``"chw"`` (:mod:`hwgen.hw.actbuf`).
    use_primitive: the address multiplier as a MULT18X18D instance (True), behavioural
        (False), or decided by the platform (None).
    """
    max_channels: int
    max_pixels: int
    depth: int
    max_groups: int = 8
    layout: str = "hwc"
    use_primitive: bool | None = None

    def __post_init__(self):
        for name in ("max_channels", "max_pixels", "depth", "max_groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ShuffleParams.{name} must be a positive int, got {v!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown buffer layout {self.layout!r}; use one of {LAYOUTS}")
        if self.max_groups > self.max_channels:
            raise ValueError(f"max_groups {self.max_groups} exceeds max_channels "
                             f"{self.max_channels}")

    @property
    def channel_width(self) -> int:
        return _bits(self.max_channels - 1)

    @property
    def pixel_width(self) -> int:
        return _bits(self.max_pixels - 1)

    @property
    def addr_width(self) -> int:
        return _bits(self.depth - 1)

    @property
    def groups_width(self) -> int:
        return _bits(self.max_groups)

    @property
    def major_width(self) -> int:
        """Width of the index multiplied by the pitch (pixel for hwc, channel for chw)."""
        return self.pixel_width if self.layout == "hwc" else self.channel_width

    def config(self, *, channels: int, groups: int = 1, shuffle: bool = False, base: int = 0,
               pitch: int | None = None, pixels: int | None = None) -> dict:
        """Run-time config values for one layer, checked against the structure.

        Returns a dict with keys ``shuffle, groups, n, base, pitch`` (what the sequencer
        writes into the config members).
        """
        if not 1 <= channels <= self.max_channels:
            raise ValueError(f"{channels} channels outside 1..{self.max_channels} (max_channels)")
        if shuffle and (groups < 1 or groups > self.max_groups or channels % groups):
            raise ValueError(f"shuffle groups {groups} must divide {channels} channels and be at "
                             f"most max_groups {self.max_groups}")
        pixels = self.max_pixels if pixels is None else pixels
        if pitch is None:
            pitch = channels if self.layout == "hwc" else pixels
        g = groups if shuffle else 1
        return {"shuffle": int(bool(shuffle)), "groups": g, "n": channels // g, "base": base,
                "pitch": pitch}


def remap_in_layout(p: ShuffleParams) -> data.StructLayout:
    return data.StructLayout({"pixel": unsigned(p.pixel_width),
                              "channel": unsigned(p.channel_width),
                              "data": unsigned(8)})


def remap_out_layout(p: ShuffleParams) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(p.addr_width), "data": unsigned(8)})


class AddressRemap(wiring.Component):
    """(pixel, channel, value) stream -> (buffer address, value) stream, with the optional
    channel-shuffle remap.

    Throughput one beat per cycle; latency ``self.latency`` cycles: UMul latency + 1 for
    hwc, + 4 for chw (4 and 7 with one MULT18X18D, i.e. pixel and pitch up to 17 bits). A
    stall on ``o_stream`` stalls the whole pipeline (no bubble, no loss). The config members must be stable while a layer streams and for two
    cycles before its first beat (the thresholds ``k * n`` are registered).

    Members
    -------
    i_stream: In(stream of {pixel, channel, data}).
    o_stream: Out(stream of {addr, data}).
    shuffle: In(1); groups: In(groups_width) (g); n: In(channel_width + 1) (C / g);
    base: In(addr_width); pitch: In(addr_width + 1).
    """

    def __init__(self, params: ShuffleParams):
        if not isinstance(params, ShuffleParams):
            raise TypeError(f"expected ShuffleParams, got {type(params).__name__}")
        self.params = p = params
        self._mul = UMul(p.major_width, p.addr_width + 1, use_primitive=p.use_primitive)
        self.latency = self._mul.latency + (1 if p.layout == "hwc" else 4)
        super().__init__({
            "i_stream": In(stream.Signature(remap_in_layout(p))),
            "o_stream": Out(stream.Signature(remap_out_layout(p))),
            "shuffle": In(1),
            "groups": In(p.groups_width),
            "n": In(p.channel_width + 1),
            "base": In(p.addr_width),
            "pitch": In(p.addr_width + 1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        cw = p.channel_width + 1
        m.submodules.mul = mul = self._mul

        # --- per-layer thresholds t_k = k * n (registered shift-adds) -----------
        thr = [Signal(cw + p.groups_width, name=f"thr{k}") for k in range(p.max_groups)]
        for k in range(1, p.max_groups):
            m.d.sync += thr[k].eq(sum(self.n << b for b in range(k.bit_length()) if k >> b & 1))
        g_eff = Signal(p.groups_width)
        m.d.sync += g_eff.eq(Mux(self.shuffle, self.groups, 1))

        # --- stall-all pipeline --------------------------------------------------------
        advance = Signal()
        depth = self.latency
        valid = [Signal(name=f"v{s}") for s in range(depth + 1)]
        m.d.comb += [
            advance.eq(~self.o_stream.valid | self.o_stream.ready),
            self.i_stream.ready.eq(advance),
            valid[0].eq(self.i_stream.valid),
            mul.ce.eq(advance),
        ]
        with m.If(advance):
            for s in range(depth):
                m.d.sync += valid[s + 1].eq(valid[s])

        def delay(sig, n, name):
            """``sig`` delayed by ``n`` enabled cycles."""
            cur = sig
            for k in range(n):
                r = Signal.like(sig, name=f"{name}_d{k + 1}")
                with m.If(advance):
                    m.d.sync += r.eq(cur)
                cur = r
            return cur

        i = self.i_stream.payload
        # stage 1: q = #{k : c >= t_k}, r = c - t_q, computed from the registered beat
        c1 = delay(i.channel, 1, "c")
        flags = [Signal(name=f"ge{k}") for k in range(1, p.max_groups)]
        for k, f in zip(range(1, p.max_groups), flags):
            m.d.comb += f.eq(self.shuffle & (c1 >= thr[k]))
        q1 = Signal(p.groups_width)
        tq = Signal(cw + p.groups_width)
        m.d.comb += [q1.eq(sum(flags) if flags else 0), tq.eq(0)]
        for k, f in zip(range(1, p.max_groups), flags):
            with m.If(f):                    # thermometer code: the last true flag wins
                m.d.comb += tq.eq(thr[k])
        r1 = Signal(cw)
        m.d.comb += r1.eq(c1 - tq)
        # stage 2: j = r * g + q (shift-add over the bits of g)
        r2 = delay(r1, 1, "r")
        q2 = delay(q1, 1, "q")
        terms = [Mux(g_eff[b], r2 << b, 0) for b in range(p.groups_width)]
        j2 = Signal(p.channel_width + 1)
        m.d.comb += j2.eq(sum(terms) + q2)

        data_in = i.data
        if p.layout == "hwc":
            # product p * pitch starts with the beat; j (2 cycles) waits for it
            m.d.comb += [mul.a.eq(i.pixel), mul.b.eq(self.pitch)]
            j_at = delay(j2, mul.latency - 2, "j")
            minor = j_at
            data_at = delay(data_in, mul.latency, "data")
        else:
            # product j * pitch starts when j is known (2 cycles); the pixel waits
            j3 = delay(j2, 1, "jr")
            m.d.comb += [mul.a.eq(j3), mul.b.eq(self.pitch)]
            minor = delay(i.pixel, 3 + mul.latency, "pixel")
            data_at = delay(data_in, 3 + mul.latency, "data")
        addr = Signal(p.addr_width)
        data_o = Signal(8)
        with m.If(advance):
            m.d.sync += [addr.eq(self.base + mul.p + minor), data_o.eq(data_at)]
        m.d.comb += [
            self.o_stream.valid.eq(valid[depth]),
            self.o_stream.payload.addr.eq(addr),
            self.o_stream.payload.data.eq(data_o),
        ]
        return m
