"""A built pipeline: the state of both levels and the outer loop over it.

The trainer lowers the program's operators to a plan (blodsl.runtime.operators),
builds the plan's method and its kernels, and runs outer steps: it asks the method
for the step's outcome, has the upper update (upper.py) step along its direction, and takes
the method's lower variables and auxiliary state. It knows no operator by name.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.func import vmap

from . import inner, trees
from .data import NO_SIZE_BECAUSE, DataError, TaskSource
from .guard import all_finite, diverged, first_non_finite
from .kernels import Objectives, compile_kernels
from .minibatch import Minibatches, rows
from .operators import Batch, Context, Plan
from .operators import lower as lower_plan
from .operators.trajectory import inner_loop, trajectory_kernels
from .problem import BuildError, Level, Problem
from .upper import UpperUpdate, load_keeping_settings, torch_optimizer

DTYPES = {"float32": torch.float32, "float64": torch.float64}
HEAVY_STEP = 2**20   # data elements an inner step reads beyond which one compiled call's overhead is noise


@dataclass(frozen=True)
class MetricSpec:
    rebind: dict[str, str] = field(default_factory=dict)   # dataset -> dataset swapped in
    datasets: tuple[str, ...] = ()                         # datasets the metric reads
    per_sample: bool = False     # a mean over one dataset's samples: measured a chunk of samples at a time


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BuildError(f"device '{name}' was asked for, but this machine has no CUDA GPU; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BuildError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None


class Pipeline:
    """One program, built: `.step()`, `.run()`, `.hypergradient()`, `.upper`, `.lower`."""

    def __init__(self, problem: Problem, source: str = "", device: str | None = None,
                 dtype: str | None = None, compile: bool = True, seed: int | None = None):
        self.problem, self.source = problem, source
        self.device = resolve_device(device or problem.device)
        self.dtype = DTYPES[dtype or problem.dtype]
        self.seed = problem.seed if seed is None else seed
        torch.manual_seed(self.seed)

        try:
            self.sources = problem.load_data()
        except (BuildError, DataError):
            raise
        except Exception as e:  # a file the loader could not parse
            raise DataError(f"cannot load the data: {type(e).__name__}: {e}") from e
        problem.sizes = Sizes({f"{name}.{k}": v for name, src in self.sources.items() for k, v in src.sizes.items()})
        self.tables = {name: _numbered(src.to(self.device, self.dtype).fields, self.device)
                       for name, src in self.sources.items() if not isinstance(src, TaskSource)}
        self.minibatches = Minibatches(self.tables, _checked_batches(problem.batches, self.tables), self.seed,
                                       self.device, problem.batch_fields)
        upper, lower = problem.upper_level(), problem.lower_level()
        problem.modules = {name: m.to(device=self.device, dtype=self.dtype)
                           for name, m in {**upper.models, **lower.models}.items()}
        self.upper_decl, self.lower_decl = upper, lower
        generator = torch.Generator().manual_seed(self.seed)
        self.x = self._materialise(upper, generator)
        self.y = self._materialise(lower, generator)
        self.initial_upper, self.initial_lower = trees.clone(self.x), trees.clone(self.y)

        self.inner = lower.optimizer
        plan = lower_plan([(op.name, op.params) for op in problem.pipeline], lower.steps, self.inner.lr)
        if self._heavy_steps():   # a CPU step this heavy gains nothing from chunks, and they cost compile time
            plan = dataclasses.replace(plan, chunk=1)
        self.plan = plan
        task_sets = [n for n in problem.data_used if isinstance(self.sources[n], TaskSource)]
        self.tasks = self.sources[task_sets[0]].tasks if task_sets else None
        self.task_dims = self._task_dims(problem.data_used) if self.tasks else None
        self.objectives = Objectives(problem.lower_objective, problem.upper_objective, self.inner,
                                     problem.lower_optimizer_settings)
        self.method = plan.method(plan)
        self.compile = compile
        self.kernels = compile_kernels(self.method.kernels(self.objectives), self.task_dims, compile)
        self.upper_update = UpperUpdate(upper, trees.leaves(self.x), self.method.upper_lr_scale)
        self.start = None
        if plan.learned_start_lr is not None:       # DI learns the lower level's starting point
            self.start = trees.clone(self.y)
            name, args = upper.optimizer
            self.start_optimizer = torch_optimizer((name, {**args, "lr": plan.learned_start_lr}),
                                                   trees.leaves(self.start))
        self.state = self.method.init_state(self.y)
        self.steps_done = 0

    # --- building -----------------------------------------------------------------------

    def _materialise(self, level: Level, generator: torch.Generator) -> dict:
        """The level's variables and model weights as tensors on the run's device and dtype."""
        values = {name: init.draw(self.device, self.dtype, generator) for name, init in level.variables.items()}
        for name, module in level.models.items():
            values[name] = {k: p.detach().to(self.device, self.dtype).clone() for k, p in module.named_parameters()}
        return values

    def _step_seed(self) -> int:
        """A seed of this run's current outer step, for what the step draws at random."""
        return self.seed * 1_000_003 + self.steps_done

    def _heavy_steps(self) -> bool:
        """Whether one inner step costs far more than a compiled call (on a CPU; a GPU step is
        launch-bound, so there chunks always pay)."""
        if self.device.type != "cpu":
            return False
        fields = [t for data in self._data(self.problem.lower_data, 0).values() for t in data.values()]
        return sum(t.numel() for t in fields if torch.is_tensor(t)) >= HEAVY_STEP

    def _task_dims(self, names):
        return {n: {f: 0 if isinstance(self.sources[n], TaskSource) else None for f in self._fields(n, 0)}
                for n in names}

    def _steps_data(self, step: int, steps: int):
        """(t0, c) -> the minibatches inner steps t0 .. t0 + c - 1 of outer step `step` read; None
        when the lower objective reads no dataset in minibatches."""
        names = [n for n in self.problem.lower_data if n in self.problem.batches]
        if not names:
            return None
        return lambda t0, c: self.minibatches.step_indices(names, step, steps, t0, c)

    def _draws(self, step: int):
        """i -> the i-th fresh minibatch of outer step `step` (a stochastic solver's oracle calls), each
        from a stream of its own; None when no dataset is read in minibatches."""
        if not self.problem.batches:
            return None
        names = self.problem.data_used
        return lambda i: self._data(names, step, stream=f"draw:{i}")

    def _fields(self, name: str, step: int) -> dict:
        src = self.sources[name]
        if isinstance(src, TaskSource):
            return src.batch(step).to(self.device, self.dtype).fields
        return self.tables[name]

    def _data(self, names, step: int, stream: str = "outer") -> dict:
        """What outer step `step` reads: task batches, one minibatch of each dataset read in
        minibatches (from `stream`: the outer step's own, or a solver's draw), the other datasets whole."""
        read = self.minibatches.read([n for n in names if n in self.tables], stream, step)
        return {n: read[n] if n in read else self._fields(n, step) for n in names}

    def _start_point(self, x, tasks: int | None = None):
        """y0 for this outer step, as the lower block's `start` says."""
        lower = self.lower_decl
        if self.start is not None:
            return self.start
        if lower.start == "from":
            (name,) = list(self.y)
            y0 = {name: x[lower.start_from]}
            return trees.tree_map(lambda t: t.expand(tasks, *t.shape), y0) if tasks else y0
        if lower.start == "reinit":
            # drawn from this outer step's own seed: hypergradient() then step() see the same start,
            # and a run resumed from a state_dict draws what the original run drew
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._step_seed())
                fresh = Level(lower.variables, {n: _reset(m) for n, m in lower.models.items()}, None)
                return self._materialise(fresh, torch.Generator().manual_seed(self._step_seed()))
        return self.y

    # --- the public interface ------------------------------------------------------------

    @property
    def upper(self) -> dict[str, torch.Tensor]:
        return trees.flat_names(self.x)

    @property
    def lower(self) -> dict[str, torch.Tensor]:
        return trees.flat_names(self.y)

    def _context(self) -> Context:
        return Context(self.kernels, self.objectives.optimizer_at(self.x), Batch(self.tasks), seed=self._step_seed(),
                       lower_size=sum(t.numel() for t in trees.leaves(self.initial_lower)),
                       steps_data=self._steps_data(self.steps_done, self.plan.steps),
                       draw=self._draws(self.steps_done))

    def _outcome(self, ctx: Context, d, y0):
        out = self.method.outcome(ctx, self.x, y0, self.state, d, self.steps_done)
        if self.lower_decl.start == "from" and out.start_grad is not None:
            # the upper model is the lower level's start, so dF/dy0 is part of its gradient
            (name,) = list(self.y)
            source = self.lower_decl.start_from
            through = ctx.batch.total(out.start_grad[name])   # the tasks' shares of the mean
            out.upper_grad[source] = trees.add(out.upper_grad[source], through)
        return out

    def hypergradient(self) -> dict[str, torch.Tensor]:
        """dF/dx at the current state (the direction the upper update takes, before any clipping), by
        name; changes nothing."""
        d = self._data(self.problem.data_used, self.steps_done)
        return trees.flat_names(self._outcome(self._context(), d, self._start_point(self.x, self.tasks)).upper_grad)

    def step(self) -> dict[str, float]:
        """One outer iteration; returns the objectives it saw. Raises Diverged at the first NaN or
        infinity: nothing of the step is kept if its outcome is not finite; if the upper update
        itself overflows, the upper variables already hold it (a saved state is the way back)."""
        ctx, d = self._context(), self._data(self.problem.data_used, self.steps_done)
        y0 = self._start_point(self.x, self.tasks)
        out = self._outcome(ctx, d, y0)
        checked = [("lower", out.lower), ("lower_objective", out.lower_loss), ("upper_objective", out.upper_loss),
                   ("hypergradient", out.upper_grad), ("state", out.state)]
        # in float64, so that a large but finite direction does not overflow its own norm
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in trees.leaves(out.upper_grad)))
        finite, upper_loss, lower_loss, norm = torch.stack(
            [all_finite(checked).double(), out.upper_loss.double(), out.lower_loss.double(), norm]).tolist()
        if not finite:     # one host sync above; on this rare path, find which value it was
            self._diverged(ctx, d, y0, checked, self.upper_update.optimizer.param_groups[0]["lr"]
                           * self.method.upper_lr_scale(self.steps_done))
        self.upper_update.step(out.upper_grad, self.steps_done, out.upper_loss)
        if self.start is not None:
            for p, g in zip(trees.leaves(self.start), trees.leaves(out.start_grad)):
                p.grad = g
            self.start_optimizer.step()
        y = self.method.after_upper_step(ctx, self.x, out, d, self.steps_done)
        moved = [("upper", self.x), ("start", self.start or {})] + ([("lower", y)] if y is not out.lower else [])
        if not bool(all_finite(moved)):
            self._diverged(ctx, d, y0, moved, self.upper_update.lr)
        self.state = trees.detach(out.state)
        self.y = trees.detach(y)
        self.steps_done += 1
        return {"step": self.steps_done, "upper_objective": upper_loss, "lower_objective": lower_loss,
                "hypergradient_norm": norm, **self.upper_update.record()}

    def _diverged(self, ctx: Context, d, y0, values: list[tuple[str, object]], upper_lr: float):
        """Raises Diverged for the first value that is not finite, saying where it arose and what to change."""
        quantity, kind = first_non_finite(values)
        inner_step = self.method.first_non_finite_step(ctx, self.x, y0, d) if quantity.startswith("lower") else None
        name, _ = self.upper_decl.optimizer
        hint = (f"lower the learning rates involved (upper {name} lr={upper_lr:g}, inner "
                f"{type(self.inner).__name__} lr={_rate_text(ctx.optimizer.lr)})")
        raise diverged(quantity, kind, self.steps_done + 1, hint, inner_step, method=self.method)

    def evaluates_at(self, k: int, total: int) -> bool:
        """Whether the metrics are measured after outer step k of a run of `total` steps."""
        return k % self.problem.eval_every == 0 or k == total

    def evaluate(self, upper: dict | None = None, lower: dict | None = None) -> dict[str, object]:
        """The program's metrics at the current state (or at the given variables)."""
        x = self.x if upper is None else upper
        y = self.y if lower is None else lower
        return {name: _plain(self._measure(getattr(self.problem, f"metric_{name}"), x, y, spec))
                for name, spec in self.problem.metrics.items()}

    def _measure(self, fn, x, y, spec: MetricSpec):
        """fn(x, y, data) on the metric's data (rebound datasets swapped in). The lower level
        is trained again first when it starts from the upper level or its data was swapped."""
        rebind = spec.rebind
        readapt = self.lower_decl.start == "from" or bool(set(rebind) & set(self.problem.lower_data))
        needed = set(spec.datasets) | (set(self.problem.lower_data) if readapt else set())
        data = {n: self._fields(rebind.get(n, n), 0) for n in needed}
        with self._sizes_rebound(rebind):
            if spec.per_sample and not readapt:
                return _in_chunks(fn, x, y, data)
            if readapt:
                y = self._adapt(x, data, y, rebind)
            tasks = [n for n in needed if isinstance(self.sources[rebind.get(n, n)], TaskSource)]
            if not (readapt and tasks):
                return fn(x, y, data)
            dims = {n: {f: 0 if n in tasks else None for f in data[n]} for n in data}
            return vmap(fn, in_dims=(None, 0, dims))(x, y, data).mean(0)

    def _adapt(self, x, data, y, rebind):
        """The lower level trained from its start on `data` (eagerly: evaluation sizes vary)."""
        lower_data = self.problem.lower_data
        tasks = [n for n in lower_data if isinstance(self.sources[rebind.get(n, n)], TaskSource)]
        batch = len(next(iter(data[tasks[0]].values()))) if tasks else None
        dims = {n: {f: 0 if n in tasks else None for f in data[n]} for n in lower_data}
        kernels, lib, steps = self._lower_training(1, dims if batch else None, compile=False)
        if self.lower_decl.start != "warm":
            y = self._start_point(x, batch)
        return inner_loop(kernels, lib.optimizer_at(x), x, y, {n: data[n] for n in lower_data}, steps, 1, batch)

    def _lower_training(self, chunk: int, task_dims=None, compile: bool = False):
        """(kernels, objectives, steps per outer step): the lower level trained with the upper one held
        still, as the method moves it, for baselines and re-adapting metrics. The pipeline's own chunk
        kernel serves when it has one (GDA's mixing is off at a = 0)."""
        steps, lr = self.method.adaptation(self.plan)
        chunk = min(chunk, steps)
        if lr is None and chunk == self.plan.chunk and task_dims is self.task_dims and hasattr(self.kernels, "chunk"):
            return self.kernels, self.objectives, steps
        if lr is None:
            lib = self.objectives
        else:
            lib = Objectives(self.problem.lower_objective, self.problem.upper_objective, inner.SGD(lr=lr))
        kernels = trajectory_kernels(lib, Plan(steps=steps, chunk=chunk), reverse=False)
        return compile_kernels(kernels, task_dims, compile), lib, steps

    @contextlib.contextmanager
    def _sizes_rebound(self, rebind: dict[str, str]):
        """`val.n` means the swapped-in dataset's n while a `with val = test` metric runs."""
        sizes = self.problem.sizes
        saved = dict(sizes)
        for old, new in rebind.items():
            sizes.update({f"{old}.{k}": v for k, v in self.sources[new].sizes.items()})
        try:
            yield
        finally:
            sizes.clear()
            sizes.update(saved)

    def run(self, outer_steps: int | None = None, callback: Callable[[dict], None] | None = None) -> dict:
        """`outer_steps` outer iterations; metrics every eval_every steps and at the end."""
        total = self.problem.outer_steps if outer_steps is None else outer_steps
        record: dict = {}
        for i in range(total):
            record = self.step()
            if self.evaluates_at(i + 1, total):
                record.update(self.evaluate())
            if callback is not None:
                callback(record)
        return record

    def compare(self) -> dict | None:
        """The program's `baseline`: metrics with the upper level held fixed (the best grid
        point by upper objective, with the values it held), or None if none is declared."""
        grid = self.problem.baseline
        if grid is None:
            return None
        points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
        results = [{**self.baseline(point), **({"held": point} if point else {})} for point in points]
        return min(results, key=lambda r: r["upper_objective"])

    def baseline(self, upper: dict | None = None) -> dict:
        """Metrics of the lower level trained as long, with the upper variables held fixed
        (at their initial values, or at `upper`): what the program achieves without its upper level."""
        x = trees.clone(self.initial_upper)
        for name, value in (upper or {}).items():
            x[name] = torch.full_like(x[name], float(value)) if not torch.is_tensor(value) else value.to(x[name])
        y = trees.clone(self.initial_lower)
        if self.lower_decl.start != "from":
            # as many inner loops as the run made (or will make)
            rounds = (self.steps_done or self.problem.outer_steps) if self.lower_decl.start == "warm" else 1
            kernels, lib, steps = self._lower_training(self.plan.chunk, self.task_dims, self.compile)
            for r in range(rounds):
                y = inner_loop(kernels, lib.optimizer_at(x), x, y, self._data(self.problem.data_used, r), steps,
                               min(self.plan.chunk, steps), steps_data=self._steps_data(r, steps))
        y = trees.detach(y)
        return {**self.evaluate(upper=x, lower=y), "upper_objective": self.upper_objective(x, y)}

    def upper_objective(self, upper: dict | None = None, lower: dict | None = None) -> float:
        """The upper objective at the current state (or at the given variables), measured as a
        baseline's is: on the first batch of a task source, after adapting where the lower level
        starts from the upper one. A training step's value is taken on that step's batch instead."""
        whole = MetricSpec(datasets=tuple(self.problem.data_used))
        return _plain(self._measure(self.problem.upper_objective, self.x if upper is None else upper,
                                    self.y if lower is None else lower, whole))

    # --- saving and restoring ----------------------------------------------------------------

    def state_dict(self) -> dict:
        state = {"upper": trees.clone(self.upper), "lower": trees.clone(self.lower),
                 **self.upper_update.state_dict(), "steps_done": self.steps_done, "method": trees.clone(self.state)}
        if self.start is not None:
            state["start"] = trees.clone(trees.flat_names(self.start))
            state["start_optimizer"] = copy.deepcopy(self.start_optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in ((self.upper, state["upper"]), (self.lower, state["lower"]),
                            (self.state, state.get("method", {}))):
            missing = set(mine) ^ set(saved)
            if missing:
                raise BuildError(f"the saved state does not match this program: {', '.join(sorted(missing))}")
        self.upper_update.load_state_dict(state)   # first: it checks the saved schedule against the program's
        with torch.no_grad():
            for name, t in self.upper.items():   # in place: the upper optimiser holds these tensors
                t.copy_(state["upper"][name])
        # the lower level may carry a task dimension after a step: take it as saved
        self.y = trees.by_name(self.y, {k: v.to(self.device, self.dtype) for k, v in state["lower"].items()})
        self.state = trees.tree_map(lambda t: t.to(self.device, self.dtype), state.get("method", {}))
        if self.start is not None and "start" in state:
            with torch.no_grad():
                for name, t in trees.flat_names(self.start).items():
                    t.copy_(state["start"][name])
            load_keeping_settings(self.start_optimizer, state["start_optimizer"])
        self.steps_done = state["steps_done"]


class Sizes(dict):
    """Dataset sizes by "dataset.size"; a size the data does not have is a data error."""

    def __missing__(self, key: str):
        dataset, _, size = key.partition(".")
        why = NO_SIZE_BECAUSE.get(size, "")
        raise DataError(f"dataset '{dataset}' has no size '{size}'{why}")


def _reset(module: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of the module with freshly drawn weights (from the CPU generator)."""
    fresh = copy.deepcopy(module).cpu()
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


def _plain(value):
    value = value.detach().cpu() if torch.is_tensor(value) else value
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else [round(v, 6) for v in value.tolist()]
    return value


def _rate_text(lr) -> str:
    """An inner learning rate as a message shows it: a constant, a learned value, or per weight."""
    if isinstance(lr, dict):
        return "learned per weight"
    return f"{float(lr):g}" + (" (learned)" if torch.is_tensor(lr) else "")


def _checked_batches(batches: dict[str, int], tables: dict) -> dict[str, int]:
    """The minibatch sizes, each no larger than its dataset (a file's size is known only now)."""
    for name, size in batches.items():
        n = rows(tables[name])
        if size > n:
            raise DataError(f"dataset '{name}' has {n} samples, fewer than its batch={size}")
    return batches


def _numbered(fields: dict, device) -> dict:
    """A table with `index`, each sample's number: a minibatch's `train.index` says which samples it holds."""
    return {**fields, "index": torch.arange(rows(fields), device=device)}


# Samples a metric reads at once: a 60,000-sample test set is measured without 60,000 samples'
# activations in memory.
METRIC_CHUNK = 8192


def _in_chunks(fn, x, y, data: dict):
    """A metric that is a mean over one dataset's samples, a chunk of rows at a time."""
    ((name, fields),) = data.items()
    n = rows(fields)
    if n <= METRIC_CHUNK:
        return fn(x, y, data)
    total = 0.0
    for start in range(0, n, METRIC_CHUNK):
        chunk = {f: t[start:start + METRIC_CHUNK] if torch.is_tensor(t) and t.dim() > 0 else t
                 for f, t in fields.items()}
        total = total + fn(x, y, {name: chunk}) * min(METRIC_CHUNK, n - start)
    return total / n
