"""The pure tensor functions the operators are built from, compiled once each.

Every derivative is taken here with torch.func, inside the function that
torch.compile sees, and every kernel returns plain tensors: nothing crosses a
compiled boundary with a graph attached. The inner loop and the reverse sweep
run in Python over `step` and `step_vjp`, so a cold compile costs the same for
5 inner steps as for 1000.

With task batches each kernel is vmapped over the tasks (upper variables
shared), then compiled: one fused kernel per step for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, grad_and_value, vjp, vmap

from . import trees


@dataclass
class Kernels:
    step: Callable          # (x, y, s, d, a) -> (y', s', f)
    step_vjp: Callable      # (x, y, s, d, a, ybar, sbar) -> (xbar, ybar', sbar')
    upper_grads: Callable   # (x, y, d) -> (F, dF/dx, dF/dy)
    upper_value: Callable   # (x, y, d) -> F
    lower_value: Callable   # (x, y, d) -> f
    lower_grads: Callable   # (x, y, d) -> (df/dx, df/dy)
    hvp: Callable           # (x, y, d, v) -> H v
    cross_vjp: Callable     # (x, y, d, q) -> J^T q = d/dx <df/dy, q>


def make_kernels(f, F, optimizer, gda: bool, task_dims=None, compile: bool = True) -> Kernels:
    """f, F: (x, y, d) -> scalar. task_dims: vmap in_dims of d when d holds task batches."""

    def inner_loss(x, y, d, a):
        fy = f(x, y, d)
        return (a * F(x, y, d) + (1 - a) * fy if gda else fy), fy

    def step(x, y, s, d, a):
        g, fy = grad(inner_loss, argnums=1, has_aux=True)(x, y, d, a)
        y, s = optimizer.update(y, s, g)
        return y, s, fy

    def step_vjp(x, y, s, d, a, ybar, sbar):
        _, pullback = vjp(lambda x, y, s: step(x, y, s, d, a)[:2], x, y, s)
        return pullback((ybar, sbar))

    def upper_grads(x, y, d):
        (gx, gy), value = grad_and_value(F, argnums=(0, 1))(x, y, d)
        return value, gx, gy

    def lower_grads(x, y, d):
        return grad(f, argnums=(0, 1))(x, y, d)

    def grad_y_f(x, y, d):
        return grad(f, argnums=1)(x, y, d)

    decay = getattr(optimizer, "weight_decay", 0.0)

    def hvp(x, y, d, v):
        # H is symmetric, so a reverse-over-reverse product is H v. The inner optimiser's
        # L2 weight decay is part of what its fixed point minimises: H + decay * I.
        hv = vjp(lambda y: grad_y_f(x, y, d), y)[1](v)[0]
        return trees.axpy(decay, v, hv) if decay else hv

    def cross_vjp(x, y, d, q):
        return grad(lambda x: trees.dot(grad_y_f(x, y, d), q))(x)

    fns = dict(step=step, step_vjp=step_vjp, upper_grads=upper_grads, upper_value=F, lower_value=f,
               lower_grads=lower_grads, hvp=hvp, cross_vjp=cross_vjp)
    if task_dims is not None:
        fns = {name: _over_tasks(name, fn, task_dims) for name, fn in fns.items()}
    if compile:
        fns = {name: torch.compile(fn, dynamic=False) for name, fn in fns.items()}
    return Kernels(**fns)


# Which arguments carry a task dimension: x is shared, everything else per task.
_ARGS = {"step": "xysda", "step_vjp": "xysdaYS", "upper_grads": "xyd", "upper_value": "xyd",
         "lower_value": "xyd", "lower_grads": "xyd", "hvp": "xydv", "cross_vjp": "xydq"}


def _over_tasks(name: str, fn: Callable, task_dims) -> Callable:
    dims = tuple(None if arg in "xa" else task_dims if arg == "d" else 0 for arg in _ARGS[name])
    return vmap(fn, in_dims=dims)
