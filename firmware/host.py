"""Host runtime of the ULX3S host link (the protocol of firmware/PROTOCOL.md).

Pure Python (NumPy optional): frame encoding and decoding with length and CRC-16, and
:class:`HostLink`, which drives a board through any pyserial-like port object (``write(bytes)``,
``read(n) -> bytes`` returning fewer than ``n`` bytes when its timeout expires). On Linux
:func:`open_serial` gives such a port for ``/dev/ttyUSB0`` without pyserial; the tests use a
port that talks to a UART model in a cocotb testbench.

The board-side engine is :class:`hwgen.hw.hostlink.HostLink`; the constants here are the same
(tests/test_hostlink_protocol.py checks they agree).
"""
from __future__ import annotations

import enum
import os
import select
import struct
import time
from dataclasses import dataclass

__all__ = ["SOF", "NAK", "ACK_BIT", "PROTOCOL_VERSION", "STATUS_BYTES", "Cmd", "Err",
           "ProtocolError", "LinkTimeout", "NakError", "crc16", "encode_frame", "decode_frame",
           "read_frame", "Status", "HostLink", "SerialPort", "open_serial"]

SOF = 0xA5
NAK = 0xFF
ACK_BIT = 0x80
PROTOCOL_VERSION = 1
STATUS_BYTES = 18
_STATUS = struct.Struct("<BBIIHHHBB")
assert _STATUS.size == STATUS_BYTES


class Cmd(enum.IntEnum):
    LOAD_IMAGE = 0x01
    START = 0x02
    READ_LOGITS = 0x03
    READ_STATUS = 0x04
    CLEAR = 0x05


class Err(enum.IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2
    UNKNOWN_CMD = 3
    BUSY = 4
    BAD_RANGE = 5
    TIMEOUT = 6


_ERR_TEXT = {
    Err.BAD_CRC: "the board received a frame with a bad CRC (line noise or wrong baud rate)",
    Err.BAD_LENGTH: "the frame length is wrong for the command (or above the board's chunk size)",
    Err.UNKNOWN_CMD: "the board does not know this command (bitstream and host runtime differ?)",
    Err.BUSY: "the accelerator is busy with an inference",
    Err.BAD_RANGE: "the offset/count is outside the image or logits",
    Err.TIMEOUT: "the frame was truncated (the board timed out waiting for its bytes)",
}


class ProtocolError(RuntimeError):
    """The board's reply was malformed (bad CRC, bad length, unexpected type)."""


class LinkTimeout(ProtocolError):
    """No (complete) reply from the board in time: is the board programmed and the port right?"""


class NakError(ProtocolError):
    """The board rejected a command; ``code`` is an :class:`Err`, ``cmd`` the command."""

    def __init__(self, code: int, cmd: int):
        self.code = code
        self.cmd = cmd
        try:
            name, text = Err(code).name, _ERR_TEXT[Err(code)]
        except ValueError:
            name, text = f"error {code}", "unknown error code"
        try:
            cname = Cmd(cmd).name
        except ValueError:
            cname = f"0x{cmd:02x}"
        super().__init__(f"board rejected {cname}: {name}: {text}")


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: polynomial 0x1021, initial 0xFFFF, MSB first, no final XOR
    (``crc16(b"123456789") == 0x29B1``)."""
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    """``SOF, type, u16 length LE, payload, u16 CRC LE`` (CRC over type, length and payload)."""
    payload = bytes(payload)
    if not 0 <= ftype <= 0xFF:
        raise ValueError(f"frame type {ftype} is not a byte")
    if len(payload) > 0xFFFF:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds 65535")
    body = bytes([ftype]) + struct.pack("<H", len(payload)) + payload
    return bytes([SOF]) + body + struct.pack("<H", crc16(body))


def decode_frame(data: bytes) -> tuple[int, bytes, int]:
    """Decode the first frame in ``data`` (bytes before its SOF are skipped).

    Returns ``(type, payload, bytes consumed)``. Raises :class:`LinkTimeout` if the frame is
    incomplete and :class:`ProtocolError` if its CRC is wrong.
    """
    data = bytes(data)
    start = data.find(bytes([SOF]))
    if start < 0 or len(data) - start < 6:
        raise LinkTimeout(f"incomplete frame: {len(data)} bytes")
    ftype = data[start + 1]
    (n,) = struct.unpack_from("<H", data, start + 2)
    end = start + 4 + n + 2
    if len(data) < end:
        raise LinkTimeout(f"incomplete frame: {len(data) - start} of {end - start} bytes")
    body = data[start + 1:start + 4 + n]
    (crc,) = struct.unpack_from("<H", data, start + 4 + n)
    if crc != crc16(body):
        raise ProtocolError(f"reply frame CRC 0x{crc:04x} != 0x{crc16(body):04x} (corrupted)")
    return ftype, body[3:], end


def read_frame(port) -> tuple[int, bytes]:
    """Read one frame from ``port`` (skipping bytes before SOF): ``(type, payload)``."""
    while True:
        b = port.read(1)
        if not b:
            raise LinkTimeout("no reply from the board (is it programmed, and is this its port?)")
        if b[0] == SOF:
            break
    head = _read_exact(port, 3)
    (n,) = struct.unpack_from("<H", head, 1)
    rest = _read_exact(port, n + 2)
    ftype, payload, _ = decode_frame(bytes([SOF]) + head + rest)
    return ftype, payload


def _read_exact(port, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = port.read(n - len(out))
        if not chunk:
            raise LinkTimeout(f"reply truncated: got {len(out)} of {n} bytes")
        out += chunk
    return out


@dataclass(frozen=True)
class Status:
    """The board's READ_STATUS reply."""
    version: int
    busy: bool
    done: bool          # an inference completed since the last START
    error: bool         # the accelerator's error flag
    link_error: bool    # a frame was rejected since the last CLEAR
    cycles: int         # cycles of the last inference
    in_bytes: int
    n_out: int
    max_chunk: int
    nak_count: int
    last_error: int

    @classmethod
    def decode(cls, payload: bytes) -> "Status":
        if len(payload) != STATUS_BYTES:
            raise ProtocolError(f"status reply has {len(payload)} bytes, expected {STATUS_BYTES}")
        ver, flags, cycles, in_bytes, n_out, chunk, naks, last, _ = _STATUS.unpack(payload)
        return cls(ver, bool(flags & 1), bool(flags & 2), bool(flags & 4), bool(flags & 8),
                   cycles, in_bytes, n_out, chunk, naks, last)

    def encode(self) -> bytes:
        flags = self.busy | self.done << 1 | self.error << 2 | self.link_error << 3
        return _STATUS.pack(self.version, flags, self.cycles, self.in_bytes, self.n_out,
                            self.max_chunk, self.nak_count, self.last_error, 0)


class HostLink:
    """Drive a board over ``port`` (stop-and-wait: one command frame, one reply frame).

    Parameters
    ----------
    port: pyserial-like object with ``write(bytes)`` and ``read(n)`` (returns fewer bytes
        when its read timeout expires, which must exceed the board's frame timeout).
    retries: how often a command whose frame the board rejected as damaged (``BAD_CRC``,
        ``TIMEOUT``: never applied) or whose reply was lost is sent again (never ``START``
        after a lost reply, which may have been applied).
    """

    def __init__(self, port, retries: int = 2):
        self.port = port
        self.retries = retries
        self._status: Status | None = None

    # -- framing ------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.port.write(bytes(data))

    def recv(self) -> tuple[int, bytes]:
        return read_frame(self.port)

    def resync(self) -> None:
        """Discard whatever the board still sends (after a damaged exchange)."""
        while self.port.read(256):
            pass

    def command(self, cmd: int, payload: bytes = b"") -> bytes:
        """Send one command, return its ACK payload; raise :class:`NakError` on a NAK."""
        frame = encode_frame(int(cmd), payload)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            self.send_raw(frame)
            try:
                ftype, reply = self.recv()
            except ProtocolError:
                if last or cmd == Cmd.START:
                    raise
                self.resync()
                continue
            if ftype == NAK:
                code, rcmd = (reply + b"\0\0")[:2]
                if code in (Err.BAD_CRC, Err.TIMEOUT) and not last:
                    self.resync()
                    continue
                raise NakError(code, rcmd)
            if ftype != ACK_BIT | int(cmd):
                raise ProtocolError(f"reply type 0x{ftype:02x} to command {Cmd(cmd).name}")
            return reply
        raise AssertionError("unreachable")

    # -- commands -----------------------------------------------------------------------
    def status(self) -> Status:
        st = Status.decode(self.command(Cmd.READ_STATUS))
        if st.version != PROTOCOL_VERSION:
            raise ProtocolError(f"board speaks host-link protocol v{st.version}, this host "
                                f"runtime v{PROTOCOL_VERSION}: rebuild the bitstream")
        self._status = st
        return st

    def _info(self) -> Status:
        return self._status or self.status()

    def load_image(self, image, offset: int = 0) -> None:
        """Write the int8 image (bytes, or an int8 array flattened in C, H, W order)."""
        data = _as_bytes(image)
        st = self._info()
        if offset == 0 and len(data) != st.in_bytes:
            raise ValueError(f"image has {len(data)} bytes, the board's accelerator takes "
                             f"{st.in_bytes} (C*H*W int8 values)")
        for pos in range(0, len(data), st.max_chunk):
            chunk = data[pos:pos + st.max_chunk]
            self.command(Cmd.LOAD_IMAGE, struct.pack("<I", offset + pos) + chunk)

    def start(self) -> None:
        self.command(Cmd.START)

    def clear(self) -> None:
        """Clear the sticky link error and the NAK counter."""
        self.command(Cmd.CLEAR)

    def read_logits(self, offset: int = 0, count: int | None = None):
        """The int8 logits (a NumPy int8 array when NumPy is available, else a list)."""
        st = self._info()
        count = st.n_out - offset if count is None else count
        raw = self.command(Cmd.READ_LOGITS, struct.pack("<HH", offset, count))
        if len(raw) != count:
            raise ProtocolError(f"READ_LOGITS returned {len(raw)} bytes, asked {count}")
        try:
            import numpy as np
            return np.frombuffer(raw, dtype=np.int8).copy()
        except ImportError:  # pragma: no cover
            return [b - 256 if b > 127 else b for b in raw]

    def wait_done(self, polls: int = 1000, interval: float = 0.0) -> Status:
        """Poll READ_STATUS until the inference is done; raise on error or after ``polls``."""
        for _ in range(polls):
            st = self.status()
            if st.error:
                raise ProtocolError("the accelerator reports an error (status error flag)")
            if st.done and not st.busy:
                return st
            if interval:
                time.sleep(interval)
        raise LinkTimeout(f"inference not done after {polls} status polls")

    def infer(self, image, polls: int = 1000, interval: float = 0.0):
        """Load, start, wait, read: returns ``(logits, cycles)``."""
        self.load_image(image)
        self.start()
        st = self.wait_done(polls, interval)
        return self.read_logits(), st.cycles


def _as_bytes(image) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    import numpy as np
    a = np.asarray(image)
    if a.dtype != np.int8:
        if not np.issubdtype(a.dtype, np.integer) or a.min() < -128 or a.max() > 127:
            raise ValueError(f"image must be int8 values, got dtype {a.dtype}")
        a = a.astype(np.int8)
    return a.reshape(-1).tobytes()


class SerialPort:
    """A raw 8N1 serial port on POSIX (termios), enough of pyserial's API for :class:`HostLink`.

    Parameters
    ----------
    path: device, e.g. ``/dev/ttyUSB0``.
    baud: bit rate (default 3 Mbaud, the board's default).
    timeout: read timeout in seconds.
    """

    def __init__(self, path: str, baud: int = 3_000_000, timeout: float = 1.0):
        import termios
        speed = getattr(termios, f"B{baud}", None)
        if speed is None:
            raise ValueError(f"baud rate {baud} is not supported by this system's termios")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FileNotFoundError(f"no serial port {path}: is the board plugged in? "
                                    f"(ls /dev/ttyUSB*)") from None
        except PermissionError:
            raise PermissionError(f"no permission to open {path}: add yourself to the "
                                  f"'dialout' group") from None
        self.timeout = timeout
        iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(self.fd)
        cflag = termios.CS8 | termios.CREAD | termios.CLOCAL
        cc[termios.VMIN], cc[termios.VTIME] = 0, 0
        termios.tcsetattr(self.fd, termios.TCSANOW, [0, 0, cflag, 0, speed, speed, cc])
        termios.tcflush(self.fd, termios.TCIOFLUSH)

    def write(self, data: bytes) -> int:
        view = memoryview(bytes(data))
        while view:
            select.select([], [self.fd], [], self.timeout)
            n = os.write(self.fd, view)
            view = view[n:]
        return len(data)

    def read(self, n: int) -> bytes:
        out = b""
        deadline = time.monotonic() + self.timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                break
            out += os.read(self.fd, n - len(out))
        return out

    def reset_input_buffer(self) -> None:
        import termios
        termios.tcflush(self.fd, termios.TCIFLUSH)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_serial(path: str, baud: int = 3_000_000, timeout: float = 1.0) -> SerialPort:
    """Open the board's FTDI serial port (see :class:`SerialPort`)."""
    return SerialPort(path, baud, timeout)
