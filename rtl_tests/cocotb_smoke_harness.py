import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, ReadOnly

from harness import tb_config


@cocotb.test()
async def adder(dut):
    cfg = tb_config()
    n, bias = cfg["n"], cfg.get("expect_off_by", 0)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    rng = random.Random(1)
    for _ in range(n):
        a, b = rng.randint(-128, 127), rng.randint(-128, 127)
        dut.a.value = a
        dut.b.value = b
        await RisingEdge(dut.clk)
        await ReadOnly()
        assert dut.y.value.to_signed() == a + b + bias
        await RisingEdge(dut.clk)
