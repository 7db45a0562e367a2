"""CLI behaviour that does not depend on a model: help, doctor, user errors."""
import json
import subprocess
import sys

from hwgen import cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "hwgen.cli", *args], capture_output=True, text=True)


def test_help_lists_subcommands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("models", "summary", "export", "golden", "doctor"):
        assert cmd in r.stdout


def test_doctor_json_reports_every_tool(capsys):
    rc = cli.main(["doctor", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {r["tool"] for r in rows} == {"yosys", "nextpnr-ecp5", "ecppack", "verilator",
                                         "iverilog", "openFPGALoader"}
    for r in rows:
        assert r["found"] == (r["path"] is not None)
        assert (r["fix"] is None) == r["found"]
    assert rc == (0 if all(r["found"] for r in rows) else 1)


def test_unknown_model_is_one_line_error():
    r = run("summary", "resnet")
    assert r.returncode == 2
    assert "unknown model 'resnet'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_onnx_file_is_one_line_error(tmp_path):
    r = run("summary", str(tmp_path / "nope.onnx"))
    assert r.returncode == 2
    assert "no such ONNX file" in r.stderr and "Traceback" not in r.stderr
