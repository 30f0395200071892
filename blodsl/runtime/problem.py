"""What a generated module declares, and the base class its `Problem` extends.

A generated module subclasses `Problem`: it loads the data, declares each
level (variables, models, optimiser; the upper one's schedule and clipping) and writes the objectives and metrics as
methods over pytrees `upper`, `lower` and `data`. The engine does the rest.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call


class BuildError(Exception):
    """A program that checks but cannot be built as given (a binding, a file, a device)."""


@dataclass(frozen=True)
class Init:
    """A variable's initial value: zeros, ones, full, normal, uniform, or a bound tensor."""
    kind: str
    shape: tuple[int, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)

    def draw(self, device, dtype, generator: torch.Generator) -> torch.Tensor:
        shape = tuple(self.shape)
        if self.kind == "zeros":
            t = torch.zeros(shape)
        elif self.kind == "ones":
            t = torch.ones(shape)
        elif self.kind == "full":   # in the run's dtype: 0.4 in float32 is not 0.4 in float64
            t = torch.full(shape, float(self.args["value"]), dtype=dtype)
        elif self.kind == "normal":
            t = self.args.get("mean", 0.0) + self.args.get("std", 1.0) * torch.randn(shape, generator=generator)
        elif self.kind == "uniform":
            low, high = self.args.get("low", 0.0), self.args.get("high", 1.0)
            t = low + (high - low) * torch.rand(shape, generator=generator)
        else:
            raise ValueError(self.kind)
        return t.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class Bound:
    """A variable bound from Python (`var x = input()`)."""
    value: torch.Tensor

    def draw(self, device, dtype, generator) -> torch.Tensor:
        return torch.as_tensor(self.value).detach().clone().to(device=device, dtype=dtype)


@dataclass(frozen=True)
class Like:
    """One number per weight of a model (`like(net, value=v)`): per-weight inner settings."""
    model: Callable[[], nn.Module]   # builds the model whose weights it mirrors
    value: float = 0.0

    def draw(self, device, dtype, generator) -> dict[str, torch.Tensor]:
        with torch.device("meta"):    # only the shapes: no memory, and no draw from the models' random stream
            shapes = {k: p.shape for k, p in self.model().named_parameters()}
        return {k: torch.full(shape, float(self.value), device=device, dtype=dtype) for k, shape in shapes.items()}


@dataclass(frozen=True)
class Op:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, **params):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", params)


@dataclass
class Level:
    variables: dict[str, Init | Bound | Like]
    models: dict[str, nn.Module]
    optimizer: Any                   # upper: (torch.optim name, kwargs); lower: an inner optimiser
    scheduler: tuple[str, dict] | None = None   # upper: (torch.optim.lr_scheduler name, kwargs)
    clip: float | None = None        # upper: the largest global norm of the hypergradient
    steps: int = 0
    start: str = "warm"              # warm, reinit, from, or learned (DI's)
    start_from: str | None = None    # the upper name the lower level starts from


class Problem:
    """Base of every generated problem; the engine fills `sizes`, `bindings` and `folder`."""

    source: str = ""
    pipeline_text: str = ""
    pipeline: list[Op] = []
    metrics: dict[str, dict[str, str]] = {}   # name -> datasets swapped for it
    data_used: list[str] = []                 # datasets the objectives read
    lower_data: list[str] = []                # datasets the lower objective reads
    batches: dict[str, int] = {}              # minibatch size of the datasets read in minibatches
    batch_fields: dict[str, list[str]] = {}   # the fields of those the objectives read
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0
    baseline: dict[str, list[float]] | None = None   # {}: the initial upper values
    outer_steps: int = 100
    eval_every: int = 10

    def __init__(self, bindings: dict | None = None, folder: str | Path = "."):
        self.bindings = dict(bindings or {})
        self.folder = Path(folder)
        self.sizes: dict[str, int] = {}
        self.modules: dict[str, nn.Module] = {}
        self._beside: dict[Path, object] = {}     # user modules loaded from the program's folder

    # --- used by generated code --------------------------------------------------------

    def path(self, relative: str) -> Path:
        """A data file named in the program, relative to the program's folder."""
        return self.folder / relative

    def bound(self, name: str, kind: str):
        if name not in self.bindings:
            raise BuildError(f"'{name}' is declared as input(); pass it to blodsl.compile(..., "
                             f"bindings={{'{name}': ...}}) as {kind}")
        value = self.bindings[name]
        if kind == "an nn.Module" and not isinstance(value, nn.Module):
            raise BuildError(f"binding '{name}' must be an nn.Module, not {type(value).__name__}")
        return value

    def imported(self, ref: str) -> Callable:
        """`import "module:name"`: the module is looked for beside the .blo file first (loaded from
        that file, whatever else of the same name was imported before), then on the Python path."""
        module, _, name = ref.partition(":")
        try:
            return getattr(self._module(module), name)
        except (ImportError, AttributeError, OSError) as e:
            raise BuildError(f"cannot import '{ref}' (looked beside the program, in {self.folder.resolve()}, and "
                             f"on the Python path): {e}") from None

    def _module(self, dotted: str):
        beside = self.folder.resolve() / (dotted.replace(".", "/") + ".py")
        if not beside.is_file():
            return importlib.import_module(dotted)
        if beside not in self._beside:
            spec = importlib.util.spec_from_file_location(f"blodsl_user_{len(self._beside)}_{beside.stem}", beside)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            sys.path.insert(0, str(beside.parent))   # for the module's own imports of its neighbours
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(beside.parent))
            self._beside[beside] = module
        return self._beside[beside]

    def model(self, name: str, params: dict) -> Callable:
        """Model `name` applied with the given weights."""
        module = self.modules[name]
        return lambda *inputs: functional_call(module, params, inputs)

    # --- written by the generated subclass ------------------------------------------------

    def load_data(self) -> dict:
        raise NotImplementedError

    def upper_level(self) -> Level:
        raise NotImplementedError

    def lower_level(self) -> Level:
        raise NotImplementedError

    def upper_objective(self, upper, lower, data):
        raise NotImplementedError

    def lower_objective(self, upper, lower, data):
        raise NotImplementedError

    def lower_optimizer_settings(self, upper) -> dict:
        """The inner optimiser's settings learned from the upper variables (none unless written)."""
        return {}


def program_folder(folder: str, module_file: str) -> Path:
    """Where a program's data files are looked for: the .blo file's folder, written
    relative to the generated module's file (or, failing that, to the working directory)."""
    beside = Path(module_file).parent / folder
    return beside if Path(module_file).is_file() and beside.is_dir() else Path(folder)


def source_of(filename: str) -> str:
    """The generated module's own text, from its file or from blodsl.compile's line cache."""
    import linecache

    return "".join(linecache.getlines(filename))
