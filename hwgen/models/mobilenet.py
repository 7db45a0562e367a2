"""MobileNet v1 (Howard et al., arXiv 1704.04861, Table 1), as TensorFlow's reference
(TF-slim ``mobilenet_v1.py``) builds it.

- Channels: ``max(int(c * alpha), 8)`` (TF-slim's ``depth()`` with ``min_depth=8``).
- Activation: ReLU6 after every conv (BN folded into the conv's weights and bias).
- Padding: TensorFlow 'SAME'. Every output is ``ceil(in / stride)``; a 3x3 stride-2 conv on
  an even input pads (top, left, bottom, right) = (0, 0, 1, 1), on an odd input (1, 1, 1, 1);
  stride-1 3x3 convs pad 1 all round. This is what TensorFlow/Keras checkpoints and their
  ONNX/TFLite exports contain; the MAC count is the same as with symmetric padding.
- Head: global average pool, then a FullyConnected layer to ``classes`` (TF-slim's 1x1
  conv on the pooled 1x1 map), output (classes, 1, 1). Dropout is omitted (inference).

Node names: ``conv1``, ``dw2``/``pw2`` ... ``dw14``/``pw14``, ``pool``, ``fc``.
"""
from __future__ import annotations

from ..ir import Act, Graph
from .common import (INPUT, ModelBuilder, check_int, check_number, check_weights_path,
                     same_padding)

__all__ = ["mobilenet", "MOBILENET_LAYERS"]

#: (stride, output channels) of the 13 depthwise-separable blocks (Table 1; the paper's
#: table prints stride 2 for the last block, the network uses stride 1).
MOBILENET_LAYERS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
                    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))

MIN_RESOLUTION = 32


def _same(size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    before, after = same_padding(size, kernel, stride)
    return (before, before, after, after)


def mobilenet(alpha: float = 1.0, resolution: int = 224, classes: int = 1000, seed: int = 0,
              weights=None) -> Graph:
    """MobileNet v1 as an IR graph.

    Parameters
    ----------
    alpha: width multiplier, 0 < alpha <= 1 (paper: 1.0, 0.75, 0.5, 0.25).
    resolution: input height and width, >= 32 (paper: 224, 192, 160, 128).
    classes: number of outputs of the classifier (1000; TF-slim checkpoints use 1001).
    seed: seed of the random weights (see :mod:`hwgen.models.common`).
    weights: None, or an ``.npz`` file with ``"<node>.weight"`` / ``"<node>.bias"`` arrays.

    Returns
    -------
    Graph with input ``"input"`` of shape (3, resolution, resolution) and one output, the
    logits (classes, 1, 1). 1.0-224: 568.7M MACs, 4.22M parameters (biases included).
    """
    alpha = check_number("mobilenet", "alpha", alpha, 0.0, 1.0)
    resolution = check_int("mobilenet", "resolution", resolution, MIN_RESOLUTION, 4096)
    classes = check_int("mobilenet", "classes", classes, 1)
    seed = check_int("mobilenet", "seed", seed, 0)
    weights = check_weights_path("mobilenet", weights)

    def depth(c: int) -> int:
        return max(int(c * alpha), 8)

    b = ModelBuilder(f"mobilenet_v1_{alpha:g}_{resolution}", (3, resolution, resolution),
                     seed, weights)
    size = resolution
    x = b.conv("conv1", INPUT, depth(32), 3, stride=2, padding=_same(size, 3, 2), act=Act.RELU6)
    size = -(-size // 2)
    for i, (stride, out) in enumerate(MOBILENET_LAYERS, start=2):
        x = b.conv(f"dw{i}", x, b.channels(x), 3, stride=stride, padding=_same(size, 3, stride),
                   groups=b.channels(x), act=Act.RELU6)
        size = -(-size // stride)
        x = b.conv(f"pw{i}", x, depth(out), 1, act=Act.RELU6)
    x = b.global_avgpool("pool", x)
    x = b.fc("fc", x, classes)
    return b.graph(x)
