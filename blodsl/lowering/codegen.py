"""Lower a checked program to a readable Python module (`blodsl compile --emit py`).

The module imports torch and blodsl's runtime only. Its `Problem` class holds
the data, the two levels and the objectives as plain methods over pytrees;
each statement carries a `# prog.blo:LINE` comment naming where it came from.
`build()` turns it into a runtime Pipeline.
"""

from __future__ import annotations

import json
import keyword
import math
import os
from pathlib import Path

from .. import __version__, ir
from ..catalogue.builtins import INDEX

# Python's precedence for the operators the language shares with it.
_PRECEDENCE = {"compare": 1, "+": 2, "-": 2, "*": 3, "/": 3, "@": 3, "%": 3, "unary": 4, "**": 5}
_RESERVED = set(keyword.kwlist) | {"self", "fn", "rt", "torch", "upper", "lower", "data", "Problem", "build"}


def lit(v) -> str:
    """A constant as Python source, strings in double quotes."""
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        inner = ", ".join(lit(x) for x in v)
        return f"({inner},)" if isinstance(v, tuple) and len(v) == 1 else f"[{inner}]" if isinstance(v, list) else f"({inner})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{lit(k)}: {lit(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float) and not math.isfinite(v):
        return f'float("{v}")'
    return repr(v)


def _python_names(names: set[str]) -> dict[str, str]:
    """Each program name as a legal Python name that shadows nothing the module uses
    and collides with no other program name."""
    out = {}
    for name in sorted(names):
        python = name
        while python in _RESERVED or (python != name and python in names) or python in out.values():
            python += "_"
        out[name] = python
    return out


class Emitter:
    def __init__(self, program: ir.Program, module_dir: str | Path | None = None):
        self.p = program
        self.file = Path(program.path).name
        self.lines: list[str] = []
        # the .blo file's folder, as seen from where the module will live (default: here)
        folder = Path(program.path).parent
        self.data_folder = Path(os.path.relpath(folder, module_dir)).as_posix() if module_dir else folder.as_posix()
        names = {d.name for d in program.datasets}
        for level in (program.upper, program.lower):
            names |= {d.name for d in level.variables + level.models}
        self.names = _python_names(names)

    def at(self, line: int | None) -> str:
        return f"  # {self.file}:{line}" if line else ""

    def emit(self, text: str = "", indent: int = 0):
        self.lines.append("    " * indent + text if text else "")

    # --- expressions ----------------------------------------------------------------------

    def expr(self, e, parent: int = 0) -> str:
        match e:
            case ir.Const(value=v):
                return lit(v)
            case ir.DataRef(dataset=ds, field=f):
                return f'{self.local(ds)}["{f}"]'
            case ir.SizeRef(dataset=ds, size=s):
                return f'self.sizes["{ds}.{s}"]'
            case ir.VarRef(name=n):
                return self.local(n)
            case ir.ModelRef(level=level, name=n):
                return f'{level}["{n}"]'
            case ir.ParamRef(level=level, model=m, param=name):
                return f'{level}["{m}"]["{name}"]'
            case ir.Apply(model=m, args=args):
                return f"{self.local(m)}({', '.join(self.expr(a) for a in args)})"
            case ir.Call(fn=name, args=args, kwargs=kw):
                return f"fn.{name}({self.arguments(args, kw)})"
            case ir.UserCall(ref=ref, args=args, kwargs=kw):
                return f'self.imported("{ref}")({self.arguments(args, kw)})'
            case ir.ListOf(items=items):
                return f"[{', '.join(self.expr(i) for i in items)}]"
            case ir.Index(obj=obj, index=index):
                return f"{self.expr(obj, 9)}[{self.expr(index)}]"
            case ir.Unary(op=op, operand=operand):
                return self.wrap(f"{op}{self.expr(operand, _PRECEDENCE['unary'])}", _PRECEDENCE["unary"], parent)
            case ir.BinOp(op=op, left=left, right=right) | ir.Compare(op=op, left=left, right=right):
                mine = _PRECEDENCE["compare" if isinstance(e, ir.Compare) else op]
                # ** groups to the right, everything else to the left; comparisons do not
                # chain as in Python, so a compared comparison keeps its parentheses
                if isinstance(e, ir.Compare):
                    left_p = right_p = mine + 1
                else:
                    left_p, right_p = (mine + 1, mine) if op == "**" else (mine, mine + 1)
                text = f"{self.expr(left, left_p)} {op} {self.expr(right, right_p)}"
                return self.wrap(text, mine, parent)
        raise ValueError(f"cannot emit {e!r}")

    def local(self, name: str) -> str:
        return self.names[name]

    @staticmethod
    def wrap(text: str, mine: int, parent: int) -> str:
        return f"({text})" if mine < parent else text

    def arguments(self, args, kwargs) -> str:
        return ", ".join([self.expr(a) for a in args] + self.keywords(kwargs, self.expr))

    @staticmethod
    def keywords(kwargs: dict, render) -> list[str]:
        """`k=v` for each keyword argument; Python's own keywords (lambda=0.1) go through **{...}."""
        named = [f"{k}={render(v)}" for k, v in kwargs.items() if not keyword.iskeyword(k)]
        spelled = {k: v for k, v in kwargs.items() if keyword.iskeyword(k)}
        if spelled:
            named.append("**{" + ", ".join(f"{lit(k)}: {render(v)}" for k, v in spelled.items()) + "}")
        return named

    def value(self, a) -> str:
        """A constant argument of a declaration (sizes, layers, lists)."""
        if isinstance(a, ir.SizeRef):
            return self.expr(a)
        if isinstance(a, ir.LayerSpec):
            return self.layer(a)
        if isinstance(a, list):
            return f"[{', '.join(self.value(v) for v in a)}]"
        return lit(a)

    def layer(self, spec: ir.LayerSpec, name: str | None = None) -> str:
        args = ", ".join([self.value(a) for a in spec.args] + [f"{k}={self.value(v)}" for k, v in spec.kwargs.items()])
        if spec.kind == "input":
            return f'self.bound("{name}", "an nn.Module")'
        if spec.kind == "user":
            return f"self.imported({lit(spec.name)})({args})"
        return f"rt.layers.{spec.name}({args})"

    # --- the module -------------------------------------------------------------------------

    def module(self) -> str:
        p = self.p
        self.emit(f'"""{self.file}, compiled by blodsl {__version__}: `{p.hypergradient.text}`.')
        self.emit()
        self.emit(f"Regenerate with `blodsl compile {json.dumps(p.path)[1:-1]} -o FILE`; edits here are lost.")
        self.emit('"""')
        self.emit()
        self.emit("import torch")
        self.emit()
        self.emit("from blodsl import runtime as rt")
        self.emit("from blodsl.runtime import functions as fn")
        self.emit()
        self.emit(f"DATA_FOLDER = {lit(self.data_folder)}  # data files are named relative to it")
        self.emit()
        self.emit()
        self.emit("class Problem(rt.Problem):")
        self.settings()
        self.load_data()
        self.level(p.upper)
        self.level(p.lower)
        self.objective("upper_objective", p.upper.objective.expr, p.upper.objective.text, p.upper.objective.line)
        self.objective("lower_objective", p.lower.objective.expr, p.lower.objective.text, p.lower.objective.line)
        if p.lower.optimizer.learned:
            self.optimizer_settings(p.lower.optimizer)
        for m in p.run.metrics:
            self.objective(f"metric_{m.name}", m.expr, m.text, m.line)
        self.emit()
        self.emit()
        self.emit("def build(bindings=None, device=None, dtype=None, compile=True, seed=None, folder=None):")
        self.emit(f'"""The pipeline of {self.file}: `.run()`, `.step()`, `.hypergradient()`."""', 1)
        self.emit("folder = rt.program_folder(DATA_FOLDER, __file__) if folder is None else folder", 1)
        self.emit("return rt.Pipeline(Problem(bindings, folder), source=rt.source_of(__file__), device=device,", 1)
        self.emit("                   dtype=dtype, compile=compile, seed=seed)", 1)
        return "\n".join(self.lines) + "\n"

    def settings(self):
        p, run = self.p, self.p.run
        self.emit(f"source = {lit(self.file)}", 1)
        ops = ", ".join(f"rt.Op({', '.join([lit(o.name)] + self.keywords(o.params, self.value))})"
                        for o in p.hypergradient.operators)
        self.emit(f"pipeline = [{ops}]{self.at(p.hypergradient.line)}", 1)
        used = sorted(_datasets(p.upper.objective.expr) | _datasets(p.lower.objective.expr))
        self.emit(f"data_used = {lit(used)}", 1)
        self.emit(f"lower_data = {lit(sorted(_datasets(p.lower.objective.expr)))}", 1)
        batches = {d.name: d.batch for d in p.datasets if d.batch is not None}
        if batches:
            self.emit(f"batches = {lit(batches)}  # samples per read of these datasets in an objective", 1)
            read = {}
            for e in ir.nodes([p.upper.objective.expr, p.lower.objective.expr]):
                if isinstance(e, ir.DataRef) and e.dataset in batches:
                    read.setdefault(e.dataset, set()).add(e.field)
            self.emit(f"batch_fields = {lit({n: sorted(f) for n, f in sorted(read.items())})}  # what they read", 1)
        self.emit("metrics = {", 1)
        for m in run.metrics:
            reads = sorted(_datasets(m.expr))
            chunked = ", per_sample=True" if _mean_over_samples(m.expr) else ""
            self.emit(f'"{m.name}": rt.MetricSpec(rebind={lit(m.rebind)}, datasets={lit(tuple(reads))}{chunked}),'
                      f'{self.at(m.line)}', 2)
        self.emit("}", 1)
        self.emit(f"outer_steps, eval_every, seed = {run.outer_steps}, {run.eval_every}, {run.seed}", 1)
        baseline = None if run.baseline is None else run.baseline.grid
        self.emit(f"baseline = {lit(baseline)}  # upper values held fixed for comparison ({{}}: initial)", 1)
        self.emit(f"device, dtype = {lit(run.device)}, {lit(run.dtype)}", 1)

    def load_data(self):
        self.emit()
        self.emit("def load_data(self):", 1)
        calls: dict[int, list[ir.Dataset]] = {}
        for ds in self.p.datasets:
            calls.setdefault(ds.line, []).append(ds)
        names = []
        for line, group in calls.items():
            first = group[0]
            targets = ", ".join(self.local(d.name) for d in group)
            names += [d.name for d in group]
            if first.source == "input":
                bound = [f for f in first.fields if f != INDEX]   # the runtime numbers the samples
                said = "".join(f", {k}={lit(v)}" for k, v in first.args.items() if k != "fields")
                call = (f'rt.data.bound("{first.name}", self.bound("{first.name}", "a dataset"), '
                        f'{lit(bound)}{said})')
            else:
                args = dict(first.args)
                if first.source != "sinusoid" and "split" not in args:
                    args["split"] = [1.0]
                    targets = f"[{targets}]"
                elif first.source != "sinusoid" and len(group) == 1:
                    targets = f"[{targets}]"
                parts = [f"self.path({lit(first.path)})"] if first.path else []
                parts += [f"{k}={self.value(v)}" for k, v in args.items()]
                call = f"rt.data.{first.source}({', '.join(parts)})"
            self.emit(f"{targets} = {call}{self.at(line)}", 2)
        self.emit(f"return {{{', '.join(f'{lit(n)}: {self.local(n)}' for n in names)}}}", 2)

    def level(self, decl: ir.LevelDecl):
        self.emit()
        self.emit(f"def {decl.level}_level(self):", 1)
        self.emit(f"return rt.Level({self.at(decl.line)}", 2)
        self.open_dict("variables", decl.variables)
        for v in decl.variables:
            if v.init == "input":
                init = f'rt.Bound(self.bound("{v.name}", "a tensor"))'
            elif v.init == "like":
                model = self.declared_anywhere(v.args["model"])
                init = f"rt.Like(lambda: {self.layer(model.spec, model.name)}, value={lit(v.args['value'])})"
            else:
                shape = "".join(f"{self.value(d)}, " for d in v.shape).rstrip(" ")
                args = f", {lit(v.args)}" if v.args else ""
                init = f"rt.Init({lit(v.init)}, ({shape}){args})"
            self.emit(f'"{v.name}": {init},{self.at(v.line)}', 4)
        self.close_dict(decl.variables)
        self.open_dict("models", decl.models)
        for m in decl.models:
            self.emit(f'"{m.name}": {self.layer(m.spec, m.name)},{self.at(m.line)}', 4)
        self.close_dict(decl.models)
        opt = decl.optimizer
        if decl.level == "upper":
            self.emit(f"optimizer={self.torch_class(opt)},{self.at(opt.line)}", 3)
            if decl.scheduler is not None:
                self.emit(f"scheduler={self.torch_class(decl.scheduler)},{self.at(decl.scheduler.line)}", 3)
            if decl.clip is not None:
                self.emit(f"clip={lit(decl.clip.norm)},{self.at(decl.clip.line)}", 3)
        else:
            args = ", ".join(f"{k}={self.value(v)}" for k, v in opt.args.items())
            self.emit(f"optimizer=rt.inner.{opt.name}({args}),{self.at(opt.line)}", 3)
            start = decl.start
            source = f", start_from={lit(start.source)}" if start.source else ""
            self.emit(f"steps={decl.steps}, start={lit(start.mode)}{source},{self.at(start.line)}", 3)
        self.emit(")", 2)

    def torch_class(self, call: ir.Optimizer | ir.Scheduler) -> str:
        """("Adam", {"lr": 0.1}): a torch class by name and its keyword arguments, built by the runtime."""
        return f"({lit(call.name)}, {{{', '.join(f'{lit(k)}: {self.value(v)}' for k, v in call.args.items())}}})"

    def open_dict(self, name: str, items: list):
        self.emit(f"{name}={{" + ("" if items else "},"), 3)

    def close_dict(self, items: list):
        if items:
            self.emit("},", 3)

    def objective(self, name: str, expr, text: str, line: int):
        self.emit()
        self.emit(f"def {name}(self, upper, lower, data):", 1)
        self.emit(f"# {self.file}:{line}  {text}", 2)
        for n in sorted(_datasets(expr)):
            self.emit(f'{self.local(n)} = data["{n}"]', 2)
        for level, n in sorted(r for r in ir.references(expr) if r[0] != "data"):
            decl = self.declared(level, n)
            if isinstance(decl, ir.Model):
                if any(isinstance(e, ir.Apply) and e.model == n for e in ir.nodes(expr)):
                    self.emit(f'{self.local(n)} = self.model("{n}", {level}["{n}"])', 2)
            else:
                self.emit(f'{self.local(n)} = {level}["{n}"]', 2)
        self.emit(f"return {self.expr(expr)}", 2)

    def optimizer_settings(self, optimizer: ir.Optimizer):
        """The inner optimiser's learned settings, from the upper variables, at every inner step."""
        learned = optimizer.learned
        self.emit()
        self.emit("def lower_optimizer_settings(self, upper):", 1)
        written = ", ".join(f"{k}={s.text}" for k, s in learned.items())
        self.emit(f"# {self.file}:{optimizer.line}  {written}", 2)
        for _, n in sorted(set().union(*(ir.references(s.expr) for s in learned.values()))):
            self.emit(f'{self.local(n)} = upper["{n}"]', 2)
        self.emit(f"return {{{', '.join(f'{lit(k)}: {self.setting(s.expr)}' for k, s in learned.items())}}}", 2)

    def setting(self, e) -> str:
        """A learned setting's value; one rate per weight covers the lower level's one model."""
        weights = [n for level, n in ir.references(e) if self.declared(level, n).init == "like"]
        if not weights:
            return self.expr(e)
        rates, name = self.local(weights[0]), lit(self.p.lower.models[0].name)
        if isinstance(e, ir.VarRef):
            return f"{{{name}: {rates}}}"
        return f"{{{name}: rt.trees.tree_map(lambda {rates}: {self.expr(e)}, {rates})}}"

    def declared_anywhere(self, name: str):
        return next(d for level in (self.p.upper, self.p.lower) for d in level.variables + level.models
                    if d.name == name)

    def declared(self, level: str, name: str):
        decl = self.p.upper if level == "upper" else self.p.lower
        return next(d for d in decl.variables + decl.models if d.name == name)


# Metrics that are a mean over samples of a per-sample value, and the functions that reduce over samples.
_MEANS = {"accuracy", "mse", "mae", "cross_entropy", "binary_cross_entropy", "mean"}
_REDUCING = _MEANS | {"sum", "sqnorm", "norm", "sqdist", "f1", "precision", "recall"}


def _mean_over_samples(expr) -> bool:
    """Whether a metric is the mean over one dataset's samples of what each sample alone gives, so
    that it can be measured a chunk of samples at a time and the chunks' means weighted."""
    if not (isinstance(expr, ir.Call) and expr.fn in _MEANS and len(_datasets(expr)) == 1):
        return False
    if expr.kwargs.get("reduction", "mean") != "mean":
        return False
    inner = [n for a in expr.args for n in ir.nodes(a)]
    return not any(isinstance(n, ir.Call) and n.fn in _REDUCING for n in inner) and not any(
        isinstance(n, (ir.VarRef, ir.ParamRef, ir.SizeRef)) for n in inner)


def _datasets(expr) -> set[str]:
    """Datasets whose tensors an expression reads (sizes are constants, not data)."""
    return {e.dataset for e in ir.nodes(expr) if isinstance(e, ir.DataRef)}


def generate(program: ir.Program, module_dir: str | Path | None = None) -> str:
    """The module's text; `module_dir` is where it will be written (data paths follow)."""
    return Emitter(program, module_dir).module()
