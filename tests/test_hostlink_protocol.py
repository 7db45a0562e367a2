"""Host-link protocol, host side (firmware/host.py): CRC, framing, errors, HostLink's command
logic against a scripted port; plus the agreement of the host's constants and CRC with the
board engine's (hwgen/hw/hostlink.py, its CRC network simulated with Amaranth)."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from firmware import host
from hwgen.hw import hostlink as hl
from hwgen.hw.accel_if import AccelParams, FakeParams, fake_logits
from hwgen.hw.uart import UARTParams


def test_crc16_check_value():
    assert host.crc16(b"123456789") == 0x29B1          # CRC-16/CCITT-FALSE catalogue value
    assert host.crc16(b"") == 0xFFFF


def test_board_constants_agree_with_host():
    assert (host.SOF, host.NAK, host.ACK_BIT, host.PROTOCOL_VERSION, host.STATUS_BYTES) == (
        hl.SOF, hl.NAK, hl.ACK_BIT, hl.PROTOCOL_VERSION, hl.STATUS_BYTES)
    assert {c.name: int(c) for c in host.Cmd} == {c.name: int(c) for c in hl.Cmd}
    assert {e.name: int(e) for e in host.Err} == {e.name: int(e) for e in hl.Err}


def test_crc_step_integer_and_hardware_match_host(rng):
    data = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    crc = 0xFFFF
    for b in data:
        crc = hl.crc16_step(crc, b)
    assert crc == host.crc16(data)

    # the XOR network the board builds, simulated
    m = Module()
    c_in, b_in = Signal(16), Signal(8)
    c_out = Signal(16)
    m.d.comb += c_out.eq(hl.crc16_step(c_in, b_in))
    sim = Simulator(m)
    cases = [(int(c), int(b)) for c, b in zip(rng.integers(0, 1 << 16, 40), rng.integers(0, 256, 40))]
    cases += [(0xFFFF, 0), (0, 0xFF), (0x8000, 0x80)]
    got = []

    async def tb(ctx):
        for c, b in cases:
            ctx.set(c_in, c)
            ctx.set(b_in, b)
            got.append(ctx.get(c_out))
    sim.add_testbench(tb)
    sim.run()
    assert got == [host.crc16(bytes([b]), c) for c, b in cases]


def test_frame_roundtrip(rng):
    for n in (0, 1, 2, 17, 300):
        payload = bytes(rng.integers(0, 256, n, dtype=np.uint8))
        f = host.encode_frame(0x83, payload)
        assert f[0] == host.SOF and len(f) == n + 6
        assert struct.unpack_from("<H", f, 2)[0] == n
        assert host.decode_frame(b"\x00\x13junk" + f + b"tail") == (0x83, payload, 6 + len(f))


def test_every_single_bit_error_is_detected():
    f = host.encode_frame(host.Cmd.LOAD_IMAGE, struct.pack("<I", 0) + bytes(range(12)))
    for i in range(len(f)):
        for bit in range(8):
            bad = bytearray(f)
            bad[i] ^= 1 << bit
            with pytest.raises(host.ProtocolError):
                host.decode_frame(bytes(bad))


def test_truncated_frame_is_incomplete():
    f = host.encode_frame(host.Cmd.START, b"abc")
    for n in range(len(f)):
        with pytest.raises(host.LinkTimeout):
            host.decode_frame(f[:n])


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="not a byte"):
        host.encode_frame(0x100)
    with pytest.raises(ValueError, match="65535"):
        host.encode_frame(1, bytes(70000))


def test_status_roundtrip():
    st = host.Status(1, True, False, True, False, 123456, 27648, 2, 1024, 3, host.Err.BUSY)
    raw = st.encode()
    assert len(raw) == host.STATUS_BYTES
    assert host.Status.decode(raw) == st
    with pytest.raises(host.ProtocolError, match="status reply"):
        host.Status.decode(raw[:-1])


class ScriptedBoard:
    """A port that answers like a board: in_bytes/n_out/max_chunk, FakeAccelerator's function;
    ``faults`` injects NAKs or lost replies for the n-th command frame."""

    def __init__(self, in_bytes=40, n_out=6, max_chunk=16, faults=None, version=1):
        self.in_bytes, self.n_out, self.max_chunk = in_bytes, n_out, max_chunk
        self.image = np.zeros(in_bytes, np.int8)
        self.logits = np.zeros(n_out, np.int8)
        self.done = False
        self.out = b""
        self.frames = []
        self.faults = faults or {}
        self.version = version

    def write(self, data):
        ftype, payload, _ = host.decode_frame(data)
        self.frames.append((ftype, payload))
        fault = self.faults.get(len(self.frames))
        if fault == "lost":
            return len(data)
        if fault is not None:
            self.out += host.encode_frame(host.NAK, bytes([fault, ftype]))
            return len(data)
        if ftype == host.Cmd.LOAD_IMAGE:
            off = struct.unpack_from("<I", payload)[0]
            chunk = np.frombuffer(payload[4:], np.int8)
            self.image[off:off + chunk.size] = chunk
            reply = b""
        elif ftype == host.Cmd.START:
            self.logits, self.done, reply = fake_logits(self.image, self.n_out), True, b""
        elif ftype == host.Cmd.READ_LOGITS:
            off, cnt = struct.unpack("<HH", payload)
            reply = self.logits[off:off + cnt].tobytes()
        elif ftype == host.Cmd.READ_STATUS:
            reply = host.Status(self.version, False, self.done, False, False, 77, self.in_bytes,
                                self.n_out, self.max_chunk, 0, 0).encode()
        else:
            reply = b""
        self.out += host.encode_frame(host.ACK_BIT | ftype, reply)
        return len(data)

    def read(self, n):
        got, self.out = self.out[:n], self.out[n:]
        return got


def test_hostlink_infer_splits_image_into_chunks(rng):
    board = ScriptedBoard()
    link = host.HostLink(board)
    img = rng.integers(-128, 128, 40, dtype=np.int8)
    logits, cycles = link.infer(img)
    np.testing.assert_array_equal(logits, fake_logits(img, 6))
    assert cycles == 77
    loads = [p for t, p in board.frames if t == host.Cmd.LOAD_IMAGE]
    assert [struct.unpack_from("<I", p)[0] for p in loads] == [0, 16, 32]
    assert [len(p) - 4 for p in loads] == [16, 16, 8]
    np.testing.assert_array_equal(link.read_logits(2, 3), fake_logits(img, 6)[2:5])


def test_hostlink_retries_damaged_frames_only():
    board = ScriptedBoard(faults={2: host.Err.BAD_CRC, 3: host.Err.TIMEOUT})
    link = host.HostLink(board, retries=2)
    link.status()                                   # frame 1
    link.start()                                    # frames 2, 3 rejected as damaged, 4 ok
    assert [t for t, _ in board.frames] == [host.Cmd.READ_STATUS] + [host.Cmd.START] * 3
    board = ScriptedBoard(faults={1: host.Err.BUSY})
    with pytest.raises(host.NakError, match="START: BUSY: the accelerator is busy") as e:
        host.HostLink(board, retries=2).start()
    assert e.value.code == host.Err.BUSY and len(board.frames) == 1


def test_hostlink_lost_reply():
    # an idempotent read is repeated; START is not (it may have been applied)
    board = ScriptedBoard(faults={1: "lost"})
    assert host.HostLink(board, retries=1).status().n_out == 6
    board = ScriptedBoard(faults={1: "lost"})
    with pytest.raises(host.LinkTimeout, match="no reply from the board"):
        host.HostLink(board, retries=3).start()
    assert len(board.frames) == 1


def test_hostlink_user_errors(rng):
    link = host.HostLink(ScriptedBoard())
    with pytest.raises(ValueError, match="image has 12 bytes, the board's accelerator takes 40"):
        link.load_image(np.zeros(12, np.int8))
    with pytest.raises(ValueError, match="int8"):
        link.load_image(np.full(40, 300))
    with pytest.raises(host.ProtocolError, match="protocol v2"):
        host.HostLink(ScriptedBoard(version=2)).status()


def test_open_serial_missing_port():
    with pytest.raises(FileNotFoundError, match="no serial port /dev/nonexistent-tty"):
        host.open_serial("/dev/nonexistent-tty")


def test_interface_params_checked():
    with pytest.raises(ValueError, match="in_bytes must be a positive integer"):
        AccelParams(0, 10)
    with pytest.raises(ValueError, match="latency 10 too small"):
        FakeParams(AccelParams(48, 10), 10)
    with pytest.raises(ValueError, match="max_chunk"):
        hl.HostLinkParams(AccelParams(4, 2), max_chunk=0)


def test_uart_divisor_checks():
    assert UARTParams(100e6).divisor == 33
    assert UARTParams(150e6).divisor == 50
    with pytest.raises(ValueError, match="4.2% off"):
        UARTParams(25e6)                            # 3 Mbaud from 25 MHz: divisor 8 -> 3.125 Mbaud
    with pytest.raises(ValueError, match="at least 12 MHz"):
        UARTParams(8e6)
