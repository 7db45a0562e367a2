"""EHXPLLL parameters for the ULX3S's 25 MHz oscillator: ECP5 limits, exact hits, the
nearest reachable clock, and the values reaching the generated design."""
from __future__ import annotations

import re

import pytest

from boards.top import PFD_MAX, PFD_MIN, VCO_MAX, VCO_MIN, ULX3STop, pll_params
from hwgen.hw.accel_if import FakeAccelerator

TARGETS = (25, 40, 48, 50, 60, 62.5, 75, 80, 90, 100, 110, 120, 125, 133, 140, 150, 166, 200, 250)


def _reachable(fin=25.0):
    """Every (fout, fvco) the dividers allow, by brute force over the full ranges."""
    out = set()
    for clki in range(1, 129):
        if not PFD_MIN <= fin / clki <= PFD_MAX:
            continue
        for fb in range(1, 81):
            for od in range(1, 129):
                fout = fin / clki * fb
                if VCO_MIN <= fout * od <= VCO_MAX:
                    out.add(round(fout, 9))
    return sorted(out)


@pytest.mark.parametrize("target", TARGETS)
def test_pll_within_ecp5_limits(target):
    p = pll_params(target)
    assert 1 <= p.clki_div <= 128 and 1 <= p.clkfb_div <= 80 and 1 <= p.clkop_div <= 128
    assert PFD_MIN <= p.fpfd_mhz <= PFD_MAX
    assert VCO_MIN <= p.fvco_mhz <= VCO_MAX
    assert p.fout_mhz == pytest.approx(25.0 * p.clkfb_div / p.clki_div)
    assert p.fvco_mhz == pytest.approx(p.fout_mhz * p.clkop_div)
    assert p.clkop_cphase == p.clkop_div // 2


def test_pll_nearest_frequency():
    reach = _reachable()
    for target in TARGETS:
        best = min(abs(f - target) for f in reach)
        assert abs(pll_params(target).fout_mhz - target) == pytest.approx(best, abs=1e-9), target


def test_pll_known_settings():
    # integer multiples of 25 MHz are exact, with the VCO nearest 600 MHz
    p = pll_params(100)
    assert (p.clki_div, p.clkfb_div, p.clkop_div, p.clkop_cphase) == (1, 4, 6, 3)
    assert p.fvco_mhz == 600
    p = pll_params(150)
    assert (p.clki_div, p.clkfb_div, p.clkop_div, p.clkop_cphase) == (1, 6, 4, 2)
    assert pll_params(62.5).fout_mhz == 62.5          # 25 / 2 * 5
    assert pll_params(48).fout_mhz == pytest.approx(46.875)   # 48 needs a 1 MHz PFD: not allowed


@pytest.mark.parametrize("bad", (2.0, 401.0))
def test_pll_out_of_range(bad):
    with pytest.raises(ValueError, match="outside the ECP5 EHXPLLL range"):
        pll_params(bad)


def test_pll_parameters_reach_the_design():
    from amaranth_boards.ulx3s import ULX3S_12F_Platform
    top = ULX3STop(FakeAccelerator(8, 2, 20), 125)
    plan = ULX3S_12F_Platform().build(top, name="top", do_build=False)
    il = plan.files["top.il"]
    params = dict(re.findall(r"parameter \\(CLKI_DIV|CLKFB_DIV|CLKOP_DIV|CLKOP_CPHASE) (\d+)", il))
    assert params == {"CLKI_DIV": "1", "CLKFB_DIV": "5", "CLKOP_DIV": "5", "CLKOP_CPHASE": "2"}
    assert 'FREQUENCY NET "clk_out" 125000000.0 HZ' in plan.files["top.lpf"]
    assert top.core.uart.divisor == 42               # 3 Mbaud from 125 MHz: 41.67 -> 42 (0.8 %)
