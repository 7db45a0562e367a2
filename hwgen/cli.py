"""Command-line front end. Each subcommand parses its options and calls one function of
:mod:`hwgen.flow`; user errors print one line and exit with status 2 (no traceback)."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import __version__


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return v


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model options (zoo models; ignored for .onnx files)")
    g.add_argument("--resolution", type=int, help="input height = width (default: the paper's)")
    g.add_argument("--classes", type=int, help="number of classes (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights and calibration images (default 0)")
    g.add_argument("--weights", help="weights file: .npz (<node>.weight / <node>.bias) or .onnx (initializers)")
    g.add_argument("--alpha", type=float, help="MobileNet width multiplier in (0, 1] (default 1.0)")
    g.add_argument("--version", dest="sq_version", choices=("1.0", "1.1"), help="SqueezeNet version (default 1.1)")
    g.add_argument("--groups", type=int, help="ShuffleNet groups g in {1,2,3,4,8} (default 3)")
    g.add_argument("--scale", type=float, help="ShuffleNet scale factor (default 1.0)")
    g.add_argument("--width", type=float, help="Xception width multiplier (default 1.0)")
    g.add_argument("--middle-repeats", type=int, help="Xception middle-flow repeats (default 8)")


def _model_opts(args) -> dict:
    keys = {"resolution": "resolution", "classes": "classes", "seed": "seed", "weights": "weights",
            "alpha": "alpha", "sq_version": "version", "groups": "groups", "scale": "scale",
            "width": "width", "middle_repeats": "middle_repeats"}
    return {dst: getattr(args, src) for src, dst in keys.items() if getattr(args, src, None) is not None}


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def cmd_models(args):
    from . import flow
    rows = flow.list_models()
    if args.json:
        return _print_json(rows)
    for r in rows:
        print(f"{r['name']:<12} {r['description']}")
        print(f"{'':<12} options: {r['options']}")


def cmd_summary(args):
    from . import flow
    from .summary import format_summary
    d = flow.summary(args.model, **_model_opts(args))
    if args.json:
        return _print_json(d)
    print(format_summary(d))


def cmd_export(args):
    from . import flow
    path = flow.export(args.model, args.output, quantized=args.quantized, **_model_opts(args))
    print(f"wrote {path}")


def cmd_golden(args):
    from . import flow
    info = flow.golden(args.model, args.input, args.output, **_model_opts(args))
    if args.json:
        return _print_json(info)
    print(f"wrote {info['output']} shape {tuple(info['shape'])} dtype {info['dtype']}")


def _board_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", default="ulx3s", help="board: ulx3s (default) or ulx3s-12f/25f/45f/85f")
    p.add_argument("--device", help="ECP5 device of the board: 12F, 25F, 45F or 85F (default 85F)")


def cmd_plan(args):
    from . import flow
    from .mapper.plan import check_fit
    p, source = flow.plan(args.model, board=args.board, device=args.device, out=args.out,
                          **_model_opts(args))
    s = p.summary()
    if args.json:
        s["layers"] = [{"name": l.name, "op": l.op, "engine": l.engine, "macs": l.macs,
                        "cycles": l.cycles, "ideal_cycles": l.ideal_cycles,
                        "placement": l.placement} for l in p.layers]
        _print_json(s)
    else:
        print(_format_plan(p, s))
    if not p.fits:
        if not args.json:
            try:
                check_fit(p, source)
            except ValueError as e:
                print(f"\ndoes not fit: {e}", file=sys.stderr)
        return 1


def _format_plan(p, s) -> str:
    from .summary import si
    e = s["engines"]
    lines = [f"{s['model']} on {s['board']} ({'fits' if s['fits'] else 'DOES NOT FIT'})",
             f"engines: {p.engines.describe()}",
             f"{'layer':<24} {'op':<14} {'engine':<16} {'MACs':>8} {'cycles':>9} {'ideal':>9}"]
    for l in p.layers:
        lines.append(f"{l.name:<24} {l.op:<14} {l.engine:<16} {si(l.macs):>8} {l.cycles:>9} {l.ideal_cycles:>9}")
    lines.append(f"cycles/inference {s['cycles']:,} (estimate), MACs {si(s['macs'])}, MAC units "
                 f"{s['mac_units']}, utilization {s['utilization']:.1%}")
    for r, v in s["resources"].items():
        lines.append(f"{r:<7} {v['used']:>7} used of {v['available']} (plan limit {v['limit']})")
    lines.append(f"activation arena {s['arena_bytes']:,} B, weights {s['weights_bytes']:,} B "
                 f"(on chip {s['onchip_weight_bytes']:,} B, external {s['external_weight_bytes']:,} B)")
    return "\n".join(lines)


def _progress(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def cmd_build(args):
    from . import flow
    r = flow.build(args.model, board=args.board, device=args.device, clock_mhz=args.clock,
                   out=args.out, allow_timing_fail=args.allow_timing_fail,
                   synth_only=args.synth_only, pnr_seed=args.pnr_seed, placer=args.placer,
                   pnr_seeds=args.pnr_seeds, pnr_jobs=args.pnr_jobs,
                   progress=_progress,
                   **_model_opts(args))
    if args.json:
        return _print_json(r)
    res = r["resources"]
    print(f"bitstream: {r['bitstream']}")
    if r["fmax_mhz"] is not None:
        print(f"clock {r['clock_mhz']} MHz asked, Fmax {r['fmax_mhz']:.1f} MHz, timing "
              f"{'met' if r['timing_met'] else 'NOT met'}")
    print("resources: " + ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in res.items()))
    ips = r["inferences_per_second"]
    print(f"cycles/inference {r['cycles_per_inference']:,} ({r['cycles_source']})"
          + (f", {ips:,.0f} inferences/s" if ips else ""))
    print(f"report: {args.out}/report.md, {args.out}/report.html")


def cmd_sim(args):
    from . import flow
    r = flow.sim(args.model, board=args.board, device=args.device, input_path=args.input,
                 **_model_opts(args))
    logits = np.asarray(r["logits"])
    if args.json:
        out = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}
        _print_json(out)
    else:
        order = np.argsort(-logits.astype(np.int32), kind="stable")[:5]
        print("top-5: " + ", ".join(f"class {int(i)} ({int(logits[i])})" for i in order))
        print(f"cycles {r['cycles']:,}, MACs {r['macs']:,}, MAC units {r['mac_units']}, "
              f"utilization {r['utilization']:.1%}, wall {r['wall_seconds']:.1f} s")
        print("bit-exact with the golden model" if r["bit_exact"] else
              f"MISMATCH: accelerator {logits.tolist()} golden {np.asarray(r['golden']).tolist()}")
    return 0 if r["bit_exact"] else 1


def cmd_prog(args):
    from .prog import run_prog
    return run_prog(args.bitstream or args.dir, flash=args.flash)


def cmd_run(args):
    from . import flow
    r = flow.run_on_board(args.port, args.image, build_dir=args.dir, check=not args.no_check)
    if args.json:
        return _print_json(r)
    print("top-5: " + ", ".join(f"class {i} ({r['logits'][i]})" for i in r["top5"]))
    print(f"on-chip cycles {r['cycles']:,}")
    if "bit_exact" in r:
        print("bit-exact with the golden model" if r["bit_exact"] else "MISMATCH with the golden model")
        return 0 if r["bit_exact"] else 1


def cmd_doctor(args):
    from . import tools
    rows = tools.doctor()
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            if r["found"]:
                print(f"ok       {r['tool']:<15} {r['version']}  ({r['path']})")
            else:
                print(f"MISSING  {r['tool']:<15} fix: {r['fix']}")
    if not all(r["found"] for r in rows):
        return 1


def build_parser() -> argparse.ArgumentParser:
    from boards.build import DEFAULT_PLACER, PLACERS
    p = argparse.ArgumentParser(prog="hwgen", description="Compile lightweight CNNs into int8 "
                                "accelerators for ECP5 FPGA boards (ULX3S).")
    p.add_argument("-V", "--hwgen-version", action="version", version=f"hwgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("models", help="list the model zoo")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("summary", help="per-layer shapes, params, MACs and memory of a model")
    s.add_argument("model", help="zoo name (mobilenet, squeezenet, shufflenet, xception) or a .onnx file")
    _model_options(s)
    s.add_argument("--json", action="store_true", help="print JSON (keys: params, macs, layers, ...)")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("export", help="write a model as float ONNX, or quantized QDQ ONNX")
    s.add_argument("model", help="zoo name or a .onnx file")
    s.add_argument("-o", "--output", required=True, help="output .onnx path")
    s.add_argument("--quantized", action="store_true", help="write int8 QDQ ONNX (onnxruntime runs it)")
    _model_options(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("golden", help="run the integer golden model on an input tensor")
    s.add_argument("model", help="zoo name or a .onnx file")
    s.add_argument("--input", required=True, help="input .npy, (N, C, H, W) or (C, H, W)")
    s.add_argument("--output", required=True, help="output .npy")
    _model_options(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_golden)

    s = sub.add_parser("plan", help="map a model onto a board: engine sizes, cycles, memory, fit")
    s.add_argument("model", help="zoo name or a .onnx file")
    _board_options(s)
    s.add_argument("--out", help="also write program.bin, weights.bin and layers.json into this folder")
    _model_options(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("sim", help="simulate the whole accelerator in Verilator, bit-exact check")
    s.add_argument("model", help="zoo name or a .onnx file")
    _board_options(s)
    s.add_argument("--input", help="image: .npy (C,H,W) float or int, or .png (default: a seeded random image)")
    _model_options(s)
    s.add_argument("--json", action="store_true", help="print JSON (bit_exact, cycles, macs, mac_units, utilization, per-layer cycles)")
    s.set_defaults(func=cmd_sim)

    s = sub.add_parser("build", help="quantize, map, generate and build the bitstream with reports")
    s.add_argument("model", help="zoo name or a .onnx file")
    _board_options(s)
    s.add_argument("--clock", type=float, default=100.0, help="target clock in MHz (default 100)")
    s.add_argument("--out", default="build", help="build folder (default ./build)")
    s.add_argument("--allow-timing-fail", action="store_true", help="keep a bitstream that misses timing (exit 0)")
    s.add_argument("--synth-only", action="store_true", help="stop after synthesis (resource check; no bitstream)")
    s.add_argument("--pnr-seed", type=int, default=1, metavar="N",
                   help="nextpnr's placement seed (default 1); placements differ by several MHz")
    s.add_argument("--pnr-seeds", type=_positive_int, default=4, metavar="K",
                   help="place and route with seeds N, N+1, ... at the asked clock until one "
                        "meets it, up to K seeds in all, before retrying at a lower clock "
                        "(default 4; 1: seed N only)")
    s.add_argument("--pnr-jobs", type=_positive_int, default=None, metavar="J",
                   help="seeds placed and routed at once, the first to meet the clock wins "
                        "(default: one per core, at most K; each takes about 1.5 GB)")
    s.add_argument("--placer", choices=PLACERS, default=DEFAULT_PLACER,
                   help=f"nextpnr's placer (default {DEFAULT_PLACER}: less routing congestion, "
                        "faster routing than heap on large designs)")
    _model_options(s)
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("prog", help="program the last build onto a ULX3S with openFPGALoader")
    s.add_argument("--dir", default="build", help="build folder holding top.bit (default ./build)")
    s.add_argument("--bitstream", help="a .bit file (overrides --dir)")
    s.add_argument("--flash", action="store_true", help="write the SPI flash instead of SRAM")
    s.set_defaults(func=cmd_prog)

    s = sub.add_parser("run", help="run an image on the board over the UART link")
    s.add_argument("image", help="image: .npy or .png")
    s.add_argument("--port", required=True, help="serial port of the ULX3S (e.g. /dev/ttyUSB0)")
    s.add_argument("--dir", default="build", help="build folder of the design on the board (default ./build)")
    s.add_argument("--no-check", action="store_true", help="skip the golden-model check")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("doctor", help="check the FPGA/simulation toolchain")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_doctor)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .flow import user_errors
    try:
        rc = args.func(args)
    except user_errors() as e:
        print(f"hwgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwgen: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
