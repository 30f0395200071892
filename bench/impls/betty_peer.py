"""Betty 0.1.1 implementations of the benchmark problems (see bench/problems.py).

Two problems, `outer` (the upper variable) and `inner` (the Linear classifier), joined by
u2l/l2u; the inner Config has unroll_steps=T, so one `engine.run()` over T iterations is one
outer step (T inner SGD steps, then the upper Adam update). Data: one full batch, repeated.

- FD, NS, CG: `ImplicitProblem` with Config(type="darts" | "neumann" | "cg"). Betty's own
  definitions are kept; where they differ from blodsl's (README):
  * darts returns grad_x F - (grad_x f(y+e v) - grad_x f(y-e v)) / (2e): no inner learning
    rate eta in front (Betty reads it as implicit differentiation with H^-1 ~ I), so its
    implicit term is 1/eta times ours (10x on hyper_cleaning); there is no config for eta.
    Its clean-up `p.data.add(...)` is not in place, so the inner weights are left at
    y_T - e*v after each outer step.
  * cg: cg_alpha=1 solves H q = v (the same final hypergradient as our (eta H) q = v), but its
    direction update uses the old residual (p <- r_old + beta p), so the iterate is not
    textbook CG; it always runs cg_iterations steps (no tolerance).
  * neumann with neumann_alpha = eta, neumann_iterations = k is exactly ours.
- RAD: Betty's iterative differentiation (README: "Iterative Differentiation - reverse-mode
  AD"): the inner problem is a `HigherIterativeProblem` (functional `higher` module and
  optimiser) and the outer Config has first_order=False, so the outer gradient flows through
  the T unrolled steps. Of Betty's iterative problems it is the one that copies y_T back into
  the inner module (warm start).
- DI->RAD, PTT->RAD, IGA, maml: not provided (reasons in `make`).
- minibatch_cleaning (RAD): as Betty's data-reweighting examples feed minibatches, each
  problem reads from a torch DataLoader passed as `train_data_loader`: the inner problem
  one training minibatch per inner step (x, y and the samples' numbers, which pick their
  weights), the outer one validation minibatch per outer step. The loaders' samplers hand
  out the minibatches blodsl draws (problems.MinibatchDraws), an epoch per pass, and each
  minibatch is gathered by one index (batch_size=None: the sampler's item is a minibatch).
"""

from __future__ import annotations

import copy
import itertools
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

import betty.logging
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.problems import HigherIterativeProblem, ImplicitProblem
from bench import problems as P
from bench.problems import Case, Unsupported

HYPERGRADIENT_TYPES = {"FD": "darts", "NS": "neumann", "CG": "cg"}
UNSUPPORTED = {
    "IGA": "Betty has no IGA hypergradient",
    "DI->RAD": "Betty cannot learn the inner initial point (no DI)",
    "PTT->RAD": "Betty cannot truncate the unrolled trajectory (no PTT)",
}


def make(case: Case, device: str = "cpu"):
    if case.method in P.FIRST_ORDER:
        raise Unsupported(P.NO_FIRST_ORDER)
    if case.problem in P.META_LEARNING:
        raise Unsupported("Betty has no MAML: the inner start is copied from the meta-model, not "
                          "differentiated (its meta-learning example is iMAML)")
    if case.problem == "minibatch_cleaning" and case.method != "RAD":
        raise Unsupported(f"problem 6 is written for RAD only, not {case.method}")
    if case.method != "RAD" and case.method not in HYPERGRADIENT_TYPES:
        raise Unsupported(UNSUPPORTED.get(case.method, f"Betty has no {case.method}"))
    # Betty logs INFO lines to stdout through its own logger, with no config option to mute it
    betty.logging.get_logger().setLevel(logging.WARNING)
    return (_Minibatched if case.problem == "minibatch_cleaning" else _Runner)(case, device)


class _Hyper(nn.Module):
    """The upper variable as a module (Betty problems own modules); `self.outer()` returns it."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(init)

    def forward(self) -> torch.Tensor:
        return self.x


class _Outer(ImplicitProblem):
    def training_step(self, batch):
        inputs, labels = batch
        return F.cross_entropy(self.inner(inputs), labels)


def _inner_class(base, problem: str):
    l2 = (P.MINIBATCH_CLEANING if problem == "minibatch_cleaning" else P.HYPER_CLEANING)["l2"]

    class Inner(base):
        def training_step(self, batch):
            inputs, labels, *index = batch     # problem 6's minibatches carry their samples' numbers
            W, b = self.module.weight, self.module.bias
            logits = self.module(inputs)
            if problem == "l2_logreg":
                return F.cross_entropy(logits, labels) + 0.5 * (self.outer().exp() * W.pow(2)).sum()
            losses = F.cross_entropy(logits, labels, reduction="none")
            weights = torch.sigmoid(self.outer()[index[0]] if index else self.outer())
            return (weights * losses).mean() + l2 * (W.pow(2).sum() + b.pow(2).sum())

    return Inner


class _Runner:
    def __init__(self, case: Case, device: str):
        if case.problem == "l2_logreg":
            d = P.l2_logreg_data(case.features, device)
            init = torch.full((case.features,), P.L2_LOGREG["init"], device=device)
            net = nn.Linear(case.features, 2).to(device)
        else:  # hyper_cleaning, rad_memory
            d = P.hyper_cleaning_data(device)
            init = torch.zeros(P.HYPER_CLEANING["train"], device=device)
            net = nn.Linear(P.HYPER_CLEANING["features"], P.HYPER_CLEANING["classes"]).to(device)
        self._build(case, device, _Hyper(init), net, itertools.repeat((d["val_x"], d["val_y"])),
                    itertools.repeat((d["train_x"], d["train_y"])))

    def _build(self, case: Case, device: str, hyper: _Hyper, net: nn.Linear, val_data, train_data) -> None:
        """The two problems and the engine, the lower model starting at zero."""
        nn.init.zeros_(net.weight)
        nn.init.zeros_(net.bias)
        T = case.steps
        if case.method == "RAD":
            base = HigherIterativeProblem
            inner_config = Config(unroll_steps=T)
            outer_config = Config(first_order=False)  # no implicit term: the gradient goes through the unroll
        else:
            base = ImplicitProblem
            inner_config = Config(type=HYPERGRADIENT_TYPES[case.method], unroll_steps=T,
                                  darts_alpha=P.METHODS["FD"]["r"],
                                  neumann_iterations=P.METHODS["NS"]["k"], neumann_alpha=case.inner_lr,
                                  cg_iterations=P.METHODS["CG"]["k"], cg_alpha=1.0)
            outer_config = Config()
        self.outer = _Outer("outer", outer_config, module=hyper,
                            optimizer=torch.optim.Adam(hyper.parameters(), lr=case.outer_lr),
                            train_data_loader=val_data, device=device)
        self.inner = _inner_class(base, case.problem)(
            "inner", inner_config, module=net, optimizer=torch.optim.SGD(net.parameters(), lr=case.inner_lr),
            train_data_loader=train_data, device=device)
        self.engine = Engine(problems=[self.outer, self.inner],
                             config=EngineConfig(train_iters=T, valid_step=T, logger_type="none"),
                             dependencies={"u2l": {self.outer: [self.inner]}, "l2u": {self.inner: [self.outer]}})

    def hypergradient(self) -> list[torch.Tensor]:
        # run one outer step, catch the gradient just before the upper update, then undo the step
        saved = copy.deepcopy([self.outer.module.state_dict(), self.outer.optimizer.state_dict(),
                               self.inner.module.state_dict()])
        grads = []
        hook = self.outer.optimizer.register_step_pre_hook(
            lambda *_: grads.extend(p.grad.detach().clone() for p in self.outer.module.parameters()))
        self.engine.run()
        hook.remove()
        self.outer.module.load_state_dict(saved[0])
        self.outer.optimizer.load_state_dict(saved[1])
        self.inner.module.load_state_dict(saved[2])
        return grads

    def lower_weights(self):
        return self.inner.module.weight, self.inner.module.bias

    def step(self) -> None:
        # T inner steps, then the upper update (Betty reads every loss with .item() to log it)
        self.engine.run()


class _DrawOrder(Sampler):
    """The minibatches blodsl draws from one stream of a dataset, an epoch per pass; each item
    is a minibatch's sample indices [B]."""

    def __init__(self, draws: P.MinibatchDraws, dataset: str, stream: str):
        self.draws, self.dataset, self.stream = draws, dataset, stream
        self.epoch = 0

    def __len__(self) -> int:
        return self.draws.per_epoch(self.dataset)

    def __iter__(self):
        first = self.epoch * len(self)
        self.epoch += 1
        return iter(self.draws.indices(self.dataset, self.stream, range(first, first + len(self))))


class _Minibatched(_Runner):
    """Problem 6: the problems read DataLoaders of minibatches; the first outer step's
    hypergradient, caught as `_Runner` catches it, then rewinds the loaders too."""

    def __init__(self, case: Case, device: str):
        c = P.MINIBATCH_CLEANING
        d = P.minibatch_cleaning_data(device)
        draws = P.MinibatchDraws(d, device)
        samples = torch.arange(len(d["train_x"]), device=device)
        self.samplers = (_DrawOrder(draws, "val", "outer"), _DrawOrder(draws, "train", "inner"))
        val, train = (DataLoader(dataset, batch_size=None, sampler=sampler) for dataset, sampler in
                      zip((TensorDataset(d["val_x"], d["val_y"]), TensorDataset(d["train_x"], d["train_y"], samples)),
                          self.samplers))
        net = nn.Linear(c["features"], c["classes"]).to(device)
        self._build(case, device, _Hyper(torch.zeros(len(samples), device=device)), net, val, train)

    def hypergradient(self) -> list[torch.Tensor]:
        grads = super().hypergradient()
        for problem, sampler in zip((self.outer, self.inner), self.samplers):
            sampler.epoch = 0       # the first outer step reads the first epoch's first draws again
            problem.train_data_iterator = [iter(loader) for loader in problem.train_data_loader]
        return grads
