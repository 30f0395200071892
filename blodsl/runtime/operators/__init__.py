"""The operators' lowerings, by family; importing this package registers them all."""

from . import dual_multiplier, first_order, implicit, stochastic, trajectory, unrolled  # noqa: F401 - registers
from .method import Batch, Context, Method, Outcome, RunError
from .registry import REGISTRY, Plan, lower, register

__all__ = ["REGISTRY", "Batch", "Context", "Method", "Outcome", "Plan", "RunError", "lower", "register"]
