"""The generated module of every example is pinned, imports, and trains."""

import importlib.util
import math
import os

import pytest
import torch

import blodsl
from blodsl.api import checked_program
from blodsl.frontend import check_file
from blodsl.lowering.codegen import generate
from conftest import GOLDEN, PROGRAMS, ROOT
from helpers import BASE

UPDATE = os.environ.get("BLODSL_UPDATE_GOLDEN") == "1"


def embedded_bindings():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    return {"train": (x[:80], y[:80]), "val": {"x": x[80:], "y": y[80:]}, "net": net}


def import_file(path):
    spec = importlib.util.spec_from_file_location(f"golden_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_generated_module_is_pinned(path, in_root):
    code = generate(check_file(path.relative_to(ROOT)).program)
    golden = GOLDEN / f"{path.stem}.py"
    if UPDATE:
        golden.write_text(code)
    assert code == golden.read_text()
    compile(code, str(golden), "exec")  # it is valid Python


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_generated_module_trains(path, in_root):
    """Imported from its file, build() gives a pipeline whose steps move the upper level (a
    first-order method such as VFO may hold it still for its first steps)."""
    module = import_file(GOLDEN / f"{path.stem}.py")
    bindings = embedded_bindings() if path.stem == "embedded" else None
    pipeline = module.build(bindings=bindings, compile=False, device="cpu")
    assert pipeline.source == (GOLDEN / f"{path.stem}.py").read_text()
    before = {k: v.clone() for k, v in pipeline.upper.items()}
    for _ in range(5):
        record = pipeline.step()
        assert math.isfinite(record["upper_objective"])
        if record["hypergradient_norm"] > 0 and pipeline.steps_done >= 2:
            break
    assert record["hypergradient_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in pipeline.upper.items())
    for value in pipeline.evaluate().values():
        assert all(math.isfinite(v) for v in (value if isinstance(value, list) else [value]))


def test_generated_code_reads_like_the_program(in_root):
    code = (GOLDEN / "hyper_cleaning.py").read_text()
    assert "import torch\n\nfrom blodsl import runtime as rt\n" in code
    imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import torch", "from blodsl import runtime as rt", "from blodsl.runtime import functions as fn"]
    # every statement of the program is traceable to its line
    assert "fn.mean(fn.sigmoid(w) * fn.cross_entropy(net(train[\"x\"]), train[\"y\"], reduction=\"none\"))" in code
    assert "# hyper_cleaning.blo:27  mean(sigmoid(w) * cross_entropy(" in code
    assert "rt.inner.SGD(lr=0.5, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),  # hyper_cleaning.blo:28" in code


def test_generated_names_and_comparisons():
    text = (BASE.replace("train, val, test", "data, val, test").replace("train.", "data.")
            .replace("var w = zeros(data.n)", "var w = zeros(data.n)\n    var data_ = 0.5")
            .replace("sigmoid(w) *", "sigmoid(w + data_) *")
            .replace("metric test_accuracy = accuracy(net(test.x), test.y)",
                     "metric agree = precision((sum(net(test.x), dim=1) > 0) == (test.y > 4), test.y >= 0)"))
    code = generate(checked_program(text))
    assert '(fn.sum(net(test["x"]), dim=1) > 0) == (test["y"] > 4)' in code
    pipeline = blodsl.compile(text, compile=False)
    assert set(pipeline.hypergradient()) == {"w", "data_"}
    assert 0 <= pipeline.evaluate()["agree"] <= 1
