"""blodsl: each problem is a .blo program in bench/programs, compiled as a user would."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import blodsl
from bench import problems
from bench.problems import Case, Unsupported
from blodsl import BloError
from blodsl.runtime import trees

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"


def _call(name: str, params: dict) -> str:
    """An operator with its parameters, as written in a program: CG(k=10, tol=1e-10)."""
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


M = problems.METHODS
PIPELINES = {"CG": _call("CG", M["CG"]), "NS": _call("NS", M["NS"]), "FD": _call("FD", M["FD"]),
             "DI->RAD": _call("DI", M["DI"]) + " -> RAD",
             **{m: _call(m, params) for m, params in problems.FIRST_ORDER_PARAMS.items()}}


def source(case: Case) -> str:
    """The problem's program with this case's pipeline and number of inner steps."""
    name = "hyper_cleaning" if case.problem == "rad_memory" else case.problem
    text = (PROGRAMS / f"{name}.blo").read_text()
    pipeline = PIPELINES.get(case.method, case.method.replace("->", " -> "))
    text = re.sub(r"^hypergradient = .*$", f"hypergradient = {pipeline}", text, flags=re.M)
    return re.sub(r"^(\s*)steps = \d+$", rf"\g<1>steps = {case.steps}", text, flags=re.M)


# programs whose data block draws their data itself (task batches, minibatched datasets)
OWN_DATA = (*problems.META_LEARNING, "minibatch_cleaning")


def _bindings(case: Case, device: str) -> dict:
    """The datasets bound from Python to a program's input() declarations."""
    if case.problem in OWN_DATA:
        return {}
    data = (problems.l2_logreg_data(case.features, device) if case.problem == "l2_logreg"
            else problems.hyper_cleaning_data(device))
    return {"train": (data["train_x"], data["train_y"]), "val": (data["val_x"], data["val_y"])}


class Runner:
    def __init__(self, case: Case, device: str, compile: bool = True):
        meta_learning = case.problem in problems.META_LEARNING
        try:
            self.pipeline = blodsl.compile(source(case), bindings=_bindings(case, device), device=device,
                                           compile=compile)
        except BloError as e:    # the checker refuses this method on this problem, and says why
            error = next(d for d in e.diagnostics if d.severity == "error")
            raise Unsupported(f"blodsl's checker rejects it: {error.message}") from e
        self.names = problems.upper_names(case)
        with torch.no_grad():
            if meta_learning:   # the shared initial meta-model (and meta_sgd's log rates)
                init = problems.maml_init()
                for name, t in self.pipeline.upper.items():
                    variable, weight = name.split(".", 1)
                    if variable == "meta":
                        t.copy_(init[weight])
                    else:
                        t.fill_(problems.META_SGD_INIT)
            else:                           # the lower model starts at zero, as everywhere in the benchmark
                for t in [*self.pipeline.lower.values(), *(self.pipeline.start or {}).get("net", {}).values()]:
                    t.zero_()
                # so do a first-order method's auxiliaries (VSO's z, MESO's theta, PGDO's y_hat), which
                # blodsl starts as copies of the lower model's initial value, as BOAT does
                for t in trees.leaves(self.pipeline.state):
                    t.zero_()

    def hypergradient(self) -> list[torch.Tensor]:
        g = self.pipeline.hypergradient()
        return [g[n] for n in self.names]

    def step(self) -> None:
        self.pipeline.step()

    def lower_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipeline.lower["net.weight"], self.pipeline.lower["net.bias"]

    def sample_weights(self) -> torch.Tensor:
        return self.pipeline.upper["w"]


def make(case: Case, device: str = "cpu") -> Runner:
    return Runner(case, device)
