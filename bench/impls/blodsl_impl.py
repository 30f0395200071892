"""blodsl: each problem is a .blo program in bench/programs, compiled as a user would."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import blodsl
from bench import problems
from bench.problems import Case

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"
PIPELINES = {"CG": "CG(k={k}, tol={tol})".format(**problems.METHODS["CG"]), "NS": "NS(k={k})".format(**problems.METHODS["NS"]),
             "FD": "FD(r={r})".format(**problems.METHODS["FD"]), "DI->RAD": "DI(lr={lr}) -> RAD".format(**problems.METHODS["DI"])}


def source(case: Case) -> str:
    """The problem's program with this case's pipeline and number of inner steps."""
    name = "hyper_cleaning" if case.problem == "rad_memory" else case.problem
    text = (PROGRAMS / f"{name}.blo").read_text()
    pipeline = PIPELINES.get(case.method, case.method.replace("->", " -> "))
    text = re.sub(r"^hypergradient = .*$", f"hypergradient = {pipeline}", text, flags=re.M)
    return re.sub(r"^(\s*)steps = \d+$", rf"\g<1>steps = {case.steps}", text, flags=re.M)


class Runner:
    def __init__(self, case: Case, device: str, compile: bool = True):
        if case.problem == "maml":
            bindings = {}
        else:
            data = (problems.l2_logreg_data(case.features, device) if case.problem == "l2_logreg"
                    else problems.hyper_cleaning_data(device))
            bindings = {"train": (data["train_x"], data["train_y"]), "val": (data["val_x"], data["val_y"])}
        self.pipeline = blodsl.compile(source(case), bindings=bindings, device=device, compile=compile)
        self.names = problems.upper_names(case)
        with torch.no_grad():
            if case.problem == "maml":      # the shared initial meta-model
                init = problems.maml_init()
                for name, t in self.pipeline.upper.items():
                    t.copy_(init[name.split(".", 1)[1]])
            else:                           # the lower model starts at zero, as everywhere in the benchmark
                for t in [*self.pipeline.lower.values(), *(self.pipeline.start or {}).get("net", {}).values()]:
                    t.zero_()

    def hypergradient(self) -> list[torch.Tensor]:
        g = self.pipeline.hypergradient()
        prefix = "meta." if self.names[0][0].isdigit() else ""
        return [g[prefix + n] for n in self.names]

    def step(self) -> None:
        self.pipeline.step()


def make(case: Case, device: str = "cpu") -> Runner:
    return Runner(case, device)
