"""Where a design misses timing: every late endpoint of a nextpnr run, grouped by module.

nextpnr names one critical path per clock; this reads the per-endpoint arrival times it
writes with ``--detailed-timing-report`` (set ``HWGEN_NEXTPNR_OPTS=--detailed-timing-report``
for ``hwgen build``) and lists, per hierarchy prefix, how many endpoints arrive later than
the clock period and the latest arrival::

    HWGEN_NEXTPNR_OPTS=--detailed-timing-report hwgen build mobilenet --alpha 0.25 \\
        --resolution 96 --classes 2 --board ulx3s --out build/vww --allow-timing-fail
    python bench/timing_endpoints.py build/vww/top.report.json [--period 10] [--depth 4]

Arrivals are from the launching clock edge and include clock-to-out, logic and routing but
not the capturing flip-flop's setup time, so they are a slight under-estimate of the path.

nextpnr's report names the endpoints, not where their paths start; with ``--netlist
build/vww/top.json`` (the synthesised netlist hwgen keeps in the build directory) each
example endpoint also lists the registers, block RAMs and multipliers its logic cone starts
from, with the number of cells on the way (LUTs, muxes, carry cells): what to re-time.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path


def late_endpoints(report: dict, period_ns: float):
    """(cell, port, net, arrival ns) of every endpoint arriving after ``period_ns``."""
    nets = report.get("detailed_net_timings")
    if nets is None:
        raise SystemExit("the report has no detailed_net_timings: run nextpnr with "
                         "--detailed-timing-report (HWGEN_NEXTPNR_OPTS=--detailed-timing-report)")
    out = []
    for n in nets:
        for e in n.get("endpoints", []):
            d = e.get("delay", 0.0)
            d = max(d) if isinstance(d, list) else d      # [min, max] in nextpnr 0.7+
            if d > period_ns:
                out.append((e["cell"], e["port"], n["net"], float(d)))
    return out


_SEQUENTIAL = ("TRELLIS_FF", "DP16KD", "PDPW16KD", "MULT18X18D", "ALU54B", "TRELLIS_DPR16X4")


class Netlist:
    """The synthesised netlist (yosys JSON): walks an input's logic cone back to the
    sequential cells that start it."""

    def __init__(self, path: Path):
        j = json.loads(path.read_text())
        mods = j["modules"].values()
        top = next(m for m in mods if m.get("attributes", {}).get("top"))
        self.cells = top["cells"]
        self.driver = {}
        for name, c in self.cells.items():
            for port, direction in c["port_directions"].items():
                if direction == "output":
                    for b in c["connections"][port]:
                        if isinstance(b, int):
                            self.driver[b] = name

    def _inputs(self, name, ports=None):
        c = self.cells[name]
        for port, direction in c["port_directions"].items():
            if direction == "input" and (ports is None or port in ports):
                for b in c["connections"][port]:
                    if isinstance(b, int) and b in self.driver:
                        yield self.driver[b]

    def sources(self, cell: str, port: str) -> dict:
        """{start cell name prefix: (cells on the longest way, how many start cells)}."""
        if cell not in self.cells:
            return {}
        if port == "M" and self.cells[cell]["type"] == "TRELLIS_FF":
            port = "DI"       # nextpnr feeds a packed flip-flop's data through its M input
        best = {}
        stack = [(d, 1) for d in self._inputs(cell, [port])]
        starts = {}
        while stack:
            name, depth = stack.pop()
            if best.get(name, 0) >= depth:
                continue
            best[name] = depth
            if self.cells[name]["type"] in _SEQUENTIAL:
                starts[name] = max(starts.get(name, 0), depth)
                continue
            stack.extend((d, depth + 1) for d in self._inputs(name))
        groups = defaultdict(list)
        for name, depth in starts.items():
            groups[re.sub(r"(_TRELLIS_FF_Q)?(_\d+)?$", "", name)].append(depth)
        return {g: (max(v), len(v)) for g, v in groups.items()}


def group_of(cell: str, depth: int) -> str:
    """The hierarchy prefix of a cell name (``core.accel.sconv.array...`` -> first
    ``depth`` components), without yosys/nextpnr suffixes."""
    parts = cell.split(".")
    keep = []
    for p in parts[:-1][:depth]:
        keep.append(re.sub(r"(_TRELLIS|_LUT4|_PFUMX|_CCU2C|_DP16KD|\$).*", "", p))
    return ".".join(keep) or cell


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="nextpnr --report JSON (top.report.json)")
    ap.add_argument("--period", type=float, default=None,
                    help="clock period in ns (default: from the report's constraint)")
    ap.add_argument("--depth", type=int, default=4, help="hierarchy levels to group by")
    ap.add_argument("--show", type=int, default=3, help="example endpoints per group")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--netlist", type=Path, default=None,
                    help="the synthesised netlist (top.json): list where the example "
                         "endpoints' paths start")
    args = ap.parse_args(argv)
    rep = json.loads(args.report.read_text())
    period = args.period
    if period is None:
        cons = [v.get("constraint") for v in rep.get("fmax", {}).values() if v.get("constraint")]
        period = 1000.0 / max(cons) if cons else 10.0
    late = late_endpoints(rep, period)
    groups = defaultdict(list)
    for cell, port, net, t in late:
        groups[group_of(cell, args.depth)].append((t, cell, port, net))
    rows = sorted(groups.items(), key=lambda kv: -max(t for t, *_ in kv[1]))
    net = Netlist(args.netlist) if args.netlist else None

    def starts(cell, port):
        if net is None:
            return []
        src = net.sources(cell, port)
        return [{"start": g, "cells": d, "count": n}
                for g, (d, n) in sorted(src.items(), key=lambda kv: -kv[1][0])]
    if args.json:
        print(json.dumps({"period_ns": period, "late_endpoints": len(late),
                          "groups": [{"group": g, "count": len(v), "worst_ns": max(v)[0],
                                      "examples": [{"cell": c, "port": p, "net": n, "ns": t,
                                                    "starts": starts(c, p)}
                                                   for t, c, p, n in sorted(v)[::-1][:args.show]]}
                                     for g, v in rows]}, indent=1))
        return 0
    print(f"{len(late)} endpoints arrive later than {period:.2f} ns")
    for g, v in rows:
        v.sort(reverse=True)
        print(f"{len(v):6d}  worst {v[0][0]:6.2f} ns  {g}")
        for t, c, p, n in v[:args.show]:
            print(f"{'':8s}{t:6.2f}  {c}.{p}  <- {n}")
            for st in starts(c, p)[:8]:
                print(f"{'':16s}from {st['start']} (x{st['count']}), {st['cells']} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
