"""SqueezeNet v1.0 (Iandola et al., arXiv 1602.07360, Table 1) and v1.1 (the authors'
repository, github.com/forresti/SqueezeNet, SqueezeNet_v1.1).

- Fire module (s1x1, e1x1, e3x3): ``fireN.squeeze`` 1x1 conv + ReLU, then
  ``fireN.expand1x1`` (1x1 + ReLU) and ``fireN.expand3x3`` (3x3, padding 1, + ReLU) on the
  squeeze output, concatenated on channels as ``fireN.concat`` (expand1x1 channels first).
- conv1 has no padding (Caffe); max pools are 3x3 stride 2 with Caffe's rounding up
  (``ceil_mode=True``), named after the layer they follow as in the Caffe prototxt
  (v1.0: ``pool1``, ``pool4``, ``pool8``; v1.1: ``pool1``, ``pool3``, ``pool5``).
- No FC layer: ``conv10`` 1x1 to ``classes`` + ReLU, then global average pool ``pool10``:
  output (classes, 1, 1). Dropout before conv10 is omitted (inference).
- Convolutions have biases (the original has no BN); random weights as in
  :mod:`hwgen.models.common`.
"""
from __future__ import annotations

from ..ir import Act, Graph
from .common import (INPUT, ModelBuilder, check_choice, check_int, check_weights_path)

__all__ = ["squeezenet", "SQUEEZENET_LAYERS"]

# Layer sequence per version: ("conv1", out, kernel) / ("pool", name) / ("fire", n, s, e1, e3).
SQUEEZENET_LAYERS = {
    "1.0": (("conv1", 96, 7), ("pool", "pool1"),
            ("fire", 2, 16, 64, 64), ("fire", 3, 16, 64, 64), ("fire", 4, 32, 128, 128),
            ("pool", "pool4"),
            ("fire", 5, 32, 128, 128), ("fire", 6, 48, 192, 192), ("fire", 7, 48, 192, 192),
            ("fire", 8, 64, 256, 256),
            ("pool", "pool8"),
            ("fire", 9, 64, 256, 256)),
    "1.1": (("conv1", 64, 3), ("pool", "pool1"),
            ("fire", 2, 16, 64, 64), ("fire", 3, 16, 64, 64),
            ("pool", "pool3"),
            ("fire", 4, 32, 128, 128), ("fire", 5, 32, 128, 128),
            ("pool", "pool5"),
            ("fire", 6, 48, 192, 192), ("fire", 7, 48, 192, 192), ("fire", 8, 64, 256, 256),
            ("fire", 9, 64, 256, 256)),
}
DEFAULT_RESOLUTION = {"1.0": 227, "1.1": 224}
MIN_RESOLUTION = {"1.0": 29, "1.1": 25}


def squeezenet(version: str = "1.1", resolution: int | None = None, classes: int = 1000,
               seed: int = 0, weights=None) -> Graph:
    """SqueezeNet as an IR graph.

    Parameters
    ----------
    version: ``"1.0"`` (the paper) or ``"1.1"`` (2.4x less computation, same accuracy).
    resolution: input height and width; None for the release's 227 (v1.0) / 224 (v1.1).
        At least 29 (v1.0) / 25 (v1.1), the smallest inputs every layer accepts.
    classes: number of outputs (conv10's channels).
    seed: seed of the random weights (see :mod:`hwgen.models.common`).
    weights: None, or an ``.npz`` file with ``"<node>.weight"`` / ``"<node>.bias"`` arrays.

    Returns
    -------
    Graph with input ``"input"`` (3, resolution, resolution) and output (classes, 1, 1).
    v1.0-227: 1,248,424 parameters, 832.7M MACs; v1.1-224: 1,235,496 parameters,
    349.2M MACs (2.38x fewer).
    """
    if isinstance(version, float) and version in (1.0, 1.1):
        version = f"{version:.1f}"
    version = check_choice("squeezenet", "version", version, ("1.0", "1.1"))
    if resolution is None:
        resolution = DEFAULT_RESOLUTION[version]
    resolution = check_int("squeezenet", "resolution", resolution, MIN_RESOLUTION[version], 4096)
    classes = check_int("squeezenet", "classes", classes, 1)
    seed = check_int("squeezenet", "seed", seed, 0)
    weights = check_weights_path("squeezenet", weights)

    b = ModelBuilder(f"squeezenet_v{version}_{resolution}", (3, resolution, resolution),
                     seed, weights)
    x = INPUT
    for layer in SQUEEZENET_LAYERS[version]:
        if layer[0] == "conv1":
            _, out, k = layer
            x = b.conv("conv1", x, out, k, stride=2, act=Act.RELU)
        elif layer[0] == "pool":
            x = b.maxpool(layer[1], x, 3, 2, ceil_mode=True)
        else:
            _, n, s, e1, e3 = layer
            sq = b.conv(f"fire{n}.squeeze", x, s, 1, act=Act.RELU)
            a = b.conv(f"fire{n}.expand1x1", sq, e1, 1, act=Act.RELU)
            c = b.conv(f"fire{n}.expand3x3", sq, e3, 3, padding=1, act=Act.RELU)
            x = b.concat(f"fire{n}.concat", (a, c))
    x = b.conv("conv10", x, classes, 1, act=Act.RELU)
    x = b.global_avgpool("pool10", x)
    return b.graph(x)
