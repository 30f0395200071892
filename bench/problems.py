"""The benchmark problems: data, sizes and hyperparameters, shared by every implementation.

Each implementation (blodsl, the hand-written reference, each peer library) builds
the same maths from these definitions, so their hypergradients can be compared.

1. hyper_cleaning: one weight logit per training sample (upper, zeros(5000)); a
   linear classifier 784 -> 10 (lower, weight and bias start at zero, carried
   across outer steps).
       f = mean_i sigmoid(w_i) * CE(net(train.x_i), train.y_i) + L2 * (|W|^2 + |b|^2)
       F = mean CE(net(val.x), val.y)
   Inner SGD(lr=INNER_LR), T = 5 steps; outer Adam(lr=OUTER_LR).
2. l2_logreg: a per-feature L2 penalty (upper, log_decay = full(p, -3.0)); a
   linear classifier p -> 2 (lower, zeros, carried).
       f = mean CE(net(train.x), train.y) + 0.5 * sum(exp(log_decay) * W^2)   (W: [2, p])
       F = mean CE(net(val.x), val.y)
3. maml: an MLP 1-40-40-1 with ReLU (upper: the meta-model; lower: the learner,
   starting from the meta-model each outer step), 25 sinusoid tasks of 10 support
   and 10 query points, 5 inner SGD steps.
       f = mse(learner(support_x), support_y)   per task
       F = mean over tasks of mse(learner_T(query_x), query_y)
4. rad_memory: problem 1 with RAD and T inner steps, for time and memory.
5. meta_sgd: problem 3 where the upper level also learns one inner learning rate per
   weight (Meta-SGD), as its log (upper: log_lrs, full(log(inner_lr)) per weight);
   the inner step is w - exp(log_lrs) * g elementwise; IAD (full second order).
6. minibatch_cleaning: problem 1 at a larger scale and stochastic: 50,000 training and
   12,500 validation samples of blodsl's `classification` (100 features, 10 classes,
   half the training labels flipped), read in minibatches of B = 128. Upper
   zeros(50000); lower a linear classifier 100 -> 10, as in problem 1.
       f_t = mean_{i in I_t} sigmoid(w_i) * CE(net(train.x_i), train.y_i) + L2 * (|W|^2 + |b|^2)
       F   = mean_{j in J} CE(net(val.x_j), val.y_j)
   Inner step t of outer step k reads the training minibatch I_t (blodsl's stream "inner",
   draw k * T + t), the upper objective the validation minibatch J (stream "outer", draw k):
   every implementation reads the samples blodsl draws (MinibatchDraws), so their
   hypergradients can be compared. Inner SGD(lr=INNER_LR), T = 5 steps, RAD; outer Adam.

Methods follow the README's definitions: RAD, CG(k, tol), NS(k, alpha = inner lr), FD(r),
IGA, DI -> RAD, PTT -> RAD, IAD, FOA -> IAD; and on problem 1 the first-order
methods VFO, VSO, MESO, PGDO, ALTO and the dual-multiplier method DM -> RAD,
DM -> CG (one inner step), each run ACCURACY_STEPS outer steps and scored by the
lower model's accuracy on a held-out clean test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

HYPER_CLEANING = dict(train=5000, val=5000, test=10000, features=784, classes=10, noise=0.5, inner_lr=0.1,
                      outer_lr=0.01, l2=1e-3, steps=5)
L2_LOGREG = dict(train=500, val=500, informative=10, inner_lr=0.5, outer_lr=0.05, init=-3.0)
# problem 6; bench/programs/minibatch_cleaning.blo writes the same numbers in its data block
MINIBATCH_CLEANING = dict(n=62500, split=(0.8, 0.2), features=100, classes=10, separation=0.5, noise=0.5, seed=0,
                          batch=128, inner_lr=0.1, outer_lr=0.01, l2=1e-3, steps=5)
RUN_SEED = 0    # blodsl's run seed (a program's default), from which its minibatches are shuffled
MAML = dict(tasks=25, shots=10, queries=10, hidden=40, inner_lr=0.01, outer_lr=1e-3, steps=5)
META_SGD_INIT = math.log(MAML["inner_lr"])     # every weight's learned log rate starts at problem 3's rate
# meta_sgd's rates reach the hypergradient only through the inner steps' derivatives, which FOA drops
META_LEARNING = {"maml": ("IAD", "FOA->IAD"), "meta_sgd": ("IAD",)}    # the methods of problems 3 and 5
METHODS = dict(CG=dict(k=10, tol=1e-10), NS=dict(k=10), FD=dict(r=0.01), DI=dict(lr=0.01))

# The first-order suite: outer steps before the test accuracy is read. Every case of the suite
# then takes about 12 minutes on a 2-core CPU: 3 of them in the steps (1.7 s for one outer step
# of every case and implementation), the rest starting processes and compiling blodsl's kernels.
ACCURACY_STEPS = 100
FIRST_ORDER = ("VFO", "VSO", "MESO", "PGDO", "ALTO", "DM->RAD", "DM->CG")
# Each method runs with its defaults in each library, except where they make the comparison
# meaningless. PGDO's penalty weight defaults to 0 rising to 0.2 over 30000 outer steps, under
# 1e-3 for all of ACCURACY_STEPS, so x would hardly move; BOAT's own data hyper-cleaning
# example raises gamma_init to gamma_max + 0.1, a constant 0.3, which both libraries use here.
FIRST_ORDER_PARAMS = {"PGDO": dict(gamma_init=0.3, gamma_max=0.3)}
NO_FIRST_ORDER = "higher, TorchOpt and Betty have no first-order bilevel methods (VFO, VSO, MESO, PGDO, ALTO) or DM"
NOTES = {
    "PGDO": "PGDO's penalty weight is a constant gamma = 0.3 in both libraries (as in BOAT's data "
            "hyper-cleaning example): with the default schedule it stays under 1e-3 for all the outer steps",
    "ALTO": "ALTO hands x only dF/dx at fixed y, which is zero here (F does not depend on x): x never "
            "moves, so its accuracy is that of no cleaning with 1 inner step (the baseline under the table)",
    "RAD": "RAD, the exact hypergradient, is the yardstick for the accuracy column",
}


@dataclass(frozen=True)
class Case:
    problem: str            # hyper_cleaning, l2_logreg, maml, rad_memory, meta_sgd, minibatch_cleaning
    method: str             # RAD, CG, NS, FD, IGA, DI->RAD, PTT->RAD, IAD, FOA->IAD
    steps: int              # inner steps T
    features: int = 0       # l2_logreg only
    outer_steps: int = 0    # > 0: run exactly this many outer steps, then read the test accuracy

    @property
    def name(self) -> str:
        size = f"p={self.features}," if self.features else ""
        run = f",N={self.outer_steps}" if self.outer_steps else ""
        return f"{self.problem}[{size}T={self.steps}{run}] {self.method}"

    @property
    def inner_lr(self) -> float:
        return _sizes(self.problem)["inner_lr"]

    @property
    def outer_lr(self) -> float:
        return _sizes(self.problem)["outer_lr"]


def _sizes(problem: str) -> dict:
    return {"maml": MAML, "meta_sgd": MAML, "l2_logreg": L2_LOGREG,
            "minibatch_cleaning": MINIBATCH_CLEANING}.get(problem, HYPER_CLEANING)


NOT_MINIBATCHED = "problem 6 (minibatches) is written for blodsl, the reference, TorchOpt and Betty only"


class Unsupported(Exception):
    """An implementation cannot run this case; the message says why (shown in the table)."""


class Runner(Protocol):
    def hypergradient(self) -> list[torch.Tensor]:
        """dF/dx of the first outer step, upper variables in the order of `upper_names`.
        Called once, on a fresh runner, before any step()."""

    def step(self) -> None:
        """One outer step: the hypergradient, the upper optimiser's update, the lower state carried."""

    # Only the runners of cases with outer_steps > 0 need it:
    # def lower_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
    #     """The lower linear model now: weight [classes, features], bias [classes]."""


MLP_WEIGHTS = [f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]    # maml_init's keys


def upper_names(case: Case) -> list[str]:
    """The upper variables as blodsl's programs name them."""
    if case.problem == "maml":
        return [f"meta.{w}" for w in MLP_WEIGHTS]
    if case.problem == "meta_sgd":
        return [f"{v}.{w}" for v in ("meta", "log_lrs") for w in MLP_WEIGHTS]
    return ["log_decay"] if case.problem == "l2_logreg" else ["w"]


# --- data ----------------------------------------------------------------------------------


def hyper_cleaning_data(device="cpu", seed: int = 0, test: bool = False) -> dict[str, torch.Tensor]:
    """MNIST-sized synthetic digits: 10 Gaussian classes in 784 dimensions; half of the
    training labels replaced by uniformly drawn ones. test=True adds a clean test split
    (test_x, test_y), drawn last so that the other splits are the same either way."""
    c = HYPER_CLEANING
    g = torch.Generator().manual_seed(seed)
    means = 0.15 * torch.randn(c["classes"], c["features"], generator=g)

    def draw(n):
        y = torch.randint(c["classes"], (n,), generator=g)
        return means[y] + torch.randn(n, c["features"], generator=g), y

    train_x, train_y = draw(c["train"])
    val_x, val_y = draw(c["val"])
    noisy = torch.rand(c["train"], generator=g) < c["noise"]
    train_y = torch.where(noisy, torch.randint(c["classes"], (c["train"],), generator=g), train_y)
    splits = dict(train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y)
    if test:
        splits["noisy"] = noisy
        splits["test_x"], splits["test_y"] = draw(c["test"])
    return {k: v.to(device) for k, v in splits.items()}


def test_accuracy(weight: torch.Tensor, bias: torch.Tensor) -> float:
    """Problem 1's lower model (a linear classifier) scored on the clean test split."""
    d = hyper_cleaning_data(weight.device, test=True)
    with torch.no_grad():
        predicted = (d["test_x"] @ weight.detach().T + bias.detach()).argmax(1)
    return float((predicted == d["test_y"]).float().mean())


def flagged_f1(w: torch.Tensor) -> float:
    """How well problem 1's learned sample weights find the flipped labels: the F1 score of
    the samples whose weight sigmoid(w) fell below 1/2 against those whose label was replaced
    (a replacement that drew the same label counts as replaced)."""
    noisy = hyper_cleaning_data(w.device, test=True)["noisy"]
    flagged = torch.sigmoid(w.detach()) < 0.5
    hits = float((flagged & noisy).sum())
    return 2 * hits / float(flagged.sum() + noisy.sum()) if hits else 0.0


def noisy_labels_accuracy(inner_steps: int, outer_steps: int) -> float:
    """The accuracy column's yardstick without cleaning: problem 1's lower model trained from
    zero with x held at its start (every sample weighted sigmoid(0) = 1/2), by plain SGD at the
    inner learning rate, inner_steps per outer step for outer_steps. On this problem the test
    accuracy falls as the model fits the noisy labels, so the number of lower steps matters."""
    c = HYPER_CLEANING
    d = hyper_cleaning_data()
    W = torch.zeros(c["classes"], c["features"], requires_grad=True)
    b = torch.zeros(c["classes"], requires_grad=True)
    for _ in range(inner_steps * outer_steps):
        ce = torch.nn.functional.cross_entropy(d["train_x"] @ W.T + b, d["train_y"])
        f = 0.5 * ce + c["l2"] * (W.square().sum() + b.square().sum())
        gW, gb = torch.autograd.grad(f, (W, b))
        with torch.no_grad():
            W -= c["inner_lr"] * gW
            b -= c["inner_lr"] * gb
    return test_accuracy(W, b)


def l2_logreg_data(features: int, device="cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Two classes separated along the first `informative` features; the rest is noise."""
    c = L2_LOGREG
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(features)
    direction[: c["informative"]] = torch.randn(c["informative"], generator=g)

    def draw(n):
        x = torch.randn(n, features, generator=g)
        y = ((x @ direction + 0.5 * torch.randn(n, generator=g)) > 0).long()
        return x, y

    train_x, train_y = draw(c["train"])
    val_x, val_y = draw(c["val"])
    return {k: v.to(device) for k, v in dict(train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y).items()}


def maml_batch(step: int = 0, device="cpu") -> dict[str, torch.Tensor]:
    """Outer step `step`'s 25 tasks: support_x/support_y [25, 10, 1], query_x/query_y [25, 10, 1].
    The same draw as blodsl's `sinusoid(tasks=25, shots=10, queries=10, seed=0)`."""
    from blodsl.runtime.data import Sinusoid

    c = MAML
    table = Sinusoid(tasks=c["tasks"], shots=c["shots"], queries=c["queries"], seed=0).batch(step)
    return {k: v.to(device) for k, v in table.fields.items()}


def maml_init(seed: int = 0) -> dict[str, torch.Tensor]:
    """The meta-model's initial weights, as an nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)
    state dict: keys 0.weight, 0.bias, 2.weight, 2.bias, 4.weight, 4.bias."""
    torch.manual_seed(seed)
    h = MAML["hidden"]
    net = torch.nn.Sequential(torch.nn.Linear(1, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
                              torch.nn.Linear(h, 1))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def minibatch_cleaning_data(device="cpu") -> dict[str, torch.Tensor]:
    """Problem 6's data: what the program's `classification(...)` draws, from blodsl's own source."""
    from blodsl.runtime.data import classification

    c = MINIBATCH_CLEANING
    train, val = classification(n=c["n"], features=c["features"], classes=c["classes"], separation=c["separation"],
                                split=c["split"], label_noise=c["noise"], seed=c["seed"])
    splits = dict(train_x=train.fields["x"], train_y=train.fields["y"], val_x=val.fields["x"], val_y=val.fields["y"])
    return {k: v.to(device) for k, v in splits.items()}


class MinibatchDraws:
    """Which samples problem 6's reads take, drawn as blodsl draws them (blodsl.runtime.minibatch):
    inner step t of outer step k reads train[inner(k)[t]], the upper objective val[outer(k)]."""

    def __init__(self, data: dict[str, torch.Tensor], device="cpu"):
        from blodsl.runtime.minibatch import Minibatches

        tables = {"train": {"x": data["train_x"]}, "val": {"x": data["val_x"]}}
        self.batch, self.steps = MINIBATCH_CLEANING["batch"], MINIBATCH_CLEANING["steps"]
        self.source = Minibatches(tables, {"train": self.batch, "val": self.batch}, RUN_SEED, device, {})
        self.samples = {name: len(t["x"]) for name, t in tables.items()}

    def indices(self, dataset: str, stream: str, draws) -> torch.Tensor:
        """[len(draws), B]: the samples of the given draws of a dataset's stream."""
        return self.source.indices(dataset, stream, list(draws))

    def inner(self, outer_step: int) -> torch.Tensor:
        """[T, B]: the training samples of each inner step of this outer step."""
        first = outer_step * self.steps
        return self.indices("train", "inner", range(first, first + self.steps))

    def outer(self, outer_step: int) -> torch.Tensor:
        """[B]: the validation samples the upper objective reads at this outer step."""
        return self.indices("val", "outer", [outer_step])[0]

    def per_epoch(self, dataset: str) -> int:
        """Draws per epoch of a stream (the last partial minibatch is dropped)."""
        return self.samples[dataset] // self.batch


# --- the suites ------------------------------------------------------------------------------

HC_METHODS = ("RAD", "CG", "NS", "FD", "IGA", "DI->RAD", "PTT->RAD")


SUITES = ("quick", "full", "first-order")


def first_order_cases() -> list[Case]:
    """Problem 1 with each first-order method and DM (one inner step, as DM requires), and RAD
    as the yardstick; each runs ACCURACY_STEPS outer steps."""
    T = HYPER_CLEANING["steps"]
    return [Case("hyper_cleaning", m, 1 if m.startswith("DM") else T, outer_steps=ACCURACY_STEPS)
            for m in ("RAD", *FIRST_ORDER)]


def suite(name: str) -> list[Case]:
    """`quick`: a few minutes on a laptop CPU; `full`: every size the harness knows, problem 6
    and the first-order suite; `first-order`: the first-order methods and DM on problem 1."""
    if name == "first-order":
        return first_order_cases()
    hc = [Case("hyper_cleaning", m, HYPER_CLEANING["steps"]) for m in HC_METHODS]
    maml = [Case("maml", m, MAML["steps"]) for m in ("IAD", "FOA->IAD")]
    maml.append(Case("meta_sgd", "IAD", MAML["steps"]))     # problem 5: problem 3 with learned rates
    if name == "quick":
        l2 = [Case("l2_logreg", m, 20, 50) for m in ("RAD", "CG")]
        memory = [Case("rad_memory", "RAD", t) for t in (10, 100)]
        return [hc[0], hc[1], *l2, *maml, *memory]
    l2 = [Case("l2_logreg", m, t, p) for p in (50, 200) for t in (20, 100) for m in ("RAD", "CG")]
    memory = [Case("rad_memory", "RAD", t) for t in (10, 100, 1000)]
    # problem 6: its steps take milliseconds, but compiling it twice (cold, warm) takes minutes
    minibatched = Case("minibatch_cleaning", "RAD", MINIBATCH_CLEANING["steps"])
    return [*hc, *l2, *maml, *memory, minibatched, *first_order_cases()]
