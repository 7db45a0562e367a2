"""Harness self-test: a registered adder through Verilator (and Icarus), checked by cocotb."""
import pytest
from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl_tests import harness


class _Adder(wiring.Component):
    a: In(signed(8))
    b: In(signed(8))
    y: Out(signed(9))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.y.eq(self.a + self.b)
        return m


@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_harness_adder(sim):
    harness.run(_Adder(), toplevel="smoke_adder", test_module="cocotb_smoke_harness",
                config={"n": 50}, sim=sim)


def test_harness_reports_a_failing_testbench():
    """A wrong expectation in the cocotb test must fail the pytest test (not pass silently)."""
    with pytest.raises(AssertionError, match="cocotb"):
        harness.run(_Adder(), toplevel="smoke_adder", test_module="cocotb_smoke_harness",
                    config={"n": 5, "expect_off_by": 1}, sim="icarus", build_name="smoke_adder_wrong")
