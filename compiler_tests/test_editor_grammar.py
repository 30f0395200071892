"""The editors' TextMate grammar, applied to the example programs by a small interpreter of its
rules (match, begin/end, captures, include) with Python's `re`, and compared with the parser's
own tokens: keywords, operators, strings, numbers and comments get their scopes where the
parser finds them."""

import json
import re

import pytest

from blodsl.catalogue.operators import BY_NAME
from blodsl.semantics.blocks import BLOCKS
from blodsl.syntax.parser import decode, parse_with_tokens
from blodsl.syntax.source import Source
from conftest import BAD, ROOT

EDITOR = ROOT / "editors" / "vscode"
GRAMMAR = json.loads((EDITOR / "syntaxes" / "blo.tmLanguage.json").read_text())
RULE_KEYS = {"match", "name", "captures", "begin", "end", "beginCaptures", "endCaptures", "patterns", "include"}


class Highlighter:
    """The scopes of each character of a text under a grammar, as an editor finds them."""

    def __init__(self, grammar: dict):
        self.grammar = grammar

    def rules(self, patterns: list[dict]) -> list[dict]:
        """The rules of `patterns`, includes expanded, in order."""
        out = []
        for rule in patterns:
            if "include" in rule:
                target = self.grammar["repository"][rule["include"].removeprefix("#")]
                out += self.rules([target] if "match" in target or "begin" in target else target["patterns"])
            else:
                out.append(rule)
        return out

    def scopes(self, text: str) -> list[list[set[str]]]:
        stack: list[dict] = []   # the begin/end rules open
        painted = []
        for line in text.split("\n"):
            chars = [set() for _ in line]
            pos = 0
            while pos <= len(line):
                best = None
                if stack:
                    end = re.compile(stack[-1]["end"]).search(line, pos)
                    best = (end.start(), None, end) if end else None
                for rule in self.rules(stack[-1]["patterns"] if stack else self.grammar["patterns"]):
                    found = re.compile(rule.get("match") or rule["begin"]).search(line, pos)
                    if found and (best is None or found.start() < best[0]):   # the end wins a tie
                        best = (found.start(), rule, found)
                if best is None:
                    break
                _, rule, found = best
                if rule is None:
                    self.paint(chars, found, stack.pop().get("endCaptures", {}), None)
                elif "match" in rule:
                    self.paint(chars, found, rule.get("captures", {}), rule.get("name"))
                else:
                    self.paint(chars, found, rule.get("beginCaptures", {}), rule.get("name"))
                    stack.append(rule)
                pos = found.end() + (found.end() == found.start())
            painted.append(chars)
        return painted

    @staticmethod
    def paint(chars, found: re.Match, captures: dict, name: str | None):
        spans = [(found.start(), found.end(), name)] + [(found.start(int(g)), found.end(int(g)), c["name"])
                                                        for g, c in captures.items() if found.start(int(g)) >= 0]
        for start, end, scope in spans:
            for i in range(start, min(end, len(chars))):
                if scope:
                    chars[i].add(scope)


def _parsing(paths):
    for path in paths:
        try:
            source = decode(path.read_bytes(), path.name)
            yield path, source.text, parse_with_tokens(source)[1]
        except Exception:
            continue


SAMPLES = list(_parsing(sorted((ROOT / "programs").glob("*.blo")) + sorted((ROOT / "bench" / "programs").glob("*.blo"))
                        + sorted(BAD.glob("*.blo"))))


def expected_scopes(tokens) -> list[tuple[object, str]]:
    """(token, the scope it must have) from what the parser read."""
    out, pipeline, depth, at_start = [], False, 0, True
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if token.type == "_NL" and not depth:
            pipeline, at_start = False, True
            continue
        if token.type == "COMMENT":
            out.append((token, "comment.line.number-sign.blo"))
            continue
        if at_start and token == "hypergradient" and following == "=":
            pipeline = True
            out.append((token, "keyword.other.pipeline.blo"))
        elif token.type == "STRING":
            out.append((token, f"string.quoted.{'double' if token.startswith(chr(34)) else 'single'}.blo"))
        elif token.type == "NUMBER":
            out.append((token, "constant.numeric.blo"))
        elif token.type == "DECL_KW":
            out.append((token, "storage.type.blo"))
        elif token.type in ("IMPORT", "AS"):
            out.append((token, "keyword.control.import.blo"))
        elif token.type == "_WITH":
            out.append((token, "keyword.other.with.blo"))
        elif token == "->":
            out.append((token, "keyword.operator.pipeline.blo"))
        elif token.type == "NAME" and pipeline and token in BY_NAME and following != "=":
            out.append((token, "support.function.operator.blo"))
        elif token.type == "NAME" and following == "{" and token in BLOCKS:
            out.append((token, "entity.name.section.blo"))
        elif token.type == "NAME" and depth and following == "=":
            out.append((token, "variable.parameter.blo"))
        depth += token.type in ("LPAR", "LSQB")
        depth -= token.type in ("RPAR", "RSQB")
        at_start = token.type in ("LBRACE", "RBRACE")
    return out


@pytest.mark.parametrize("path,text,tokens", SAMPLES, ids=[f"{p.parent.name}/{p.name}" for p, _, _ in SAMPLES])
def test_scopes_where_the_parser_finds_them(path, text, tokens):
    painted = Highlighter(GRAMMAR).scopes(text)
    for token, scope in expected_scopes(tokens):
        line = painted[token.line - 1]
        for col in range(token.column - 1, token.end_column - 1):
            assert scope in line[col], (token.line, token.column, str(token), scope, line[col])
            if scope.startswith("comment"):
                assert line[col] == {scope}, (token.line, str(token))
    operators = {(t.line - 1, col) for t, scope in expected_scopes(tokens) if scope.startswith("support.function")
                 for col in range(t.column - 1, t.end_column - 1)}
    assert operators == {(number, col) for number, line in enumerate(painted) for col, scopes in enumerate(line)
                         if "support.function.operator.blo" in scopes}   # operator names in the pipeline only


def test_enough_programs_are_highlighted():
    assert len(SAMPLES) >= 50
    assert any(s == "support.function.operator.blo" for _, _, tokens in SAMPLES for _, s in expected_scopes(tokens))


def test_the_grammar_names_the_catalogues_operators_and_blocks():
    repository = GRAMMAR["repository"]
    assert set(re.findall(r"\w+", repository["operator-name"]["match"].removeprefix("\\b"))) - {"b"} == set(BY_NAME)
    assert set(re.findall(r"\w+", repository["block"]["match"])) >= set(BLOCKS)


def test_the_interpreter_knows_every_rule_the_grammar_uses():
    def keys(rule):
        yield from rule
        for inner in rule.get("patterns", []):
            yield from keys(inner)

    used = set(keys(GRAMMAR)) | {k for rule in GRAMMAR["repository"].values() for k in keys(rule)}
    assert used - {"$schema", "scopeName", "fileTypes", "repository"} <= RULE_KEYS


def test_a_comment_that_looks_like_code_is_only_a_comment():
    painted = Highlighter(GRAMMAR).scopes('#   hypergradient = PTT -> RAD  "x" 1e-3\nhypergradient = CG(k=10)  # k')
    assert all(scopes == {"comment.line.number-sign.blo"} for scopes in painted[0])
    line = painted[1]
    assert "support.function.operator.blo" in line[16] and "variable.parameter.blo" in line[19]
    assert line[21] == {"constant.numeric.blo"} and line[-1] == {"comment.line.number-sign.blo"}


def test_the_extension_starts_the_server():
    package = json.loads((EDITOR / "package.json").read_text())
    assert package["contributes"]["languages"][0]["extensions"] == [".blo"]
    assert package["contributes"]["grammars"][0]["scopeName"] == GRAMMAR["scopeName"]
    assert package["contributes"]["configuration"]["properties"]["blodsl.command"]["default"] == ["blodsl", "lsp"]
    assert "vscode-languageclient" in package["dependencies"]
    configuration = json.loads((EDITOR / "language-configuration.json").read_text())
    assert configuration["comments"] == {"lineComment": "#"}
    assert ["(", ")"] in configuration["brackets"]
    assert "blodsl.command" in (EDITOR / "extension.js").read_text()
