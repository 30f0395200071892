"""The command line: exit statuses, stages, and what reaches the terminal."""

import json
import subprocess
import sys

from conftest import BAD, ROOT, run_cli
from helpers import program


def test_check_summarises_a_valid_program(in_root):
    status, out, err = run_cli("check", "programs/hyper_cleaning.blo")
    assert status == 0 and err == ""
    assert out.splitlines() == [
        "programs/hyper_cleaning.blo: ok",
        "  data      train (digits part 1), val (digits part 2), test (digits part 3)",
        "  upper     var w[train.n]",
        "            Adam(lr=0.1)",
        "  lower     model net = Linear(train.features, train.classes)",
        "            SGD(lr=0.5, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False), 20 steps per outer step, warm start",
        "  pipeline  NGD -> RAD",
        "  run       100 outer steps, metrics test_accuracy, flagged_f1 every 10; seed 0, device auto, float32",
    ]


def test_several_files_exit_1_if_any_is_invalid(in_root):
    status, out, err = run_cli("check", "programs/hyper_cleaning.blo", "compiler_tests/bad/foa_without_iad.blo")
    assert status == 1
    assert "programs/hyper_cleaning.blo: ok" in out
    assert "compiler_tests/bad/foa_without_iad.blo:19:17: error: FOA needs IAD" in err


def test_missing_file_is_a_command_line_error(tmp_path):
    status, out, err = run_cli("check", str(tmp_path / "nope.blo"))
    assert status == 2
    assert err == f"blodsl: error: cannot read '{tmp_path / 'nope.blo'}': No such file or directory\n"


def test_directory_is_a_command_line_error(tmp_path):
    status, _, err = run_cli("check", str(tmp_path))
    assert status == 2 and err.startswith("blodsl: error: cannot read")


def test_usage_errors_exit_2():
    assert run_cli()[0] == 2
    assert run_cli("check")[0] == 2
    assert run_cli("frobnicate")[0] == 2
    status, _, err = run_cli("compile", "x.blo", "--emit", "llvm")
    assert status == 2 and "invalid choice: 'llvm'" in err


def test_compile_emits_ast_and_ir(in_root):
    status, out, _ = run_cli("compile", "programs/sinusoid_maml.blo", "--emit", "ast")
    assert status == 0 and out.startswith("File")
    lines = (ROOT / "programs" / "sinusoid_maml.blo").read_text().splitlines()
    learner = 1 + next(i for i, line in enumerate(lines) if "model learner" in line)
    start = 1 + next(i for i, line in enumerate(lines) if "start = from" in line)
    assert "Declaration" in out and f"@{learner}:5" in out  # positions shown as line:col
    status, out, _ = run_cli("compile", "programs/sinusoid_maml.blo", "--emit", "ir")
    program = json.loads(out)
    assert status == 0
    assert [op["name"] for op in program["hypergradient"]["operators"]] == ["NGD", "IAD"]
    assert program["lower"]["start"] == {"mode": "from", "source": "meta", "line": start}


def test_compile_of_an_invalid_program_exits_1(in_root):
    status, out, err = run_cli("compile", "compiler_tests/bad/undefined_name.blo")
    assert status == 1 and out == "" and "undefined name 'vall'" in err


def test_real_process_shows_no_traceback():
    """The installed entry point, as a user runs it, on an invalid program and junk bytes."""
    for name in ("unterminated_string.blo", "binary.blo"):
        done = subprocess.run([sys.executable, "-m", "blodsl", "check", name], cwd=BAD,
                              capture_output=True, text=True)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr and done.stderr.startswith(f"{name}:")


def test_long_lines_are_shown_as_a_window_around_the_caret(tmp_path):
    path = tmp_path / "long.blo"
    path.write_text("hypergradient = " + " -> ".join(["PTT"] * 40) + " -> zzz\n")
    status, _, err = run_cli("check", str(path))
    lines = err.splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith("error: unknown operator 'zzz'"))
    excerpt, caret = lines[at + 1: at + 3]
    assert status == 1
    assert len(excerpt) < 140 and excerpt.endswith("-> zzz")
    assert caret.index("^") == excerpt.index("zzz") and caret.endswith("^^^")


def test_check_prints_warnings_and_succeeds(tmp_path):
    from helpers import program

    path = tmp_path / "one_step.blo"
    path.write_text(program(steps="steps = 1", optimizer="optimizer = SGD(lr=0.5, momentum=0.9)"))
    status, out, err = run_cli("check", str(path))
    assert status == 0 and out.startswith(f"{path}: ok\n")
    assert err.splitlines() == [
        f"{path}:12:29: warning: momentum has no effect with one inner step: the optimiser's state starts at zero "
        "every outer step, so its first step does not depend on it",
        " 12 |     optimizer = SGD(lr=0.5, momentum=0.9)",
        "    |                             ^^^^^^^^^^^^",
        "  fix: remove momentum=0.9",
    ]


def test_an_unknown_device_is_a_command_line_error(in_root):
    status, _, err = run_cli("run", "programs/hyper_cleaning.blo", "--device", "bogus")
    assert status == 2 and "device must be auto, cpu, cuda or cuda:N, not 'bogus'" in err


def test_compile_emits_the_plan(in_root, tmp_path):
    """The plan says what each operator became: its kernels, its chunks, what the reverse sweep
    keeps and the state it carries; a --set value shows in it."""
    status, out, _ = run_cli("compile", "programs/hyper_cleaning.blo", "--emit", "plan",
                             "--set", "RAD.checkpoint=10")
    assert status == 0
    assert out.splitlines()[0] == "pipeline  NGD -> RAD(checkpoint=10)"
    assert "kernels   chunk, chunk_vjp, upper_grads" in out
    assert "reverse   the inner state every 10 steps" in out and "state     none" in out
    dm = tmp_path / "dm.blo"
    dm.write_text(program(steps="steps = 1", hypergradient="hypergradient = DM(v_lr=0.2) -> CG"))
    status, out, _ = run_cli("compile", str(dm), "--emit", "plan")
    assert status == 0 and "v moves the exact line-search step" in out
    assert "kernels   step" in out and "state     v, carried across outer steps" in out
