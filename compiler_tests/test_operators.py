"""Hypergradient correctness: each operator against an independent float64 oracle.

The oracles are closed forms of textbook problems (ridge regression, quadratics,
least-squares hyper-cleaning, iMAML's proximal problem) solved with torch.linalg, or plain
torch.autograd through an inner loop written out in this file. No expected value is
computed with blodsl's own kernels; programs are built with
`blodsl.compile(..., compile=False, dtype="float64")` and read through the public
`Pipeline` interface (`.hypergradient()`, `.upper`, `.lower`, `.step()`, `.start`).

Data is bound with `input(fields=[...])` under field names other than x/y, so it reaches
the engine in float64 untouched (bound `x`/`y` fields are cast to float32 first).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf
from torch.utils._pytree import tree_map

from blodsl.runtime.operators import Batch
from blodsl.runtime.operators.solvers import conjugate_gradient, neumann

from oracles import D, assert_close, build, program, randn, spd


def series(M: torch.Tensor, k: int) -> torch.Tensor:
    """sum_{i=0..k} M^i"""
    return sum(torch.linalg.matrix_power(M, i) for i in range(k + 1))


def gradient_descent(grad, y, lr: float, steps: int) -> torch.Tensor:
    for _ in range(steps):
        y = y - lr * grad(y)
    return y


# --- reference inner optimisers (torch.optim's definitions, written out) ---------------------


def sgd(lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """(step, initial state) of torch.optim.SGD with dampening 0, as a pure function."""

    def step(w, buf, g):
        g = g + weight_decay * w
        if momentum:
            buf = g if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        return w - lr * g, buf

    return step, None


def adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """(step, initial state) of torch.optim.Adam (L2 weight decay), as a pure function.

    sqrt'(0) is infinite: where the second moment is exactly 0 a plain sqrt would turn the
    backward pass into 0 * inf = NaN. Clamping at 1e-300 gives the limit (derivative 0)."""
    b1, b2 = betas

    def step(w, state, g):
        t, m, v = state
        g = g + weight_decay * w
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denominator = (v / (1 - b2 ** t)).clamp_min(1e-300).sqrt() + eps
        return w - lr * (m / (1 - b1 ** t)) / denominator, (t, m, v)

    return step, (0, 0.0, 0.0)


def unroll(f, x, y0, optimizer, steps, detach_at=None):
    """y_T of `steps` steps of `optimizer` on f(x, ., t) from y0, written with torch.autograd;
    detach_at=K cuts the graph at y_K (truncated back-propagation)."""
    step, state = optimizer
    y = y0 if y0.requires_grad else y0.detach().requires_grad_()
    for t in range(steps):
        if t == detach_at:
            y = y.detach().requires_grad_()
            state = tree_map(lambda s: s.detach() if torch.is_tensor(s) else s, state)
        (g,) = torch.autograd.grad(f(x, y, t), y, create_graph=True)
        y, state = step(y, state, g)
    return y


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


# --- oracle 1: ridge regression with per-feature weight decay ------------------------------------


RIDGE_N = 5
RIDGE_LAM = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.3], dtype=D)


def ridge_data() -> dict:
    m = 20
    return {"train": {"a": randn(m, RIDGE_N, seed=1), "b": randn(m, seed=2)},
            "val": {"a": randn(m, RIDGE_N, seed=3), "b": randn(m, seed=4)},
            "lam": RIDGE_LAM}


def ridge_program(pipeline: str, steps: int, optimizer: str = "SGD(lr=0.02)") -> str:
    """f = 1/2||A w - b||^2 + 1/2 sum_j lam_j w_j^2, F = 1/2||Av w - bv||^2 + 0.05||lam||^2."""
    return program(
        data='train = input(fields=["a", "b"])\nval = input(fields=["a", "b"])',
        upper="var lam = input()\n"
              "objective = 0.5 * sqnorm(val.a @ w - val.b) + 0.05 * sqnorm(lam)\n"
              "optimizer = SGD(lr=0.1)",
        lower=f"var w = zeros({RIDGE_N})\n"
              "objective = 0.5 * sqnorm(train.a @ w - train.b) + 0.5 * sum(lam * w ** 2)\n"
              f"optimizer = {optimizer}\nsteps = {steps}",
        pipeline=pipeline)


class Ridge:
    """The closed-form quantities of oracle 1, optionally with the inner optimiser's weight decay."""

    def __init__(self, data, weight_decay=0.0):
        self.a, self.b = data["train"]["a"], data["train"]["b"]
        self.av, self.bv = data["val"]["a"], data["val"]["b"]
        self.lam = data["lam"]
        self.H = self.a.T @ self.a + torch.diag(self.lam) + weight_decay * torch.eye(RIDGE_N, dtype=D)
        self.w_star = torch.linalg.solve(self.H, self.a.T @ self.b)

    def grad_w_f(self, w):
        return self.a.T @ (self.a @ w - self.b) + self.lam * w

    def grad_w_F(self, w):
        return self.av.T @ (self.av @ w - self.bv)

    def grad_lam_F(self):
        return 0.1 * self.lam

    def y_T(self, steps, lr, weight_decay=0.0):
        return gradient_descent(lambda w: self.grad_w_f(w) + weight_decay * w, torch.zeros(RIDGE_N, dtype=D),
                                lr, steps)

    def implicit(self, w, q):
        """grad_lam F - J^T q at w, where J^T q = d/dlam <grad_w f, q> = w * q."""
        return self.grad_lam_F() - w * q


def test_ridge_cg_matches_closed_form():
    """Oracle 1 + CG: with y_T = w*, CG(k = n) gives dF/dlam_j = -w*_j [H^-1 grad_w F]_j."""
    data = ridge_data()
    ridge = Ridge(data)
    got = build(ridge_program("CG(k=5, tol=1e-30)", steps=300), **data).hypergradient()["lam"]

    y_T = ridge.y_T(300, 0.02)
    assert torch.linalg.norm(y_T - ridge.w_star) < 1e-12 * torch.linalg.norm(ridge.w_star)   # the setup converged
    at_y_T = ridge.implicit(y_T, torch.linalg.solve(ridge.H, ridge.grad_w_F(y_T)))
    closed_form = ridge.grad_lam_F() - ridge.w_star * torch.linalg.solve(ridge.H, ridge.grad_w_F(ridge.w_star))
    assert_close(got, at_y_T, rtol=1e-10)
    assert_close(got, closed_form, rtol=1e-9)


def test_ridge_cg_uses_the_inner_weight_decay():
    """Oracle 1 + CG with SGD(weight_decay=c): the inner loop's fixed point solves
    grad f + c w = 0, so the implicit function theorem needs H + c I (the Hessian-vector
    product once left the optimiser's weight decay out)."""
    data = ridge_data()
    ridge = Ridge(data, weight_decay=0.5)
    got = build(ridge_program("CG(k=5, tol=1e-30)", steps=300, optimizer="SGD(lr=0.02, weight_decay=0.5)"),
                **data).hypergradient()["lam"]

    y_T = ridge.y_T(300, 0.02, weight_decay=0.5)
    assert torch.linalg.norm(y_T - ridge.w_star) < 1e-12 * torch.linalg.norm(ridge.w_star)
    closed_form = ridge.grad_lam_F() - ridge.w_star * torch.linalg.solve(ridge.H, ridge.grad_w_F(ridge.w_star))
    assert_close(got, closed_form, rtol=1e-9)


def test_ridge_nystrom_full_rank_is_exact():
    """Oracle 1 + NYSTROM(rank = n): the sketch is H itself, so q = (H + rho I)^-1 v exactly."""
    data = ridge_data()
    ridge = Ridge(data)
    got = build(ridge_program("NYSTROM(rank=5, rho=0.1)", steps=40), **data).hypergradient()["lam"]

    y_T = ridge.y_T(40, 0.02)
    q = torch.linalg.solve(ridge.H + 0.1 * torch.eye(RIDGE_N, dtype=D), ridge.grad_w_F(y_T))
    assert_close(got, ridge.implicit(y_T, q), rtol=1e-9)
    # rho matters: the answer is not H^-1's
    assert not torch.allclose(got, ridge.implicit(y_T, torch.linalg.solve(ridge.H, ridge.grad_w_F(y_T))),
                              rtol=1e-4)


@pytest.mark.parametrize("pipeline, alpha, k", [("NS(k=20, alpha=0.01)", 0.01, 20),
                                                ("NS(k=7)", 0.02, 7)])   # alpha defaults to the inner lr
def test_ridge_ns_is_the_truncated_series(pipeline, alpha, k):
    """Method-consistent NS, end to end: q = alpha * sum_{i<=k} (I - alpha H)^i v at y_T."""
    data = ridge_data()
    ridge = Ridge(data)
    got = build(ridge_program(pipeline, steps=30), **data).hypergradient()["lam"]

    y_T = ridge.y_T(30, 0.02)
    q = alpha * series(torch.eye(RIDGE_N, dtype=D) - alpha * ridge.H, k) @ ridge.grad_w_F(y_T)
    assert_close(got, ridge.implicit(y_T, q), rtol=1e-10)


def test_ridge_fd_is_exact_for_quadratic_cross_gradient():
    """FD: grad_lam f = w^2/2 is quadratic in w, so the central difference is exact:
    grad_x F - eta * J^T v with J^T v = y_T * v (eta the inner learning rate)."""
    data = ridge_data()
    ridge = Ridge(data)
    got = build(ridge_program("FD(r=0.01)", steps=3), **data).hypergradient()["lam"]

    y_T = ridge.y_T(3, 0.02)
    expected = ridge.grad_lam_F() - 0.02 * y_T * ridge.grad_w_F(y_T)
    assert_close(got, expected, rtol=1e-9)


def test_ridge_iga():
    """IGA: grad_x F - (<v, g> / ||g||^2) grad_x f at y_T, with g = grad_w f, grad_lam f = w^2/2."""
    data = ridge_data()
    ridge = Ridge(data)
    got = build(ridge_program("IGA", steps=3), **data).hypergradient()["lam"]

    y_T = ridge.y_T(3, 0.02)
    v, g = ridge.grad_w_F(y_T), ridge.grad_w_f(y_T)
    expected = ridge.grad_lam_F() - (v @ g) / (g @ g) * 0.5 * y_T ** 2
    assert_close(got, expected, rtol=1e-10)


# --- oracle 2 (method-consistent): the linear solvers on explicit matrices ------------------------


def split_tree(vector: torch.Tensor) -> dict:
    """A 6-vector as a two-leaf pytree, so the solvers are exercised on pytrees."""
    return {"a": vector[:2].clone(), "b": vector[2:].reshape(2, 2).clone()}


def join_tree(tree: dict) -> torch.Tensor:
    return torch.cat([tree["a"], tree["b"].reshape(-1)])


def matrix_hvp(H, calls=None):
    def hvp(u):
        if calls is not None:
            calls.append(1)
        return split_tree(H @ join_tree(u))
    return hvp


def textbook_cg(H, b, iterations):
    """Hestenes-Stiefel CG from x = 0: the iterates x_1..x_k and residual norms ||r_0||..||r_k||."""
    x, r = torch.zeros_like(b), b.clone()
    p = r.clone()
    iterates, residuals = [], [torch.linalg.norm(r)]
    for _ in range(iterations):
        hp = H @ p
        step = (r @ r) / (p @ hp)
        x = x + step * p
        r_next = r - step * hp
        p = r_next + (r_next @ r_next) / (r @ r) * p
        r = r_next
        iterates.append(x)
        residuals.append(torch.linalg.norm(r))
    return iterates, residuals


@pytest.mark.parametrize("k", [0, 1, 3, 25])
def test_neumann_is_the_truncated_series(k):
    """Method-consistent NS: neumann(k) = alpha * sum_{i<=k} (I - alpha H)^i v, on a pytree."""
    H, v, alpha = spd([0.5, 1.0, 2.0, 4.0, 7.0, 10.0], seed=5), randn(6, seed=6), 0.05
    got = join_tree(neumann(matrix_hvp(H), split_tree(v), k, alpha))
    assert_close(got, alpha * series(torch.eye(6, dtype=D) - alpha * H, k) @ v, rtol=1e-12)


def test_cg_iterates_are_textbook():
    """Method-consistent CG: iterates 1, 2, 3 equal textbook CG's (not just the converged answer)."""
    H, v = spd([0.3, 1.0, 2.5, 7.0, 20.0, 60.0], seed=7), randn(6, seed=8)
    iterates, _ = textbook_cg(H, v, 6)
    for k in (1, 2, 3):
        assert_close(join_tree(conjugate_gradient(matrix_hvp(H), split_tree(v), k, 0.0)), iterates[k - 1],
                     rtol=1e-12)
    # distinct iterates, so a wrongly scaled residual update would show
    assert not torch.allclose(iterates[1], iterates[2], rtol=1e-3)
    # n iterations solve the system
    assert_close(join_tree(conjugate_gradient(matrix_hvp(H), split_tree(v), 6, 0.0)),
                 torch.linalg.solve(H, v), rtol=1e-8)


def test_cg_stops_at_tolerance():
    """CG stops once the residual norm falls below tol: the iterate it returns is textbook
    iterate m (the first whose residual is below tol). It runs inside compiled kernels, so the
    later iterations are masked rather than skipped."""
    H, v = spd([0.3, 1.0, 2.5, 7.0, 20.0, 60.0], seed=7), randn(6, seed=8)
    iterates, residuals = textbook_cg(H, v, 6)
    m = 3
    tol = float(residuals[m]) * 1.01
    assert all(residuals[j] >= tol for j in range(m))    # m is the first iterate below tol
    calls = []
    got = conjugate_gradient(matrix_hvp(H, calls), split_tree(v), 20, tol)
    assert len(calls) == 20
    assert_close(join_tree(got), iterates[m - 1], rtol=1e-12)


def test_cg_stops_per_task_on_a_batch():
    """CG on a task batch: each task stops at its own iteration and returns its own textbook
    iterate (task 0 after 3 steps, task 1 after 2); task 2 converges exactly after one step,
    where r = p = 0 must give no NaN."""
    H0, v0 = spd([0.3, 1.0, 2.5, 7.0, 20.0, 60.0], seed=7), randn(6, seed=8)
    H1, v1 = spd([0.5, 0.8, 3.0, 9.0, 15.0, 40.0], seed=14), randn(6, seed=15)
    H2, v2 = 2.0 * torch.eye(6, dtype=D), randn(6, seed=9)
    iterates0, residuals0 = textbook_cg(H0, v0, 6)
    tol = float(residuals0[3]) * 1.01
    _, residuals1 = textbook_cg(H1, v1, 6)
    v1 = v1 * tol / float(residuals1[1] * residuals1[2]) ** 0.5       # task 1's residual crosses tol at 2
    iterates1, residuals1 = textbook_cg(H1, v1, 6)
    assert min(residuals0[:3]) >= tol > residuals0[3] and min(residuals1[:2]) >= tol > residuals1[2]
    Hs = torch.stack([H0, H1, H2])
    calls = []

    def hvp(u):
        calls.append(1)
        return {"y": torch.einsum("bij,bj->bi", Hs, u["y"])}

    got = conjugate_gradient(hvp, {"y": torch.stack([v0, v1, v2])}, 20, tol, Batch(3))["y"]
    assert len(calls) == 20      # masked, not skipped
    assert_close(got[0], iterates0[2], rtol=1e-12)
    assert_close(got[1], iterates1[1], rtol=1e-12)
    assert not torch.allclose(iterates1[1], iterates1[2], rtol=1e-3)   # stopping late would show
    assert torch.equal(got[2], v2 / 2)


# --- RAD through SGD, SGD with momentum, Adam, against autograd through the unrolled loop ------------


LOGISTIC_STEPS = 6


def logistic_data() -> dict:
    """16 training rows: column 2 all ones with balanced labels (so grad_w2 f = 0 exactly at
    w = 0, and Adam's second moment is 0 after the first step there), column 4 all zeros
    (so w_4 never moves and its second moment stays 0)."""
    a = randn(16, 5, seed=10)
    a[:, 2] = 1.0
    a[:, 4] = 0.0
    b = torch.tensor([1.0, 0.0] * 8, dtype=D)[torch.randperm(16, generator=torch.Generator().manual_seed(11))]
    return {"train": {"a": a, "b": b},
            "val": {"a": randn(12, 5, seed=12), "b": (randn(12, seed=13) > 0).to(D)},
            "lam": torch.tensor([-1.0, 0.0, 0.5, -0.5, 1.0], dtype=D)}


def logistic_program(optimizer: str, pipeline: str = "RAD") -> str:
    return program(
        data='train = input(fields=["a", "b"])\nval = input(fields=["a", "b"])',
        upper="var lam = input()\n"
              "objective = binary_cross_entropy(val.a @ w, val.b) + 0.01 * sqnorm(lam)\n"
              "optimizer = SGD(lr=0.1)",
        lower="var w = zeros(5)\n"
              "objective = binary_cross_entropy(train.a @ w, train.b) + 0.5 * sum(exp(lam) * w ** 2)\n"
              f"optimizer = {optimizer}\nsteps = {LOGISTIC_STEPS}",
        pipeline=pipeline)


def logistic_objectives(data):
    def bce(z, t):
        return (nnf.softplus(z) - t * z).mean()

    def f(lam, w, t=None):
        return bce(data["train"]["a"] @ w, data["train"]["b"]) + 0.5 * (torch.exp(lam) * w ** 2).sum()

    def F(lam, w):
        return bce(data["val"]["a"] @ w, data["val"]["b"]) + 0.01 * (lam ** 2).sum()

    return f, F


OPTIMIZERS = [
    ("SGD(lr=0.3)", lambda: sgd(0.3), lambda p: torch.optim.SGD(p, lr=0.3)),
    ("SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)",
     lambda: sgd(0.1, momentum=0.9, weight_decay=0.05, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True)),
    ("Adam(lr=0.05)", lambda: adam(0.05), lambda p: torch.optim.Adam(p, lr=0.05)),
    ("Adam(lr=0.05, betas=[0.8, 0.95], eps=1e-6, weight_decay=0.1)",
     lambda: adam(0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
     lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
]


@pytest.mark.parametrize("optimizer, reference, torch_optimizer", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_rad_matches_autograd_through_the_unrolled_loop(optimizer, reference, torch_optimizer):
    """RAD = autograd through T explicitly unrolled inner steps (logistic regression, weight
    decay exp(lam) learned); the forward trajectory also matches torch.optim's."""
    data = logistic_data()
    f, F = logistic_objectives(data)
    pipeline = build(logistic_program(optimizer), **data)
    got = pipeline.hypergradient()["lam"]

    lam = leaf(data["lam"])
    y_T = unroll(f, lam, torch.zeros(5, dtype=D), reference(), LOGISTIC_STEPS)
    (expected,) = torch.autograd.grad(F(lam, y_T), lam)
    assert_close(got, expected, rtol=1e-9)

    # the reference loop and the engine follow torch.optim's own steps
    w = torch.zeros(5, dtype=D, requires_grad=True)
    opt = torch_optimizer([w])
    for _ in range(LOGISTIC_STEPS):
        opt.zero_grad()
        f(data["lam"], w).backward()
        opt.step()
    assert_close(y_T.detach(), w.detach(), rtol=1e-10)
    pipeline.step()
    assert_close(pipeline.lower["w"], w.detach(), rtol=1e-10)
    assert pipeline.lower["w"][4] == 0          # the coordinate whose second moment stayed 0


@pytest.mark.parametrize("optimizer, reference, torch_optimizer", OPTIMIZERS[1:3], ids=[o[0] for o in OPTIMIZERS[1:3]])
def test_rgt_matches_truncated_autograd_on_a_nonlinear_problem(optimizer, reference, torch_optimizer):
    """RGT(truncate=K) -> RAD = autograd through the last T-K inner steps only, with y_K and
    the optimiser state detached (the steps are nonlinear here, so each reverse step must
    use its own y_t)."""
    data = logistic_data()
    f, F = logistic_objectives(data)
    got = build(logistic_program(optimizer, "RGT(truncate=2) -> RAD"), **data).hypergradient()["lam"]

    lam = leaf(data["lam"])
    y_T = unroll(f, lam, torch.zeros(5, dtype=D), reference(), LOGISTIC_STEPS, detach_at=2)
    (expected,) = torch.autograd.grad(F(lam, y_T), lam)
    assert_close(got, expected, rtol=1e-9)
    (full,) = torch.autograd.grad(F(lam, unroll(f, lam, torch.zeros(5, dtype=D), reference(), LOGISTIC_STEPS)), lam)
    assert not torch.allclose(got, full, rtol=1e-3)      # truncation changes the answer


LONG = 23   # compiled chunks of 5 steps, the last of 3


@pytest.mark.parametrize("pipeline, detach_at", [
    ("RAD", None), ("RAD(checkpoint=7)", None), ("RAD(checkpoint=15)", None), ("RAD(checkpoint=100)", None),
    ("RGT(truncate=9) -> RAD", 9), ("RGT(truncate=9) -> RAD(checkpoint=4)", 9)])
@pytest.mark.parametrize("optimizer, reference", [(o[0], o[1]) for o in OPTIMIZERS[1:3]], ids=["nesterov", "Adam"])
def test_long_trajectories_cross_chunks_and_checkpoints(pipeline, detach_at, optimizer, reference):
    """A trajectory longer than one compiled chunk, kept at every chunk start or only every
    `checkpoint` steps (the rest recomputed in the reverse sweep), truncated or not: always
    autograd through the unrolled loop. The optimiser state (momentum, Adam's moments and
    step count) crosses every chunk boundary."""
    data = logistic_data()
    f, F = logistic_objectives(data)
    source = logistic_program(optimizer, pipeline).replace(f"steps = {LOGISTIC_STEPS}", f"steps = {LONG}")
    got = build(source, **data).hypergradient()["lam"]

    lam = leaf(data["lam"])
    y_T = unroll(f, lam, torch.zeros(5, dtype=D), reference(), LONG, detach_at=detach_at)
    (expected,) = torch.autograd.grad(F(lam, y_T), lam)
    assert_close(got, expected, rtol=1e-9)


# --- oracle 4: unrolled gradient descent on a quadratic (IAD, FOA, RAD, RGT) -------------------------


QUAD_N, QUAD_LR = 4, 0.2


def quad_data() -> dict:
    return {"quad": {"A": spd([0.5, 1.0, 2.0, 3.0], seed=20), "b": randn(QUAD_N, seed=21),
                     "c": randn(QUAD_N, seed=22)}}


def quad_program(pipeline: str, steps: int, upper_var: str, lower_var: str, lower_objective: str,
                 upper_objective: str = "0.5 * sqdist(w, quad.c)", optimizer: str = f"SGD(lr={QUAD_LR})",
                 extra_lower: str = "") -> str:
    return program(
        data='quad = input(fields=["A", "b", "c"])',
        upper=f"{upper_var}\nobjective = {upper_objective}\noptimizer = SGD(lr=0.1)",
        lower=f"{lower_var}\nobjective = {lower_objective}\noptimizer = {optimizer}\nsteps = {steps}\n{extra_lower}",
        pipeline=pipeline)


QUADRATIC = "0.5 * sum(w * (quad.A @ w)) - sum(quad.b * w)"


@pytest.mark.parametrize("pipeline", ["IAD", "FOA -> IAD"])
def test_iad_on_a_quadratic(pipeline):
    """Oracle 4 + IAD: with M = I - aA, y_T = M**T y_0 + (terms free of y_0), so exact MAML
    gives dF/dy_0 = (M**T)' (y_T - c); FOA takes dy_T/dy_0 = I, giving dF/dy at y_T."""
    data, T = quad_data(), 6
    pipeline_ = build(quad_program(pipeline, T, "var w0 = normal(4)", "var w = zeros(4)", QUADRATIC,
                                   extra_lower="start = from(w0)"), **data)
    A, b, c = data["quad"]["A"], data["quad"]["b"], data["quad"]["c"]
    y0 = pipeline_.upper["w0"].clone()
    got = pipeline_.hypergradient()["w0"]

    y_T = gradient_descent(lambda y: A @ y - b, y0, QUAD_LR, T)
    M = torch.eye(QUAD_N, dtype=D) - QUAD_LR * A
    jacobian = torch.linalg.matrix_power(M, T) if pipeline == "IAD" else torch.eye(QUAD_N, dtype=D)
    assert_close(got, jacobian.T @ (y_T - c), rtol=1e-10)


@pytest.mark.parametrize("truncate", [0, 2, 5])
def test_rad_and_rgt_on_a_quadratic(truncate):
    """Oracle 4 + RAD / RGT(truncate=K): f = 1/2 w'Aw - x'w, y_{t+1} = M y_t + a x, so the
    hypergradient through the last T-K steps is 0.1 x + a sum_{i<T-K} (M^i)^T (y_T - c);
    and it equals autograd through the loop with y_K detached."""
    data, T = quad_data(), 6
    A, c = data["quad"]["A"], data["quad"]["c"]
    start = randn(QUAD_N, seed=23)
    pipeline = "RAD" if truncate == 0 else f"RGT(truncate={truncate}) -> RAD"
    built = build(quad_program(pipeline, T, "var x = normal(4)", "var w = input()",
                               "0.5 * sum(w * (quad.A @ w)) - sum(x * w)",
                               upper_objective="0.5 * sqdist(w, quad.c) + 0.05 * sqnorm(x)"),
                  w=start, **data)
    x = built.upper["x"].clone()
    got = built.hypergradient()["x"]

    y_T = gradient_descent(lambda y: A @ y - x, start, QUAD_LR, T)
    M = torch.eye(QUAD_N, dtype=D) - QUAD_LR * A
    closed_form = 0.1 * x + QUAD_LR * series(M, T - truncate - 1).T @ (y_T - c)
    assert_close(got, closed_form, rtol=1e-10)

    xl = leaf(x)
    y = unroll(lambda x, w, t: 0.5 * w @ (A @ w) - x @ w, xl, start, sgd(QUAD_LR), T,
               detach_at=truncate or None)
    (expected,) = torch.autograd.grad(0.5 * ((y - c) ** 2).sum() + 0.05 * (xl ** 2).sum(), xl)
    assert_close(got, expected, rtol=1e-10)


PTT_CASES = [  # (pipeline, T, inner lr, where the worst step k* must fall)
    ("PTT -> RAD", 8, 0.3, range(2, 8)),
    # 23 steps run as chunks of 5 (the last of 3): k* lies inside the third chunk
    ("PTT -> RAD", 23, 0.08, range(11, 16)),
    ("PTT -> RAD(checkpoint=15)", 23, 0.08, range(11, 16)),
    # k* lies in the truncated part: y_k* is a constant, only F's direct dependence on x remains
    ("PTT -> RGT(truncate=16) -> RAD", 23, 0.08, range(11, 16)),
]


@pytest.mark.parametrize("pipeline, T, a, peak", PTT_CASES)
def test_ptt_differentiates_at_the_worst_step(pipeline, T, a, peak):
    """PTT: the hypergradient is RAD's on F(x, y_k*), k* = argmax_{t=1..T} F(x, y_t); here
    y_t rises past the target, so F (the negative distance to it) peaks mid-trajectory."""
    x0 = torch.tensor([1.0, 1.2], dtype=D)
    c = torch.tensor([0.7, 0.8], dtype=D)
    source = program(
        data='target = input(fields=["c"])',
        upper="var x = input()\nobjective = -0.5 * sqdist(w, target.c) + 0.05 * sqnorm(x)\noptimizer = SGD(lr=0.1)",
        lower=f"var w = zeros(2)\nobjective = 0.5 * sqdist(w, x)\noptimizer = SGD(lr={a})\nsteps = {T}",
        pipeline=pipeline)
    got = build(source, target={"c": c}, x=x0).hypergradient()["x"]

    def F(x, w):
        return -0.5 * ((w - c) ** 2).sum() + 0.05 * (x ** 2).sum()

    def f(x, w, t):
        return 0.5 * ((w - x) ** 2).sum()

    x = leaf(x0)
    values = [F(x0, unroll(f, x, torch.zeros(2, dtype=D), sgd(a), t).detach()).item() for t in range(1, T + 1)]
    k = 1 + max(range(T), key=values.__getitem__)
    assert k in peak                                      # the peak is inside the trajectory
    y_k = unroll(f, x, torch.zeros(2, dtype=D), sgd(a), k)
    (expected,) = torch.autograd.grad(F(x, y_k.detach() if "RGT" in pipeline else y_k), x)
    assert_close(got, expected, rtol=1e-10)
    (at_T,) = torch.autograd.grad(F(x, unroll(f, x, torch.zeros(2, dtype=D), sgd(a), T)), x)
    assert not torch.allclose(got, at_T, rtol=1e-3)       # so differentiating at y_T would fail


@pytest.mark.parametrize("T", [5, 23])
def test_gda_descends_the_mixed_objective(T):
    """GDA(alpha, alpha_decay) -> RAD: autograd through the loop whose step t descends
    a_t F + (1 - a_t) f, a_t = alpha * alpha_decay^t (inner SGD with momentum). T = 23 runs
    the loop as compiled chunks of 5 steps (the last of 3), each with its own a_t."""
    data, alpha, decay = quad_data(), 0.5, 0.8
    A, c = data["quad"]["A"], data["quad"]["c"]
    source = quad_program(f"GDA(alpha={alpha}, alpha_decay={decay}) -> RAD", T, "var x = normal(4)",
                          "var w = zeros(4)", "0.5 * sum(w * (quad.A @ w)) - sum(x * w)",
                          upper_objective="0.5 * sqdist(w, quad.c) + 0.05 * sqnorm(x) * sum(w)",
                          optimizer=f"SGD(lr={QUAD_LR}, momentum=0.5)")
    built = build(source, **data)
    x = leaf(built.upper["x"])
    got = built.hypergradient()["x"]

    def F(x, w):
        return 0.5 * ((w - c) ** 2).sum() + 0.05 * (x ** 2).sum() * w.sum()

    def mixed(x, w, t):
        a_t = alpha * decay ** t
        return a_t * F(x, w) + (1 - a_t) * (0.5 * w @ (A @ w) - x @ w)

    y_T = unroll(mixed, x, torch.zeros(QUAD_N, dtype=D), sgd(QUAD_LR, momentum=0.5), T)
    (expected,) = torch.autograd.grad(F(x, y_T), x)
    assert_close(got, expected, rtol=1e-10)


@pytest.mark.parametrize("T", [5, 23])
def test_di_moves_the_start_by_its_hypergradient(T):
    """DI(lr) -> RAD: after one outer step the learned start is y_0 - lr * dF/dy_0 and the
    upper variable x - upper_lr * dF/dx, both derivatives by autograd through the loop."""
    data = quad_data()
    A, c = data["quad"]["A"], data["quad"]["c"]
    start = randn(QUAD_N, seed=24)
    built = build(quad_program("DI(lr=0.3) -> RAD", T, "var x = normal(4)", "var w = input()",
                               "0.5 * sum(w * (quad.A @ w)) - sum(x * w)"), w=start, **data)
    x, y0 = leaf(built.upper["x"]), leaf(start)
    built.step()

    y_T = unroll(lambda x, w, t: 0.5 * w @ (A @ w) - x @ w, x, y0, sgd(QUAD_LR), T)
    dx, dy0 = torch.autograd.grad(0.5 * ((y_T - c) ** 2).sum(), (x, y0))
    assert_close(dy0, torch.linalg.matrix_power(torch.eye(QUAD_N, dtype=D) - QUAD_LR * A, T) @ (y_T - c).detach(),
                 rtol=1e-10)
    assert_close(built.start["w"], start - 0.3 * dy0, rtol=1e-12)
    assert_close(built.upper["x"], x.detach() - 0.1 * dx, rtol=1e-12)


# --- oracle 3: least-squares data hyper-cleaning; oracle 5: iMAML --------------------------------------


def test_hyper_cleaning_cg_matches_closed_form():
    """Oracle 3 + CG: f = 1/2 sum_i s(x_i)(a_i'w - y_i)^2 + C/2||w||^2, H = A'DA + C I,
    dF/dx_i = -s'(x_i) r_i a_i' H^-1 grad_w F."""
    C, steps, lr = 0.5, 300, 0.1
    a, y = randn(12, 3, seed=30), randn(12, seed=31)
    av, yv = randn(10, 3, seed=32), randn(10, seed=33)
    x = randn(12, seed=34)
    source = program(
        data='train = input(fields=["a", "b"])\nval = input(fields=["a", "b"])',
        upper="var x = input()\nobjective = 0.5 * sqnorm(val.a @ w - val.b)\noptimizer = SGD(lr=0.1)",
        lower=f"var w = zeros(3)\nobjective = 0.5 * sum(sigmoid(x) * (train.a @ w - train.b) ** 2)"
              f" + 0.5 * {C} * sqnorm(w)\noptimizer = SGD(lr={lr})\nsteps = {steps}",
        pipeline="CG(k=3, tol=1e-30)")
    got = build(source, train={"a": a, "b": y}, val={"a": av, "b": yv}, x=x).hypergradient()["x"]

    s = torch.sigmoid(x)
    H = a.T @ (s[:, None] * a) + C * torch.eye(3, dtype=D)
    w_star = torch.linalg.solve(H, a.T @ (s * y))

    def oracle(w):
        r = a @ w - y
        return -s * (1 - s) * r * (a @ torch.linalg.solve(H, av.T @ (av @ w - yv)))

    y_T = gradient_descent(lambda w: a.T @ (s * (a @ w - y)) + C * w, torch.zeros(3, dtype=D), lr, steps)
    assert torch.linalg.norm(y_T - w_star) < 1e-12 * torch.linalg.norm(w_star)
    assert_close(got, oracle(y_T), rtol=1e-10)
    assert_close(got, oracle(w_star), rtol=1e-9)


def test_imaml_proximal_cg_matches_closed_form():
    """Oracle 5 + IAD -> CG: phi*(th) = (X'X/n + l I)^-1 (X'y/n + l th),
    dF/dth = l (X'X/n + l I)^-1 grad_phi F(phi*)."""
    lam, steps, lr, n = 0.8, 150, 0.3, 10
    X, y = randn(n, 4, seed=40), randn(n, seed=41)
    Xq, yq = randn(8, 4, seed=42), randn(8, seed=43)
    source = program(
        data='train = input(fields=["a", "b"])\nval = input(fields=["a", "b"])',
        upper="var w0 = normal(4)\nobjective = 0.5 * sqnorm(val.a @ w - val.b)\noptimizer = SGD(lr=0.1)",
        lower=f"var w = zeros(4)\nobjective = 0.5 * mean((train.a @ w - train.b) ** 2) + 0.5 * {lam} * sqdist(w, w0)\n"
              f"optimizer = SGD(lr={lr})\nsteps = {steps}\nstart = from(w0)",
        pipeline="IAD -> CG(k=4, tol=1e-30)")
    built = build(source, train={"a": X, "b": y}, val={"a": Xq, "b": yq})
    th = built.upper["w0"].clone()
    got = built.hypergradient()["w0"]

    H = X.T @ X / n + lam * torch.eye(4, dtype=D)
    phi_star = torch.linalg.solve(H, X.T @ y / n + lam * th)
    y_T = gradient_descent(lambda w: X.T @ (X @ w - y) / n + lam * (w - th), th, lr, steps)
    assert torch.linalg.norm(y_T - phi_star) < 1e-12 * torch.linalg.norm(phi_star)

    def oracle(phi):
        return lam * torch.linalg.solve(H, Xq.T @ (Xq @ phi - yq))

    assert_close(got, oracle(y_T), rtol=1e-10)
    assert_close(got, oracle(phi_star), rtol=1e-9)


# --- task batches ------------------------------------------------------------------------------------


SINUSOID = program(
    data="tasks = sinusoid(tasks=4, shots=5, queries=5)",
    upper="model meta = MLP(1, [8], 1)\nobjective = mse(learner(tasks.query_x), tasks.query_y)\n"
          "optimizer = Adam(lr=1e-3)",
    lower="model learner = MLP(1, [8], 1)\nobjective = mse(learner(tasks.support_x), tasks.support_y)\n"
          "optimizer = SGD(lr=0.1)\nsteps = 5\nstart = from(meta)",
    pipeline="{pipeline}")


def mlp(params: dict, x: torch.Tensor) -> torch.Tensor:
    """MLP(1, [8], 1) written out: Linear, ReLU, Linear."""
    h = torch.relu(x @ params["0.weight"].T + params["0.bias"])
    return h @ params["2.weight"].T + params["2.bias"]


def maml_reference(meta: dict, batch: dict, first_order: bool) -> dict:
    """Mean over tasks of dF_task/d meta, each task adapted by 5 SGD steps in a Python loop."""
    names = list(meta)
    totals = {k: torch.zeros_like(v) for k, v in meta.items()}
    tasks = batch["support_x"].shape[0]
    for i in range(tasks):
        theta = {k: leaf(v) for k, v in meta.items()}
        phi = dict(theta)
        for _ in range(5):
            loss = ((mlp(phi, batch["support_x"][i]) - batch["support_y"][i]) ** 2).mean()
            grads = torch.autograd.grad(loss, [phi[k] for k in names], create_graph=not first_order)
            phi = {k: phi[k] - 0.1 * g for k, g in zip(names, grads)}
        if first_order:
            phi = {k: leaf(v) for k, v in phi.items()}
        query = ((mlp(phi, batch["query_x"][i]) - batch["query_y"][i]) ** 2).mean()
        grads = torch.autograd.grad(query, [(phi if first_order else theta)[k] for k in names])
        for k, g in zip(names, grads):
            totals[k] += g / tasks
    return totals


def test_task_batch_iad_and_foa_equal_the_mean_of_per_task_gradients():
    """Task batches: the vectorised IAD and FOA -> IAD hypergradients equal the mean over
    tasks of per-task MAML / first-order MAML gradients computed one task at a time."""
    results = {}
    for pipeline in ("IAD", "FOA -> IAD"):
        built = build(SINUSOID.replace("{pipeline}", pipeline))
        (batch,) = built._data(built.problem.data_used, built.steps_done).values()
        meta = {k.removeprefix("meta."): v.clone() for k, v in built.upper.items()}
        got = built.hypergradient()
        expected = maml_reference(meta, batch, first_order=pipeline != "IAD")
        for k, value in expected.items():
            assert_close(got[f"meta.{k}"], value, rtol=1e-9)
        results[pipeline] = got
    # second-order terms matter here, so the two pipelines really differ
    assert not torch.allclose(results["IAD"]["meta.0.weight"], results["FOA -> IAD"]["meta.0.weight"], rtol=1e-3)


SCALAR_LAM, SCALAR_LR, SCALAR_STEPS = 0.5, 0.2, 10


def scalar_tasks_program(pipeline: str) -> str:
    return program(
        data="tasks = sinusoid(tasks=4, shots=5, queries=5)",
        upper="var c0 = 0.5\nobjective = mean((tasks.query_y - c) ** 2)\noptimizer = SGD(lr=0.1)",
        lower=f"var c = 0.5\nobjective = mean((tasks.support_y - c) ** 2) + 0.5 * {SCALAR_LAM} * (c - c0) ** 2\n"
              f"optimizer = SGD(lr={SCALAR_LR})\nsteps = {SCALAR_STEPS}\nstart = from(c0)",
        pipeline=pipeline)


# per task, with v = dF/dc and g = df/dc at c_T, H = 2 + l and grad_c0 f = -l (c - c0):
SCALAR_TERMINALS = {
    "IAD -> CG(k=3)": lambda v, g, c, c0: SCALAR_LAM / (2 + SCALAR_LAM) * v,
    "IAD -> NS(k=4, alpha=0.1)": lambda v, g, c, c0: SCALAR_LAM * 0.1 * v * sum(
        (1 - 0.1 * (2 + SCALAR_LAM)) ** i for i in range(5)),
    # a rank-1 sketch of a 1 x 1 Hessian is exact: q = v / (H + rho)
    "IAD -> NYSTROM(rank=1, rho=0.3)": lambda v, g, c, c0: SCALAR_LAM / (2 + SCALAR_LAM + 0.3) * v,
}


@pytest.mark.parametrize("pipeline", list(SCALAR_TERMINALS))
def test_task_batch_terminals_with_a_scalar_lower_variable(pipeline):
    """Oracle 5 on task batches with scalar variables: per task f = mean((sy - c)^2) +
    l/2 (c - c0)^2, F = mean((qy - c)^2); CG gives l/(2+l) dF/dc, NS the truncated series,
    NYSTROM l/(2+l+rho) dF/dc; the batch's hypergradient is the mean of the per-task ones."""
    built = build(scalar_tasks_program(pipeline))
    (batch,) = built._data(built.problem.data_used, built.steps_done).values()
    got = built.hypergradient()["c0"]

    sy, qy = batch["support_y"].flatten(1), batch["query_y"].flatten(1)      # tasks x points
    c0 = torch.tensor(0.5, dtype=D)

    def grad_f(c):
        return -2 * (sy - c[:, None]).mean(1) + SCALAR_LAM * (c - c0)

    c_T = gradient_descent(grad_f, c0.expand(4), SCALAR_LR, SCALAR_STEPS)
    v = -2 * (qy - c_T[:, None]).mean(1)
    expected = SCALAR_TERMINALS[pipeline](v, grad_f(c_T), c_T, c0).mean()
    assert_close(got, expected, rtol=1e-9)


@pytest.mark.parametrize("pipeline", ["PTT -> IAD", "PTT -> IAD -> CG(k=3)"])
def test_task_batch_ptt_picks_each_tasks_worst_step(pipeline):
    """PTT on a task batch: each task differentiates F at its own k* = argmax_t F(y_t). With
    IAD alone that is autograd through the task's first k* steps; with CG it is the implicit
    l/H(y_k*) dF/dc at y_k* (a quartic term makes H depend on y). The batch's hypergradient
    is the mean over tasks."""
    built = build(scalar_tasks_program(pipeline)
                  .replace("objective = mean((tasks.query_y - c) ** 2)", "objective = -mean((tasks.query_y - c) ** 2)")
                  .replace("(c - c0) ** 2", "(c - c0) ** 2 + 0.1 * c ** 4"))
    (batch,) = built._data(built.problem.data_used, built.steps_done).values()
    got = built.hypergradient()["c0"]

    worst, total = [], 0.0
    for i in range(4):
        sy, qy = batch["support_y"][i].flatten(), batch["query_y"][i].flatten()
        c0 = torch.tensor(0.5, dtype=D, requires_grad=True)

        def f(c0, c, t):
            return ((sy - c) ** 2).mean() + 0.5 * SCALAR_LAM * (c - c0) ** 2 + 0.1 * c ** 4

        def F(c):
            return -((qy - c) ** 2).mean()

        values = [F(unroll(f, c0, c0.clone(), sgd(SCALAR_LR), t)).item() for t in range(1, SCALAR_STEPS + 1)]
        k = 1 + max(range(SCALAR_STEPS), key=values.__getitem__)
        worst.append(k)
        y_k = unroll(f, c0, c0.clone(), sgd(SCALAR_LR), k)
        if pipeline == "PTT -> IAD":
            (g,) = torch.autograd.grad(F(y_k), c0)
        else:
            g = SCALAR_LAM / (2 + SCALAR_LAM + 1.2 * y_k.detach() ** 2) * 2 * (qy - y_k.detach()).mean()     # dF/dc = 2 mean(qy - c)
        total = total + g / 4
    assert len(set(worst)) > 1, worst                  # the tasks really stop at different steps
    assert_close(got, total, rtol=1e-10)
