"""A call to a built-in checked against its signature: how many positional
arguments, which keywords, and the constant value of each keyword."""

from __future__ import annotations

from ..catalogue.builtins import Signature
from ..syntax import ast
from ..syntax.diagnostics import suggest
from .scope import NO_VALUE, Scope


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
    values, seen = {}, set()
    for kw in call.kwargs:
        key = kw.name.text
        if key not in sig.keywords:
            fix = suggest(key, sig.keywords) or (f"{sig.name} takes: {', '.join(sig.keywords)}"
                                                 if sig.keywords else f"{sig.name} takes no keyword arguments")
            scope.error(f"{sig.name} has no keyword argument '{key}'", kw.name.span, fix=fix)
            ok = False
            continue
        if key in seen:
            scope.error(f"keyword argument '{key}' is given twice", kw.name.span)
            ok = False
            continue
        seen.add(key)
        choices = sig.keywords[key]
        if choices:
            value = scope.const(kw.value, f"{sig.name}'s {key}", words=any(isinstance(c, str) for c in choices))
            if value is NO_VALUE:
                ok = False
            elif value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
                scope.error(f"{sig.name}'s {key} must be one of {', '.join(map(repr, choices))}, "
                             f"not {value!r}", kw.value.span)
                ok = False
            else:
                values[key] = value
        else:
            values[key] = kw.value
    for key in sig.required_keywords:
        if key not in seen:
            scope.error(f"{sig.name} needs the keyword argument '{key}'", call.span, fix=f"write {sig.summary}")
            ok = False
    return values if ok else None
