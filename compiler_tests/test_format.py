"""`blodsl fmt`: one layout, idempotent, every comment kept, and never a change to what the
checker says of a program."""

import json
import os
import random
from pathlib import Path

import pytest

from blodsl.frontend import check_source
from blodsl.syntax.diagnostics import BloError
from blodsl.syntax.parser import decode, parse_with_tokens
from blodsl.syntax.source import Source
from blodsl.tooling.format import format_source
from conftest import BAD, PROGRAMS, ROOT, run_cli

EXAMPLES = PROGRAMS + sorted((ROOT / "bench" / "programs").glob("*.blo"))


def _parses(path: Path) -> bool:
    try:
        parse_with_tokens(decode(path.read_bytes(), path.name))
    except BloError:
        return False
    return True


PARSING_BAD = [p for p in sorted(BAD.glob("*.blo")) if _parses(p)]


def fmt(text: str) -> str:
    return format_source(Source("t.blo", text))


def comments(text: str) -> list[str]:
    return [t.rstrip() for t in parse_with_tokens(Source("t.blo", text))[1] if t.type == "COMMENT"]


def _squeezed(value):
    """A checked program or message with its positions and spacing left out."""
    if isinstance(value, dict):
        return {k: _squeezed(v) for k, v in value.items() if k != "line"}
    if isinstance(value, list):
        return [_squeezed(v) for v in value]
    return "".join(value.split()) if isinstance(value, str) else value


def verdict(text: str, base_dir: Path):
    """What `blodsl check` says of a program, positions and spacing aside."""
    def said(diagnostics):
        return [_squeezed([d.severity, d.message, d.fix, [note for _, note in d.notes]]) for d in diagnostics]

    try:
        checked = check_source(Source("t.blo", text), base_dir)
    except BloError as e:
        return "invalid", said(e.diagnostics)
    return _squeezed(json.loads(checked.program.model_dump_json())), said(checked.warnings)


def assert_safe(original: str, base_dir: Path) -> str:
    formatted = fmt(original)
    assert fmt(formatted) == formatted
    assert comments(formatted) == comments(original)
    assert verdict(formatted, base_dir) == verdict(original, base_dir)
    return formatted


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_are_in_the_layout(path):
    text = path.read_text()
    assert assert_safe(text, path.parent) == text


@pytest.mark.parametrize("path", PARSING_BAD, ids=lambda p: p.stem)
def test_bad_programs_keep_what_check_says(path):
    assert_safe(decode(path.read_bytes(), path.name).text, BAD)


def test_most_bad_programs_parse():
    assert len(PARSING_BAD) >= 40


_WORDS = {"NAME", "NUMBER", "STRING", "DECL_KW", "IMPORT", "AS", "_WITH"}


def respaced(text: str, rng: random.Random, breaks: bool = False) -> str:
    """`text` with other spaces, indentation and runs of blank lines; with `breaks`, also line breaks
    added after commas inside brackets and removed where no comment needs them."""
    out, depth, prev = [], 0, None   # prev: the type of what was written last
    for token in parse_with_tokens(Source("t.blo", text))[1]:
        if token.type == "_NL":
            if depth and breaks and prev != "COMMENT" and rng.random() < 0.5:
                out.append(" ")
            else:
                blank = token.count("\n") > 1   # a blank line is kept, so only its length may change
                count = rng.choice((1, 2)) if depth else rng.choice((2, 3)) if blank else 1
                out.append("\n" * count + rng.choice(("", " ", "  ", "\t", "       ")))
        else:
            if prev not in (None, "_NL"):
                joinable = prev not in _WORDS and token.type not in _WORDS and token.type != "COMMENT"
                out.append(rng.choice(("", " ", "   ") if joinable else (" ", "  ", "\t ")))
            out.append(str(token))
        depth += token.type in ("LPAR", "LSQB")
        depth -= token.type in ("RPAR", "RSQB")
        prev = token.type
        if breaks and depth and token.type == "COMMA" and rng.random() < 0.3:
            out.append("\n" + " " * rng.randrange(12))
            prev = "_NL"
    return "".join(out)


@pytest.mark.parametrize("seed", range(3))
def test_respaced_programs_format_back_to_the_same_text(seed):
    rng = random.Random(seed)
    for path in EXAMPLES:
        text = path.read_text()
        assert fmt(respaced(text, rng)) == fmt(text), path.name


@pytest.mark.parametrize("seed", range(2))
def test_programs_with_other_line_breaks_stay_safe(seed):
    rng = random.Random(seed)
    for path in EXAMPLES + PARSING_BAD[::4]:
        text = decode(path.read_bytes(), path.name).text
        assert_safe(respaced(text, rng, breaks=True), path.parent)


def test_the_layout():
    messy = ('\n\n# header\nimport "m.x:y"   as   z\ndata{   # the data\n'
             '  train,val , test=digits( split = [0.5,0.2 ,0.3],label_noise=.45,   # noisy\n'
             '       seed=0)\n\n\n}\nupper {\n\n    var w=zeros( train.n )  # w\n'
             '        objective=cross_entropy(net(val.x),val.y)\n    optimizer = Adam(\n'
             '        lr=0.1,   # lr\n          betas=[0.9,\n          0.99],\n            )\n'
             '  # end of upper\n\n}\n# lower level\nlower { model net = Linear(train.features,train.classes)\n'
             'objective = mean(sigmoid(w)*cross_entropy(net(train.x), train.y))+-1*2**-w[0]\n'
             'optimizer = SGD(lr=0.5)\n steps = 20 }\nhypergradient=PTT->   RAD  # p\nrun {}')
    assert fmt(messy) == (
        '# header\n'
        'import "m.x:y" as z\n'
        '\n'
        'data {                                           # the data\n'
        '    train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=.45,  # noisy\n'
        '                              seed=0)\n'
        '}\n'
        '\n'
        'upper {\n'
        '    var w = zeros(train.n)                       # w\n'
        '    objective = cross_entropy(net(val.x), val.y)\n'
        '    optimizer = Adam(\n'
        '        lr=0.1,                                  # lr\n'
        '        betas=[0.9,\n'
        '               0.99],\n'
        '    )\n'
        '    # end of upper\n'
        '}\n'
        '\n'
        '# lower level\n'
        'lower {\n'
        '    model net = Linear(train.features, train.classes)\n'
        '    objective = mean(sigmoid(w) * cross_entropy(net(train.x), train.y)) + -1 * 2 ** -w[0]\n'
        '    optimizer = SGD(lr=0.5)\n'
        '    steps = 20\n'
        '}\n'
        '\n'
        'hypergradient = PTT -> RAD                       # p\n'
        '\n'
        'run {}\n')


def test_line_endings_and_empty_files():
    text = PROGRAMS[0].read_text()
    assert fmt(text.replace("\n", "\r\n")) == text.replace("\n", "\r\n")
    assert fmt("") == "" and fmt("\n\n") == ""
    assert fmt("  # only a comment  \n\n\n# and another") == "# only a comment\n\n# and another\n"


def test_fmt_rewrites_only_files_that_change(tmp_path, capsys):
    done, messy = tmp_path / "done.blo", tmp_path / "messy.blo"
    done.write_text(PROGRAMS[0].read_text())
    messy.write_text(PROGRAMS[0].read_text().replace(" = ", "=").replace("{\n", "{\n\n"))
    os.chmod(messy, 0o640)
    before = done.stat().st_mtime_ns, done.stat().st_ino
    status, out, err = run_cli("fmt", "--check", str(done), str(messy))
    assert (status, out, err) == (1, f"would reformat {messy}\n", "")
    assert messy.read_text() != done.read_text()
    status, out, err = run_cli("fmt", str(done), str(messy))
    assert (status, out, err) == (0, f"formatted {messy}\n", "")
    assert messy.read_text() == done.read_text()
    assert (done.stat().st_mtime_ns, done.stat().st_ino) == before
    assert messy.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.blo", "messy.blo"]
    assert run_cli("fmt", "--check", str(done), str(messy)) == (0, "", "")


def test_fmt_refuses_a_file_that_does_not_parse(tmp_path):
    broken = tmp_path / "broken.blo"
    broken.write_text("data {\n    train = digits(\n}\n")
    status, out, err = run_cli("fmt", str(broken))
    assert status == 1 and out == ""
    assert err.startswith(f"{broken}:2:19: error: '(' opened here is not closed\n")
    assert err.endswith(f"{broken}: not formatted: it does not parse\n")
    assert broken.read_text() == "data {\n    train = digits(\n}\n"
    assert run_cli("fmt", str(tmp_path / "missing.blo"))[0] == 2
