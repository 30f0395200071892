"""Inner optimisers as pure functions, so steps can be differentiated.

`init(y)` gives the state a trajectory starts from; `update(y, state, g)` gives
the next variables and state. Each follows its torch.optim namesake step for step
(torch 2.13, without maximize, amsgrad or the implementation switches), so a
program's inner loop matches what the same optimiser would do eagerly.

Every numeric setting may be a number or a 0-dim tensor (one to learn, or one
torch.func has wrapped), and `lr` also a pytree like y: one rate per weight. A
tensor setting is never read for its value: which state exists depends only on
which settings are `in_use`, decided the same way by `init` and `update`. So build
the state with the same optimiser (after `dataclasses.replace`) that updates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from . import trees

Setting = Union[float, torch.Tensor]                # a number or a 0-dim tensor
LearningRate = Union[float, torch.Tensor, dict]     # also a pytree like y: one rate per weight


def in_use(setting) -> bool:
    """Whether a setting takes part in a step: any tensor (its value may be traced, or
    learned away from 0) or a nonzero number."""
    return isinstance(setting, torch.Tensor) or setting != 0


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    # sqrt'(0) is infinite; differentiating through a zero second moment would
    # give NaN. Route zeros (and rounding's tiny negatives) through sqrt(1) and mask them back to 0.
    positive = t > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, t, torch.ones_like(t))), torch.zeros_like(t))


def _step_count(y) -> torch.Tensor:
    """Steps taken, 0 at the start: a tensor, so it is masked and vmapped like the rest of the state."""
    first = trees.leaves(y)[0]
    return torch.zeros((), dtype=first.dtype, device=first.device)


class _InnerOptimizer:
    # AdamW shrinks the weights outside the gradient; the others add weight_decay * y to it
    decoupled_decay: ClassVar[bool] = False

    @property
    def l2_decay(self) -> Setting:
        """The weight decay that enters the gradient as an L2 term: the steps seek a
        stationary point of f + l2_decay / 2 |y|^2."""
        return 0.0 if self.decoupled_decay else self.weight_decay

    def _weight_decay(self, y, g):
        """(y, g) after torch's weight decay: y shrunk by lr * weight_decay when it is
        decoupled, otherwise the L2 term's gradient added to g."""
        decay = self.weight_decay
        if not in_use(decay):
            return y, g
        if self.decoupled_decay:
            return trees.tree_map(lambda y, lr: y * (1 - lr * decay), y, trees.per_leaf(self.lr, y)), g
        return y, trees.axpy(decay, y, g)


@dataclass(frozen=True)
class SGD(_InnerOptimizer):
    lr: LearningRate = 1e-3
    momentum: Setting = 0.0
    dampening: Setting = 0.0
    weight_decay: Setting = 0.0
    nesterov: bool = False

    def init(self, y):
        if not in_use(self.momentum):
            return {}
        state = {"momentum": trees.zeros_like(y)}
        if in_use(self.dampening):
            state["t"] = _step_count(y)   # torch's first buffer is the gradient itself, undamped
        return state

    def update(self, y, state, g):
        y, g = self._weight_decay(y, g)
        if in_use(self.momentum):
            state = self._momentum(state, g)
            buf = state["momentum"]
            g = trees.axpy(self.momentum, buf, g) if self.nesterov else buf
        return trees.sub(y, trees.scale(g, self.lr)), state

    def _momentum(self, state, g):
        m, d = self.momentum, self.dampening
        if not in_use(d):
            # the buffer starts at 0, so its first value is g, as torch's
            return {"momentum": trees.axpy(m, state["momentum"], g)}
        first = state["t"] == 0
        buf = trees.tree_map(lambda b, g: torch.where(first, g, m * b + (1 - d) * g), state["momentum"], g)
        return {"momentum": buf, "t": state["t"] + 1}


@dataclass(frozen=True)
class _Moments(_InnerOptimizer):
    """Adam's family: a step along the mean of g (bias corrected) over a denominator
    built from a second statistic v of g, which each member defines."""
    lr: LearningRate = 1e-3
    betas: tuple[Setting, Setting] = (0.9, 0.999)
    eps: Setting = 1e-8
    weight_decay: Setting = 0.0

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))   # the IR spells a list

    def init(self, y):
        return {"m": trees.zeros_like(y), "v": trees.zeros_like(y), "t": _step_count(y)}

    def update(self, y, state, g):
        b1 = self.betas[0]
        y, g = self._weight_decay(y, g)
        t = state["t"] + 1
        m = trees.tree_map(lambda m, g: torch.lerp(m, g, 1 - b1), state["m"], g)
        v = trees.tree_map(self._second, state["v"], g)
        c1 = 1 - b1 ** t

        def step(y, m, v, lr):
            return y - lr / c1 * (m / self._denominator(v, t))

        return trees.tree_map(step, y, m, v, trees.per_leaf(self.lr, y)), {"m": m, "v": v, "t": t}


@dataclass(frozen=True)
class Adam(_Moments):
    def _second(self, v, g):
        b2 = self.betas[1]
        return b2 * v + (1 - b2) * g * g

    def _denominator(self, v, t):
        return _safe_sqrt(v) / (1 - self.betas[1] ** t) ** 0.5 + self.eps


@dataclass(frozen=True)
class AdamW(Adam):
    weight_decay: Setting = 1e-2
    decoupled_decay: ClassVar[bool] = True


@dataclass(frozen=True)
class Adamax(_Moments):
    lr: LearningRate = 2e-3

    def _second(self, v, g):
        # |g| + eps > 0 while b2 * v starts at 0: no tie (where maximum's derivative splits) at the start
        return torch.maximum(self.betas[1] * v, g.abs() + self.eps)

    def _denominator(self, v, t):
        return v


@dataclass(frozen=True)
class RMSprop(_InnerOptimizer):
    lr: LearningRate = 1e-2
    alpha: Setting = 0.99
    eps: Setting = 1e-8
    weight_decay: Setting = 0.0
    momentum: Setting = 0.0
    centered: bool = False

    def init(self, y):
        state = {"v": trees.zeros_like(y)}
        if self.centered:
            state["mean"] = trees.zeros_like(y)
        if in_use(self.momentum):
            state["momentum"] = trees.zeros_like(y)
        return state

    def update(self, y, state, g):
        a = self.alpha
        y, g = self._weight_decay(y, g)
        new = {"v": trees.tree_map(lambda v, g: a * v + (1 - a) * g * g, state["v"], g)}
        if self.centered:
            new["mean"] = trees.tree_map(lambda mean, g: torch.lerp(mean, g, 1 - a), state["mean"], g)
            variance = trees.tree_map(lambda v, mean: v - mean * mean, new["v"], new["mean"])
        else:
            variance = new["v"]
        step = trees.tree_map(lambda g, var: g / (_safe_sqrt(var) + self.eps), g, variance)
        if in_use(self.momentum):
            step = new["momentum"] = trees.axpy(self.momentum, state["momentum"], step)
        return trees.sub(y, trees.scale(step, self.lr)), new


@dataclass(frozen=True)
class Adagrad(_InnerOptimizer):
    lr: LearningRate = 1e-2
    lr_decay: Setting = 0.0
    weight_decay: Setting = 0.0
    initial_accumulator_value: Setting = 0.0
    eps: Setting = 1e-10

    def init(self, y):
        start = self.initial_accumulator_value
        return {"sum": trees.tree_map(lambda y: torch.zeros_like(y) + start, y), "t": _step_count(y)}

    def update(self, y, state, g):
        y, g = self._weight_decay(y, g)
        t = state["t"] + 1
        total = trees.tree_map(lambda s, g: s + g * g, state["sum"], g)

        def step(y, g, s, lr):
            return y - lr / (1 + (t - 1) * self.lr_decay) * (g / (_safe_sqrt(s) + self.eps))

        return trees.tree_map(step, y, g, total, trees.per_leaf(self.lr, y)), {"sum": total, "t": t}


@dataclass(frozen=True)
class Adadelta(_InnerOptimizer):
    lr: LearningRate = 1.0
    rho: Setting = 0.9
    eps: Setting = 1e-6
    weight_decay: Setting = 0.0

    def init(self, y):
        return {"v": trees.zeros_like(y), "u": trees.zeros_like(y)}   # mean squares of g and of the steps

    def update(self, y, state, g):
        rho, eps = self.rho, self.eps
        y, g = self._weight_decay(y, g)
        v = trees.tree_map(lambda v, g: rho * v + (1 - rho) * g * g, state["v"], g)
        delta = trees.tree_map(lambda u, v, g: _safe_sqrt(u + eps) / _safe_sqrt(v + eps) * g, state["u"], v, g)
        u = trees.tree_map(lambda u, d: rho * u + (1 - rho) * d * d, state["u"], delta)
        return trees.sub(y, trees.scale(delta, self.lr)), {"v": v, "u": u}


@dataclass(frozen=True)
class ASGD(_InnerOptimizer):
    """torch's iterates, whose step size decays as lr / (1 + lambd lr t)^alpha. torch also
    keeps their average from step t0 on, which never feeds back into a step: the lower
    variables are the iterates, so the average is not kept and t0 changes nothing."""
    lr: LearningRate = 1e-2
    lambd: Setting = 1e-4
    alpha: Setting = 0.75
    t0: float = 1e6
    weight_decay: Setting = 0.0

    @property
    def l2_decay(self) -> Setting:
        # y (1 - lambd eta) - eta g = y - eta (g + lambd y): lambd acts as an L2 term too
        return self.lambd + self.weight_decay

    def init(self, y):
        return {"t": _step_count(y)}

    def update(self, y, state, g):
        lambd, t = self.lambd, state["t"]
        y, g = self._weight_decay(y, g)

        def step(y, g, lr):
            eta = lr / (1 + lambd * lr * t) ** self.alpha
            return y * (1 - lambd * eta) - eta * g

        return trees.tree_map(step, y, g, trees.per_leaf(self.lr, y)), {"t": t + 1}
