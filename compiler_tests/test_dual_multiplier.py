"""DM against its definition, on the quadratic bilevel problem, in float64.

f = 1/2 y'Ay - y'(Bx + b), F = 1/2 |y - c|^2 + rho/2 |x|^2, so y* = A^-1 (Bx + b) and the
exact hypergradient is rho x + B' A^-1 (y* - c). Every expected value is computed here from
the formulas (phi, r, the v step, the upper learning-rate schedule), never by blodsl.
"""

import pytest
import torch

from oracles import D, assert_close, build, program, randn, spd

N, RHO, BETA, UPPER_LR = 3, 0.3, 0.2, 0.1


def quad() -> dict:
    return {"A": spd([1.0, 2.0, 3.0], seed=50), "B": randn(N, N, seed=51), "b": randn(N, seed=52),
            "c": randn(N, seed=53)}


def dm_program(pipeline: str) -> str:
    return program(
        data='quad = input(fields=["A", "B", "b", "c"])',
        upper=f"var x = input()\nobjective = 0.5 * sqdist(y, quad.c) + {RHO / 2} * sqnorm(x)\n"
              f"optimizer = SGD(lr={UPPER_LR})",
        lower=f"var y = input()\nobjective = 0.5 * sum(y * (quad.A @ y)) - sum(y * (quad.B @ x + quad.b))\n"
              f"optimizer = SGD(lr={BETA})\nsteps = 1",
        pipeline=pipeline)


def reference_step(q, x, y, v, k, *, gda, exact, v_lr=0.3, tau=0.2, mu0=0.6, p=3.0, power=5):
    """(upper learning rate, direction, y', v') of DM's outer step k, from its definition."""
    A, B, b, c = q["A"], q["B"], q["b"], q["c"]
    mu = mu0 * (k + 1) ** (-1 / p) if gda else 0.0
    H = mu * torch.eye(N, dtype=D) + (1 - mu) * A          # Hessian of phi = mu F + (1 - mu) f in y
    grad_phi = mu * (y - c) + (1 - mu) * (A @ y - B @ x - b)
    direction = RHO * x + (1 - mu) * B.T @ v                 # dF/dx - d/dx <dphi/dy, v>
    r = H @ v - (y - c)
    size = (r @ r) / (r @ H @ r) if exact else v_lr
    lr = UPPER_LR * ((k + 1) ** (-1.5 * tau) * mu ** power if gda else (k + 1) ** (-tau))
    return lr, direction, y - BETA * grad_phi, v - size * r


VARIANTS = [("DM(v_lr=0.3, tau=0.2) -> RAD", False, False, None),
            ("DM(tau=0.2) -> CG", False, True, None),
            ("GDA -> DM(v_lr=0.3, tau=0.2, mu0=0.6, p=3, strategy=s1) -> RAD", True, False, 7),
            ("GDA -> DM(v_lr=0.3, tau=0.2, mu0=0.6, p=3, strategy=s2) -> RAD", True, False, 5),
            ("GDA -> DM(tau=0.2, mu0=0.6, p=3, strategy=s2) -> CG", True, True, 5),
            ("GDA -> DM(tau=0.2, mu0=0.6, p=3, strategy=s3) -> CG", True, True, 3)]


@pytest.mark.parametrize("pipeline, gda, exact, power", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_three_outer_steps_follow_the_definition(pipeline, gda, exact, power):
    """From v = 0: the first direction is dF/dx and v_1 is a step along y - c; then the schedules
    (the upper lr's decay, GDA's mu_k) and the v steps of the next two outer steps."""
    q = quad()
    x, y = randn(N, seed=54), randn(N, seed=55)
    built = build(dm_program(pipeline), quad=q, x=x, y=y)
    v = torch.zeros(N, dtype=D)
    for k in range(3):
        lr, direction, y_next, v_next = reference_step(q, x, y, v, k, gda=gda, exact=exact, power=power)
        if k == 0:     # the reference's first step is the documented one
            e, mu = y - q["c"], 0.6 if gda else 0.0
            H = mu * torch.eye(N, dtype=D) + (1 - mu) * q["A"]
            assert_close(direction, RHO * x)
            assert_close(v_next, (e @ e / (e @ H @ e) if exact else 0.3) * e)
        assert_close(built.hypergradient()["x"], direction)
        built.step()
        x, y, v = x - lr * direction, y_next, v_next
        assert_close(built.upper["x"], x)
        assert_close(built.lower["y"], y)
        assert_close(built.state_dict()["method"]["v"]["y"], v)


@pytest.mark.parametrize("pipeline", ["DM -> RAD", "DM -> CG"])
def test_the_fixed_point_stays_put_and_gives_the_exact_hypergradient(pipeline):
    """At y = y*, v = A^-1 (y* - c) neither y nor v moves, and the direction for x is the exact
    hypergradient rho x + B' A^-1 (y* - c)."""
    q = quad()
    x = randn(N, seed=56)
    y_star = torch.linalg.solve(q["A"], q["B"] @ x + q["b"])
    v_star = torch.linalg.solve(q["A"], y_star - q["c"])
    built = build(dm_program(pipeline), quad=q, x=x, y=y_star)
    state = built.state_dict()
    state["method"]["v"]["y"] = v_star
    built.load_state_dict(state)

    assert_close(built.hypergradient()["x"], RHO * x + q["B"].T @ v_star)
    built.step()
    assert_close(built.lower["y"], y_star, rtol=1e-12)
    assert_close(built.state_dict()["method"]["v"]["y"], v_star, rtol=1e-12)


def test_a_non_positive_curvature_is_a_run_error():
    """DM -> CG divides by <r, H r>: on a concave lower objective that is a located run error."""
    from blodsl.runtime.operators import RunError

    q = {**quad(), "A": -spd([1.0, 2.0, 3.0], seed=50)}
    built = build(dm_program("DM -> CG"), quad=q, x=randn(N, seed=54), y=randn(N, seed=55))
    with pytest.raises(RunError, match="non-positive curvature"):
        built.step()
