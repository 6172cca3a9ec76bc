"""MMD Guidance (paper Eq. 5, Alg. 1) composed of small parts."""
from .guide import (EVAL_POINTS, GENERATED_SETS, NORMALIZATIONS, SCHEDULES, ChainedGuidance,
                    MMDGuidance, schedule_weight)

__all__ = ["MMDGuidance", "ChainedGuidance", "schedule_weight", "SCHEDULES", "NORMALIZATIONS",
           "EVAL_POINTS", "GENERATED_SETS"]
