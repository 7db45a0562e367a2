"""Per-layer summary of a graph: op, shapes, parameters, MACs, int8 activation and weight
bytes, with totals (what ``hwgen summary`` prints).

Sizes are those of the int8 deployment: one byte per activation element and per weight,
four bytes per int32 bias. MACs are multiply-accumulates of Conv2d and FullyConnected
(pools, adds and shuffles count 0, as in the papers).
"""
from __future__ import annotations

from .ir import Conv2d, FullyConnected, Graph, Node

__all__ = ["summarize", "format_summary", "si"]

BIAS_BYTES = 4


def _weight_bytes(node: Node) -> int:
    if isinstance(node, (Conv2d, FullyConnected)):
        return int(node.weight.size) + BIAS_BYTES * int(node.bias.size)
    return 0


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def summarize(graph: Graph) -> dict:
    """Figures of ``graph`` as plain JSON-serialisable data.

    Returns
    -------
    dict with
        ``model`` (graph name), ``input`` ([C, H, W] of the graph input), ``input_name``,
        ``output`` ([C, H, W] of the first graph output), ``params`` (weights + biases),
        ``macs``, ``activation_bytes`` (int8 bytes of every tensor: the input and each
        node's output), ``weight_bytes`` (int8 weights + int32 biases),
        ``max_tensor_bytes`` (largest single tensor), ``peak_live_bytes`` (most int8 bytes
        alive at once when the nodes run one after another in graph order and a tensor is
        freed after its last consumer), and ``layers``: one dict per node, in order, with
        ``name``, ``op``, ``describe``, ``inputs`` (tensor names), ``in_shapes``,
        ``out_shape``, ``params``, ``macs``, ``activation_bytes`` (the output tensor),
        ``weight_bytes``.
    """
    layers = []
    for node in graph.nodes:
        layers.append({
            "name": node.name,
            "op": node.op,
            "describe": node.describe(),
            "inputs": list(node.inputs),
            "in_shapes": [list(s) for s in graph.in_shapes(node)],
            "out_shape": list(graph.shapes[node.output]),
            "params": int(node.params()),
            "macs": int(graph.node_macs(node)),
            "activation_bytes": _size(graph.shapes[node.output]),
            "weight_bytes": _weight_bytes(node),
        })
    input_bytes = sum(_size(s) for s in graph.inputs.values())
    return {
        "model": graph.name,
        "input": list(graph.input_shape),
        "input_name": graph.input_name,
        "output": list(graph.output_shape),
        "params": sum(l["params"] for l in layers),
        "macs": sum(l["macs"] for l in layers),
        "activation_bytes": input_bytes + sum(l["activation_bytes"] for l in layers),
        "weight_bytes": sum(l["weight_bytes"] for l in layers),
        "max_tensor_bytes": max([_size(s) for s in graph.shapes.values()]),
        "peak_live_bytes": _peak_live_bytes(graph),
        "layers": layers,
    }


def _peak_live_bytes(graph: Graph) -> int:
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for t in node.inputs:
            last_use[t] = i
    for t in graph.outputs:
        last_use[t] = len(graph.nodes)
    live = {t: _size(s) for t, s in graph.inputs.items()}
    peak = sum(live.values())
    for i, node in enumerate(graph.nodes):
        live[node.output] = _size(graph.shapes[node.output])
        peak = max(peak, sum(live.values()))
        for t in set(node.inputs) | {node.output}:
            if last_use.get(t, -1) <= i and t in live:
                del live[t]
    return peak


def si(n: float) -> str:
    """``n`` with a K/M/G/T suffix and three significant digits: 7489664 -> '7.49M'."""
    if abs(n) < 1000:
        return f"{n:g}" if isinstance(n, float) else str(n)
    for k, unit in enumerate("KMGT", start=1):
        v = n / 1000 ** k
        if abs(v) < 999.5 or unit == "T":
            break
    digits = 2 if abs(v) < 9.995 else 1 if abs(v) < 99.95 else 0
    return f"{v:.{digits}f}{unit}"


def _shape(s) -> str:
    return "x".join(str(d) for d in s)


def format_summary(d: dict) -> str:
    """An aligned text table of :func:`summarize`'s result, one row per layer, then totals."""
    head = ("#", "name", "op", "kind", "input", "output", "params", "MACs", "act B", "weight B")
    rows = []
    for i, l in enumerate(d["layers"]):
        rows.append((str(i), l["name"], l["op"], l["describe"],
                     " + ".join(_shape(s) for s in l["in_shapes"]), _shape(l["out_shape"]),
                     si(l["params"]) if l["params"] else "-", si(l["macs"]) if l["macs"] else "-",
                     si(l["activation_bytes"]), si(l["weight_bytes"]) if l["weight_bytes"] else "-"))
    total = ("", "total", "", f"{len(d['layers'])} layers", _shape(d["input"]), _shape(d["output"]),
             si(d["params"]), si(d["macs"]), si(d["activation_bytes"]), si(d["weight_bytes"]))
    right = {0, 6, 7, 8, 9}
    widths = [max(len(r[c]) for r in (head, total, *rows)) for c in range(len(head))]

    def line(r):
        return "  ".join(v.rjust(w) if c in right else v.ljust(w)
                         for c, (v, w) in enumerate(zip(r, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [f"model {d['model']}: input {_shape(d['input'])}, output {_shape(d['output'])}",
           line(head), rule, *map(line, rows), rule, line(total),
           f"params {si(d['params'])} ({d['params']:,}), MACs {si(d['macs'])} ({d['macs']:,}), "
           f"int8 weights+int32 biases {si(d['weight_bytes'])}B, largest tensor "
           f"{si(d['max_tensor_bytes'])}B, peak live activations {si(d['peak_live_bytes'])}B"]
    return "\n".join(out) + "\n"
