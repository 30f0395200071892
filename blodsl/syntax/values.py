"""Constant values written in a program: numbers, strings, booleans, lists."""

from __future__ import annotations

from . import ast
from .diagnostics import Diagnostic

WORDS = {"True": True, "False": False, "true": True, "false": False, "None": None}


class NotConstant(Exception):
    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic


def constant(expr: ast.Expr, *, what: str = "this value", words: bool = False):
    """The Python value of a constant expression. With `words`, a bare name
    stands for itself, so `start = warm` reads like `start = "warm"`; the
    caller then checks it is one of the words it knows."""
    match expr:
        case ast.Number(value=v) | ast.String(value=v):
            return v
        case ast.Name(id=word) if word in WORDS:
            return WORDS[word]
        case ast.Name(id=word) if words:
            return word
        case ast.UnaryOp(op=op, operand=operand):
            v = constant(operand, what=what)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v if op == "-" else v
        case ast.ListExpr(items=items) | ast.TupleExpr(items=items):
            return [constant(item, what=what, words=words) for item in items]
    raise NotConstant(Diagnostic(f"{what} must be a constant (a number, string, True/False or a list)",
                                 expr.span))
