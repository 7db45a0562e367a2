"""cocotb testbench of hwgen.hw.dwunit.DwUnit in rtl_tests.test_dwunit.DwBench.

Config: ``runs`` (each: ``loads`` = (memory, address, value) writes, ``layers`` = packed
descriptor, name and golden output), ``result`` (JSON file receiving [name, cycles] per
layer). Per run: load the memories, then start the layers back to back (the next start in
the cycle after ``done`` is seen high), capture every write request and compare bit-exact
(rtl_tests.test_dwunit.check_layer). Cycles = start pulse to ``done`` high.
"""
from __future__ import annotations

import json

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from harness import tb_config
from rtl_tests.test_dwunit import check_layer


@cocotb.test()
async def dwunit_layers(dut):
    cfg = tb_config()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.ld_en.value = 0
    dut.desc.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    measured = []
    for run in cfg["runs"]:
        for sel, addr, val in run["loads"]:
            dut.ld_en.value = 1
            dut.ld_sel.value = sel
            dut.ld_addr.value = addr
            dut.ld_data.value = val
            await RisingEdge(dut.clk)
        dut.ld_en.value = 0
        await RisingEdge(dut.clk)
        for layer in run["layers"]:
            dut.desc.value = layer["desc"]
            dut.start.value = 1
            await RisingEdge(dut.clk)
            dut.start.value = 0
            writes, cycles = [], 1
            while True:
                await ReadOnly()
                if dut.wr_en.value:
                    writes.append((int(dut.wr_pix.value), int(dut.wr_ch.value),
                                   dut.wr_data.value.to_signed()))
                if dut.done.value:
                    break
                await RisingEdge(dut.clk)
                cycles += 1
                assert cycles < 50_000, f"{layer['name']}: timeout"
            await RisingEdge(dut.clk)      # next start in the cycle after done
            check_layer(layer, writes, cycles)
            measured.append([layer["name"], cycles])
            dut._log.info(f"{layer['name']}: {cycles} cycles")
    with open(cfg["result"], "w") as f:
        json.dump(measured, f)
