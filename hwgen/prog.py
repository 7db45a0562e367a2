"""Programming a ULX3S with openFPGALoader (`hwgen prog`, `make prog`).

:func:`program` loads a bitstream into the FPGA's SRAM (lost at power-off) or, with
``flash=True``, writes it to the board's SPI flash. Every failure is a :class:`ProgramError`
with a one-line message (no board, no permission, no bitstream, tool missing).
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import tools

__all__ = ["ProgramError", "ProgramResult", "program", "find_bitstream", "run_prog"]


class ProgramError(RuntimeError):
    """Programming failed; ``str(e)`` is one line, ``e.returncode`` the tool's exit status."""

    def __init__(self, message: str, returncode: int = 1):
        super().__init__(message)
        self.returncode = returncode or 1


@dataclass(frozen=True)
class ProgramResult:
    bitstream: Path
    flash: bool
    output: str          # openFPGALoader's output


def find_bitstream(path) -> Path:
    """``path`` itself if it is a file, ``path/top.bit`` if it is a build folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "top.bit"
    if not p.exists():
        raise ProgramError(f"no bitstream at {p}: build one first (hwgen build MODEL --board "
                           f"ulx3s --out DIR), or give its path", 2)
    if p.stat().st_size == 0:
        raise ProgramError(f"bitstream {p} is empty: rebuild it", 2)
    return p


def _why(text: str) -> str:
    """The line of openFPGALoader's output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for key in ("unable to open", "device not found", "permission", "error", "fail"):
        for ln in lines:
            if key in ln.lower():
                return ln
    return lines[-1] if lines else "no output"


def program(bitstream, flash: bool = False, *, env: dict | None = None,
            timeout: float = 300.0) -> ProgramResult:
    """Program a ULX3S over its FTDI JTAG (``openFPGALoader -b ulx3s``).

    Parameters
    ----------
    bitstream: ``top.bit`` or the build folder holding it.
    flash: write the SPI flash (``-f``, survives power-off) instead of the SRAM (``-m``).
    env: environment for the tool (default :func:`hwgen.tools.tool_env`).

    Raises
    ------
    ProgramError: one line saying why (no board attached: "no ULX3S found ..." quoting
        openFPGALoader's own reason, e.g. ``unable to open ftdi device: -3 (device not
        found)``).
    """
    bit = find_bitstream(bitstream)
    exe = tools.find("openFPGALoader")
    if exe is None:
        fix = next(t.fix for t in tools.TOOLS if t.name == "openFPGALoader")
        raise ProgramError(f"openFPGALoader not found: {fix}", 2)
    cmd = [exe, "-b", "ulx3s", "-f" if flash else "-m", str(bit)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=tools.tool_env() if env is None else env)
    except subprocess.TimeoutExpired:
        raise ProgramError(f"openFPGALoader did not finish in {timeout:.0f} s") from None
    out = r.stdout + r.stderr
    if r.returncode != 0:
        why = _why(out)
        if "ftdi" in why.lower() or "device not found" in why.lower() or "usb" in why.lower():
            msg = (f"no ULX3S found: openFPGALoader says \"{why}\" (connect the board's US1 "
                   f"USB port; on Linux check the udev rule / permissions)")
        else:
            msg = f"programming {bit} failed: openFPGALoader says \"{why}\""
        raise ProgramError(msg, r.returncode)
    return ProgramResult(bit, flash, out)


def run_prog(bitstream, flash: bool = False, stream=None) -> int:
    """CLI helper: program, print one line, return the exit status (0 on success)."""
    stream = stream or sys.stderr
    try:
        res = program(bitstream, flash)
    except ProgramError as e:
        print(f"hwgen prog: error: {e}", file=stream)
        return e.returncode
    where = "SPI flash" if flash else "SRAM"
    print(f"programmed {res.bitstream} into the ULX3S {where}", file=stream)
    return 0
