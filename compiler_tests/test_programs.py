"""Every example program checks; a few are pinned stage by stage (golden files)."""

import os
import subprocess
import sys

import pytest

from blodsl import ir
from blodsl.syntax.ast import dump
from blodsl.frontend import check_file
from conftest import GOLDEN, PROGRAMS, ROOT, run_cli

UPDATE = os.environ.get("BLODSL_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_example_checks_without_warnings(path, in_root):
    status, out, err = run_cli("check", str(path.relative_to(ROOT)))
    assert (status, err) == (0, "")
    assert out.startswith(f"programs/{path.name}: ok\n")


def test_there_are_examples_of_each_kind():
    names = {p.stem for p in PROGRAMS}
    assert {"hyper_cleaning", "l2_regularisation", "sinusoid_maml", "architecture_search"} <= names


@pytest.mark.parametrize("name", ["hyper_cleaning", "sinusoid_maml", "architecture_search"])
@pytest.mark.parametrize("stage", ["ast", "ir"])
def test_golden_stage(name, stage, in_root):
    checked = check_file(f"programs/{name}.blo")
    text = dump(checked.tree) if stage == "ast" else checked.program.model_dump_json(indent=2)
    golden = GOLDEN / f"{name}.{stage}"
    if UPDATE:
        golden.write_text(text + "\n")
    assert text + "\n" == golden.read_text(), "regenerate with BLODSL_UPDATE_GOLDEN=1 if intended"


def test_ir_round_trips_through_json(in_root):
    """The engine may read the IR back from `blodsl compile --emit ir`."""
    for path in PROGRAMS:
        program = check_file(path.relative_to(ROOT)).program
        assert ir.Program.model_validate_json(program.model_dump_json()) == program


def test_check_does_not_import_torch(in_root):
    code = ("import sys; from blodsl.cli import main; "
            "status = main(['check'] + sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(status)")
    files = [str(p.relative_to(ROOT)) for p in PROGRAMS]
    done = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": ok\n") == len(PROGRAMS)
