"""The accelerator's interface as the board sees it, and a small fake accelerator for tests.

Contract (:class:`AccelSignature`, from the accelerator's side)
--------------------------------------------------------------
* ``img_wr``: ``In(stream.Signature(StructLayout{addr: unsigned(A), data: signed(8)}))`` —
  one int8 input byte per beat, at ``addr`` in CHW raster order (``c*H*W + y*W + x``);
  ``A = ceil_log2(in_bytes)``. Writes are accepted only while the accelerator is idle
  (``ready`` may be low while ``busy``).
* ``start``: ``In(1)``, a one-cycle pulse that starts an inference on the image written so
  far. Ignored while ``busy``.
* ``busy``: ``Out(1)``, high from the cycle after ``start`` until ``done``.
* ``done``: ``Out(1)``, a one-cycle pulse when the logits are ready.
* ``error``: ``Out(1)``, level; set by a fault, cleared by the next accepted ``start``.
* ``out_addr``: ``In(unsigned(B))``, ``out_data``: ``Out(signed(8))`` — pipelined read of
  logit ``out_addr`` (``B = ceil_log2(n_out)``): ``out_data`` shows the logit addressed
  :data:`OUT_LATENCY` (6) cycles earlier (the accelerator's pipelined block-RAM read); hold
  ``out_addr`` that long. Valid while not ``busy``.
* ``cycles``: ``Out(32)``, the length of the last inference in clock cycles: ``done`` is high
  exactly ``cycles`` cycles after the cycle in which ``start`` was high.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["AccelParams", "AccelSignature", "FakeAccelerator", "fake_logits", "OUT_LATENCY"]

#: Cycles from ``out_addr`` to its logit on ``out_data``.
OUT_LATENCY = 6


@dataclass(frozen=True)
class AccelParams:
    """Sizes of the accelerator interface.

    Parameters
    ----------
    in_bytes: input image size in bytes (C*H*W int8 values).
    n_out: number of int8 logits.
    """
    in_bytes: int
    n_out: int

    def __post_init__(self):
        for name in ("in_bytes", "n_out"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"AccelParams.{name} must be a positive integer, not {v!r}")
        if self.in_bytes > 1 << 24:
            raise ValueError(f"AccelParams.in_bytes = {self.in_bytes} exceeds the host link's "
                             f"24-bit image offsets (16 MiB)")
        if self.n_out > 0xFFFF:
            raise ValueError(f"AccelParams.n_out = {self.n_out} exceeds the host link's 16-bit "
                             f"logit count (65535)")

    @property
    def addr_bits(self) -> int:
        """A: width of ``img_wr.payload.addr``."""
        return max(1, ceil_log2(self.in_bytes))

    @property
    def out_bits(self) -> int:
        """B: width of ``out_addr``."""
        return max(1, ceil_log2(self.n_out))

    @property
    def img_layout(self) -> data.StructLayout:
        return data.StructLayout({"addr": unsigned(self.addr_bits), "data": signed(8)})


class AccelSignature(wiring.Signature):
    """The accelerator's ports (its own view; the host link uses ``.flip()``)."""

    def __init__(self, params: AccelParams):
        if not isinstance(params, AccelParams):
            raise TypeError(f"AccelSignature takes AccelParams, not {type(params).__name__}")
        self.params = params
        super().__init__({
            "img_wr": In(stream.Signature(params.img_layout)),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "out_addr": In(unsigned(params.out_bits)),
            "out_data": Out(signed(8)),
            "cycles": Out(32),
        })

    def __eq__(self, other):
        return isinstance(other, AccelSignature) and other.params == self.params

    def __repr__(self):
        return f"AccelSignature({self.params})"


def _wrap8(v: np.ndarray) -> np.ndarray:
    return ((np.asarray(v, dtype=np.int64) + 128) % 256 - 128).astype(np.int8)


def fake_logits(image, n_out: int) -> np.ndarray:
    """Python model of :class:`FakeAccelerator`.

    ``S = sum(image)``; ``logits[i] = wrap_int8(S + 2 * image[i % in_bytes] + i)``
    (two's-complement wrap to int8). Every input byte changes every logit (through ``S``) and
    the logits depend on the bytes' positions.
    """
    x = np.asarray(image).astype(np.int64).reshape(-1)
    s = int(x.sum())
    i = np.arange(n_out, dtype=np.int64)
    return _wrap8(s + 2 * x[i % x.size] + i)


@dataclass(frozen=True)
class FakeParams:
    """A :class:`FakeAccelerator`: ``done`` comes ``latency`` cycles after ``start``
    (``cycles`` reads back exactly ``latency``); at least ``in_bytes + n_out + 4``."""
    accel: AccelParams
    latency: int

    def __post_init__(self):
        need = self.accel.in_bytes + self.accel.n_out + 4
        if not isinstance(self.latency, int) or self.latency < need:
            raise ValueError(f"FakeAccelerator latency {self.latency!r} too small: it needs at "
                             f"least in_bytes + n_out + 4 = {need} cycles")


class FakeAccelerator(wiring.Component):
    """A stand-in accelerator with the real one's interface (:class:`AccelSignature`).

    Computes :func:`fake_logits`: sums the image (``in_bytes`` cycles, one block-RAM read per
    cycle), then writes the ``n_out`` logits (one per cycle), then waits until exactly
    ``latency`` cycles have passed since ``start`` and pulses ``done``. ``error`` is set when
    ``start`` or an image write arrives while busy (the host link never does either), and
    cleared by the next accepted ``start``. ``img_wr.ready`` is low while busy.

    Parameters
    ----------
    in_bytes, n_out: interface sizes (:class:`AccelParams`).
    latency: cycles per inference: ``done`` is high ``latency`` cycles after ``start``.
    """

    def __init__(self, in_bytes: int, n_out: int, latency: int):
        self.params = FakeParams(AccelParams(in_bytes, n_out), latency)
        super().__init__(AccelSignature(self.params.accel))

    def model(self, image) -> np.ndarray:
        return fake_logits(image, self.params.accel.n_out)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        a = p.accel
        m.submodules.img = img = Memory(shape=signed(8), depth=a.in_bytes, init=[])
        m.submodules.out = out = Memory(shape=signed(8), depth=a.n_out, init=[])
        iw = img.write_port()
        ir = img.read_port()
        ow = out.write_port()
        orp = out.read_port()

        busy = Signal()
        count = Signal(32)
        i = Signal(range(max(a.in_bytes, a.n_out) + 1))
        k = Signal(range(a.in_bytes))          # i mod in_bytes in the logit phase
        s = Signal(8)                          # sum mod 256
        phase = Signal(2)                      # 0 sum, 1 logits, 2 wait
        rd_valid = Signal()
        rd_idx = Signal.like(i)

        m.d.comb += [
            self.img_wr.ready.eq(~busy),
            iw.addr.eq(self.img_wr.payload.addr),
            iw.data.eq(self.img_wr.payload.data),
            iw.en.eq(self.img_wr.valid & ~busy),
            self.busy.eq(busy),
            orp.addr.eq(self.out_addr),
        ]
        data = orp.data                             # the interface's read latency
        for stage in range(OUT_LATENCY - 1):
            reg = Signal(signed(8), name=f"out_d{stage}")
            m.d.sync += reg.eq(data)
            data = reg
        m.d.comb += self.out_data.eq(data)

        with m.If((self.start | self.img_wr.valid) & busy):
            m.d.sync += self.error.eq(1)

        m.d.sync += self.done.eq(0)
        with m.If(~busy):
            with m.If(self.start):
                m.d.sync += [busy.eq(1), count.eq(1), i.eq(0), k.eq(0), s.eq(0), phase.eq(0),
                             rd_valid.eq(0), self.error.eq(0)]
        with m.Else():
            m.d.sync += count.eq(count + 1)
            with m.Switch(phase):
                with m.Case(0):        # read image[i], accumulate the previous read
                    m.d.comb += ir.addr.eq(i)
                    m.d.sync += [rd_valid.eq(i < a.in_bytes), i.eq(i + 1)]
                    with m.If(rd_valid):
                        m.d.sync += s.eq(s + ir.data.as_unsigned())
                    with m.If(i == a.in_bytes):
                        m.d.sync += [phase.eq(1), i.eq(0), rd_valid.eq(0)]
                with m.Case(1):        # read image[i mod in_bytes], write logit of the previous
                    m.d.comb += ir.addr.eq(k)
                    m.d.sync += [rd_valid.eq(i < a.n_out), rd_idx.eq(i), i.eq(i + 1),
                                 k.eq(Mux(k == a.in_bytes - 1, 0, k + 1))]
                    with m.If(rd_valid):
                        m.d.comb += [ow.en.eq(1), ow.addr.eq(rd_idx),
                                     ow.data.eq(s + (ir.data.as_unsigned() << 1) + rd_idx)]
                    with m.If(i == a.n_out):
                        m.d.sync += phase.eq(2)
                with m.Case(2):
                    with m.If(count == p.latency - 1):
                        m.d.sync += [busy.eq(0), self.done.eq(1), self.cycles.eq(count + 1)]
        return m

