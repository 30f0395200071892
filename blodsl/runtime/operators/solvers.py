"""Linear solvers for q ~ H^-1 v from Hessian-vector products (CG, NS, NYSTROM).

Each works on pytrees, and on task batches (a leading task dimension, one system
per task) through `Batch`. CG and NS run inside compiled kernels, so they never
stop early: finished iterations are masked.
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

from .. import trees
from .method import Batch


def conjugate_gradient(hvp, v, iterations: int, tol: float, batch: Batch | None = None):
    """Textbook CG from q = 0; each task stops when its residual norm falls below tol."""
    batch = batch or Batch(None)
    q = trees.zeros_like(v)
    r = v
    p = v
    rr = batch.dot(r, r)
    for _ in range(iterations):
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


def nystrom(hvp, v, rank: int, rho: float, generator: torch.Generator | None = None, tasks: int | None = None):
    """(H_k + rho I)^-1 v for the Nystrom approximation H_k = C W^+ C^T from `rank` columns of H
    (the same columns for every task of a batch)."""
    flat_v = _flat(v, tasks)                                     # [tasks,] n
    n = flat_v.shape[-1]
    rank = min(rank, n)
    columns = torch.randperm(n, generator=generator)[:rank].to(flat_v.device)
    units = torch.zeros(rank, *flat_v.shape, dtype=flat_v.dtype, device=flat_v.device)
    units[torch.arange(rank), ..., columns] = 1
    c = torch.stack([_flat(hvp(_unflat(e, v, tasks)), tasks) for e in units], -1)   # [tasks,] n x rank
    w = c[..., columns, :]                                                            # [tasks,] rank x rank
    # Woodbury: (C W^+ C^T + rho I)^-1 = (I - C (rho W + C^T C)^-1 C^T) / rho
    ct = c.transpose(-1, -2)
    inner = rho * w + ct @ c
    solved = torch.linalg.solve(inner, ct @ flat_v.unsqueeze(-1))   # symmetric positive definite: deterministic
    return _unflat((flat_v - (c @ solved).squeeze(-1)) / rho, v, tasks)


def _flat(tree, tasks):
    """All leaves as one vector, per task when there are tasks."""
    leaves = trees.leaves(tree)
    return torch.cat([t.reshape(tasks, -1) if tasks else t.reshape(-1) for t in leaves], -1)


def _unflat(vector, like, tasks):
    leaves, spec = pytree.tree_flatten(like)
    parts, i = [], 0
    for t in leaves:
        size = t[0].numel() if tasks else t.numel()
        parts.append(vector[..., i:i + size].reshape(t.shape))
        i += size
    return pytree.tree_unflatten(parts, spec)
