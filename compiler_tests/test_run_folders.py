"""Run folders: checkpoints a killed run resumes from exactly, the divergence guard, the
record of a run, its pictures and TensorBoard events."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_cli
from helpers import BASE, META, program

EAGER = ("--no-compile", "--no-baseline")


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def summary(folder) -> dict:
    return json.loads((folder / "summary.json").read_text())


def state(folder) -> dict:
    return torch.load(folder / "state.pt", weights_only=False)


def start(path, out, *argv) -> subprocess.Popen:
    """`blodsl run` in a process of its own, to be killed."""
    return subprocess.Popen([sys.executable, "-m", "blodsl.cli", "run", str(path), *EAGER, "--out", str(out), *argv],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_steps(process: subprocess.Popen, folder, steps: int, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = folder / "metrics.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= steps:
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    raise AssertionError(f"no {steps} steps within {timeout} s")


PROGRAMS = {
    "warm start": program(steps="steps = 2"),
    "reinit start": program(steps="steps = 2", after_steps="start = reinit"),
    "task batch": META,
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_a_run_killed_mid_way_resumes_to_the_same_end(name, tmp_path):
    """SIGKILL at an arbitrary moment, then `--resume`: the same final upper and lower variables
    as an uninterrupted run (exactly, eagerly), and every step logged once."""
    path = write(tmp_path, "p.blo", PROGRAMS[name])
    steps = ("--outer-steps", "40", "--checkpoint-every", "3")
    assert run_cli("run", str(path), *EAGER, "--out", str(tmp_path / "whole"), *steps)[0] == 0

    killed = tmp_path / "killed"
    process = start(path, killed, *steps)
    wait_for_steps(process, killed, 7)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert summary(killed)["status"] == "running" and summary(killed)["checkpoint_at"] >= 6
    status, _, err = run_cli("run", "--resume", str(killed), *EAGER)
    assert status == 0, err

    whole, resumed = state(tmp_path / "whole"), state(killed)
    for part in ("upper", "lower"):
        assert resumed[part].keys() == whole[part].keys()
        assert all(torch.equal(resumed[part][k], whole[part][k]) for k in whole[part])
    assert [r["step"] for r in records(killed)] == list(range(1, 41))
    assert summary(killed)["status"] == "finished" and summary(killed)["resumed"][0]["at_step"] >= 6


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tmp_path):
    path = write(tmp_path, "p.blo", program(steps="steps = 2"))
    out = tmp_path / "run"
    process = start(path, out, "--outer-steps", "400")
    wait_for_steps(process, out, 3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    record = summary(out)
    assert record["status"] == "interrupted"
    assert record["checkpoint_at"] == len(records(out)) == state(out)["steps_done"]
    assert f"resume with `blodsl run --resume {out}`" in err


def test_resume_refuses_a_changed_program_and_a_new_seed(tmp_path):
    path = write(tmp_path, "p.blo", program(steps="steps = 2"))
    out = tmp_path / "run"
    assert run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "2")[0] == 0
    status, _, err = run_cli("run", "--resume", str(out), "--seed", "3")
    assert status == 2 and "a resumed run keeps its seed and dtype" in err
    path.write_text(path.read_text().replace("lr=0.5", "lr=0.4"))
    status, _, err = run_cli("run", "--resume", str(out))
    assert status == 2 and f"'{path}' has changed since the run in {out} started" in err
    status, _, err = run_cli("run", "--resume", str(tmp_path))
    assert status == 2 and "is not a run folder" in err


# F falls as z rises, so SGD(lr=100) takes z from 0 to about 100 in one outer step; exp(100)
# overflows float32, so the lower level's first inner step of outer step 2 is NaN
DIVERGING = program(
    BASE.replace("var w = zeros(train.n)", "var w = zeros(train.n)\n    var z = 0.0")
        .replace("objective = cross_entropy(net(val.x), val.y)", "objective = cross_entropy(net(val.x), val.y) - z")
        .replace('reduction="none"))', 'reduction="none")) + 1e-3 * exp(z) * sqnorm(net)')
        .replace("optimizer = Adam(lr=0.1)", "optimizer = SGD(lr=100)"),
    steps="steps = 2")


def test_divergence_stops_the_run_at_its_first_infinity(tmp_path):
    """Exit 1 with the quantity, the outer and inner step, the .blo line and the learning rates;
    nothing of the bad step is kept: the last good checkpoint stays. A resumed run takes the
    settings it is resumed with (here the upper learning rate, which the message then shows)."""
    path = write(tmp_path, "d.blo", DIVERGING)
    out = tmp_path / "run"
    status, _, err = run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "6",
                             "--checkpoint-every", "1")
    line = next(i for i, text in enumerate(DIVERGING.splitlines(), 1) if "sqnorm(net)" in text)
    assert status == 1 and "Traceback" not in err
    assert (f"{path}:{line}: error: the lower level's variables became nan at inner step 1 of outer step 2: lower "
            "the learning rates involved (upper SGD lr=100, inner SGD lr=0.5)") in err
    assert f"the last good checkpoint (outer step 1) is in {out}" in err
    assert summary(out)["status"] == "diverged" and state(out)["steps_done"] == 1
    assert [r["step"] for r in records(out)] == [1]

    status, _, err = run_cli("run", "--resume", str(out), *EAGER, "--set", "upper.optimizer.lr=0.01")
    assert status == 1 and "(upper SGD lr=0.01, inner SGD lr=0.5)" in err     # z came to 100 in step 1
    assert summary(out)["settings"][-1] == "upper.optimizer.lr=0.01"


def test_a_run_diverging_at_once_resumes_from_its_start_with_a_smaller_learning_rate(tmp_path):
    path = write(tmp_path, "p.blo", program(steps="steps = 2"))
    out = tmp_path / "run"
    status, _, err = run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "3",
                             "--set", "lower.optimizer.lr=1e38")
    assert status == 1 and "of outer step 1:" in err and "the last good checkpoint (the start)" in err
    assert not (out / "state.pt").exists() and records(out) == []
    status, _, err = run_cli("run", "--resume", str(out), *EAGER, "--set", "lower.optimizer.lr=0.5")
    assert status == 0, err
    assert [r["step"] for r in records(out)] == [1, 2, 3] and summary(out)["status"] == "finished"


def test_the_record_of_a_run(tmp_path):
    """summary.json says how to reproduce the run; each metrics line has its wall-clock time."""
    path = write(tmp_path, "p.blo", program(steps="steps = 2").replace("run {", "run {\n    baseline = initial"))
    out = tmp_path / "run"
    assert run_cli("run", str(path), "--no-compile", "--out", str(out), "--outer-steps", "2", "--seed", "4",
                   "--set", "upper.optimizer.lr=0.2")[0] == 0
    record = summary(out)
    assert record["seed"] == 4 and record["settings"] == ["upper.optimizer.lr=0.2", "run.outer_steps=2", "run.seed=4"]
    assert len(record["program_sha256"]) == 64 and record["pipeline"] == "NGD -> RAD"
    assert set(record["versions"]) == {"blodsl", "torch", "python"}
    assert record["device"] == "cpu" and record["dtype"] == "float32" and record["status"] == "finished"
    assert record["started"] < record["finished"] and record["baseline_s"] > 0
    assert all("time" in r for r in records(out))


def test_curves_and_an_overlay_naming_what_differs(tmp_path):
    from blodsl.runs.folder import RunFolder
    from blodsl.runs.plots import labels

    path = write(tmp_path, "p.blo", program(steps="steps = 2"))
    for lr in ("0.1", "0.3"):
        assert run_cli("run", str(path), "--no-compile", "--out", str(tmp_path / lr), "--outer-steps", "3",
                       "--set", f"upper.optimizer.lr={lr}")[0] == 0
        assert (tmp_path / lr / "curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    status, _, err = run_cli("plot", str(tmp_path / "0.1"), str(tmp_path / "0.3"), "-o", str(tmp_path / "both.png"))
    assert status == 0 and (tmp_path / "both.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    folders = [RunFolder(tmp_path / lr) for lr in ("0.1", "0.3")]
    assert labels(folders) == ["upper.optimizer.lr=0.1", "upper.optimizer.lr=0.3"]
    assert run_cli("plot", str(tmp_path / "nothing"))[0] == 2


def test_tensorboard_events_hold_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = write(tmp_path, "p.blo", program(steps="steps = 2"))
    out = tmp_path / "run"
    assert run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "3", "--tensorboard")[0] == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"upper_objective", "lower_objective", "hypergradient_norm"} <= set(events.Tags()["scalars"])
    logged = [r["upper_objective"] for r in records(out)]
    assert [e.value for e in events.Scalars("upper_objective")] == pytest.approx(logged)


def test_a_user_module_beside_the_program_is_found_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "mymods_beside.py").write_text(
        "import torch\nclass Tiny(torch.nn.Linear):\n    pass\n")
    text = 'import "mymods_beside:Tiny" as Tiny\n' + program(steps="steps = 2").replace(
        "model net = Linear(train.features, train.classes)", "model net = Tiny(train.features, train.classes)")
    path = write(tmp_path / "project", "p.blo", text)
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli("run", str(path.relative_to(tmp_path)), *EAGER, "--out", "run", "--outer-steps", "1")
    assert status == 0, err


def test_two_programs_with_modules_of_one_name_each_get_their_own(tmp_path):
    import blodsl

    values = []
    for scale in ("1.0", "3.0"):
        folder = tmp_path / f"p{scale}"
        folder.mkdir()
        (folder / "helpers_mod.py").write_text(f"def extra(w):\n    return {scale} * (w ** 2).mean()\n")
        text = 'import "helpers_mod:extra" as extra\n' + program(steps="steps = 2").replace(
            "objective = cross_entropy(net(val.x), val.y)", "objective = cross_entropy(net(val.x), val.y) + extra(w + 1)")
        path = write(folder, "p.blo", text)
        values.append(blodsl.compile(path, compile=False).upper_objective())
    assert values[1] > values[0]


def test_a_finished_run_is_not_run_again_and_cannot_shrink(tmp_path):
    path = write(tmp_path, "p.blo", program(steps="steps = 2"))
    out = tmp_path / "run"
    assert run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "3")[0] == 0
    before = summary(out)
    status, stdout, _ = run_cli("run", "--resume", str(out), *EAGER)
    assert status == 0 and "has done its 3 outer steps" in stdout
    assert summary(out)["finished"] == before["finished"] and [r["step"] for r in records(out)] == [1, 2, 3]
    status, _, err = run_cli("run", "--resume", str(out), *EAGER, "--outer-steps", "2")
    assert status == 2 and "has done 3 outer steps; --outer-steps must be at least that" in err
    status, _, err = run_cli("run", "--resume", str(out), *EAGER, "--outer-steps", "5")
    assert status == 0 and [r["step"] for r in records(out)] == [1, 2, 3, 4, 5]


def test_a_method_s_own_variables_are_guarded_too(tmp_path):
    """DM's multiplier overflowing is named as such, with DM's own step size to change, and no
    checkpoint holds it."""
    path = write(tmp_path, "dm.blo", program(steps="steps = 1", hypergradient="hypergradient = DM(v_lr=1e30) -> RAD"))
    out = tmp_path / "run"
    status, _, err = run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "6", "--checkpoint-every", "1")
    assert status == 1 and "the DualMultiplier's own variables (v) became" in err and "--set DM.v_lr=..." in err
    from torch.utils._pytree import tree_leaves

    assert all(torch.isfinite(t).all() for t in tree_leaves(state(out)["method"]["v"]))


def test_a_schedule_is_resumed_as_saved(tmp_path):
    text = program(steps="steps = 2").replace("optimizer = Adam(lr=0.1)",
                                              "optimizer = Adam(lr=0.1)\n    scheduler = StepLR(step_size=2)")
    path = write(tmp_path, "p.blo", text)
    out = tmp_path / "run"
    assert run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "2")[0] == 0
    status, _, err = run_cli("run", "--resume", str(out), *EAGER, "--outer-steps", "4", "--set", "upper.optimizer.lr=0.5")
    assert status == 2 and "follows StepLR, which a resumed run takes up as saved: upper.optimizer.lr" in err
    assert run_cli("run", "--resume", str(out), *EAGER, "--outer-steps", "4")[0] == 0


def test_a_run_that_fails_says_so_in_its_record(tmp_path):
    """A metric that fails only on a later evaluation (a user function) leaves status failed."""
    (tmp_path / "late.py").write_text("calls = []\ndef late(x):\n    calls.append(1)\n"
                                      "    if len(calls) > 1:\n        raise ValueError('late')\n    return x.mean()\n")
    text = 'import "late:late" as late\n' + program(steps="steps = 2").replace(
        "metric test_accuracy = accuracy(net(test.x), test.y)", "metric m = late(net(test.x))")
    path = write(tmp_path, "p.blo", text)
    out = tmp_path / "run"
    status, _, err = run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "2")
    assert status == 1 and "Traceback" not in err
    assert summary(out)["status"] == "failed" and "late" in summary(out)["error"]


def test_a_folder_being_written_is_not_resumed_at_the_same_time(tmp_path):
    import fcntl

    path = write(tmp_path, "p.blo", program(steps="steps = 2"))
    out = tmp_path / "run"
    assert run_cli("run", str(path), *EAGER, "--out", str(out), "--outer-steps", "1")[0] == 0
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status, _, err = run_cli("run", "--resume", str(out), *EAGER, "--outer-steps", "2")
    assert status == 2 and f"another blodsl process is writing {out}" in err
