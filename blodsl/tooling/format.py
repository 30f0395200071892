"""`blodsl fmt`: every .blo file in one layout, rebuilt from the parser's own tokens.

The layout:
- one statement per line, four spaces of indentation inside a block; `name {` opens a block and
  `}` closes it on a line of its own (`name {}` when it is empty);
- one space around a statement's `=`, `->` and the binary operators, after a comma and between
  words; none around a keyword argument's `=`, after a sign, inside brackets, or before the
  bracket of a call or an index;
- a line break inside brackets stays where it was written: the next line starts under the first
  character after the open bracket or, when the bracket ends its line, four spaces further in
  than that line; a closing bracket that starts a line goes back under the line's start;
- every comment stays where it was: a comment on a line of its own is indented as the code
  around it, one after code starts at column 50 (two spaces after code that reaches further);
- a blank line the program has is kept (several become one), but not at the start or end of a
  block or of the file; a top-level block, with the comments just above it, has a blank line
  before and after it.

Only spaces and line breaks change, so the program means what it meant (the tests check that
`blodsl check` says the same of it). A file that does not parse is left as it is.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lark import Token

from ..syntax.diagnostics import BloError, render_all
from ..syntax.parser import decode, parse_with_tokens
from ..syntax.source import Source

INDENT = 4
COMMENT_COLUMN = 49   # a comment after code starts at column 50, where the examples put them
BOM = "\ufeff".encode()

_OPERAND_END = {"NAME", "NUMBER", "STRING", "RPAR", "RSQB"}   # after one of these, + and - are binary
_OPENING, _CLOSING = {"LPAR", "LSQB"}, {"RPAR", "RSQB"}


@dataclass
class _Line:
    text: str
    kind: str = "code"      # code, comment or blank
    top: bool = False       # it starts outside every block and bracket
    opens: bool = False     # `name {`
    closes: bool = False    # `}`


@dataclass
class _Bracket:
    column: int             # where the text after it starts
    indent: int             # the indentation of the line it opens on
    hanging: bool = False   # it ends its line: the lines inside are indented from that line's start


@dataclass
class _Layout:
    """Writes tokens out line by line; `lines` is the result."""
    lines: list[_Line] = field(default_factory=list)
    line: _Line | None = None        # the line being written
    depth: int = 0                   # blocks open
    brackets: list[_Bracket] = field(default_factory=list)
    prev: Token | None = None        # the statement's last token of code
    prev_sign: bool = False          # prev is a + or - in front of its operand
    break_after: bool = False        # after `{` or `}`: the next code starts a new line

    def add(self, token: Token):
        if token.type == "_NL":
            self._newline(token.count("\n"))
        elif token.type == "COMMENT":
            self._comment(token.rstrip())
        elif token.type == "RBRACE":
            self._close_block(token)
        else:
            self._code(token)

    def finish(self) -> list[_Line]:
        self._end_line()
        return self.lines

    def _newline(self, count: int):
        if self.brackets:   # the statement goes on; blank lines inside brackets are dropped
            if self.prev is not None and self.prev.type in _OPENING:
                self.brackets[-1].hanging = True
            self._end_line()
            return
        self._end_line()
        self.prev = None
        if count > 1:
            self.lines.append(_Line("", "blank"))

    def _comment(self, text: str):
        if self.line is None:
            self.lines.append(_Line(" " * self._indent(None) + text, "comment", top=self._at_top()))
            return
        code = self.line.text
        self.line.text = (code.ljust(COMMENT_COLUMN) if len(code) <= COMMENT_COLUMN - 2 else code + "  ") + text

    def _code(self, token: Token):
        if self.break_after:
            self._end_line()
            self.break_after = False
        if self.line is None:
            self.line = _Line(" " * self._indent(token), top=self._at_top())
        else:
            self.line.text += self._space(token)
        self.line.text += token
        sign = token.type == "ADD_OP" and (self.prev is None or self.prev.type not in _OPERAND_END)
        self.prev, self.prev_sign = token, sign
        if token.type == "LBRACE":
            self.line.opens, self.break_after = True, True
            self.depth += 1
        elif token.type in _OPENING:
            text = self.line.text
            self.brackets.append(_Bracket(len(text), len(text) - len(text.lstrip(" "))))
        elif token.type in _CLOSING:
            self.brackets.pop()

    def _close_block(self, token: Token):
        self.depth -= 1
        if self.line is not None and self.prev is not None and self.prev.type == "LBRACE":
            self.line.text += token          # an empty block: `name {}`
        else:
            self._end_line()
            self.line = _Line(" " * self._indent(token) + token, top=self._at_top())
        self.line.closes, self.break_after = True, True
        self.prev, self.prev_sign = token, False

    def _space(self, token: Token) -> str:
        """What goes between the previous token and `token` on one line."""
        prev = self.prev
        if prev is None or token.type in ("RPAR", "RSQB", "COMMA", "DOT") or prev.type in ("LPAR", "LSQB", "DOT"):
            return ""
        if (token.type in _OPENING and prev.type in _OPERAND_END) or self.prev_sign:
            return ""   # a call, an index; a sign
        if "EQUAL" in (prev.type, token.type) and self.brackets:
            return ""   # a keyword argument
        return " "

    def _indent(self, first: Token | None) -> int:
        if not self.brackets:
            return INDENT * self.depth
        bracket = self.brackets[-1]
        if first is not None and first.type in _CLOSING:
            return bracket.indent
        return bracket.indent + INDENT if bracket.hanging else bracket.column

    def _at_top(self) -> bool:
        return self.depth == 0 and not self.brackets

    def _end_line(self):
        if self.line is not None:
            self.lines.append(self.line)
            self.line = None


def _blank_lines(lines: list[_Line]) -> list[_Line]:
    """Blank lines as the layout wants them: kept one at a time, none at the start or end of a
    block or of the file, and one around each top-level block and the comments just above it."""
    kept: list[_Line] = []
    for line in lines:
        if line.kind == "blank":
            if kept and kept[-1].kind != "blank" and not (kept[-1].opens and not kept[-1].closes):
                kept.append(line)
            continue
        if line.closes and not line.opens and kept and kept[-1].kind == "blank":
            kept.pop()
        kept.append(line)
    while kept and kept[-1].kind == "blank":
        kept.pop()
    before = set()
    for i, line in enumerate(kept):
        if line.top and line.opens:
            first = i
            while first > 0 and kept[first - 1].kind == "comment" and kept[first - 1].top:
                first -= 1
            if first > 0 and kept[first - 1].kind != "blank":
                before.add(first)
        if line.top and line.closes and i + 1 < len(kept) and kept[i + 1].kind != "blank":
            before.add(i + 1)
    out = []
    for i, line in enumerate(kept):
        if i in before:
            out.append(_Line("", "blank"))
        out.append(line)
    return out


def format_source(source: Source) -> str:
    """The program in the canonical layout; BloError (located) when it does not parse."""
    _, tokens = parse_with_tokens(source)
    layout = _Layout()
    for token in tokens:
        layout.add(token)
    lines = _blank_lines(layout.finish())
    newline = "\r\n" if "\r\n" in source.text else "\n"
    return newline.join(line.text for line in lines) + newline if lines else ""


def format_files(paths: list[str], check: bool = False) -> int:
    """`blodsl fmt [--check] FILE...`: 0 when every file is (now) in the layout, 1 when one does
    not parse or (with `check`) would change, 2 when one cannot be read or written."""
    status = 0
    for path in paths:
        status = max(status, _format_file(Path(path), check))
    return status


def _format_file(path: Path, check: bool) -> int:
    try:
        data = path.read_bytes()
    except OSError as e:
        print(f"blodsl: error: cannot read '{path}': {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        formatted = format_source(decode(data, str(path)))
    except BloError as e:
        print(render_all(e.diagnostics, e.source), file=sys.stderr)
        print(f"{path}: not formatted: it does not parse", file=sys.stderr)
        return 1
    new = (BOM if data.startswith(BOM) else b"") + formatted.encode("utf-8")
    if new == data:
        return 0
    if check:
        print(f"would reformat {path}")
        return 1
    from ..runs.folder import write_atomically   # here: it needs fcntl, which the language server does not

    target = path.resolve()   # through a symbolic link, the file it names

    def write(temporary: Path):
        temporary.write_bytes(new)
        shutil.copymode(target, temporary)

    try:
        write_atomically(target, write)
    except OSError as e:
        print(f"blodsl: error: cannot write '{path}': {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"formatted {path}")
    return 0
