"""Syntax tree -> checked program (blodsl.ir), or every problem found.

The resolver declares every name (datasets, variables, models, imports),
reads the blocks and their settings, and hands the rest to its parts:
expressions (blodsl.expressions), the pipeline (blodsl.pipeline) and the
rules over the whole program (blodsl.rules). It never imports torch or
user code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import ir
from ..catalogue.builtins import (DATA_SOURCES, INITIALISERS, INNER_OPTIMIZERS, INPUT, LAYERS, SEQUENTIAL,
                       TORCH_OPTIMIZERS, DataSource, Signature, optimizer_arg_problem)
from ..catalogue.operators import BY_NAME, FIRST_ORDER, FromProgram, REQUIRED
from ..syntax import ast
from ..syntax.diagnostics import BloError, Diagnostic, suggest
from ..syntax.source import Source, Span
from ..syntax.values import NotConstant, constant
from .expressions import ExpressionResolver, builtin_kind
from .pipeline import WrittenOp, canonical_text, check_composition, read_pipeline
from .rules import ProgramRules

BLOCKS = ("data", "upper", "lower", "run")
LEVEL_SETTINGS = {"upper": ("objective", "optimizer"),
                  "lower": ("objective", "optimizer", "steps", "start")}
RUN_SETTINGS = ("outer_steps", "eval_every", "seed", "device", "dtype", "baseline")
TOP_SETTINGS = ("hypergradient",)
SKELETON = """data {
    train, val, test = digits(label_noise=0.4)
}
upper {
    var w = zeros(train.n)
    objective = cross_entropy(net(val.x), val.y)
    optimizer = Adam(lr=0.1)
}
lower {
    model net = Linear(train.features, train.classes)
    objective = mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none"))
    optimizer = SGD(lr=0.1)
    steps = 10
}
hypergradient = RAD"""


@dataclass
class Symbol:
    """What a declared name stands for."""
    kind: str                 # dataset, var, model, import, metric
    span: Span
    level: str | None = None  # for var and model
    decl: object = None       # ir.Dataset, ir.Variable, ir.Model, or the import's reference


def check(file: ast.File, source: Source, base_dir: Path | None = None
          ) -> tuple[ir.Program, list[Diagnostic]]:
    """The checked program and its warnings, or BloError with every problem found."""
    resolver = Resolver(source, base_dir)
    result = resolver.program(file)
    problems = sorted(resolver.problems, key=_position)
    if result is None or any(d.severity == "error" for d in problems):
        raise BloError(problems, source)
    return result, problems


def _position(d: Diagnostic):
    return (d.span.line, d.span.col) if d.span else (0, 0)


class Resolver(ExpressionResolver, ProgramRules):
    def __init__(self, source: Source, base_dir: Path | None):
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Diagnostic] = []
        self.symbols: dict[str, Symbol] = {}
        self.used: set[str] = set()
        self.declared: dict[str, list] = {"upper": [], "lower": []}
        self.misspelt: set[tuple[str, str]] = set()  # (block, key) an unknown name was taken for

    # --- helpers -------------------------------------------------------------

    def error(self, message: str, span: Span | None, fix: str | None = None, notes=()):
        self.problems.append(Diagnostic(message, span, fix=fix, notes=list(notes)))

    def warn(self, message: str, span: Span | None, fix: str | None = None):
        self.problems.append(Diagnostic(message, span, fix=fix, severity="warning"))

    def text_of(self, span: Span) -> str:
        lines = self.source.text.split("\n")[span.line - 1: span.end_line]
        if not lines:
            return ""
        if len(lines) == 1:
            return lines[0][span.col - 1: span.end_col - 1]
        lines[0], lines[-1] = lines[0][span.col - 1:], lines[-1][: span.end_col - 1]
        return " ".join(part.strip() for part in lines)

    def const(self, expr: ast.Expr, what: str, words: bool = False):
        try:
            return constant(expr, what=what, words=words)
        except NotConstant as e:
            self.problems.append(e.diagnostic)
            return REQUIRED  # marks "no value"; callers skip it

    def declare_broken(self, name: ast.Ident):
        """A declaration already reported as wrong: its name exists, so uses raise no more errors."""
        self.symbols.setdefault(name.text, Symbol("broken", name.span))

    def declare(self, name: ast.Ident, symbol: Symbol) -> bool:
        if name.text in self.symbols and self.symbols[name.text].kind == "broken":
            self.symbols[name.text] = symbol
            return True
        if name.text in self.symbols:
            first = self.symbols[name.text]
            self.error(f"'{name.text}' is already declared", name.span,
                       notes=[(first.span, "first declared here")], fix="give it another name")
            return False
        builtin = builtin_kind(name.text)
        if builtin:
            self.error(f"'{name.text}' is the name of a built-in {builtin}", name.span,
                       fix="choose another name")
            return False
        self.symbols[name.text] = symbol
        return True

    def check_signature(self, sig: Signature, call: ast.Call) -> dict[str, object] | None:
        """Arity and keywords of a call; returns its constant keyword values."""
        ok = True
        n = len(call.args)
        if n < sig.min_args or (sig.max_args is not None and n > sig.max_args):
            expected = (f"{sig.min_args}" if sig.min_args == sig.max_args
                        else f"{sig.min_args} to {sig.max_args}" if sig.max_args is not None
                        else f"at least {sig.min_args}")
            self.error(f"{sig.name} takes {expected} positional argument{'s' if expected != '1' else ''}, "
                       f"not {n}", call.span, fix=f"write {sig.summary.split(':')[0]}")
            ok = False
        values, seen = {}, set()
        for kw in call.kwargs:
            key = kw.name.text
            if key not in sig.keywords:
                fix = suggest(key, sig.keywords) or (f"{sig.name} takes: {', '.join(sig.keywords)}"
                                                     if sig.keywords else f"{sig.name} takes no keyword arguments")
                self.error(f"{sig.name} has no keyword argument '{key}'", kw.name.span, fix=fix)
                ok = False
                continue
            if key in seen:
                self.error(f"keyword argument '{key}' is given twice", kw.name.span)
                ok = False
                continue
            seen.add(key)
            choices = sig.keywords[key]
            if choices:
                value = self.const(kw.value, f"{sig.name}'s {key}",
                                   words=any(isinstance(c, str) for c in choices))
                if value is REQUIRED:
                    ok = False
                elif value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
                    self.error(f"{sig.name}'s {key} must be one of {', '.join(map(repr, choices))}, "
                               f"not {value!r}", kw.value.span)
                    ok = False
                else:
                    values[key] = value
            else:
                values[key] = kw.value
        for key in sig.required_keywords:
            if key not in seen:
                self.error(f"{sig.name} needs the keyword argument '{key}'", call.span,
                           fix=f"write {sig.summary}")
                ok = False
        return values if ok else None

    # --- the program -----------------------------------------------------------

    def program(self, prog: ast.File) -> ir.Program | None:
        if not prog.items:
            self.error("the program is empty", Span.point(1, 1),
                       fix="a .blo program declares data, an upper and a lower level and a pipeline, "
                           "for example:\n" + SKELETON)
            return None
        blocks: dict[str, ast.Block] = {}
        top: dict[str, ast.Setting] = {}
        imports: dict[str, str] = {}
        for item in prog.items:
            match item:
                case ast.Import():
                    self.import_(item, imports)
                case ast.Block(kind=kind):
                    if kind.text not in BLOCKS:
                        self.error(f"unknown block '{kind.text}'", kind.span,
                                   fix=suggest(kind.text, BLOCKS) or "blocks are: " + ", ".join(BLOCKS))
                        self.misspelt |= {("top", b) for b in BLOCKS if suggest(kind.text, [b])}
                        for stmt in item.body:
                            for name in _declared_names(stmt):
                                self.declare_broken(name)
                    elif kind.text in blocks:
                        self.error(f"a second '{kind.text}' block", kind.span,
                                   notes=[(blocks[kind.text].kind.span, "the first is here")],
                                   fix="merge them into one block")
                    else:
                        blocks[kind.text] = item
                case ast.Setting(key=key):
                    if key.text not in TOP_SETTINGS:
                        fix = suggest(key.text, TOP_SETTINGS + RUN_SETTINGS + ("objective", "optimizer", "steps"))
                        self.error(f"'{key.text}' cannot be set at the top level", key.span,
                                   fix=(fix + " " if fix else "") + "Only the pipeline, `hypergradient = ...`, "
                                   "stands outside a block.")
                    elif key.text in top:
                        self.error(f"'{key.text}' is set twice", key.span,
                                   notes=[(top[key.text].key.span, "first set here")])
                    else:
                        top[key.text] = item
                case ast.Declaration(keyword="metric"):
                    self.error("declarations belong inside a block", item.span, fix="move this into the run block")
                case ast.Declaration():
                    self.error("declarations belong inside a block", item.span,
                               fix="move this into the upper or lower block")
                case ast.Destructure():
                    self.error("declarations belong inside a block", item.span, fix="move this into the data block")

        missing_fix = {
            "data": "add a data block, e.g.\ndata {\n    train, val, test = digits()\n}",
            "upper": "add an upper block with the variables being learned, an objective and an optimizer",
            "lower": "add a lower block with a model, an objective, an optimizer and steps",
        }
        for kind in ("upper", "lower"):
            if kind not in blocks and ("top", kind) not in self.misspelt:
                self.error(f"the program has no {kind} block", Span.point(1, 1), fix=missing_fix[kind])
        if "hypergradient" not in top:
            self.error("the program has no hypergradient pipeline", Span.point(1, 1),
                       fix="add a line such as `hypergradient = RAD` (or CG(k=10), PTT -> RAD, ...)")

        datasets = self.data_block(blocks.get("data"))
        for kind in ("upper", "lower"):
            if kind in blocks:
                self.declare_level(blocks[kind], kind)
        if "run" in blocks:
            for stmt in blocks["run"].body:
                if isinstance(stmt, ast.Declaration) and stmt.keyword == "metric":
                    self.declare(stmt.name, Symbol("metric", stmt.name.span))
        upper = self.level(blocks["upper"], "upper") if "upper" in blocks else None
        lower = self.level(blocks["lower"], "lower") if "lower" in blocks else None
        pipeline = self.pipeline(top["hypergradient"], lower, blocks.get("lower")) if "hypergradient" in top else None
        run = self.run_block(blocks.get("run"))
        if None in (upper, lower, pipeline, run) or any(d.severity == "error" for d in self.problems):
            return None
        lower = self.whole_program(upper, lower, blocks, datasets)
        self.unused(datasets)
        return ir.Program(path=self.source.path, imports=imports, datasets=datasets, upper=upper,
                              lower=lower, hypergradient=pipeline, run=run)

    def import_(self, item: ast.Import, imports: dict[str, str]):
        ref = item.ref.value
        module, _, attr = ref.partition(":")
        if not attr or not all(part.isidentifier() for part in module.split(".")) or not attr.isidentifier():
            self.error(f"'{ref}' is not a reference of the form \"package.module:name\"", item.ref.span,
                       fix='write e.g. import "mypkg.losses:focal_loss" as focal_loss')
            return
        if self.declare(item.alias, Symbol("import", item.alias.span, decl=ref)):
            imports[item.alias.text] = ref

    # --- data -------------------------------------------------------------------

    def data_block(self, block: ast.Block | None) -> list[ir.Dataset]:
        datasets: list[ir.Dataset] = []
        if block is None:
            return datasets
        for stmt in block.body:
            match stmt:
                case ast.Setting(key=name, value=value):
                    datasets += self.dataset([name], value) or self.broken([name])
                case ast.Destructure(names=names, value=value):
                    datasets += self.dataset(names, value) or self.broken(names)
                case ast.Declaration(keyword=kw, span=span):
                    self.error(f"'{kw}' declarations do not belong in the data block", span,
                               fix="declare datasets as `name = source(...)`, e.g. `train, test = digits(split=[0.8, 0.2])`")
        return datasets

    def broken(self, names: list[ast.Ident]) -> list:
        for name in names:
            self.declare_broken(name)
        return []

    def dataset(self, names: list[ast.Ident], value: ast.Expr) -> list[ir.Dataset]:
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and (value.func.id in DATA_SOURCES or value.func.id == "input")):
            name = value.func.id if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) else None
            self.error("expected a data source", value.span,
                       fix=(suggest(name, DATA_SOURCES) + " " if name and suggest(name, DATA_SOURCES) else "")
                       + "sources are: " + ", ".join(list(DATA_SOURCES) + ["input"]))
            return []
        if value.func.id == "input":
            return self.input_dataset(names, value)
        source = DATA_SOURCES[value.func.id]
        kwargs = self.check_signature(source.signature, value)
        if kwargs is None:
            return []
        args: dict[str, object] = {}
        for key, expr in kwargs.items():
            v = self.const(expr, f"{source.signature.name}'s {key}") if isinstance(expr, ast.Node) else expr
            if v is REQUIRED:
                return []
            problem = _data_arg_problem(key, v)
            if problem:
                self.error(f"{key} {problem}, not {v!r}", expr.span if isinstance(expr, ast.Node) else value.span)
                return []
            args[key] = v
        path = None
        if source.path_arg:
            path = self.data_path(value.args[0])
            if path is None:
                return []
        if source.tasks:
            if len(names) > 1:
                self.error(f"{value.func.id} yields task batches and is not split", names[1].span,
                           fix=f"declare one name per call, e.g. `tasks = {value.func.id}()` and "
                               f"`test_tasks = {value.func.id}(seed=1)`")
                return []
            return [self.make_dataset(names[0], source, args, path, None)]
        split = args.get("split")
        if split is None and len(names) > 1:
            if len(source.default_split) != len(names):
                self.error(f"{len(names)} names need a split into {len(names)} parts", value.span,
                           fix=f"add split=[...] with {len(names)} fractions")
                return []
            split = list(source.default_split)
            args["split"] = split
        if split is not None and len(split) != len(names):
            self.error(f"split has {len(split)} parts but {len(names)} name{'s are' if len(names) > 1 else ' is'} "
                       "declared", value.span,
                       fix="declare one name per part, e.g. `train, val, test = ...` for three parts")
            return []
        return [self.make_dataset(n, source, args, path, i if split is not None else None)
                for i, n in enumerate(names)]

    def make_dataset(self, name, source: DataSource, args, path, split) -> ir.Dataset:
        ds = ir.Dataset(name=name.text, source=source.signature.name, args=args, path=path, split=split,
                        fields=list(source.fields), sizes=list(source.sizes), tasks=source.tasks,
                        line=name.span.line)
        self.declare(name, Symbol("dataset", name.span, decl=ds))
        return ds

    def input_dataset(self, names, call) -> list[ir.Dataset]:
        kwargs = self.check_signature(INPUT, call)
        if kwargs is None:
            return []
        if len(names) > 1:
            self.error("an input dataset is bound whole from Python and is not split", names[1].span,
                       fix="declare one input per name")
            return []
        fields = ["x", "y"]
        if "fields" in kwargs:
            fields = self.const(kwargs["fields"], "input's fields")
            if fields is REQUIRED:
                return []
            if not (isinstance(fields, list) and fields and all(isinstance(f, str) and f.isidentifier()
                                                                for f in fields)):
                self.error("fields must be a list of names, e.g. fields=[\"x\", \"y\"]", kwargs["fields"].span)
                return []
        ds = ir.Dataset(name=names[0].text, source="input", args={"fields": fields}, fields=fields,
                        sizes=["n", "features", "classes"], line=names[0].span.line)
        self.declare(names[0], Symbol("dataset", names[0].span, decl=ds))
        return [ds]

    def data_path(self, expr: ast.Expr) -> str | None:
        if not isinstance(expr, ast.String):
            self.error("expected a file or folder path in quotes", expr.span, fix="write e.g. npz(\"data/train.npz\")")
            return None
        if self.base_dir is not None and not (self.base_dir / expr.value).exists():
            self.error(f"no file or folder '{expr.value}'", expr.span,
                       fix="paths are relative to the folder of the .blo file")
            return None
        return expr.value

    # --- levels -------------------------------------------------------------------

    def declare_level(self, block: ast.Block, level: str):
        """Declares variables and models first, so objectives may name them in any order."""
        for stmt in block.body:
            if not isinstance(stmt, ast.Declaration):
                continue
            if stmt.keyword == "metric":
                self.error("metrics belong in the run block", stmt.span, fix="move this line into `run { ... }`")
                continue
            decl = self.variable(stmt, level) if stmt.keyword == "var" else self.model(stmt, level)
            if decl is None:
                self.declare_broken(stmt.name)
                self.declared[level].append(None)
            elif self.declare(stmt.name, Symbol(stmt.keyword, stmt.name.span, level, decl)):
                self.declared[level].append(decl)

    def variable(self, stmt: ast.Declaration, level: str) -> ir.Variable | None:
        value, name = stmt.value, stmt.name.text
        if isinstance(value, (ast.Number, ast.UnaryOp)):
            v = self.const(value, f"the initial value of {name}")
            if v is REQUIRED:
                return None
            return ir.Variable(name=name, level=level, init="full", shape=[], args={"value": v},
                               line=stmt.span.line)
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and (value.func.id in INITIALISERS or value.func.id == "input")):
            fn = value.func.id if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) else None
            self.error(f"expected an initialiser for variable '{name}'", value.span,
                       fix=((suggest(fn, INITIALISERS) or "") + " initialisers: " + ", ".join(INITIALISERS)
                            + ", input(); e.g. `var w = zeros(train.n)`").strip())
            return None
        if value.func.id == "input":
            if self.check_signature(INPUT, value) is None:
                return None
            return ir.Variable(name=name, level=level, init="input", shape=[], line=stmt.span.line)
        sig = INITIALISERS[value.func.id]
        kwargs = self.check_signature(sig, value)
        if kwargs is None:
            return None
        shape = [self.dim(a) for a in value.args]
        args = {k: self.const(v, f"{sig.name}'s {k}") for k, v in kwargs.items()}
        if any(d is None for d in shape) or REQUIRED in args.values():
            return None
        return ir.Variable(name=name, level=level, init=sig.name, shape=shape, args=args, line=stmt.span.line)

    def dim(self, expr: ast.Expr) -> int | ir.SizeRef | None:
        if isinstance(expr, ast.Number) and isinstance(expr.value, int) and expr.value > 0:
            return expr.value
        if isinstance(expr, ast.Attribute) and isinstance(expr.obj, ast.Name):
            sym = self.symbols.get(expr.obj.id)
            if sym and sym.kind == "broken":
                return None
            if sym and sym.kind == "dataset":
                self.used.add(expr.obj.id)
                if expr.attr.text in sym.decl.sizes:
                    return ir.SizeRef(dataset=expr.obj.id, size=expr.attr.text)
                self.error(f"dataset '{expr.obj.id}' has no size '{expr.attr.text}'", expr.attr.span,
                           fix=suggest(expr.attr.text, sym.decl.sizes) or "sizes: " + ", ".join(sym.decl.sizes))
                return None
        self.error("a dimension is a positive integer or a dataset size such as train.features", expr.span)
        return None

    def model(self, stmt: ast.Declaration, level: str) -> ir.Model | None:
        spec = self.layer_spec(stmt.value, top=True)
        if spec is None:
            return None
        parameters = list(LAYERS[spec.name].parameters) if spec.kind == "builtin" else []
        return ir.Model(name=stmt.name.text, level=level, spec=spec, parameters=parameters, line=stmt.span.line)

    def layer_spec(self, expr: ast.Expr, top: bool = False) -> ir.LayerSpec | None:
        name = expr.func.id if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) else None
        imported = self.symbols.get(name) if name else None
        if name == "input" and top:
            if self.check_signature(INPUT, expr) is None:
                return None
            return ir.LayerSpec(kind="input", name="input")
        if imported and imported.kind == "import":
            self.used.add(name)
            args = [self.layer_arg(a) for a in expr.args]
            kwargs = {kw.name.text: self.layer_arg(kw.value) for kw in expr.kwargs}
            if REQUIRED in args or REQUIRED in kwargs.values():
                return None
            return ir.LayerSpec(kind="user", name=imported.decl, args=args, kwargs=kwargs)
        if name == "Sequential":
            if self.check_signature(SEQUENTIAL, expr) is None:
                return None
            layers = [self.layer_spec(a) for a in expr.args]
            return None if None in layers else ir.LayerSpec(kind="sequential", name="Sequential", args=layers)
        if name not in LAYERS:
            known = list(LAYERS) + ["Sequential"]
            self.error("expected a model: a built-in layer, Sequential(...) or an imported module", expr.span,
                       fix=((suggest(name, known) + " ") if name and suggest(name, known) else "")
                       + "layers: " + ", ".join(known)
                       + '; for your own nn.Module: import "pkg.module:Class" as Class')
            return None
        layer = LAYERS[name]
        kwargs = self.check_signature(layer.signature, expr)
        if kwargs is None:
            return None
        args = [self.layer_arg(a) for a in expr.args]
        if REQUIRED in args:
            return None
        return ir.LayerSpec(kind="builtin", name=name, args=args, kwargs=kwargs)

    def layer_arg(self, expr: ast.Expr):
        if isinstance(expr, ast.Attribute):
            return self.dim(expr) or REQUIRED
        if isinstance(expr, ast.ListExpr):
            items = [self.layer_arg(i) for i in expr.items]
            return REQUIRED if REQUIRED in items else items
        if isinstance(expr, ast.Call):
            return self.layer_spec(expr) or REQUIRED
        return self.const(expr, "a model argument")

    def level(self, block: ast.Block, level: str) -> ir.LevelDecl | None:
        settings: dict[str, ast.Setting] = {}
        for stmt in block.body:
            if isinstance(stmt, ast.Destructure):
                self.error("only the data block declares several names at once", stmt.span)
            elif isinstance(stmt, ast.Setting):
                key = stmt.key.text
                if key not in LEVEL_SETTINGS[level]:
                    other = "lower" if level == "upper" else "upper"
                    where = (f"; '{key}' belongs in the {other} block" if key in LEVEL_SETTINGS[other]
                             else "; 'hypergradient' stands at the top level" if key == "hypergradient" else "")
                    self.error(f"unknown setting '{key}' in the {level} block{where}", stmt.key.span,
                               fix=suggest(key, LEVEL_SETTINGS[level])
                               or f"the {level} block sets: " + ", ".join(LEVEL_SETTINGS[level]))
                    self.misspelt |= {(level, k) for k in LEVEL_SETTINGS[level] if suggest(key, [k])}
                elif key in settings:
                    self.error(f"'{key}' is set twice", stmt.key.span,
                               notes=[(settings[key].key.span, "first set here")])
                else:
                    settings[key] = stmt
        declared = self.declared[level]
        if not declared:
            self.error(f"the {level} level declares nothing to optimise", block.kind.span,
                       fix=("declare its variables, e.g. `var w = zeros(train.n)`, or a model"
                            if level == "upper" else "declare its model, e.g. `model net = Linear(64, 10)`"))
        needed = ("objective", "optimizer") + (("steps",) if level == "lower" else ())
        for key in needed:
            if key not in settings and (level, key) not in self.misspelt:
                example = {"objective": "objective = mse(net(train.x), train.y)",
                           "optimizer": "optimizer = SGD(lr=0.1)" if level == "lower" else "optimizer = Adam(lr=0.01)",
                           "steps": "steps = 10"}[key]
                self.error(f"the {level} level has no {key}", block.close_span or block.kind.span,
                           fix=f"add `{example}` to the {level} block")
        if None in declared:
            return None  # a declaration was wrong and has been reported
        objective = self.objective(settings["objective"], level) if "objective" in settings else None
        optimizer = self.optimizer(settings["optimizer"], level) if "optimizer" in settings else None
        steps = start = None
        if level == "lower":
            if "steps" in settings:
                steps = self.const(settings["steps"].value, "steps")
                if steps is not REQUIRED and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
                    self.error(f"steps must be an integer >= 1, not {steps!r}", settings["steps"].value.span)
                    steps = None
            start = self.start(settings.get("start"))
        if None in (objective, optimizer) or REQUIRED in (steps, start) or (level == "lower" and None in (steps, start)):
            return None
        return ir.LevelDecl(level=level, variables=[d for d in declared if isinstance(d, ir.Variable)],
                            models=[d for d in declared if isinstance(d, ir.Model)], objective=objective,
                            optimizer=optimizer, steps=steps, start=start, line=block.span.line)

    def objective(self, setting: ast.Setting, level: str) -> ir.Objective | None:
        resolved = self.expr(setting.value, metric=False)
        if resolved is None:
            return None
        expr, kind = resolved
        if kind not in ("tensor", "number"):
            self.error(f"the {level} objective must be a loss (a number), not a {kind}", setting.value.span)
            return None
        return ir.Objective(expr=expr, text=self.text_of(setting.value.span), line=setting.span.line)

    def optimizer(self, setting: ast.Setting, level: str) -> ir.Optimizer | None:
        value = setting.value
        name = value.func.id if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) else \
            value.id if isinstance(value, ast.Name) else None
        known = INNER_OPTIMIZERS if level == "lower" else TORCH_OPTIMIZERS
        if name not in known:
            if level == "lower" and name in TORCH_OPTIMIZERS:
                self.error(f"{name} cannot be the inner optimiser: blodsl differentiates through "
                           f"{' and '.join(INNER_OPTIMIZERS)} steps only", value.span,
                           fix="use SGD (momentum, nesterov, weight_decay) or Adam")
            else:
                self.error(f"unknown optimiser{f' {name!r}' if name else ''}", value.span,
                           fix=suggest(name or "", known) or "optimisers: " + ", ".join(known))
            return None
        args: dict[str, object] = dict(INNER_OPTIMIZERS[name]) if level == "lower" else {}
        allowed = list(INNER_OPTIMIZERS[name]) if level == "lower" else TORCH_OPTIMIZERS[name]
        for a in getattr(value, "args", []):
            self.error("optimiser arguments are keyword arguments", a.span, fix=f"write e.g. {name}(lr=0.1)")
            return None
        for kw in getattr(value, "kwargs", []):
            key = kw.name.text
            if key not in allowed:
                self.error(f"{name} has no argument '{key}'" + (" in an inner loop" if level == "lower" else ""),
                           kw.name.span, fix=suggest(key, allowed) or f"{name} takes: {', '.join(allowed)}")
                return None
            v = self.const(kw.value, f"{name}'s {key}")
            if v is REQUIRED:
                return None
            problem = optimizer_arg_problem(key, v)
            if problem:
                self.error(f"{name}'s {key} {problem}, not {v!r}", kw.value.span)
                return None
            args[key] = float(v) if key == "lr" else v
        return ir.Optimizer(name=name, args=args, line=setting.span.line)

    def start(self, setting: ast.Setting | None):
        if setting is None:
            return ir.Start(mode="warm")  # the pipeline may change the default (DI: reinit)
        value = setting.value
        fix = "write `start = warm`, `start = reinit`, or `start = from(meta)` naming an upper-level model"
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "from":
            if len(value.args) != 1 or value.kwargs or not isinstance(value.args[0], ast.Name):
                self.error("from(...) names one upper-level model or variable", value.span, fix=fix)
                return REQUIRED
            source = value.args[0]
            sym = self.symbols.get(source.id)
            if sym is None or sym.kind not in ("var", "model") or sym.level != "upper":
                self.error(f"'{source.id}' is not an upper-level model or variable", source.span, fix=fix)
                return REQUIRED
            self.used.add(source.id)
            return ir.Start(mode="from", source=source.id, line=setting.span.line)
        mode = self.const(value, "start", words=True)
        if mode not in ("warm", "reinit"):
            if mode is not REQUIRED:
                self.error(f"start must be warm, reinit or from(model), not {mode!r}", value.span, fix=fix)
            return REQUIRED
        return ir.Start(mode=mode, line=setting.span.line)

    # --- the pipeline -------------------------------------------------------------

    def pipeline(self, setting: ast.Setting, lower: ir.LevelDecl | None, lower_block) -> ir.OperatorChain | None:
        written, problems = read_pipeline(setting.value)
        self.problems += problems
        if problems:
            return None
        problems = check_composition(written)
        self.problems += problems
        if problems:
            return None
        self.written_pipeline = written
        operators = []
        names = [w.op.name for w in written]
        if not any(w.op.stage in ("dynamics core", FIRST_ORDER) for w in written):
            at = next((i for i, w in enumerate(written) if (w.op.rank or 0) > 2), len(written))
            names.insert(at, "NGD")
        for name in names:
            w = next((w for w in written if w.op.name == name), None)
            op = BY_NAME[name]
            params = {}
            for p in op.params:
                value = w.args.get(p.name, p.default) if w else p.default
                if isinstance(value, FromProgram):
                    value = self.from_program(value, lower)
                params[p.name] = value
            operators.append(ir.OperatorUse(name=name, stage=op.stage, params=params, implied=w is None,
                                         line=(w.span if w else setting.span).line))
        text = canonical_text([WrittenOp(BY_NAME[o.name], o.params, setting.span, {}) for o in operators])
        return ir.OperatorChain(operators=operators, text=text, line=setting.span.line)

    @staticmethod
    def from_program(default: FromProgram, lower: ir.LevelDecl | None):
        if lower is None:
            return None
        return lower.optimizer.args["lr"] if default.what == "inner_lr" else lower.steps

    # --- run --------------------------------------------------------------------------

    def run_block(self, block: ast.Block | None) -> ir.Run | None:
        values = {"outer_steps": 100, "eval_every": None, "seed": 0, "device": "auto", "dtype": "float32"}
        metrics: list[ir.Metric] = []
        seen: dict[str, ast.Setting] = {}
        ok = True
        for stmt in block.body if block else []:
            if isinstance(stmt, ast.Declaration) and stmt.keyword == "metric":
                m = self.metric(stmt)
                ok &= m is not None
                metrics += [m] if m else []
            elif isinstance(stmt, ast.Setting):
                key = stmt.key.text
                if key not in RUN_SETTINGS:
                    self.error(f"unknown setting '{key}' in the run block", stmt.key.span,
                               fix=suggest(key, RUN_SETTINGS) or "the run block sets: " + ", ".join(RUN_SETTINGS)
                               + ", and declares `metric name = ...`")
                    ok = False
                    continue
                if key in seen:
                    self.error(f"'{key}' is set twice", stmt.key.span, notes=[(seen[key].key.span, "first set here")])
                    ok = False
                    continue
                seen[key] = stmt
                if key == "baseline":
                    values["baseline"] = self.baseline(stmt.value)
                    ok &= values["baseline"] is not None
                    continue
                v = self.const(stmt.value, key, words=key in ("device", "dtype"))
                problem = _run_setting_problem(key, v) if v is not REQUIRED else "is not a constant"
                if problem:
                    if v is not REQUIRED:
                        self.error(f"{key} {problem}, not {v!r}", stmt.value.span)
                    ok = False
                    continue
                values[key] = v
            else:
                self.error("the run block holds settings and `metric name = ...` declarations", stmt.span)
                ok = False
        if not ok:
            return None
        if values["eval_every"] is None:
            values["eval_every"] = max(1, values["outer_steps"] // 10)
        return ir.Run(metrics=metrics, **values)

    def baseline(self, e: ast.Expr) -> ir.Baseline | None:
        """`initial`, or `grid(var=[v, ...])`: the lower level trained with the upper one held fixed."""
        usage = "write `baseline = initial` or `baseline = grid(name=[value, ...])` with an upper variable"
        if isinstance(e, ast.Name) and e.id == "initial":
            return ir.Baseline()
        if not (isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id == "grid"
                and not e.args and e.kwargs):
            self.error("a baseline is the upper level held at its initial values or at each value of a grid",
                       e.span, fix=usage)
            return None
        grid = {}
        for kw in e.kwargs:
            sym = self.symbols.get(kw.name.text)
            if sym is None or sym.kind != "var" or sym.level != "upper":
                self.error(f"'{kw.name.text}' is not an upper-level variable", kw.name.span, fix=usage)
                return None
            v = self.const(kw.value, f"the grid of {kw.name.text}")
            if v is REQUIRED:
                return None
            if not (isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in v)):
                self.error("a grid is a non-empty list of numbers", kw.value.span, fix=usage)
                return None
            grid[kw.name.text] = [float(x) for x in v]
        return ir.Baseline(grid=grid)

    def metric(self, stmt: ast.Declaration) -> ir.Metric | None:
        rebind = {}
        for r in stmt.rebinds:
            pair = [self.symbols.get(r.name.text), self.symbols.get(r.to.text)]
            for ident, sym in zip((r.name, r.to), pair):
                if sym is None or sym.kind != "dataset":
                    self.error(f"'{ident.text}' is not a dataset; `with` swaps one dataset for another",
                               ident.span, fix="write e.g. `with tasks = test_tasks`")
                    return None
            if pair[0].decl.tasks != pair[1].decl.tasks:
                self.error(f"'{r.to.text}' and '{r.name.text}' are not the same kind of dataset", r.span)
                return None
            self.used.add(r.to.text)
            rebind[r.name.text] = r.to.text
        resolved = self.expr(stmt.value, metric=True)
        if resolved is None:
            return None
        return ir.Metric(name=stmt.name.text, expr=resolved[0], text=self.text_of(stmt.value.span),
                         rebind=rebind, line=stmt.span.line)

# --- small helpers ----------------------------------------------------------------


def _declared_names(stmt) -> list[ast.Ident]:
    if isinstance(stmt, ast.Destructure):
        return stmt.names
    if isinstance(stmt, ast.Declaration):
        return [stmt.name]
    return [stmt.key] if isinstance(stmt, ast.Setting) else []


def _data_arg_problem(key: str, v) -> str | None:
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if key == "split":
        if not (isinstance(v, list) and v and all(isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0
                                                  for p in v) and sum(v) <= 1 + 1e-9):
            return "must be a list of positive fractions that add up to at most 1"
    elif key == "label_noise":
        if not (number and 0 <= v < 1):
            return "must be a fraction in [0, 1)"
    elif key in ("seed",):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            return "must be an integer >= 0"
    elif key in ("batch", "n", "features", "informative", "classes", "tasks", "shots", "queries"):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return "must be an integer >= 1"
    elif key in ("amplitude", "phase", "x_range"):
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(p, (int, float)) for p in v) and v[0] <= v[1]):
            return "must be a range [low, high]"
    elif key in ("noise", "separation") and not (number and v >= 0):
        return "must be a number >= 0"
    return None


def _run_setting_problem(key: str, v) -> str | None:
    if key in ("outer_steps", "eval_every"):
        return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "must be an integer >= 1"
    if key == "seed":
        return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "must be an integer >= 0"
    if key == "device":
        ok = isinstance(v, str) and (v in ("auto", "cpu", "cuda") or
                                     (v.startswith("cuda:") and v[5:].isdigit()))
        return None if ok else "must be auto, cpu, cuda or cuda:N"
    if key == "dtype":
        return None if v in ("float32", "float64") else "must be float32 or float64"
    return None
