"""The stochastic solvers (SOBA, StocBiO, AmIGO, F2SA) against their definitions, in float64,
on a quadratic bilevel problem:

f = 1/2 y'Ay - y'(Bx + b), F = 1/2 |y - c|^2 + rho/2 |x|^2 + e <x, y>,

so df/dy = Ay - Bx - b, H = A, df/dx = -B'y, J^T q = -B'q, dF/dx = rho x + e y and
dF/dy = y - c + e x. Each expected value is computed here from these formulas, never by
blodsl. Every oracle takes its data from a draw: the full-batch runs give every draw the same
data; `per_draw` hands each draw its own (A, B, b, c), which pins which oracle reads which.
"""

import dataclasses
import math

import pytest
import torch

import blodsl
from blodsl.runtime import trees
from helpers import BASE, check_text, errors_of
from helpers import program as base_program
from oracles import D, assert_close, build, randn, spd
from test_first_order_methods import BETA, N, RHO, UPPER_LR, Quadratic
from test_first_order_methods import quad_program as first_order_program

E, STEPS = 0.1, 3


def quad(draw: int = 0) -> dict:
    """The problem's data; draw i > 0 moves every field, so each draw is told apart."""
    s = 0.1 * draw
    return {"A": spd([1.0, 2.0, 3.0], seed=70) + s * torch.eye(N, dtype=D), "B": randn(N, N, seed=71) * (1 + s),
            "b": randn(N, seed=72) + s, "c": randn(N, seed=73) - s}


def quad_program(pipeline: str, steps: int = STEPS) -> str:
    return first_order_program(pipeline, upper_extra=f" + {E} * sum(x * y)", steps=steps)


class Oracles(Quadratic):
    """The problem's derivatives on one draw's data, written out (dF/dy of x and y: F has an <x, y> term)."""

    def hvp(self, q):
        return self.A @ q

    def cross(self, q):
        return -self.B.T @ q

    def gx_F(self, x, y):
        return RHO * x + E * y

    def gy_F(self, x, y):
        return y - self.c + E * x


def full_batch(i: int) -> Oracles:
    return Oracles(quad())


def per_draw(i: int) -> Oracles:
    return Oracles(quad(i + 1))


def built(pipeline: str, x, y, steps: int = STEPS, draws: bool = False):
    """The pipeline, built eagerly in float64; with `draws`, oracle call i reads per_draw(i)'s data."""
    run = build(quad_program(pipeline, steps), quad=quad(), x=x, y=y)
    if draws:
        context = run._context
        run._context = lambda: dataclasses.replace(context(), draw=lambda i: {"quad": quad(i + 1)})
    return run


def start(seed=74):
    return randn(N, seed=seed), randn(N, seed=seed + 1)


# --- the references: one outer step each, from the definitions ------------------------------------

def soba(at, x, y, v, k, rho, decay=True):
    """(direction, y', v', upper lr factor): y on draw 0, H v and J^T v on draw 1, dF on draw 2."""
    rho_k = rho / math.sqrt(k + 1) if decay else rho
    lower, curvature, upper = at(0), at(1), at(2)
    direction = upper.gx_F(x, y) - curvature.cross(v)
    v_next = v - rho_k * (curvature.hvp(v) - upper.gy_F(x, y))
    return direction, y - rho_k * lower.gy_f(x, y), v_next, (1 / math.sqrt(k + 1) if decay else 1.0)


def lower_sgd(at, x, y, T):
    """T plain steps at the inner lr, step t on draw t."""
    for t in range(T):
        y = y - BETA * at(t).gy_f(x, y)
    return y


def stocbio(at, x, y, T, Q, eta):
    """(direction, y_T, v): v = eta sum_(q<Q) prod_(j<=q) (I - eta H_(T+j)) dF/dy(draw T)."""
    y = lower_sgd(at, x, y, T)
    term = eta * at(T).gy_F(x, y)
    v = term
    for q in range(1, Q):
        term = term - eta * at(T + q).hvp(term)
        v = v + term
    return at(T).gx_F(x, y) - at(T + Q).cross(v), y, v


def amigo(at, x, y, v, T, M, v_lr):
    """(direction, y_T, v'): v's step m reads draw T+m, the direction draw T+M."""
    y = lower_sgd(at, x, y, T)
    for m in range(M):
        v = v - v_lr * (at(T + m).hvp(v) - at(T + m).gy_F(x, y))
    return at(T + M).gx_F(x, y) - at(T + M).cross(v), y, v


def f2sa(at, x, y, z, lam, k, T, a, decay=True):
    """(direction, y', z'): y's step t on draw 2t, z's on 2t+1, the direction on draw 2T."""
    a_k = a / math.sqrt(k + 1) if decay else a
    for t in range(T):
        y = y - a_k * (at(2 * t).gy_F(x, y) + lam * at(2 * t).gy_f(x, y))
        z = z - a_k * at(2 * t + 1).gy_f(x, z)
    o = at(2 * T)
    return o.gx_F(x, y) + lam * (o.gx_f(x, y) - o.gx_f(x, z)), y, z


# --- two outer steps of each against its reference ----------------------------------------------

def outer_step(run, x, direction, lr, y_next, state: dict):
    """Checks one outer step of `run` from upper x against the expected direction, upper lr, lower
    variables and auxiliary state; returns the upper variables after it."""
    assert_close(run.hypergradient()["x"], direction)
    run.step()
    x = x - lr * direction
    assert_close(run.upper["x"], x)
    assert_close(run.lower["y"], y_next)
    for name, value in state.items():
        saved = run.state_dict()["method"][name]
        assert_close(saved["y"] if isinstance(saved, dict) else saved, value)
    return x


@pytest.mark.parametrize("draws", [False, True], ids=["full batch", "a draw per oracle"])
@pytest.mark.parametrize("decay", [True, False])
def test_soba_two_outer_steps(draws, decay):
    """SOBA: y, v (from 0) and x step together at this step's (x, y, v), rho_k = rho / sqrt(k+1)
    and the upper lr scaled by 1 / sqrt(k+1) (or both constant)."""
    (x, y), rho, at = start(), 0.15, per_draw if draws else full_batch
    run = built(f"SOBA(rho={rho}, step_decay={decay})", x, y, steps=1, draws=draws)
    v = torch.zeros(N, dtype=D)
    for k in range(2):
        direction, y_next, v_next, factor = soba(at, x, y, v, k, rho, decay)
        if k == 0:
            assert_close(direction, at(2).gx_F(x, y))            # v starts at 0
        x = outer_step(run, x, direction, UPPER_LR * factor, y_next, {"v": v_next})
        y, v = y_next, v_next


@pytest.mark.parametrize("draws", [False, True], ids=["full batch", "a draw per oracle"])
def test_stocbio_two_outer_steps(draws):
    """StocBiO: T lower SGD steps (warm), then the Q-term Neumann series at the new y."""
    (x, y), at = start(), per_draw if draws else full_batch
    run = built("StocBiO(Q=4, eta=0.25)", x, y, draws=draws)
    for _ in range(2):
        direction, y_next, _ = stocbio(at, x, y, STEPS, 4, 0.25)
        x = outer_step(run, x, direction, UPPER_LR, y_next, {})
        y = y_next


def test_stocbios_neumann_series_reaches_the_implicit_hypergradient():
    """With many terms v -> H^-1 dF/dy, so the direction is the implicit hypergradient at y_T."""
    (x, y), q = start(), quad()
    run = built("StocBiO(Q=400, eta=0.25)", x, y)
    y_T = lower_sgd(full_batch, x, y, STEPS)
    o = Oracles(q)
    exact = o.gx_F(x, y_T) - o.cross(torch.linalg.solve(q["A"], o.gy_F(x, y_T)))
    assert_close(run.hypergradient()["x"], exact)


@pytest.mark.parametrize("draws", [False, True], ids=["full batch", "a draw per oracle"])
def test_amigo_two_outer_steps(draws):
    """AmIGO: T warm lower SGD steps; v (from 0, then kept) takes M SGD steps on the linear system."""
    (x, y), at = start(), per_draw if draws else full_batch
    run = built("AmIGO(M=2, v_lr=0.3)", x, y, draws=draws)
    v = torch.zeros(N, dtype=D)
    for _ in range(2):
        direction, y_next, v_next = amigo(at, x, y, v, STEPS, 2, 0.3)
        x = outer_step(run, x, direction, UPPER_LR, y_next, {"v": v_next})
        y, v = y_next, v_next


def test_amigo_and_soba_stay_at_the_fixed_point_with_the_exact_hypergradient():
    """At y = y*, v = A^-1 dF/dy(x, y*) neither y nor v moves, and the direction is the exact
    hypergradient dF/dx + B' A^-1 dF/dy."""
    q, (x, _) = quad(), start()
    o = Oracles(q)
    y_star = torch.linalg.solve(q["A"], q["B"] @ x + q["b"])
    v_star = torch.linalg.solve(q["A"], o.gy_F(x, y_star))
    for pipeline, steps in (("AmIGO", STEPS), ("SOBA", 1)):
        run = built(pipeline, x, y_star, steps=steps)
        state = run.state_dict()
        state["method"]["v"]["y"] = v_star
        run.load_state_dict(state)
        assert_close(run.hypergradient()["x"], o.gx_F(x, y_star) + q["B"].T @ v_star)
        run.step()
        assert_close(run.lower["y"], y_star, rtol=1e-12)
        assert_close(run.state_dict()["method"]["v"]["y"], v_star, rtol=1e-12)


@pytest.mark.parametrize("draws", [False, True], ids=["full batch", "a draw per oracle"])
@pytest.mark.parametrize("decay", [True, False])
def test_f2sa_two_outer_steps(draws, decay):
    """F2SA: y descends F + lam_k f and z (from y_0) descends f, T steps each at a_k; x gets
    dF/dx + lam_k (df/dx(y) - df/dx(z)) at the new y, z; lam_k = lam0 + k delta."""
    (x, y), at = start(), per_draw if draws else full_batch
    a, lam0, delta = 0.1, 2.0, 0.5
    run = built(f"F2SA(lam0={lam0}, delta={delta}, lower_step={a}, step_decay={decay})", x, y, draws=draws)
    z = y.clone()
    for k in range(2):
        lam = lam0 + k * delta
        direction, y_next, z_next = f2sa(at, x, y, z, lam, k, STEPS, a, decay)
        lr = UPPER_LR / math.sqrt(k + 1) if decay else UPPER_LR
        state = {"z": z_next, "lam": torch.tensor(lam + delta, dtype=D)}
        x = outer_step(run, x, direction, lr, y_next, state)
        y, z = y_next, z_next


# --- the auxiliary state survives a state_dict ---------------------------------------------------

SOLVERS = [("SOBA", 1), ("StocBiO(Q=3)", STEPS), ("AmIGO(M=2)", STEPS), ("F2SA(delta=0.1)", STEPS)]


@pytest.mark.parametrize("pipeline, steps", SOLVERS)
def test_a_restored_state_continues_exactly(pipeline, steps):
    """Two steps, a state_dict, two more; a fresh pipeline loading that state makes the same two
    steps, auxiliary variables included (F2SA's lam is a 0-dim tensor)."""
    (x, y) = start()
    a = built(pipeline, x, y, steps=steps)
    for _ in range(2):
        a.step()
    saved = a.state_dict()
    after = [a.step() for _ in range(2)]
    b = built(pipeline, x, y, steps=steps)
    b.load_state_dict(saved)
    assert [b.step() for _ in range(2)] == after
    assert torch.equal(a.upper["x"], b.upper["x"]) and torch.equal(a.lower["y"], b.lower["y"])
    first, resumed = a.state_dict()["method"], b.state_dict()["method"]
    assert set(first) == set(type(a.method).state)
    for name in first:
        now, again, before = (trees.leaves(state[name]) for state in (first, resumed, saved["method"]))
        assert all(torch.equal(u, w) for u, w in zip(now, again))
        assert not all(torch.equal(u, w) for u, w in zip(now, before))      # the state moved


# --- the checker ------------------------------------------------------------------------------------

DEFAULTS = {
    "SOBA": {"rho": 0.5, "step_decay": True},                       # rho: the inner lr
    "StocBiO": {"Q": 10, "eta": 0.5},                                # eta: the inner lr
    "AmIGO": {"M": 20, "v_lr": 0.5},                                 # M: the lower steps; v_lr: the inner lr
    "F2SA": {"lam0": 1.0, "delta": 0.01, "lower_step": 0.5, "step_decay": True},
}


@pytest.mark.parametrize("name", DEFAULTS)
def test_each_solver_alone_checks_with_its_defaults(name):
    checked = check_text(base_program(hypergradient=f"hypergradient = {name}")).program.hypergradient
    (op,) = checked.operators
    assert (op.name, op.params) == (name, DEFAULTS[name])


@pytest.mark.parametrize("name", DEFAULTS)
def test_each_solver_is_the_whole_pipeline(name):
    for pipeline, other in ((f"{name} -> RAD", "RAD"), (f"PTT -> {name}", "PTT")):
        errors = errors_of(base_program(hypergradient=f"hypergradient = {pipeline}"))
        assert errors == [f"{name} is a first-order method and is the whole pipeline; {other} cannot be combined "
                          "with it"]


def test_soba_warns_that_steps_has_no_effect_and_the_others_read_steps():
    warned = [d.message for d in check_text(base_program(hypergradient="hypergradient = SOBA")).warnings]
    assert "SOBA takes one lower step per outer step: `steps = 20` has no effect" in warned
    for name in ("StocBiO", "AmIGO", "F2SA"):
        assert check_text(base_program(hypergradient=f"hypergradient = {name}")).warnings == []


def test_bad_parameter_values_are_refused():
    errors = errors_of(base_program(hypergradient="hypergradient = StocBiO(Q=0, eta=-1)"))
    assert any("Q" in e and "an integer >= 1" in e for e in errors), errors
    assert any("eta" in e and "a number > 0" in e for e in errors), errors


# --- programs like the examples run ------------------------------------------------------------------

@pytest.mark.parametrize("name", DEFAULTS)
def test_hyper_cleaning_runs_three_finite_steps(name):
    """The hyper-cleaning example with each solver: three outer steps (float32, eager), every
    value finite, the plan naming each draw."""
    text = base_program(BASE.replace("label_noise=0.4", "label_noise=0.4, seed=0"),
                        hypergradient=f"hypergradient = {name}", steps="steps = 1" if name == "SOBA" else "steps = 3")
    run = blodsl.compile(text, compile=False, seed=0)
    assert "draw" in str(run.plan)
    records = [run.step() for _ in range(3)]
    assert all(math.isfinite(r[key]) for r in records for key in ("upper_objective", "lower_objective",
                                                                   "hypergradient_norm"))
    state = run.state_dict()
    leaves = trees.leaves([state["upper"], state["lower"], state["method"]])
    assert all(torch.isfinite(t).all() for t in leaves)


def test_the_context_reads_the_whole_data_without_draws():
    from blodsl.runtime.operators import Context

    whole = {"quad": quad()}
    ctx = Context(kernels=None, optimizer=None, batch=None)
    assert ctx.minibatch(3, whole) is whole
    drawn = dataclasses.replace(ctx, draw=lambda i: {"quad": quad(i)})
    assert torch.equal(drawn.minibatch(2, whole)["quad"]["b"], quad(2)["b"])
