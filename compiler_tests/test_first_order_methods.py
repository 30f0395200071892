"""The first-order methods (VSO, VFO, MESO, PGDO, ALTO, GAFFO) against their definitions,
in float64, on the quadratic bilevel problem:

f = 1/2 y'Ay - y'(Bx + b), F = 1/2 |y - c|^2 + rho/2 |x|^2, y* = A^-1 (Bx + b).

Each expected value is computed in this file from the formulas (plain tensors, closed
forms), never by blodsl. x and y have the same size, so GAFFO's `start = from(x)` fits.
"""

import pytest
import torch

import blodsl
from oracles import D, assert_close, build, program, randn, spd

N, RHO, BETA, UPPER_LR, STEPS = 3, 0.3, 0.2, 0.1, 4


def quad() -> dict:
    return {"A": spd([1.0, 2.0, 3.0], seed=60), "B": randn(N, N, seed=61), "b": randn(N, seed=62),
            "c": randn(N, seed=63)}


def quad_program(pipeline: str, upper_extra: str = "", start: str = "", steps: int = STEPS) -> str:
    return program(
        data='quad = input(fields=["A", "B", "b", "c"])',
        upper=f"var x = input()\nobjective = 0.5 * sqdist(y, quad.c) + {RHO / 2} * sqnorm(x){upper_extra}\n"
              f"optimizer = SGD(lr={UPPER_LR})",
        lower=f"var y = input()\nobjective = 0.5 * sum(y * (quad.A @ y)) - sum(y * (quad.B @ x + quad.b))\n"
              f"optimizer = SGD(lr={BETA})\nsteps = {steps}\n{start}",
        pipeline=pipeline)


class Quadratic:
    """The problem's values and derivatives, written out."""

    def __init__(self, q):
        self.A, self.B, self.b, self.c = q["A"], q["B"], q["b"], q["c"]

    def f(self, x, y):
        return 0.5 * y @ self.A @ y - y @ (self.B @ x + self.b)

    def gy_f(self, x, y):
        return self.A @ y - self.B @ x - self.b

    def gx_f(self, x, y):
        return -self.B.T @ y

    def gy_F(self, y):
        return y - self.c

    def descend(self, x, y, lr, steps):
        for _ in range(steps):
            y = y - lr * self.gy_f(x, y)
        return y


def start(seed=64):
    return randn(N, seed=seed), randn(N, seed=seed + 1)


def test_alto_takes_one_lower_step_then_the_direct_gradient_there():
    """ALTO: y' = y - beta df/dy; x gets dF/dx at y' (F reads x and y together here)."""
    q, (x, y) = quad(), start()
    p = Quadratic(q)
    built = build(quad_program("ALTO", upper_extra=" + 0.1 * sum(x * y)", steps=1), quad=q, x=x, y=y)
    y1 = y - BETA * p.gy_f(x, y)
    assert_close(built.hypergradient()["x"], RHO * x + 0.1 * y1)
    built.step()
    assert_close(built.lower["y"], y1)
    assert_close(built.upper["x"], x - UPPER_LR * (RHO * x + 0.1 * y1))


def vfo_reference(p: Quadratic, x, y, u1, y_hat_lr, y_hat_steps):
    """BOME's direction d = (d_x, d_y), grad q and q."""
    y_hat = p.descend(x, y, y_hat_lr, y_hat_steps)
    q = p.f(x, y) - p.f(x, y_hat)
    gq = torch.cat([p.gx_f(x, y) - p.gx_f(x, y_hat), p.gy_f(x, y)])
    gF = torch.cat([RHO * x, p.gy_F(y)])
    lam = torch.relu((u1 * q - gF @ gq) / (gq @ gq))
    return gF + lam * gq, gF, gq, q, lam


@pytest.mark.parametrize("u1, pushes", [(50.0, True), (1e-3, False)])
def test_vfo_direction_meets_the_value_constraint(u1, pushes):
    """VFO (BOME): d = grad F + lam grad q with <d, grad q> = max(<grad F, grad q>, u1 q); x gets
    d_x, y steps y - beta d_y. Both branches: lam > 0 (the constraint pushes) and lam = 0."""
    q, (x, y) = quad(), start()
    p = Quadratic(q)
    built = build(quad_program(f"VFO(u1={u1}, y_hat_lr=0.15, y_hat_steps=6)"), quad=q, x=x, y=y)
    d, gF, gq, value, lam = vfo_reference(p, x, y, u1, 0.15, 6)
    assert (lam > 0) == pushes
    assert_close(d @ gq, torch.maximum(gF @ gq, u1 * value))

    assert_close(built.hypergradient()["x"], d[:N])
    built.step()
    assert_close(built.lower["y"], y - BETA * d[N:])
    assert_close(built.upper["x"], x - UPPER_LR * d[:N])


def test_vfo_takes_as_many_y_hat_steps_as_inner_steps_by_default():
    q, (x, y) = quad(), start()
    built = build(quad_program("VFO(u1=50)"), quad=q, x=x, y=y)
    d = vfo_reference(Quadratic(q), x, y, 50.0, 0.01, STEPS)[0]
    assert_close(built.hypergradient()["x"], d[:N])


def test_meso_theta_fixed_point_direction_and_lower_step():
    """MESO (MEHA): theta* = (A + gamma I)^-1 (Bx + b + gamma y) is the fixed point of the theta
    step; x gets dF/dx / c_0 + df/dx(y) - df/dx(theta'); after the upper step, y steps at the
    new x. A second outer step checks c_k = c0 (k+1)^0.25."""
    q, (x, y) = quad(), start()
    p = Quadratic(q)
    eta, gamma, c0 = 0.05, 0.5, 0.2
    built = build(quad_program(f"MESO(eta={eta}, gamma_1={gamma}, c0={c0})", steps=1), quad=q, x=x, y=y)
    theta_star = torch.linalg.solve(q["A"] + gamma * torch.eye(N, dtype=D), q["B"] @ x + q["b"] + gamma * y)
    state = built.state_dict()
    state["method"]["theta"]["y"] = theta_star
    built.load_state_dict(state)

    theta = theta_star
    for k in range(2):
        c = c0 * (k + 1) ** 0.25
        theta = theta - eta * (p.gy_f(x, theta) + gamma * (theta - y))
        if k == 0:
            assert_close(theta, theta_star, rtol=1e-12)          # the fixed point stays put
        direction = RHO * x / c + p.gx_f(x, y) - p.gx_f(x, theta)
        assert_close(built.hypergradient()["x"], direction)
        built.step()
        x = x - UPPER_LR * direction
        y = y - BETA * (p.gy_F(y) / c + p.gy_f(x, y) - gamma * (y - theta))     # at the new x
        assert_close(built.upper["x"], x)
        assert_close(built.lower["y"], y)
        assert_close(built.state_dict()["method"]["theta"]["y"], theta)


@pytest.mark.parametrize("penalty, rising", [("difference", 10), ("gradient", 10), ("difference", 1)])
def test_pgdo_direction_at_the_lower_solution(penalty, rising):
    """PGDO with y_hat = y* (its descent then stays there): the difference penalty gives
    l (dF/dx + gamma (df/dx(x, y) + B'y*)); the gradient penalty |df/dy|^2 / 2 is differentiated
    through df/dy: l (dF/dx - gamma B'(Ay - Bx - b)) for x, l (dF/dy + gamma A (Ay - Bx - b)) for
    y. gamma_k rises from gamma_init over `rising` outer steps and then stays at gamma_max (three
    outer steps), l = min(1 / gamma_k, 1)."""
    q, (x, y) = quad(), start()
    p = Quadratic(q)
    built = build(quad_program(f"PGDO(y_hat_lr=0.1, gamma_init=2, gamma_max=4, gamma_argmax_step={rising}, "
                               f"penalty={penalty})"), quad=q, x=x, y=y)
    y_star = torch.linalg.solve(q["A"], q["B"] @ x + q["b"])
    state = built.state_dict()
    state["method"]["y_hat"]["y"] = y_star
    built.load_state_dict(state)

    y_hat = y_star
    for k in range(3):
        gamma = 2 + min(k / rising, 1) * (4 - 2)
        scale = min(1 / gamma, 1.0)
        y_hat = p.descend(x, y_hat, 0.1, STEPS)
        if penalty == "difference":
            gx = scale * (RHO * x + gamma * (p.gx_f(x, y) - p.gx_f(x, y_hat)))
            gy = scale * (p.gy_F(y) + gamma * p.gy_f(x, y))
        else:
            gx = scale * (RHO * x - gamma * q["B"].T @ p.gy_f(x, y))
            gy = scale * (p.gy_F(y) + gamma * q["A"] @ p.gy_f(x, y))
        if k == 0:
            assert_close(y_hat, y_star, rtol=1e-12)
            assert_close(gx, scale * (RHO * x + gamma * (p.gx_f(x, y) + q["B"].T @ y_star))
                         if penalty == "difference" else gx)
        assert_close(built.hypergradient()["x"], gx)
        built.step()
        x, y = x - UPPER_LR * gx, y - BETA * gy
        assert_close(built.upper["x"], x)
        assert_close(built.lower["y"], y)
        assert_close(built.state_dict()["method"]["y_hat"]["y"], y_hat)


def test_vso_two_outer_steps():
    """VSO (BVFSM): z takes z_loop inner-optimiser steps on f + mu|z|^2, y takes T steps at z_lr
    on F - sigma ln(phi + eps - f) + theta|y|^2, and x gets dF/dx - sigma (df/dx(z) - df/dx(y)) /
    (phi + eps - f). The regularisers decay as 1/(k+1); eps defaults to the number of lower-level
    parameters. y starts near y*, inside the barrier's domain (f(x, y) < phi + eps)."""
    q, (x, y) = quad(), start()
    p = Quadratic(q)
    y = torch.linalg.solve(q["A"], q["B"] @ x + q["b"]) + 0.3 * y
    z_loop, z_lr, ll, ul, ln = 3, 0.05, 0.1, 0.02, 2.0
    built = build(quad_program(f"VSO(z_loop={z_loop}, z_lr={z_lr}, ll_l2_reg={ll}, ul_l2_reg={ul}, "
                               f"ul_ln_reg={ln})"), quad=q, x=x, y=y)
    z, eps = y.clone(), float(N)
    for k in range(2):
        mu, theta, sigma = ll / (k + 1), ul / (k + 1), ln / (k + 1)
        for _ in range(z_loop):
            z = z - BETA * (p.gy_f(x, z) + 2 * mu * z)
        phi = p.f(x, z) + mu * z @ z
        for _ in range(STEPS):
            room = phi + eps - p.f(x, y)
            y = y - z_lr * (p.gy_F(y) + sigma * p.gy_f(x, y) / room + 2 * theta * y)
        room = phi + eps - p.f(x, y)
        direction = RHO * x - sigma * (p.gx_f(x, z) - p.gx_f(x, y)) / room
        assert_close(built.hypergradient()["x"], direction)
        built.step()
        x = x - UPPER_LR * direction
        assert_close(built.upper["x"], x)
        assert_close(built.lower["y"], y)
        assert_close(built.state_dict()["method"]["z"]["y"], z)



def test_gaffo_on_the_quadratic():
    """GAFFO: from y = x, y1 = y - s df/dy, b = df/dy(y1), p = df/dy(y1 + sigma b), so for a
    quadratic f, p - b = sigma A (A y1 - (Bx + b)); x gets (dF/dx + dF/dy)(y1) / lambda + p - b."""
    q, (x, _) = quad(), start()
    pq = Quadratic(q)
    s, sigma, lam = 0.1, 0.05, 2.0
    built = build(quad_program(f"GAFFO(lambda={lam}, sigma={sigma}, lower_step={s})", steps=1,
                               start="start = from(x)"), quad=q, x=x, y=torch.zeros(N, dtype=D))
    y1 = x - s * pq.gy_f(x, x)
    p_minus_b = sigma * q["A"] @ (q["A"] @ y1 - (q["B"] @ x + q["b"]))
    expected = (RHO * x + pq.gy_F(y1)) / lam + p_minus_b
    assert_close(built.hypergradient()["x"], expected)
    built.step()
    assert_close(built.upper["x"], x - UPPER_LR * expected)
    assert_close(built.lower["y"], y1)


def test_gaffo_on_a_task_batch_is_the_mean_of_per_task_directions():
    """GAFFO on few-shot task batches: per task f = mean((sy - c)^2), F = mean((qy - c)^2), from
    c = c0: the batch's direction is the mean over tasks (here f'' = 2, so p - b = 2 sigma b)."""
    source = program(
        data="tasks = sinusoid(tasks=4, shots=5, queries=5)",
        upper="var c0 = 0.5\nobjective = mean((tasks.query_y - c) ** 2)\noptimizer = SGD(lr=0.1)",
        lower="var c = 0.5\nobjective = mean((tasks.support_y - c) ** 2)\noptimizer = SGD(lr=0.2)\nsteps = 1\n"
              "start = from(c0)",
        pipeline="GAFFO(lambda=0.5, sigma=0.1)")
    built = build(source)
    (batch,) = built._data(built.problem.data_used, built.steps_done).values()
    got = built.hypergradient()["c0"]

    sy, qy = batch["support_y"].flatten(1), batch["query_y"].flatten(1)
    y1 = 0.5 + 0.2 * 2 * (sy - 0.5).mean(1)              # lower_step defaults to the inner lr
    b = -2 * (sy - y1[:, None]).mean(1)
    expected = (-2 * (qy - y1[:, None]).mean(1) / 0.5 + 2 * 0.1 * b).mean()
    assert_close(got, expected)


# --- every method: a saved pipeline continues exactly ----------------------------------------------

METHODS = [("VSO(z_loop=2)", ""), ("VFO", ""), ("MESO", "steps1"), ("PGDO", ""),
           ("PGDO(penalty=gradient)", ""), ("ALTO", "steps1"), ("GAFFO", "from"),
           ("DM -> RAD", "steps1"), ("GDA -> DM -> CG", "steps1")]


@pytest.mark.parametrize("pipeline, shape", METHODS)
def test_a_restored_state_continues_exactly(pipeline, shape):
    """Two steps, a state_dict, two more; a fresh pipeline loading that state makes the same two
    steps, auxiliary variables included. Each step changes what the method keeps. y starts near y*,
    inside VSO's barrier."""
    q, (x, y) = quad(), start()
    y = torch.linalg.solve(q["A"], q["B"] @ x + q["b"]) + 0.3 * y
    source = quad_program(pipeline, upper_extra=" + 0.1 * sum(x * y)", steps=1 if shape else STEPS,
                          start="start = from(x)" if shape == "from" else "")
    a = build(source, quad=q, x=x, y=y)
    for _ in range(2):
        a.step()
    saved = a.state_dict()
    after = [a.step() for _ in range(2)]
    b = build(source, quad=q, x=x, y=y)
    b.load_state_dict(saved)
    assert [b.step() for _ in range(2)] == after
    assert torch.equal(a.upper["x"], b.upper["x"]) and torch.equal(a.lower["y"], b.lower["y"])
    for name, tree in a.state_dict()["method"].items():
        assert not torch.equal(tree["y"], saved["method"][name]["y"])       # the state moved
        assert torch.equal(tree["y"], b.state_dict()["method"][name]["y"])


@pytest.mark.parametrize("pipeline, shape", METHODS)
def test_compiled_float32_agrees_with_eager(pipeline, shape):
    """Each method compiled (its own kernels through torch.compile) in float32 takes the same
    two outer steps as eagerly, auxiliary state included, to float32 round-off."""
    q, (x, y) = quad(), start()
    y = torch.linalg.solve(q["A"], q["B"] @ x + q["b"]) + 0.3 * y
    source = quad_program(pipeline, upper_extra=" + 0.1 * sum(x * y)", steps=1 if shape else STEPS,
                          start="start = from(x)" if shape == "from" else "")
    runs = [blodsl.compile(source, bindings=dict(quad=q, x=x, y=y), compile=compiled, dtype="float32", seed=0)
            for compiled in (True, False)]
    for run in runs:
        for _ in range(2):
            run.step()
    compiled, eager = (r.state_dict() for r in runs)
    assert compiled["upper"]["x"].dtype == torch.float32
    for part in ("upper", "lower", "method"):
        torch.testing.assert_close(compiled[part], eager[part], rtol=1e-5, atol=1e-6)


def test_vso_leaving_its_barrier_is_a_located_run_error(tmp_path):
    """With eps tiny and no regulariser, phi + eps - f(x, y) is negative from the start: the run
    stops with exit 1 and a message at the pipeline's line naming eps, not a traceback."""
    from conftest import run_cli
    from helpers import program

    path = tmp_path / "vso.blo"
    path.write_text(program(hypergradient="hypergradient = VSO(eps=1e-6, reg_decay=False, ll_l2_reg=0)"))
    status, _, err = run_cli("run", str(path), "--no-compile", "--no-baseline", "--outer-steps", "2",
                             "--out", str(tmp_path / "run"))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("hypergradient"))
    assert status == 1 and "Traceback" not in err
    assert f"{path}:{line}: error: VSO's log barrier left its domain at outer step 1" in err
    assert "raise VSO's eps (now 1e-06)" in err
