"""8N1 UART receiver and transmitter (one start bit, 8 data bits LSB first, one stop bit).

The bit period is ``divisor = round(clk_hz / baud)`` clock cycles (at least 4). The default
baud rate is 3 Mbaud, the FT231X's fastest on the ULX3S; the actual rate must be within 2.5 %
of the one asked (each end of an 8N1 link may be off by about half of the ~5 % budget).
"""

from dataclasses import dataclass

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTParams", "UARTRx", "UARTTx", "DEFAULT_BAUD"]

DEFAULT_BAUD = 3_000_000
MAX_BAUD_ERROR = 0.025


@dataclass(frozen=True)
class UARTParams:
    """Clock and baud rate of a UART.

    Parameters
    ----------
    clk_hz: clock frequency of the ``sync`` domain in Hz.
    baud: bit rate in bit/s (default 3 Mbaud).
    """
    clk_hz: float
    baud: int = DEFAULT_BAUD

    def __post_init__(self):
        if not self.clk_hz > 0 or not self.baud > 0:
            raise ValueError(f"UART clock {self.clk_hz!r} Hz and baud rate {self.baud!r} must be "
                             f"positive")
        if self.divisor < 4:
            raise ValueError(f"UART at {self.baud} baud needs a clock of at least "
                             f"{4 * self.baud / 1e6:g} MHz (4 cycles per bit); the clock is "
                             f"{self.clk_hz / 1e6:g} MHz")
        if self.error > MAX_BAUD_ERROR:
            raise ValueError(f"UART at {self.baud} baud from a {self.clk_hz / 1e6:g} MHz clock: "
                             f"the nearest divisor {self.divisor} gives "
                             f"{self.actual_baud:.0f} baud, {self.error:.1%} off (limit "
                             f"{MAX_BAUD_ERROR:.1%}); pick a clock that is a closer multiple of "
                             f"the baud rate or a lower baud rate")

    @property
    def divisor(self) -> int:
        """Clock cycles per bit."""
        return max(1, round(self.clk_hz / self.baud))

    @property
    def actual_baud(self) -> float:
        return self.clk_hz / self.divisor

    @property
    def error(self) -> float:
        return abs(self.actual_baud - self.baud) / self.baud


class UARTRx(wiring.Component):
    """8N1 receiver.

    ``rx`` is synchronised (2 flip-flops), a start bit is confirmed at its middle, then each
    data bit and the stop bit are sampled one bit period apart. ``o_stream`` presents each
    byte from the middle of its stop bit until taken (latency from the stop bit's middle: 1
    cycle); a byte not taken before the next one completes is overwritten and ``overrun``
    pulses. A stop bit that reads 0 drops the byte and pulses ``frame_error``.
    Throughput: one byte per 10 bit periods.
    """

    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, params: UARTParams):
        if not isinstance(params, UARTParams):
            raise TypeError(f"UARTRx takes UARTParams, not {type(params).__name__}")
        self.params = params
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.params.divisor
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(d))
        bit = Signal(range(10))
        shreg = Signal(8)
        m.d.sync += [self.frame_error.eq(0), self.overrun.eq(0)]
        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):                     # glitch, not a start bit
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(d - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(d - 1), shreg.eq(Cat(shreg[1:], rx)), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(rx):
                        m.d.sync += [self.o_stream.payload.eq(shreg), self.o_stream.valid.eq(1),
                                     self.overrun.eq(self.o_stream.valid & ~self.o_stream.ready)]
                    with m.Else():
                        m.d.sync += self.frame_error.eq(1)
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter: takes a byte from ``i_stream`` when idle and shifts out 10 bits.

    Throughput: one byte per 10 bit periods (``ready`` is high only between bytes).
    ``tx`` idles high.
    """

    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, params: UARTParams):
        if not isinstance(params, UARTParams):
            raise TypeError(f"UARTTx takes UARTParams, not {type(params).__name__}")
        self.params = params
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.params.divisor
        timer = Signal(range(d))
        bits = Signal(10, init=0x3FF)     # start, 8 data, stop; shifted out LSB first
        left = Signal(range(11))
        m.d.comb += [self.i_stream.ready.eq(left == 0), self.tx.eq(bits[0])]
        with m.If(left == 0):
            with m.If(self.i_stream.valid):
                m.d.sync += [bits.eq(Cat(0, self.i_stream.payload, 1)), left.eq(10),
                             timer.eq(d - 1)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [bits.eq(Cat(bits[1:], 1)), left.eq(left - 1), timer.eq(d - 1)]
        return m
