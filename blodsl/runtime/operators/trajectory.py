"""The inner trajectory: T steps of the lower optimiser from y0, and the operators that
shape it (NGD, GDA, DI, PTT, FOA, RGT).

The loop runs in compiled chunks of `plan.chunk` steps: one call advances the lower
level a chunk, and (for the unrolled methods) one call takes the VJP of a chunk,
recomputing its steps from the state at its start. A cold compile then costs the
same for 10 inner steps as for 1000, and the reverse sweep keeps only the states at
chunk starts. Steps of a chunk past the end of the loop are switched off.

`Trajectory` is the base of the methods that differentiate at the end of this loop
(or at PTT's worst step): the unrolled ones (unrolled.py) and the implicit ones
(implicit.py). With task batches every per-task quantity carries a leading task
dimension: the upper objective is the mean over tasks, so cotangents are scaled by
1/B and per-task upper gradients summed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.func import grad, vjp, vmap

from .. import trees
from ..kernels import Kernel, Objectives, masked
from ..minibatch import at_step, with_steps
from .method import Context, Method, Outcome
from .registry import Plan, register

# --- the modifiers: each adds to the plan what it means --------------------------------------


@register("NGD")
def plain_dynamics(plan: Plan, params: dict) -> Plan:
    return plan.with_note(f"inner loop: {plan.steps} step{'s' if plan.steps != 1 else ''} of the lower "
                          "optimiser on the lower objective")


@register("GDA")
def aggregated_descent(plan: Plan, params: dict) -> Plan:
    alpha, decay = params["alpha"], params["alpha_decay"]
    return plan.with_note(f"each inner step t descends a_t F + (1 - a_t) f, a_t = {alpha:g} * {decay:g}^t",
                          gda=(alpha, decay))


@register("DI")
def learned_start(plan: Plan, params: dict) -> Plan:
    return plan.with_note(f"the lower level's start is learned too, by the upper optimiser's type at "
                          f"lr={params['lr']:g}", learned_start_lr=params["lr"])


@register("PTT")
def worst_step(plan: Plan, params: dict) -> Plan:
    return plan.with_note("differentiates F at each task's worst step k* = argmax_t F(x, y_t)", ptt=True)


@register("FOA")
def first_order_start(plan: Plan, params: dict) -> Plan:
    return plan.with_note("first-order: dy_T/dy_0 is taken as the identity", foa=True)


@register("RGT")
def truncated(plan: Plan, params: dict) -> Plan:
    k = params["truncate"]
    return plan.with_note(f"the first {k} inner steps run without a graph; the last {plan.steps - k} are "
                          "differentiated", truncate=k)


# --- the kernels of the trajectory ---------------------------------------------------------------


def trajectory_kernels(lib: Objectives, plan: Plan, reverse: bool) -> dict[str, Kernel]:
    """`chunk`: (x, y, s, d, alphas, active) -> (y', s', f[, F after each step with PTT]);
    `chunk_vjp` (with `reverse`): (x, y, s, d, alphas, active, weights, ybar, sbar) ->
    (xbar, ybar', sbar'), where PTT adds sum_i weights_i * F(x, y_i) to what is differentiated."""
    f, F = lib.f, lib.F
    gda, ptt, length = plan.gda is not None, plan.ptt, plan.chunk

    def inner_loss(x, y, d, a):
        fy = f(x, y, d)
        return (a * F(x, y, d) + (1 - a) * fy if gda else fy), fy

    def run_chunk(x, y, s, d, alphas, active):
        values = []
        for i in range(length):
            d_i = at_step(d, i)   # step i's minibatch, where the data is read in minibatches
            g, fy = grad(inner_loss, argnums=1, has_aux=True)(x, y, d_i, alphas[i])
            y_next, s_next = lib.step(x, y, s, g)
            y, s = masked(active[i], y_next, y), masked(active[i], s_next, s)
            f_last = fy if i == 0 else torch.where(active[i], fy, f_last)
            if ptt:
                values.append(F(x, y, d_i))
        return (y, s, f_last, torch.stack(values)) if ptt else (y, s, f_last)

    def chunk_vjp(x, y, s, d, alphas, active, weights, ybar, sbar):
        def forward(x, y, s):
            out = run_chunk(x, y, s, d, alphas, active)
            return (out[0], out[1], (weights * out[3]).sum()) if ptt else out[:2]

        _, pullback = vjp(forward, x, y, s)
        return pullback((ybar, sbar, torch.ones_like(weights[0])) if ptt else (ybar, sbar))

    kernels = {"chunk": Kernel(run_chunk, "sttdss")}
    if reverse:
        kernels["chunk_vjp"] = Kernel(chunk_vjp, "sttdssttt")
    return kernels


class Sweep:
    """The inner loop in chunks of plan.chunk steps, from the states kept at chunk starts.
    `steps_data(t0, c)` gives the minibatches inner steps t0 .. t0 + c - 1 read (none: the
    data `d` serves every step); a recomputed chunk reads the same ones."""

    def __init__(self, plan: Plan, kernels, x, d, ref: torch.Tensor, steps_data=None):
        self.kernels, self.x, self.d, self.length = kernels, x, d, plan.chunk
        self.steps_data = steps_data
        self._alpha_at, self._active = _schedule(plan.steps, plan.chunk, plan.gda, ref.dtype, ref.device)

    def data(self, t0: int) -> dict:
        return with_steps(self.d, self.steps_data(t0, self.length)) if self.steps_data else self.d

    def chunks(self, start: int, stop: int) -> list[tuple[int, int]]:
        c = self.length
        return [(t, min(c, stop - t)) for t in range(start, stop, c)]

    def advance(self, y, s, t0: int, n: int):
        return self.kernels.chunk(self.x, y, s, self.data(t0), self._alpha_at[t0], self._active[n])

    def run(self, y, s, start: int, stop: int):
        for t0, n in self.chunks(start, stop):
            y, s = self.advance(y, s, t0, n)[:2]
        return y, s

    def vjp(self, y, s, t0: int, n: int, weights, ybar, sbar):
        return self.kernels.chunk_vjp(self.x, y, s, self.data(t0), self._alpha_at[t0], self._active[n], weights, ybar,
                                      sbar)


@functools.lru_cache(maxsize=64)
def _schedule(steps: int, c: int, gda, dtype, device):
    """GDA's a_t for each chunk start (zeros without GDA), and the `active` masks of chunks
    of n = 0..c steps: made once per pipeline, not per outer step. Each chunk start gets a
    tensor with its own storage, so compiled code sees the same layout on every call."""
    t = torch.arange(steps + c, dtype=dtype)
    alpha = (gda[0] * gda[1] ** t if gda else torch.zeros_like(t)).to(device)
    starts = {t0: alpha[t0:t0 + c].clone() for t0 in range(steps)}
    return starts, active_masks(c, device)


@functools.lru_cache(maxsize=64)
def active_masks(c: int, device) -> list[torch.Tensor]:
    """Which of a chunk's c steps run, for chunks of n = 0..c steps."""
    return [(torch.arange(c) < n).to(device) for n in range(c + 1)]


def initial_state(optimizer, y0, tasks: int | None):
    return vmap(optimizer.init)(y0) if tasks else optimizer.init(y0)


def inner_loop(kernels, optimizer, x, y0, d, steps: int, chunk: int, tasks: int | None = None, steps_data=None):
    """y_T from y0: the inner optimiser alone (no GDA mixing), in chunks."""
    sweep = Sweep(Plan(steps=steps, chunk=chunk), kernels, x, d, trees.leaves(y0)[0], steps_data)
    return sweep.run(y0, initial_state(optimizer, y0, tasks), 0, steps)[0]


# --- the forward pass and where F is differentiated ----------------------------------------------


@dataclass
class Forward:
    """What the forward pass leaves for the backward one."""
    sweep: Sweep
    kept: dict                   # chunk start -> (y, s) at it
    first: int                   # where the differentiated part starts
    every: int                   # steps between kept states in the differentiated part
    y_T: dict
    s_T: dict
    lower_loss: torch.Tensor
    upper_loss: torch.Tensor
    y_F: dict | None             # where F is differentiated (None: inside the unrolled sweep, PTT)
    xbar: dict                   # dF/dx so far (F's direct dependence on x)
    ybar: dict                   # dF/dy_F, scaled by the task weight
    worst: torch.Tensor | None = None    # PTT: each task's k*
    positions: tuple = ()
    mask: dict | None = None


class Trajectory(Method):
    """Base of the methods that run the inner loop and differentiate at its end."""

    reverse = False     # whether the method needs the chunk VJP

    def kernels(self, lib: Objectives) -> dict[str, Kernel]:
        return {**trajectory_kernels(lib, self.plan, self.reverse and self.unrolled(self.plan)),
                "upper_grads": Kernel(lib.upper_grads, "std")}

    def outcome(self, ctx: Context, x, y0, state: dict, d, k: int) -> Outcome:
        fw = self.forward(ctx, x, y0, d)
        xbar, start_grad = self.backward(ctx, x, d, fw)
        return Outcome(xbar, fw.y_T, fw.upper_loss, fw.lower_loss.mean(), start_grad=start_grad)

    def backward(self, ctx: Context, x, d, fw: Forward):
        """(dF/dx, dF/dy0 or None) from the forward pass."""
        raise NotImplementedError

    def forward(self, ctx: Context, x, y0, d) -> Forward:
        plan, batch, k = self.plan, ctx.batch, ctx.kernels
        ref = trees.leaves(y0)[0]
        sweep = Sweep(plan, k, x, d, ref, ctx.steps_data)
        c, T = plan.chunk, plan.steps
        unrolled = self.unrolled(plan)
        first = plan.truncate if unrolled else T
        every = -(-plan.checkpoint // c) * c if plan.checkpoint else c

        # keep the states the reverse sweep (or PTT's worst step) starts from
        s0 = initial_state(ctx.optimizer, y0, batch.tasks)
        kept = {0: (y0, s0)}
        values = []
        y, s = y0, s0
        for t0, n in sweep.chunks(0, first) + sweep.chunks(first, T):
            if (t0 >= first and (t0 - first) % every == 0) or (plan.ptt and not unrolled):
                kept[t0] = (y, s)
            out = sweep.advance(y, s, t0, n)
            y, s, lower_loss = out[:3]
            if plan.ptt:
                values.append(out[3][..., :n])
        fw = Forward(sweep, kept, first, every, y, s, lower_loss, upper_loss=None, y_F=y, xbar=trees.zeros_like(x),
                     ybar=trees.zeros_like(y))
        if plan.ptt:
            # where F is differentiated: each task's worst step k* = argmax_t F(x, y_t)
            values = torch.cat(values, -1)
            fw.worst = values.argmax(-1) + 1
            fw.upper_loss = values.max(-1).values.mean()
            fw.positions = tuple(sorted(set(fw.worst.reshape(-1).tolist())))
            fw.mask = {p: (fw.worst == p).to(ref.dtype) for p in fw.positions}
            fw.y_F = None
            if not unrolled:
                states = {p: self.state_at(fw, p) for p in fw.positions}
                fw.y_F = functools.reduce(trees.add, (batch.scale(states[p], fw.mask[p]) for p in fw.positions))
        if fw.y_F is not None:
            value, gx, gy = k.upper_grads(x, fw.y_F, d)
            fw.upper_loss = value.mean()
            w = batch.mean_weight()
            fw.xbar, fw.ybar = batch.total(trees.scale(gx, w)), trees.scale(gy, w)
        return fw

    def first_non_finite_step(self, ctx: Context, x, y0, d) -> int | None:
        """Replays the inner loop one step per call until y or f stops being finite."""
        from ..guard import all_finite

        sweep = Sweep(self.plan, ctx.kernels, x, d, trees.leaves(y0)[0], ctx.steps_data)
        y, s = y0, initial_state(ctx.optimizer, y0, ctx.batch.tasks)
        for t in range(self.plan.steps):
            y, s, f = sweep.advance(y, s, t, 1)[:3]
            if not bool(all_finite([("lower", y), ("lower_objective", f)])):
                return t + 1
        return None

    @staticmethod
    def state_at(fw: Forward, p: int):
        """y_p, recomputed from the last kept state at or before step p."""
        base = max(t for t in fw.kept if t <= p)
        return fw.sweep.run(*fw.kept[base], base, p)[0]
