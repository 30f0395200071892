"""Arguments checked against their rows: a call to a built-in (how many
positional arguments, which keywords) and each constant value a program
writes, by the one validator of blodsl.catalogue.params."""

from __future__ import annotations

from ..catalogue.builtins import Signature
from ..catalogue.params import REQUIRED, Param
from ..syntax import ast
from ..syntax.diagnostics import possessive, suggest
from .scope import NO_VALUE, Scope


def checked_value(scope: Scope, row: Param, expr: ast.Expr, subject: str, fix: str | None = None):
    """The constant `expr` holds, if `row` accepts it; else NO_VALUE, reported as
    '{subject} must be ..., not {value}'."""
    value = scope.const(expr, subject, words=row.bare_words)
    if value is NO_VALUE:
        return NO_VALUE
    why = row.problem(value)
    if why:
        scope.error(f"{subject} {why}, not {value!r}", expr.span, fix=fix)
        return NO_VALUE
    return row.coerce(value)


def check_call(scope: Scope, sig: Signature, call: ast.Call) -> dict[str, object] | None:
    """The call's keyword values, or None when something was wrong (and reported)."""
    ok = True
    n = len(call.args)
    if n < sig.min_args or (sig.max_args is not None and n > sig.max_args):
        expected = (f"{sig.min_args}" if sig.min_args == sig.max_args
                    else f"{sig.min_args} to {sig.max_args}" if sig.max_args is not None
                    else f"at least {sig.min_args}")
        scope.error(f"{sig.name} takes {expected} positional argument{'s' if expected != '1' else ''}, "
                    f"not {n}", call.span, fix=f"write {sig.summary.split(':')[0]}")
        ok = False
    values, misspelt = {}, set()   # misspelt: rows an unknown keyword was probably meant as
    for kw in call.kwargs:
        key = kw.name.text
        if key not in sig.keywords:
            fix = suggest(key, sig.keywords) or (f"{sig.name} takes: {', '.join(sig.keywords)}"
                                                 if sig.keywords else f"{sig.name} takes no keyword arguments")
            scope.error(f"{sig.name} has no keyword argument '{key}'", kw.name.span, fix=fix)
            misspelt |= {name for name in sig.keywords if suggest(key, [name])}
            ok = False
        elif key in values:
            scope.error(f"keyword argument '{key}' is given twice", kw.name.span)
            ok = False
        else:
            values[key] = checked_value(scope, sig.keywords[key], kw.value, f"{possessive(sig.name)} {key}")
            ok &= values[key] is not NO_VALUE
    for row in sig.keywords.values():
        if row.default is REQUIRED and row.name not in values and row.name not in misspelt:
            scope.error(f"{sig.name} needs the keyword argument '{row.name}'", call.span,
                        fix=f"write {sig.summary.split(':')[0]}")
            ok = False
    return values if ok else None
