"""First-order methods: each is the whole pipeline and owns the outer step. It moves the
lower variables itself (plain gradient steps at the inner learning rate, beta), keeps
its auxiliary variables between outer steps, and hands the upper optimiser a
direction for x: VSO, VFO, MESO, PGDO, ALTO and GAFFO.

Each follows the paper it cites (blodsl's README lists where another library
departs from it). Quantities that change from one outer step to the next (the
schedules) reach the compiled kernels as tensors, so they never cause a recompile.
"""

from __future__ import annotations

import torch
from torch.func import grad, grad_and_value

from .. import trees
from ..kernels import Kernel, Objectives, plain_step
from .method import Context, Method, Outcome, RunError
from .registry import register
from .trajectory import active_masks


def descend(kernel, x, y, s, d, c, steps: int, chunk: int):
    """`steps` steps of a descent kernel (Objectives.descent), a chunk per call."""
    active = active_masks(chunk, trees.leaves(y)[0].device)
    for t0 in range(0, steps, chunk):
        y, s, _ = kernel(x, y, s, d, c, active[min(chunk, steps - t0)])
    return y, s


def _tensor(value: float, like) -> torch.Tensor:
    ref = trees.leaves(like)[0]
    return torch.tensor(value, dtype=ref.dtype, device=ref.device)


class FirstOrder(Method):
    """Base of the single-level methods."""

    @classmethod
    def state_names(cls, plan) -> tuple[str, ...]:
        return cls.state

    state: tuple[str, ...] = ()

    @classmethod
    def adaptation(cls, plan) -> tuple[int, float | None]:
        """One plain gradient step at the inner lr per outer step, as the method moves y."""
        return 1, plan.inner_lr

    def init_state(self, y0) -> dict:
        return {name: trees.clone(y0) for name in self.state}

    def f_descent(self, lib: Objectives, lr: float) -> Kernel:
        """Plain gradient steps at lr on the lower objective: (x, y, state, d, c, active) -> (y, state, f)."""
        return Kernel(lib.descent(lambda x, y, d, c: lib.f(x, y, d), plain_step(lr), self.plan.chunk), "sttdss")


@register("ALTO")
class Alternating(FirstOrder):
    """one lower gradient step y' = y - beta df/dy, then the direct upper gradient dF/dx at y'"""

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        beta = self.plan.inner_lr

        def step(x, y, d):
            gy_f, f = grad_and_value(lib.f, argnums=1)(x, y, d)
            y_next = trees.axpy(-beta, gy_f, y)
            value, gx, _ = lib.upper_grads(x, y_next, d)
            return gx, y_next, value, f

        return {"step": Kernel(step, "std")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        gx, y_next, F, f = ctx.kernels.step(x, y, d)
        return Outcome(gx, y_next, F, f)


@register("VFO")
class ValueFunctionFirstOrder(FirstOrder):
    """BOME: y_hat approximates the lower solution; d = grad F + lam grad q, q = f(x, y) - f(x, y_hat)"""

    @classmethod
    def describe(cls, plan, params) -> str:
        return (f"BOME: y_hat takes {params['y_hat_steps']} gradient steps at {params['y_hat_lr']:g} on f from y; "
                f"q = f(x, y) - f(x, y_hat); d = grad F + lam grad q with lam = relu(({params['u1']:g} q - "
                f"<grad F, grad q>) / |grad q|^2); x gets d_x, y steps y - {plan.inner_lr:g} d_y")

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        u1, beta = self.params["u1"], self.plan.inner_lr

        def step(x, y, y_hat, d):
            (gx_f, gy_f), f = grad_and_value(lib.f, argnums=(0, 1))(x, y, d)
            gx_hat, f_hat = grad_and_value(lib.f, argnums=0)(x, y_hat, d)
            F, gx_F, gy_F = lib.upper_grads(x, y, d)
            q = f - f_hat
            gq_x = trees.sub(gx_f, gx_hat)
            along = trees.dot(gx_F, gq_x) + trees.dot(gy_F, gy_f)
            size = trees.sqnorm(gq_x) + trees.sqnorm(gy_f)
            lam = torch.where(size > 0, torch.relu((u1 * q - along) / torch.where(size > 0, size, 1)), 0)
            dx = trees.axpy(lam, gq_x, gx_F)
            dy = trees.axpy(lam, gy_f, gy_F)
            return dx, trees.axpy(-beta, dy, y), F, f

        return {"descend": self.f_descent(lib, self.params["y_hat_lr"]), "step": Kernel(step, "sttd")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        y_hat, _ = descend(ctx.kernels.descend, x, y, {}, d, _tensor(0.0, y), self.params["y_hat_steps"],
                           self.plan.chunk)
        dx, y_next, F, f = ctx.kernels.step(x, y, y_hat, d)
        return Outcome(dx, y_next, F, f)


@register("MESO")
class MoreauEnvelope(FirstOrder):
    """MEHA: theta tracks the Moreau envelope's minimiser; x gets dF/dx / c_k + df/dx(y) - df/dx(theta)"""

    step_setting = "MESO.eta"

    state = ("theta",)

    @classmethod
    def describe(cls, plan, params) -> str:
        p = params
        return (f"MEHA: theta' = theta - {p['eta']:g} (df/dy(x, theta) + {p['gamma_1']:g} (theta - y)); x gets "
                f"dF/dx / c_k + df/dx(x, y) - df/dx(x, theta'), c_k = {p['c0']:g} (k+1)^0.25; then y steps "
                f"y - {plan.inner_lr:g} (dF/dy / c_k + df/dy - {p['gamma_1']:g} (y - theta')) at the new x")

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        eta, gamma, beta = self.params["eta"], self.params["gamma_1"], self.plan.inner_lr

        def direction(x, y, theta, d, c):
            g_theta = lib.grad_y_f(x, theta, d)
            theta = trees.sub(theta, trees.scale(trees.axpy(gamma, trees.sub(theta, y), g_theta), eta))
            F, gx_F, _ = lib.upper_grads(x, y, d)
            gx_f, f = grad_and_value(lib.f, argnums=0)(x, y, d)
            gx_theta = grad(lib.f, argnums=0)(x, theta, d)
            return trees.add(trees.scale(gx_F, 1 / c), trees.sub(gx_f, gx_theta)), theta, F, f

        def lower_step(x, y, theta, d, c):
            _, _, gy_F = lib.upper_grads(x, y, d)
            gy_f = lib.grad_y_f(x, y, d)
            g = trees.add(trees.scale(gy_F, 1 / c), trees.axpy(-gamma, trees.sub(y, theta), gy_f))
            return trees.axpy(-beta, g, y)

        return {"direction": Kernel(direction, "sttds"), "lower_step": Kernel(lower_step, "sttds")}

    def c(self, k: int, like) -> torch.Tensor:
        return _tensor(self.params["c0"] * (k + 1) ** 0.25, like)

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        dx, theta, F, f = ctx.kernels.direction(x, y, state["theta"], d, self.c(k, y))
        return Outcome(dx, y, F, f, state={"theta": theta})

    def after_upper_step(self, ctx: Context, x, outcome: Outcome, d, k: int) -> dict:
        return ctx.kernels.lower_step(x, outcome.lower, outcome.state["theta"], d, self.c(k, outcome.lower))


@register("PGDO")
class PenaltyGradientDescent(FirstOrder):
    """penalty-based bilevel gradient descent on l (F + gamma_k p), p the lower level's optimality gap"""

    step_setting = "PGDO.y_hat_lr"

    state = ("y_hat",)

    @classmethod
    def describe(cls, plan, params) -> str:
        p = params
        penalty = ("(f(x, y) - f(x, y_hat))" if p["penalty"] == "difference"
                   else "|df/dy(x, y)|^2 / 2 (differentiated through df/dy)")
        return (f"penalty method: y_hat takes {plan.steps} gradient steps at {p['y_hat_lr']:g} on f (kept between "
                f"outer steps); L = l (F + gamma_k {penalty}), gamma_k rising from {p['gamma_init']:g} to "
                f"{p['gamma_max']:g} over {p['gamma_argmax_step']} outer steps, l = min(1/gamma_k, 1); x gets dL/dx, "
                f"y steps y - {plan.inner_lr:g} dL/dy")

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        beta, difference = self.plan.inner_lr, self.params["penalty"] == "difference"

        def penalised(x, y, y_hat, d, gamma, scale):
            F = lib.F(x, y, d)
            if difference:
                gap = lib.f(x, y, d) - lib.f(x, y_hat, d)
            else:
                gap = 0.5 * trees.sqnorm(lib.grad_y_f(x, y, d))
            return scale * (F + gamma * gap), F

        def step(x, y, y_hat, d, gamma, scale):
            (gx, gy), F = grad(penalised, argnums=(0, 1), has_aux=True)(x, y, y_hat, d, gamma, scale)
            return gx, trees.axpy(-beta, gy, y), F, lib.f(x, y, d)

        return {"descend": self.f_descent(lib, self.params["y_hat_lr"]), "step": Kernel(step, "sttdss")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        p = self.params
        gamma = p["gamma_init"] + min(k / p["gamma_argmax_step"], 1.0) * (p["gamma_max"] - p["gamma_init"])
        scale = min(1 / gamma, 1.0) if gamma > 0 else 1.0
        y_hat, _ = descend(ctx.kernels.descend, x, state["y_hat"], {}, d, _tensor(0.0, y), self.plan.steps,
                           self.plan.chunk)
        gx, y_next, F, f = ctx.kernels.step(x, y, y_hat, d, _tensor(gamma, y), _tensor(scale, y))
        return Outcome(gx, y_next, F, f, state={"y_hat": y_hat})


@register("VSO")
class ValueFunctionSequential(FirstOrder):
    """BVFSM: z tracks the regularised lower solution; y descends F under a log barrier on f"""

    step_setting = "VSO.z_lr"

    state = ("z",)
    adaptation = Method.adaptation      # the lower optimiser's steps, as z takes them

    @classmethod
    def describe(cls, plan, params) -> str:
        p = params
        decay = " / (k+1)" if p["reg_decay"] else ""
        eps = "the number of lower-level parameters" if p.get("eps") is None else f"{p['eps']:g}"
        return (f"BVFSM: z takes {p['z_loop']} lower-optimiser steps on f + mu |z|^2 (z kept between outer steps), "
                f"phi = f(x, z) + mu |z|^2; y takes {plan.steps} gradient steps at {p['z_lr']:g} on F - sigma "
                f"ln(phi + eps - f) + theta |y|^2; x gets dF/dx - sigma (df/dx(z) - df/dx(y)) / (phi + eps - f); "
                f"(mu, theta, sigma) = ({p['ll_l2_reg']:g}, {p['ul_l2_reg']:g}, {p['ul_ln_reg']:g}){decay}; eps = {eps}")

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        def regularised(x, z, d, c):            # c = [mu]
            return lib.f(x, z, d) + c[0] * trees.sqnorm(z)

        def barrier(x, y, d, c):                # c = [sigma, phi + eps, theta]
            return lib.F(x, y, d) - c[0] * torch.log(c[1] - lib.f(x, y, d)) + c[2] * trees.sqnorm(y)

        def value_function(x, z, d, c):
            gx, f = grad_and_value(lib.f, argnums=0)(x, z, d)
            return f + c[0] * trees.sqnorm(z), gx

        def direction(x, y, d, gx_z, c):        # c = [sigma, phi + eps]
            F, gx_F, _ = lib.upper_grads(x, y, d)
            gx_f, f = grad_and_value(lib.f, argnums=0)(x, y, d)
            room = c[1] - f
            return trees.axpy(-c[0] / room, trees.sub(gx_z, gx_f), gx_F), F, f, room

        def inner_update(z, s, g):
            return lib.optimizer.update(z, s, g)

        return {"descend_z": Kernel(lib.descent(regularised, inner_update, self.plan.chunk), "sttdss"),
                "value_function": Kernel(value_function, "stds"),
                "descend_y": Kernel(lib.descent(barrier, plain_step(self.params["z_lr"]), self.plan.chunk), "sttdss"),
                "direction": Kernel(direction, "stdss")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        p, kernels = self.params, ctx.kernels
        scale = 1.0 / (k + 1) if p["reg_decay"] else 1.0
        mu, theta, sigma = p["ll_l2_reg"] * scale, p["ul_l2_reg"] * scale, p["ul_ln_reg"] * scale
        eps = ctx.lower_size if p.get("eps") is None else p["eps"]
        z = state["z"]
        z, _ = descend(kernels.descend_z, x, z, ctx.optimizer.init(z), d, _tensor([mu], y), p["z_loop"],
                       self.plan.chunk)
        phi, gx_z = kernels.value_function(x, z, d, _tensor([mu], y))
        room = phi + eps
        y, _ = descend(kernels.descend_y, x, y, {}, d, torch.stack([_tensor(sigma, y), room, _tensor(theta, y)]),
                       self.plan.steps, self.plan.chunk)
        dx, F, f, gap = kernels.direction(x, y, d, gx_z, torch.stack([_tensor(sigma, y), room]))
        if not gap.item() > 0:
            raise RunError(f"VSO's log barrier left its domain at outer step {k + 1}: phi + eps - f(x, y) = "
                           f"{gap.item():.3g} is not positive; raise VSO's eps (now {eps:g}) or lower z_lr")
        return Outcome(dx, y, F, f, state={"z": z})


@register("GAFFO")
class GapFunctionFirstOrder(FirstOrder):
    """regularised gap function: y = x; y1 = y - s df/dy; x gets dF/dy(y1) / lambda + df/dy(y1 + sigma b) - b"""

    @classmethod
    def describe(cls, plan, params) -> str:
        p = params
        return (f"regularised gap function: from y = x, y1 = y - {p['lower_step']:g} df/dy; b = df/dy(y1), "
                f"p = df/dy(y1 + {p['sigma']:g} b); x gets dF(y1) / {p['lambda']:g} + (p - b), the first-order "
                f"gradient of F / lambda + sigma/2 |df/dy|^2 at y1")

    @classmethod
    def adaptation(cls, plan) -> tuple[int, float | None]:
        return 1, plan.params["lower_step"]

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        s, sigma, lam = self.params["lower_step"], self.params["sigma"], self.params["lambda"]

        def step(x, y, d):
            g, f = grad_and_value(lib.f, argnums=1)(x, y, d)
            y1 = trees.axpy(-s, g, y)
            b = lib.grad_y_f(x, y1, d)
            p = lib.grad_y_f(x, trees.axpy(sigma, b, y1), d)
            F, gx_F, gy_F = lib.upper_grads(x, y1, d)
            through_y = trees.add(trees.scale(gy_F, 1 / lam), trees.sub(p, b))
            return trees.scale(gx_F, 1 / lam), through_y, y1, F, f

        return {"step": Kernel(step, "std")}

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        batch = ctx.batch
        gx, through_y, y1, F, f = ctx.kernels.step(x, y, d)
        w = batch.mean_weight()
        # the lower level starts at the upper one, so the trainer adds dF/dy0 to it (a mean over tasks)
        return Outcome(batch.total(trees.scale(gx, w)), y1, F.mean(), f.mean(), start_grad=trees.scale(through_y, w))
