"""Each program in bad/ fails with exactly the text in its .expected file.

To accept a deliberate change of wording: BLODSL_UPDATE_GOLDEN=1 pytest, then read the diff.
"""

import os
import re

import pytest

from conftest import BAD, run_cli

CASES = sorted(BAD.glob("*.blo"))
LOCATED = re.compile(r"^[\w.]+\.blo:\d+:\d+: (error|warning|note): ")


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_program(path, monkeypatch):
    monkeypatch.chdir(BAD)
    status, out, err = run_cli("check", path.name)
    expected = path.with_suffix(".expected")
    if os.environ.get("BLODSL_UPDATE_GOLDEN") == "1":
        expected.write_text(err)
    assert status == 1 and out == ""
    assert err == expected.read_text()
    first = err.splitlines()[0]
    assert LOCATED.match(first), first
    assert "Traceback" not in err


def test_every_bad_program_has_expected_text():
    assert sorted(p.stem for p in BAD.glob("*.expected")) == sorted(p.stem for p in CASES)
    assert len(CASES) >= 40
