"""Shared cocotb drivers for components with ``amaranth.lib.stream`` valid/ready ports.

:class:`StreamTB` holds what the element-wise testbenches (``cocotb_add``, ``cocotb_requant``)
have in common: the clock, the reset sequence, the two random generators, and
:meth:`StreamTB.stream`, which drives one or more input streams with random idle cycles on
``valid`` while applying random backpressure on the output's ``ready`` and collects every
output beat. The testbench subclasses add their own parameter draws, payload packing and
golden-model comparison.

Ports are found by their Amaranth Verilog names: an input stream ``x`` is
``x__valid`` / ``x__ready`` / ``x__payload``, likewise the output stream; clock and reset are
``clk`` and ``rst``.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


def pack_lanes(values: Iterable[int], bits: int) -> int:
    """Pack ``values`` (lane 0 in the least significant bits) into one word, ``bits`` per
    lane, each value taken modulo ``2**bits`` (two's complement for negative values)."""
    word, mask = 0, (1 << bits) - 1
    for lane, v in enumerate(values):
        word |= (int(v) & mask) << (bits * lane)
    return word


def unpack_signed(word: int, lanes: int, bits: int = 8) -> list[int]:
    """Split ``word`` into ``lanes`` two's-complement fields of ``bits`` bits, lane 0 in the
    least significant bits (the inverse of :func:`pack_lanes` for in-range values)."""
    mask, sign = (1 << bits) - 1, 1 << (bits - 1)
    return [((word >> (bits * lane) & mask) ^ sign) - sign for lane in range(lanes)]


class StreamTB:
    """Clock, reset and random-handshake stream driver for a DUT with stream ports.

    Parameters
    ----------
    dut: the cocotb top-level handle.
    cfg: the testbench config (:func:`harness.tb_config`). Keys read here: ``lanes`` (output
        lanes), ``seed`` (default 0), ``idle_p`` (probability that a source holds ``valid``
        low in a cycle, default 0.3), ``bp_p`` (probability that the sink holds ``ready`` low,
        default 0.3).
    inputs: names of the input streams, in the order :meth:`stream` takes their beats.
    output: name of the output stream.
    name: what the DUT is called in the timeout message.

    Attributes ``rng`` (``random.Random(seed)``) is for data and parameters, ``hs_rng``
    (``random.Random(seed + 1)``) only for the handshakes, so that changing the stall
    probabilities does not change the data drawn. Starts a 10 ns clock on ``clk``.
    """

    def __init__(self, dut, cfg: dict, *, inputs: Sequence[str] = ("i_stream",),
                 output: str = "o_stream", name: str = "DUT"):
        self.dut = dut
        self.lanes = cfg["lanes"]
        self.idle_p = cfg.get("idle_p", 0.3)
        self.bp_p = cfg.get("bp_p", 0.3)
        self.rng = random.Random(cfg.get("seed", 0))          # data and parameters
        self.hs_rng = random.Random(cfg.get("seed", 0) + 1)   # handshakes (independent)
        self.inputs = tuple(inputs)
        self.output = output
        self.name = name
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())

    def _port(self, stream: str, field: str):
        return getattr(self.dut, f"{stream}__{field}")

    async def reset(self, *hold_low: str, cycles: int = 3) -> None:
        """Hold ``rst`` high for ``cycles`` clock edges with every input ``valid``, the output
        ``ready`` and the extra signals named in ``hold_low`` at 0, then release it and wait
        one more edge."""
        d = self.dut
        d.rst.value = 1
        for s in self.inputs:
            self._port(s, "valid").value = 0
        self._port(self.output, "ready").value = 0
        for sig in hold_low:
            getattr(d, sig).value = 0
        for _ in range(cycles):
            await RisingEdge(d.clk)
        d.rst.value = 0
        await RisingEdge(d.clk)

    async def stream(self, *words: Sequence[int], lockstep: bool = False,
                     out_bits: int = 8) -> list[list[int]]:
        """Send the packed beats ``words[k]`` on input stream ``self.inputs[k]`` and return the
        output beats, each unpacked into ``self.lanes`` signed ``out_bits``-bit values.

        Every input stream carries the same number of beats n, and n output beats are
        expected. Each cycle, in this order: each source with beats left raises ``valid``
        unless ``hs_rng.random() < idle_p`` (one draw per source with beats left; the pending
        beat is on ``payload`` whenever one is left), then the sink raises ``ready`` unless
        ``hs_rng.random() < bp_p``. After the signals settle (``ReadOnly``) a source advances
        when ``valid and ready``, and the output beat is taken when ``valid and ready``.
        With ``lockstep`` every input must be consumed in the same cycle as the others (the
        DUT joins its inputs). Fails when n output beats have not come after 20 n + 200
        cycles.
        """
        d = self.dut
        if len(words) != len(self.inputs):
            raise ValueError(f"{len(self.inputs)} input streams, {len(words)} beat lists given")
        n = len(words[0])
        if any(len(w) != n for w in words):
            raise ValueError("every input stream must carry the same number of beats")
        srcs = [(self._port(s, "valid"), self._port(s, "ready"), self._port(s, "payload"))
                for s in self.inputs]
        o_valid, o_ready, o_payload = (self._port(self.output, f)
                                       for f in ("valid", "ready", "payload"))
        idx = [0] * len(srcs)
        out, cycles = [], 0
        while len(out) < n:
            for (valid, _, payload), w, i in zip(srcs, words, idx):
                valid.value = int(i < n and self.hs_rng.random() >= self.idle_p)
                if i < n:
                    payload.value = w[i]
            o_ready.value = int(self.hs_rng.random() >= self.bp_p)
            await ReadOnly()
            fired = [bool(valid.value and ready.value) for valid, ready, _ in srcs]
            if lockstep:
                assert len(set(fired)) == 1, "the input streams must be consumed together"
            idx = [i + f for i, f in zip(idx, fired)]
            if o_valid.value and o_ready.value:
                out.append(unpack_signed(o_payload.value.to_unsigned(), self.lanes, out_bits))
            await RisingEdge(d.clk)
            cycles += 1
            assert cycles < 20 * n + 200, f"{self.name} stopped producing output"
        for valid, _, _ in srcs:
            valid.value = 0
        return out


__all__ = ["StreamTB", "pack_lanes", "unpack_signed"]
