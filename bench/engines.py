"""Engine benchmarks: sustained MACs per cycle vs peak (measured in Verilator), resources
from yosys synth_ecp5 and Fmax from nextpnr-ecp5 (out of context) on the LFE5U-85F.

    .venv/bin/python bench/engines.py              # cycles + resources (+ Fmax: slow, minutes each)
    .venv/bin/python bench/engines.py --no-pnr     # skip place and route
    .venv/bin/python bench/engines.py --json

Cycle measurements reuse the testbenches' measurement functions (the same simulations
that prove the engines bit-exact), so a figure is only printed for a correct run.
Results are written to bench/results/engines.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cycles() -> list[dict]:
    from hwgen.hw.dwconv import DwConvParams
    from hwgen.hw.systolic import SystolicParams
    from rtl_tests.test_dwconv import measure_cycles
    from rtl_tests.test_systolic import measure_pointwise
    rows = []
    # pointwise 1x1 conv, >= 64 pixels (MobileNet 0.25-like: 64 -> 64 on 8x8)
    for r, c, lanes in ((8, 8, 2), (4, 4, 1)):
        m = measure_pointwise(SystolicParams(rows=r, cols=c, in_lanes=lanes), cin=64, cout=64, h=8, w=8)
        rows.append({"engine": f"systolic {r}x{c} L{lanes}", "layer": "1x1 conv 64->64, 8x8 px",
                     "cycles": m["cycles"], "macs": m["macs"], "peak_per_cycle": m["peak"],
                     "macs_per_cycle": m["macs_per_cycle"], "utilization": m["utilisation"], "target": 0.90})
    # depthwise 3x3 stride 1 (MobileNet 0.25/96 dw4-like: 32 ch 24x24) and stride 2
    for ch, hw, s in ((16, 24, 1), (32, 24, 1), (16, 24, 2)):
        p = DwConvParams(channels=ch, height=hw, width=hw, k=3, stride=s, padding=1, lanes=8)
        m = measure_cycles(p)
        rows.append({"engine": "dwconv P8 k3", "layer": f"dw 3x3/{s} {ch}ch {hw}x{hw}",
                     "cycles": m["cycles"], "macs": m["macs"], "peak_per_cycle": 8 * 9,
                     "macs_per_cycle": m["macs"] / m["cycles"], "utilization": m["mac_utilisation"],
                     "target": 0.90 if s == 1 else None})
    return rows


def resources(pnr: bool) -> list[dict]:
    from hwgen import synth
    from hwgen.hw.add import Adder, AddParams
    from hwgen.hw.dwconv import DwConvEngine, DwConvParams
    from hwgen.hw.im2col import Im2col, Im2colParams
    from hwgen.hw.pool import PoolParams, PoolUnit
    from hwgen.hw.requant import Requantizer, RequantParams
    from hwgen.hw.systolic import SystolicArray, SystolicParams
    designs = {
        "systolic 8x8 L2": lambda: SystolicArray(SystolicParams(rows=8, cols=8, in_lanes=2, use_primitive=True)),
        "dwconv P8 k3 w48": lambda: DwConvEngine(DwConvParams(channels=32, height=48, width=48, k=3, lanes=8),
                                                 use_primitive=True),
        "im2col k3": lambda: Im2col(Im2colParams(kernel=3, max_width=96, max_height=96, max_channels=64,
                                                 use_primitive=True)),
        "requant 4 lanes": lambda: Requantizer(RequantParams(lanes=4, channels=512, use_primitive=True)),
        "add 2 lanes": lambda: Adder(AddParams(lanes=2, use_primitive=True)),
        "pool 8 lanes": lambda: PoolUnit(PoolParams(lanes=8)),
    }
    rows = []
    work = Path(tempfile.mkdtemp(prefix="hwgen_bench_"))
    for name, make in designs.items():
        t = time.monotonic()
        try:
            s = synth.synth_ecp5(make(), "top", work / name.replace(" ", "_"))
        except Exception as e:  # report and go on: one engine's failure must not hide the rest
            rows.append({"engine": name, "error": str(e).splitlines()[0]})
            continue
        row = {"engine": name, **{k: v for k, v in s.summary().items() if k != "cells"},
               "synth_seconds": time.monotonic() - t}
        if pnr:
            t = time.monotonic()
            p = synth.pnr_ooc(s, "85F", 150.0)
            row.update(fmax_mhz=p["fmax_mhz"], pnr_seconds=time.monotonic() - t)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-pnr", action="store_true", help="skip place and route (no Fmax)")
    ap.add_argument("--no-sim", action="store_true", help="skip the cycle measurements")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = {"cycles": [] if args.no_sim else cycles(), "resources": resources(not args.no_pnr)}
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / "engines.json").write_text(json.dumps(out, indent=2) + "\n")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for r in out["cycles"]:
        tgt = f" (target {r['target']:.0%})" if r.get("target") else ""
        print(f"{r['engine']:<20} {r['layer']:<28} {r['cycles']:>7} cycles  {r['macs_per_cycle']:6.1f}/"
              f"{r['peak_per_cycle']} MACs/cycle = {r['utilization']:.1%}{tgt}")
    for r in out["resources"]:
        if "error" in r:
            print(f"{r['engine']:<20} ERROR {r['error']}")
            continue
        fmax = f", Fmax {r['fmax_mhz']:.1f} MHz" if r.get("fmax_mhz") else ""
        print(f"{r['engine']:<20} LUT4 {r['lut4']:>6}  FF {r['ff']:>6}  MULT18X18D {r['mult18']:>3}  "
              f"DP16KD {r['dp16kd']:>3}{fmax}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
