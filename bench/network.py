"""Whole-network benchmark: cycles per inference, MAC utilisation and per-layer breakdown of
the four zoo networks (and their sim wall time), measured in Verilator.

    .venv/bin/python bench/network.py                 # all networks, 85F plan
    .venv/bin/python bench/network.py mobilenet --json

Results are printed and written to bench/results/network.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

NETWORKS = {
    "mobilenet": ("mobilenet", dict(alpha=0.25, resolution=96, classes=2)),
    "shufflenet": ("shufflenet", dict(groups=3, scale=0.5, resolution=64, classes=10)),
    "squeezenet": ("squeezenet", dict(version="1.1", resolution=64, classes=10)),
    "xception": ("xception", dict(width=0.125, middle_repeats=1, resolution=71, classes=10)),
}


def bench(name: str, device: str = "85F") -> dict:
    from hwgen import flow
    model, opts = NETWORKS[name]
    t0 = time.monotonic()
    r = flow.sim(model, board="ulx3s", device=device, **opts)
    wall = time.monotonic() - t0
    layers = r["per_layer_cycles"]
    worst = sorted(layers, key=lambda l: -l["cycles"])[:5]
    return {"network": name, "options": opts, "device": device, "bit_exact": r["bit_exact"],
            "cycles": r["cycles"], "macs": r["macs"], "mac_units": r["mac_units"],
            "utilization": r["utilization"], "sim_wall_seconds": wall,
            "build_seconds": r.get("build_seconds"), "fits": r.get("fits"),
            "per_layer_cycles": layers, "top_layers": worst}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("networks", nargs="*",
                    help=f"networks to run, of {', '.join(NETWORKS)} (default: all four)")
    ap.add_argument("--device", default="85F")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    bad = [n for n in args.networks if n not in NETWORKS]
    if bad:
        ap.error(f"unknown network(s) {', '.join(bad)}: choose from {', '.join(NETWORKS)}")
    rows = []
    for n in args.networks or list(NETWORKS):
        print(f"[bench] {n} ...", file=sys.stderr, flush=True)
        rows.append(bench(n, args.device))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "network.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'network':<11} {'bit-exact':<9} {'cycles':>10} {'MACs':>11} {'units':>6} {'util':>6} {'wall s':>7}")
    for r in rows:
        print(f"{r['network']:<11} {str(r['bit_exact']):<9} {r['cycles']:>10,} {r['macs']:>11,} "
              f"{r['mac_units']:>6} {r['utilization']:>6.1%} {r['sim_wall_seconds']:>7.1f}")
        for l in r["top_layers"]:
            print(f"    {l['name']:<22} {l['cycles']:>9,} cycles (estimate {l.get('estimate')})")
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
