"""The pure tensor functions the operators are built from, compiled once each.

Every derivative is taken here with torch.func, inside the function that
torch.compile sees, and every kernel returns plain tensors: nothing crosses a
compiled boundary with a graph attached.

The inner loop runs in chunks of `chunk` steps: one compiled call advances the
lower level `chunk` steps, and one compiled call takes the VJP of a chunk,
recomputing its steps from the state at its start. A cold compile then costs
the same for 10 inner steps as for 1000, the per-call overhead is paid once per
chunk, and the reverse sweep keeps only the states at chunk starts. Steps of a
chunk beyond the end of the loop are switched off by `active`.

With task batches each kernel is vmapped over the tasks (upper variables
shared), then compiled: one fused kernel per chunk for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, grad_and_value, vjp, vmap

from . import trees


@dataclass
class Kernels:
    chunk: Callable         # (x, y, s, d, alphas, active) -> (y', s', f[, F after each step if ptt])
    chunk_vjp: Callable     # (x, y, s, d, alphas, active, weights, ybar, sbar) -> (xbar, ybar', sbar')
    upper_grads: Callable   # (x, y, d) -> (F, dF/dx, dF/dy)
    lower_grads: Callable   # (x, y, d) -> (df/dx, df/dy)
    hvp: Callable           # (x, y, d, v) -> H v
    implicit: Callable      # (x, y, d, v) -> J^T q with q = solver(H, v) (q = v without a solver)
    length: int             # steps per chunk


def make_kernels(f, F, optimizer, *, gda: bool, chunk: int, ptt: bool = False, solver=None,
                 task_dims=None, compile: bool = True) -> Kernels:
    """f, F: (x, y, d) -> scalar. ptt: chunks also return F after each step, and their VJP
    adds sum_i weights_i * F(x, y_i) to what is differentiated. solver: (hvp, v) -> q ~ H^-1 v,
    solved inside the `implicit` kernel (CG, NS). task_dims: vmap in_dims of d when d holds task batches."""

    def inner_loss(x, y, d, a):
        fy = f(x, y, d)
        return (a * F(x, y, d) + (1 - a) * fy if gda else fy), fy

    def step(x, y, s, d, a):
        g, fy = grad(inner_loss, argnums=1, has_aux=True)(x, y, d, a)
        y, s = optimizer.update(y, s, g)
        return y, s, fy

    def run_chunk(x, y, s, d, alphas, active):
        values = []
        for i in range(chunk):
            y_next, s_next, fy = step(x, y, s, d, alphas[i])
            on = active[i]
            y = trees.tree_map(lambda new, old: torch.where(on, new, old), y_next, y)
            s = trees.tree_map(lambda new, old: torch.where(on, new, old), s_next, s)
            f_last = fy if i == 0 else torch.where(on, fy, f_last)
            if ptt:
                values.append(F(x, y, d))
        return (y, s, f_last, torch.stack(values)) if ptt else (y, s, f_last)

    def chunk_vjp(x, y, s, d, alphas, active, weights, ybar, sbar):
        def forward(x, y, s):
            out = run_chunk(x, y, s, d, alphas, active)
            return (out[0], out[1], (weights * out[3]).sum()) if ptt else out[:2]

        _, pullback = vjp(forward, x, y, s)
        return pullback((ybar, sbar, torch.ones_like(weights[0])) if ptt else (ybar, sbar))

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

    def implicit(x, y, d, v):
        q = solver(lambda u: hvp(x, y, d, u), v) if solver else v
        return grad(lambda x: trees.dot(grad_y_f(x, y, d), q))(x)

    # torch.compile is lazy: a kernel the pipeline never calls is never compiled
    fns = dict(chunk=run_chunk, chunk_vjp=chunk_vjp, upper_grads=upper_grads, lower_grads=lower_grads, hvp=hvp,
               implicit=implicit)
    if task_dims is not None:
        fns = {name: _over_tasks(name, fn, task_dims) for name, fn in fns.items()}
    if compile:
        # vmapped kernels share functorch's wrapper code object, and a process may build several
        # pipelines: each is a variant of that code to dynamo, which falls back to eager past its limit
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        fns = {name: torch.compile(fn, dynamic=False) for name, fn in fns.items()}
    return Kernels(length=chunk, **fns)


# Which arguments carry a task dimension: x, alphas and active are shared, the rest per task.
_ARGS = {"chunk": "xysdAm", "chunk_vjp": "xysdAmwYS", "upper_grads": "xyd", "lower_grads": "xyd",
         "hvp": "xydv", "implicit": "xydv"}


def _over_tasks(name: str, fn: Callable, task_dims) -> Callable:
    dims = tuple(None if arg in "xAm" else task_dims if arg == "d" else 0 for arg in _ARGS[name])
    return vmap(fn, in_dims=dims)
