import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--sim", default=None, choices=("verilator", "icarus"),
                     help="HDL simulator for cocotb testbenches (default: verilator, or $HWGEN_SIM)")


def pytest_configure(config):
    sim = config.getoption("--sim", default=None)
    if sim:
        os.environ["HWGEN_SIM"] = sim
