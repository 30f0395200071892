"""`blodsl run`, `blodsl compile -o` and the Python API, end to end."""

import json
import math
import subprocess
import sys

import pytest
import torch

import blodsl
from conftest import ROOT, run_cli
from helpers import BASE, program
from test_generated import import_file

SHORT = ("--outer-steps", "3", "--set", "lower.steps=4", "--no-compile", "--no-baseline")


def test_run_prints_json_and_keeps_a_run_folder(in_root, tmp_path):
    out = tmp_path / "run"
    status, stdout, stderr = run_cli("run", "programs/hyper_cleaning.blo", *SHORT, "--json", "--out", str(out))
    assert status == 0, stderr
    final = json.loads(stdout)  # stdout holds the JSON object and nothing else
    assert final["step"] == 3 and 0 <= final["test_accuracy"] <= 1 and math.isfinite(final["upper_objective"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"] == final and summary["compiled"] is False
    assert "compiled by blodsl" in (out / "program.py").read_text()
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["steps_done"] == 3 and state["upper"]["w"].shape == (898,)


def test_run_reports_the_baseline_next_to_the_result(in_root, tmp_path):
    status, stdout, _ = run_cli("run", "programs/hyper_cleaning.blo", "--outer-steps", "15", "--no-compile",
                                "--out", str(tmp_path / "r"))
    assert status == 0
    line = next(line for line in stdout.splitlines() if line.strip().startswith("test_accuracy"))
    learned, baseline = float(line.split()[1]), float(line.split()[-1])
    assert learned > baseline + 0.05   # cleaning beats training on the noisy labels as they are
    assert "held at their initial values" in stdout


def test_run_never_writes_into_an_existing_folder(in_root, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    status, _, err = run_cli("run", "programs/hyper_cleaning.blo", *SHORT, "--out", str(tmp_path))
    assert status == 2 and "already exists and is not empty" in err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_default_run_folders_are_numbered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.blo").write_text(BASE)
    for _ in range(2):
        assert run_cli("run", "p.blo", *SHORT)[0] == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["p-001", "p-002"]


@pytest.mark.parametrize("argv,message", [
    (("--outer-steps", "0"), "outer_steps must be an integer >= 1, not '0'"),
    (("--seed", "-3"), "seed must be an integer >= 0, not '-3'"),
])
def test_bad_command_lines_exit_2(in_root, argv, message):
    status, _, err = run_cli("run", "programs/hyper_cleaning.blo", "--no-compile", *argv)
    assert status == 2 and message in err and "Traceback" not in err


def test_invalid_programs_and_unbuildable_ones_exit_1(in_root, tmp_path):
    bad = tmp_path / "bad.blo"
    bad.write_text(program(hypergradient="hypergradient = RAD -> PTT"))
    status, _, err = run_cli("run", str(bad))
    assert status == 1 and "PTT cannot come after RAD" in err
    status, _, err = run_cli("run", "programs/embedded.blo", "--no-compile")
    assert status == 1 and "'train' is declared as input()" in err


def test_an_objective_that_fails_while_running_is_blamed_on_its_line(tmp_path, monkeypatch):
    # it passes the check before the first step and fails at a later call
    (tmp_path / "patience.py").write_text("calls = []\n"
                                          "def patience(w):\n"
                                          "    calls.append(1)\n"
                                          "    if len(calls) > 2:\n"
                                          "        raise ValueError('out of patience')\n"
                                          "    return (w * w).mean()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "later.blo"
    path.write_text('import "patience:patience" as patience\n' + BASE.replace(
        "cross_entropy(net(val.x), val.y)", "cross_entropy(net(val.x), val.y) + patience(w)"))
    status, _, err = run_cli("run", str(path), *SHORT, "--out", str(tmp_path / "run"))
    assert status == 1 and "Traceback" not in err
    assert err.startswith(f"{path}:7: error: the upper objective failed while running: ValueError: out of patience")


def test_compile_writes_a_module_and_will_not_clobber_other_files(in_root, tmp_path):
    out = tmp_path / "prog_blo.py"
    assert run_cli("compile", "programs/ridge_regression.blo", "-o", str(out))[0] == 0
    assert "class Problem(rt.Problem):" in out.read_text()
    assert run_cli("compile", "programs/ridge_regression.blo", "-o", str(out))[0] == 0  # its own output: fine
    mine = tmp_path / "notes.py"
    mine.write_text("print('my code')\n")
    status, _, err = run_cli("compile", "programs/ridge_regression.blo", "-o", str(mine))
    assert status == 2 and "not overwriting" in err and mine.read_text() == "print('my code')\n"
    status, out_text, _ = run_cli("compile", "programs/ridge_regression.blo", "--emit", "py")
    differ = [(a, b) for a, b in zip(out_text.splitlines(), out.read_text().splitlines()) if a != b]
    assert status == 0 and [a for a, _ in differ] == ['DATA_FOLDER = "programs"  # data files are named relative to it']
    config = tmp_path / "config.json"
    config.write_text('{"my": "config"}')
    assert run_cli("compile", "programs/ridge_regression.blo", "-o", str(config))[0] == 2
    assert run_cli("compile", "programs/ridge_regression.blo", "--emit", "ir", "-o", str(out))[0] == 2
    assert config.read_text() == '{"my": "config"}'


def test_a_written_module_finds_the_programs_data_files_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    (tmp_path / "elsewhere").mkdir()
    x = torch.randn(40, 3)
    torch.save({"x": x, "y": (x[:, 0] > 0).long()}, tmp_path / "project" / "d.pt")
    (tmp_path / "project" / "p.blo").write_text(BASE.replace(
        "digits(split=[0.5, 0.2, 0.3], label_noise=0.4)", 'pt("d.pt", split=[0.5, 0.2, 0.3])'))
    monkeypatch.chdir(tmp_path)
    assert run_cli("compile", "project/p.blo", "-o", "generated/p_blo.py")[0] == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    module = import_file(tmp_path / "generated" / "p_blo.py")
    assert module.build(compile=False).problem.sizes["train.n"] == 20


def test_python_api(in_root):
    p = blodsl.compile("programs/ridge_regression.blo", compile=False, device="cpu")
    assert set(p.upper) == {"log_lam"} and set(p.lower) == {"w"}
    before = {k: v.clone() for k, v in p.upper.items()}
    g1, g2 = p.hypergradient(), p.hypergradient()
    assert torch.equal(g1["log_lam"], g2["log_lam"]) and g1["log_lam"].abs().sum() > 0
    assert torch.equal(p.upper["log_lam"], before["log_lam"])  # hypergradient() changed nothing
    seen = []
    final = p.run(outer_steps=3, callback=seen.append)
    assert [r["step"] for r in seen] == [1, 2, 3] and final["step"] == 3 and "val_mse" in final
    assert "class Problem(rt.Problem):" in p.source


def test_bindings_supply_data_and_models(in_root):
    x = torch.randn(90, 5)
    y = (x[:, 0] > 0).long()
    net = torch.nn.Linear(5, 2)
    p = blodsl.compile("programs/embedded.blo", compile=False,
                       bindings={"train": (x[:60], y[:60]), "val": {"x": x[60:], "y": y[60:]}, "net": net})
    assert set(p.lower) == {"net.weight", "net.bias"}
    assert p.hypergradient()["log_decay"].shape == ()
    with pytest.raises(blodsl.runtime.BuildError, match="binding 'net' must be an nn.Module"):
        blodsl.compile("programs/embedded.blo", compile=False,
                       bindings={"train": (x, y), "val": (x, y), "net": "not a module"})


def test_compiled_and_eager_agree_end_to_end(in_root):
    """One program through torch.compile (the CI's compiled run): same hypergradients as eager."""
    text = (ROOT / "programs" / "hyper_cleaning.blo").read_text().replace("steps = 20", "steps = 4")
    eager = blodsl.compile(text, compile=False, device="cpu")
    compiled = blodsl.compile(text, compile=True, device="cpu")
    for _ in range(3):
        e, c = eager.step(), compiled.step()
        assert c["upper_objective"] == pytest.approx(e["upper_objective"], rel=1e-5)
    torch.testing.assert_close(compiled.hypergradient()["w"], eager.hypergradient()["w"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(compiled.upper["w"], eager.upper["w"], rtol=1e-4, atol=1e-6)


def test_blodsl_run_as_a_command(in_root, tmp_path):
    """The installed command, in a fresh process: exit status and one JSON object on stdout."""
    done = subprocess.run([sys.executable, "-m", "blodsl", "run", "programs/ridge_regression.blo", *SHORT,
                           "--json", "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) >= {"step", "upper_objective", "val_mse"}


def test_asking_for_a_gpu_on_a_machine_without_one(in_root):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status, _, err = run_cli("run", "programs/ridge_regression.blo", *SHORT, "--device", "cuda")
    assert status == 2 and "device cuda: this machine has no CUDA GPU; use --device cpu" in err


def test_a_users_own_module_and_function(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self, n, k):\n"
        "        super().__init__()\n"
        "        self.inner = torch.nn.Linear(n, k)\n"
        "    def forward(self, x):\n"
        "        return self.inner(x)\n"
        "def reg(w, **kw):\n"
        "    return kw['lambda'] * (w ** 2).mean()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = ('import "mine:Tiny" as Tiny\nimport "mine:reg" as reg\n'
            + BASE.replace("model net = Linear(train.features, train.classes)",
                           "model net = Sequential(Tiny(train.features, 16), ReLU(), Linear(16, train.classes))")
                  .replace('reduction="none"))', 'reduction="none")) + reg(w, lambda=0.1)'))
    pipeline = blodsl.compile(text, compile=False)
    assert "net.0.inner.weight" in pipeline.lower
    assert pipeline.hypergradient()["w"].abs().sum() > 0


def test_run_files_hold_valid_json_when_a_run_diverges():
    from blodsl.runs.folder import json_safe

    # valid JSON even when a run diverged: NaN and infinity are written as null
    written = json.dumps(json_safe({"loss": float("nan"), "weights": [1.0, float("inf")], "step": 3}))
    assert json.loads(written) == {"loss": None, "weights": [1.0, None], "step": 3}
