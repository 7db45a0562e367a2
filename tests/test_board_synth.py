"""The board flow through amaranth-boards' ULX3S platform and the YoWASP tools.

Fast tier: the board top level (PLL, UART host link, a small fake accelerator) synthesised
for the 12F with yosys only, so a broken board flow fails CI. Slow tier: full place and route
and ecppack on the 85F, with the Fmax parsed from nextpnr's report.
"""
from __future__ import annotations

import json

import pytest

from boards import get_board
from boards.build import (ToolError, _plan_commands, build_bitstream, next_clock,
                          parse_nextpnr_report)
from boards.top import ULX3STop
from hwgen.hw.accel_if import FakeAccelerator


def _top(clock_mhz):
    return ULX3STop(FakeAccelerator(48, 10, 100), clock_mhz)


def test_board_synth_12f(tmp_path):
    events = []
    res = build_bitstream(_top(50), "ulx3s-12f", 50, tmp_path, synth_only=True,
                          progress=lambda stage, msg: events.append((stage, msg)))
    cells = res.resources["cells"]
    assert cells["EHXPLLL"] == 1
    assert cells["TRELLIS_IO"] == 11               # clk25, uart rx/tx, 8 LEDs
    assert res.resources["dp16kd"]["used"] >= 1    # the host link's staging buffer
    assert 300 < res.resources["lut4"]["used"] < 4000
    assert res.resources["lut4"]["available"] == get_board("ulx3s", "12F").budget.lut4
    assert res.bitstream is None and res.fmax_mhz is None and res.pll_mhz == 50
    assert [s for s, _ in events] == ["prepare", "synth", "synth", "done"]
    assert set(res.stage_seconds) == {"prepare", "synth"}
    assert res.logs == {"yosys": str(tmp_path / "top.rpt")}
    for name in ("top.il", "top.lpf", "top.rpt", "top.json", "build.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "build.json").read_text())["board"] == "ulx3s-12f"
    assert 'LOCATE COMP "uart_0__rx__io" SITE "M1"' in (tmp_path / "top.lpf").read_text()


def test_parse_nextpnr_report(tmp_path):
    rep = {"fmax": {"$glbnet$clk25": {"achieved": 300.0, "constraint": 25.0},
                    "$glbnet$clk": {"achieved": 93.5, "constraint": 100.0}},
           "utilization": {"TRELLIS_COMB": {"used": 1500, "available": 83640},
                           "TRELLIS_FF": {"used": 600, "available": 83640},
                           "DP16KD": {"used": 3, "available": 208}}}
    (tmp_path / "r.json").write_text(json.dumps(rep))
    r = parse_nextpnr_report(tmp_path / "r.json")
    assert (r["fmax_mhz"], r["constraint_mhz"], r["timing_met"]) == (93.5, 100.0, False)
    assert r["resources"]["lut4"] == {"used": 1500, "available": 83640}
    assert r["resources"]["mult18"] == {"used": 0, "available": 0}
    rep["fmax"]["$glbnet$clk"]["achieved"] = 101.0
    (tmp_path / "r.json").write_text(json.dumps(rep))
    assert parse_nextpnr_report(tmp_path / "r.json")["timing_met"] is True


def test_retry_clock_and_bad_inputs(tmp_path):
    assert next_clock(150, 131.4) == 127.0         # 3 % under the achieved Fmax
    assert next_clock(100, 99.9) == 95.0           # at least 5 % lower
    assert next_clock(26, 20) is None              # below the 25 MHz floor: give up
    with pytest.raises(ValueError, match="needs `top` as a callable"):
        build_bitstream(object(), "ulx3s-12f", 50, tmp_path, retries=1)
    with pytest.raises(ToolError, match="unexpected build script"):
        _plan_commands("#!/bin/sh\nyosys top.ys\n")


@pytest.mark.slow
def test_board_bitstream_85f(tmp_path):
    events = []
    res = build_bitstream(_top, "ulx3s-85f", 100, tmp_path, retries=1,
                          progress=lambda stage, msg: events.append((stage, msg)))
    assert res.bitstream == tmp_path / "top.bit" and res.bitstream.stat().st_size > 100_000
    assert (tmp_path / "top.svf").stat().st_size > 0
    assert res.fmax_mhz is not None and res.fmax_mhz > 50
    assert res.timing_met, f"Fmax {res.fmax_mhz:.1f} MHz at {res.clock_mhz} MHz"
    b = get_board("ulx3s", "85F").budget
    assert res.resources["lut4"]["available"] == b.lut4
    assert res.resources["dp16kd"]["available"] == b.dp16kd
    assert res.resources["mult18"]["available"] == b.mult18
    assert {"synth", "pnr", "pack"} <= set(res.stage_seconds)
    assert any(stage == "pnr" and "Fmax" in msg for stage, msg in events)
    assert res.logs["nextpnr-ecp5"] == str(tmp_path / "top.tim")
    for name in ("top.rpt", "top.tim", "top.report.json"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_retry_at_lower_clock(tmp_path, monkeypatch):
    """A timing failure rebuilds the design at next_clock() and says so (tools stubbed)."""
    from boards import build as bb
    fmax = {150.0: 131.4, 127.0: 130.2}
    built = []

    def fake_once(design, b, clock, outdir, say, synth_only, seed, placer, env, timeout):
        built.append((design, clock))
        return bb.BuildResult(outdir=outdir, board=b.name, clock_mhz=clock, pll_mhz=clock,
                              synth_only=False, fmax_mhz=fmax[clock],
                              timing_met=fmax[clock] >= clock, stage_seconds={"pnr": 1.0})
    monkeypatch.setattr(bb, "_build_once", fake_once)
    events = []
    res = build_bitstream(lambda mhz: f"design@{mhz}", "ulx3s-85f", 150.0, tmp_path, retries=2,
                          progress=lambda s, msg: events.append((s, msg)))
    assert built == [("design@150.0", 150.0), ("design@127.0", 127.0)]
    assert res.timing_met and res.clock_mhz == 127.0
    assert res.attempts == [{"clock_mhz": 150.0, "pnr_seed": None, "fmax_mhz": 131.4,
                             "timing_met": False, "stage_seconds": {"pnr": 1.0}}]
    assert ("retry", "timing not met at 150 MHz (Fmax 131.4 MHz): retrying at 127 MHz") in events
    assert res.build_seconds == 1.0 and res.total_seconds == 2.0
    assert res.to_dict()["total_seconds"] == 2.0
    # without retries the failure is returned as is
    built.clear()
    res = build_bitstream(lambda mhz: f"design@{mhz}", "ulx3s-85f", 150.0, tmp_path)
    assert built == [("design@150.0", 150.0)] and res.timing_met is False


def _fake_tools(monkeypatch, fmax_by_seed, clock=100.0):
    """Stub the three tools: yosys writes a cell count, nextpnr a report whose Fmax is
    ``fmax_by_seed[(pll clock, --seed)]``, ecppack a bitstream. Returns the calls made."""
    from boards import build as bb
    calls = []

    def fake_tool(tool, var, args, outdir, env, timeout):
        if tool == "yosys":
            (outdir / "top.stat").write_text("   42 LUT4\n")
            (outdir / "top.rpt").write_text("synthesised\n")
            calls.append(("yosys",))
            return str(outdir / "top.rpt")
        if tool == "nextpnr-ecp5":
            seed = int(args[args.index("--seed") + 1])
            lpf = (outdir / "top.lpf").read_text()
            mhz = float(lpf.split('FREQUENCY NET "clk_out" ')[1].split()[0]) / 1e6
            fmax = fmax_by_seed[(round(mhz, 1), seed)]
            (outdir / "top.report.json").write_text(json.dumps(
                {"fmax": {"clk_out": {"achieved": fmax, "constraint": mhz}},
                 "utilization": {"TRELLIS_COMB": {"used": 42, "available": 83640}}}))
            (outdir / "top.tim").write_text(f"seed {seed}\n")
            calls.append(("nextpnr", round(mhz, 1), seed))
            return str(outdir / "top.tim")
        (outdir / "top.bit").write_bytes(b"bit")
        (outdir / "top.svf").write_text("svf")
        calls.append(("ecppack",))
        return str(outdir / "ecppack.log")
    monkeypatch.setattr(bb, "_run_tool", fake_tool)
    return calls


def test_other_seeds_before_a_lower_clock(tmp_path, monkeypatch):
    """A timing miss at the asked clock places and routes the same netlist again (no new
    synthesis) with the next seeds, keeping each attempt's report; only when every seed
    misses does the build go to a lower clock, from the best seed's Fmax."""
    calls = _fake_tools(monkeypatch, {(100.0, 3): 92.0, (100.0, 4): 101.5})
    events = []
    res = build_bitstream(_top, "ulx3s-85f", 100.0, tmp_path, seed=3, pnr_seeds=3, retries=2,
                          progress=lambda s, msg: events.append((s, msg)))
    assert calls == [("yosys",), ("nextpnr", 100.0, 3), ("ecppack",),
                     ("nextpnr", 100.0, 4), ("ecppack",)]
    assert res.timing_met and res.pnr_seed == 4 and res.fmax_mhz == 101.5
    assert res.clock_mhz == 100.0 and res.bitstream.read_bytes() == b"bit"
    assert [(a["pnr_seed"], a["fmax_mhz"]) for a in res.attempts] == [(3, 92.0)]
    assert ("retry", "timing not met at 100 MHz with seed 3 (Fmax 92.0 MHz): placing and "
                     "routing again with seed 4") in events
    assert (tmp_path / "attempt1.top.tim").read_text() == "seed 3\n"
    assert (tmp_path / "top.tim").read_text() == "seed 4\n"
    assert res.logs["yosys"] == str(tmp_path / "top.rpt")      # the reused synthesis
    assert set(res.stage_seconds) == {"pnr", "pack"}          # this attempt: no synthesis
    assert set(res.total_stage_seconds) == {"prepare", "synth", "pnr", "pack"}
    assert res.total_seconds == pytest.approx(sum(res.total_stage_seconds.values()))
    # every seed misses: the lower clock comes from the best seed's Fmax (3 % under 94:
    # 91 MHz asked, the PLL makes 90.6)
    calls = _fake_tools(monkeypatch, {(100.0, 1): 90.0, (100.0, 2): 94.0, (90.6, 1): 93.0})
    res = build_bitstream(_top, "ulx3s-85f", 100.0, tmp_path, pnr_seeds=2, retries=1)
    assert [c for c in calls if c[0] == "nextpnr"] == [("nextpnr", 100.0, 1), ("nextpnr", 100.0, 2),
                                                      ("nextpnr", 90.6, 1)]
    assert res.timing_met and res.clock_mhz == 91.0
    assert [(a["clock_mhz"], a["pnr_seed"]) for a in res.attempts] == [(100.0, 1), (100.0, 2)]
    with pytest.raises(ValueError, match="pnr_seeds must be at least 1"):
        build_bitstream(_top, "ulx3s-85f", 100.0, tmp_path, pnr_seeds=0)


def test_abc9_crash_falls_back_to_classic_abc(tmp_path, monkeypatch):
    """When yosys' ABC9 dies, synthesis is re-planned (on a fresh platform: one platform
    prepares one design only once) with the classic ABC LUT mapper, and says so."""
    from boards import build as bb
    calls = []

    def fake_tool(tool, var, args, outdir, env, timeout):
        script = (outdir / "top.ys").read_text()
        calls.append("abc -lut 4" in script)
        if len(calls) == 1:
            (outdir / "top.rpt").write_text("2.46.25.5. Executing ABC9.\nERROR: Assert failed\n")
            raise ToolError("yosys failed (exit 1)")
        (outdir / "top.stat").write_text("   42 LUT4\n   3 DP16KD\n")
        return str(outdir / "top.rpt")
    monkeypatch.setattr(bb, "_run_tool", fake_tool)
    events = []
    res = build_bitstream(_top(50), "ulx3s-12f", 50, tmp_path, synth_only=True,
                          progress=lambda stage, msg: events.append((stage, msg)))
    assert calls == [False, True]
    assert any("classic ABC" in msg for _, msg in events)
    assert res.resources["lut4"]["used"] == 42 and res.resources["dp16kd"]["used"] == 3


def test_build_real_accelerator_synth_12f(tmp_path):
    """`hwgen build` of a small real network for the 12F through synthesis: the generated
    accelerator (DP16KD stores with their INITVALs, DSPs) goes through yosys, and the
    mapper's resource estimate agrees with what yosys counts."""
    from hwgen import flow
    events = []
    r = flow.build("mobilenet", board="ulx3s", device="12F", out=tmp_path, synth_only=True,
                   progress=lambda stage, msg: events.append((stage, msg)),
                   alpha=0.05, resolution=32, classes=3)
    res = r["resources"]
    for k in ("lut4", "mult18", "dp16kd"):
        assert 0 < res[k]["used"] <= res[k]["available"], (k, res[k])
    assert abs(res["mult18"]["used"] - res["mult18"]["planned"]) <= 3, res["mult18"]
    assert abs(res["dp16kd"]["used"] - res["dp16kd"]["planned"]) <= 3, res["dp16kd"]
    assert r["cells"]["DP16KD"] == res["dp16kd"]["used"]
    assert r["bitstream"] is None and r["fmax_mhz"] is None
    assert [s for s, _ in events][:2] == ["map", "map"] and "depthwise unit" in events[1][1]
    for name in ("report.json", "report.md", "report.html", "program.bin", "weights.bin",
                 "top.rpt"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_retry_skips_clocks_the_design_refuses(tmp_path, monkeypatch):
    """A retry clock the design refuses (ValueError: e.g. no UART divisor close enough to
    3 Mbaud) is stepped down by 0.5 MHz until the design accepts one."""
    from boards import build as bb
    built = []

    def make(mhz):
        if mhz in (34.0, 33.5):
            raise ValueError(f"UART at 3000000 baud from a {mhz} MHz clock: ...")
        return f"design@{mhz}"

    def fake_once(design, b, clock, outdir, say, synth_only, seed, placer, env, timeout):
        built.append((design, clock))
        return bb.BuildResult(outdir=outdir, board=b.name, clock_mhz=clock, pll_mhz=clock,
                              synth_only=False, fmax_mhz=35.1 if clock == 100.0 else 40.0,
                              timing_met=clock < 40, stage_seconds={"pnr": 1.0})
    monkeypatch.setattr(bb, "_build_once", fake_once)
    res = build_bitstream(make, "ulx3s-85f", 100.0, tmp_path, retries=1)
    assert built == [("design@100.0", 100.0), ("design@33.0", 33.0)]
    assert res.timing_met and res.clock_mhz == 33.0


_FAKE_NEXTPNR = r'''#!{python}
"""A stand-in nextpnr-ecp5: Fmax, run time and exit code per seed from FAKE_PNR (JSON)."""
import json, os, sys, time
a = sys.argv[1:]
arg = lambda k: a[a.index(k) + 1]
seed = arg("--seed")
fmax, secs, rc = json.loads(os.environ["FAKE_PNR"])[seed]
lpf = open(arg("--lpf")).read()
mhz = float(lpf.split('FREQUENCY NET "clk_out" ')[1].split()[0]) / 1e6
time.sleep(secs)
open(arg("--log"), "w").write(f"seed {{seed}}\n")
if rc:
    print("ERROR: fake failure"); sys.exit(rc)
open(arg("--report"), "w").write(json.dumps(
    {{"fmax": {{"clk_out": {{"achieved": fmax, "constraint": mhz}}}},
     "utilization": {{"TRELLIS_COMB": {{"used": 42, "available": 83640}}}}}}))
open(arg("--textcfg"), "w").write(f"config of seed {{seed}}\n")
'''


def _fake_parallel_tools(monkeypatch, tmp_path, per_seed):
    """yosys and ecppack stubbed in-process; nextpnr a real process (a script) so seeds run
    at once: ``per_seed[seed] = (fmax, seconds, exit code)``. Returns (env, calls)."""
    import os
    import subprocess
    import sys
    from boards import build as bb
    exe = tmp_path / "fake-nextpnr"
    exe.write_text(_FAKE_NEXTPNR.format(python=sys.executable))
    exe.chmod(0o755)
    calls = []

    def fake_tool(tool, var, args, outdir, env, timeout):
        calls.append(tool)
        if tool == "yosys":
            (outdir / "top.stat").write_text("   42 LUT4\n")
            (outdir / "top.rpt").write_text("synthesised\n")
            return str(outdir / "top.rpt")
        if tool == "nextpnr-ecp5":          # one seed in place (the sequential path)
            subprocess.run([str(exe), *args], cwd=outdir, env=env, check=True)
            return str(outdir / "top.tim")
        cfg = (outdir / "top.config").read_text()
        (outdir / "top.bit").write_text(f"bit from {cfg}")
        (outdir / "top.svf").write_text("svf")
        return str(outdir / "ecppack.log")
    monkeypatch.setattr(bb, "_run_tool", fake_tool)
    env = dict(os.environ, NEXTPNR_ECP5=str(exe),
               FAKE_PNR=json.dumps({str(k): v for k, v in per_seed.items()}))
    return env, calls


def test_seeds_in_parallel_first_to_meet_wins(tmp_path, monkeypatch):
    """pnr_jobs=2: seeds 1 and 2 run at once, each in its own folder; the first to meet the
    clock is kept (its files in the build folder, packed) and the other is stopped at once."""
    import time
    out = tmp_path / "b"
    env, calls = _fake_parallel_tools(monkeypatch, tmp_path, {1: (104.0, 0.2, 0), 2: (120.0, 60, 0)})
    events = []
    t = time.monotonic()
    res = build_bitstream(_top, "ulx3s-85f", 100.0, out, pnr_seeds=2, pnr_jobs=2, env=env,
                          progress=lambda s, msg: events.append((s, msg)))
    assert time.monotonic() - t < 30                 # seed 2 (60 s) was stopped
    assert res.timing_met and res.pnr_seed == 1 and res.fmax_mhz == 104.0
    assert calls == ["yosys", "ecppack"] and res.attempts == []
    assert (out / "top.bit").read_text() == "bit from config of seed 1\n"
    assert (out / "top.tim").read_text() == "seed 1\n"
    assert json.loads((out / "top.report.json").read_text())["fmax"]["clk_out"]["achieved"] == 104.0
    assert not list(out.glob("pnr-seed*"))
    assert ("pnr", "running nextpnr-ecp5 with seeds 1 and 2 at once") in events
    assert ("pnr", "seed 1 met the clock: seed 2 stopped") in events
    assert {"prepare", "synth", "pnr", "pack"} == set(res.stage_seconds)
    assert res.wall_seconds >= res.stage_seconds["pnr"]


def test_seeds_in_parallel_batches_then_lower_clock(tmp_path, monkeypatch):
    """Four seeds two at a time: a batch that misses leaves its reports as attempt{n}.* and
    the next batch runs; when every seed misses, the best is packed (retries=0) or the flow
    goes to a lower clock from the best Fmax."""
    out = tmp_path / "b"
    env, calls = _fake_parallel_tools(monkeypatch, tmp_path, {
        1: (91.0, 0.1, 0), 2: (93.0, 0.3, 0), 3: (96.5, 0.1, 0), 4: (95.0, 0.2, 0)})
    events = []
    res = build_bitstream(_top, "ulx3s-85f", 100.0, out, pnr_seeds=4, pnr_jobs=2, env=env,
                          progress=lambda s, msg: events.append((s, msg)))
    assert res.timing_met is False and res.pnr_seed == 3 and res.fmax_mhz == 96.5
    assert calls == ["yosys", "ecppack"]           # one synthesis, the best one packed
    assert [(a["pnr_seed"], a["fmax_mhz"]) for a in res.attempts] == \
        [(1, 91.0), (2, 93.0), (4, 95.0)]
    for n, seed in enumerate((1, 2, 4), 1):
        assert (out / f"attempt{n}.top.tim").read_text() == f"seed {seed}\n"
        assert (out / f"attempt{n}.top.report.json").exists()
    assert (out / "top.tim").read_text() == "seed 3\n"
    assert (out / "top.bit").read_text() == "bit from config of seed 3\n"
    assert not list(out.glob("pnr-seed*"))
    assert ("retry", "timing not met at 100 MHz with seeds 1 and 2 (best Fmax 93.0 MHz): "
                     "placing and routing again with seeds 3 and 4") in events
    assert set(res.stage_seconds) == {"pnr", "pack"}          # the second batch's
    assert set(res.total_stage_seconds) == {"prepare", "synth", "pnr", "pack"}
    # with a retry: the lower clock (3 % under 96.5: 93.5 MHz asked) is one seed, in place
    env2, calls = _fake_parallel_tools(monkeypatch, tmp_path, {
        1: (91.0, 0.1, 0), 2: (96.5, 0.1, 0)})
    res = build_bitstream(_top, "ulx3s-85f", 100.0, tmp_path / "c", pnr_seeds=2, pnr_jobs=2,
                          retries=1, env=env2)
    assert calls == ["yosys", "ecppack", "yosys", "nextpnr-ecp5", "ecppack"]
    assert res.clock_mhz == 93.5 and res.pnr_seed == 1
    assert [(a["clock_mhz"], a["pnr_seed"]) for a in res.attempts] == [(100.0, 1), (100.0, 2)]


def test_seeds_in_parallel_tool_failure(tmp_path, monkeypatch):
    """A nextpnr that fails stops the others and names its seed, log and last lines; no
    seed folder is left behind."""
    out = tmp_path / "b"
    env, _ = _fake_parallel_tools(monkeypatch, tmp_path, {1: (0, 0.1, 2), 2: (120.0, 60, 0)})
    with pytest.raises(ToolError, match=r"nextpnr-ecp5 failed \(exit 2, seed 1\)[\s\S]*fake failure"):
        build_bitstream(_top, "ulx3s-85f", 100.0, out, pnr_seeds=2, pnr_jobs=2, env=env)
    assert not list(out.glob("pnr-seed*"))
    with pytest.raises(ValueError, match="pnr_jobs must be at least 1"):
        build_bitstream(_top, "ulx3s-85f", 100.0, out, pnr_jobs=0)
