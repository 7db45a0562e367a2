"""The simulated board: firmware/host.py drives BoardCore (FakeAccelerator, PLL bypassed)
through a UART model standing in for the FTDI chip.

The host runtime is blocking code; it runs in a cocotb bridge thread and its port's
``write``/``read`` resume coroutines that bit-bang ``uart_rx`` and decode ``uart_tx``
(timeouts are counted in clock cycles, so the run is deterministic).
"""
import random
import struct

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, FallingEdge, First
from cocotb.task import bridge, resume

from firmware import host
from harness import tb_config
from hwgen.hw.accel_if import fake_logits


class UartModel:
    """The FTDI chip's side: 8N1 at ``div`` clock cycles per bit."""

    def __init__(self, dut, div: int, gap_prob: float = 0.0, seed: int = 0):
        self.dut, self.div = dut, div
        self.rx_bytes = bytearray()
        self.event = Event()
        self.gap_prob = gap_prob
        self.rng = random.Random(seed)
        dut.uart_rx.value = 1
        cocotb.start_soon(self._monitor())

    async def send(self, data: bytes) -> None:
        for b in data:
            if self.gap_prob and self.rng.random() < self.gap_prob:
                await ClockCycles(self.dut.clk, self.rng.randint(1, 3 * self.div))
            for bit in [0] + [(b >> i) & 1 for i in range(8)] + [1]:
                self.dut.uart_rx.value = bit
                await ClockCycles(self.dut.clk, self.div)

    async def _monitor(self) -> None:
        tx = self.dut.uart_tx
        while True:
            await FallingEdge(tx)
            await ClockCycles(self.dut.clk, self.div // 2)
            assert int(tx.value) == 0, "UART model: glitch instead of a start bit"
            b = 0
            for i in range(8):
                await ClockCycles(self.dut.clk, self.div)
                b |= int(tx.value) << i
            await ClockCycles(self.dut.clk, self.div)
            assert int(tx.value) == 1, "UART model: framing error (stop bit low)"
            self.rx_bytes.append(b)
            self.event.set()

    async def recv(self, n: int, timeout_cycles: int) -> bytes:
        """Up to ``n`` bytes; returns early when no byte arrives for ``timeout_cycles``."""
        while len(self.rx_bytes) < n:
            self.event.clear()
            timer = ClockCycles(self.dut.clk, timeout_cycles)
            if await First(self.event.wait(), timer) is timer:
                break
        out = bytes(self.rx_bytes[:n])
        del self.rx_bytes[:n]
        return out


class SimPort:
    """pyserial-like port for :class:`firmware.host.HostLink` (call from a bridge thread)."""

    def __init__(self, uart: UartModel, timeout_cycles: int):
        self.uart = uart
        self.timeout_cycles = timeout_cycles

    def write(self, data: bytes) -> int:
        resume(self.uart.send)(bytes(data))
        return len(data)

    def read(self, n: int) -> bytes:
        return resume(self.uart.recv)(n, self.timeout_cycles)


class TB:
    def __init__(self, dut):
        self.dut = dut
        self.cfg = tb_config()
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        self.uart = UartModel(dut, self.cfg["div"], self.cfg.get("gap_prob", 0.0))
        self.port = SimPort(self.uart, self.cfg["port_timeout"])
        self.link = host.HostLink(self.port, retries=0)
        self.rng = np.random.default_rng(self.cfg.get("seed", 0))

    async def reset(self):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 4)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 4)

    def image(self):
        return self.rng.integers(-128, 128, self.cfg["in_bytes"], dtype=np.int8)

    def expected(self, img):
        ref = fake_logits(img, self.cfg["n_out"]).astype(np.int16) + self.cfg.get("model_offset", 0)
        return ref

    async def run(self, fn, *args):
        return await bridge(fn)(*args)


def _nak(link, frame: bytes):
    """Send raw bytes, return the (code, cmd) of the NAK that must come back."""
    link.send_raw(frame)
    ftype, payload = link.recv()
    assert ftype == host.NAK, f"expected a NAK, got reply type 0x{ftype:02x}"
    return payload[0], payload[1]


@cocotb.test()
async def image_roundtrip(dut):
    """Image in over UART (split into frames), start, logits out == the fake's model."""
    tb = TB(dut)
    await tb.reset()
    cfg = tb.cfg
    st = await tb.run(tb.link.status)
    assert (st.version, st.in_bytes, st.n_out, st.max_chunk) == (
        host.PROTOCOL_VERSION, cfg["in_bytes"], cfg["n_out"], cfg["max_chunk"])
    assert not st.busy and not st.done and not st.error and st.nak_count == 0
    for _ in range(cfg["n_images"]):
        img = tb.image()
        logits, cycles = await tb.run(tb.link.infer, img)
        np.testing.assert_array_equal(logits.astype(np.int16), tb.expected(img))
        assert cycles == cfg["latency"]
    # partial read with an offset
    part = await tb.run(tb.link.read_logits, 3, 4)
    np.testing.assert_array_equal(part.astype(np.int16), tb.expected(img)[3:7])
    assert int(dut.leds.value) & 0b11110 == 0b10010     # idle, done; not busy, no error


@cocotb.test()
async def bad_frames_rejected(dut):
    """Corrupted (bad CRC), truncated and invalid frames get NAKs and change nothing."""
    tb = TB(dut)
    await tb.reset()
    link = tb.link
    img = tb.image()
    logits, _ = await tb.run(link.infer, img)
    np.testing.assert_array_equal(logits.astype(np.int16), tb.expected(img))
    other = tb.image()

    def scenario():
        out = {}
        # corrupted: a payload byte flipped after the CRC was computed
        f = bytearray(host.encode_frame(host.Cmd.LOAD_IMAGE, struct.pack("<I", 0) + other[:8].tobytes()))
        f[8] ^= 0x40
        out["crc"] = _nak(link, bytes(f))
        # corrupted START (bad CRC) must not start an inference
        f = bytearray(host.encode_frame(host.Cmd.START))
        f[-1] ^= 1
        out["crc_start"] = _nak(link, bytes(f))
        out["status_after_crc"] = link.status()
        # truncated: half a LOAD_IMAGE frame, then silence until the board times out
        f = host.encode_frame(host.Cmd.LOAD_IMAGE, struct.pack("<I", 8) + other[8:16].tobytes())
        out["trunc"] = _nak(link, f[:len(f) // 2])
        # invalid: unknown command, bad length, out-of-range offset / count
        out["unknown"] = _nak(link, host.encode_frame(0x42))
        out["len"] = _nak(link, host.encode_frame(host.Cmd.START, b"\x00"))
        out["range_img"] = _nak(link, host.encode_frame(
            host.Cmd.LOAD_IMAGE, struct.pack("<I", tb.cfg["in_bytes"] - 2) + b"\1\2\3"))
        out["range_logits"] = _nak(link, host.encode_frame(
            host.Cmd.READ_LOGITS, struct.pack("<HH", tb.cfg["n_out"] - 1, 2)))
        # busy: a command during an inference
        link.start()
        out["busy"] = _nak(link, host.encode_frame(host.Cmd.READ_LOGITS, struct.pack("<HH", 0, 1)))
        out["status_busy"] = link.status()
        out["done"] = link.wait_done()
        out["logits"] = link.read_logits()
        out["status_end"] = link.status()
        link.clear()
        out["status_clear"] = link.status()
        # the host's NakError carries the code
        try:
            link.command(host.Cmd.READ_LOGITS, struct.pack("<HH", 0, 0))
        except host.NakError as e:
            out["exc"] = (e.code, str(e))
        return out

    r = await tb.run(scenario)
    E, C = host.Err, host.Cmd
    assert r["crc"] == (E.BAD_CRC, C.LOAD_IMAGE)
    assert r["crc_start"] == (E.BAD_CRC, C.START)
    assert not r["status_after_crc"].busy and r["status_after_crc"].done
    assert r["status_after_crc"].link_error and r["status_after_crc"].nak_count == 2
    assert r["trunc"] == (E.TIMEOUT, C.LOAD_IMAGE)
    assert r["unknown"] == (E.UNKNOWN_CMD, 0x42)
    assert r["len"] == (E.BAD_LENGTH, C.START)
    assert r["range_img"] == (E.BAD_RANGE, C.LOAD_IMAGE)
    assert r["range_logits"] == (E.BAD_RANGE, C.READ_LOGITS)
    assert r["busy"] == (E.BUSY, C.READ_LOGITS)
    assert r["status_busy"].busy
    assert r["done"].cycles == tb.cfg["latency"]
    # nothing of the rejected frames reached the accelerator: still the first image's logits
    np.testing.assert_array_equal(r["logits"].astype(np.int16), tb.expected(img))
    assert r["status_end"].nak_count == 8 and r["status_end"].last_error == E.BUSY
    assert r["status_end"].link_error
    st = r["status_clear"]
    assert not st.link_error and st.nak_count == 0 and st.last_error == 0
    assert r["exc"][0] == E.BAD_RANGE and "READ_LOGITS" in r["exc"][1]
