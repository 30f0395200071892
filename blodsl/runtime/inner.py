"""Inner optimisers as pure functions, so steps can be differentiated.

`init(y)` gives the state a trajectory starts from; `update(y, state, g)` gives
the next variables and state. Both follow torch.optim's definitions (weight
decay added to the gradient, dampening 0), so a program's inner loop matches
what the same optimiser would do eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import trees


@dataclass(frozen=True)
class SGD:
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    @property
    def l2_decay(self):
        return self.weight_decay

    def init(self, y):
        return {"momentum": trees.zeros_like(y)} if self.momentum else {}

    def update(self, y, state, g):
        if self.weight_decay:
            g = trees.axpy(self.weight_decay, y, g)
        if self.momentum:
            buf = trees.axpy(self.momentum, state["momentum"], g)
            state = {"momentum": buf}
            g = trees.axpy(self.momentum, buf, g) if self.nesterov else buf
        if isinstance(self.lr, dict):   # one rate per weight
            return trees.tree_map(lambda y, lr, g: y - lr * g, y, self.lr, g), state
        return trees.axpy(-self.lr, g, y), state


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    # sqrt'(0) is infinite; differentiating through a zero second moment would
    # give NaN. Route zeros through sqrt(1) and mask them back to 0.
    positive = t > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, t, torch.ones_like(t))), torch.zeros_like(t))


@dataclass(frozen=True)
class Adam:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    @property
    def l2_decay(self):
        return self.weight_decay

    def init(self, y):
        first = trees.leaves(y)[0]
        return {"m": trees.zeros_like(y), "v": trees.zeros_like(y),
                "t": torch.zeros((), dtype=first.dtype, device=first.device)}

    def update(self, y, state, g):
        b1, b2 = self.betas
        if self.weight_decay:
            g = trees.axpy(self.weight_decay, y, g)
        t = state["t"] + 1
        m = trees.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], g)
        v = trees.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], g)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        y = trees.tree_map(lambda y, m, v: y - self.lr * (m / c1) / (_safe_sqrt(v / c2) + self.eps), y, m, v)
        return y, {"m": m, "v": v, "t": t}


def make(name: str, args: dict):
    if name == "SGD":
        return SGD(**args)
    if name == "Adam":
        return Adam(**{**args, "betas": tuple(args.get("betas", (0.9, 0.999)))})
    raise ValueError(f"no differentiable inner optimiser {name}")
