"""Pure VRAM arithmetic: memory estimates and ``--gpu-memory-utilization`` slices.

``estimate`` says what one vLLM instance needs; ``slices`` shares one GPU between instances;
``explain`` says why a set does not fit and the nearest fix; ``request`` builds the planner's
input from an attributed GPU snapshot. No I/O anywhere in this package.
"""

from gpumgr.plan.estimate import (
    EstimateError,
    MemoryEstimate,
    PlannerConstants,
    estimate,
    resolve_max_model_len,
    resolve_weights_bytes,
)
from gpumgr.plan.model import (
    InstanceBudget,
    InstanceRequest,
    MemoryHolder,
    OllamaModel,
    PlanRequest,
    Shortfall,
    VramPlan,
    budget_bytes_for,
)
from gpumgr.plan.explain import ollama_unload_set
from gpumgr.plan.request import request_for_gpu
from gpumgr.plan.slices import plan_slices

__all__ = [
    "ollama_unload_set",
    "EstimateError",
    "InstanceBudget",
    "InstanceRequest",
    "MemoryEstimate",
    "MemoryHolder",
    "OllamaModel",
    "PlanRequest",
    "PlannerConstants",
    "Shortfall",
    "VramPlan",
    "budget_bytes_for",
    "estimate",
    "plan_slices",
    "request_for_gpu",
    "resolve_max_model_len",
    "resolve_weights_bytes",
]
