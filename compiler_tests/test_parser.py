"""Unit tests of the parser: source text -> blodsl.syntax.ast trees.

Trees are compared with ==, which ignores spans (Node.span has compare=False);
the span tests at the end check positions explicitly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blodsl.syntax import ast
from blodsl.syntax.diagnostics import BloError
from blodsl.syntax.source import Source, Span
from blodsl.syntax.parser import decode, parse

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"


def parse_text(text: str) -> ast.File:
    return parse(Source("t.blo", text))


def only_item(text: str):
    """The single top-level item of a one-statement program."""
    program = parse_text(text)
    assert len(program.items) == 1, program.items
    return program.items[0]


def value_of(text: str) -> ast.Expr:
    """The expression of a one-line setting `x = <expr>`."""
    item = only_item(text)
    assert isinstance(item, ast.Setting)
    return item.value


def syntax_error(text: str):
    """The single diagnostic of a program that does not parse."""
    with pytest.raises(BloError) as caught:
        parse_text(text)
    assert len(caught.value.diagnostics) == 1, caught.value.diagnostics
    return caught.value.diagnostics[0]


# Short constructors keep the expected trees readable.
def N(id_):
    return ast.Name(id_)


def Num(v):
    return ast.Number(v)


def I(text):
    return ast.Ident(text)


# --- operator precedence ---------------------------------------------------

def test_arithmetic_precedence_with_power_and_unary_minus():
    # a + (b * (c ** (-d)))
    assert value_of("x = a + b * c ** -d\n") == ast.BinOp(
        "+", N("a"),
        ast.BinOp("*", N("b"),
                  ast.BinOp("**", N("c"), ast.UnaryOp("-", N("d")))))


def test_unary_minus_binds_looser_than_power():
    # -(a ** 2), as in Python
    assert value_of("x = -a ** 2\n") == ast.UnaryOp("-", ast.BinOp("**", N("a"), Num(2)))


def test_unary_minus_after_binary_minus():
    assert value_of("x = 1 - -2\n") == ast.BinOp("-", Num(1), ast.UnaryOp("-", Num(2)))


def test_power_is_right_associative():
    assert value_of("x = 2 ** 3 ** 4\n") == ast.BinOp("**", Num(2), ast.BinOp("**", Num(3), Num(4)))


def test_subtraction_is_left_associative():
    assert value_of("x = a - b - c\n") == ast.BinOp("-", ast.BinOp("-", N("a"), N("b")), N("c"))


def test_matmul_binds_tighter_than_comparison():
    assert value_of("x = a @ b < c\n") == ast.Compare("<", ast.BinOp("@", N("a"), N("b")), N("c"))


def test_parentheses_override_precedence():
    assert value_of("x = (a + b) * c\n") == ast.BinOp("*", ast.BinOp("+", N("a"), N("b")), N("c"))


# --- calls, attributes, indexing -------------------------------------------

def test_call_with_positional_and_keyword_arguments():
    assert value_of("x = f(1, y=2)\n") == ast.Call(
        N("f"), [Num(1)], [ast.Keyword(I("y"), Num(2))])


def test_call_without_arguments():
    assert value_of("x = f()\n") == ast.Call(N("f"), [], [])


def test_call_allows_trailing_comma():
    assert value_of("x = f(a, b=1,)\n") == ast.Call(N("f"), [N("a")], [ast.Keyword(I("b"), Num(1))])


def test_attribute_then_index():
    assert value_of("x = a.b[0]\n") == ast.Index(ast.Attribute(N("a"), I("b")), Num(0))


def test_call_on_attribute_of_call():
    assert value_of("x = net(val.x).sum()\n") == ast.Call(
        ast.Attribute(ast.Call(N("net"), [ast.Attribute(N("val"), I("x"))], []), I("sum")), [], [])


# --- list and tuple literals -------------------------------------------------

def test_list_literal():
    assert value_of("x = [1, 2, 3]\n") == ast.ListExpr([Num(1), Num(2), Num(3)])


def test_empty_list_literal():
    assert value_of("x = []\n") == ast.ListExpr([])


def test_one_element_tuple_needs_a_comma():
    assert value_of("x = (1,)\n") == ast.TupleExpr([Num(1)])


def test_parenthesised_value_is_not_a_tuple():
    assert value_of("x = (1)\n") == Num(1)


def test_tuple_of_two():
    assert value_of("x = (1, a)\n") == ast.TupleExpr([Num(1), N("a")])


# --- statements --------------------------------------------------------------

def test_pipeline_chain():
    assert only_item("hypergradient = PTT -> RAD\n") == ast.Setting(
        I("hypergradient"), ast.Chain([N("PTT"), N("RAD")]))


def test_chain_of_three_with_call():
    assert value_of("h = NGD -> RGT(truncate=20) -> RAD\n") == ast.Chain([
        N("NGD"),
        ast.Call(N("RGT"), [], [ast.Keyword(I("truncate"), Num(20))]),
        N("RAD"),
    ])


def test_destructuring():
    assert only_item("a, b = f()\n") == ast.Destructure([I("a"), I("b")], ast.Call(N("f"), [], []))


def test_declaration_with_rebind():
    assert only_item("metric m = f(x) with tasks = test_tasks\n") == ast.Declaration(
        "metric", I("m"), ast.Call(N("f"), [N("x")], []),
        [ast.Rebind(I("tasks"), I("test_tasks"))])


def test_declaration_without_rebind_has_no_rebinds():
    assert only_item("var w = zeros(3)\n") == ast.Declaration(
        "var", I("w"), ast.Call(N("zeros"), [Num(3)], []), [])


def test_import():
    assert only_item('import "pkg.mod:fn" as fn\n') == ast.Import(ast.String("pkg.mod:fn"), I("fn"))


def test_block_with_statements():
    assert only_item("upper {\n    var w = 0\n    steps = 5\n}\n") == ast.Block(I("upper"), [
        ast.Declaration("var", I("w"), Num(0)),
        ast.Setting(I("steps"), Num(5)),
    ])


def test_empty_block():
    assert only_item("run {\n}\n") == ast.Block(I("run"), [])


# --- numbers ------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1e-3", 0.001),
    ("1_000", 1000),
    (".5", 0.5),
    ("5.", 5.0),
    ("2E+2", 200.0),
    ("42", 42),
    ("3.25", 3.25),
])
def test_number_value(text, expected):
    assert value_of(f"x = {text}\n") == Num(expected)


@pytest.mark.parametrize("text, kind", [
    ("1e-3", float),
    ("1_000", int),
    (".5", float),
    ("5.", float),
    ("2E+2", float),
    ("42", int),
])
def test_number_type(text, kind):
    # 5. == 5 in Python, so the value test alone cannot tell int from float.
    assert type(value_of(f"x = {text}\n").value) is kind


# --- strings ------------------------------------------------------------------

@pytest.mark.parametrize("literal, expected", [
    (r'"a\nb"', "a\nb"),
    (r'"say \"hi\""', 'say "hi"'),
    ("'single'", "single"),
    (r"'it\'s'", "it's"),
    (r'"back\\slash"', "back\\slash"),
    ('"it\'s"', "it's"),
    ("'say \"hi\"'", 'say "hi"'),
    ('""', ""),
])
def test_string_value(literal, expected):
    assert value_of(f"x = {literal}\n") == ast.String(expected)


def test_invalid_escape_is_a_located_error():
    diagnostic = syntax_error("x = '\\q'\n")
    assert (diagnostic.span.line, diagnostic.span.col) == (1, 5)
    assert diagnostic.message.startswith("invalid string literal")


# --- newlines, blank lines, comments -----------------------------------------

def test_newlines_inside_parentheses_continue_the_statement():
    assert parse_text("x = f(1,\n      2)\n") == parse_text("x = f(1, 2)\n")


def test_newlines_inside_brackets_continue_the_statement():
    assert parse_text("x = [\n  1,\n  2,\n]\n") == parse_text("x = [1, 2]\n")


def test_blank_and_comment_lines_between_statements():
    with_gaps = "# header\n\nx = 1\n\n   \n# between\n\ny = 2  # trailing\n\n"
    assert parse_text(with_gaps) == parse_text("x = 1\ny = 2\n")


def test_blank_and_comment_lines_inside_a_block():
    assert parse_text("run {\n\n  # c\n  x = 1\n\n}\n") == parse_text("run {\n  x = 1\n}\n")


def test_file_without_trailing_newline():
    assert parse_text("run {\n  x = 1\n}") == parse_text("run {\n  x = 1\n}\n")


def test_statement_without_trailing_newline():
    assert parse_text("hypergradient = RAD") == parse_text("hypergradient = RAD\n")


def test_block_on_one_line():
    assert only_item("data { train = digits() }") == ast.Block(
        I("data"), [ast.Setting(I("train"), ast.Call(N("digits"), [], []))])


def test_backslash_continues_a_line():
    assert parse_text("x = 1 + \\\n    2\n") == parse_text("x = 1 + 2\n")


# --- spans ------------------------------------------------------------------

def test_span_of_declared_name():
    declaration = only_item("metric acc = f(x)\n")
    assert declaration.name.span == Span(1, 8, 1, 11)


def test_span_of_name_in_indented_block():
    block = only_item("lower {\n    model net = Linear(3, 2)\n}\n")
    assert block.body[0].name.span == Span(2, 11, 2, 14)


def test_span_of_call_covers_its_arguments():
    call = value_of("x = foo(a, b=2)\n")
    assert call.span == Span(1, 5, 1, 16)


def test_span_of_keyword_argument():
    keyword = value_of("x = foo(a, b=2)\n").kwargs[0]
    assert keyword.span == Span(1, 12, 1, 15)


def test_span_of_argument_on_continuation_line():
    call = value_of("x = f(1,\n  22)\n")
    assert call.args[1].span == Span(2, 3, 2, 5)


def test_span_of_block_closing_brace():
    block = only_item("run {\n  x = 1\n}\n")
    assert block.close_span == Span(3, 1, 3, 2)


def test_span_of_string_includes_quotes():
    assert value_of('x = "ab"\n').span == Span(1, 5, 1, 9)


# --- errors -----------------------------------------------------------------

def test_positional_after_keyword_is_an_error_at_the_positional():
    diagnostic = syntax_error("x = f(a=1, 2)\n")
    assert (diagnostic.span.line, diagnostic.span.col) == (1, 12)


def test_positional_after_keyword_message():
    diagnostic = syntax_error("x = f(a=1, 2)\n")
    assert diagnostic.message == "a positional argument follows a keyword argument"


def test_positional_after_keyword_on_a_later_line():
    diagnostic = syntax_error("run {\n  x = f(a=1,\n        b)\n}\n")
    assert (diagnostic.span.line, diagnostic.span.col) == (3, 9)


def test_unclosed_parenthesis_points_at_the_opener():
    diagnostic = syntax_error("x = f(1,\ny = 2\n")
    assert (diagnostic.span.line, diagnostic.span.col) == (1, 6)


# --- line endings and byte-order mark -----------------------------------------

def _program_bytes(name: str) -> bytes:
    return (PROGRAMS / name).read_bytes()


@pytest.mark.parametrize("name", sorted(p.name for p in PROGRAMS.glob("*.blo")))
def test_crlf_file_parses_like_the_plain_file(name):
    plain = _program_bytes(name)
    crlf = plain.replace(b"\n", b"\r\n")
    assert parse(decode(crlf, name)) == parse(decode(plain, name))


@pytest.mark.parametrize("name", sorted(p.name for p in PROGRAMS.glob("*.blo")))
def test_utf8_bom_file_parses_like_the_plain_file(name):
    plain = _program_bytes(name)
    assert parse(decode(b"\xef\xbb\xbf" + plain, name)) == parse(decode(plain, name))


def test_crlf_keeps_spans():
    text = "run {\n  x = f(1,\n    2)\n}\n"
    plain = parse_text(text).items[0]
    crlf = parse_text(text.replace("\n", "\r\n")).items[0]
    assert (crlf.close_span, crlf.body[0].value.args[1].span) == (plain.close_span, plain.body[0].value.args[1].span)


def test_bom_keeps_columns_of_the_first_line():
    program = parse(decode(b"\xef\xbb\xbfvar w = 0\n", "t.blo"))
    assert program.items[0].name.span == Span(1, 5, 1, 6)
