"""What the language server knows of one program being edited: the checker's problems with it,
the names it declares, and what to say at a position (hover, completion, definition).

Positions here are 0-based lines and 0-based columns counted in characters; the server
converts the editor's. A program mid-edit rarely parses, so what needs the syntax tree takes
it from the text with the lines the parser stops at blanked out (`_tolerant_tree`), and what
depends on the cursor reads the text around it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..catalogue import builtins
from ..catalogue.operators import BY_NAME, CATALOGUE, Operator
from ..catalogue.params import RUN, Param
from ..frontend import check_source
from ..semantics.blocks import BLOCKS, LEVEL_SETTINGS, RUN_SETTINGS, TOP_SETTINGS
from ..syntax import ast
from ..syntax.diagnostics import BloError, Diagnostic, possessive
from ..syntax.parser import parse
from ..syntax.source import Source, Span
from ..syntax.values import NotConstant, constant
from .cheatsheet import default_text, signature

PIPELINE = TOP_SETTINGS[0]          # the setting whose value is the pipeline
DECLARING = {"upper": ("var", "model"), "lower": ("var", "model"), "run": ("metric",)}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REPAIRS = 8                        # lines blanked, at most, to get a syntax tree of a program mid-edit


@dataclass
class Declared:
    """A name the program declares."""
    name: str
    kind: str                       # dataset, var, model, metric or import
    span: Span                      # the name where it is declared
    statement: Span                 # the whole declaration
    level: str | None = None        # the block it is declared in
    value: ast.Expr | None = None


@dataclass
class Item:
    """A completion: what is inserted, what kind of thing it is, and a line about it."""
    label: str
    kind: str                       # operator, parameter, function, layer, data source, optimiser, scheduler,
                                    # initialiser, metric, field, name, keyword, setting, value
    detail: str = ""
    insert: str | None = None
    first: bool = False             # offered before the others


@dataclass
class Document:
    path: str
    text: str
    base_dir: Path | None = None
    lines: list[str] = field(init=False)
    tree: ast.File | None = field(init=False)
    names: dict[str, Declared] = field(init=False)

    def __post_init__(self):
        self.lines = self.text.split("\n")
        self.tree = _tolerant_tree(Source(self.path, self.text))
        self.names = declarations(self.tree) if self.tree else {}

    def problems(self) -> list[Diagnostic]:
        """The errors and warnings `blodsl check` reports for the text."""
        try:
            return check_source(Source(self.path, self.text), self.base_dir).warnings
        except BloError as e:
            return e.diagnostics

    # --- at a position -------------------------------------------------------------------

    def hover(self, line: int, col: int) -> tuple[str, Span] | None:
        """Markdown about the word at the position, and the word's span."""
        at = self._word_at(line, col)
        if at is None:
            return None
        word, start, end = at
        span = Span(line + 1, start + 1, line + 1, end + 1)
        text = self.lines[line]
        owner = _owner(text, start)
        if owner is not None:
            about = self._member(owner, word)
        elif self._keyword_argument(line, start, end):
            about = self._argument(line, start, word)
        elif self._in_pipeline(line) and word in BY_NAME:
            about = operator_markdown(BY_NAME[word])
        elif word in self.names:
            about = self._declaration(self.names[word])
        else:
            about = builtin_markdown(word) or setting_markdown(word)
        return (about, span) if about else None

    def definition(self, line: int, col: int) -> Span | None:
        """Where the name at the position is declared."""
        at = self._word_at(line, col)
        if at is None or _owner(self.lines[line], at[1]) is not None or self._keyword_argument(line, at[1], at[2]):
            return None
        if self._in_pipeline(line) and at[0] in BY_NAME:
            return None
        declared = self.names.get(at[0])
        return declared.span if declared else None

    def complete(self, line: int, col: int) -> list[Item]:
        text = self.lines[line][:col] if line < len(self.lines) else ""
        if _in_comment_or_string(text, len(text)):
            return []
        member = re.search(r"([A-Za-z_]\w*)\s*\.\s*\w*$", text)
        if member:
            return self._members(member.group(1))
        call = self._open_call(line, col)
        if self._in_pipeline(line):
            if call in BY_NAME:
                return _parameters(BY_NAME[call].params, self._written_keywords(line, col))
            return _operators(text)
        if call is not None:
            return _parameters(_keyword_rows(call), self._written_keywords(line, col)) + self._everything()
        head = re.match(r"\s*(\w*)$", text)
        if head:
            return self._statements(self._block_at(line))
        setting = re.match(r"\s*(\w+)\s*=\s*\w*$", text)
        return _values(setting.group(1) if setting else None) + self._everything()

    # --- what the position is in ------------------------------------------------------------

    def _word_at(self, line: int, col: int) -> tuple[str, int, int] | None:
        if not 0 <= line < len(self.lines):
            return None
        text = self.lines[line]
        for m in _WORD.finditer(text):
            if m.start() <= col <= m.end() and not _in_comment_or_string(text, m.start()):
                return m.group(), m.start(), m.end()
        return None

    def _in_pipeline(self, line: int) -> bool:
        statement = next((item for item in self.tree.items if isinstance(item, ast.Setting)
                          and item.key.text == PIPELINE), None) if self.tree else None
        if statement is not None and statement.span.line <= line + 1 <= statement.span.end_line:
            return True
        return re.match(rf"\s*{PIPELINE}\s*=", self.lines[line]) is not None

    def _open_call(self, line: int, col: int) -> str | None:
        """The name of the call whose parentheses hold the position, looking back over the lines
        of the statement; None outside any call."""
        depth = 0
        for number in range(line, max(-1, line - 20), -1):
            text = self.lines[number][:col] if number == line else self.lines[number]
            code = text[:_code_end(text)]
            for i in range(len(code) - 1, -1, -1):
                if code[i] in ")]":
                    depth += 1
                elif code[i] in "([":
                    if depth == 0:
                        name = re.search(r"([A-Za-z_]\w*)\s*$", code[:i])
                        return name.group(1) if code[i] == "(" and name else None
                    depth -= 1
            if number != line and depth == 0 and not code.rstrip().endswith(","):
                return None   # an earlier statement
        return None

    def _keyword_argument(self, line: int, start: int, end: int) -> bool:
        """Whether the word from `start` to `end` names a keyword argument of a call."""
        return re.match(r"\s*=(?!=)", self.lines[line][end:]) is not None and self._open_call(line, start) is not None

    def _written_keywords(self, line: int, col: int) -> set[str]:
        text = self.lines[line][:col]
        return set(re.findall(r"([A-Za-z_]\w*)\s*=(?!=)", text[text.rfind("(") + 1:]))

    def _block_at(self, line: int) -> str | None:
        """The block whose braces hold the line, from the text above it."""
        open_blocks: list[str] = []
        for text in self.lines[:line]:
            code = text[:_code_end(text)]
            for m in re.finditer(r"(\w*)\s*\{|\}", code):
                if m.group().endswith("{"):
                    open_blocks.append(m.group(1))
                elif open_blocks:
                    open_blocks.pop()
        return open_blocks[-1] if open_blocks else None

    # --- what to say -------------------------------------------------------------------------

    def _declaration(self, declared: Declared) -> str:
        lines = self.lines[declared.statement.line - 1: declared.statement.end_line]
        indent = min((len(t) - len(t.lstrip()) for t in lines if t.strip()), default=0)
        where = f" of the {declared.level} level" if declared.level in ("upper", "lower") else ""
        code = "\n".join(t[indent:] for t in lines)
        return f"```blo\n{code}\n```\n{declared.kind}{where}, declared on line {declared.span.line}"

    def _member(self, owner: str, word: str) -> str | None:
        item = next((i for i in self._members(owner) if i.label == word), None)
        return f"`{owner}.{word}`: {item.detail}" if item else None

    def _members(self, owner: str) -> list[Item]:
        declared = self.names.get(owner)
        if declared is None or not isinstance(declared.value, ast.Call):
            return []
        name = _callee(declared.value)
        if declared.kind == "dataset":
            fields, sizes = _dataset_members(declared.value)
            what = f"of dataset {owner} ({name})"
            return ([Item(f, "field", f"a tensor {what}") for f in fields]
                    + [Item(s, "field", f"a size {what}, usable as a dimension") for s in sizes])
        layer = builtins.LAYERS.get(name)
        if declared.kind == "model" and layer is not None:
            return [Item(p, "field", f"the {p} of model {owner} ({name})") for p in layer.parameters]
        return []

    def _argument(self, line: int, col: int, word: str) -> str | None:
        call = self._open_call(line, col)
        if call is None:
            return None
        rows = BY_NAME[call].params if self._in_pipeline(line) and call in BY_NAME else _keyword_rows(call).values()
        param = next((p for p in rows if p.name == word), None)
        if param is None:
            return None
        default = "" if param.default is None else f", default {default_text(param)}"
        return f"`{word}`: {param.describe()}{default} ({possessive(call)} parameter)"

    def _everything(self) -> list[Item]:
        """Declared names and every built-in, for an expression."""
        items = [Item(d.name, "name", _one_line(d, self.lines)) for d in self.names.values()]
        for kind, table in _BUILTIN_TABLES:
            items += [Item(name, kind, _summary(row)) for name, row in table().items()]
        return items + [Item(w, "keyword") for w in ("True", "False", "input")]

    def _statements(self, block: str | None) -> list[Item]:
        if block is None:
            return ([Item(b, "keyword", f"the {b} block", insert=f"{b} {{\n    \n}}") for b in BLOCKS]
                    + [Item(PIPELINE, "setting", "the pipeline: operators joined by '->'", insert=f"{PIPELINE} = "),
                       Item("import", "keyword", 'import "package.module:name" as name')])
        settings = LEVEL_SETTINGS.get(block, RUN_SETTINGS if block == "run" else ())
        items = [Item(s, "setting", _setting_words(s), insert=f"{s} = ") for s in settings]
        return items + [Item(k, "keyword", f"declares a {k}") for k in DECLARING.get(block, ())]


# --- the syntax tree of a program mid-edit, and what it declares ----------------------------------

def _tolerant_tree(source: Source) -> ast.File | None:
    """The syntax tree of the text with the lines the parser stops at blanked out, so that the
    rest keeps its positions; None when that does not help."""
    lines = source.text.split("\n")
    for _ in range(_REPAIRS):
        try:
            return parse(Source(source.path, "\n".join(lines)))
        except BloError as e:
            spans = [d.span for d in e.diagnostics if d.span] + [s for d in e.diagnostics for s, _ in d.notes]
            if not spans or not any(lines[s.line - 1].strip() for s in spans if s.line <= len(lines)):
                return None
            for s in spans:
                if s.line <= len(lines):
                    lines[s.line - 1] = ""
    return None


def declarations(tree: ast.File) -> dict[str, Declared]:
    found: dict[str, Declared] = {}

    def add(ident: ast.Ident, kind: str, statement: ast.Node, level: str | None, value=None):
        found.setdefault(ident.text, Declared(ident.text, kind, ident.span, statement.span, level, value))

    def statements(body, level: str | None):
        for stmt in body:
            if isinstance(stmt, ast.Declaration):
                add(stmt.name, stmt.keyword, stmt, level, stmt.value)
            elif isinstance(stmt, ast.Destructure):
                for name in stmt.names:
                    add(name, "dataset", stmt, level, stmt.value)
            elif isinstance(stmt, ast.Setting) and level == BLOCKS[0]:
                add(stmt.key, "dataset", stmt, level, stmt.value)

    for item in tree.items:
        if isinstance(item, ast.Import):   # its span runs on to the next line, over the newline that ends it
            add(item.alias, "import", ast.Import(item.ref, item.alias, span=Span(
                item.span.line, item.span.col, item.alias.span.end_line, item.alias.span.end_col)), None)
        elif isinstance(item, ast.Block):
            statements(item.body, item.kind.text)
        else:
            statements([item], None)
    return found


# --- words about the language ---------------------------------------------------------------------

def operator_markdown(op: Operator) -> str:
    parts = [f"**{op.name}** ({op.stage}): {op.summary}"]
    if op.maths:
        parts.append(f"`{op.maths}`")
    if op.params:
        parts.append("\n".join(f"- `{p.name}`: {p.describe()}, default {default_text(p)}" for p in op.params))
    if op.paper:
        parts.append(f"paper: {op.paper}")
    return "\n\n".join(parts)


def builtin_markdown(name: str) -> str | None:
    """A built-in function, metric, layer, initialiser, data source, optimiser or scheduler."""
    for kind, table in _BUILTIN_TABLES:
        row = table().get(name)
        if row is not None:
            lines = [f"**{name}** ({kind})", _summary(row)]
            keywords = [f"- `{p.name}`: {p.describe()}" + ("" if p.default is None else f", default {default_text(p)}")
                        for p in _keyword_rows(name).values()]
            lines += ["\n".join(keywords)] if keywords else []
            if isinstance(row, builtins.DataSource):
                lines.append(f"fields {', '.join(row.fields)}; sizes {', '.join(row.sizes)}")
            inner = builtins.INNER_OPTIMIZERS.get(name)
            if kind == "optimiser" and inner:
                lines.append("the lower level may use it too (differentiated through), with "
                             + ", ".join(f"{k}={default_text(p)}" for k, p in inner.items()))
            return "\n\n".join(lines)
    refused = builtins.NOT_UPPER_OPTIMIZERS.get(name) or builtins.NOT_SCHEDULERS.get(name)
    return f"**{name}**: not usable in a .blo program: {refused}" if refused else None


def setting_markdown(name: str) -> str | None:
    if name in RUN:
        row = RUN[name]
        return f"`{name}` (run block): {row.describe()}" + (f", default {default_text(row)}" if row.default is not None else "")
    words = _setting_words(name)
    return f"`{name}`: {words}" if words else None


_SETTING_WORDS = {
    "objective": "the level's objective, an expression",
    "optimizer": "the level's optimiser, e.g. Adam(lr=0.1)",
    "scheduler": "the upper learning rate's schedule, a torch.optim.lr_scheduler class",
    "clip": "the largest norm of the hypergradient",
    "steps": "the lower level's inner steps per outer step",
    "start": "how the lower level starts each outer step: warm, reinit or from(model)",
    "baseline": "what the run is compared with: initial, or grid(name=[...])",
    PIPELINE: "the pipeline: operators joined by '->'",
}


def _setting_words(name: str) -> str:
    if name in RUN:
        return RUN[name].describe()
    return _SETTING_WORDS.get(name, "")


def _layers():
    return {**{name: layer.signature for name, layer in builtins.LAYERS.items()}, "Sequential": builtins.SEQUENTIAL}


_BUILTIN_TABLES = (
    ("function", lambda: builtins.FUNCTIONS), ("metric", lambda: builtins.METRICS), ("layer", _layers),
    ("initialiser", lambda: builtins.INITIALISERS), ("data source", lambda: builtins.DATA_SOURCES),
    ("optimiser", lambda: builtins.TORCH_OPTIMIZERS), ("scheduler", lambda: builtins.SCHEDULERS),
    ("input", lambda: {"input": builtins.INPUT}),
)


def _summary(row) -> str:
    if isinstance(row, builtins.DataSource):
        return row.signature.summary
    if isinstance(row, builtins.Signature):
        return row.summary
    return f"torch.optim optimiser ({', '.join(row)})"   # an optimiser's argument rows


def _keyword_rows(name: str) -> dict[str, Param]:
    if name in builtins.TORCH_OPTIMIZERS:
        return builtins.TORCH_OPTIMIZERS[name]
    for _, table in _BUILTIN_TABLES:
        row = table().get(name)
        if isinstance(row, builtins.DataSource):
            return row.signature.keywords
        if isinstance(row, builtins.Signature):
            return row.keywords
    return {}


def _parameters(params, written: set[str]) -> list[Item]:
    rows = params.values() if isinstance(params, dict) else params
    return [Item(p.name, "parameter", p.describe() + ("" if p.default is None else f", default {default_text(p)}"),
                 insert=f"{p.name}=", first=True) for p in rows if p.name not in written]


def _operators(text: str) -> list[Item]:
    """Every operator, those that may follow the one written before the position first."""
    before = re.findall(r"([A-Za-z_]\w*)\s*(?:\([^()]*\))?\s*->", text)
    last = BY_NAME.get(before[-1]) if before else None
    items = []
    for op in CATALOGUE:
        fits = last is None or (not last.whole_pipeline and not op.whole_pipeline and op.rank > last.rank
                                and op.name not in last.excludes and last.name not in op.excludes)
        items.append(Item(op.name, "operator", f"{op.stage}: {op.summary}  {signature(op)}", first=fits))
    return items


def _values(setting: str | None) -> list[Item]:
    if setting in RUN and RUN[setting].choices:
        return [Item(str(c), "value", first=True) for c in RUN[setting].choices]
    if setting == "optimizer":
        return [Item(n, "optimiser", _summary(r), first=True) for n, r in builtins.TORCH_OPTIMIZERS.items()]
    if setting == "scheduler":
        return [Item(n, "scheduler", r.summary, first=True) for n, r in builtins.SCHEDULERS.items()]
    if setting == "start":
        return [Item(w, "value", first=True) for w in ("warm", "reinit")] + [
            Item("from", "value", "from(model): the upper-level model it starts from", insert="from(", first=True)]
    return []


def _dataset_members(call: ast.Call) -> tuple[list[str], list[str]]:
    name = _callee(call)
    args = {}
    for kw in call.kwargs:   # those written as constants: input(fields=[...]), digits(images=True)
        try:
            args[kw.name.text] = constant(kw.value)
        except NotConstant:
            continue
    return builtins.dataset_members(name if name in builtins.DATA_SOURCES else "input", args)


def _callee(call: ast.Call) -> str | None:
    return call.func.id if isinstance(call.func, ast.Name) else None


def _one_line(declared: Declared, lines: list[str]) -> str:
    return lines[declared.statement.line - 1].strip() if declared.statement.line <= len(lines) else declared.kind


# --- reading a line -----------------------------------------------------------------------------------

def _code_end(text: str) -> int:
    """Where the comment starts on a line (its length if none), strings skipped."""
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return i
        i += 1
    return len(text)


def _in_comment_or_string(text: str, col: int) -> bool:
    if col >= _code_end(text):
        return _code_end(text) < len(text)
    return text[:col].count('"') % 2 == 1 or text[:col].count("'") % 2 == 1


def _owner(text: str, start: int) -> str | None:
    """`train` for the word at `start` in `train.x`."""
    m = re.search(r"([A-Za-z_]\w*)\s*\.\s*$", text[:start])
    return m.group(1) if m else None

