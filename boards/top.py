"""ULX3S top level: PLL, reset synchroniser, accelerator, UART host link, LEDs.

* :func:`pll_params` computes the ECP5 ``EHXPLLL`` dividers for a target clock (the
  ``ecppll`` search: PFD 3.125-400 MHz, VCO 400-800 MHz, feedback from CLKOP).
* :class:`BoardCore` is everything clocked by the ``sync`` domain: UART receiver (with a
  16-byte FIFO), :class:`hwgen.hw.hostlink.HostLink`, UART transmitter, the accelerator and
  the LEDs. It is what the cocotb board test simulates (PLL bypassed: ``clk``/``rst`` ports).
* :class:`ULX3STop` adds the board: the 25 MHz oscillator into the PLL, the ``sync`` domain
  held in reset until the PLL locks (``ResetSynchroniser``), the FTDI UART pins (resource
  ``uart``) and the 8 LEDs, all through ``io.Buffer`` with ``dir="-"``.

LEDs: 0 heartbeat (~1 Hz), 1 idle, 2 busy, 3 error (accelerator error or a rejected frame
since the last ``CLEAR``), 4 done (an inference finished since the last ``START``),
5 UART receive activity, 6 0, 7 PLL locked.
"""

from dataclasses import dataclass
from types import SimpleNamespace

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import fifo, io, wiring
from amaranth.lib.wiring import In, Out

from hwgen.hw.accel_if import AccelSignature
from hwgen.hw.hostlink import HostLink, HostLinkParams
from hwgen.hw.uart import DEFAULT_BAUD, UARTParams, UARTRx, UARTTx

__all__ = ["PLLParams", "pll_params", "BoardCore", "ULX3STop", "REF_MHZ"]

REF_MHZ = 25.0
PFD_MIN, PFD_MAX = 3.125, 400.0
VCO_MIN, VCO_MAX = 400.0, 800.0
OUT_MAX = 400.0


@dataclass(frozen=True)
class PLLParams:
    """EHXPLLL settings (feedback from CLKOP): ``fout = fin * CLKFB_DIV / CLKI_DIV``,
    ``fvco = fout * CLKOP_DIV``."""
    fin_mhz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int

    @property
    def fpfd_mhz(self) -> float:
        return self.fin_mhz / self.clki_div

    @property
    def fout_mhz(self) -> float:
        return self.fin_mhz * self.clkfb_div / self.clki_div

    @property
    def fvco_mhz(self) -> float:
        return self.fout_mhz * self.clkop_div


def pll_params(fout_mhz: float, fin_mhz: float = REF_MHZ) -> PLLParams:
    """The EHXPLLL dividers giving the frequency nearest ``fout_mhz`` from ``fin_mhz``.

    Searches CLKI_DIV 1..128, CLKFB_DIV 1..80, CLKOP_DIV 1..128 under the ECP5 limits (PFD
    3.125-400 MHz, VCO 400-800 MHz); ties go to the VCO nearest 600 MHz. The primary output
    is shifted by 180 degrees as Lattice's tools do: ``CLKOP_CPHASE = CLKOP_DIV // 2``.
    The achieved frequency is :attr:`PLLParams.fout_mhz` (may differ from the one asked).
    """
    if not 3.125 <= fout_mhz <= OUT_MAX:
        raise ValueError(f"PLL output {fout_mhz} MHz is outside the ECP5 EHXPLLL range "
                         f"3.125-{OUT_MAX:g} MHz")
    best = None
    for clki in range(1, 129):
        fpfd = fin_mhz / clki
        if not PFD_MIN <= fpfd <= PFD_MAX:
            continue
        for fb in range(1, 81):
            fout = fpfd * fb
            # CLKOP_DIV range putting the VCO in 400..800 MHz
            lo = max(1, -int(-VCO_MIN // fout))
            hi = min(128, int(VCO_MAX // fout))
            for od in range(lo, hi + 1):
                fvco = fout * od
                key = (abs(fout - fout_mhz), abs(fvco - 600.0))
                if best is None or key < best[0]:
                    best = (key, PLLParams(fin_mhz, clki, fb, od, od // 2))
    if best is None:  # pragma: no cover - every target in range has a solution
        raise ValueError(f"no EHXPLLL setting reaches {fout_mhz} MHz from {fin_mhz} MHz")
    return best[1]


class BoardCore(wiring.Component):
    """UART host link + accelerator + LEDs, all in the ``sync`` domain.

    Parameters
    ----------
    accel: a component with an :class:`hwgen.hw.accel_if.AccelSignature` signature.
    clk_hz: the ``sync`` clock (sets the UART divisor and the heartbeat).
    baud: UART bit rate (default 3 Mbaud).
    max_chunk, timeout_cycles: :class:`hwgen.hw.hostlink.HostLinkParams`; the default
        timeout is 20 ms of clock cycles.

    Members
    -------
    uart_rx: from the FTDI chip (idle high). uart_tx: to it. leds: see the module docstring.
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    leds: Out(8)

    def __init__(self, accel, clk_hz: float, baud: int = DEFAULT_BAUD, max_chunk: int = 1024,
                 timeout_cycles: int | None = None):
        if not isinstance(getattr(accel, "signature", None), AccelSignature):
            raise TypeError(f"BoardCore needs an accelerator with an AccelSignature signature, "
                            f"not {accel!r}")
        self.accel = accel
        self.uart = UARTParams(clk_hz, baud)
        timeout = timeout_cycles if timeout_cycles is not None else max(16, int(clk_hz / 50))
        self.link = HostLinkParams(accel.signature.params, max_chunk, timeout)
        self.clk_hz = clk_hz
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = accel = self.accel
        m.submodules.rx = rx = UARTRx(self.uart)
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=16)
        m.submodules.link = link = HostLink(self.link)
        m.submodules.tx = tx = UARTTx(self.uart)

        m.d.comb += rx.rx.eq(self.uart_rx)
        wiring.connect(m, rx.o_stream, rx_fifo.w_stream)
        wiring.connect(m, rx_fifo.r_stream, link.rx)
        wiring.connect(m, link.tx, tx.i_stream)
        # connect the interface's members only (an accelerator may have more, e.g. debug ports)
        sig = AccelSignature(accel.signature.params)
        wiring.connect(m, link.accel, SimpleNamespace(
            signature=sig, **{name: getattr(accel, name) for name in sig.members}))
        m.d.comb += self.uart_tx.eq(tx.tx)

        beat_bit = max(1, int(self.clk_hz).bit_length() - 1)     # toggles about every 1 s
        beat = Signal(beat_bit + 1)
        act_max = max(1, int(self.clk_hz) // 20)                  # ~50 ms activity blink
        act = Signal(range(act_max + 1))
        m.d.sync += beat.eq(beat + 1)
        with m.If(rx.o_stream.valid):
            m.d.sync += act.eq(act_max)
        with m.Elif(act != 0):
            m.d.sync += act.eq(act - 1)
        m.d.comb += [
            self.leds[0].eq(beat[-1]),
            self.leds[1].eq(~accel.busy),
            self.leds[2].eq(accel.busy),
            self.leds[3].eq(accel.error | link.link_error),
            self.leds[4].eq(link.done_seen),
            self.leds[5].eq(act != 0),
        ]
        return m


class ULX3STop(Elaboratable):
    """The ULX3S design: ``EHXPLLL`` from the 25 MHz oscillator, reset held until lock,
    :class:`BoardCore` on the FTDI UART and LEDs.

    Parameters
    ----------
    accel: the accelerator component (:class:`hwgen.hw.accel_if.AccelSignature`).
    clock_mhz: target ``sync`` clock; the PLL gives :attr:`pll`.fout_mhz (nearest reachable).
    baud, max_chunk: see :class:`BoardCore`.
    """

    def __init__(self, accel, clock_mhz: float, baud: int = DEFAULT_BAUD, max_chunk: int = 1024):
        self.pll = pll_params(clock_mhz)
        self.clock_mhz = self.pll.fout_mhz
        self.core = BoardCore(accel, self.pll.fout_mhz * 1e6, baud, max_chunk)

    def elaborate(self, platform):
        m = Module()
        p = self.pll
        clk25 = platform.request("clk25", 0, dir="-")
        m.submodules.clk25_buf = clk_buf = io.Buffer("i", clk25)

        m.domains.sync = cd_sync = ClockDomain("sync")
        clk_out = Signal()
        locked = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{p.fin_mhz:g}",
            a_FREQUENCY_PIN_CLKOP=f"{p.fout_mhz:.6f}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
            a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKI_DIV=p.clki_div, p_CLKFB_DIV=p.clkfb_div,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
            p_CLKOP_CPHASE=p.clkop_cphase, p_CLKOP_FPHASE=0,
            p_FEEDBK_PATH="CLKOP",
            i_RST=0, i_STDBY=0, i_CLKI=clk_buf.i, i_CLKFB=clk_out,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk_out, o_LOCK=locked,
        )
        m.d.comb += cd_sync.clk.eq(clk_out)
        platform.add_clock_constraint(clk_out, p.fout_mhz * 1e6)
        # The reset reaches every flip-flop of the accelerator: on fabric routing it was the
        # critical path (15.7 ns across the 85F). Synchronise it in a reset-less domain and
        # send it over a global clock network (DCCA), as the clock is.
        m.domains.rst_raw = cd_raw = ClockDomain("rst_raw", reset_less=True)
        m.d.comb += cd_raw.clk.eq(clk_out)
        r1, r2 = Signal(init=1), Signal(init=1)
        m.d.rst_raw += [r1.eq(~locked), r2.eq(r1)]
        rst_g = Signal()
        m.submodules.rst_dcca = Instance("DCCA", i_CLKI=r2, i_CE=1, o_CLKO=rst_g)
        m.d.comb += cd_sync.rst.eq(rst_g)

        m.submodules.core = core = self.core
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [core.uart_rx.eq(rx_buf.i), tx_buf.o.eq(core.uart_tx)]

        for i in range(8):
            led = platform.request("led", i, dir="-")
            m.submodules[f"led{i}"] = buf = io.Buffer("o", led)
            if i == 7:
                m.d.comb += buf.o.eq(locked)
            else:
                m.d.comb += buf.o.eq(core.leds[i])
        return m
