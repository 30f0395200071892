"""The divergence guard: the first NaN or infinity a run meets stops it, named and located.

Each outer step's quantities are checked together (one host sync); nothing of a step whose
values are not finite is committed, so the pipeline (and the last checkpoint) keeps the
last good state.
"""

from __future__ import annotations

import torch

from . import trees
from .operators import RunError

# quantity -> (what it is in a message, the generated method whose .blo line it belongs to,
#              the setting to change first)
QUANTITIES = {
    "lower": ("the lower level's variables", "lower_objective", "lower.optimizer.lr"),
    "lower_objective": ("the lower objective", "lower_objective", "lower.optimizer.lr"),
    "upper_objective": ("the upper objective", "upper_objective", "upper.optimizer.lr"),
    "hypergradient": ("the hypergradient", "hypergradient", "lower.optimizer.lr"),
    "upper": ("the upper variables, after the upper optimiser's step,", "upper_optimizer", "upper.optimizer.lr"),
}


class Diverged(RunError):
    """A value of the run became NaN or infinite; `where` names the method whose line it belongs
    to, `setting` the setting to change first."""

    def __init__(self, message: str, where: str, setting: str):
        super().__init__(message)
        self.where, self.setting = where, setting


def first_non_finite(values: list[tuple[str, object]]) -> tuple[str, str] | None:
    """(quantity, "nan" or "inf") of the first value (a tensor or a pytree) that is not finite."""
    flat = [(name, t) for name, tree in values for t in trees.leaves(tree)]
    if bool(torch.stack([torch.isfinite(t).all() for _, t in flat]).all()):
        return None
    for name, t in flat:
        if not bool(torch.isfinite(t).all()):
            return name, "nan" if bool(torch.isnan(t).any()) else "inf"
    return None


def diverged(quantity: str, kind: str, outer_step: int, hint: str, inner_step: int | None = None) -> Diverged:
    what, where, setting = QUANTITIES[quantity]
    at = f"inner step {inner_step} of outer step {outer_step}" if inner_step else f"outer step {outer_step}"
    return Diverged(f"{what} became {kind} at {at}: {hint}", where, setting)
