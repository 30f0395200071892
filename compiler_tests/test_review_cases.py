"""Programs that once broke the engine: user modules, rebound metrics, resumed runs, odd names."""

import json
import math

import pytest
import torch

import blodsl
from blodsl.lowering.codegen import generate
from conftest import run_cli
from helpers import BASE, META, program

SHORT = ("--outer-steps", "2", "--set", "lower.steps=3", "--no-compile", "--no-baseline")


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


def test_a_rebound_metric_equals_the_same_metric_written_directly():
    text = program(after_objective="") .replace(
        "    metric test_accuracy = accuracy(net(test.x), test.y)",
        "    metric direct = cross_entropy(net(test.x), test.y)\n"
        "    metric rebound = cross_entropy(net(val.x), val.y) with val = test\n"
        "    metric direct_mean = sum(cross_entropy(net(test.x), test.y, reduction=\"none\")) / test.n\n"
        "    metric rebound_mean = sum(cross_entropy(net(val.x), val.y, reduction=\"none\")) / val.n with val = test")
    pipeline = blodsl.compile(text.replace("steps = 20", "steps = 3"), compile=False)
    pipeline.run(outer_steps=2)
    m = pipeline.evaluate()
    assert m["rebound"] == pytest.approx(m["direct"], rel=1e-6)
    assert m["rebound_mean"] == pytest.approx(m["direct_mean"], rel=1e-5)   # sizes follow the swap too


def maml(extra_metric: str = "", pipeline: str = "IAD") -> str:
    text = META.replace("tasks = sinusoid(tasks=4, shots=5, queries=5)",
                        "tasks = sinusoid(tasks=4, shots=5, queries=5)\n"
                        "    test_tasks = sinusoid(tasks=6, shots=5, queries=7, seed=1)")
    return text.replace("hypergradient = IAD", f"hypergradient = {pipeline}") + (
        "run {\n"
        "    baseline = initial\n"
        "    metric meta_test = mse(learner(tasks.query_x), tasks.query_y) with tasks = test_tasks\n"
        f"{extra_metric}"
        "}\n")


def test_meta_learning_metrics_with_and_without_rebinding():
    pipeline = blodsl.compile(maml("    metric train_tasks = mse(learner(tasks.query_x), tasks.query_y)\n"),
                              compile=False)
    m = pipeline.evaluate()
    assert math.isfinite(m["meta_test"]) and math.isfinite(m["train_tasks"]) and m["meta_test"] != m["train_tasks"]


def test_the_baseline_of_a_meta_learner_adapts_from_the_initial_meta_model():
    pipeline = blodsl.compile(maml(), compile=False)
    baseline = pipeline.baseline()
    first = pipeline.step()   # the first step adapts from the same initial meta-model, on the same batch
    assert baseline["upper_objective"] == pytest.approx(first["upper_objective"], rel=1e-5)


def test_a_meta_learning_run_resumes_from_its_state_dict():
    a = blodsl.compile(maml(), compile=False)
    a.step()
    b = blodsl.compile(maml(), compile=False)
    b.load_state_dict(a.state_dict())
    assert a.step() == b.step()
    assert all(torch.equal(a.upper[k], b.upper[k]) for k in a.upper)


def test_reinit_starts_are_reproducible():
    text = program(after_steps="start = reinit").replace("steps = 20", "steps = 3")
    a = blodsl.compile(text, compile=False)
    assert torch.equal(a.hypergradient()["w"], a.hypergradient()["w"])   # changes nothing
    first = a.hypergradient()["w"]
    b = blodsl.compile(text, compile=False)
    b.step()
    a.step()
    assert torch.equal(a.upper["w"], b.upper["w"]) and first.abs().sum() > 0
    saved = a.state_dict()
    after = [a.step() for _ in range(2)]
    c = blodsl.compile(text, compile=False)
    c.load_state_dict(saved)
    assert [c.step() for _ in range(2)] == after


def test_generated_names_and_comparisons():
    text = (BASE.replace("train, val, test", "data, val, test").replace("train.", "data.")
            .replace("var w = zeros(data.n)", "var w = zeros(data.n)\n    var data_ = 0.5")
            .replace("sigmoid(w) *", "sigmoid(w + data_) *")
            .replace("metric test_accuracy = accuracy(net(test.x), test.y)",
                     "metric agree = precision((sum(net(test.x), dim=1) > 0) == (test.y > 4), test.y >= 0)"))
    code = generate(blodsl.api.checked_program(text))
    assert '(fn.sum(net(test["x"]), dim=1) > 0) == (test["y"] > 4)' in code
    pipeline = blodsl.compile(text, compile=False)
    assert set(pipeline.hypergradient()) == {"w", "data_"}
    assert 0 <= pipeline.evaluate()["agree"] <= 1


def test_bad_devices_and_diverged_runs(in_root, tmp_path):
    status, _, err = run_cli("run", "programs/hyper_cleaning.blo", "--device", "bogus")
    assert status == 2 and "unknown device 'bogus'" in err
    from blodsl.runner import json_safe

    # valid JSON even when a run diverged: NaN and infinity are written as null
    written = json.dumps(json_safe({"loss": float("nan"), "weights": [1.0, float("inf")], "step": 3}))
    assert json.loads(written) == {"loss": None, "weights": [1.0, None], "step": 3}


def test_labels_of_minus_one_and_one_and_misaligned_files(tmp_path):
    from blodsl.runtime import data

    x = torch.randn(10, 2)
    table, = data.split_table(x, torch.tensor([-1, 1] * 5), [1.0], 0)
    assert table.sizes["classes"] == 2 and set(table.fields["y"].tolist()) == {0, 1}
    with pytest.raises(data.DataError, match="10 rows but the targets 8"):
        data.split_table(x, torch.zeros(8), [1.0], 0)
