"""The hypergradient operators of OPERATORS.md, over the kernels of kernels.py.

`Plan` reads a checked pipeline; `hypergradient` runs the inner loop from y0
and returns dF/dx (and dF/dy0 for DI). With task batches every per-task
quantity carries a leading task dimension: the upper objective is the mean
over tasks, so cotangents are scaled by 1/B and per-task upper gradients summed.
"""

from __future__ import annotations

import functools
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
    checkpoint: int = 0                          # keep the inner state every this many steps (0: every chunk)

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
            if op.params.get("checkpoint"):
                kw["checkpoint"] = op.params["checkpoint"]
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


CHUNK = 5            # inner steps per compiled call: amortises the call, bounds the compile
HEAVY_STEP = 2**20   # data elements a step reads beyond which one call's overhead is noise


def chunk_length(plan: Plan, heavy: bool = False) -> int:
    """Steps per compiled chunk: at most CHUNK, the differentiated steps, or the checkpoint
    interval. A heavy step (on a CPU) gains nothing from chunks and they cost compile time."""
    longest = 1 if heavy else CHUNK
    return max(1, min(longest, plan.steps - (plan.truncate if plan.unrolled else 0), plan.checkpoint or longest))


class Sweep:
    """The inner loop in chunks of k.length steps, from the states kept at chunk starts."""

    def __init__(self, plan: Plan, k: Kernels, x, d, ref: torch.Tensor):
        self.k, self.x, self.d = k, x, d
        self._alpha_at, self._active = _schedule(plan.steps, k.length, plan.gda, ref.dtype, ref.device)

    def chunks(self, start: int, stop: int) -> list[tuple[int, int]]:
        c = self.k.length
        return [(t, min(c, stop - t)) for t in range(start, stop, c)]

    def alphas(self, t0: int) -> torch.Tensor:
        return self._alpha_at[t0]

    def advance(self, y, s, t0: int, n: int):
        return self.k.chunk(self.x, y, s, self.d, self.alphas(t0), self._active[n])

    def run(self, y, s, start: int, stop: int):
        for t0, n in self.chunks(start, stop):
            y, s = self.advance(y, s, t0, n)[:2]
        return y, s

    def vjp(self, y, s, t0: int, n: int, weights, ybar, sbar):
        return self.k.chunk_vjp(self.x, y, s, self.d, self.alphas(t0), self._active[n], weights, ybar, sbar)


@functools.lru_cache(maxsize=64)
def _schedule(steps: int, c: int, gda, dtype, device):
    """GDA's a_t for each chunk start (zeros without GDA), and the `active` masks of chunks
    of n = 0..c steps: made once per pipeline, not per outer step. Each chunk start gets a
    tensor with its own storage, so compiled code sees the same layout on every call."""
    t = torch.arange(steps + c, dtype=dtype)
    alpha = (gda[0] * gda[1] ** t if gda else torch.zeros_like(t)).to(device)
    starts = {t0: alpha[t0:t0 + c].clone() for t0 in range(steps)}
    return starts, [(torch.arange(c) < n).to(device) for n in range(c + 1)]


def inner_loop(k: Kernels, optimizer, x, y0, d, steps: int, tasks: int | None = None):
    """y_T from y0: the inner optimiser alone (no GDA mixing), in chunks."""
    s0 = vmap(optimizer.init)(y0) if tasks else optimizer.init(y0)
    sweep = Sweep(Plan(steps=steps, inner_lr=optimizer.lr), k, x, d, trees.leaves(y0)[0])
    return sweep.run(y0, s0, 0, steps)[0]


def hypergradient(plan: Plan, k: Kernels, optimizer, x, y0, d, tasks: int | None = None, seed: int = 0) -> Result:
    """seed: the draw of NYSTROM's sketch columns, so the same call gives the same answer."""
    batch = Batch(tasks)
    s0 = vmap(optimizer.init)(y0) if tasks else optimizer.init(y0)
    ref = trees.leaves(y0)[0]
    sweep = Sweep(plan, k, x, d, ref)
    c, T = k.length, plan.steps
    first = plan.truncate if plan.unrolled else T          # where the differentiated part starts
    every = -(-plan.checkpoint // c) * c if plan.checkpoint else c

    # forward: keep the states the reverse sweep (or PTT's worst step) starts from
    kept = {0: (y0, s0)}
    values = []
    y, s = y0, s0
    for t0, n in sweep.chunks(0, first) + sweep.chunks(first, T):
        if (t0 >= first and (t0 - first) % every == 0) or (plan.ptt and not plan.unrolled):
            kept[t0] = (y, s)
        out = sweep.advance(y, s, t0, n)
        y, s, lower_loss = out[:3]
        if plan.ptt:
            values.append(out[3][..., :n])
    y_T = y

    def state_at(p):
        base = max(t for t in kept if t <= p)
        return sweep.run(*kept[base], base, p)[0]

    w = batch.mean_weight()
    shape = (tasks, c) if tasks else (c,)
    no_weights = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
    xbar = trees.zeros_like(x)
    if plan.ptt:
        # where F is differentiated: each task's worst step k* = argmax_t F(x, y_t)
        values = torch.cat(values, -1)
        worst = values.argmax(-1) + 1
        upper_loss = values.max(-1).values.mean()
        positions = sorted(set(worst.reshape(-1).tolist()))
        mask = {p: (worst == p).to(ref.dtype) for p in positions}
        y_F = None
        if not plan.unrolled:
            states = {p: state_at(p) for p in positions}
            y_F = functools.reduce(trees.add, (batch.scale(states[p], mask[p]) for p in positions))
    else:
        y_F = y_T
    if y_F is not None:
        value, gx, gy = k.upper_grads(x, y_F, d)
        upper_loss = value.mean()
        xbar = batch.total(trees.scale(gx, w))
        ybar = trees.scale(gy, w)
    else:
        ybar = trees.zeros_like(y_T)

    start_grad = None
    if plan.unrolled:
        sbar = trees.zeros_like(s)
        segment: dict[int, tuple] = {}
        for t0, n in reversed(sweep.chunks(first, T)):
            if t0 in kept:
                state = kept[t0]
            else:   # checkpointing: recompute the chunk starts of this segment from its kept state
                if t0 not in segment:
                    base = max(t for t in kept if t <= t0)
                    segment.clear()
                    ys = kept[base]
                    for u, m in sweep.chunks(base, min(base + every, T)):
                        segment[u] = ys
                        ys = sweep.advance(*ys, u, m)[:2]
                state = segment[t0]
            weights = no_weights
            if plan.ptt:
                at = t0 + 1 + torch.arange(c, device=ref.device)
                weights = w * (worst.unsqueeze(-1) == at).to(ref.dtype) * (at <= t0 + n)
            dx, ybar, sbar = sweep.vjp(*state, t0, n, weights, ybar, sbar)
            xbar = trees.add(xbar, batch.total(dx))
        if plan.ptt:    # worst steps inside the truncated part: F's direct dependence on x only
            for p in (p for p in positions if p <= first):
                _, gx, _ = k.upper_grads(x, state_at(p), d)
                xbar = trees.add(xbar, batch.total(batch.scale(gx, mask[p] * w)))
        # truncation cuts the trajectory off from its start
        start_grad = ybar if plan.truncate == 0 else trees.zeros_like(ybar)
    elif plan.foa:
        start_grad = ybar                    # dy_T/dy0 taken as the identity
    else:
        xbar = trees.add(xbar, _terminal(plan, k, batch, x, y_F, d, ybar, seed))
    return Result(xbar, start_grad, y_T, upper_loss, lower_loss.mean())


def solver(plan: Plan):
    """q ~ H^-1 v from Hessian-vector products, for the terminals solved inside a compiled kernel."""
    p = plan.params
    if plan.terminal == "CG":
        return lambda hvp, v: conjugate_gradient(hvp, v, p["k"], p["tol"])
    if plan.terminal == "NS":
        return lambda hvp, v: neumann(hvp, v, p["k"], p["alpha"])
    return None


def _terminal(plan, k, batch, x, y, d, v, seed=0):
    """The correction to dF/dx made by an approximate terminal at y, given v = dF/dy."""
    name, p = plan.terminal, plan.params
    if name in ("CG", "NS"):
        # q ~ H^-1 v: the implicit function theorem gives -J^T q
        return trees.scale(batch.total(k.implicit(x, y, d, v)), -1.0)
    if name == "NYSTROM":
        if batch.tasks:
            raise NotSupported("NYSTROM does not run on task batches yet; use CG or NS after IAD")
        q = nystrom(lambda u: k.hvp(x, y, d, u), v, p["rank"], p["rho"], torch.Generator().manual_seed(seed))
        return trees.scale(batch.total(k.implicit(x, y, d, q)), -1.0)   # no solver in the kernel: J^T q
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
    for _ in range(iterations):   # no early exit: the loop runs inside compiled kernels
        active = torch.sqrt(rr) >= tol
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
