"""`--set KEY=VALUE`: a setting from the command line (or `blodsl.compile(settings=...)`),
applied as an edit of the syntax tree before the program is checked.

The value is read as an expression, as in a .blo file, and replaces (or is added as)
the setting or keyword argument the key names; the ordinary checker then runs, so a
value from the command line meets every rule and every default a written one meets
(NS's alpha follows a new inner lr, VFO's y_hat_steps new steps). Each node the edit
adds carries a span tagged with its origin, so a message about it reads
`prog.blo:14:13 (--set lower.steps=5): error: ...`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterable, Mapping

from ..catalogue.operators import BY_NAME
from ..catalogue.params import RUN
from ..syntax import ast
from ..syntax.diagnostics import BloError
from ..syntax.parser import parse
from ..syntax.source import Source, Span

# (block, setting) pairs a key `block.setting` may replace (or add)
BLOCK_SETTINGS = {"upper": ("scheduler", "clip"), "lower": ("steps", "start"), "run": tuple(RUN)}
# (block, call) pairs whose keyword arguments a key `block.call.ARG` may replace (or add)
CALL_SETTINGS = {"upper": ("optimizer", "scheduler"), "lower": ("optimizer",)}
KEYS = (*(f"{block}.{key}" for block, keys in BLOCK_SETTINGS.items() for key in keys),
        *(f"{block}.{call}.ARG" for block, calls in CALL_SETTINGS.items() for call in calls),
        "OPERATOR.PARAM (e.g. CG.k)")


class BadSetting(ValueError):
    """A --set the command line cannot apply: not KEY=VALUE, an unknown key, or nothing for it to set."""


class SettingsRejected(BloError):
    """A program that checks as written, but not with the settings given: the fault is the settings'."""


@dataclass(frozen=True)
class Override:
    key: str
    text: str  # the value, as written

    @property
    def origin(self) -> str:
        return f"--set {self.key}={self.text}"


def overrides(settings: Iterable[str] | Mapping[str, object] | None) -> list[Override]:
    """`["KEY=VALUE", ...]`, or `{KEY: value}` where a str value is read as on the command
    line and any other value is a Python constant (a number, True/False, a list of them)."""
    if not settings:
        return []
    if isinstance(settings, Mapping):
        return [Override(key, value if isinstance(value, str) else _source_text(key, value))
                for key, value in settings.items()]
    found = []
    for item in settings:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise BadSetting(f"--set takes key=value, not {item!r}")
        found.append(Override(key.strip(), text.strip()))
    return found


def _source_text(key: str, value) -> str:
    if isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_source_text(key, v) for v in value) + "]"
    raise BadSetting(f"--set {key}: a setting is a number, True/False, text or a list, not {type(value).__name__}")


def apply(file: ast.File, settings: list[Override]) -> tuple[ast.File, list[Span]]:
    """The file with each setting in place (the tree given is left as it was), and where each landed."""
    items, placed = list(file.items), []
    for setting in settings:
        parts = setting.key.split(".")
        if len(parts) == 2 and parts[1] in BLOCK_SETTINGS.get(parts[0], ()):
            items, span = _set_in_block(items, parts[0], parts[1], setting)
        elif len(parts) == 3 and parts[1] in CALL_SETTINGS.get(parts[0], ()):
            items, span = _set_call_argument(items, parts[0], parts[1], parts[2], setting)
        elif len(parts) == 2 and parts[0] in BY_NAME:
            items, span = _set_operator_parameter(items, parts[0], parts[1], setting)
        else:
            raise BadSetting(f"--set: unknown setting '{setting.key}'; it accepts " + ", ".join(KEYS))
        placed.append(span)
    return replace(file, items=items), placed


def _value(setting: Override, at: Span) -> ast.Expr:
    """The value as an expression placed at `at`; text that is no expression (cuda:0) is a string."""
    try:
        (statement,) = parse(Source(setting.origin, f"value = {setting.text}\n")).items
        value = statement.value
    except (BloError, ValueError, AttributeError):
        value = ast.String(setting.text)
    return _placed(value, at)


def _placed(node, at: Span):
    """A copy of `node` whose every span is `at`."""
    if isinstance(node, list):
        return [_placed(n, at) for n in node]
    if not isinstance(node, ast.Node):
        return node
    return replace(node, span=at, **{f.name: _placed(getattr(node, f.name), at) for f in fields(node) if f.compare})


def _tagged(span: Span | None, setting: Override) -> Span:
    return replace(span or Span.point(1, 1), origin=setting.origin)


def _set_in_block(items: list, block: str, key: str, setting: Override):
    at = next((i for i, item in enumerate(items) if isinstance(item, ast.Block) and item.kind.text == block), None)
    if at is None:  # a block the program leaves out: add it at the end
        last = items[-1].span if items else None
        span = _tagged(Span.point(last.end_line + 1, 1) if last else None, setting)
        new = ast.Block(ast.Ident(block, span=span), [_setting(key, setting, span)], span=span, close_span=span)
        return items + [new], span
    body = list(items[at].body)
    found = next((i for i, s in enumerate(body) if isinstance(s, ast.Setting) and s.key.text == key), None)
    if found is None:
        span = _tagged(items[at].close_span or items[at].span, setting)
        body.append(_setting(key, setting, span))
    else:
        span = _tagged(body[found].value.span, setting)
        body[found] = replace(body[found], value=_value(setting, span))
    return _replaced(items, at, replace(items[at], body=body)), span


def _setting(key: str, setting: Override, span: Span) -> ast.Setting:
    return ast.Setting(ast.Ident(key, span=span), _value(setting, span), span=span)


def _set_call_argument(items: list, level: str, key: str, arg: str, setting: Override):
    """A keyword argument of the level's `optimizer = ...` or `scheduler = ...`."""
    block = next((i for i, item in enumerate(items) if isinstance(item, ast.Block) and item.kind.text == level), None)
    body = list(items[block].body) if block is not None else []
    found = next((i for i, s in enumerate(body) if isinstance(s, ast.Setting) and s.key.text == key), None)
    if found is None or not isinstance(body[found].value, (ast.Name, ast.Call)):
        add = f"; add one with --set {level}.{key}=NAME(...)" if key in BLOCK_SETTINGS[level] else ""
        raise BadSetting(f"--set {setting.key}: the {level} level has no {key} to set an argument of{add}")
    call, span = _with_keyword(body[found].value, arg, setting)
    body[found] = replace(body[found], value=call)
    return _replaced(items, block, replace(items[block], body=body)), span


def _set_operator_parameter(items: list, name: str, param: str, setting: Override):
    at = next((i for i, item in enumerate(items) if isinstance(item, ast.Setting) and item.key.text == "hypergradient"),
              None)
    chain = items[at].value if at is not None else None
    operators = chain.items if isinstance(chain, ast.Chain) else [chain] if chain is not None else []
    found = next((i for i, op in enumerate(operators) if _operator_name(op) == name), None)
    if found is None:
        written = " -> ".join(filter(None, map(_operator_name, operators)))
        raise BadSetting(f"--set {setting.key}: the pipeline `{written}` has no {name}")
    operators = list(operators)
    operators[found], span = _with_keyword(operators[found], param, setting)
    value = replace(chain, items=operators) if isinstance(chain, ast.Chain) else operators[0]
    return _replaced(items, at, replace(items[at], value=value)), span


def _operator_name(expr) -> str | None:
    match expr:
        case ast.Name(id=name) | ast.Call(func=ast.Name(id=name)):
            return name
    return None


def _with_keyword(expr: ast.Name | ast.Call, key: str, setting: Override) -> tuple[ast.Call, Span]:
    """`expr` as a call with keyword `key` set to the setting's value (replaced, or added at the end)."""
    call = expr if isinstance(expr, ast.Call) else ast.Call(expr, [], [], span=expr.span)
    kwargs = list(call.kwargs)
    found = next((i for i, kw in enumerate(kwargs) if kw.name.text == key), None)
    if found is None:
        span = _tagged(call.span, setting)
        kwargs.append(ast.Keyword(ast.Ident(key, span=span), _value(setting, span), span=span))
    else:
        span = _tagged(kwargs[found].value.span, setting)
        kwargs[found] = replace(kwargs[found], value=_value(setting, span))
    return replace(call, kwargs=kwargs), span


def _replaced(items: list, at: int, new) -> list:
    return items[:at] + [new] + items[at + 1:]


def rejected(error: BloError, placed: list[Span]) -> SettingsRejected:
    """The errors of a program that checks without its settings; an error placed elsewhere than
    at a setting gets a note pointing at each setting, its likely cause."""
    notes = [(span, "set on the command line") for span in placed]
    diagnostics = [d if d.severity != "error" or (d.span and d.span.origin) else replace(d, notes=d.notes + notes)
                   for d in error.diagnostics]
    return SettingsRejected(diagnostics, error.source)

