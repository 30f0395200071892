"""The hand-written reference: every benchmark case written directly with torch.func and
torch.compile, as an expert would, to measure blodsl's generated code against.

Pure functions over tuples / dicts of tensors; all differentiation happens inside the
compiled functions (torch.func), so only plain tensors cross the compile boundary.
  - short inner loops (T <= 20): one compiled function for the whole hypergradient
    (the unrolled loop and its derivative, or the loop and an implicit terminal);
  - long unrolled loops (RAD): compiled chunks of inner steps forward, storing the
    trajectory, then compiled VJPs of those chunks in a reverse sweep in Python;
  - long loops with an implicit terminal (CG): compiled chunks of steps, then one compiled
    terminal at y_T built from Hessian-vector products;
  - minibatches (problem 6): the samples each read takes come in as index tensors of fixed
    shape ([T, B] for the inner steps, [B] for the upper objective), so one compiled function
    serves every outer step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch.func import grad, vjp, vmap

from bench.problems import (FIRST_ORDER, HYPER_CLEANING, L2_LOGREG, MAML, META_LEARNING, META_SGD_INIT, METHODS,
                            MINIBATCH_CLEANING, Case, MinibatchDraws, Unsupported, hyper_cleaning_data,
                            l2_logreg_data, maml_batch, maml_init, minibatch_cleaning_data)

WHOLE = 20      # inner loops up to this length are compiled whole


def _compile(fn):
    # fullgraph: a graph break inside a torch.func transform would silently run it eagerly
    return torch.compile(fn, dynamic=False, fullgraph=True)


def _adam(groups):
    # fused: one kernel for all the upper variables, 2-3x cheaper than the foreach default at
    # these sizes (which matters next to l2_logreg's and maml's millisecond steps), and no
    # compile to pay for as with a compiled opt.step
    return torch.optim.Adam(groups, fused=True)


# --- tuples of tensors -----------------------------------------------------------------------


def _axpy(a, x, y):
    """a * x + y."""
    return tuple(a * u + v for u, v in zip(x, y))


def _dot(x, y):
    return sum((u * v).sum() for u, v in zip(x, y))


# --- hyper_cleaning, rad_memory, l2_logreg: a linear classifier y = (W, b) -------------------


def _cross_entropy(X, labels, y, reduction="mean"):
    """The linear classifier's cross-entropy, logits kept as [classes, n] (W @ X^T): the same
    product as F.linear's X @ W^T, but BLAS runs this orientation, and the ones autodiff
    derives from it, about twice as fast on CPU with few classes and many samples. (Written
    instead as (W @ X^T).T into cross_entropy, torch 2.13's vectorised CPU kernels get its
    second derivatives wrong by ~1%; this [1, classes, n] form compiles correctly.)"""
    W, b = y
    logits = W @ X.T + b[:, None]
    return nnf.cross_entropy(logits[None], labels[None], reduction=reduction).squeeze(0)


def _linear_problem(case: Case, device):
    """f, F: (x, y, d) -> scalar; the data d; the upper and lower starting values."""
    if case.problem == "l2_logreg":
        d = l2_logreg_data(case.features, device)
        x = torch.full((case.features,), L2_LOGREG["init"], device=device)
        classes = 2

        def f(x, y, d):
            W, b = y
            return _cross_entropy(d["train_x"], d["train_y"], y) + 0.5 * (x.exp() * W.square()).sum()
    else:
        c = HYPER_CLEANING
        d = hyper_cleaning_data(device)
        x = torch.zeros(c["train"], device=device)
        classes = c["classes"]

        def f(x, y, d):
            W, b = y
            ce = _cross_entropy(d["train_x"], d["train_y"], y, "none")
            return (torch.sigmoid(x) * ce).mean() + c["l2"] * (W.square().sum() + b.square().sum())

    def F(x, y, d):
        return _cross_entropy(d["val_x"], d["val_y"], y)

    features = d["train_x"].shape[1]
    y = (torch.zeros(classes, features, device=device), torch.zeros(classes, device=device))
    return f, F, d, x, y


class _Linear:
    """The linear-classifier cases: x upper, y = (W, b) lower, carried across outer steps
    (DI: a learned start y0 instead)."""

    def __init__(self, case: Case, device):
        f, F, self.d, x, y = _linear_problem(case, device)
        self.x, self.y = x, y
        self.di = case.method == "DI->RAD"
        self.params = [x]
        groups = [dict(params=[x], lr=case.outer_lr)]
        if self.di:
            self.y0 = tuple(t.clone() for t in y)
            self.params += self.y0
            groups.append(dict(params=list(self.y0), lr=METHODS["DI"]["lr"]))
        self.opt = _adam(groups)
        self.hg = _linear_hypergradient(case, f, F)

    def _run(self):
        grads, y = self.hg(self.x, self.y0 if self.di else self.y, self.d)
        return grads, y

    def hypergradient(self):
        return [self._run()[0][0]]

    def lower_weights(self):
        return self.y

    def step(self):
        grads, self.y = self._run()
        for p, g in zip(self.params, grads):
            p.grad = g
        self.opt.step()


def _linear_hypergradient(case: Case, f, F):
    """(x, y0, d) -> ([dF/dx] (+ dF/dW0, dF/db0 for DI), y_T)."""
    T, lr, method = case.steps, case.inner_lr, case.method
    # long loops run in compiled chunks of steps: for l2_logreg's tiny steps a chunk amortises
    # the per-call overhead; hyper-cleaning's steps are bound by their matrix products, so one
    # step per call (the least to compile) costs nothing more
    chunk = math.gcd(T, 10) if case.problem == "l2_logreg" else 1
    fchunk = math.gcd(T, 20)    # forward-only chunks (implicit terminals)

    def phi(x, y, d):
        g = grad(f, argnums=1)(x, y, d)
        return _axpy(-lr, g, y)

    def run(x, y, d, steps):
        for _ in range(steps):
            y = phi(x, y, d)
        return y

    if method in ("RAD", "DI->RAD", "PTT->RAD"):
        argnums = (0, 1) if method == "DI->RAD" else 0

        def upper(x, y0, d):
            if method != "PTT->RAD":
                y = run(x, y0, d, T)
                return F(x, y, d), y
            # PTT: F at every iterate (one batched product, vmap over the stacked trajectory),
            # then F differentiated at the worst one, picked on the device (no host sync)
            ys, y = [], y0
            for _ in range(T):
                y = phi(x, y, d)
                ys.append(y)
            trajectory = tuple(torch.stack(t) for t in zip(*ys))
            worst = vmap(F, in_dims=(None, 0, None))(x, trajectory, d).argmax().reshape(1)
            return F(x, tuple(t.index_select(0, worst).squeeze(0) for t in trajectory), d), y

        if T <= WHOLE:
            def whole(x, y0, d):
                g, y = grad(upper, argnums=argnums, has_aux=True)(x, y0, d)
                return (g,) if argnums == 0 else (g[0], *g[1]), y
            return _compile(whole)
        if method == "PTT->RAD":
            raise Unsupported(f"PTT with more than {WHOLE} inner steps")
        return _chunked_rad(phi, F, T, chunk, method == "DI->RAD")

    # implicit terminals at y_T
    def grad_y_f(x, y, d):
        return grad(f, argnums=1)(x, y, d)

    def terminal(x, y, d):
        gx, v = grad(F, argnums=(0, 1))(x, y, d)
        if method in ("CG", "NS"):
            # one linearisation of grad_y f at (x, y_T) serves every H p and the final J^T q
            _, pull = vjp(lambda x, y: grad_y_f(x, y, d), x, y)
            hvp = lambda p: pull(p)[1]
            q = _cg(hvp, v, **METHODS["CG"]) if method == "CG" else _neumann(hvp, v, METHODS["NS"]["k"], lr)
            return gx - pull(q)[0]
        if method == "FD":
            eps = METHODS["FD"]["r"] / _dot(v, v).sqrt()
            plus = grad(f)(x, _axpy(eps, v, y), d)
            minus = grad(f)(x, _axpy(-eps, v, y), d)
            return gx - lr * (plus - minus) / (2 * eps)
        if method == "IGA":
            gx_f, gy_f = grad(f, argnums=(0, 1))(x, y, d)
            return gx - _dot(v, gy_f) / _dot(gy_f, gy_f) * gx_f
        raise Unsupported(method)

    if T <= WHOLE:
        def whole(x, y0, d):
            y = run(x, y0, d, T)
            return (terminal(x, y, d),), y
        return _compile(whole)

    forward, solve = _compile(lambda x, y, d: run(x, y, d, fchunk)), _compile(terminal)

    def implicit(x, y, d):
        for _ in range(T // fchunk):
            y = forward(x, y, d)
        return (solve(x, y, d),), y
    return implicit


def _chunked_rad(phi, F, T, chunk, di):
    """RAD over a long inner loop: compiled chunks of steps forward, storing every iterate;
    then one compiled call per chunk runs its steps' VJPs in reverse from the stored
    iterates (each recomputes only its own step's forward)."""
    assert T % chunk == 0

    def forward(x, y, d):
        ys = []
        for _ in range(chunk):
            ys.append(y)
            y = phi(x, y, d)
        return ys, y

    def backward(x, ys, d, xbar, ybar):
        for y in reversed(ys):
            gx, ybar = vjp(lambda x, y: phi(x, y, d), x, y)[1](ybar)
            xbar = xbar + gx
        return xbar, ybar

    def top(x, y, d):
        return grad(F, argnums=(0, 1))(x, y, d)

    forward, backward, top = _compile(forward), _compile(backward), _compile(top)

    def rad(x, y, d):
        trajectory = []
        for _ in range(T // chunk):
            ys, y = forward(x, y, d)
            trajectory.append(ys)
        xbar, ybar = top(x, y, d)
        for ys in reversed(trajectory):
            xbar, ybar = backward(x, ys, d, xbar, ybar)
        return ((xbar, *ybar) if di else (xbar,)), y
    return rad


def _cg(hvp, v, k, tol):
    """Textbook CG for H q = v from q = 0, k iterations; stops (by masking, no host sync)
    once the residual norm is below tol."""
    q, r, p = tuple(torch.zeros_like(t) for t in v), v, v
    rr = _dot(r, r)
    for _ in range(k):
        active = rr.sqrt() >= tol
        hp = hvp(p)
        alpha = torch.where(active, rr / _dot(p, hp), 0)
        q = _axpy(alpha, p, q)
        r = _axpy(-alpha, hp, r)
        rr_new = _dot(r, r)
        p = _axpy(torch.where(active, rr_new / rr, 0), p, r)
        rr = torch.where(active, rr_new, rr)
    return q


def _neumann(hvp, v, k, alpha):
    """alpha * sum_{i=0..k} (I - alpha H)^i v."""
    term = total = v
    for _ in range(k):
        term = _axpy(-alpha, hvp(term), term)
        total = _axpy(1.0, term, total)
    return tuple(alpha * t for t in total)


# --- minibatch_cleaning: problem 1 read in minibatches ---------------------------------------


def _minibatch_hypergradient(case: Case):
    """(x, y0, d, inner [T, B], outer [B]) -> (dF/dx, y_T): RAD through T SGD steps, step t on
    the training samples inner[t], F on the validation samples outer."""
    T, lr, l2 = case.steps, case.inner_lr, MINIBATCH_CLEANING["l2"]

    def f(x, y, d, idx):
        W, b = y
        ce = _cross_entropy(d["train_x"][idx], d["train_y"][idx], y, "none")
        return (torch.sigmoid(x[idx]) * ce).mean() + l2 * (W.square().sum() + b.square().sum())

    def upper(x, y, d, inner, outer):
        for t in range(T):
            y = _axpy(-lr, grad(f, argnums=1)(x, y, d, inner[t]), y)
        return _cross_entropy(d["val_x"][outer], d["val_y"][outer], y), y

    return _compile(grad(upper, has_aux=True))


class _Minibatched:
    """Problem 6: x upper, y = (W, b) lower carried across outer steps; outer step k reads the
    samples blodsl's draws name for k."""

    def __init__(self, case: Case, device):
        c = MINIBATCH_CLEANING
        self.d = minibatch_cleaning_data(device)
        self.draws = MinibatchDraws(self.d, device)
        self.x = torch.zeros(len(self.d["train_x"]), device=device)
        self.y = (torch.zeros(c["classes"], c["features"], device=device), torch.zeros(c["classes"], device=device))
        self.opt = _adam([dict(params=[self.x], lr=case.outer_lr)])
        self.hg = _minibatch_hypergradient(case)
        self.outer_step = 0

    def _run(self):
        k = self.outer_step
        return self.hg(self.x, self.y, self.d, self.draws.inner(k), self.draws.outer(k))

    def hypergradient(self):
        return [self._run()[0]]

    def lower_weights(self):
        return self.y

    def step(self):
        self.x.grad, self.y = self._run()
        self.opt.step()
        self.outer_step += 1


# --- maml ------------------------------------------------------------------------------------


def _mlp(w, x):
    h = torch.relu(nnf.linear(x, w["0.weight"], w["0.bias"]))
    h = torch.relu(nnf.linear(h, w["2.weight"], w["2.bias"]))
    return nnf.linear(h, w["4.weight"], w["4.bias"])


def _mse(w, x, y):
    return nnf.mse_loss(_mlp(w, x), y)


def _adapt(w, lrs, sx, sy):
    """The inner loop: SGD on the support loss, weight k at rate lrs[k] (a number, or one per
    element for meta_sgd)."""
    for _ in range(MAML["steps"]):
        g = grad(_mse)(w, sx, sy)
        w = {k: w[k] - lrs[k] * g[k] for k in w}
    return w


def _tasks(b):
    return b["support_x"], b["support_y"], b["query_x"], b["query_y"]


def _maml_hypergradient(first_order: bool):
    def rates(w):
        return {k: MAML["inner_lr"] for k in w}

    def task_loss(w, sx, sy, qx, qy):
        return _mse(_adapt(w, rates(w), sx, sy), qx, qy)

    def task_grad_fo(w, sx, sy, qx, qy):
        # first order: dy_T/dy_0 = I, so the query gradient at the adapted weights
        return grad(_mse)(_adapt(w, rates(w), sx, sy), qx, qy)

    def meta_grad(w, b):
        if first_order:
            g = vmap(task_grad_fo, in_dims=(None, 0, 0, 0, 0))(w, *_tasks(b))
            return {k: t.mean(0) for k, t in g.items()}
        return grad(lambda w: vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(w, *_tasks(b)).mean())(w)

    return _compile(meta_grad)


def _meta_sgd_hypergradient():
    """(w, log_lrs, batch) -> (dF/dw, dF/dlog_lrs), through every task's unrolled steps."""
    def task_loss(w, lrs, sx, sy, qx, qy):
        return _mse(_adapt(w, lrs, sx, sy), qx, qy)

    def mean_loss(w, log_lrs, b):
        lrs = {k: t.exp() for k, t in log_lrs.items()}     # once for all tasks
        return vmap(task_loss, in_dims=(None, None, 0, 0, 0, 0))(w, lrs, *_tasks(b)).mean()

    return _compile(grad(mean_loss, argnums=(0, 1)))


class _Maml:
    """maml, and meta_sgd with its learned log rates beside the meta-weights."""

    def __init__(self, case: Case, device):
        self.w = {k: t.to(device) for k, t in maml_init().items()}
        self.log_lrs = ({k: torch.full_like(t, META_SGD_INIT) for k, t in self.w.items()}
                        if case.problem == "meta_sgd" else {})
        self.batches = [maml_batch(i, device) for i in range(4)]
        self.i = 0
        self.params = [*self.w.values(), *self.log_lrs.values()]
        self.opt = _adam([dict(params=self.params, lr=case.outer_lr)])
        self.hg = _meta_sgd_hypergradient() if self.log_lrs else _maml_hypergradient(case.method == "FOA->IAD")

    def _grads(self, batch) -> list[torch.Tensor]:
        """The hypergradient in the order of self.params."""
        if self.log_lrs:
            gw, glr = self.hg(self.w, self.log_lrs, batch)
            return [*gw.values(), *glr.values()]
        return list(self.hg(self.w, batch).values())

    def hypergradient(self):
        return self._grads(self.batches[0])

    def step(self):
        for p, g in zip(self.params, self._grads(self.batches[self.i % 4])):
            p.grad = g
        self.opt.step()
        self.i += 1


def make(case: Case, device: str = "cpu"):
    if case.method in FIRST_ORDER:
        raise Unsupported("the hand-written reference covers the hypergradient pipelines, not the first-order "
                          "methods or DM")
    if case.problem in META_LEARNING:
        if case.method not in META_LEARNING[case.problem]:
            raise Unsupported(case.method)
        return _Maml(case, device)
    if case.problem == "minibatch_cleaning":
        return _Minibatched(case, device)
    return _Linear(case, device)
