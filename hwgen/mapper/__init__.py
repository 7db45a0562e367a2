"""Mapper: engine sizing, schedule, buffer plan and weight placement (plan.py), the cost
model (cost.py), and the layer program / weight image binaries (program.py,
firmware/README.md).

Typical use::

    p = plan(qgraph, boards.get_board("ulx3s", "85F"))      # sizes, schedule, buffers
    check_fit(p, source=("mobilenet", {"alpha": 0.25}))     # MapperFitError before synthesis
    write_build_files(p, "build/")                           # program.bin weights.bin layers.json
"""
from .plan import (Engines, FitProblem, LayerPlan, MapperError, MapperFitError, Place, Plan,
                   Storage, Usage, View, check_fit, plan, quick_fit)
from .program import (ProgramFormatError, decode_program, decode_weight_image, encode_program,
                      layers_json, simulate, weight_image, write_build_files)

__all__ = ["plan", "check_fit", "quick_fit", "Plan", "Engines", "LayerPlan", "View", "Place",
           "Storage", "Usage", "FitProblem", "MapperError", "MapperFitError",
           "encode_program", "decode_program", "weight_image", "decode_weight_image",
           "layers_json", "write_build_files", "simulate", "ProgramFormatError"]
