"""ShuffleNet v1 (Zhang et al., arXiv 1707.01083, Table 1), following the authors' reference
implementation (github.com/megvii-model/ShuffleNet-Series, ShuffleNetV1) where the paper
leaves a detail open.

- ``conv1`` 3x3 stride 2 (padding 1) + ReLU, ``pool1`` max pool 3x3 stride 2 padding 1,
  stages 2-4 of 4 / 8 / 4 units, global average pool ``pool``, ``fc`` (with bias).
- Unit ``stageS.unitU``: ``gconv1`` 1x1 group conv (g groups) to m = out/4 channels + ReLU
  -> ``shuffle`` (g) -> ``dw`` 3x3 depthwise (padding 1, no ReLU) -> ``gconv2`` 1x1 group
  conv (g groups).
  Stride 1: ``add`` = gconv2 + unit input, then ReLU (fused into the Add).
  Stride 2 (first unit of a stage): dw has stride 2, gconv2 produces out - in channels,
  the shortcut ``shortcut`` is a 3x3 stride-2 average pool with padding 1 and
  ``count_include_pad=True`` (PyTorch's default, as in the reference implementation:
  border windows divide by 9), and ``concat`` = [shortcut, gconv2] (shortcut first, as in
  the reference) then ReLU (the shortcut is already non-negative, so this equals the
  reference's ReLU on the main branch only).
  In stage 2's first unit gconv1 is not grouped (its input has only conv1's channels); the
  shuffle is kept there, as in the reference. With g = 1 there is no shuffle node.
- m = out/4 for every unit of a stage, the first included (reference implementation).

Channel counts at scale s (the paper's "ShuffleNet s x"): stage 2's output channels are
``base * s`` rounded to the nearest multiple of 4g (ties up, at least 4g) so that out,
m = out/4 and out - in are all multiples of g; stages 3 and 4 have 2x and 4x that. conv1 has
``int(24 * s)`` rounded up to a multiple of g. At s = 1 this is Table 1 exactly; it also
reproduces the reference's 0.5x models (g=3: 12/120/240/480, g=8: 16/192/384/768).
"""
from __future__ import annotations

from ..ir import Act, Graph
from .common import (INPUT, ModelBuilder, check_choice, check_int, check_number,
                     check_weights_path)

__all__ = ["shufflenet", "shufflenet_channels", "STAGE2_CHANNELS"]

#: Stage-2 output channels at 1x per group count (Table 1); stages 3, 4 double each time.
STAGE2_CHANNELS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
STAGE_UNITS = (4, 8, 4)
MIN_RESOLUTION = 32


def shufflenet_channels(groups: int, scale: float) -> tuple[int, int, int, int]:
    """(conv1, stage2, stage3, stage4) output channels for ``groups`` and ``scale``."""
    q = 4 * groups
    c2 = max(int(STAGE2_CHANNELS[groups] * scale / q + 0.5), 1) * q
    c1 = -(-int(24 * scale) // groups) * groups
    return (max(c1, groups), c2, 2 * c2, 4 * c2)


def shufflenet(groups: int = 3, scale: float = 1.0, resolution: int = 224, classes: int = 1000,
               seed: int = 0, weights=None) -> Graph:
    """ShuffleNet v1 as an IR graph.

    Parameters
    ----------
    groups: group count g of the 1x1 group convolutions and shuffles: 1, 2, 3, 4 or 8.
    scale: width scale s, 0 < s <= 2 (paper: 0.25, 0.5, 1; the reference also 1.5, 2).
    resolution: input height and width, >= 32 (paper: 224).
    classes: number of outputs of the classifier.
    seed: seed of the random weights (see :mod:`hwgen.models.common`).
    weights: None, or an ``.npz`` file with ``"<node>.weight"`` / ``"<node>.bias"`` arrays.

    Returns
    -------
    Graph with input ``"input"`` (3, resolution, resolution) and output (classes, 1, 1).
    1x g=3: 137.5M MACs (the paper's "140 MFLOPs"), 1.85M parameters (1.84M without biases).
    """
    groups = check_choice("shufflenet", "groups", groups, (1, 2, 3, 4, 8))
    scale = check_number("shufflenet", "scale", scale, 0.0, 2.0)
    resolution = check_int("shufflenet", "resolution", resolution, MIN_RESOLUTION, 4096)
    classes = check_int("shufflenet", "classes", classes, 1)
    seed = check_int("shufflenet", "seed", seed, 0)
    weights = check_weights_path("shufflenet", weights)

    c1, *stage_out = shufflenet_channels(groups, scale)
    b = ModelBuilder(f"shufflenet_v1_g{groups}_{scale:g}x_{resolution}",
                     (3, resolution, resolution), seed, weights)
    x = b.conv("conv1", INPUT, c1, 3, stride=2, padding=1, act=Act.RELU)
    x = b.maxpool("pool1", x, 3, 2, padding=1)
    for stage, (units, out) in enumerate(zip(STAGE_UNITS, stage_out), start=2):
        mid = out // 4
        for unit in range(1, units + 1):
            p = f"stage{stage}.unit{unit}"
            stride = 2 if unit == 1 else 1
            cin = b.channels(x)
            g1 = 1 if (stage == 2 and unit == 1) else groups
            y = b.conv(f"{p}.gconv1", x, mid, 1, groups=g1, act=Act.RELU)
            if groups > 1:                     # a shuffle with one group is the identity
                y = b.shuffle(f"{p}.shuffle", y, groups)
            y = b.conv(f"{p}.dw", y, mid, 3, stride=stride, padding=1, groups=mid)
            if stride == 1:
                y = b.conv(f"{p}.gconv2", y, out, 1, groups=groups)
                x = b.add(f"{p}.add", y, x, act=Act.RELU)
            else:
                y = b.conv(f"{p}.gconv2", y, out - cin, 1, groups=groups)
                s = b.avgpool(f"{p}.shortcut", x, 3, 2, padding=1, count_include_pad=True)
                x = b.concat(f"{p}.concat", (s, y), act=Act.RELU)
    x = b.global_avgpool("pool", x)
    x = b.fc("fc", x, classes)
    return b.graph(x)
