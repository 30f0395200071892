"""Text of a .blo file -> syntax tree (blodsl.syntax.ast), or located errors.

Lark does the parsing (LALR, contextual lexer). This module adds what Lark
leaves to us: Python-style newlines inside brackets, a transformer whose
methods are the grammar's aliases, and translation of Lark's errors into
messages in the user's words ('}' rather than RBRACE, "the 'lower' block
opened at 9:1 is not closed" rather than "unexpected $END").
"""

from __future__ import annotations

import ast as pyast
import functools
import warnings
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedToken, VisitError

from . import ast
from .diagnostics import BloError, Diagnostic
from .source import Source, Span

_OPENERS = {"LBRACE": "}", "LPAR": ")", "LSQB": "]"}
_CLOSERS = {"RBRACE": "LBRACE", "RPAR": "LPAR", "RSQB": "LSQB"}

# What the user calls the terminals Lark names.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "_NL": "the end of the line",
    "$END": "the end of the file",
    "DECL_KW": "'var', 'model' or 'metric'",
    "COMPARE_OP": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/', '@' or '%'",
    "POW_OP": "'**'",
    "_WITH": "'with'",
}


def grammar_text() -> str:
    """The grammar: inside the installed package, or grammar/ beside it in a checkout."""
    packaged = resources.files("blodsl").joinpath("grammar/blo.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "grammar" / "blo.lark").read_text(encoding="utf-8")


class Newlines:
    """Post-lexer: drops newlines inside () and [], merges runs of newlines,
    ends the stream with one, and remembers which brackets are still open."""

    always_accept = ("_NL",)

    def __init__(self):
        self.read: list[Token] | None = None   # where every token passing through is kept, if anywhere
        self.open: list[Token] = []
        self.block_names: dict[tuple[int, int], str] = {}  # position of '{' -> the block's name

    def process(self, stream):
        self.open, self.block_names = [], {}
        last = None
        for token in stream:
            if self.read is not None:
                self.read.append(token)
            if token.type in _OPENERS:
                self.open.append(token)
                if token.type == "LBRACE" and last is not None and last.type == "NAME":
                    self.block_names[(token.line, token.column)] = str(last)
            elif token.type in _CLOSERS and self.open and self.open[-1].type == _CLOSERS[token.type]:
                self.open.pop()
            if token.type == "_NL":
                if last is None or last.type == "_NL" or any(t.type != "LBRACE" for t in self.open):
                    continue
            last = token
            yield token
        if last is not None and last.type != "_NL":
            end = Token("_NL", "\n")
            end.line, end.column = last.end_line, last.end_column
            end.end_line, end.end_column = last.end_line, last.end_column + 1
            yield end


@functools.lru_cache(maxsize=1)
def _lark() -> tuple[Lark, Newlines]:
    postlex = Newlines()
    parser = Lark(grammar_text(), parser="lalr", lexer="contextual", postlex=postlex,
                  propagate_positions=True, maybe_placeholders=False, cache=True)
    return parser, postlex


def _span(meta_or_token) -> Span:
    m = meta_or_token
    return Span(m.line, m.column, m.end_line, m.end_column)


class _SyntaxProblem(Exception):
    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic


def _ident(token: Token) -> ast.Ident:
    return ast.Ident(str(token), span=_span(token))


@v_args(meta=True)
class ToAst(Transformer):
    """One method per alias in grammar/blo.lark."""

    def start(self, meta, items):
        return ast.File(items, span=_span(meta) if not meta.empty else Span(1, 1, 1, 1))

    def import_decl(self, meta, children):
        ref, alias = children
        return ast.Import(self.string(None, [ref]), _ident(alias), span=_span(meta))

    def block(self, meta, children):
        kind, *body = children
        return ast.Block(_ident(kind), body, span=_span(meta),
                         close_span=Span(meta.end_line, meta.end_column - 1, meta.end_line, meta.end_column))

    def setting(self, meta, children):
        key, value = children
        return ast.Setting(_ident(key), value, span=_span(meta))

    def declaration(self, meta, children):
        keyword, name, value, *rebinds = children
        return ast.Declaration(str(keyword), _ident(name), value, rebinds, span=_span(meta))

    def rebind(self, meta, children):
        name, to = children
        return ast.Rebind(_ident(name), _ident(to), span=_span(meta))

    def destructure(self, meta, children):
        *names, value = children
        return ast.Destructure([_ident(n) for n in names], value, span=_span(meta))

    def chain(self, meta, items):
        return ast.Chain(items, span=_span(meta))

    def compare(self, meta, children):
        left, op, right = children
        return ast.Compare(str(op), left, right, span=_span(meta))

    def binop(self, meta, children):
        left, op, right = children
        return ast.BinOp(str(op), left, right, span=_span(meta))

    def unary(self, meta, children):
        op, operand = children
        return ast.UnaryOp(str(op), operand, span=_span(meta))

    def call(self, meta, children):
        func, *rest = children
        arguments = rest[0] if rest else []
        args = [a for a in arguments if not isinstance(a, ast.Keyword)]
        kwargs = [a for a in arguments if isinstance(a, ast.Keyword)]
        for i, a in enumerate(arguments):
            if not isinstance(a, ast.Keyword) and any(isinstance(b, ast.Keyword) for b in arguments[:i]):
                raise _SyntaxProblem(Diagnostic(
                    "a positional argument follows a keyword argument", a.span,
                    fix="put positional arguments first, as in Python"))
        return ast.Call(func, args, kwargs, span=_span(meta))

    def arguments(self, meta, children):
        return children

    def keyword(self, meta, children):
        name, value = children
        return ast.Keyword(_ident(name), value, span=_span(meta))

    def attribute(self, meta, children):
        obj, name = children
        return ast.Attribute(obj, _ident(name), span=_span(meta))

    def index(self, meta, children):
        obj, idx = children
        return ast.Index(obj, idx, span=_span(meta))

    def number(self, meta, children):
        (token,) = children
        text = str(token).replace("_", "")
        value = float(text) if any(c in text for c in ".eE") else int(text)
        return ast.Number(value, span=_span(token))

    def string(self, meta, children):
        (token,) = children
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                value = pyast.literal_eval(str(token))
        except (SyntaxError, ValueError, SyntaxWarning) as e:
            raise _SyntaxProblem(Diagnostic(
                f"invalid string literal: {getattr(e, 'msg', None) or e}", _span(token),
                fix="write a backslash as '\\\\'")) from None
        return ast.String(value, span=_span(token))

    def name(self, meta, children):
        (token,) = children
        return ast.Name(str(token), span=_span(token))

    def list(self, meta, items):
        return ast.ListExpr(items, span=_span(meta))

    def tuple(self, meta, items):
        return ast.TupleExpr(items, span=_span(meta))


def decode(data: bytes, path: str) -> Source:
    """Bytes of a file -> Source, or a located error for binary junk."""
    bad = data.find(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start if bad < 0 else min(bad, e.start)
    if bad >= 0:
        head = data[:bad]
        line = head.count(b"\n") + 1
        col = bad - (head.rfind(b"\n") + 1) + 1
        source = Source(path, data[: data.find(b"\n", bad) if b"\n" in data[bad:] else len(data)]
                        .decode("utf-8", errors="replace"))
        raise BloError([Diagnostic(
            f"this is not a .blo program: it holds byte 0x{data[bad]:02x}, which is not UTF-8 text",
            Span.point(line, col),
            fix="a .blo file is UTF-8 text; check that the right file was given")], source)
    return Source(path, text.removeprefix("\ufeff"))


MAX_DEPTH = 200  # nesting of the parse tree; deeper would exhaust Python's stack later on


def _too_deep(tree) -> Diagnostic | None:
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, Tree):
            continue
        if depth > MAX_DEPTH:
            meta = node.meta
            where = Span.point(meta.line, meta.column) if not meta.empty else Span.point(1, 1)
            return Diagnostic(f"this expression is nested too deeply (more than {MAX_DEPTH} levels)", where,
                              fix="split it: compute parts in separate declarations or objectives")
        stack.extend((child, depth + 1) for child in node.children)
    return None


@functools.lru_cache(maxsize=1)
def _recording_lark() -> tuple[Lark, Newlines]:
    """The same parser, keeping every token it reads in its post-lexer's `read`: the comments
    too (from the lexer, which otherwise drops them), and the newlines inside brackets."""
    postlex = Newlines()
    postlex.read = []
    parser = Lark(grammar_text(), parser="lalr", lexer="contextual", postlex=postlex, propagate_positions=True,
                  maybe_placeholders=False, lexer_callbacks={"COMMENT": _keep_in(postlex.read)})
    return parser, postlex


def _keep_in(read: list):
    def keep(token: Token) -> Token:
        read.append(token)
        return token

    return keep


def parse_with_tokens(source: Source) -> tuple[ast.File, list[Token]]:
    """The syntax tree and every token of the text in order: comments and line breaks (those
    inside brackets too) included, spaces and backslash continuations left out."""
    parser, postlex = _recording_lark()
    postlex.read.clear()
    tree = _parse(source, parser, postlex)
    return tree, sorted(postlex.read, key=lambda t: t.start_pos)


def parse(source: Source) -> ast.File:
    parser, postlex = _lark()
    return _parse(source, parser, postlex)


def _parse(source: Source, parser: Lark, postlex: Newlines) -> ast.File:
    try:
        tree = parser.parse(source.text)
        too_deep = _too_deep(tree)
        if too_deep:
            raise BloError([too_deep], source)
        return ToAst().transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, _SyntaxProblem):
            raise BloError([e.orig_exc.diagnostic], source) from None
        raise
    except UnexpectedCharacters as e:
        raise BloError([_bad_character(e, source)], source) from None
    except UnexpectedToken as e:
        raise BloError([_unexpected_token(e, parser, postlex)], source) from None
    except LarkError as e:  # any other parser failure still gets a location
        raise BloError([Diagnostic(f"cannot parse this program: {e}", Span.point(1, 1))], source) from None


def _bad_character(e: UnexpectedCharacters, source: Source) -> Diagnostic:
    where = Span.point(e.line, e.column)
    char = e.char
    if char in "\"'":
        return Diagnostic("unterminated string", where,
                          fix=f"close the string with {char} on the same line")
    if char == "\\":
        return Diagnostic("a backslash outside a string continues a line only at its very end", where)
    if not char.isprintable() or char.isspace():
        return Diagnostic(f"unexpected character U+{ord(char):04X}", where,
                          fix="remove it; a .blo file holds printable text")
    hint = {";": "statements end at the end of the line; remove the ';'",
            "{": "a block is written `name { ... }`",
            "!": "write 'not equal' as '!='",
            "&": "combine conditions with '*' (and) or '+' (or) on 0/1 flags"}.get(char)
    return Diagnostic(f"unexpected character '{char}'", where, fix=hint)


def _describe(terminal: str, parser: Lark) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    try:
        pattern = parser.get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return f"'{pattern.value}'" if pattern.type == "str" else terminal.lower()


def _token_words(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    if token.type == "_NL":
        return "the end of the line"
    if token.type == "NAME":
        return f"name '{token}'"
    if token.type == "NUMBER":
        return f"number {token}"
    return f"'{token}'"


def _unexpected_token(e: UnexpectedToken, parser: Lark, postlex: Newlines) -> Diagnostic:
    token = e.token
    # The lexer may stop at `token` before the post-lexer sees it: leave it out.
    still_open = [t for t in postlex.open if (t.line, t.column) != (token.line, token.column)]
    blocks = [t for t in still_open if t.type == "LBRACE"]
    if token.type == "$END" or token.line is None:
        if still_open:
            opener = still_open[-1]
            closer = _OPENERS[opener.type]
            what = f"the '{postlex.block_names[(opener.line, opener.column)]}' block" \
                if (opener.line, opener.column) in postlex.block_names else f"'{opener}'"
            return Diagnostic(f"{what} opened here is never closed", _span(opener),
                              fix=f"add the matching '{closer}'")
        return Diagnostic("the file ends in the middle of a statement",
                          Span.point(max(1, token.line or 1), max(1, token.column or 1)))
    where = _span(token)
    brackets = [t for t in still_open if t.type != "LBRACE"]
    if brackets and token.line > brackets[-1].line:
        opener = brackets[-1]
        return Diagnostic(f"'{opener}' opened here is not closed", _span(opener),
                          notes=[(where, "the statement runs on into this line")],
                          fix=f"add the matching '{_OPENERS[opener.type]}'")
    if token.type == "RBRACE" and not blocks:
        return Diagnostic("'}' closes no block", where, fix="remove it, or open the block with `name {`")
    expected = sorted(e.expected, key=lambda t: (t not in ("_NL", "RBRACE"), t))
    words = list(dict.fromkeys(_describe(t, parser) for t in expected))
    shown = ", ".join(words[:6]) + (", ..." if len(words) > 6 else "")
    message = f"unexpected {_token_words(token)}; expected {shown}"
    fix = None
    if token.type == "LBRACE" and blocks:
        outer = blocks[-1]
        name = postlex.block_names.get((outer.line, outer.column), "enclosing")
        return Diagnostic(f"a block cannot open inside the '{name}' block", where,
                          notes=[(_span(outer), f"the '{name}' block opened here is not closed")],
                          fix=f"close the '{name}' block with '}}' before this line")
    elif token.type == "_NL" and "EQUAL" in e.expected:
        message = "incomplete statement: expected '=' and a value"
        fix = "write `name = value`"
    elif token.type == "_NL" and {"NAME", "NUMBER"} & set(e.expected):
        message = "the line ends where a value was expected"
    elif token.type == "EQUAL":
        fix = "compare with '=='; keyword arguments are written inside a call, name=value"
    elif token.type in ("NAME", "NUMBER", "STRING") and "_NL" in e.expected:
        fix = "put each statement on its own line, or join values with an operator"
    return Diagnostic(message, where, fix=fix)
