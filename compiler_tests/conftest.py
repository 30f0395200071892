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


# IAD -> FD and IAD -> IGA are rejected by the checker (FD and IGA would drop the derivative
# through the start that IAD hands on), so these oracle cases of test_operators.py, which its
# owner removes with the runtime's half of the change, can only fail: they must, and are reported so.
REJECTED_BY_THE_CHECKER = {
    "test_operators.py::test_task_batch_terminals_with_a_scalar_lower_variable[IAD -> FD(r=0.01)]",
    "test_operators.py::test_task_batch_terminals_with_a_scalar_lower_variable[IAD -> IGA]",
}


def pytest_collection_modifyitems(items):
    from blodsl.syntax.diagnostics import BloError

    for item in items:
        if item.nodeid.split("/")[-1] in REJECTED_BY_THE_CHECKER:
            item.add_marker(pytest.mark.xfail(raises=BloError, strict=True,
                                              reason="IAD -> FD and IAD -> IGA are rejected by the checker"))
