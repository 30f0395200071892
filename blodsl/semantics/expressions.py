"""Resolving expressions: names to references, calls checked against the built-ins.

Each expression gets its IR and its kind (tensor, number, model, ...); names
are looked up in, and problems reported to, the scope it is given.
"""

from __future__ import annotations

import contextlib

from .. import ir
from ..catalogue.builtins import FUNCTIONS, METRICS, TAKES_MODEL, builtin_kind
from ..syntax import ast
from ..syntax.diagnostics import suggest
from ..syntax.values import WORDS
from .calls import check_call
from .data import image_size_fix
from .scope import Scope


class Expressions:
    def __init__(self, scope: Scope):
        self.scope = scope
        self.weights_read: str | None = None   # a per-weight variable read as a value, in a per-weight rate

    @contextlib.contextmanager
    def reading_weights(self, name: str):
        """While a per-weight rate (`lr=exp(log_lrs)`) is resolved, its variable is a value."""
        self.weights_read = name
        try:
            yield
        finally:
            self.weights_read = None

    def expr(self, e: ast.Expr, metric: bool) -> tuple[ir.Expr, str] | None:
        """(IR expression, kind) where kind is tensor, number, string, bool, model, list or None;
        the expression carries its span, for messages about the value it makes at run time."""
        resolved = self.resolve(e, metric)
        if resolved is None:
            return None
        node, kind = resolved
        return node.model_copy(update={"span": ir.Written.of(e.span)}), kind

    def resolve(self, e: ast.Expr, metric: bool) -> tuple[ir.Expr, str] | None:
        match e:
            case ast.Number(value=v):
                return ir.Const(value=v), "number"
            case ast.String(value=v):
                return ir.Const(value=v), "string"
            case ast.Name(id=word) if word in WORDS:
                return ir.Const(value=WORDS[word]), "bool"
            case ast.Name(id=name):
                return self.name(e, name)
            case ast.Attribute():
                return self.attribute(e)
            case ast.Call():
                return self.call(e, metric)
            case ast.BinOp(op=op, left=left, right=right) | ast.Compare(op=op, left=left, right=right):
                sides = [self.value(left, metric), self.value(right, metric)]
                if None in sides:
                    return None
                (l, lk), (r, rk) = sides
                node = ir.BinOp if isinstance(e, ast.BinOp) else ir.Compare
                kind = "number" if lk == rk == "number" and node is ir.BinOp else "tensor"
                return node(op=op, left=l, right=r), kind
            case ast.UnaryOp(op=op, operand=operand):
                inner = self.value(operand, metric)
                return None if inner is None else (ir.Unary(op=op, operand=inner[0]), inner[1])
            case ast.Index(obj=obj, index=index):
                parts = [self.value(obj, metric), self.value(index, metric)]
                return None if None in parts else (ir.Index(obj=parts[0][0], index=parts[1][0]), "tensor")
            case ast.ListExpr(items=items) | ast.TupleExpr(items=items):
                parts = [self.value(i, metric) for i in items]
                return None if None in parts else (ir.ListOf(items=[p[0] for p in parts]), "list")
            case ast.Chain():
                self.scope.error("'->' joins the operators of the hypergradient pipeline and means nothing here",
                                 e.span, fix="write the pipeline on its own line: `hypergradient = PTT -> RAD`")
                return None
        self.scope.error("unexpected expression", e.span)
        return None

    def value(self, e: ast.Expr, metric: bool) -> tuple[ir.Expr, str] | None:
        """An expression used as a number or tensor (arithmetic operands, function arguments)."""
        resolved = self.expr(e, metric)
        if resolved is None:
            return None
        if resolved[1] == "model":
            self.scope.error(f"'{_head(e)}' is a model; apply it to data, e.g. {_head(e)}(train.x), or take its "
                             f"weights with sqnorm({_head(e)})", e.span)
            return None
        return resolved

    def name(self, e: ast.Name, name: str):
        sym = self.scope.symbols.get(name)
        if sym is None:
            kind = builtin_kind(name)
            if kind:
                self.scope.error(f"'{name}' is a built-in {kind} and is not a value", e.span,
                                 fix=_builtin_use(name, kind))
            else:
                self.scope.error(f"undefined name '{name}'", e.span,
                                 fix=suggest(name, list(self.scope.symbols) + list(FUNCTIONS))
                                 or "declare it with `var`, `model`, or in the data block")
            return None
        self.scope.used.add(name)
        if sym.kind == "broken":
            return None
        if sym.kind == "var" and sym.decl is not None and sym.decl.init == "like" and name != self.weights_read:
            self.scope.error(f"'{name}' holds one number per weight of {sym.decl.args['model']}; it is a setting of "
                             "the inner optimiser, not a value", e.span, fix=f"use it as SGD(lr={name})")
            return None
        if sym.kind == "var":
            return ir.VarRef(level=sym.level, name=name), "tensor"
        if sym.kind == "model":
            return ir.ModelRef(level=sym.level, name=name), "model"
        if sym.kind == "dataset":
            fields = ", ".join(f"{name}.{f}" for f in sym.decl.fields)
            self.scope.error(f"'{name}' is a dataset; use one of its tensors", e.span, fix=f"write one of {fields}")
            return None
        if sym.kind == "metric":
            self.scope.error(f"'{name}' is a metric and cannot be used in an expression", e.span)
            return None
        self.scope.error(f"'{name}' is an imported function; call it", e.span, fix=f"write {name}(...)")
        return None

    def attribute(self, e: ast.Attribute):
        head = e.obj.id if isinstance(e.obj, ast.Name) else None
        sym = self.scope.symbols.get(head) if head else None
        attr = e.attr.text
        if sym and sym.kind == "broken":
            return None
        if sym and sym.kind == "dataset":
            self.scope.used.add(head)
            ds = sym.decl
            if attr in ds.fields:
                return ir.DataRef(dataset=head, field=attr), "tensor"
            if attr in ds.sizes:
                return ir.SizeRef(dataset=head, size=attr), "number"
            self.scope.error(f"dataset '{head}' has no field '{attr}'", e.attr.span,
                             fix=image_size_fix(ds, attr) or suggest(attr, ds.fields + ds.sizes)
                             or f"{head} has tensors {', '.join(ds.fields)} and sizes {', '.join(ds.sizes)}")
            return None
        if sym and sym.kind == "model":
            self.scope.used.add(head)
            model = sym.decl
            if model.spec.kind in ("user", "input") or attr in model.parameters:
                return ir.ParamRef(level=sym.level, model=head, param=attr), "tensor"
            if model.parameters:
                fix = suggest(attr, model.parameters) or f"{model.spec.name}'s weights are " + ", ".join(model.parameters)
            else:
                fix = f"{model.spec.name}'s weights are not named one by one; use sqnorm({head}) or norm({head})"
            self.scope.error(f"model '{head}' has no weight '{attr}'", e.attr.span, fix=fix)
            return None
        if head and head not in self.scope.symbols:
            return self.name(e.obj, head)
        self.scope.error("only datasets (train.x) and models (net.weight) have attributes", e.span)
        return None

    def call(self, e: ast.Call, metric: bool):
        if not isinstance(e.func, ast.Name):
            self.scope.error("only functions and models can be called", e.func.span)
            return None
        name = e.func.id
        sym = self.scope.symbols.get(name)
        if sym is not None:
            self.scope.used.add(name)
            if sym.kind == "broken":
                return None
            if sym.kind == "model":
                if e.kwargs:
                    self.scope.error("a model is applied to its inputs only", e.kwargs[0].span)
                    return None
                if not e.args:
                    self.scope.error(f"model '{name}' needs an input", e.span, fix=f"write e.g. {name}(train.x)")
                    return None
                args = [self.value(a, metric) for a in e.args]
                return None if None in args else (ir.Apply(level=sym.level, model=name, args=[a[0] for a in args]),
                                                  "tensor")
            if sym.kind == "import":
                args = [self.expr(a, metric) for a in e.args]
                kwargs = {kw.name.text: self.expr(kw.value, metric) for kw in e.kwargs}
                if None in args or None in kwargs.values():
                    return None
                return ir.UserCall(ref=sym.decl, args=[a[0] for a in args],
                                   kwargs={k: v[0] for k, v in kwargs.items()}), "tensor"
            self.scope.error(f"'{name}' is a {_symbol_words(sym.kind)}, not a function", e.func.span,
                             fix=f"write {name}.x" if sym.kind == "dataset" else None)
            return None
        if name in METRICS and not metric:
            self.scope.error(f"{name} is a metric, not differentiable, and cannot be part of an objective", e.func.span,
                             fix=f"report it from the run block: `metric {name}_test = {METRICS[name].summary.split(':')[0]}`")
            return None
        sig = FUNCTIONS.get(name) or METRICS.get(name)
        if sig is None:
            kind = builtin_kind(name)
            if kind:
                self.scope.error(f"{name} is a {kind} and cannot be called in an expression", e.func.span,
                                 fix=_builtin_use(name, kind))
            else:
                self.scope.error(f"unknown function '{name}'", e.func.span,
                                 fix=suggest(name, list(FUNCTIONS) + list(METRICS))
                                 or 'built-ins: ' + ", ".join(FUNCTIONS) + '; for your own: import "pkg.module:function" as name')
            return None
        kwargs = check_call(self.scope, sig, e)
        if kwargs is None:
            return None
        args = []
        for i, a in enumerate(e.args):
            resolved = self.expr(a, metric) if name in TAKES_MODEL else self.value(a, metric)
            if resolved is None:
                return None
            if name == "mix" and i == 1 and resolved[1] != "list":
                self.scope.error("mix's candidates are a list: mix(logits, [a(x), b(x)])", a.span)
                return None
            if name == "reshape" and i == 1 and not self.dimensions(a, resolved):
                return None
            args.append(resolved[0])
        return ir.Call(fn=name, args=args, kwargs={k: _constant(v) for k, v in kwargs.items()}), "tensor"

    def dimensions(self, e: ast.Expr, resolved: tuple[ir.Expr, str]) -> bool:
        """reshape's shape: a list of whole numbers and sizes (`[-1, train.channels, 8, 8]`), one at most -1."""
        node, kind = resolved
        if kind != "list":
            self.scope.error("reshape's shape is a list of dimensions", e.span,
                             fix="write e.g. reshape(train.x, [-1, 1, 8, 8])")
            return False
        for item, written in zip(node.items, e.items):
            if not _whole(item):
                self.scope.error(f"reshape's dimensions are whole numbers and dataset sizes, not "
                                 f"{self.scope.source.text_of(written.span)}", written.span)
                return False
            value = _constant_value(item)
            if value is not None and (value == 0 or value < -1):
                self.scope.error(f"a dimension of reshape is -1 (what is left) or a whole number >= 1, not {value}",
                                 written.span)
                return False
        if [_constant_value(item) for item in node.items].count(-1) > 1:
            self.scope.error("only one of reshape's dimensions may be -1", e.span)
            return False
        return True


def _whole(node: ir.Expr) -> bool:
    """A whole number the program writes: integers and dataset sizes, with + - * of them."""
    match node:
        case ir.Const(value=v):
            return isinstance(v, int) and not isinstance(v, bool)
        case ir.SizeRef():
            return True
        case ir.Unary(operand=operand):
            return _whole(operand)
        case ir.BinOp(op=op, left=left, right=right):
            return op in ("+", "-", "*") and _whole(left) and _whole(right)
    return False


def _constant_value(node: ir.Expr) -> int | None:
    """A whole number known before the data is loaded (`-1`, `2 * 4`); None for one a size makes."""
    match node:
        case ir.Const(value=v):
            return v
        case ir.Unary(op=op, operand=operand):
            inner = _constant_value(operand)
            return None if inner is None else -inner if op == "-" else inner
        case ir.BinOp(op=op, left=left, right=right):
            a, b = _constant_value(left), _constant_value(right)
            return None if None in (a, b) else {"+": a + b, "-": a - b, "*": a * b}[op]
    return None


def _builtin_use(name: str, kind: str) -> str | None:
    return {"layer": f"declare a model in a level block: `model net = {name}(...)`",
            "initialiser": f"declare a variable in a level block: `var w = {name}(...)`",
            "data source": f"declare data in the data block: `train, test = {name}(...)`",
            "optimiser": f"set it in a level block: `optimizer = {name}(lr=...)`",
            "scheduler": f"set it in the upper block: `scheduler = {name}(...)`",
            "function": f"call it: {name}(...)",
            "metric": f"use it in the run block: `metric m = {name}(...)`"}.get(kind)


def _head(e: ast.Expr) -> str:
    return e.id if isinstance(e, ast.Name) else "model"


def _symbol_words(kind: str) -> str:
    return {"dataset": "dataset", "var": "variable", "metric": "metric"}.get(kind, kind)


def _constant(value) -> ir.Expr:
    """A constant keyword value as an expression: lists (`dim=[0, 1]`) item by item."""
    if isinstance(value, list):
        return ir.ListOf(items=[_constant(v) for v in value])
    return ir.Const(value=value)
