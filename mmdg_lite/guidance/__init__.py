"""MMD Guidance (paper Eq. 5, Alg. 1) composed of small parts: the reference set, the step-size
policy, the evaluation point and the generated set (batch or the reference code's memory)."""
from .eval_point import EVAL_POINTS, EvalPoint
from .generated import GENERATED_SETS, BatchSet, MemorySet
from .guide import (BANDWIDTH_UPDATES, ChainedGuidance, GuidanceDivergenceError, MMDGuidance,
                    ReferenceScaleWarning, default_kernel)
from .references import ReferenceSet
from .step_size import NORMALIZATIONS, SCHEDULES, STRENGTH_SCALES, StepSize, schedule_weight

__all__ = ["MMDGuidance", "ChainedGuidance", "GuidanceDivergenceError", "ReferenceScaleWarning", "default_kernel",
           "ReferenceSet", "StepSize", "EvalPoint", "BatchSet", "MemorySet", "schedule_weight",
           "SCHEDULES", "NORMALIZATIONS", "EVAL_POINTS", "GENERATED_SETS", "STRENGTH_SCALES",
           "BANDWIDTH_UPDATES"]
