"""The board top level (BoardCore: UART, host link, FakeAccelerator; PLL bypassed) in
Verilator, driven by the host runtime firmware/host.py through a UART model (cocotb).

One Verilator build: the round trip and the bad-frame cases, then the same build run against
a deliberately wrong model to prove the check can fail.
"""
import pytest

from boards.top import BoardCore
from hwgen.hw.accel_if import FakeAccelerator
from rtl_tests import harness

# 8 clock cycles per UART bit; image of 48 bytes in 16-byte frames; a latency long enough
# that commands sent right after START find the accelerator busy.
CFG = dict(in_bytes=48, n_out=10, latency=5000, div=8, max_chunk=16, timeout=400,
           port_timeout=3000, n_images=3, seed=1, gap_prob=0.1)


def _core(cfg):
    acc = FakeAccelerator(cfg["in_bytes"], cfg["n_out"], cfg["latency"])
    return BoardCore(acc, clk_hz=8e6, baud=8_000_000 // cfg["div"], max_chunk=cfg["max_chunk"],
                     timeout_cycles=cfg["timeout"])


def test_board_top():
    harness.run(_core(CFG), toplevel="board_core", test_module="cocotb_board_top", config=CFG,
                build_name="board_core")
    # the same build, checked against a model that is off by one: must fail (under pytest,
    # cocotb's runner reports failed cocotb tests with SystemExit before the harness can)
    with pytest.raises((AssertionError, SystemExit)):
        harness.run(_core(CFG), toplevel="board_core", test_module="cocotb_board_top",
                    config={**CFG, "model_offset": 1}, build_name="board_core",
                    testcase="image_roundtrip")
