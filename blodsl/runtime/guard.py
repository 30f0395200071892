"""The divergence guard: the first NaN or infinity a run meets stops it, named and located.

Each outer step's values are checked together, with one host sync; only when a value is not
finite does the guard look for which one, and (for the lower level) at which inner step.
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
    "state": ("the {method}'s own variables ({names})", "hypergradient", "{step_setting}"),
    "upper": ("the upper variables, after the upper optimiser's step,", "upper_optimizer", "upper.optimizer.lr"),
    "start": ("DI's learned start, after its step,", "hypergradient", "DI.lr"),
}


class Diverged(RunError):
    """A value of the run became NaN or infinite; `where` names the method whose line it belongs
    to, `setting` the setting to change first."""

    def __init__(self, message: str, where: str, setting: str):
        super().__init__(message)
        self.where, self.setting = where, setting


def all_finite(values: list[tuple[str, object]]) -> torch.Tensor:
    """Whether every tensor of the values (tensors or pytrees) is finite, as a tensor: no host sync."""
    flags = [torch.isfinite(t).all() for _, tree in values for t in trees.leaves(tree)]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def first_non_finite(values: list[tuple[str, object]]) -> tuple[str, str]:
    """(quantity, "nan" or "inf") of the first value that is not finite (there is one)."""
    for name, tree in values:
        for t in trees.leaves(tree):
            if not bool(torch.isfinite(t).all()):
                return name, "nan" if bool(torch.isnan(t).any()) else "inf"
    raise ValueError("every value is finite")


def diverged(quantity: str, kind: str, outer_step: int, hint: str, inner_step: int | None = None,
             method=None) -> Diverged:
    what, where, setting = QUANTITIES[quantity]
    if quantity == "state":
        what = what.format(method=type(method).__name__, names=", ".join(method.state_names(method.plan)))
        setting = setting.format(step_setting=method.step_setting or "lower.optimizer.lr")
    at = f"inner step {inner_step} of outer step {outer_step}" if inner_step else f"outer step {outer_step}"
    return Diverged(f"{what} became {kind} at {at}: {hint}", where, setting)
