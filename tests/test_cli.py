"""CLI behaviour that does not depend on a model: help, doctor, user errors."""
import json
import subprocess
import sys

import pytest

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


def test_plan_fits_vww_and_refuses_default_mobilenet():
    r = run("plan", "mobilenet", "--alpha", "0.25", "--resolution", "96", "--classes", "2", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["fits"] and d["device"] == "85F" and d["macs"] == 7_489_664
    assert sum(layer["cycles"] for layer in d["layers"]) == d["cycles"]
    r = run("plan", "mobilenet", "--alpha", "0.25")
    assert r.returncode == 1
    assert "does not fit" in r.stderr and "block RAM" in r.stderr and "What would fit" in r.stderr


def test_summary_export_golden_roundtrip(tmp_path):
    import numpy as np
    opts = ["--alpha", "0.25", "--resolution", "32", "--classes", "3"]
    r = run("summary", "mobilenet", *opts, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["params"] > 0
    onnx_path = tmp_path / "m.onnx"
    r = run("export", "mobilenet", *opts, "--quantized", "-o", str(onnx_path))
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("golden", str(onnx_path), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"))
    assert r.returncode == 0, r.stderr
    from hwgen.frontend.onnx import run_onnxruntime
    y = np.load(tmp_path / "y.npy")
    ref = run_onnxruntime(onnx_path, x)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    # a chain network: onnxruntime runs every layer in its integer kernels, golden matches exactly
    np.testing.assert_array_equal(y, ref)


def test_build_default_mobilenet_stops_with_fit_error_before_synthesis(tmp_path):
    out = tmp_path / "b"
    r = run("build", "mobilenet", "--alpha", "0.25", "--board", "ulx3s", "--out", str(out))
    assert r.returncode == 2
    assert "does not fit the ULX3S 85F" in r.stderr and "What would fit" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()   # nothing written


def test_prog_without_bitstream_or_board(tmp_path):
    r = run("prog", "--dir", str(tmp_path))
    assert r.returncode != 0 and "no bitstream" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "top.bit").write_bytes(b"\xff" * 64)
    r = run("prog", "--dir", str(tmp_path))
    assert r.returncode == 1
    assert "no ULX3S found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("placer", [None, "heap"])
def test_build_passes_the_placement_seed_to_nextpnr(tmp_path, monkeypatch, placer):
    """`hwgen build --pnr-seed N [--placer P]` puts --seed N and the placer (default
    static) on nextpnr's command line (the build script is written before the first tool
    runs; the tools themselves are not run)."""
    import boards.build as bb

    class Stop(Exception):
        pass

    def no_tools(tool, *a, **k):
        raise Stop(tool)

    monkeypatch.setattr(bb, "_run_tool", no_tools)
    out = tmp_path / "b"
    try:
        cli.main(["build", "mobilenet", "--alpha", "0.25", "--resolution", "32", "--classes", "2",
                  "--board", "ulx3s-85f", "--out", str(out), "--pnr-seed", "7"]
                 + (["--placer", placer] if placer else []))
    except Stop as e:
        assert str(e) == "yosys"
    else:
        raise AssertionError("the build finished without running a tool")
    script = (out / "build_top.sh").read_text()
    assert "--seed 7" in script and "--seed 1 " not in script
    assert f"--placer {placer or 'static'} " in script


def test_build_pnr_seeds_reaches_the_flow_and_is_checked(monkeypatch, capsys):
    """`--pnr-seeds K` and `--pnr-jobs J` go to the flow (defaults 4 and one per core, at
    most K: None here, chosen by the flow); K or J < 1 is a usage error naming the option."""
    from hwgen import flow
    seen = {}

    def fake_build(model, **kw):
        seen.update(kw)
        return {"bitstream": None}
    monkeypatch.setattr(flow, "build", fake_build)
    cli.main(["build", "mobilenet", "--alpha", "0.25", "--json"])
    assert seen["pnr_seeds"] == 4 and seen["pnr_jobs"] is None
    cli.main(["build", "mobilenet", "--alpha", "0.25", "--pnr-seeds", "3", "--pnr-jobs", "1",
              "--json"])
    assert seen["pnr_seeds"] == 3 and seen["pnr_jobs"] == 1
    monkeypatch.setattr(flow.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert flow.default_pnr_jobs(4) == 2 and flow.default_pnr_jobs(1) == 1
    with pytest.raises(SystemExit) as e:
        cli.main(["build", "mobilenet", "--pnr-jobs", "0"])
    assert e.value.code == 2
    assert "--pnr-jobs: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["build", "mobilenet", "--pnr-seeds", "0"])
    assert e.value.code == 2
    assert "--pnr-seeds: expected a whole number >= 1, got '0'" in capsys.readouterr().err
