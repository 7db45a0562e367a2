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
    if args.json:
        print(json.dumps({"period_ns": period, "late_endpoints": len(late),
                          "groups": [{"group": g, "count": len(v), "worst_ns": max(v)[0],
                                      "examples": [{"cell": c, "port": p, "net": n, "ns": t}
                                                   for t, c, p, n in sorted(v)[::-1][:args.show]]}
                                     for g, v in rows]}, indent=1))
        return 0
    print(f"{len(late)} endpoints arrive later than {period:.2f} ns")
    for g, v in rows:
        v.sort(reverse=True)
        print(f"{len(v):6d}  worst {v[0][0]:6.2f} ns  {g}")
        for t, c, p, n in v[:args.show]:
            print(f"{'':8s}{t:6.2f}  {c}.{p}  <- {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
