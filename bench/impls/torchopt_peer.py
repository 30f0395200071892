"""TorchOpt 0.7.3 implementations of the benchmark problems (see bench/problems.py).

- RAD, DI->RAD, PTT->RAD, IAD: the differentiable inner optimiser `torchopt.MetaSGD`, with
  `extract_state_dict` / `recover_state_dict` / `stop_gradient` between outer steps, as in
  TorchOpt's MAML examples.
- FOA->IAD: TorchOpt has no first-order switch; its functional optimiser (`torchopt.sgd` +
  `apply_updates`) fed with gradients taken without a graph makes the inner gradients
  constants, so dy_T/dy_0 = I (first-order MAML).
- CG, NS: implicit differentiation with `torchopt.diff.implicit.custom_root` on the
  stationarity condition grad_y f = 0, solved by `linear_solve.solve_cg` (H q = v, textbook CG)
  or `linear_solve.solve_inv(ns=True)` (alpha * sum_{i<=k} (I - alpha H)^i v).
- FD, IGA: not provided by TorchOpt.
- minibatch_cleaning (RAD): TorchOpt's functional optimiser (`torchopt.sgd`, `update` and
  `apply_updates` with inplace=False, inner gradients with create_graph=True), as its
  functional-optimiser tutorial writes a differentiable inner loop; each inner step on its
  minibatch, gathered by the indices blodsl draws (problems.MinibatchDraws).
- meta_sgd (IAD): TorchOpt's SGD (`torchopt.sgd`, `MetaSGD`) takes one learning rate for all
  the weights, so the per-weight step -exp(log_lrs) * g is a `GradientTransformation` of our
  own, run like `torchopt.sgd` in a functional inner loop (`torch.func.functional_call`,
  `apply_updates`) whose inner gradients keep their graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import torchopt
from bench import problems as P
from bench.problems import Case, Unsupported
from torchopt.base import EmptyState, GradientTransformation


def make(case: Case, device: str = "cpu"):
    if case.method in P.FIRST_ORDER:
        raise Unsupported(P.NO_FIRST_ORDER)
    if case.problem == "minibatch_cleaning":
        if case.method != "RAD":
            raise Unsupported(f"problem 6 is written for RAD only, not {case.method}")
        return _Minibatched(case, device)
    if case.problem in P.META_LEARNING:
        if case.method not in P.META_LEARNING[case.problem]:
            raise Unsupported(f"{case.method} is not a meta-learning method")
        return _Maml(case, device)
    if case.method in ("RAD", "DI->RAD", "PTT->RAD"):
        return _Unrolled(case, device)
    if case.method in ("CG", "NS"):
        return _Implicit(case, device)
    raise Unsupported({"FD": "TorchOpt has no finite-difference (DARTS) hypergradient",
                       "IGA": "TorchOpt has no IGA hypergradient"}.get(case.method, f"no {case.method} in TorchOpt"))


def _problem(case: Case, device: str):
    """Upper variable x, lower objective f(x, W, b), upper objective F(W, b), linear layer sizes."""
    if case.problem == "l2_logreg":
        d = P.l2_logreg_data(case.features, device)
        x = torch.full((case.features,), P.L2_LOGREG["init"], device=device, requires_grad=True)

        def f(x, W, b):
            return F.cross_entropy(F.linear(d["train_x"], W, b), d["train_y"]) + 0.5 * (x.exp() * W.pow(2)).sum()

        sizes = (case.features, 2)
    else:  # hyper_cleaning, rad_memory
        d = P.hyper_cleaning_data(device)
        x = torch.zeros(P.HYPER_CLEANING["train"], device=device, requires_grad=True)
        l2 = P.HYPER_CLEANING["l2"]

        def f(x, W, b):
            losses = F.cross_entropy(F.linear(d["train_x"], W, b), d["train_y"], reduction="none")
            return (torch.sigmoid(x) * losses).mean() + l2 * (W.pow(2).sum() + b.pow(2).sum())

        sizes = (P.HYPER_CLEANING["features"], P.HYPER_CLEANING["classes"])

    def upper(W, b):
        return F.cross_entropy(F.linear(d["val_x"], W, b), d["val_y"])

    return x, f, upper, sizes


class _Unrolled:
    """RAD through T MetaSGD steps; the lower Linear is carried across outer steps."""

    def __init__(self, case: Case, device: str):
        self.case = case
        self.x, self.f, self.F, (n_in, n_out) = _problem(case, device)
        self.net = nn.Linear(n_in, n_out).to(device)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)
        self.inner_opt = torchopt.MetaSGD(self.net, lr=case.inner_lr)
        self.outer_opt = torchopt.Adam([self.x], lr=case.outer_lr)
        if case.method == "DI->RAD":
            # the net's own leaf parameters are the learned y0; every inner loop restarts from them
            self.y0 = torchopt.extract_state_dict(self.net)  # by reference
            self.y0_opt = torchopt.Adam(self.net.parameters(), lr=P.METHODS["DI"]["lr"])

    def _outer_loss(self) -> torch.Tensor:
        if self.case.method == "DI->RAD":
            torchopt.recover_state_dict(self.net, self.y0)
        trajectory = []
        for _ in range(self.case.steps):
            self.inner_opt.step(self.f(self.x, self.net.weight, self.net.bias))
            if self.case.method == "PTT->RAD":
                trajectory.append(self.F(self.net.weight, self.net.bias))
        if self.case.method == "PTT->RAD":
            # k* = argmax_t F(x, y_t): a data-dependent index, so it is read on the host
            return trajectory[int(torch.stack(trajectory).argmax())]
        return self.F(self.net.weight, self.net.bias)

    def hypergradient(self) -> list[torch.Tensor]:
        start = torchopt.extract_state_dict(self.net)
        (grad,) = torch.autograd.grad(self._outer_loss(), self.x)
        torchopt.recover_state_dict(self.net, start)  # leave the runner as it was
        return [grad.detach()]

    def lower_weights(self):
        return self.net.weight, self.net.bias

    def step(self) -> None:
        loss = self._outer_loss()
        self.outer_opt.zero_grad()
        if self.case.method == "DI->RAD":
            self.y0_opt.zero_grad()
        loss.backward()
        self.outer_opt.step()
        if self.case.method == "DI->RAD":
            self.y0_opt.step()
        # warm start: y_T becomes the next starting point, cut from this step's graph
        torchopt.stop_gradient(self.net)
        torchopt.stop_gradient(self.inner_opt)


class _Minibatched:
    """Problem 6: RAD through T functional SGD steps, each on its own training minibatch; the
    lower (W, b) is carried across outer steps, cut from the previous step's graph."""

    def __init__(self, case: Case, device: str):
        c = P.MINIBATCH_CLEANING
        self.d = P.minibatch_cleaning_data(device)
        self.draws = P.MinibatchDraws(self.d, device)
        self.x = torch.zeros(len(self.d["train_x"]), device=device, requires_grad=True)
        self.y = (torch.zeros(c["classes"], c["features"], device=device), torch.zeros(c["classes"], device=device))
        self.inner_opt = torchopt.sgd(lr=case.inner_lr)
        self.outer_opt = torchopt.Adam([self.x], lr=case.outer_lr)
        self.outer_step = 0

    def _lower_loss(self, params, idx: torch.Tensor) -> torch.Tensor:
        W, b = params
        losses = F.cross_entropy(F.linear(self.d["train_x"][idx], W, b), self.d["train_y"][idx], reduction="none")
        return (torch.sigmoid(self.x[idx]) * losses).mean() + P.MINIBATCH_CLEANING["l2"] * (W.pow(2).sum()
                                                                                           + b.pow(2).sum())

    def _outer_loss(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """F after T inner steps from the carried y, and y_T."""
        params = tuple(t.detach().requires_grad_() for t in self.y)
        state = self.inner_opt.init(params)
        for idx in self.draws.inner(self.outer_step):
            grads = torch.autograd.grad(self._lower_loss(params, idx), params, create_graph=True)
            updates, state = self.inner_opt.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        val = self.draws.outer(self.outer_step)
        W, b = params
        return F.cross_entropy(F.linear(self.d["val_x"][val], W, b), self.d["val_y"][val]), params

    def hypergradient(self) -> list[torch.Tensor]:
        (grad,) = torch.autograd.grad(self._outer_loss()[0], self.x)
        return [grad.detach()]

    def lower_weights(self):
        return self.y

    def step(self) -> None:
        loss, params = self._outer_loss()
        self.outer_opt.zero_grad()
        loss.backward()
        self.outer_opt.step()
        self.y = tuple(t.detach() for t in params)     # warm start from y_T
        self.outer_step += 1


class _Implicit:
    """CG / NS through `custom_root`: y* = T SGD steps from the carried y, d y*/dx by the IFT."""

    def __init__(self, case: Case, device: str):
        self.x, f, self.F, (n_in, n_out) = _problem(case, device)
        self.y = (torch.zeros(n_out, n_in, device=device), torch.zeros(n_out, device=device))
        self.opt = torchopt.Adam([self.x], lr=case.outer_lr)

        def lower(y, x):
            return f(x, *y)

        if case.method == "CG":
            k, tol = P.METHODS["CG"]["k"], P.METHODS["CG"]["tol"]
            # rtol=0, atol=tol: stop when ||r|| <= tol, else after k iterations
            solve = torchopt.linear_solve.solve_cg(maxiter=k, rtol=0.0, atol=tol)
        else:
            solve = torchopt.linear_solve.solve_inv(ns=True, maxiter=P.METHODS["NS"]["k"], alpha=case.inner_lr)
        sgd = torchopt.sgd(lr=case.inner_lr)
        steps = case.steps

        # optimality condition: grad_y f(y, x) = 0 (same signature as the solver)
        @torchopt.diff.implicit.custom_root(torch.func.grad(lower), argnums=1, solve=solve)
        def inner_solve(y, x):
            y = tuple(t.detach().clone().requires_grad_() for t in y)
            state = sgd.init(y)
            with torch.enable_grad():  # custom_root runs the solver without autograd
                for _ in range(steps):
                    grads = torch.autograd.grad(lower(y, x), y)
                    updates, state = sgd.update(grads, state)
                    y = torchopt.apply_updates(y, updates)
            return tuple(t.detach() for t in y)

        self.inner_solve = inner_solve

    def hypergradient(self) -> list[torch.Tensor]:
        y = self.inner_solve(self.y, self.x)
        (grad,) = torch.autograd.grad(self.F(*y), self.x)
        return [grad.detach()]

    def step(self) -> None:
        y = self.inner_solve(self.y, self.x)
        self.opt.zero_grad()
        self.F(*y).backward()
        self.opt.step()
        self.y = tuple(t.detach() for t in y)  # warm start from y_T


def _per_weight_sgd(rates: tuple[torch.Tensor, ...]) -> GradientTransformation:
    """SGD whose rate is a tensor per weight, elementwise (Meta-SGD); never in place, so that the
    step stays differentiable in the rates."""

    def init(params):
        return EmptyState()

    def update(updates, state, *, params=None, inplace=True):
        return tuple(-rate * g for rate, g in zip(rates, updates)), state

    return GradientTransformation(init, update)


class _Maml:
    """MAML over 25 sinusoid tasks; IAD second order (MetaSGD), FOA->IAD first order; meta_sgd
    (IAD) with a learned log rate per weight, in a functional inner loop."""

    def __init__(self, case: Case, device: str):
        c = P.MAML
        h = c["hidden"]
        self.net = nn.Sequential(nn.Linear(1, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1)).to(device)
        self.net.load_state_dict(P.maml_init())
        self.names = [n for n, _ in self.net.named_parameters()]
        self.batches = [P.maml_batch(i, device) for i in range(4)]
        self.log_lrs = ([torch.full_like(p, P.META_SGD_INIT, requires_grad=True) for p in self.net.parameters()]
                        if case.problem == "meta_sgd" else [])
        self.params = [*self.net.parameters(), *self.log_lrs]
        self.meta_opt = torchopt.Adam(self.params, lr=case.outer_lr)
        self.steps, self.first_order = case.steps, case.method == "FOA->IAD"
        self.functional = self.first_order or bool(self.log_lrs)
        if self.first_order:
            self.sgd = torchopt.sgd(lr=case.inner_lr)
        elif not self.log_lrs:
            self.inner_opt = torchopt.MetaSGD(self.net, lr=case.inner_lr)
        self.i = 0

    def _inner_optimiser(self) -> GradientTransformation:
        if self.log_lrs:    # the rates anew per task: each task's backward frees the graph they were on
            return _per_weight_sgd(tuple(t.exp() for t in self.log_lrs))
        return self.sgd

    def _learner(self, weights, x):
        return torch.func.functional_call(self.net, dict(zip(self.names, weights)), (x,))

    def _adapt(self, x, y) -> tuple[torch.Tensor, ...]:
        """The functional inner loop from the meta-weights. First order: the inner gradients are
        taken without a graph, so they are constants and dy_T/dy_0 = I."""
        sgd = self._inner_optimiser()
        fast = tuple(self.net.parameters())
        state = sgd.init(fast)
        for _ in range(self.steps):
            grads = torch.autograd.grad(F.mse_loss(self._learner(fast, x), y), fast,
                                        create_graph=not self.first_order)
            updates, state = sgd.update(grads, state, inplace=False)
            fast = torchopt.apply_updates(fast, updates, inplace=False)
        return fast

    def _backward(self, batch) -> None:
        """Accumulate dF/dtheta (and dF/dlog_lrs), F = mean over tasks of the adapted learner's query mse."""
        sx, sy, qx, qy = batch["support_x"], batch["support_y"], batch["query_x"], batch["query_y"]
        tasks = sx.shape[0]
        if self.functional:
            for t in range(tasks):
                (F.mse_loss(self._learner(self._adapt(sx[t], sy[t]), qx[t]), qy[t]) / tasks).backward()
        else:
            theta = torchopt.extract_state_dict(self.net)  # by reference: the meta-parameters
            inner_state = torchopt.extract_state_dict(self.inner_opt)
            for t in range(tasks):
                for _ in range(self.steps):
                    self.inner_opt.step(F.mse_loss(self.net(sx[t]), sy[t]))
                (F.mse_loss(self.net(qx[t]), qy[t]) / tasks).backward()
                torchopt.recover_state_dict(self.net, theta)
                torchopt.recover_state_dict(self.inner_opt, inner_state)

    def hypergradient(self) -> list[torch.Tensor]:
        self.meta_opt.zero_grad()
        self._backward(self.batches[0])
        grads = [p.grad.detach().clone() for p in self.params]
        self.meta_opt.zero_grad()
        return grads

    def step(self) -> None:
        self.meta_opt.zero_grad()
        self._backward(self.batches[self.i % 4])
        self.meta_opt.step()
        self.i += 1
