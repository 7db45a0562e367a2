"""Xception (Chollet, arXiv 1610.02357, Figure 5), as the Keras reference
(``keras.applications.Xception``) builds it, with a width multiplier and a configurable
number of middle-flow blocks.

- SeparableConv ``blockN.sepK``: ``.dw`` 3x3 depthwise (padding 1, act NONE, zero bias: no
  BN between the two halves) then ``.pw`` 1x1 pointwise (BN folded into weight and bias).
- ``block1.conv1`` 3x3 stride 2 and ``block1.conv2`` 3x3 have no padding (Keras 'valid':
  299 -> 149 -> 147). Max pools ``blockN.pool`` are 3x3 stride 2 padding 1 (same output size
  as Keras 'same' padding: 147 -> 74 -> 37 -> 19 -> 10; the window centres line up with the
  1x1 stride-2 residual convs ``blockN.residual``, which have no padding).
- Entry flow blocks 2-4, middle flow blocks 5 .. 4+middle_repeats, exit flow blocks
  5+middle_repeats (with residual) and 6+middle_repeats (SepConv 1536 + ReLU, SepConv
  2048 + ReLU), then global average pool ``pool`` and ``fc``.

ReLU placement. In the paper a block's first ReLU acts on the block's input, and the
residual path takes the input *before* that ReLU. The IR fuses activations into the op
that produces a tensor and has no standalone ReLU, so a block output that feeds both a
residual path and a ReLU'd main path is computed by two Add nodes over the same inputs:
``blockN.add`` (act NONE, feeds the next residual conv or identity shortcut) and
``blockN.add_relu`` (act RELU, feeds the next block's first depthwise conv). This is exactly
the paper's network, costs no parameters or MACs, and needs only existing ops. Where the
paper has no ReLU (entry block 2's input is conv2's ReLU output for both paths; block 14's
first SepConv reads the last residual sum directly) there is one Add.

Width: every channel count c becomes ``max(int(c * width), 8)``.
"""
from __future__ import annotations

from ..ir import Act, Graph
from .common import INPUT, ModelBuilder, check_int, check_number, check_weights_path

__all__ = ["xception"]

MIN_RESOLUTION = 71


def xception(width: float = 1.0, middle_repeats: int = 8, resolution: int = 299,
             classes: int = 1000, seed: int = 0, weights=None) -> Graph:
    """Xception as an IR graph.

    Parameters
    ----------
    width: channel multiplier, 0 < width <= 1 (paper: 1).
    middle_repeats: number of middle-flow blocks, 0..64 (paper: 8).
    resolution: input height and width, >= 71 (Keras' minimum; paper: 299).
    classes: number of outputs of the classifier.
    seed: seed of the random weights (see :mod:`hwgen.models.common`).
    weights: None, or an ``.npz`` file with ``"<node>.weight"`` / ``"<node>.bias"`` arrays.

    Returns
    -------
    Graph with input ``"input"`` (3, resolution, resolution) and output (classes, 1, 1).
    Default: 22,851,736 parameters (folded-BN biases and zero depthwise biases included;
    the paper's 22.9M, Keras counts 22.91M with the BN statistics), 8.36G MACs.
    """
    width = check_number("xception", "width", width, 0.0, 1.0)
    middle_repeats = check_int("xception", "middle_repeats", middle_repeats, 0, 64)
    resolution = check_int("xception", "resolution", resolution, MIN_RESOLUTION, 4096)
    classes = check_int("xception", "classes", classes, 1)
    seed = check_int("xception", "seed", seed, 0)
    weights = check_weights_path("xception", weights)

    def ch(c: int) -> int:
        return max(int(c * width), 8)

    b = ModelBuilder(f"xception_w{width:g}_m{middle_repeats}_{resolution}",
                     (3, resolution, resolution), seed, weights)

    def sep(name: str, x: str, out: int, act: Act) -> str:
        c = b.channels(x)
        y = b.conv(f"{name}.dw", x, c, 3, padding=1, groups=c, bias=False)
        return b.conv(f"{name}.pw", y, ch(out), 1, act=act)

    def block_out(n: int, main: str, shortcut: str, relu_copy: bool) -> tuple[str, str]:
        """Sum of a block; returns (pre-ReLU tensor, ReLU'd tensor for the next main path)."""
        pre = b.add(f"block{n}.add", main, shortcut)
        post = b.add(f"block{n}.add_relu", main, shortcut, act=Act.RELU) if relu_copy else pre
        return pre, post

    # Entry flow.
    x = b.conv("block1.conv1", INPUT, ch(32), 3, stride=2, act=Act.RELU)
    x = b.conv("block1.conv2", x, ch(64), 3, act=Act.RELU)
    pre = post = x                      # block 2 reads conv2's ReLU output on both paths
    for n, out in ((2, 128), (3, 256), (4, 728)):
        res = b.conv(f"block{n}.residual", pre, ch(out), 1, stride=2)
        y = sep(f"block{n}.sep1", post, out, Act.RELU)
        y = sep(f"block{n}.sep2", y, out, Act.NONE)
        y = b.maxpool(f"block{n}.pool", y, 3, 2, padding=1)
        pre, post = block_out(n, y, res, relu_copy=True)

    # Middle flow.
    for n in range(5, 5 + middle_repeats):
        y = sep(f"block{n}.sep1", post, 728, Act.RELU)
        y = sep(f"block{n}.sep2", y, 728, Act.RELU)
        y = sep(f"block{n}.sep3", y, 728, Act.NONE)
        pre, post = block_out(n, y, pre, relu_copy=True)

    # Exit flow.
    n = 5 + middle_repeats
    res = b.conv(f"block{n}.residual", pre, ch(1024), 1, stride=2)
    y = sep(f"block{n}.sep1", post, 728, Act.RELU)
    y = sep(f"block{n}.sep2", y, 1024, Act.NONE)
    y = b.maxpool(f"block{n}.pool", y, 3, 2, padding=1)
    x, _ = block_out(n, y, res, relu_copy=False)
    n += 1
    x = sep(f"block{n}.sep1", x, 1536, Act.RELU)
    x = sep(f"block{n}.sep2", x, 2048, Act.RELU)
    x = b.global_avgpool("pool", x)
    x = b.fc("fc", x, classes)
    return b.graph(x)
