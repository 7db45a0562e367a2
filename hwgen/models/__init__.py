"""The model zoo: the four seed networks as IR graphs, exactly as their papers specify.

``MODELS`` maps a name to its builder; every builder takes keyword options with the
papers' defaults plus ``classes``, ``seed`` and ``weights`` and returns a
:class:`hwgen.ir.Graph` with one input ``"input"`` (3, R, R) and one output, the logits
(classes, 1, 1):

- ``mobilenet(alpha=1.0, resolution=224, classes=1000, seed=0, weights=None)``
- ``squeezenet(version="1.1", resolution=None, classes=1000, seed=0, weights=None)``
- ``shufflenet(groups=3, scale=1.0, resolution=224, classes=1000, seed=0, weights=None)``
- ``xception(width=1.0, middle_repeats=8, resolution=299, classes=1000, seed=0, weights=None)``

Weights are seeded random with BN-like scaling by default, or read from an ``.npz`` file
(:func:`save_weights` writes one); see :mod:`hwgen.models.common`.
"""
from __future__ import annotations

import inspect

from ..ir import Graph
from .common import save_weights
from .mobilenet import mobilenet
from .shufflenet import shufflenet
from .squeezenet import squeezenet
from .xception import xception

__all__ = ["MODELS", "build", "options", "save_weights",
           "mobilenet", "squeezenet", "shufflenet", "xception"]

MODELS = {
    "mobilenet": mobilenet,
    "squeezenet": squeezenet,
    "shufflenet": shufflenet,
    "xception": xception,
}


def options(name: str) -> dict[str, object]:
    """The options of model ``name`` and their defaults, e.g. ``{"alpha": 1.0, ...}``."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(MODELS)}")
    return {p.name: p.default for p in inspect.signature(MODELS[name]).parameters.values()}


def build(name: str, **opts) -> Graph:
    """Build zoo model ``name`` with options ``opts`` (see :data:`MODELS`).

    Raises ValueError for an unknown model, an unknown option or a bad option value.
    """
    allowed = options(name)
    for k in opts:
        if k not in allowed:
            raise ValueError(f"{name}: unknown option '{k}'; allowed: {', '.join(allowed)}")
    return MODELS[name](**opts)
