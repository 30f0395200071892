"""The upper level's update, once per outer step: the hypergradient clipped to the
program's global norm, one step of the torch optimiser at its learning rate (as
scheduled, times the factor a method may ask for, e.g. DM's), then the schedule
advanced. Its state (the optimiser's and the scheduler's) is part of the
pipeline's state_dict().
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from . import trees
from .operators import RunError
from .problem import BuildError, Level


class ScheduleError(RunError):
    """The upper schedule cannot go on (OneCycleLR past its total_steps); reported at its line."""

    where = "scheduler"


def torch_optimizer(spec: tuple[str, dict], params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """A torch.optim optimiser from the generated module's (name, keyword arguments)."""
    name, args = spec
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return getattr(torch.optim, name)(params, **args)


class UpperUpdate:
    """Steps the upper variables `params` (updated in place) along the hypergradient."""

    def __init__(self, level: Level, params: list[torch.Tensor], lr_scale: Callable[[int], float]):
        self.params, self.clip, self.lr_scale = params, level.clip, lr_scale
        self.optimizer = torch_optimizer(level.optimizer, params)
        self.scheduler = None
        if level.scheduler is not None:
            name, args = level.scheduler
            self.scheduler = getattr(torch.optim.lr_scheduler, name)(self.optimizer, **args)
        self.lr: float | None = None   # the learning rate of the last step

    def step(self, direction: dict, k: int, objective: torch.Tensor) -> None:
        """Outer step k along `direction` (left as it is); `objective` is the step's upper objective."""
        grads = trees.leaves(direction)
        if self.clip is not None:
            factor = torch.clamp(self.clip / torch.sqrt(trees.sqnorm(direction)), max=1.0)   # no host sync
            grads = [g * factor for g in grads]
        for p, g in zip(self.params, grads):
            p.grad = g
        scale = self.lr_scale(k)
        with _scaled_lr(self.optimizer, scale):
            self.optimizer.step()
        self.lr = self.optimizer.param_groups[0]["lr"] * scale
        if isinstance(self.scheduler, ReduceLROnPlateau):   # it needs a measure of progress
            self.scheduler.step(objective.item())
        elif self.scheduler is not None:
            try:
                self.scheduler.step()
            except ValueError as e:
                raise ScheduleError(f"the upper scheduler {type(self.scheduler).__name__} cannot go on after outer "
                                    f"step {k + 1}: {e}; make its schedule as long as the run") from None

    def record(self) -> dict:
        """What a step's record adds: with a schedule, the learning rate the step used."""
        return {} if self.scheduler is None else {"upper_lr": self.lr}

    # --- saving and restoring ------------------------------------------------------------

    def state_dict(self) -> dict:
        state = {"outer_optimizer": copy.deepcopy(self.optimizer.state_dict())}
        if self.scheduler is not None:
            state["upper_scheduler"] = {"name": type(self.scheduler).__name__,
                                        "state": copy.deepcopy(self.scheduler.state_dict())}
        return state

    def load_state_dict(self, state: dict) -> None:
        """From a pipeline's state_dict(). Without a schedule the optimiser takes this program's settings
        (a run resumed with another lr steps at it); a schedule goes on as saved, its arguments included."""
        saved = state.get("upper_scheduler")
        saved_name = saved["name"] if saved else None
        mine = type(self.scheduler).__name__ if self.scheduler is not None else None
        if saved_name != mine:
            raise BuildError(f"the saved state's upper learning rate was scheduled by {saved_name or 'nothing'}, "
                             f"this program's by {mine or 'nothing'}")
        if self.scheduler is None:
            load_keeping_settings(self.optimizer, state["outer_optimizer"])
        else:
            self.optimizer.load_state_dict(state["outer_optimizer"])
            self.scheduler.load_state_dict(saved["state"])


def load_keeping_settings(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """The saved optimiser state (moments, step counts) under this program's settings (its lr,
    betas, ...)."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, mine in zip(optimizer.param_groups, settings):
        group.update(mine)


@contextlib.contextmanager
def _scaled_lr(optimizer: torch.optim.Optimizer, factor: float):
    """The optimiser's learning rates times `factor` for one step (a method's schedule)."""
    if factor == 1.0:
        yield
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr
