"""Terminals that differentiate at the lower solution, not through the trajectory:
CG, NS and NYSTROM (the implicit function theorem), FD and IGA.

Each adds a correction to F's direct gradient, from v = dF/dy at y_T (or at PTT's
worst step). CG and NS solve q ~ H^-1 v inside one compiled kernel that returns
J^T q; the correction is -J^T q.
"""

from __future__ import annotations

import torch

from .. import trees
from ..kernels import Kernel, Objectives
from .method import Batch
from .registry import register
from .solvers import conjugate_gradient, neumann, nystrom
from .trajectory import Forward, Trajectory


class Implicit(Trajectory):
    """Base of the terminals that correct F's direct gradient at the lower solution."""

    def backward(self, ctx, x, d, fw: Forward):
        return trees.add(fw.xbar, self.correction(ctx, x, fw.y_F, d, fw.ybar)), None

    def correction(self, ctx, x, y, d, v):
        raise NotImplementedError


class _SolvedInKernel(Implicit):
    def solve(self, hvp, v):
        raise NotImplementedError

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        def implicit(x, y, d, v):
            return lib.cross(x, y, d, self.solve(lambda u: lib.hvp(x, y, d, u), v))

        return {**super().kernels(lib), "implicit": Kernel(implicit, "stdt")}

    def correction(self, ctx, x, y, d, v):
        return trees.scale(ctx.batch.total(ctx.kernels.implicit(x, y, d, v)), -1.0)


@register("CG")
class ConjugateGradient(_SolvedInKernel):
    """implicit function theorem: q = H^-1 dF/dy by conjugate gradient, dF/dx - J^T q"""

    def solve(self, hvp, v):
        return conjugate_gradient(hvp, v, self.params["k"], self.params["tol"])

    @classmethod
    def describe(cls, plan, params) -> str:
        return (f"implicit function theorem at y_T: q = H^-1 dF/dy by at most {params['k']} conjugate-gradient "
                f"iterations (until the residual is below {params['tol']:g}); dF/dx - J^T q")


@register("NS")
class NeumannSeries(_SolvedInKernel):
    def solve(self, hvp, v):
        return neumann(hvp, v, self.params["k"], self.params["alpha"])

    @classmethod
    def describe(cls, plan, params) -> str:
        return (f"implicit function theorem at y_T: q = a sum_(i<={params['k']}) (I - a H)^i dF/dy, "
                f"a = {params['alpha']:g}; dF/dx - J^T q")


@register("NYSTROM")
class Nystrom(Implicit):
    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        return {**super().kernels(lib), "hvp": Kernel(lib.hvp, "stdt"), "cross": Kernel(lib.cross, "stdt")}

    @classmethod
    def describe(cls, plan, params) -> str:
        return (f"implicit function theorem at y_T: q = (H_k + {params['rho']:g} I)^-1 dF/dy with H_k a rank-"
                f"{params['rank']} Nystrom sketch (columns drawn from the step's seed); dF/dx - J^T q")

    def correction(self, ctx, x, y, d, v):
        k = ctx.kernels
        q = nystrom(lambda u: k.hvp(x, y, d, u), v, self.params["rank"], self.params["rho"],
                    torch.Generator().manual_seed(ctx.seed), ctx.batch.tasks)
        return trees.scale(ctx.batch.total(k.cross(x, y, d, q)), -1.0)


@register("FD")
class FiniteDifference(Implicit):
    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        return {**super().kernels(lib), "lower_grads": Kernel(lib.lower_grads, "std")}

    @classmethod
    def describe(cls, plan, params) -> str:
        return (f"DARTS finite difference: dF/dx - eta (df/dx(y + e v) - df/dx(y - e v)) / 2e, "
                f"e = {params['r']:g} / |v|, v = dF/dy, eta = {plan.inner_lr:g}")

    def correction(self, ctx, x, y, d, v):
        batch: Batch = ctx.batch
        eps = self.params["r"] / torch.sqrt(batch.dot(v, v))
        plus, _ = ctx.kernels.lower_grads(x, trees.add(y, batch.scale(v, eps)), d)
        minus, _ = ctx.kernels.lower_grads(x, trees.sub(y, batch.scale(v, eps)), d)
        return batch.total(batch.scale(trees.sub(plus, minus), -self.plan.inner_lr / (2 * eps)))


@register("IGA")
class ImplicitGradientApproximation(Implicit):
    """implicit gradient approximation: dF/dx - (<v, g> / |g|^2) df/dx, g = df/dy, v = dF/dy"""

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        return {**super().kernels(lib), "lower_grads": Kernel(lib.lower_grads, "std")}

    def correction(self, ctx, x, y, d, v):
        batch: Batch = ctx.batch
        gx_f, gy_f = ctx.kernels.lower_grads(x, y, d)
        return batch.total(batch.scale(gx_f, -batch.dot(v, gy_f) / batch.dot(gy_f, gy_f)))
