"""Settings: values checked by their rows, and `--set KEY=VALUE` (or `blodsl.compile(settings=...)`)
as an edit of the program that meets every rule a written setting meets."""

import json

import pytest

import blodsl
from blodsl.frontend import check_file
from blodsl.semantics.settings import BadSetting, SettingsRejected, apply, overrides
from blodsl.syntax.diagnostics import BloError
from blodsl.syntax.parser import parse
from blodsl.syntax.source import Source
from conftest import run_cli
from helpers import BASE, META, errors_of, program

DM = program(steps="steps = 1", hypergradient="hypergradient = DM -> RAD")


def checked(text: str, *settings: str):
    return blodsl.frontend.check_source(Source("t.blo", text), settings=list(settings))


# --- values in the program's text ------------------------------------------------------------

@pytest.mark.parametrize("value,message", [("1e999", "must be a number > 0"), ("-1", "must be a number > 0")])
def test_learning_rates_must_be_positive_and_finite(value, message):
    assert any(message in e for e in errors_of(program(optimizer=f"optimizer = SGD(lr={value})")))


@pytest.mark.parametrize("line,message", [
    ("optimizer = SGD(lr=0.5, momentum=-0.1)", "SGD's momentum must be a number >= 0, not -0.1"),
    ("optimizer = Adam(lr=0.5, betas=[0.9])", "Adam's betas must be two numbers in [0, 1), e.g. [0.9, 0.999], not [0.9]"),
    ("steps = 0", "steps must be an integer >= 1, not 0"),
    ("steps = 2.5", "steps must be an integer >= 1, not 2.5"),
])
def test_lower_level_values_are_checked_by_their_rows(line, message):
    key = line.split(" =")[0]
    assert errors_of(program(**{key: line})) == [message]


# --- --set on the command line ----------------------------------------------------------------

@pytest.mark.parametrize("setting,message", [
    ("upper.optimizer.foo=1", "Adam has no argument 'foo'"),
    ("upper.optimizer.lr=-1", "must be a number > 0"),
    ("upper.optimizer.betas=5", "must be two numbers in [0, 1)"),
    ("lower.optimizer.momentum=[1,2]", "must be a number >= 0"),
    ("lower.optimizer.nesterov=1", "must be True or False"),
])
def test_set_checks_values_as_a_program_would(in_root, setting, message):
    status, _, err = run_cli("run", "programs/hyper_cleaning.blo", "--no-compile", "--set", setting)
    assert status == 2 and message in err
    assert f"(--set {setting}): error: " in err


@pytest.mark.parametrize("argv,message", [
    (("--set", "lower.steps=0"), "programs/hyper_cleaning.blo:29:13 (--set lower.steps=0): error: "
                                 "steps must be an integer >= 1, not 0"),
    (("--set", "CG.k=5"), "blodsl: error: --set CG.k: the pipeline `RAD` has no CG"),
    (("--set", "RAD.k=5"), "RAD has no parameter 'k'"),
    (("--set", "colour=red"), "unknown setting 'colour'"),
    (("--set", "nonsense"), "key=value"),
])
def test_bad_settings_exit_2(in_root, argv, message):
    status, _, err = run_cli("run", "programs/hyper_cleaning.blo", "--no-compile", *argv)
    assert status == 2 and message in err and "Traceback" not in err


def test_unknown_keys_are_listed(in_root):
    status, _, err = run_cli("check", "programs/hyper_cleaning.blo", "--set", "lower.stepz=3")
    assert status == 2
    assert err == ("blodsl: error: --set: unknown setting 'lower.stepz'; it accepts upper.scheduler, upper.clip, "
                   "lower.steps, lower.start, run.outer_steps, run.eval_every, run.seed, run.device, run.dtype, "
                   "run.checkpoint_every, upper.optimizer.ARG, upper.scheduler.ARG, lower.optimizer.ARG, "
                   "OPERATOR.PARAM (e.g. CG.k)\n")


def test_a_setting_meets_the_rules_of_the_program(tmp_path):
    """`check` rejects DM -> RAD with 5 inner steps; so does `--set lower.steps=5`, saying where it came from."""
    path = tmp_path / "dm.blo"
    path.write_text(DM)
    assert run_cli("check", str(path))[0] == 0
    status, _, err = run_cli("run", str(path), "--no-compile", "--set", "lower.steps=5")
    assert status == 2
    assert err.splitlines() == [
        f"{path}:13:13 (--set lower.steps=5): error: DM is a single-loop method and needs one inner step per "
        "outer step, not 5",
        " 13 |     steps = 1",
        "    |             ^",
        "  fix: set `steps = 1` in the lower block",
        f"{path}: 1 error with the --set values (it checks without them)",
    ]


def test_an_error_elsewhere_notes_the_setting_that_caused_it(in_root):
    status, _, err = run_cli("check", "programs/embedded.blo", "--set", "lower.steps=10")
    assert status == 2
    assert err.splitlines() == [
        "programs/embedded.blo:31:30: error: RGT(truncate=20) must truncate fewer than the 10 inner steps",
        " 31 | hypergradient = RGT(truncate=20) -> RAD",
        "    |                              ^^",
        "programs/embedded.blo:27:13 (--set lower.steps=10): note: set on the command line",
        " 27 |     steps = 30",
        "    |             ^^",
        "  fix: choose truncate between 1 and 9, or raise steps",
        "programs/embedded.blo: 1 error with the --set values (it checks without them)",
    ]


def test_an_invalid_program_is_invalid_whatever_the_settings(tmp_path):
    path = tmp_path / "bad.blo"
    path.write_text(program(hypergradient="hypergradient = FOA -> RAD"))
    status, _, err = run_cli("check", str(path), "--set", "lower.steps=3")
    assert status == 1 and "FOA needs IAD" in err


def test_settings_change_the_program_and_recheck_it(in_root):
    changed = check_file("programs/embedded.blo",
                         ["lower.steps=25", "RGT.truncate=5", "upper.optimizer.lr=0.5", "run.seed=3"]).program
    assert changed.lower.steps == 25 and changed.run.seed == 3
    assert changed.upper.optimizer.args["lr"] == 0.5
    assert [op.params for op in changed.hypergradient.operators if op.name == "RGT"] == [{"truncate": 5}]
    assert changed.hypergradient.text == "NGD -> RGT(truncate=5) -> RAD"
    with pytest.raises(SettingsRejected, match="RGT.truncate=20. must truncate fewer than the 10 inner steps"):
        check_file("programs/embedded.blo", ["lower.steps=10"])
    with pytest.raises(SettingsRejected, match="Adam has no argument 'momentum' in an inner loop"):
        check_file("programs/embedded.blo", ["lower.optimizer.momentum=0.9"])


def test_set_lr_moves_the_operator_defaults_that_follow_it(in_root):
    p = check_file("programs/ridge_regression.blo", ["lower.optimizer.lr=0.05"]).program
    assert p.hypergradient.operators[-1].params == {"k": 50, "alpha": 0.05}
    vfo = checked(program(hypergradient="hypergradient = VFO"), "lower.steps=7").program
    assert vfo.hypergradient.operators[0].params["y_hat_steps"] == 7


def test_set_inserts_settings_and_blocks_the_program_leaves_out():
    p = checked(META, "run.seed=4", "run.device=cuda:0", "IAD.checkpoint=3").program  # META has no run block
    assert (p.run.seed, p.run.device) == (4, "cuda:0")
    assert p.hypergradient.operators[-1].params == {"checkpoint": 3}
    assert checked(BASE, "lower.start=reinit").program.lower.start.mode == "reinit"  # BASE writes no start
    with pytest.raises(SettingsRejected, match=r"t.blo:14:1 \(--set lower.start=reinit\): error: DI learns the lower "
                                               "level's initial value; each outer step starts from it"):
        checked(program(hypergradient="hypergradient = DI -> RAD"), "lower.start=reinit")


def test_the_written_tree_is_left_as_it_was():
    tree = parse(Source("t.blo", BASE))
    before = repr(tree)
    edited, placed = apply(tree, overrides(["lower.steps=3", "RAD.checkpoint=2", "lower.optimizer.momentum=0.5"]))
    assert repr(tree) == before and edited != tree
    assert [(s.line, s.origin) for s in placed] == [(13, "--set lower.steps=3"), (15, "--set RAD.checkpoint=2"),
                                                    (12, "--set lower.optimizer.momentum=0.5")]


def test_the_printed_and_recorded_pipeline_follow_a_setting(in_root, tmp_path):
    status, out, _ = run_cli("check", "programs/l2_regularisation.blo", "--set", "CG.k=3")
    assert status == 0 and "  pipeline  NGD -> CG(k=3, tol=1e-08)\n" in out
    status, out, err = run_cli("run", "programs/ridge_regression.blo", "--set", "NS.k=3", "--set", "lower.steps=4",
                               "--outer-steps", "1", "--no-compile", "--no-baseline", "--out", str(tmp_path / "r"))
    assert status == 0, err
    assert out.startswith("ridge_regression.blo: NGD -> NS(k=3, alpha=0.1), 1 outer steps of 4 inner steps")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["pipeline"] == "NGD -> NS(k=3, alpha=0.1)"


# --- blodsl.compile(settings=...) --------------------------------------------------------------

def test_the_python_api_takes_the_same_settings(in_root):
    as_dict = blodsl.api.checked_program("programs/l2_regularisation.blo", {"CG.k": 3, "upper.optimizer.betas": [0.5, 0.9]})
    as_list = blodsl.api.checked_program("programs/l2_regularisation.blo", ["CG.k=3", "upper.optimizer.betas=[0.5, 0.9]"])
    assert as_dict == as_list
    assert as_dict.hypergradient.text == "NGD -> CG(k=3, tol=1e-08)"
    assert as_dict.upper.optimizer.args["betas"] == [0.5, 0.9]
    text_value = blodsl.api.checked_program(BASE, {"lower.start": "reinit", "run.dtype": "float64"})
    assert text_value.lower.start.mode == "reinit" and text_value.run.dtype == "float64"
    with pytest.raises(BloError, match=r"\(--set CG.k=0\): error: CG's k must be an integer >= 1, not 0"):
        blodsl.compile("programs/l2_regularisation.blo", settings={"CG.k": 0})
    with pytest.raises(ValueError, match="a setting is a number, True/False, text or a list, not dict"):
        blodsl.compile("programs/l2_regularisation.blo", settings={"CG.k": {}})
    with pytest.raises(BadSetting, match="unknown setting 'k'"):
        blodsl.compile("programs/l2_regularisation.blo", settings=["k=3"])


def test_compile_builds_the_program_with_its_settings(in_root):
    pipeline = blodsl.compile("programs/ridge_regression.blo", compile=False, device="cpu",
                              settings={"lower.steps": 3, "NS.k": 2})
    assert "steps=3" in pipeline.source and 'rt.Op("NS", k=2, alpha=0.1)' in pipeline.source
    assert pipeline.hypergradient()["log_lam"].abs().sum() > 0


def test_an_invalid_program_is_reported_as_written(tmp_path):
    path = tmp_path / "dm.blo"
    path.write_text(program(hypergradient="hypergradient = DM -> RAD"))   # 20 steps
    status, _, err = run_cli("check", str(path), "--set", "lower.steps=3")
    assert status == 1
    assert err.splitlines()[0] == (f"{path}:13:13: error: DM is a single-loop method and needs one inner step per "
                                   "outer step, not 20")
    assert run_cli("check", str(path), "--set", "lower.steps=1")[0] == 0   # a setting may make it valid
