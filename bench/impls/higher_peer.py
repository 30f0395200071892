"""The benchmark problems written with `higher` (0.2.1).

higher turns a module and a torch optimiser into a functional model and a
differentiable optimiser (`higher.innerloop_ctx`); the inner loop is unrolled on the
autograd tape and the hypergradient is an ordinary backward pass through it.
That covers RAD, DI -> RAD, PTT -> RAD, IAD (MAML, and Meta-SGD's learned per-weight
rates through `override`) and FOA -> IAD (first-order MAML); higher has no implicit or
approximate hypergradients (CG, NS, FD, IGA).
"""

from __future__ import annotations

import higher
import torch
import torch.nn.functional as F

from bench import problems
from bench.problems import Case, Unsupported

UNROLLED = ("RAD", "DI->RAD", "PTT->RAD")


def make(case: Case, device: str = "cpu"):
    if case.problem == "minibatch_cleaning":
        raise Unsupported(problems.NOT_MINIBATCHED)
    if case.method in problems.FIRST_ORDER:
        raise Unsupported(problems.NO_FIRST_ORDER)
    if case.method in ("CG", "NS", "FD", "IGA"):
        raise Unsupported("higher differentiates unrolled loops only; no implicit/approximate hypergradients")
    if case.method in problems.META_LEARNING.get(case.problem, ()):
        return _Maml(case, device)
    if case.problem in ("hyper_cleaning", "rad_memory", "l2_logreg") and case.method in UNROLLED:
        return _Linear(case, device)
    raise Unsupported(f"{case.method} is not defined for {case.problem}")


class _Linear:
    """hyper_cleaning / rad_memory / l2_logreg: a linear lower model trained by T inner SGD steps."""

    def __init__(self, case: Case, device: str):
        self.case = case
        if case.problem == "l2_logreg":
            self.data = problems.l2_logreg_data(case.features, device)
            self.model = torch.nn.Linear(case.features, 2).to(device)
            self.x = torch.full((case.features,), problems.L2_LOGREG["init"], device=device, requires_grad=True)
        else:
            self.data = problems.hyper_cleaning_data(device)
            c = problems.HYPER_CLEANING
            self.model = torch.nn.Linear(c["features"], c["classes"]).to(device)
            self.x = torch.zeros(c["train"], device=device, requires_grad=True)
        torch.nn.init.zeros_(self.model.weight)
        torch.nn.init.zeros_(self.model.bias)
        self.outer_opt = torch.optim.Adam([self.x], lr=case.outer_lr)
        # Fresh SGD state each outer step: higher copies the optimiser's (empty) state into
        # the differentiable one every time innerloop_ctx is entered.
        self.inner_opt = torch.optim.SGD(self.model.parameters(), lr=case.inner_lr)
        # DI: the lower model's own parameters are the learned initial point y0 (zeros);
        # copy_initial_weights=False puts them on the tape, as for a MAML meta-initialisation.
        self.di = case.method == "DI->RAD"
        if self.di:
            self.y0_opt = torch.optim.Adam(self.model.parameters(), lr=problems.METHODS["DI"]["lr"])

    def lower_loss(self, fmodel):
        d, (W, b) = self.data, fmodel.parameters()
        ce = F.cross_entropy(fmodel(d["train_x"]), d["train_y"], reduction="none")
        if self.case.problem == "l2_logreg":
            return ce.mean() + 0.5 * (self.x.exp() * W.pow(2)).sum()
        l2 = problems.HYPER_CLEANING["l2"]
        return (torch.sigmoid(self.x) * ce).mean() + l2 * (W.pow(2).sum() + b.pow(2).sum())

    def upper_loss(self, fmodel):
        return F.cross_entropy(fmodel(self.data["val_x"]), self.data["val_y"])

    def backward(self):
        """Unroll T inner steps, backpropagate F into .grad; returns the last inner iterate."""
        with higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=not self.di) as (fmodel, diffopt):
            upper = []
            for _ in range(self.case.steps):
                diffopt.step(self.lower_loss(fmodel))
                if self.case.method == "PTT->RAD":
                    upper.append(self.upper_loss(fmodel))
            if upper:
                # PTT: differentiate F(x, y_k*) with k* = argmax_t F(x, y_t), picked on the
                # device (no host sync); only the chosen loss receives a non-zero gradient.
                upper = torch.stack(upper)
                loss = upper[upper.detach().argmax()]
            else:
                loss = self.upper_loss(fmodel)
            loss.backward()
            return [p.detach() for p in fmodel.parameters()]

    def hypergradient(self):
        self.outer_opt.zero_grad()
        self.backward()
        return [self.x.grad.detach().clone()]

    def lower_weights(self):
        return self.model.weight, self.model.bias

    def step(self):
        self.outer_opt.zero_grad()
        if self.di:
            self.y0_opt.zero_grad()
        y_T = self.backward()
        self.outer_opt.step()
        if self.di:
            self.y0_opt.step()  # the inner loop restarts from the learned y0
        else:
            with torch.no_grad():  # warm start: the next outer step starts from y_T
                for p, y in zip(self.model.parameters(), y_T):
                    p.copy_(y)


class _Maml:
    """MAML on sinusoids, as in higher's MAML example: one innerloop_ctx per task,
    copy_initial_weights=False so the meta-model's weights are the unrolled loop's start.
    meta_sgd adds one learned log rate per weight, handed to higher's differentiable SGD with
    `override` (no hand-written inner step needed): override takes one lr per parameter group,
    so every weight gets a group of its own, and DifferentiableSGD's step p + (-lr) * g
    broadcasts an lr tensor of the weight's shape elementwise."""

    def __init__(self, case: Case, device: str):
        self.case = case
        c = problems.MAML
        self.batches = [problems.maml_batch(i, device) for i in range(4)]
        h = c["hidden"]
        self.model = torch.nn.Sequential(torch.nn.Linear(1, h), torch.nn.ReLU(), torch.nn.Linear(h, h),
                                         torch.nn.ReLU(), torch.nn.Linear(h, 1)).to(device)
        self.model.load_state_dict(problems.maml_init())
        weights = list(self.model.parameters())
        self.log_lrs = ([torch.full_like(w, problems.META_SGD_INIT, requires_grad=True) for w in weights]
                        if case.problem == "meta_sgd" else [])
        groups = [dict(params=[w]) for w in weights] if self.log_lrs else weights   # override: an lr per group
        self.inner_opt = torch.optim.SGD(groups, lr=c["inner_lr"])
        self.params = weights + self.log_lrs
        self.meta_opt = torch.optim.Adam(self.params, lr=case.outer_lr)
        # First-order MAML the way higher's maintainers suggest (issue #63): no higher-order
        # tape, and the query gradient w.r.t. the adapted weights is mapped onto the meta-weights.
        self.first_order = case.method == "FOA->IAD"
        self.i = 0

    def meta_backward(self, batch):
        """Accumulate dF/d(meta-weights) into .grad, F = mean over tasks of the query mse."""
        tasks = batch["support_x"].shape[0]
        for t in range(tasks):
            with higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not self.first_order,
                                      override=self._learned_rates()) as (fnet, diffopt):
                for _ in range(self.case.steps):
                    diffopt.step(F.mse_loss(fnet(batch["support_x"][t]), batch["support_y"][t]))
                query = F.mse_loss(fnet(batch["query_x"][t]), batch["query_y"][t]) / tasks
                if self.first_order:
                    grads = torch.autograd.grad(query, list(fnet.parameters()))
                    for p, g in zip(self.model.parameters(), grads):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    query.backward()  # through the 5 unrolled steps, per task to bound memory

    def _learned_rates(self):
        """meta_sgd's per-weight rates, one per parameter group; computed per task, because each
        task's backward frees the graph it was built on."""
        return {"lr": [t.exp() for t in self.log_lrs]} if self.log_lrs else None

    def hypergradient(self):
        self.meta_opt.zero_grad()
        self.meta_backward(self.batches[0])
        grads = [p.grad.detach().clone() for p in self.params]
        self.meta_opt.zero_grad()
        return grads

    def step(self):
        self.meta_opt.zero_grad()
        self.meta_backward(self.batches[self.i % 4])
        self.meta_opt.step()
        self.i += 1
