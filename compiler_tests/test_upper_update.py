"""The upper level's update: a torch.optim.lr_scheduler stepped once per outer step, the
hypergradient clipped to a global norm, their checks, their `--set` keys, and their state
in state_dict()."""

import inspect
import io
import json
import math

import pytest
import torch
from torch.optim import lr_scheduler

import blodsl
from blodsl.catalogue.builtins import NOT_SCHEDULERS, SCHEDULERS
from blodsl.catalogue.params import REQUIRED
from blodsl.runtime import BuildError
from conftest import ROOT, run_cli
from helpers import BASE, check_text, errors_of

# BASE with two inner steps (fast), a second upper variable (so clipping has a global norm to take)
TWO_VARIABLES = BASE.replace("steps = 20", "steps = 2").replace(
    "    var w = zeros(train.n)\n", "    var w = zeros(train.n)\n    var t = 1.0\n").replace(
    "objective = cross_entropy(net(val.x), val.y)", "objective = cross_entropy(net(val.x) * t, val.y)")


def upper(*lines: str, optimizer: str = "Adam(lr=0.1)") -> str:
    """TWO_VARIABLES with the upper optimiser and `lines` added to the upper block."""
    added = "".join(f"    {line}\n" for line in lines)
    return TWO_VARIABLES.replace("    optimizer = Adam(lr=0.1)\n", f"    optimizer = {optimizer}\n{added}")


def built(text: str, **settings):
    return blodsl.compile(text, compile=False, dtype="float64", settings=settings or None)


# --- the schedule ----------------------------------------------------------------------------

SCHEDULES = [
    ("StepLR(step_size=2, gamma=0.5)", lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    ("MultiStepLR(milestones=[2, 5], gamma=0.3)", lambda o: lr_scheduler.MultiStepLR(o, [2, 5], gamma=0.3)),
    ("ExponentialLR(gamma=0.8)", lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8)),
    ("CosineAnnealingLR(T_max=4, eta_min=0.01)", lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=0.01)),
    ("CosineAnnealingWarmRestarts(T_0=2, T_mult=2)", lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 2, 2)),
    ("LinearLR(start_factor=0.25, total_iters=3)", lambda o: lr_scheduler.LinearLR(o, 0.25, total_iters=3)),
    ("ConstantLR(factor=0.5, total_iters=2)", lambda o: lr_scheduler.ConstantLR(o, 0.5, total_iters=2)),
    ("PolynomialLR(total_iters=4, power=2)", lambda o: lr_scheduler.PolynomialLR(o, total_iters=4, power=2.0)),
    # total_steps follows the run's outer steps (100)
    ("OneCycleLR(max_lr=0.5)", lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=100)),
    ("CyclicLR(base_lr=0.01, max_lr=0.1, step_size_up=2)",
     lambda o: lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=2)),
    ("ReduceLROnPlateau(factor=0.5, patience=0, threshold=0.2)",
     lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0, threshold=0.2)),
]


@pytest.mark.parametrize("written,torch_scheduler", SCHEDULES, ids=[w.split("(")[0] for w, _ in SCHEDULES])
def test_the_learning_rates_are_torchs_own_schedule(written, torch_scheduler):
    pipeline = built(upper(f"scheduler = {written}"))
    records = [pipeline.step() for _ in range(6)]
    # torch's scheduler on an optimiser of its own, stepped once per outer step the same way
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([param], lr=0.1)
    scheduler = torch_scheduler(optimizer)
    expected = []
    for record in records:
        expected.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.zeros(1)
        optimizer.step()
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(record["upper_objective"])   # on the outer step's upper objective
        else:
            scheduler.step()
    assert [r["upper_lr"] for r in records] == expected
    assert len(set(expected)) > 1   # the schedule did move


def test_the_upper_step_takes_the_scheduled_learning_rate():
    pipeline = built(upper("scheduler = ExponentialLR(gamma=0.5)", optimizer="SGD(lr=0.4)"))
    for k in range(3):
        g, before = pipeline.hypergradient(), {name: t.clone() for name, t in pipeline.upper.items()}
        record = pipeline.step()
        assert record["upper_lr"] == 0.4 * 0.5 ** k
        for name in ("w", "t"):
            torch.testing.assert_close(pipeline.upper[name], before[name] - 0.4 * 0.5 ** k * g[name],
                                       rtol=1e-12, atol=1e-15)


def test_a_methods_factor_multiplies_the_scheduled_rate():
    """DM scales the upper learning rate by (k+1)^-tau (tau = 0.01 by default) on top of the schedule."""
    text = upper("scheduler = ExponentialLR(gamma=0.5)").replace("steps = 2", "steps = 1").replace(
        "hypergradient = RAD", "hypergradient = DM -> RAD")
    pipeline = built(text)
    for k in range(3):
        assert pipeline.step()["upper_lr"] == pytest.approx(0.1 * 0.5 ** k * (k + 1) ** -0.01, rel=1e-12)


def test_without_a_scheduler_the_record_has_no_learning_rate():
    assert "upper_lr" not in built(upper()).step()


# --- clipping ----------------------------------------------------------------------------------

def test_clipping_scales_the_whole_hypergradient_to_the_norm():
    g = built(upper(optimizer="SGD(lr=0.5)")).hypergradient()
    norm = math.sqrt(sum((t * t).sum().item() for t in g.values()))   # over w and t together
    clip = norm / 4
    pipeline = built(upper(f"clip = {clip!r}", optimizer="SGD(lr=0.5)"))
    before = {name: t.clone() for name, t in pipeline.upper.items()}
    record = pipeline.step()
    for name in ("w", "t"):
        torch.testing.assert_close(pipeline.upper[name], before[name] - 0.5 * g[name] * (clip / norm),
                                   rtol=1e-12, atol=1e-15)
    assert record["hypergradient_norm"] == pytest.approx(norm, rel=1e-12)   # reported unclipped


def test_clipping_above_the_norm_changes_nothing():
    g = built(upper(optimizer="SGD(lr=0.5)")).hypergradient()
    norm = math.sqrt(sum((t * t).sum().item() for t in g.values()))
    plain = built(upper(optimizer="SGD(lr=0.5)"))
    clipped = built(upper(f"clip = {4 * norm!r}", optimizer="SGD(lr=0.5)"))
    for _ in range(2):
        assert plain.step() == clipped.step()
    assert all(torch.equal(plain.upper[k], clipped.upper[k]) for k in plain.upper)


# --- saving and restoring ------------------------------------------------------------------------

@pytest.mark.parametrize("written", ["CosineAnnealingWarmRestarts(T_0=2)",
                                     "ReduceLROnPlateau(factor=0.5, patience=0, threshold=0.2)",
                                     "OneCycleLR(max_lr=0.5)"])
def test_a_restored_pipeline_continues_its_schedule_exactly(written):
    text = upper(f"scheduler = {written}", "clip = 0.001")
    a = built(text)
    for _ in range(3):
        a.step()
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)   # as `blodsl run` keeps it, and read back as torch.load's default does
    saved.seek(0)
    b = built(text)
    b.load_state_dict(torch.load(saved, weights_only=True))
    for _ in range(3):
        assert a.step() == b.step()   # the objectives, the norm and the learning rate
    assert all(torch.equal(a.upper[k], b.upper[k]) for k in a.upper)
    assert all(torch.equal(a.lower[k], b.lower[k]) for k in a.lower)


def test_a_state_is_restored_only_under_its_own_schedule():
    scheduled = built(upper("scheduler = CosineAnnealingLR(T_max=4)"))
    scheduled.step()
    with pytest.raises(BuildError, match="scheduled by CosineAnnealingLR, this program's by nothing"):
        built(upper()).load_state_dict(scheduled.state_dict())
    with pytest.raises(BuildError, match="scheduled by CosineAnnealingLR, this program's by StepLR"):
        built(upper("scheduler = StepLR(step_size=2)")).load_state_dict(scheduled.state_dict())


def test_a_schedule_run_past_its_end_is_a_located_run_error():
    pipeline = built(upper("scheduler = OneCycleLR(max_lr=0.5)"), **{"run.outer_steps": 2})
    pipeline.run(2)
    with pytest.raises(blodsl.runtime.operators.RunError, match="OneCycleLR cannot go on after outer step 3") as e:
        pipeline.step()
    assert e.value.where == "scheduler"


# --- the checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lines,message", [
    (("scheduler = CyclicLR(base_lr=0.01, max_lr=0.1)",),
     "CyclicLR cycles the upper optimiser's momentum, and Adagrad has none"),
    (("scheduler = OneCycleLR(max_lr=0.1, total_steps=50, cycle_momentum=False)",),
     "OneCycleLR's schedule ends after total_steps=50 outer steps, before the run's 100"),
    (("scheduler = ReduceLROnPlateau(factor=1)",), "ReduceLROnPlateau's factor must be a number in (0, 1), not 1"),
    (("scheduler = SequentialLR(milestones=[5])",),
     "SequentialLR cannot be the upper scheduler: it chains scheduler objects, which a .blo file cannot build"),
    (("scheduler = StepLR",), "StepLR needs the keyword argument 'step_size'"),
    (("scheduler = CosineAnnealingLR(T_max=1.5)",), "CosineAnnealingLR's T_max must be an integer >= 1, not 1.5"),
    (("scheduler = CosineAnnealingLR(T_mx=5)",), "CosineAnnealingLR has no keyword argument 'T_mx'"),  # and only that
    (("clip = -1.0",), "clip must be a number > 0, not -1.0"),
    (("clip = 1", "clip = 2"), "'clip' is set twice"),
])
def test_scheduler_and_clip_errors(lines, message):
    assert errors_of(upper(*lines, optimizer="Adagrad(lr=0.1)")) == [message]


def test_schedule_and_clip_belong_to_the_upper_level():
    text = TWO_VARIABLES.replace("    steps = 2\n", "    steps = 2\n    scheduler = StepLR(step_size=2)\n")
    assert errors_of(text) == ["unknown setting 'scheduler' in the lower block; 'scheduler' belongs in the upper block"]


def test_the_scheduler_table_is_torchs():
    """Every scheduler torch has is a row or rejected with a reason; each row's arguments are the
    class's own, and those torch needs are required."""
    public = {name for name, cls in vars(lr_scheduler).items() if inspect.isclass(cls) and not name.startswith("_")
              and issubclass(cls, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau))}
    assert public - {"LRScheduler"} == set(SCHEDULERS) | set(NOT_SCHEDULERS)
    for name, sig in SCHEDULERS.items():
        params = inspect.signature(getattr(lr_scheduler, name)).parameters
        assert set(sig.keywords) <= set(params) - {"optimizer", "last_epoch"}, name
        needed = {p for p, row in params.items() if row.default is inspect.Parameter.empty} - {"optimizer"}
        assert needed <= {k for k, row in sig.keywords.items() if row.default is REQUIRED}, name


# --- --set and the summary ------------------------------------------------------------------------

def test_set_changes_the_schedule_and_the_clip_of_a_run(tmp_path):
    path = tmp_path / "scheduled.blo"
    path.write_text(upper("scheduler = CosineAnnealingLR(T_max=50)", "clip = 1.0"))
    out = tmp_path / "run"
    status, _, err = run_cli("run", str(path), "--no-compile", "--no-baseline", "--outer-steps", "3",
                             "--set", "upper.scheduler.T_max=2", "--set", "upper.clip=0.001", "--out", str(out))
    assert status == 0, err
    lrs = [json.loads(line)["upper_lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.1, 0.05, 0.0], abs=1e-12)   # half a cosine over 2 steps
    code = (out / "program.py").read_text()
    assert 'scheduler=("CosineAnnealingLR", {"T_max": 2}),' in code and "clip=0.001," in code


@pytest.mark.parametrize("setting,message", [
    ("upper.scheduler.T_max=0", ":9:41 (--set upper.scheduler.T_max=0): error: CosineAnnealingLR's T_max must be "
                                "an integer >= 1, not 0"),
    ("upper.scheduler.T_mx=3", "CosineAnnealingLR has no keyword argument 'T_mx'"),
    ("upper.clip=0", ":10:12 (--set upper.clip=0): error: clip must be a number > 0, not 0"),
    ("upper.scheduler=LambdaLR(lr_lambda=2)", "LambdaLR cannot be the upper scheduler"),
])
def test_set_values_are_checked(tmp_path, setting, message):
    path = tmp_path / "scheduled.blo"
    path.write_text(upper("scheduler = CosineAnnealingLR(T_max=50)", "clip = 1.0"))
    status, _, err = run_cli("check", str(path), "--set", setting)
    assert status == 2 and message in err and "Traceback" not in err


def test_set_adds_a_schedule_and_a_clip_the_summary_shows(in_root):
    status, out, err = run_cli("check", "programs/hyper_cleaning.blo", "--set", "upper.scheduler=StepLR(step_size=10)",
                               "--set", "upper.clip=0.5")
    assert status == 0, err
    assert "            Adam(lr=0.1), scheduled by StepLR(step_size=10), hypergradient clipped to norm 0.5\n" in out
    status, _, err = run_cli("check", "programs/hyper_cleaning.blo", "--set", "upper.scheduler.T_max=4")
    assert status == 2 and "the upper level has no scheduler to set an argument of" in err


def test_the_readmes_upper_block_checks():
    readme = (ROOT / "README.md").read_text()
    snippet = next(block for block in readme.split("```") if "scheduler = CosineAnnealingLR" in block)
    block = snippet[snippet.index("upper {"):snippet.index("}") + 1]
    text = BASE[:BASE.index("upper {")] + block + BASE[BASE.index("}", BASE.index("upper {")) + 1:]
    checked = check_text(text).program.upper
    assert (checked.scheduler.name, checked.scheduler.args) == ("CosineAnnealingLR", {"T_max": 100})
    assert checked.clip.norm == 1.0
