"""Reverse mode through the inner loop: RAD, and IAD (MAML) on its own.

The reverse sweep runs over the chunks of the differentiated part backwards,
taking each chunk's VJP from the state kept at its start; with `checkpoint` it
keeps a state only every `checkpoint` steps and recomputes the chunk starts of
a segment when the sweep reaches it. With FOA there is no sweep: dy_T/dy_0 is
taken as the identity.
"""

from __future__ import annotations

import torch

from .. import trees
from .registry import register
from .trajectory import Forward, Trajectory


class Unrolled(Trajectory):
    """reverse mode through the inner steps"""

    reverse = True

    @classmethod
    def lower(cls, plan, params):
        if plan.core is not None:
            return super().lower(plan, params)
        return plan.with_note(cls.describe(plan, params), method=cls, params=params,
                              checkpoint=params.get("checkpoint") or plan.checkpoint)

    @classmethod
    def describe(cls, plan, params) -> str:
        if plan.foa:
            return "dF/dy_T is handed to the lower level's start (no reverse sweep)"
        return "exact reverse mode through the differentiated inner steps"

    @classmethod
    def unrolled(cls, plan) -> bool:
        return not plan.foa

    @classmethod
    def keeps(cls, plan) -> str:
        if not cls.unrolled(plan):
            return super().keeps(plan)
        if plan.checkpoint:
            return (f"the inner state every {plan.checkpoint} steps; the chunks in between are recomputed "
                    "when the sweep reaches them")
        kept = -(-(plan.steps - plan.truncate) // plan.chunk)
        return f"the inner state at every chunk start ({kept} state{'s' if kept != 1 else ''})"

    def backward(self, ctx, x, d, fw: Forward):
        plan, batch = self.plan, ctx.batch
        if not self.unrolled(plan):
            return fw.xbar, fw.ybar
        c, T = plan.chunk, plan.steps
        ref = trees.leaves(fw.y_T)[0]
        w = batch.mean_weight()
        no_weights = torch.zeros((batch.tasks, c) if batch.tasks else (c,), dtype=ref.dtype, device=ref.device)
        xbar, ybar, sbar = fw.xbar, fw.ybar, trees.zeros_like(fw.s_T)
        segment: dict[int, tuple] = {}
        for t0, n in reversed(fw.sweep.chunks(fw.first, T)):
            if t0 in fw.kept:
                state = fw.kept[t0]
            else:   # checkpointing: recompute the chunk starts of this segment from its kept state
                if t0 not in segment:
                    base = max(t for t in fw.kept if t <= t0)
                    segment.clear()
                    ys = fw.kept[base]
                    for u, m in fw.sweep.chunks(base, min(base + fw.every, T)):
                        segment[u] = ys
                        ys = fw.sweep.advance(*ys, u, m)[:2]
                state = segment[t0]
            weights = no_weights
            if plan.ptt:
                at = t0 + 1 + torch.arange(c, device=ref.device)
                weights = w * (fw.worst.unsqueeze(-1) == at).to(ref.dtype) * (at <= t0 + n)
            dx, ybar, sbar = fw.sweep.vjp(*state, t0, n, weights, ybar, sbar)
            xbar = trees.add(xbar, batch.total(dx))
        if plan.ptt:    # worst steps inside the truncated part: F's direct dependence on x only
            for p in (p for p in fw.positions if p <= fw.first):
                _, gx, _ = ctx.kernels.upper_grads(x, self.state_at(fw, p), d)
                xbar = trees.add(xbar, batch.total(batch.scale(gx, fw.mask[p] * w)))
        # truncation cuts the trajectory off from its start
        return xbar, (ybar if plan.truncate == 0 else trees.zeros_like(ybar))


register("RAD")(Unrolled)


@register("IAD")
def meta_start(plan, params):
    """The lower level starts from an upper model. Alone (MAML), IAD is its own terminal."""
    return plan.with_note("the lower level starts from an upper model, whose gradient takes dF/dy_0 "
                          "(reverse mode through the inner steps unless a terminal follows)",
                          method=Unrolled, params=params, checkpoint=params.get("checkpoint", 0))
