"""The pure tensor functions operators are built from, and how they are compiled.

Every derivative is taken with torch.func inside the function torch.compile sees,
and every kernel returns plain tensors: nothing crosses a compiled boundary with a
graph attached. `Objectives` holds a program's f and F and gives the derivatives
every operator family builds on; each operator declares the kernels it calls
(`Method.kernels`), and `compile_kernels` vmaps them over task batches and
compiles them, each once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch
from torch.func import grad, grad_and_value, vjp, vmap

from . import trees
from .inner import in_use


@dataclass(frozen=True)
class Kernel:
    """A pure function and how its arguments meet a task batch, one letter per argument:
    `s` shared by every task (the upper variables, schedules, coefficients), `t` one per
    task (lower variables and their states), `d` the data (task batches per task)."""
    fn: Callable
    args: str


def masked(on, new, old):
    """`new` where the step is switched on, `old` where it is past the end of the loop."""
    return trees.tree_map(lambda a, b: torch.where(on, a, b), new, old)


class Objectives:
    """f(x, y, d) and F(x, y, d) of a program, with the derivatives operators share.

    `optimizer` is the lower level's differentiable optimiser and `settings(x)` those of its
    settings the upper variables make (`SGD(lr=exp(log_lr))`). Its L2 weight decay is part of
    what its fixed point minimises, so the lower gradient the implicit terminals differentiate
    includes it, and a learned decay reaches x through it."""

    def __init__(self, f: Callable, F: Callable, optimizer, settings: Callable[[dict], dict] | None = None):
        self.f, self.F, self.optimizer = f, F, optimizer
        self.settings = settings or (lambda x: {})

    def optimizer_at(self, x):
        """The inner optimiser with the settings the upper variables x make."""
        learned = self.settings(x)
        return dataclasses.replace(self.optimizer, **learned) if learned else self.optimizer

    def step(self, x, y, s, g):
        """One inner-optimiser step, differentiable in x through the learned settings too."""
        return self.optimizer_at(x).update(y, s, g)

    def upper_grads(self, x, y, d):
        """(F, dF/dx, dF/dy)"""
        (gx, gy), value = grad_and_value(self.F, argnums=(0, 1))(x, y, d)
        return value, gx, gy

    def lower_grads(self, x, y, d):
        """(df/dx, df/dy)"""
        return grad(self.f, argnums=(0, 1))(x, y, d)

    def grad_y_f(self, x, y, d):
        return grad(self.f, argnums=1)(x, y, d)

    def stationarity(self, x, y, d):
        """grad_y f + decay y: zero at the inner optimiser's fixed point."""
        decay = self.optimizer_at(x).l2_decay
        g = self.grad_y_f(x, y, d)
        return trees.axpy(decay, y, g) if in_use(decay) else g

    def hvp(self, x, y, d, v):
        """(H + decay I) v; symmetric, so reverse over reverse gives it."""
        return vjp(lambda y: self.stationarity(x, y, d), y)[1](v)[0]

    def cross(self, x, y, d, q):
        """J^T q = d/dx <grad_y f(x, y) + decay(x) y, q>"""
        return grad(lambda x: trees.dot(self.stationarity(x, y, d), q))(x)

    def descent(self, objective: Callable, update: Callable, length: int) -> Callable:
        """`length` masked steps of `update(y, state, g)` on objective(x, y, d, c), g its
        gradient in y: (x, y, state, d, c, active) -> (y, state, objective at the last step)."""

        def run(x, y, s, d, c, active):
            for i in range(length):
                g, value = grad_and_value(objective, argnums=1)(x, y, d, c)
                y_next, s_next = update(y, s, g)
                y, s = masked(active[i], y_next, y), masked(active[i], s_next, s)
                last = value if i == 0 else torch.where(active[i], value, last)
            return y, s, last

        return run


def plain_step(lr: float) -> Callable:
    """A gradient step y - lr * g with no optimiser state."""
    return lambda y, s, g: (trees.axpy(-lr, g, y), s)


def compile_kernels(kernels: dict[str, Kernel], task_dims=None, compile: bool = True) -> SimpleNamespace:
    """Each kernel vmapped over the tasks (when the data holds task batches), then compiled.
    torch.compile is lazy: a kernel never called is never compiled."""
    fns = {}
    for name, k in kernels.items():
        fn = k.fn
        if task_dims is not None:
            fn = _over_tasks(fn, k.args, task_dims)
        if compile:
            # vmapped kernels share functorch's wrapper code object, and a process may build several
            # pipelines: each is a variant of that code to dynamo, which falls back to eager past its limit
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            fn = torch.compile(fn, dynamic=False)
        fns[name] = fn
    return SimpleNamespace(**fns)


def _over_tasks(fn: Callable, args: str, task_dims: dict) -> Callable:
    """fn vmapped over the tasks. Only task batches carry a task dimension; the other datasets, as read
    (a minibatch holds only the fields the objectives read), and a chunk's per-step minibatches
    (minibatch.STEPS) are shared by every task."""
    tasks = {n for n, fields in task_dims.items() if 0 in fields.values()}

    def over_tasks(*values):
        dims = tuple(None if a == "s" else 0 if a == "t" else {n: task_dims[n] if n in tasks else None for n in value}
                     for a, value in zip(args, values))
        return vmap(fn, in_dims=dims)(*values)

    return over_tasks
