import contextlib
import io
from pathlib import Path

import pytest

from blodsl import cli

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted((ROOT / "programs").glob("*.blo"))
BAD = Path(__file__).resolve().parent / "bad"
GOLDEN = Path(__file__).resolve().parent / "golden"


def run_cli(*argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `blodsl ARGV`, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(list(argv))
        except SystemExit as e:  # argparse exits for usage errors
            status = e.code
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def in_root(monkeypatch):
    """Run with the repository root as the working directory, so paths print as programs/x.blo."""
    monkeypatch.chdir(ROOT)
    return ROOT

