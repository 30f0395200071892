"""Inner-optimiser settings learned as upper variables: `SGD(lr=exp(log_lr))`,
`Adam(betas=[sigmoid(b), 0.999])`, and one learning rate per weight,
`var lrs = like(learner, value=0.01)` with `SGD(lr=lrs)` (Meta-SGD).

A learned setting is an expression of scalar upper variables, evaluated at every
inner step, so the hypergradient reaches it through the steps it makes. Which
operators can see it is a rule over the pipeline (rules.py).
"""

from __future__ import annotations

from .. import ir
from ..catalogue.builtins import LIKE
from ..catalogue.params import Param
from ..syntax import ast
from ..syntax.values import NotConstant, constant
from .calls import check_call
from .expressions import Expressions
from .scope import NO_VALUE, Scope

EXAMPLE = "e.g. `var log_lr = -2.0` in the upper block and `SGD(lr=exp(log_lr))`"


def is_learned(expr: ast.Expr) -> bool:
    """Whether an optimiser argument is an expression rather than a constant."""
    try:
        constant(expr)
        return False
    except NotConstant:
        return True


def like_variable(scope: Scope, name: str, value: ast.Call, level: str) -> ir.Variable | None:
    """`var lrs = like(net, value=0.01)`; the model it names is checked once all are declared."""
    kwargs = check_call(scope, LIKE, value)
    if kwargs is None:
        return None
    if level != "upper":
        scope.error("like(...) declares per-weight settings of the inner optimiser, which the upper level learns",
                    value.span, fix="declare it in the upper block")
        return None
    target = value.args[0]
    if not isinstance(target, ast.Name):
        scope.error("like(...) names a model", target.span, fix="write e.g. like(learner, value=0.01)")
        return None
    return ir.Variable(name=name, level=level, init="like", shape=[],
                       args={"model": target.id, "value": kwargs.get("value", 0.0)}, line=value.span.line)


def check_like_target(scope: Scope, stmt: ast.Declaration):
    target = stmt.value.args[0]
    sym = scope.symbols.get(target.id)
    if sym is not None and sym.kind == "broken":
        return
    if sym is None or sym.kind != "model":
        scope.error(f"'{target.id}' is not a model", target.span,
                    fix="like(...) names a model of either level, whose weights the variable mirrors")
    else:
        scope.used.add(target.id)


def learned_setting(scope: Scope, expressions: Expressions, optimizer: str, row: Param, kw: ast.Keyword,
                    lower_declared: list):
    """The IR of a learned setting `optimizer(key=expr)`, or NO_VALUE (reported)."""
    key, value = kw.name.text, kw.value
    subject = f"{optimizer}'s {key}"
    if row.type not in (float, list):
        scope.error(f"{subject} must be a constant", value.span,
                    fix="only numeric settings can be learned from upper variables")
        return NO_VALUE
    weights = _weights_read(scope, value)
    if weights:
        return _per_weight(scope, expressions, subject, key, value, weights, lower_declared)
    if row.type is list:
        items = value.items if isinstance(value, (ast.ListExpr, ast.TupleExpr)) else None
        if items is None or (row.length is not None and len(items) != row.length):
            scope.error(f"{subject} must be {row.describe()}, each a number or an expression of upper variables",
                        value.span)
            return NO_VALUE
        parts = [_item(scope, expressions, subject, row, item) for item in items]
        return NO_VALUE if NO_VALUE in parts else ir.ListOf(items=parts, span=ir.Written.of(value.span))
    return _scalar(scope, expressions, subject, value)


def _item(scope, expressions, subject, row: Param, item: ast.Expr):
    if is_learned(item):
        return _scalar(scope, expressions, subject, item)
    v = constant(item)
    bounded = Param(row.name, float, low=row.low, low_open=row.low_open, high=row.high, high_open=row.high_open)
    if bounded.problem(v):
        scope.error(f"{subject} {bounded.problem(v)}, not {v!r}", item.span)
        return NO_VALUE
    return ir.Const(value=float(v))


def _scalar(scope: Scope, expressions: Expressions, subject: str, value: ast.Expr):
    resolved = expressions.expr(value, metric=False)
    if resolved is None:
        return NO_VALUE
    expr, kind = resolved
    reads = ir.references(expr)
    wrong = sorted(name for level, name in reads if level != "upper" or not _scalar_variable(scope, name))
    if wrong or not reads or kind not in ("number", "tensor"):
        what = (f"it reads {', '.join(wrong)}, which {'is' if len(wrong) == 1 else 'are'} not "
                "a scalar upper-level variable" if wrong else "it reads no upper-level variable")
        scope.error(f"{subject} must be a constant or an expression of scalar upper-level variables: {what}",
                    value.span, fix=EXAMPLE)
        return NO_VALUE
    return expr


def _scalar_variable(scope: Scope, name: str) -> bool:
    sym = scope.symbols.get(name)
    return sym.kind == "var" and sym.decl.init != "like" and not sym.decl.shape


def _weights_read(scope: Scope, value: ast.Expr) -> list[ir.Variable]:
    """The per-weight variables (`like(...)`) an expression names."""
    found = []
    for node in ast.walk(value):
        sym = scope.symbols.get(node.id) if isinstance(node, ast.Name) else None
        if sym is not None and sym.kind == "var" and sym.decl.init == "like" and sym.decl not in found:
            found.append(sym.decl)
    return found


# What a per-weight rate may apply to its variable: one number per weight in, one out.
PER_WEIGHT_FUNCTIONS = ("exp", "sigmoid", "softplus", "abs", "sqrt", "log", "tanh", "relu")


def _per_weight(scope: Scope, expressions: Expressions, subject: str, key: str, value: ast.Expr,
                weights: list[ir.Variable], lower_declared: list):
    """`lr=lrs` or `lr=exp(log_lrs)`: one rate per weight, the lower level one model of the structure
    the variable mirrors."""
    first = weights[0]
    if key != "lr":
        scope.error(f"{subject} is one number; '{first.name}' holds one per weight", value.span,
                    fix="only lr takes one value per weight, e.g. SGD(lr=lrs)")
        return NO_VALUE
    if len(weights) > 1 or not _elementwise_of(value, first.name):
        scope.error(f"{subject} per weight is '{first.name}' itself or an elementwise function of it and numbers",
                    value.span, fix=f"write e.g. lr={first.name}, or lr=exp({first.name}) with {first.name} "
                                    f"holding log-rates; functions: {', '.join(PER_WEIGHT_FUNCTIONS)}")
        return NO_VALUE
    target = scope.symbols.get(first.args["model"])
    if target is None or target.kind != "model":
        return NO_VALUE   # reported at the declaration
    models = [d for d in lower_declared if isinstance(d, ir.Model)]
    if len(models) != 1 or len(lower_declared) != 1 or models[0].spec != target.decl.spec:
        scope.error(f"'{first.name}' mirrors the weights of {target.decl.name}, and the lower level's variables are "
                    "not one model of that structure", value.span,
                    notes=[(target.span, f"{target.decl.name} is declared here")],
                    fix="declare lrs = like(M) with M the lower level's one model (or an upper model of the same "
                        "layers)")
        return NO_VALUE
    with expressions.reading_weights(first.name):
        resolved = expressions.expr(value, metric=False)
    return NO_VALUE if resolved is None else resolved[0]


def _elementwise_of(value: ast.Expr, name: str) -> bool:
    match value:
        case ast.Name(id=n):
            return n == name
        case ast.Number():
            return True
        case ast.UnaryOp(operand=operand):
            return _elementwise_of(operand, name)
        case ast.BinOp(op=op, left=left, right=right) if op in ("+", "-", "*", "/", "**"):
            return _elementwise_of(left, name) and _elementwise_of(right, name)
        case ast.Call(func=ast.Name(id=fn), args=[arg], kwargs=[]) if fn in PER_WEIGHT_FUNCTIONS:
            return _elementwise_of(arg, name)
    return False
