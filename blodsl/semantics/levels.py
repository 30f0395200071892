"""The upper and lower blocks: variables, models, objective, optimiser, for the
upper level its learning-rate schedule and clipping, and for the lower level its
steps and how it starts."""

from __future__ import annotations

from .. import ir
from ..catalogue.builtins import (HAS_MOMENTUM, INITIALISERS, INNER_OPTIMIZERS, INPUT_VALUE, LAYERS, NOT_SCHEDULERS,
                                  NOT_UPPER_OPTIMIZERS, SCHEDULERS, SEQUENTIAL, TORCH_OPTIMIZERS)
from ..catalogue.params import CLIP, STEPS, FromProgram
from ..syntax import ast
from ..syntax.diagnostics import suggest
from .blocks import LEVEL_SETTINGS
from .calls import check_call, checked_value
from .data import image_size_fix
from .expressions import Expressions
from .learned import check_like_target, is_learned, learned_setting, like_variable
from .scope import NO_VALUE, Scope, Symbol


class LevelBlock:
    """One level. Its variables and models are declared first (`declare`), so that
    objectives may name those of either level in any order (`resolve`)."""

    def __init__(self, scope: Scope, expressions: Expressions, level: str):
        self.scope = scope
        self.expressions = expressions
        self.level = level
        self.declared: list = []   # ir.Variable or ir.Model; None for a declaration reported as wrong
        self.scheduler_keywords: dict[str, ast.Keyword] = {}   # as written, for follow_run's messages
        self.likes: list[ast.Declaration] = []   # `var v = like(model)`, checked once every model is declared

    def declare(self, block: ast.Block):
        """Declares variables and models first, so objectives may name them in any order."""
        for stmt in block.body:
            if not isinstance(stmt, ast.Declaration):
                continue
            if stmt.keyword == "metric":
                self.scope.error("metrics belong in the run block", stmt.span, fix="move this line into `run { ... }`")
                continue
            decl = self.variable(stmt) if stmt.keyword == "var" else self.model(stmt)
            if decl is None:
                self.scope.declare_broken(stmt.name)
                self.declared.append(None)
                continue
            decl = decl.model_copy(update={"span": ir.Written.of(stmt.span)})   # for messages about its sizes
            if self.scope.declare(stmt.name, Symbol(stmt.keyword, stmt.name.span, self.level, decl)):
                self.declared.append(decl)

    def variable(self, stmt: ast.Declaration) -> ir.Variable | None:
        value, name = stmt.value, stmt.name.text
        if isinstance(value, (ast.Number, ast.UnaryOp)):
            v = self.scope.const(value, f"the initial value of {name}")
            if v is NO_VALUE:
                return None
            return ir.Variable(name=name, level=self.level, init="full", shape=[], args={"value": v},
                               line=stmt.span.line)
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "like":
            variable = like_variable(self.scope, name, value, self.level)
            if variable is not None:
                self.likes.append(stmt)
            return variable
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and (value.func.id in INITIALISERS or value.func.id == "input")):
            fn = value.func.id if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) else None
            self.scope.error(f"expected an initialiser for variable '{name}'", value.span,
                             fix=((suggest(fn, INITIALISERS) or "") + " initialisers: " + ", ".join(INITIALISERS)
                                  + ", like(model), input(); e.g. `var w = zeros(train.n)`").strip())
            return None
        if value.func.id == "input":
            if check_call(self.scope, INPUT_VALUE, value) is None:
                return None
            return ir.Variable(name=name, level=self.level, init="input", shape=[], line=stmt.span.line)
        sig = INITIALISERS[value.func.id]
        kwargs = check_call(self.scope, sig, value)
        if kwargs is None:
            return None
        shape = [self.dim(a) for a in value.args]
        if any(d is None for d in shape):
            return None
        return ir.Variable(name=name, level=self.level, init=sig.name, shape=shape, args=kwargs, line=stmt.span.line)

    def dim(self, expr: ast.Expr) -> int | ir.SizeRef | None:
        if isinstance(expr, ast.Number) and isinstance(expr.value, int) and expr.value > 0:
            return expr.value
        if isinstance(expr, ast.Attribute) and isinstance(expr.obj, ast.Name):
            sym = self.scope.symbols.get(expr.obj.id)
            if sym and sym.kind == "broken":
                return None
            if sym and sym.kind == "dataset":
                self.scope.used.add(expr.obj.id)
                if expr.attr.text in sym.decl.sizes:
                    return ir.SizeRef(dataset=expr.obj.id, size=expr.attr.text)
                self.scope.error(f"dataset '{expr.obj.id}' has no size '{expr.attr.text}'", expr.attr.span,
                                 fix=image_size_fix(sym.decl, expr.attr.text) or suggest(expr.attr.text, sym.decl.sizes)
                                 or "sizes: " + ", ".join(sym.decl.sizes))
                return None
        self.scope.error("a dimension is a positive integer or a dataset size such as train.features", expr.span)
        return None

    def model(self, stmt: ast.Declaration) -> ir.Model | None:
        spec = self.layer_spec(stmt.value, top=True)
        if spec is None:
            return None
        parameters = list(LAYERS[spec.name].parameters) if spec.kind == "builtin" else []
        return ir.Model(name=stmt.name.text, level=self.level, spec=spec, parameters=parameters, line=stmt.span.line)

    def layer_spec(self, expr: ast.Expr, top: bool = False) -> ir.LayerSpec | None:
        name = expr.func.id if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) else None
        imported = self.scope.symbols.get(name) if name else None
        if name == "input" and top:
            if check_call(self.scope, INPUT_VALUE, expr) is None:
                return None
            return ir.LayerSpec(kind="input", name="input")
        if imported and imported.kind == "import":
            self.scope.used.add(name)
            args = [self.layer_arg(a) for a in expr.args]
            kwargs = {kw.name.text: self.layer_arg(kw.value) for kw in expr.kwargs}
            if NO_VALUE in args or NO_VALUE in kwargs.values():
                return None
            return ir.LayerSpec(kind="user", name=imported.decl, args=args, kwargs=kwargs)
        if name == "Sequential":
            if check_call(self.scope, SEQUENTIAL, expr) is None:
                return None
            layers = [self.layer_spec(a) for a in expr.args]
            return None if None in layers else ir.LayerSpec(kind="sequential", name="Sequential", args=layers)
        if name not in LAYERS:
            known = list(LAYERS) + ["Sequential"]
            self.scope.error("expected a model: a built-in layer, Sequential(...) or an imported module", expr.span,
                             fix=((suggest(name, known) + " ") if name and suggest(name, known) else "")
                             + "layers: " + ", ".join(known)
                             + '; for your own nn.Module: import "pkg.module:Class" as Class')
            return None
        layer = LAYERS[name]
        kwargs = check_call(self.scope, layer.signature, expr)
        if kwargs is None:
            return None
        args = [self.layer_arg(a) for a in expr.args]
        if NO_VALUE in args:
            return None
        for written, value, row in zip(expr.args, args, layer.positional):
            why = None if _names_a_size(value) else row.problem(value)
            if why:
                self.scope.error(f"{name}'s {row.name} {why}, not {self.scope.source.text_of(written.span)}",
                                 written.span)
                return None
        return ir.LayerSpec(kind="builtin", name=name, args=args, kwargs=kwargs)

    def layer_arg(self, expr: ast.Expr):
        if isinstance(expr, ast.Attribute):
            return self.dim(expr) or NO_VALUE
        if isinstance(expr, ast.ListExpr):
            items = [self.layer_arg(i) for i in expr.items]
            return NO_VALUE if NO_VALUE in items else items
        if isinstance(expr, ast.Call):
            return self.layer_spec(expr) or NO_VALUE
        return self.scope.const(expr, "a model argument")

    def resolve(self, block: ast.Block) -> ir.LevelDecl | None:
        for stmt in self.likes:
            check_like_target(self.scope, stmt)
        settings: dict[str, ast.Setting] = {}
        for stmt in block.body:
            if isinstance(stmt, ast.Destructure):
                self.scope.error("only the data block declares several names at once", stmt.span)
            elif isinstance(stmt, ast.Setting):
                key = stmt.key.text
                if key not in LEVEL_SETTINGS[self.level]:
                    other = "lower" if self.level == "upper" else "upper"
                    where = (f"; '{key}' belongs in the {other} block" if key in LEVEL_SETTINGS[other]
                             else "; 'hypergradient' stands at the top level" if key == "hypergradient" else "")
                    self.scope.error(f"unknown setting '{key}' in the {self.level} block{where}", stmt.key.span,
                                     fix=suggest(key, LEVEL_SETTINGS[self.level])
                                     or f"the {self.level} block sets: " + ", ".join(LEVEL_SETTINGS[self.level]))
                    self.scope.misspelt |= {(self.level, k) for k in LEVEL_SETTINGS[self.level] if suggest(key, [k])}
                elif key in settings:
                    self.scope.error(f"'{key}' is set twice", stmt.key.span,
                                     notes=[(settings[key].key.span, "first set here")])
                else:
                    settings[key] = stmt
        declared = self.declared
        if not declared:
            self.scope.error(f"the {self.level} level declares nothing to optimise", block.kind.span,
                             fix=("declare its variables, e.g. `var w = zeros(train.n)`, or a model"
                                  if self.level == "upper" else "declare its model, e.g. `model net = Linear(64, 10)`"))
        needed = ("objective", "optimizer") + (("steps",) if self.level == "lower" else ())
        for key in needed:
            if key not in settings and (self.level, key) not in self.scope.misspelt:
                example = {"objective": "objective = mse(net(train.x), train.y)",
                           "optimizer": "optimizer = SGD(lr=0.1)" if self.level == "lower" else "optimizer = Adam(lr=0.01)",
                           "steps": "steps = 10"}[key]
                self.scope.error(f"the {self.level} level has no {key}", block.close_span or block.kind.span,
                                 fix=f"add `{example}` to the {self.level} block")
        if None in declared:
            return None  # a declaration was wrong and has been reported
        objective = self.objective(settings["objective"]) if "objective" in settings else None
        optimizer = self.optimizer(settings["optimizer"]) if "optimizer" in settings else None
        steps = start = scheduler = clip = None
        if self.level == "lower":
            if "steps" in settings:
                steps = checked_value(self.scope, STEPS, settings["steps"].value, "steps")
            start = self.start(settings.get("start"))
        else:
            scheduler = self.scheduler(settings["scheduler"], optimizer) if "scheduler" in settings else None
            clip = self.clip(settings["clip"]) if "clip" in settings else None
        if (None in (objective, optimizer) or NO_VALUE in (steps, start, scheduler, clip)
                or (self.level == "lower" and None in (steps, start))):
            return None
        return ir.LevelDecl(level=self.level, variables=[d for d in declared if isinstance(d, ir.Variable)],
                            models=[d for d in declared if isinstance(d, ir.Model)], objective=objective,
                            optimizer=optimizer, scheduler=scheduler, clip=clip, steps=steps, start=start,
                            line=block.span.line)

    def objective(self, setting: ast.Setting) -> ir.Objective | None:
        resolved = self.expressions.expr(setting.value, metric=False)
        if resolved is None:
            return None
        expr, kind = resolved
        if kind not in ("tensor", "number"):
            self.scope.error(f"the {self.level} objective must be a loss (a number), not a {kind}", setting.value.span)
            return None
        return ir.Objective(expr=expr, text=self.scope.source.text_of(setting.value.span), line=setting.span.line)

    def optimizer(self, setting: ast.Setting) -> ir.Optimizer | None:
        value = setting.value
        name = _called(value)
        known = INNER_OPTIMIZERS if self.level == "lower" else TORCH_OPTIMIZERS
        if name not in known:
            if self.level == "upper" and name in NOT_UPPER_OPTIMIZERS:
                self.scope.error(f"{name} cannot be the upper optimiser: {NOT_UPPER_OPTIMIZERS[name]}", value.span,
                                 fix="use a first-order optimiser such as Adam(lr=...) or SGD(lr=...)")
            elif self.level == "lower" and name in TORCH_OPTIMIZERS:
                self.scope.error(f"{name} cannot be the inner optimiser: blodsl differentiates through the steps "
                                 f"of {', '.join(INNER_OPTIMIZERS)} only", value.span,
                                 fix="use one of those, e.g. Adam or AdamW in place of NAdam or RAdam")
            else:
                self.scope.error(f"unknown optimiser{f' {name!r}' if name else ''}", value.span,
                                 fix=suggest(name or "", known) or "optimisers: " + ", ".join(known))
            return None
        allowed = known[name]
        # the inner optimiser's arguments are all explicit in the IR, defaults included
        args = {key: row.default for key, row in allowed.items()} if self.level == "lower" else {}
        learned = {}
        for a in getattr(value, "args", []):
            self.scope.error("optimiser arguments are keyword arguments", a.span, fix=f"write e.g. {name}(lr=0.1)")
            return None
        for kw in getattr(value, "kwargs", []):
            key = kw.name.text
            if key not in allowed:
                self.scope.error(f"{name} has no argument '{key}'" + (" in an inner loop" if self.level == "lower" else ""),
                                 kw.name.span, fix=suggest(key, allowed) or f"{name} takes: {', '.join(allowed)}")
                return None
            if self.level == "lower" and is_learned(kw.value):
                expr = learned_setting(self.scope, self.expressions, name, allowed[key], kw,
                                       [d for d in self.declared if d is not None])
                if expr is NO_VALUE:
                    return None
                learned[key] = ir.LearnedSetting(expr=expr, text=self.scope.source.text_of(kw.value.span))
                continue
            args[key] = checked_value(self.scope, allowed[key], kw.value, f"{name}'s {key}")
            if args[key] is NO_VALUE:
                return None
        if args.get("nesterov") and (not (args.get("momentum") or "momentum" in learned)
                                     or args.get("dampening") or "dampening" in learned):
            kw = next(kw for kw in value.kwargs if kw.name.text == "nesterov")
            self.scope.error("Nesterov momentum needs a momentum and no dampening", kw.span,
                             fix="write momentum=0.9 (and leave dampening out), or remove nesterov=True")
            return None
        return ir.Optimizer(name=name, args=args, line=setting.span.line, learned=learned)

    def scheduler(self, setting: ast.Setting, optimizer: ir.Optimizer | None):
        """The upper learning rate's schedule: a torch.optim.lr_scheduler class by name, or NO_VALUE."""
        value = setting.value
        name = _called(value)
        if name in NOT_SCHEDULERS:
            self.scope.error(f"{name} cannot be the upper scheduler: {NOT_SCHEDULERS[name]}", value.span,
                             fix="for a warm-up write LinearLR(start_factor=0.1, total_iters=...), for a warm-up "
                                 "then annealing OneCycleLR(max_lr=...)")
            return NO_VALUE
        if name not in SCHEDULERS:
            self.scope.error(f"unknown scheduler {name!r}" if name else "expected a scheduler, e.g. "
                             "CosineAnnealingLR(T_max=100)", value.span,
                             fix=suggest(name or "", SCHEDULERS) or "schedulers: " + ", ".join(SCHEDULERS))
            return NO_VALUE
        sig = SCHEDULERS[name]
        self.scheduler_keywords = {kw.name.text: kw for kw in getattr(value, "kwargs", [])}
        call = value if isinstance(value, ast.Call) else ast.Call(value, [], [], span=value.span)   # bare `StepLR`
        args = check_call(self.scope, sig, call)
        if args is None:
            return NO_VALUE
        cycles_momentum = args.get("cycle_momentum", "cycle_momentum" in sig.keywords)  # torch's default: True
        if cycles_momentum and optimizer is not None and optimizer.name not in HAS_MOMENTUM:
            self.scope.error(f"{name} cycles the upper optimiser's momentum, and {optimizer.name} has none",
                             value.span, fix="write cycle_momentum=False, or use an optimiser with a momentum: "
                                             + ", ".join(sorted(HAS_MOMENTUM)))
            return NO_VALUE
        return ir.Scheduler(name=name, args=args, line=setting.span.line)

    def follow_run(self, upper: ir.LevelDecl, run: ir.Run) -> ir.LevelDecl | None:
        """The upper level with its scheduler's arguments that follow the run block: OneCycleLR's
        total_steps is the run's outer steps unless written, and if written no fewer (torch stops
        at a step past the schedule's end). None when that was reported."""
        scheduler = upper.scheduler
        if scheduler is None:
            return upper
        args = dict(scheduler.args)
        for row in SCHEDULERS[scheduler.name].keywords.values():
            if row.default != FromProgram("outer_steps"):
                continue
            if row.name not in args:
                args[row.name] = run.outer_steps
            elif args[row.name] < run.outer_steps:
                self.scope.error(f"{scheduler.name}'s schedule ends after {row.name}={args[row.name]} outer steps, "
                                 f"before the run's {run.outer_steps}", self.scheduler_keywords[row.name].value.span,
                                 fix=f"leave {row.name} out (it follows the run's outer steps), or make it at least "
                                     f"{run.outer_steps}")
                return None
        return upper.model_copy(update={"scheduler": scheduler.model_copy(update={"args": args})})

    def clip(self, setting: ast.Setting):
        norm = checked_value(self.scope, CLIP, setting.value, "clip",
                             fix="clip is the largest norm the hypergradient keeps, e.g. `clip = 1.0`; "
                                 "leave it out not to clip")
        return NO_VALUE if norm is NO_VALUE else ir.Clip(norm=norm, line=setting.span.line)

    def start(self, setting: ast.Setting | None):
        if setting is None:
            return ir.Start(mode="warm")  # the pipeline may change the default (DI: reinit)
        value = setting.value
        fix = "write `start = warm`, `start = reinit`, or `start = from(meta)` naming an upper-level model"
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "from":
            if len(value.args) != 1 or value.kwargs or not isinstance(value.args[0], ast.Name):
                self.scope.error("from(...) names one upper-level model or variable", value.span, fix=fix)
                return NO_VALUE
            source = value.args[0]
            sym = self.scope.symbols.get(source.id)
            if sym is None or sym.kind not in ("var", "model") or sym.level != "upper":
                self.scope.error(f"'{source.id}' is not an upper-level model or variable", source.span, fix=fix)
                return NO_VALUE
            self.scope.used.add(source.id)
            return ir.Start(mode="from", source=source.id, line=setting.span.line)
        mode = self.scope.const(value, "start", words=True)
        if mode not in ("warm", "reinit"):
            if mode is not NO_VALUE:
                self.scope.error(f"start must be warm, reinit or from(model), not {mode!r}", value.span, fix=fix)
            return NO_VALUE
        return ir.Start(mode=mode, line=setting.span.line)


def _called(value: ast.Expr) -> str | None:
    """The name an optimiser or scheduler setting calls (`Adam(lr=0.1)`, or bare `Adam`)."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
        return value.func.id
    return value.id if isinstance(value, ast.Name) else None


def _names_a_size(value) -> bool:
    """A layer argument that is, or holds, a dataset's size: known only once the data is loaded."""
    return isinstance(value, ir.SizeRef) or (isinstance(value, list) and any(isinstance(v, ir.SizeRef) for v in value))
