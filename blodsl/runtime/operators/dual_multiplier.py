"""DM: the single-loop dual-multiplier method (one lower step per outer step).

An auxiliary v, kept between outer steps and starting at 0, tracks H_phi^-1 dF/dy.
Every quantity of a step is evaluated at (x_k, y_k) with the old v, as the authors'
code does:
- the direction for x is dF/dx - J_phi^T v;
- v moves along r = H_phi v - dF/dy: a fixed step `v_lr` (DM -> RAD) or the exact
  line-search step |r|^2 / <r, H_phi r> (DM -> CG);
- y takes one plain gradient step on phi at the inner learning rate;
- the upper learning rate is scaled by (k+1)^-tau, or with GDA by
  (k+1)^(-3 tau / 2) mu_k^a, a = 7, 5, 3 for the strategies s1, s2, s3.
phi is f, or with GDA mu_k F + (1 - mu_k) f with mu_k = mu0 (k+1)^(-1/p) (DM's own
schedule replaces GDA's alpha and alpha_decay). Without GDA and with the fixed
step this is deterministic SOBA.
"""

from __future__ import annotations

import torch
from torch.func import grad, vjp

from .. import trees
from ..kernels import Kernel, Objectives
from .implicit import ConjugateGradient
from .method import Context, Method, Outcome, RunError
from .registry import register
from .unrolled import Unrolled

STRATEGY_POWER = {"s1": 7, "s2": 5, "s3": 3}
# what the terminal written after DM says: how v moves
V_STEP = {Unrolled: "fixed", ConjugateGradient: "exact"}


@register("DM")
class DualMultiplier(Method):
    """the single-loop dual-multiplier method"""

    step_setting = "DM.v_lr"

    @classmethod
    def lower(cls, plan, params):
        return plan.with_note(cls.describe(plan, params), method=cls, core=cls, params=params)

    @classmethod
    def describe(cls, plan, params) -> str:
        phi = (f"phi = mu_k F + (1 - mu_k) f, mu_k = {params['mu0']:g} (k+1)^(-1/{params['p']:g}) (GDA's alpha "
               "and alpha_decay are replaced by this schedule)" if plan.gda else "phi = f")
        lr = (f"(k+1)^(-{1.5 * params['tau']:g}) mu_k^{STRATEGY_POWER[params['strategy']]}" if plan.gda
              else f"(k+1)^(-{params['tau']:g})")
        return (f"one plain lower step on phi per outer step ({phi}); x gets dF/dx - J_phi^T v; "
                f"the upper learning rate is scaled by {lr}")

    @classmethod
    def with_terminal(cls, plan, terminal: type, params: dict):
        """The terminal written after DM says how v moves."""
        step = V_STEP[terminal]
        note = (f"v moves a fixed step {plan.params['v_lr']:g} along r = H_phi v - dF/dy" if step == "fixed"
                else "v moves the exact line-search step |r|^2 / <r, H_phi r> along r = H_phi v - dF/dy")
        return plan.with_note(note, params={**plan.params, "v_step": step})

    @classmethod
    def state_names(cls, plan) -> tuple[str, ...]:
        return ("v",)

    @classmethod
    def adaptation(cls, plan) -> tuple[int, float | None]:
        return 1, plan.inner_lr         # one plain step on f per outer step

    def init_state(self, y0) -> dict:
        return {"v": trees.zeros_like(y0)}

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        gda, exact, v_lr, beta = (self.plan.gda is not None, self.params["v_step"] == "exact",
                                  self.params["v_lr"], self.plan.inner_lr)

        def phi(x, y, d, mu):
            return mu * lib.F(x, y, d) + (1 - mu) * lib.f(x, y, d) if gda else lib.f(x, y, d)

        def step(x, y, v, d, mu):
            F, gx_F, gy_F = lib.upper_grads(x, y, d)
            # one pullback of (x, y) -> dphi/dy gives both J^T u and H u for any u
            g_phi, pullback = vjp(lambda x, y: grad(phi, argnums=1)(x, y, d, mu), x, y)
            jv, hv = pullback(v)
            r = trees.sub(hv, gy_F)
            rr = trees.sqnorm(r)
            if exact:
                curvature = trees.dot(r, pullback(r)[1])
                size = torch.where(rr > 0, rr / torch.where(rr > 0, curvature, 1), 0)
            else:
                curvature, size = torch.ones_like(rr), v_lr
            return (trees.sub(gx_F, jv), trees.axpy(-beta, g_phi, y), trees.axpy(-size, r, v), F,
                    lib.f(x, y, d), torch.where(rr > 0, curvature, 1))

        return {"step": Kernel(step, "sttds")}

    def mu(self, k: int) -> float:
        return self.params["mu0"] * (k + 1) ** (-1 / self.params["p"]) if self.plan.gda else 0.0

    def outcome(self, ctx: Context, x, y, state, d, k) -> Outcome:
        ref = trees.leaves(y)[0]
        mu = torch.tensor(self.mu(k), dtype=ref.dtype, device=ref.device)
        dx, y_next, v, F, f, curvature = ctx.kernels.step(x, y, state["v"], d, mu)
        if self.params["v_step"] == "exact" and not curvature.item() > 0:
            raise RunError(f"DM -> CG met a non-positive curvature <r, H r> = {curvature.item():.3g} at outer step "
                           f"{k + 1}: the lower objective is not convex there; use DM -> RAD (a fixed step v_lr)")
        return Outcome(dx, y_next, F, f, state={"v": v})

    def upper_lr_scale(self, k: int) -> float:
        tau = self.params["tau"]
        if self.plan.gda:
            return (k + 1) ** (-1.5 * tau) * self.mu(k) ** STRATEGY_POWER[self.params["strategy"]]
        return (k + 1) ** (-tau)
