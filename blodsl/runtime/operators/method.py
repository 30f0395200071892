"""What every operator that owns the outer step provides: a `Method`.

A method turns the current state into an `Outcome` without changing anything
(so `Pipeline.hypergradient()` can ask for it), and the trainer then applies
it: the upper optimiser steps along `upper_grad`, the lower variables become
`lower`, and the method's auxiliary variables become `state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch

from .. import trees
from ..kernels import Kernel, Objectives


class RunError(Exception):
    """A method met a value it cannot go on from (a non-positive curvature, a log of a
    non-positive number); the message says which and what to change. It is the pipeline's
    doing, so it is reported at the `hypergradient = ...` line."""

    where = "hypergradient"


@dataclass
class Outcome:
    upper_grad: dict             # the direction for the upper variables (dF/dx for hypergradient methods)
    lower: dict                  # the lower variables after this outer step
    upper_loss: torch.Tensor
    lower_loss: torch.Tensor
    state: dict = field(default_factory=dict)   # the method's auxiliary variables after this step
    start_grad: dict | None = None              # for the lower level's start: DI's learned one, or the upper
                                                # variable it starts from (IAD: dF/dy0; GAFFO: its direction)


class Batch:
    """Reductions over the task dimension of a task batch; with tasks=None they do nothing."""

    def __init__(self, tasks: int | None):
        self.tasks = tasks

    def mean_weight(self) -> float:
        return 1.0 / self.tasks if self.tasks else 1.0

    def total(self, tree):
        return trees.tree_map(lambda t: t.sum(0), tree) if self.tasks else tree

    def mean(self, tree):
        return trees.tree_map(lambda t: t.mean(0), tree) if self.tasks else tree

    def dot(self, a, b):
        if not self.tasks:
            return trees.dot(a, b)
        return sum((u * v).reshape(self.tasks, -1).sum(1) for u, v in zip(trees.leaves(a), trees.leaves(b)))

    @staticmethod
    def scale(tree, c):
        """tree * c, with c a scalar or one number per task."""
        if not torch.is_tensor(c) or c.dim() == 0:
            return trees.scale(tree, c)
        return trees.tree_map(lambda t: t * c.reshape(c.shape + (1,) * (t.dim() - c.dim())), tree)


@dataclass
class Context:
    """What a method works with during one outer step."""
    kernels: SimpleNamespace     # its compiled kernels, by name
    optimizer: object            # the lower level's differentiable optimiser
    batch: Batch
    seed: int = 0                # this outer step's seed, for what a method draws at random
    lower_size: int = 0          # number of lower-level parameters
    steps_data: Callable[[int, int], dict] | None = None   # (t0, c): inner steps' minibatches (minibatch.py)
    # draw(i): the i-th fresh minibatch of this outer step, shaped as the step's data (dataset -> fields).
    # The same (outer step, i) gives the same minibatch, so that hypergradient() and step() and a
    # resumed run agree. None: no dataset is read in minibatches.
    draw: Callable[[int], dict] | None = None

    def minibatch(self, i: int, whole: dict) -> dict:
        """The data of a method's i-th stochastic oracle this outer step: its fresh minibatch, or
        `whole` (the outer step's data) while no minibatches are drawn."""
        return whole if self.draw is None else self.draw(i)


class Method:
    """Owns the outer step of the pipelines whose plan names it."""

    step_setting: str | None = None     # the setting of its own step size (named when its variables diverge)

    def __init__(self, plan):
        self.plan, self.params = plan, plan.params

    # --- what the plan shows ------------------------------------------------------------------

    @classmethod
    def lower(cls, plan, params):
        """The registered lowering: this method owns the outer step, unless a dynamics core
        already does (DM), which then takes this terminal's meaning."""
        if plan.core is not None:
            return plan.core.with_terminal(plan, cls, params)
        return plan.with_note(cls.describe(plan, params), method=cls, params=params)

    @classmethod
    def describe(cls, plan, params) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    @classmethod
    def kernel_names(cls, plan) -> tuple[str, ...]:
        return tuple(cls(plan).kernels(Objectives(None, None, None)))

    @classmethod
    def state_names(cls, plan) -> tuple[str, ...]:
        return ()

    @classmethod
    def unrolled(cls, plan) -> bool:
        """Whether the reverse sweep goes through the inner trajectory."""
        return False

    @classmethod
    def adaptation(cls, plan) -> tuple[int, float | None]:
        """How the lower level trains with the upper one held still (baselines, metrics that train
        it again): (steps per outer step, the lr of plain gradient steps, or None for the lower
        optimiser's own steps)."""
        return plan.steps, None

    @classmethod
    def keeps(cls, plan) -> str:
        return "nothing: no reverse sweep through the inner loop"

    # --- what the trainer calls -----------------------------------------------------------------

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        raise NotImplementedError

    def init_state(self, y0) -> dict:
        """The auxiliary variables at the start of the run (before any outer step)."""
        return {}

    def outcome(self, ctx: Context, x, y, state: dict, d, k: int) -> Outcome:
        """Outer step k from upper x, lower y (this step's start) and the auxiliary state."""
        raise NotImplementedError

    def after_upper_step(self, ctx: Context, x, outcome: Outcome, d, k: int) -> dict:
        """The lower variables once the upper optimiser has stepped to x (outer step k)."""
        return outcome.lower

    def first_non_finite_step(self, ctx: Context, x, y0, d) -> int | None:
        """The inner step at which the lower level first became NaN or infinite, where the method
        can tell (it runs an inner loop); None otherwise."""
        return None

    def upper_lr_scale(self, k: int) -> float:
        """A factor on the upper optimiser's learning rate at outer step k."""
        return 1.0
