"""The stochastic bilevel solvers, each the whole pipeline as the first-order methods are:
SOBA, StocBiO, AmIGO and F2SA. Each moves the lower variables itself by plain gradient
steps, keeps its auxiliary variables between outer steps (in `state_dict()["method"]`) and
hands the upper optimiser a direction for x.

Minibatches: every oracle call reads its data through `ctx.minibatch(i, d)`, the i-th fresh
minibatch of the outer step, or the step's whole data `d` while the run draws none (then each
solver is its full-batch version). One draw holds every dataset, so the lower and upper
oracles of one call read batches of their own data. Which call reads which draw is in each
solver's docstring and its line in the plan.

H is the Hessian of f in y and J^T q = d/dx <df/dy, q>, both of f alone: the lower variables
move by plain gradient steps, so the inner optimiser's weight decay is not part of f here.
Step sizes that change from one outer step to the next reach the kernels as tensors, so they
never cause a recompile.
"""

from __future__ import annotations

import math

from torch.func import grad, grad_and_value, vjp

from .. import trees
from ..kernels import Kernel, Objectives
from .first_order import FirstOrder, _tensor
from .method import Context, Outcome
from .registry import register


UPPER_DECAY = "; the upper learning rate is scaled by 1 / sqrt(k+1)"   # with step_decay, as the plan says it


def decayed(c: float, k: int, on: bool) -> float:
    """The papers' step size at outer step k: c / sqrt(k+1), or c when the decay is off."""
    return c / math.sqrt(k + 1) if on else c


def hessian_product(lib: Objectives, x, y, d, q):
    """H q = d/dy <df/dy, q>"""
    return vjp(lambda y: lib.grad_y_f(x, y, d), y)[1](q)[0]


def cross_product(lib: Objectives, x, y, d, q):
    """J^T q = d/dx <df/dy, q>"""
    return grad(lambda x: trees.dot(lib.grad_y_f(x, y, d), q))(x)


class Stochastic(FirstOrder):
    """Base of the stochastic solvers: StocBiO's and AmIGO's lower loop, T plain steps on f."""

    @classmethod
    def adaptation(cls, plan) -> tuple[int, float | None]:
        return plan.steps, plan.inner_lr

    def lower_sgd(self, lib: Objectives) -> Kernel:
        """One plain gradient step at the inner lr on f: (x, y, d) -> (y', f at y)."""
        beta = self.plan.inner_lr

        def step(x, y, d):
            g, f = grad_and_value(lib.f, argnums=1)(x, y, d)
            return trees.axpy(-beta, g, y), f

        return Kernel(step, "std")

    def lower_loop(self, ctx: Context, x, y, d):
        """T plain steps on f from y (warm), step t on draw t: (y_T, f at the last step's start).
        One call per step, as each step reads its own minibatch."""
        for t in range(self.plan.steps):
            y, f = ctx.kernels.lower_step(x, y, ctx.minibatch(t, d))
        return y, f


@register("SOBA")
class Soba(Stochastic):
    """SOBA: y, v and x take one step each per outer step, all at this step's (x, y, v).
    Draws: 0 for df/dy (the y step), 1 for H v and J^T v, 2 for dF/dx and dF/dy."""

    step_setting = "SOBA.rho"

    state = ("v",)

    @classmethod
    def describe(cls, plan, params) -> str:
        decay = " / sqrt(k+1)" if params["step_decay"] else ""
        upper = UPPER_DECAY if decay else ""
        return (f"SOBA: rho_k = {params['rho']:g}{decay}; y' = y - rho_k df/dy (draw 0); v' = v - rho_k (H v - dF/dy) "
                f"from v = 0 (H v: draw 1, dF/dy: draw 2); x gets dF/dx - J^T v (J^T v: draw 1, dF/dx: draw 2), "
                f"all at this step's x, y, v{upper}")

    @classmethod
    def adaptation(cls, plan) -> tuple[int, float | None]:
        return 1, plan.params["rho"]

    def init_state(self, y0) -> dict:
        return {"v": trees.zeros_like(y0)}

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        def step(x, y, v, d_lower, d_curvature, d_upper, rho):
            g, f = grad_and_value(lib.f, argnums=1)(x, y, d_lower)
            # one pullback of (x, y) -> df/dy gives J^T v and H v
            jv, hv = vjp(lambda x, y: lib.grad_y_f(x, y, d_curvature), x, y)[1](v)
            F, gx_F, gy_F = lib.upper_grads(x, y, d_upper)
            v_next = trees.axpy(-rho, trees.sub(hv, gy_F), v)
            return trees.sub(gx_F, jv), trees.axpy(-rho, g, y), v_next, F, f

        return {"step": Kernel(step, "sttddds")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        rho = _tensor(decayed(self.params["rho"], k, self.params["step_decay"]), y)
        dx, y_next, v, F, f = ctx.kernels.step(x, y, state["v"], *(ctx.minibatch(i, d) for i in range(3)), rho)
        return Outcome(dx, y_next, F, f, state={"v": v})

    def upper_lr_scale(self, k: int) -> float:
        return decayed(1.0, k, self.params["step_decay"])


@register("StocBiO")
class StocBio(Stochastic):
    """StocBiO: T lower SGD steps, then v = eta sum_(q<Q) (I - eta H)^q dF/dy at the new y; x gets
    dF/dx - J^T v. Draws: t for inner step t, T for dF/dx and dF/dy, T+q for the H of the
    Neumann series' q-th factor (q = 1..Q-1), T+Q for J^T v."""

    @classmethod
    def describe(cls, plan, params) -> str:
        T, Q, eta = plan.steps, params["Q"], params["eta"]
        return (f"StocBiO: y takes {T} plain steps at {plan.inner_lr:g} on f (step t on draw t); at the new y, "
                f"dF/dx and dF/dy on draw {T}; v = {eta:g} sum_(q<{Q}) (I - {eta:g} H)^q dF/dy, the q-th factor's "
                f"H on draw {T}+q; x gets dF/dx - J^T v, J^T v on draw {T + Q}")

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        eta = self.params["eta"]

        def neumann_term(x, y, p, total, d):
            """The series' next term (I - eta H) p, and the sum with it."""
            p = trees.axpy(-eta, hessian_product(lib, x, y, d, p), p)
            return p, trees.add(total, p)

        def cross(x, y, q, d):
            return cross_product(lib, x, y, d, q)

        return {"lower_step": self.lower_sgd(lib), "upper_grads": Kernel(lib.upper_grads, "std"),
                "neumann_term": Kernel(neumann_term, "stttd"), "cross": Kernel(cross, "sttd")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        T, Q, kernels = self.plan.steps, self.params["Q"], ctx.kernels
        y, f = self.lower_loop(ctx, x, y, d)
        F, gx_F, gy_F = kernels.upper_grads(x, y, ctx.minibatch(T, d))
        term = v = trees.scale(gy_F, self.params["eta"])
        for q in range(1, Q):
            term, v = kernels.neumann_term(x, y, term, v, ctx.minibatch(T + q, d))
        dx = trees.sub(gx_F, kernels.cross(x, y, v, ctx.minibatch(T + Q, d)))
        return Outcome(dx, y, F, f)


@register("AmIGO")
class Amigo(Stochastic):
    """AmIGO: T warm-started lower SGD steps, then M SGD steps on 1/2 v'Hv - v'dF/dy from the last
    outer step's v; x gets dF/dx - J^T v. Draws: t for inner step t, T+m for v's step m (its H v
    and dF/dy), T+M for dF/dx and J^T v."""

    step_setting = "AmIGO.v_lr"

    state = ("v",)

    @classmethod
    def describe(cls, plan, params) -> str:
        T, M = plan.steps, params["M"]
        return (f"AmIGO: y takes {T} plain steps at {plan.inner_lr:g} on f (step t on draw t); at the new y, v "
                f"(kept between outer steps, from 0) takes {M} steps v - {params['v_lr']:g} (H v - dF/dy) (step m "
                f"on draw {T}+m); x gets dF/dx - J^T v on draw {T + M}")

    def init_state(self, y0) -> dict:
        return {"v": trees.zeros_like(y0)}

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        v_lr = self.params["v_lr"]

        def v_step(x, y, v, d):
            """A gradient step on 1/2 v'Hv - v'dF/dy."""
            gy_F = grad(lib.F, argnums=1)(x, y, d)
            return trees.axpy(-v_lr, trees.sub(hessian_product(lib, x, y, d, v), gy_F), v)

        def direction(x, y, v, d):
            gx_F, F = grad_and_value(lib.F, argnums=0)(x, y, d)
            return trees.sub(gx_F, cross_product(lib, x, y, d, v)), F

        return {"lower_step": self.lower_sgd(lib), "v_step": Kernel(v_step, "sttd"),
                "direction": Kernel(direction, "sttd")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        T, M, kernels = self.plan.steps, self.params["M"], ctx.kernels
        y, f = self.lower_loop(ctx, x, y, d)
        v = state["v"]
        for m in range(M):
            v = kernels.v_step(x, y, v, ctx.minibatch(T + m, d))
        dx, F = kernels.direction(x, y, v, ctx.minibatch(T + M, d))
        return Outcome(dx, y, F, f, state={"v": v})


@register("F2SA")
class F2sa(Stochastic):
    """F2SA: T steps of y on F + lam f and of z on f, then x gets dF/dx + lam (df/dx(y) - df/dx(z))
    at the new y and z; lam rises by delta each outer step. Draws: 2t for y's step t, 2t+1 for
    z's, 2T for the direction (one batch for both df/dx, so their difference stays small)."""

    step_setting = "F2SA.lower_step"

    state = ("z", "lam")

    @classmethod
    def describe(cls, plan, params) -> str:
        T, p = plan.steps, params
        decay = " / sqrt(k+1)" if p["step_decay"] else ""
        upper = UPPER_DECAY if decay else ""
        return (f"F2SA: a_k = {p['lower_step']:g}{decay}, lam_k = {p['lam0']:g} + {p['delta']:g} k (kept); y takes "
                f"{T} steps y - a_k (dF/dy + lam_k df/dy) (step t on draw 2t), z (kept, from y_0) takes {T} steps "
                f"z - a_k df/dy(x, z) (on draw 2t+1); x gets dF/dx + lam_k (df/dx(y) - df/dx(z)) at the new y, z "
                f"on draw {2 * T}{upper}")

    @classmethod
    def adaptation(cls, plan) -> tuple[int, float | None]:
        return plan.steps, plan.params["lower_step"]

    def init_state(self, y0) -> dict:
        # lam is a tensor, so its rise never causes a recompile
        return {"z": trees.clone(y0), "lam": _tensor(self.params["lam0"], y0)}

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        def y_step(x, y, d, lam, a):
            g = grad(lambda y: lib.F(x, y, d) + lam * lib.f(x, y, d))(y)
            return trees.axpy(-a, g, y)

        def z_step(x, z, d, a):
            return trees.axpy(-a, lib.grad_y_f(x, z, d), z)

        def direction(x, y, z, d, lam):
            gx_F, F = grad_and_value(lib.F, argnums=0)(x, y, d)
            gx_f, f = grad_and_value(lib.f, argnums=0)(x, y, d)
            gap = trees.sub(gx_f, grad(lib.f, argnums=0)(x, z, d))
            return trees.axpy(lam, gap, gx_F), F, f

        return {"y_step": Kernel(y_step, "stdss"), "z_step": Kernel(z_step, "stds"),
                "direction": Kernel(direction, "sttds")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        T, kernels, lam, z = self.plan.steps, ctx.kernels, state["lam"], state["z"]
        a = _tensor(decayed(self.params["lower_step"], k, self.params["step_decay"]), y)
        for t in range(T):
            y = kernels.y_step(x, y, ctx.minibatch(2 * t, d), lam, a)
            z = kernels.z_step(x, z, ctx.minibatch(2 * t + 1, d), a)
        dx, F, f = kernels.direction(x, y, z, ctx.minibatch(2 * T, d), lam)
        return Outcome(dx, y, F, f, state={"z": z, "lam": lam + self.params["delta"]})

    def upper_lr_scale(self, k: int) -> float:
        return decayed(1.0, k, self.params["step_decay"])
