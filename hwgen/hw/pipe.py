"""Registers of a pipeline that advances as a whole on one enable (stalls freeze every stage).

Shared by the requantizer and the residual adder: each builds its datapath from
:meth:`Pipe.reg` / :meth:`Pipe.delay` stages and tracks beats with :meth:`Pipe.valid_chain`.
"""
from __future__ import annotations

from amaranth import Signal


class Pipe:
    """``m``: the Module the registers go into; ``en``: the pipeline's global enable."""

    def __init__(self, m, en):
        self.m, self.en = m, en

    def reg(self, shape, name: str, value) -> Signal:
        """One register stage of ``value``, updated only while ``en`` is high."""
        r = Signal(shape, name=name)
        with self.m.If(self.en):
            self.m.d.sync += r.eq(value)
        return r

    def delay(self, sig, n: int, name: str):
        """``sig`` delayed by ``n`` enabled cycles."""
        for k in range(n):
            sig = self.reg(sig.shape(), f"{name}_d{k}", sig)
        return sig

    def valid_chain(self, first, latency: int) -> list[Signal]:
        """``valid1 .. valid<latency>``: the valid bit of each stage; ``first`` enters stage 1."""
        valid = [Signal(name=f"valid{s}") for s in range(1, latency + 1)]
        with self.m.If(self.en):
            self.m.d.sync += valid[0].eq(first)
            self.m.d.sync += [valid[s].eq(valid[s - 1]) for s in range(1, latency)]
        return valid
