"""The syntax tree of a .blo file, as the parser reads it.

Nodes are plain dataclasses. Every node carries its source span, kept out of
equality so tests compare trees, not positions. The tree says what was
written; what it means is the resolver's job (blodsl.semantics).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass

from .source import Span


@dataclass
class Node:
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


# --- expressions -----------------------------------------------------------

@dataclass
class Ident(Node):
    """A name as written, in a position that is not an expression (a key, a declared name)."""
    text: str


@dataclass
class Number(Node):
    value: int | float


@dataclass
class String(Node):
    value: str


@dataclass
class Name(Node):
    id: str


@dataclass
class Attribute(Node):
    obj: Expr
    attr: Ident


@dataclass
class Index(Node):
    obj: Expr
    index: Expr


@dataclass
class Keyword(Node):
    name: Ident
    value: Expr


@dataclass
class Call(Node):
    func: Expr
    args: list[Expr]
    kwargs: list[Keyword]


@dataclass
class BinOp(Node):
    op: str
    left: Expr
    right: Expr


@dataclass
class UnaryOp(Node):
    op: str
    operand: Expr


@dataclass
class Compare(Node):
    op: str
    left: Expr
    right: Expr


@dataclass
class ListExpr(Node):
    items: list[Expr]


@dataclass
class TupleExpr(Node):
    items: list[Expr]


@dataclass
class Chain(Node):
    """Operators joined by '->': only meaningful as the hypergradient pipeline."""
    items: list[Expr]


Expr = Number | String | Name | Attribute | Index | Call | BinOp | UnaryOp | Compare | ListExpr | TupleExpr | Chain


# --- statements ------------------------------------------------------------

@dataclass
class Setting(Node):
    key: Ident
    value: Expr


@dataclass
class Rebind(Node):
    name: Ident
    to: Ident


@dataclass
class Declaration(Node):
    """`var x = ...`, `model net = ...`, `metric acc = ... with tasks = test_tasks`."""
    keyword: str
    name: Ident
    value: Expr
    rebinds: list[Rebind] = field(default_factory=list)


@dataclass
class Destructure(Node):
    """`train, val, test = digits(...)`: one dataset per split."""
    names: list[Ident]
    value: Expr


Statement = Setting | Declaration | Destructure


@dataclass
class Block(Node):
    kind: Ident
    body: list[Statement]
    close_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass
class Import(Node):
    ref: String
    alias: Ident


@dataclass
class File(Node):
    """A whole .blo file: its imports, blocks and top-level settings, in order."""
    items: list[Import | Block | Statement]


def walk(node):
    """Every node under `node` (a node or a list of them), parents first."""
    if isinstance(node, list):
        for item in node:
            yield from walk(item)
    elif isinstance(node, Node):
        yield node
        for f in fields(node):
            if f.compare:
                yield from walk(getattr(node, f.name))


def dump(node, indent: int = 0) -> str:
    """An indented rendering of a tree, each node with its line:col (`blodsl compile --emit ast`)."""
    pad = "  " * indent
    if isinstance(node, list):
        if not node:
            return "[]"
        return "\n".join(f"{pad}- " + dump(item, indent + 1).lstrip() for item in node)
    if not is_dataclass(node):
        return repr(node)
    shown = [f for f in fields(node) if f.compare]
    simple = all(not is_dataclass(getattr(node, f.name)) and not isinstance(getattr(node, f.name), list)
                 for f in shown)
    if simple:
        args = ", ".join(repr(getattr(node, f.name)) for f in shown)
        where = f"  @{node.span.line}:{node.span.col}" if node.span else ""
        return f"{pad}{type(node).__name__}({args}){where}"
    where = f"  @{node.span.line}:{node.span.col}" if node.span else ""
    lines = [f"{pad}{type(node).__name__}{where}"]
    for f in shown:
        value = getattr(node, f.name)
        if isinstance(value, list) and not value:
            continue
        if not is_dataclass(value) and not isinstance(value, list):
            lines.append(f"{pad}  {f.name}: {value!r}")
            continue
        rendered = dump(value, indent + 2)
        if is_dataclass(value) and "\n" not in rendered:
            lines.append(f"{pad}  {f.name}: {rendered.lstrip()}")
        else:
            lines.append(f"{pad}  {f.name}:\n{rendered}")
    return "\n".join(lines)
