"""Host link protocol engine: framed commands from the UART to the accelerator and replies.

The protocol is specified in firmware/PROTOCOL.md; :mod:`firmware.host` is the host side and
shares the constants below. In short: every frame is
``SOF, type, length (u16 LE), payload, CRC-16/CCITT-FALSE (u16 LE) over type+length+payload``;
the host sends one command frame and waits for its one reply frame (stop-and-wait).

Reception buffers the whole frame (image data in a block-RAM staging buffer of ``max_chunk``
bytes, the first four payload bytes in an argument register) and checks CRC, command,
length, busy and range before anything happens, so a corrupted frame is never half-applied.
A frame whose bytes stop arriving for ``timeout_cycles`` is dropped with a ``TIMEOUT`` NAK.

Latency and throughput: the engine takes a byte per cycle from ``rx`` (a UART delivers one per
10 bit periods); after the last CRC byte three check cycles, then for ``LOAD_IMAGE`` the
commit of ``n`` bytes to the accelerator (3 cycles per byte at full ``img_wr`` rate), then
the reply through a one-byte register into ``tx`` (at most one byte per 2 cycles; the UART
takes one per 10 bit periods). For timing, every output to the accelerator (``img_wr``,
``start``) and every block-RAM input comes from a flip-flop, the frame checks take two
register stages, and the reply CRC is computed from the transmit register.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .accel_if import OUT_LATENCY, AccelParams, AccelSignature

__all__ = ["SOF", "Cmd", "Err", "NAK", "STATUS_BYTES", "PROTOCOL_VERSION", "HostLinkParams",
           "HostLink", "crc16_step"]

SOF = 0xA5
NAK = 0xFF                  # reply type of an error reply; success replies are 0x80 | cmd
PROTOCOL_VERSION = 1
STATUS_BYTES = 18
ACK_BIT = 0x80


class Cmd(enum.IntEnum):
    LOAD_IMAGE = 0x01       # payload: u32 offset, data bytes (1..max_chunk)
    START = 0x02            # no payload
    READ_LOGITS = 0x03      # payload: u16 offset, u16 count
    READ_STATUS = 0x04      # no payload
    CLEAR = 0x05            # no payload: clears the sticky link error and the NAK counter


class Err(enum.IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2
    UNKNOWN_CMD = 3
    BUSY = 4
    BAD_RANGE = 5
    TIMEOUT = 6


def crc16_step(crc, byte):
    """One byte of CRC-16/CCITT-FALSE (poly 0x1021, MSB first) on ints or Amaranth values.

    The CRC is linear over GF(2): on Amaranth values each of the 16 result bits is the XOR of
    the state and byte bits found by running the integer version on unit vectors (a flat XOR
    network, no mux chain).
    """
    if isinstance(crc, int) and isinstance(byte, int):
        c = crc ^ (byte << 8)
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        return c
    bits = [crc[i] for i in range(16)] + [byte[i] for i in range(8)]
    out = []
    for j in range(16):
        terms = [bits[i] for i, (cv, bv) in enumerate(_UNIT) if crc16_step(cv, bv) >> j & 1]
        acc = terms[0]
        for t in terms[1:]:
            acc = acc ^ t
        out.append(acc)
    return Cat(*out)


_UNIT = [(1 << i, 0) for i in range(16)] + [(0, 1 << i) for i in range(8)]


@dataclass(frozen=True)
class HostLinkParams:
    """Structure of a :class:`HostLink`.

    Parameters
    ----------
    accel: the accelerator interface sizes.
    max_chunk: most image bytes one ``LOAD_IMAGE`` frame carries (staging buffer depth).
    timeout_cycles: a frame whose next byte does not arrive within this many cycles is
        dropped (``TIMEOUT`` NAK). Make it well above one byte time plus the host's gaps.
    """
    accel: AccelParams
    max_chunk: int = 1024
    timeout_cycles: int = 1_000_000

    def __post_init__(self):
        if not isinstance(self.accel, AccelParams):
            raise TypeError(f"HostLinkParams.accel must be AccelParams, not {type(self.accel).__name__}")
        if not 1 <= self.max_chunk <= 0xFFFF - 4:
            raise ValueError(f"HostLinkParams.max_chunk = {self.max_chunk} must be in 1..65531")
        if self.timeout_cycles < 16:
            raise ValueError(f"HostLinkParams.timeout_cycles = {self.timeout_cycles} is too small "
                             f"(at least 16; use several byte times)")


class HostLink(wiring.Component):
    """Framed command engine between a byte stream pair and an accelerator.

    Members
    -------
    rx: bytes from the host (``In(stream.Signature(8))``).
    tx: reply bytes to the host.
    accel: the accelerator's ports, flipped (connect to an :class:`AccelSignature` component).
    link_error: sticky; set by every NAK, cleared by ``CLEAR``.
    done_seen: sticky; an inference completed since the last ``START``.
    """

    def __init__(self, params: HostLinkParams):
        if not isinstance(params, HostLinkParams):
            raise TypeError(f"HostLink takes HostLinkParams, not {type(params).__name__}")
        self.params = params
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "accel": Out(AccelSignature(params.accel).flip()),
            "link_error": Out(1),
            "done_seen": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        a = p.accel
        acc = self.accel
        max_len = 4 + p.max_chunk

        m.submodules.buf = buf = Memory(shape=unsigned(8), depth=p.max_chunk, init=[])
        bw = buf.write_port()
        br = buf.read_port()

        crc = Signal(16)                  # CRC of the frame being received
        t_crc = Signal(16)                # CRC of the reply being sent (a register of its own:
                                          # each has one update network behind it)
        cmd = Signal(8)
        length = Signal(16)
        idx = Signal(16)                  # payload byte index (reception)
        rx_left = Signal(16)              # payload bytes still to receive
        c_left = Signal(16)               # image bytes still to commit
        t_left = Signal(16)               # reply payload bytes still to send
        arg = Signal(32)                  # first four payload bytes
        rx_crc = Signal(16)
        timer = Signal(range(p.timeout_cycles + 1))
        timer_hit = Signal()              # timer == timeout_cycles - 1, a register
        nak_count = Signal(16)
        last_err = Signal(8)
        check_r = Signal(8)               # registered verdict on the received frame
        check_bad = Signal()              # check_r != 0, a register of its own
        c_one = Signal()                  # c_left == 1, a register (no compare in C_WRITE)
        reply_type = Signal(8)
        reply_len = Signal(16)
        shreg = Signal(8 * STATUS_BYTES)  # reply payload (status / NAK), shifted out LSB first
        waddr = Signal(a.addr_bits)       # image address of the next committed byte
        bidx = Signal(range(p.max_chunk + 1))
        wr_en = Signal()                  # staging-buffer write, registered: the block RAM's
        wr_data = Signal(8)               # inputs come straight from flip-flops
        wdata = Signal(8, reset_less=True)
        raddr = Signal(16)                # logit address on the read port
        pay_byte = Signal(8)              # reply payload byte being sent
        is_logits = Signal()
        busy = acc.busy

        start = Signal()                  # registered: acc.start comes from a flip-flop
        m.d.sync += start.eq(0)
        m.d.comb += acc.start.eq(start)
        with m.If(acc.done):
            m.d.sync += self.done_seen.eq(1)

        # --- checks of a complete frame (two register stages, CHECKA and CHECKB; acted on in CHECK) ----------
        n_data = Signal(16)
        m.d.comb += n_data.eq(length - 4)
        offset = arg                                       # LOAD_IMAGE: u32 image offset
        lg_off = arg[:16]                                  # READ_LOGITS: u16 offset, u16 count
        lg_cnt = arg[16:32]
        # stage A (state CHECKA): compares of the raw fields, registered
        known = Signal()
        len_ok = Signal()
        needs_idle = Signal()
        with m.Switch(cmd):
            with m.Case(Cmd.LOAD_IMAGE):
                m.d.comb += [known.eq(1), needs_idle.eq(1),
                             len_ok.eq((length >= 5) & (length <= max_len))]
            with m.Case(Cmd.START):
                m.d.comb += [known.eq(1), needs_idle.eq(1), len_ok.eq(length == 0)]
            with m.Case(Cmd.READ_LOGITS):
                m.d.comb += [known.eq(1), needs_idle.eq(1), len_ok.eq(length == 4)]
            with m.Case(Cmd.READ_STATUS, Cmd.CLEAR):
                m.d.comb += [known.eq(1), len_ok.eq(length == 0)]
        crc_ok_r, known_r, len_ok_r, idle_r = Signal(), Signal(), Signal(), Signal()
        off_ok_r, lg_ok_r = Signal(), Signal()
        img_end_r = Signal(33)
        lg_end_r = Signal(17)
        stage_a = [crc_ok_r.eq(rx_crc == crc), known_r.eq(known), len_ok_r.eq(len_ok),
                   idle_r.eq(needs_idle), off_ok_r.eq(offset < a.in_bytes),
                   lg_ok_r.eq((lg_cnt != 0) & (lg_off < a.n_out)),
                   img_end_r.eq(offset + n_data), lg_end_r.eq(lg_off + lg_cnt)]
        # stage B (state CHECKB): range limits and the verdict, registered in check_r
        range_ok = Signal()
        with m.Switch(cmd):
            with m.Case(Cmd.LOAD_IMAGE):
                m.d.comb += range_ok.eq(off_ok_r & (img_end_r <= a.in_bytes))
            with m.Case(Cmd.READ_LOGITS):
                m.d.comb += range_ok.eq(lg_ok_r & (lg_end_r <= a.n_out))
            with m.Default():
                m.d.comb += range_ok.eq(1)
        check = Signal(8)
        with m.If(~crc_ok_r):
            m.d.comb += check.eq(Err.BAD_CRC)
        with m.Elif(~known_r):
            m.d.comb += check.eq(Err.UNKNOWN_CMD)
        with m.Elif(~len_ok_r):
            m.d.comb += check.eq(Err.BAD_LENGTH)
        with m.Elif(idle_r & busy):
            m.d.comb += check.eq(Err.BUSY)
        with m.Elif(~range_ok):
            m.d.comb += check.eq(Err.BAD_RANGE)

        flags = Cat(busy, self.done_seen, acc.error, self.link_error)
        status_now = Cat(Const(PROTOCOL_VERSION, 8), flags, Const(0, 4), acc.cycles,
                         Const(a.in_bytes, 32), Const(a.n_out, 16), Const(p.max_chunk, 16),
                         nak_count, last_err, Const(0, 8))

        # --- transmit register and the CRC of the transmitted bytes ------------------------
        tx_byte = Signal(8)
        tx_full = Signal()
        tx_crc = Signal()                 # the byte in tx_byte is covered by the CRC
        m.d.comb += [self.tx.valid.eq(tx_full), self.tx.payload.eq(tx_byte)]
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += tx_full.eq(0)
            with m.If(tx_crc):
                m.d.sync += t_crc.eq(crc16_step(t_crc, tx_byte))

        def emit(value, in_crc, nxt):
            with m.If(~tx_full):
                m.d.sync += [tx_byte.eq(value), tx_full.eq(1), tx_crc.eq(in_crc)]
                m.next = nxt

        def reply():
            # reply_type / reply_len / t_left were loaded with the verdict (rp_*, below)
            m.next = "T_SOF"

        def nak(code):
            # the payload (code, cmd) goes into shreg's low bytes in this cycle (v_load below)
            m.d.sync += [nak_count.eq(nak_count + 1), last_err.eq(code), self.link_error.eq(1),
                         is_logits.eq(0)]
            reply()                                  # NAK, 2 bytes

        # --- the reply payload register ----------------------------------------------------
        # 144 flip-flops: their enable and select are flip-flops set in the state before
        # (sh_en: load or shift next cycle, sh_load: load the status), not a decode of the
        # FSM state. The verdict (v_load: high in CHECK and in TIMEOUT, from flip-flops
        # set the cycle before) puts a NAK's payload (code, cmd) in the low two bytes, and
        # the reply's type and length: the states that send the reply only move to T_SOF
        sh_en, sh_load, sh_timeout, sh_check = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [sh_en.eq(0), sh_load.eq(0), sh_timeout.eq(0), sh_check.eq(0)]
        with m.If(sh_en):
            m.d.sync += shreg.eq(Mux(sh_load, status_now, shreg >> 8))
        v_load = sh_check | sh_timeout
        v_bad = sh_timeout | check_bad
        with m.If(v_load & v_bad):
            m.d.sync += shreg[:16].eq(Cat(Mux(sh_timeout, Err.TIMEOUT, check_r), cmd))
        rp_type, rp_len = Signal(8), Signal(16)
        with m.Switch(cmd):
            with m.Case(Cmd.READ_LOGITS):
                m.d.comb += rp_len.eq(lg_cnt)
            with m.Case(Cmd.READ_STATUS):
                m.d.comb += rp_len.eq(STATUS_BYTES)
        m.d.comb += rp_type.eq(ACK_BIT | cmd)
        with m.If(v_bad):
            m.d.comb += [rp_type.eq(NAK), rp_len.eq(2)]
        with m.If(v_load):
            m.d.sync += [reply_type.eq(rp_type), reply_len.eq(rp_len), t_left.eq(rp_len)]

        rx_fire = self.rx.valid & self.rx.ready
        byte = self.rx.payload

        # the inter-byte timer: cycles since the last byte taken, in every state (a frame's
        # SOF byte restarts it, so only the reception states look at timer_hit); no state
        # decode in front of its 20 flip-flops but the receiver's ready (a synchronous reset)
        with m.If(rx_fire):
            m.d.sync += [timer.eq(0), timer_hit.eq(0)]
        with m.Else():
            # the compare feeds one flip-flop, not the reply registers' enables; the timer
            # wraps while the link idles (timer_hit is then high for a cycle, unseen)
            m.d.sync += [timer.eq(timer + 1), timer_hit.eq(timer == p.timeout_cycles - 2)]

        # the staging buffer: one address for both ports (a single-port block RAM, read
        # before write, no collision logic); writes are registered (one cycle after the byte)
        # bidx's clear and count come from flip-flops, not from a decode of the FSM state
        # and the receiver's valid: bidx_clr is set the cycle before (after LEN1's byte: the
        # first buffered byte is the fifth of the payload; in CHECKA for the commit), c_wr
        # is high exactly in C_WRITE
        bidx_clr, c_wr = Signal(), Signal()
        m.d.comb += [br.addr.eq(bidx), bw.addr.eq(bidx), bw.en.eq(wr_en), bw.data.eq(wr_data)]
        m.d.sync += [wr_en.eq(0), wr_data.eq(byte), bidx_clr.eq(0)]
        with m.If(bidx_clr):
            m.d.sync += bidx.eq(0)
        with m.Elif(wr_en | (c_wr & acc.img_wr.ready)):
            m.d.sync += bidx.eq(bidx + 1)

        with m.FSM():
            with m.State("SOF"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(rx_fire & (byte == SOF)):
                    m.d.sync += [crc.eq(0xFFFF), cmd.eq(0), arg.eq(0)]
                    m.next = "CMD"

            # reception states share the inter-byte timeout
            for state in ("CMD", "LEN0", "LEN1", "PAYLOAD", "CRC0", "CRC1"):
                with m.State(state):
                    m.d.comb += self.rx.ready.eq(1)
                    with m.If(rx_fire):
                        if state in ("CMD", "LEN0", "LEN1", "PAYLOAD"):
                            m.d.sync += crc.eq(crc16_step(crc, byte))
                        if state == "CMD":
                            m.d.sync += cmd.eq(byte)
                            m.next = "LEN0"
                        elif state == "LEN0":
                            m.d.sync += length[:8].eq(byte)
                            m.next = "LEN1"
                        elif state == "LEN1":
                            m.d.sync += [length[8:].eq(byte), rx_left.eq(Cat(length[:8], byte)),
                                         idx.eq(0), bidx_clr.eq(1)]
                            with m.If(Cat(length[:8], byte) == 0):
                                m.next = "CRC0"
                            with m.Else():
                                m.next = "PAYLOAD"
                        elif state == "PAYLOAD":
                            m.d.sync += [idx.eq(idx + 1), rx_left.eq(rx_left - 1)]
                            with m.Switch(idx):
                                for i in range(4):
                                    with m.Case(i):
                                        m.d.sync += arg[8 * i:8 * i + 8].eq(byte)
                            with m.If((idx >= 4) & (idx < max_len)):
                                m.d.sync += wr_en.eq(1)
                            with m.If(rx_left == 1):
                                m.next = "CRC0"
                        elif state == "CRC0":
                            m.d.sync += rx_crc[:8].eq(byte)
                            m.next = "CRC1"
                        elif state == "CRC1":
                            m.d.sync += rx_crc[8:].eq(byte)
                            m.next = "CHECKA"
                    with m.Elif(timer_hit):
                        # the NAK is built in a state of its own: the reply registers'
                        # enables then decode the state only, not the receiver's valid
                        m.d.sync += [sh_en.eq(1), sh_load.eq(1), sh_timeout.eq(1)]
                        m.next = "TIMEOUT"

            with m.State("TIMEOUT"):
                nak(Err.TIMEOUT)

            with m.State("CHECKA"):
                m.d.sync += stage_a
                m.d.sync += [sh_en.eq(1), sh_load.eq(1),      # shreg: the status
                             bidx_clr.eq(1)]                  # the commit reads from 0
                m.next = "CHECKB"

            with m.State("CHECKB"):
                m.d.sync += [check_r.eq(check), waddr.eq(offset),
                             check_bad.eq(~(crc_ok_r & known_r & len_ok_r & ~(idle_r & busy)
                                            & range_ok)),
                             c_left.eq(n_data), c_one.eq(length == 5),
                             raddr.eq(lg_off),
                             is_logits.eq(cmd == Cmd.READ_LOGITS),
                             sh_check.eq(1)]                  # the verdict loads in CHECK
                m.next = "CHECK"

            with m.State("CHECK"):
                with m.If(check_bad):
                    nak(check_r)
                with m.Else():
                    with m.Switch(cmd):
                        with m.Case(Cmd.LOAD_IMAGE):
                            m.next = "COMMIT"
                        with m.Case(Cmd.START):
                            m.d.sync += start.eq(1)
                            m.d.sync += self.done_seen.eq(0)
                            reply()
                        with m.Case(Cmd.READ_LOGITS):
                            reply()                  # lg_cnt logits
                        with m.Case(Cmd.READ_STATUS):
                            reply()                  # the status
                        with m.Case(Cmd.CLEAR):
                            m.d.sync += [nak_count.eq(0), last_err.eq(0), self.link_error.eq(0)]
                            reply()

            # commit: three cycles per byte (address the staging buffer, its output lands in
            # wdata, write it), so img_wr is driven from flip-flops only: wdata follows the
            # block RAM's output every cycle (it can be the RAM's own output register)
            with m.State("COMMIT"):
                m.next = "C_LATCH"
            with m.State("C_LATCH"):
                m.d.sync += c_wr.eq(1)
                m.next = "C_WRITE"
            with m.State("C_WRITE"):
                m.d.comb += [acc.img_wr.valid.eq(1),
                             acc.img_wr.payload.addr.eq(waddr),
                             acc.img_wr.payload.data.eq(wdata)]
                with m.If(acc.img_wr.ready):
                    m.d.sync += [waddr.eq(waddr + 1), c_left.eq(c_left - 1),   # bidx: c_wr
                                 c_one.eq(c_left == 2), c_wr.eq(0)]
                    with m.If(c_one):
                        reply()
                    with m.Else():
                        m.next = "COMMIT"

            # --- reply frame: SOF, type, length, payload, CRC -----------------------------
            # each byte goes into the tx_byte register when it is empty (emit); the CRC is
            # updated from that register as the byte leaves, so it never sees the state mux
            with m.State("T_SOF"):
                with m.If(~tx_full):
                    m.d.sync += t_crc.eq(0xFFFF)    # SOF is not covered by the CRC
                emit(SOF, 0, "T_TYPE")
            with m.State("T_TYPE"):
                emit(reply_type, 1, "T_LEN0")
            with m.State("T_LEN0"):
                emit(reply_len[:8], 1, "T_LEN1")
            with m.State("T_LEN1"):
                emit(reply_len[8:], 1, "T_FETCH")
                with m.If(~tx_full & (reply_len == 0)):
                    m.next = "T_CRC0"
                with m.If(~tx_full & (reply_len != 0)):
                    m.d.sync += sh_en.eq(1)                  # shift in T_FETCH
            with m.State("T_FETCH"):                # the payload byte, into a register
                m.d.sync += [pay_byte.eq(Mux(is_logits, acc.out_data, shreg[:8])),
                             raddr.eq(raddr + 1)]            # shreg shifts (sh_en)
                m.next = "T_PAY"
            with m.State("T_PAY"):
                emit(pay_byte, 1, "T_WAIT1")
                with m.If(~tx_full):
                    m.d.sync += t_left.eq(t_left - 1)
                    with m.If(t_left == 1):
                        m.next = "T_CRC0"
            for k in range(1, OUT_LATENCY):      # the logit read's latency
                with m.State(f"T_WAIT{k}"):
                    m.next = f"T_WAIT{k + 1}" if k + 1 < OUT_LATENCY else "T_FETCH"
                    if k + 1 == OUT_LATENCY:
                        m.d.sync += sh_en.eq(1)              # shift in T_FETCH
            with m.State("T_CRC0"):                 # tx_byte empty: the CRC is complete
                emit(t_crc[:8], 0, "T_CRC1")
            with m.State("T_CRC1"):
                emit(t_crc[8:], 0, "SOF")

        m.d.sync += wdata.eq(br.data)

        # logit read port (OUT_LATENCY cycles): raddr is set at least that long before T_FETCH
        m.d.comb += acc.out_addr.eq(raddr)
        return m
