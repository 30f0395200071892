"""The hypergradient operators of OPERATORS.md, over the kernels of kernels.py.

`Plan` reads a checked pipeline; `hypergradient` runs the inner loop from y0
and returns dF/dx (and dF/dy0 for DI). With task batches every per-task
quantity carries a leading task dimension: the upper objective is the mean
over tasks, so cotangents are scaled by 1/B and per-task upper gradients summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.func import vmap

from . import trees
from .kernels import Kernels

TERMINALS = ("RAD", "CG", "NS", "NYSTROM", "FD", "IGA")
NOT_YET = {"DM": "the dual-multiplier method", "VSO": "a first-order method", "VFO": "a first-order method",
           "MESO": "a first-order method", "PGDO": "a first-order method", "ALTO": "a first-order method",
           "GAFFO": "a first-order method"}


class NotSupported(Exception):
    pass


@dataclass(frozen=True)
class Plan:
    steps: int
    inner_lr: float
    terminal: str = "RAD"
    params: dict = field(default_factory=dict)   # the terminal's
    gda: tuple[float, float] | None = None       # (alpha, alpha_decay)
    di_lr: float | None = None
    ptt: bool = False
    foa: bool = False
    truncate: int = 0
    iad: bool = False

    @classmethod
    def of(cls, ops, steps: int, inner_lr: float) -> "Plan":
        kw = {}
        for op in ops:
            if op.name in NOT_YET:
                raise NotSupported(f"{op.name} ({NOT_YET[op.name]}) passes `blodsl check`, but the engine does "
                                   "not run it yet; use a pipeline such as RAD, CG or IAD meanwhile")
            if op.name == "GDA":
                kw["gda"] = (op.params["alpha"], op.params["alpha_decay"])
            elif op.name == "DI":
                kw["di_lr"] = op.params["lr"]
            elif op.name == "PTT":
                kw["ptt"] = True
            elif op.name == "FOA":
                kw["foa"] = True
            elif op.name == "RGT":
                kw["truncate"] = op.params["truncate"]
            elif op.name == "IAD":
                kw["iad"] = True
            elif op.name in TERMINALS:
                kw["terminal"], kw["params"] = op.name, dict(op.params)
        return cls(steps=steps, inner_lr=inner_lr, **kw)

    @property
    def unrolled(self) -> bool:
        """Whether the reverse sweep goes through the trajectory (RAD, or IAD alone)."""
        return self.terminal == "RAD" and not self.foa


@dataclass
class Result:
    upper_grad: dict          # dF/dx, the shape of the upper variables
    start_grad: dict | None   # dF/dy0 (DI, IAD), the shape of the lower variables
    lower: dict               # y_T
    upper_loss: torch.Tensor
    lower_loss: torch.Tensor


class Batch:
    """Reductions over the task dimension; with tasks=None they do nothing."""

    def __init__(self, tasks: int | None):
        self.tasks = tasks

    def mean_weight(self) -> float:
        return 1.0 / self.tasks if self.tasks else 1.0

    def total(self, tree):
        return trees.tree_map(lambda t: t.sum(0), tree) if self.tasks else tree

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


def hypergradient(plan: Plan, k: Kernels, optimizer, x, y0, d, tasks: int | None = None, seed: int = 0) -> Result:
    """seed: the draw of NYSTROM's sketch columns, so the same call gives the same answer."""
    batch = Batch(tasks)
    s = vmap(optimizer.init)(y0) if tasks else optimizer.init(y0)
    ref = trees.leaves(y0)[0]
    alpha = torch.zeros((), dtype=ref.dtype, device=ref.device)

    # forward: the inner loop, keeping what the reverse sweep and PTT need
    trajectory, states = [], [y0]
    y = y0
    for t in range(plan.steps):
        if plan.gda:
            alpha = alpha.new_tensor(plan.gda[0] * plan.gda[1] ** t)
        if plan.unrolled and t >= plan.truncate:
            trajectory.append((y, s, alpha))
        y, s, lower_loss = k.step(x, y, s, d, alpha)
        if plan.ptt:
            states.append(y)
    y_T = y

    # where F is differentiated: y_T, or with PTT each task's worst step k*
    if plan.ptt:
        losses = torch.stack([k.upper_value(x, yk, d) for yk in states[1:]])
        worst = losses.argmax(0) + 1
    else:
        worst = torch.tensor(plan.steps)
    positions = sorted(set(worst.reshape(-1).tolist()))

    w = batch.mean_weight()
    xbar = trees.zeros_like(x)
    ybar = trees.zeros_like(y_T)
    upper_loss = torch.zeros_like(alpha)
    y_end = trees.zeros_like(y_T)
    sbar = trees.zeros_like(s)
    first = plan.truncate if plan.unrolled else plan.steps
    for p in range(plan.steps, min(first, positions[0]) - 1, -1):
        if p in positions:
            yp = states[p] if plan.ptt else y_T
            mask = (worst == p).to(alpha.dtype)
            value, gx, gy = k.upper_grads(x, yp, d)
            upper_loss = upper_loss + (batch.total(mask * value) * w if tasks else mask * value)
            xbar = trees.add(xbar, batch.total(batch.scale(gx, mask * w)))
            ybar = trees.add(ybar, batch.scale(gy, mask * w))
            y_end = trees.add(y_end, batch.scale(yp, mask))
        if plan.unrolled and first < p:
            y_prev, s_prev, a = trajectory[p - 1 - plan.truncate]
            dx, ybar, sbar = k.step_vjp(x, y_prev, s_prev, d, a, ybar, sbar)
            xbar = trees.add(xbar, batch.total(dx))

    start_grad = None
    if plan.unrolled:
        # truncation cuts the trajectory off from its start
        start_grad = ybar if plan.truncate == 0 else trees.zeros_like(ybar)
    elif plan.foa:
        start_grad = ybar                    # dy_T/dy0 taken as the identity
    else:
        xbar = trees.add(xbar, _terminal(plan, k, batch, x, y_end, d, ybar, seed))
    return Result(xbar, start_grad, y_T, upper_loss, lower_loss.mean())


def _terminal(plan, k, batch, x, y, d, v, seed=0):
    """The correction to dF/dx made by an approximate terminal at y, given v = dF/dy."""
    name, p = plan.terminal, plan.params
    if name in ("CG", "NS", "NYSTROM"):
        if name == "CG":
            q = conjugate_gradient(lambda u: k.hvp(x, y, d, u), v, p["k"], p["tol"], batch)
        elif name == "NS":
            q = neumann(lambda u: k.hvp(x, y, d, u), v, p["k"], p["alpha"])
        else:
            if batch.tasks:
                raise NotSupported("NYSTROM does not run on task batches yet; use CG or NS after IAD")
            q = nystrom(lambda u: k.hvp(x, y, d, u), v, p["rank"], p["rho"], torch.Generator().manual_seed(seed))
        # q ~ H^-1 v: the implicit function theorem gives -J^T q
        return trees.scale(batch.total(k.cross_vjp(x, y, d, q)), -1.0)
    if name == "FD":
        eps = p["r"] / torch.sqrt(batch.dot(v, v))
        plus, _ = k.lower_grads(x, trees.add(y, batch.scale(v, eps)), d)
        minus, _ = k.lower_grads(x, trees.sub(y, batch.scale(v, eps)), d)
        diff = batch.scale(trees.sub(plus, minus), -plan.inner_lr / (2 * eps))
        return batch.total(diff)
    if name == "IGA":
        gx_f, gy_f = k.lower_grads(x, y, d)
        c = batch.dot(v, gy_f) / batch.dot(gy_f, gy_f)
        return batch.total(batch.scale(gx_f, -c))
    raise NotSupported(name)


# --- linear solvers for q ~ H^-1 v, from Hessian-vector products ------------------------------


def conjugate_gradient(hvp, v, iterations: int, tol: float, batch: Batch | None = None):
    """Textbook CG from q = 0; each task stops when its residual norm falls below tol."""
    batch = batch or Batch(None)
    q = trees.zeros_like(v)
    r = v
    p = v
    rr = batch.dot(r, r)
    for _ in range(iterations):
        active = torch.sqrt(rr) >= tol
        if not bool(active.any()):
            break
        hp = hvp(p)
        php = batch.dot(p, hp)
        step = torch.where(active & (php != 0), rr / torch.where(php != 0, php, 1), 0)
        q = trees.add(q, batch.scale(p, step))
        r = trees.sub(r, batch.scale(hp, step))
        rr_new = batch.dot(r, r)
        beta = torch.where(active & (rr != 0), rr_new / torch.where(rr != 0, rr, 1), 0)
        p = trees.add(r, batch.scale(p, beta))
        rr = torch.where(active, rr_new, rr)
    return q


def neumann(hvp, v, iterations: int, alpha: float):
    """alpha * sum_{i=0..k} (I - alpha H)^i v."""
    term, total = v, v
    for _ in range(iterations):
        term = trees.sub(term, trees.scale(hvp(term), alpha))
        total = trees.add(total, term)
    return trees.scale(total, alpha)


def nystrom(hvp, v, rank: int, rho: float, generator: torch.Generator | None = None):
    """(H_k + rho I)^-1 v for the Nystrom approximation H_k = C W^+ C^T from `rank` columns."""
    flat_v = trees.flatten(v)
    n = flat_v.numel()
    rank = min(rank, n)
    columns = torch.randperm(n, generator=generator)[:rank].to(flat_v.device)
    basis = torch.zeros(rank, n, dtype=flat_v.dtype, device=flat_v.device)
    basis[torch.arange(rank), columns] = 1
    c = torch.stack([trees.flatten(hvp(trees.unflatten(e, v))) for e in basis], 1)  # n x rank
    w = c[columns]                                                                 # rank x rank
    # Woodbury: (C W^+ C^T + rho I)^-1 = (I - C (rho W + C^T C)^-1 C^T) / rho
    inner = rho * w + c.T @ c
    solved = torch.linalg.lstsq(inner, (c.T @ flat_v).unsqueeze(1)).solution.squeeze(1)
    return trees.unflatten((flat_v - c @ solved) / rho, v)
