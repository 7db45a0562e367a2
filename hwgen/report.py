"""Build reports: report.json, report.md and report.html (per-layer cycles chart and resource
bars as inline SVG, no external assets), all written atomically."""
from __future__ import annotations

import html
import json
import os
from pathlib import Path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_report(plan, build: dict | None, sim: dict | None, model: dict) -> dict:
    """The report object (also what ``hwgen build --json`` prints)."""
    s = plan.summary()
    cycles = sim["cycles"] if sim else plan.cycles
    clock = build.get("clock_mhz") if build else None
    fmax = build.get("fmax_mhz") if build else None
    run_mhz = min(clock, fmax) if (clock and fmax) else clock
    layers = []
    sim_layers = {l["name"]: l["cycles"] for l in (sim or {}).get("per_layer_cycles", [])}
    for l in plan.layers:
        layers.append({"name": l.name, "op": l.op, "engine": l.engine, "macs": l.macs,
                       "ideal_cycles": l.ideal_cycles, "estimated_cycles": l.cycles,
                       "simulated_cycles": sim_layers.get(l.name)})
    built = dict((build or {}).get("resources") or {})
    cells = built.pop("cells", None)
    if built:         # measured (synthesis or place and route), with the mapper's estimate
        res = {r: {"used": v["used"], "available": v["available"],
                   "planned": s["resources"].get(r, {}).get("used")}
               for r, v in built.items()}
    else:
        res = {r: {"used": v["used"], "available": v["available"], "estimate": True}
               for r, v in s["resources"].items()}
    return {
        "model": model, "board": s["board"], "device": s["device"],
        "bitstream": (build or {}).get("bitstream"),
        "clock_mhz": clock, "pll_mhz": (build or {}).get("pll_mhz"), "fmax_mhz": fmax,
        "timing_met": (build or {}).get("timing_met"),
        "pnr_seed": (build or {}).get("pnr_seed"),
        "pnr_placer": (build or {}).get("pnr_placer"),
        "resources": res,
        "cells": cells,
        "engines": s["engines"],
        "cycles_per_inference": cycles,
        "cycles_source": "simulation" if sim else "mapper estimate",
        "cycles_estimate": plan.cycles,
        "macs": plan.macs, "mac_units": plan.mac_units,
        "utilization": plan.macs / (cycles * plan.mac_units) if cycles else None,
        "inferences_per_second": (run_mhz * 1e6 / cycles) if (run_mhz and cycles) else None,
        # the whole build by the wall clock (seeds placed at once overlap; stage_seconds
        # sums each stage over every attempt)
        "build_seconds": (build or {}).get("wall_seconds") or (build or {}).get("total_seconds"),
        "stage_seconds": (build or {}).get("total_stage_seconds"),
        "attempts": [{k: a.get(k) for k in ("clock_mhz", "pnr_seed", "fmax_mhz", "timing_met")}
                     for a in (build or {}).get("attempts") or []],
        "bit_exact": sim.get("bit_exact") if sim else None,
        "layers": layers,
    }


def _md(r: dict) -> str:
    out = [f"# hwgen build report: {r['model'].get('name')} on {r['board']}", ""]
    f = lambda v, fmt="{:.1f}": "n/a" if v is None else fmt.format(v)  # noqa: E731
    out += [f"- bitstream: `{r['bitstream']}`",
            f"- clock asked {f(r['clock_mhz'])} MHz, Fmax achieved {f(r['fmax_mhz'])} MHz, "
            f"timing {'met' if r['timing_met'] else 'NOT met' if r['timing_met'] is False else 'n/a'}"
            + (f" (placer {r.get('pnr_placer') or 'heap'}, seed {r['pnr_seed']})"
               if r.get("pnr_seed") is not None else ""),
            f"- cycles per inference {r['cycles_per_inference']:,} ({r['cycles_source']}), "
            f"MAC utilisation {f(r['utilization'], '{:.1%}')}, "
            f"inferences per second {f(r['inferences_per_second'])}",
            f"- build time {f(r['build_seconds'])} s "
            + (", ".join(f"{k} {v:.1f} s" for k, v in (r['stage_seconds'] or {}).items()))]
    if r.get("attempts"):
        out += ["- earlier attempts (timing not met): " + "; ".join(
            f"{a['clock_mhz']:g} MHz, seed {a['pnr_seed']}: Fmax {f(a['fmax_mhz'])} MHz"
            for a in r["attempts"])]
    out += ["",
            "| resource | used | available | % | mapper's estimate |", "|---|---:|---:|---:|---:|"]
    for k, v in r["resources"].items():
        pct = 100 * v["used"] / v["available"] if v.get("available") else 0
        est = v.get("planned")
        est = "" if est is None else est
        if v.get("estimate"):
            est = "(the used column is the estimate)"
        out.append(f"| {k} | {v['used']} | {v['available']} | {pct:.0f} | {est} |")
    out += ["", "| layer | op | engine | MACs | ideal cycles | cycles (est.) | cycles (sim) |",
            "|---|---|---|---:|---:|---:|---:|"]
    for l in r["layers"]:
        out.append(f"| {l['name']} | {l['op']} | {l['engine']} | {l['macs']} | {l['ideal_cycles']} | "
                   f"{l['estimated_cycles']} | {l['simulated_cycles'] if l['simulated_cycles'] is not None else ''} |")
    return "\n".join(out) + "\n"


def _svg_bars(rows: list[tuple[str, float, float]], width=760, bar_h=14, label_w=150,
              colors=("#9ab", "#e73")) -> str:
    """Horizontal paired bars: (label, a, b) with a drawn behind b."""
    vmax = max([max(a, b) for _, a, b in rows] + [1])
    h = bar_h * len(rows) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" font-size="11" font-family="sans-serif">']
    for i, (label, a, b) in enumerate(rows):
        y = 10 + i * bar_h
        wa = (width - label_w - 60) * a / vmax
        wb = (width - label_w - 60) * b / vmax
        parts.append(f'<text x="{label_w - 4}" y="{y + bar_h - 4}" text-anchor="end">{html.escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 1}" width="{wa:.1f}" height="{bar_h - 3}" fill="{colors[0]}"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 4}" width="{wb:.1f}" height="{bar_h - 9}" fill="{colors[1]}"/>')
        parts.append(f'<text x="{label_w + max(wa, wb) + 4:.1f}" y="{y + bar_h - 4}">{int(a):,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _html(r: dict) -> str:
    layers = [(l["name"], l["simulated_cycles"] or l["estimated_cycles"], l["ideal_cycles"]) for l in r["layers"]
              if l["engine"] != "remap"]
    res = [(k, 100 * v["used"] / v["available"] if v.get("available") else 0, 0) for k, v in r["resources"].items()]
    md = html.escape(_md(r))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>hwgen report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>
</head><body><h1>{html.escape(str(r['model'].get('name')))} on {html.escape(r['board'])}</h1>
<p>cycles per inference <b>{r['cycles_per_inference']:,}</b> ({html.escape(r['cycles_source'])}),
Fmax {r['fmax_mhz']} MHz, timing met: {r['timing_met']}</p>
<h2>Resources (% of device)</h2>{_svg_bars(res)}
<h2>Cycles per layer</h2><p>grey: actual ({html.escape(r['cycles_source'])}); orange: ideal (MACs / MAC units of its engine)</p>
{_svg_bars(layers)}
<h2>Details</h2><pre>{md}</pre></body></html>
"""


def write_reports(report: dict, outdir: Path) -> None:
    outdir = Path(outdir)
    _atomic_write(outdir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    _atomic_write(outdir / "report.md", _md(report))
    _atomic_write(outdir / "report.html", _html(report))
