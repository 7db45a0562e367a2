"""Activation buffer: int8 tensors in block RAM, and the address layout every writer shares.

Layout
------
A tensor of ``C`` channels and ``P = H * W`` pixels (pixel index ``p = y * W + x``) lives at
one int8 per address, in one of two orders (:class:`Layout`, a structural choice):

* ``"hwc"`` (pixel-major): ``addr = base + p * pitch + c`` with ``pitch >= C``; the channels
  of a pixel are contiguous (what a lane-per-channel engine reads and writes);
* ``"chw"`` (channel-major): ``addr = base + c * pitch + p`` with ``pitch >= H * W``; one
  plane per channel.

``base`` and ``pitch`` are run-time values (set per layer by the sequencer); :func:`address`
is the same formula in Python, for the compiler and the testbenches.

Channel shuffle (:mod:`hwgen.hw.shuffle`) and concatenation (:mod:`hwgen.hw.concat`) are
transforms of the channel index ``c`` before this formula, so both cost no copy and no cycle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["LAYOUTS", "address", "tensor_to_buffer", "buffer_to_tensor", "ActBufferParams",
           "ActivationBuffer"]

LAYOUTS = ("hwc", "chw")


def address(layout: str, base: int, pitch: int, channel, pixel):
    """Buffer address of ``(channel, pixel)`` under ``layout`` (NumPy arrays broadcast)."""
    if layout == "hwc":
        return base + np.asarray(pixel) * pitch + np.asarray(channel)
    if layout == "chw":
        return base + np.asarray(channel) * pitch + np.asarray(pixel)
    raise ValueError(f"unknown buffer layout {layout!r}; use one of {LAYOUTS}")


def _check_geometry(layout: str, base: int, pitch: int, channels: int, pixels: int, depth: int):
    need = channels if layout == "hwc" else pixels
    if pitch < need:
        raise ValueError(f"{layout} pitch {pitch} is smaller than {need} "
                         f"({'channels' if layout == 'hwc' else 'pixels'}); raise the pitch")
    last = int(address(layout, base, pitch, channels - 1, pixels - 1))
    if base < 0 or last >= depth:
        raise ValueError(f"tensor of {channels} channels x {pixels} pixels at base {base}, pitch "
                         f"{pitch} ends at address {last}, beyond the buffer depth {depth}")


def tensor_to_buffer(x: np.ndarray, layout: str, base: int, pitch: int, depth: int,
                     fill: int = 0) -> np.ndarray:
    """Memory image (length ``depth``) holding the (C, H, W) tensor ``x`` at ``base``."""
    c, h, w = x.shape
    _check_geometry(layout, base, pitch, c, h * w, depth)
    mem = np.full(depth, fill, np.int64)
    ch, px = np.meshgrid(np.arange(c), np.arange(h * w), indexing="ij")
    mem[address(layout, base, pitch, ch, px)] = x.reshape(c, h * w)
    return mem


def buffer_to_tensor(mem: np.ndarray, shape, layout: str, base: int, pitch: int) -> np.ndarray:
    """The (C, H, W) int8 tensor stored in the memory image ``mem`` at ``base``."""
    c, h, w = shape
    _check_geometry(layout, base, pitch, c, h * w, len(mem))
    ch, px = np.meshgrid(np.arange(c), np.arange(h * w), indexing="ij")
    vals = np.asarray(mem, np.int64)[address(layout, base, pitch, ch, px)]
    return ((vals + 128) % 256 - 128).astype(np.int8).reshape(c, h, w)


@dataclass(frozen=True)
class ActBufferParams:
    """Structural parameters of an :class:`ActivationBuffer`.

    Parameters
    ----------
    depth: number of int8 entries (block RAM: 2048 entries per DP16KD at 8+1 bits).
    """
    depth: int

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 2:
            raise ValueError(f"buffer depth must be an int >= 2, got {self.depth!r}")

    @property
    def addr_width(self) -> int:
        return max(1, (self.depth - 1).bit_length())


def write_layout(addr_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_width), "data": unsigned(8)})


class ActivationBuffer(wiring.Component):
    """``depth`` int8 entries in one ``lib.memory.Memory`` (block RAM on ECP5).

    Members
    -------
    w_stream: In(stream of {addr, data}); always ready, one write per cycle, visible to a
        read issued the cycle after the write.
    r_addr: In(addr_width). r_data: Out(8): the entry at the ``r_addr`` of the previous
        cycle (registered read, latency 1 cycle, one read per cycle).
    """

    def __init__(self, params: ActBufferParams):
        if not isinstance(params, ActBufferParams):
            raise TypeError(f"expected ActBufferParams, got {type(params).__name__}")
        self.params = params
        aw = params.addr_width
        super().__init__({
            "w_stream": In(stream.Signature(write_layout(aw))),
            "r_addr": In(aw),
            "r_data": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(8), depth=self.params.depth, init=[])
        wp = mem.write_port()
        rp = mem.read_port(transparent_for=())
        m.d.comb += [
            self.w_stream.ready.eq(1),
            wp.addr.eq(self.w_stream.payload.addr),
            wp.data.eq(self.w_stream.payload.data),
            wp.en.eq(self.w_stream.valid),
            rp.addr.eq(self.r_addr),
            self.r_data.eq(rp.data),
        ]
        return m
