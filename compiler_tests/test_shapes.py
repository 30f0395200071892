"""The shape check: every objective and metric evaluated once before the first step, a size
clash located at its expression and at the declarations that made the sizes."""

import pytest
import torch

import blodsl
from conftest import PROGRAMS, ROOT, run_cli
from helpers import BASE, errors_of, maml, program
from test_generated import embedded_bindings

RUN = ("--no-compile", "--no-baseline", "--outer-steps", "2")


def run_in(tmp_path, monkeypatch, text: str) -> tuple[int, str]:
    """(exit status, stderr) of `blodsl run t.blo`, the program written to t.blo in tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.blo").write_text(text)
    status, out, err = run_cli("run", "t.blo", *RUN, "--out", "run")
    assert out == "" and "Traceback" not in err
    return status, err


REGRESSION = """data {
    train, val = regression(n=100, features=8, split=[0.5, 0.5])
}
upper {
    var log_lam = zeros(train.features)
    objective = mean((val.x @ w - val.y) ** 2)
    optimizer = Adam(lr=0.05)
}
lower {
    var w = zeros(5)
    objective = mean((train.x @ w - train.y) ** 2) + sum(exp(log_lam) * w ** 2)
    optimizer = SGD(lr=0.1)
    steps = 5
}
hypergradient = CG
"""


# Each program as `blodsl run --no-compile` reports it: every objective and metric that cannot be
# computed, at the expression and at the declarations that made the clashing sizes.
CLASHES = {
    "too_few_outputs": (BASE.replace("Linear(train.features, train.classes)", "Linear(train.features, 5)"), """\
t.blo:6:17: error: cross_entropy(net(val.x), val.y): net gives 5 scores per sample but val.y holds class labels up to 9
  6 |     objective = cross_entropy(net(val.x), val.y)
    |                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
t.blo:10:5: note: net = Linear(train.features, 5) declares 5 outputs
 10 |     model net = Linear(train.features, 5)
    |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  fix: declare net = Linear(train.features, train.classes)
t.blo:11:35: error: cross_entropy(...): net gives 5 scores per sample but train.y holds class labels up to 9
 11 |     objective = mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none"))
    |                                   ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
t.blo:10:5: note: net = Linear(train.features, 5) declares 5 outputs
 10 |     model net = Linear(train.features, 5)
    |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  fix: declare net = Linear(train.features, train.classes)
t.blo: 2 errors
"""),
    "input_width": (BASE.replace("Linear(train.features, train.classes)", "Linear(10, train.classes)"), """\
t.blo:6:31: error: net(val.x): net takes 10 inputs but val.x has 64 columns
  6 |     objective = cross_entropy(net(val.x), val.y)
    |                               ^^^^^^^^^^
t.blo:10:5: note: net = Linear(10, train.classes) declares 10 inputs
 10 |     model net = Linear(10, train.classes)
    |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
t.blo:2:12: note: val holds 64 features (val.features)
  2 |     train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)
    |            ^^^
  fix: declare net = Linear(train.features, train.classes)
t.blo:11:49: error: net(train.x): net takes 10 inputs but train.x has 64 columns
 11 |     objective = mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none"))
    |                                                 ^^^^^^^^^^^^
t.blo:10:5: note: net = Linear(10, train.classes) declares 10 inputs
 10 |     model net = Linear(10, train.classes)
    |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
t.blo:2:5: note: train holds 64 features (train.features)
  2 |     train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)
    |     ^^^^^
  fix: declare net = Linear(train.features, train.classes)
t.blo:17:37: error: net(test.x): net takes 10 inputs but test.x has 64 columns
 17 |     metric test_accuracy = accuracy(net(test.x), test.y)
    |                                     ^^^^^^^^^^^
t.blo:10:5: note: net = Linear(10, train.classes) declares 10 inputs
 10 |     model net = Linear(10, train.classes)
    |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
t.blo:2:17: note: test holds 64 features (test.features)
  2 |     train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)
    |                 ^^^^
  fix: declare net = Linear(train.features, train.classes)
t.blo: 3 errors
"""),
    "matmul": (REGRESSION, """\
t.blo:6:23: error: val.x @ w: val.x has 8 columns but w has 5 entries
  6 |     objective = mean((val.x @ w - val.y) ** 2)
    |                       ^^^^^^^^^
t.blo:2:12: note: val holds 8 features (val.features)
  2 |     train, val = regression(n=100, features=8, split=[0.5, 0.5])
    |            ^^^
t.blo:10:5: note: w = zeros(5) declares 5 entries
 10 |     var w = zeros(5)
    |     ^^^^^^^^^^^^^^^^
  fix: declare w = zeros(val.features)
t.blo:11:23: error: train.x @ w: train.x has 8 columns but w has 5 entries
 11 |     objective = mean((train.x @ w - train.y) ** 2) + sum(exp(log_lam) * w ** 2)
    |                       ^^^^^^^^^^^
t.blo:2:5: note: train holds 8 features (train.features)
  2 |     train, val = regression(n=100, features=8, split=[0.5, 0.5])
    |     ^^^^^
t.blo:10:5: note: w = zeros(5) declares 5 entries
 10 |     var w = zeros(5)
    |     ^^^^^^^^^^^^^^^^
  fix: declare w = zeros(train.features)
t.blo: 2 errors
"""),
    "per_sample_weight": (BASE.replace("var w = zeros(train.n)", "var w = zeros(val.n)"), """\
t.blo:11:22: error: sigmoid(w) * cross_entropy(...): sigmoid(w) has 359 entries but cross_entropy(...) has 898 entries
 11 |     objective = mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none"))
    |                      ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
t.blo:5:5: note: w = zeros(val.n) declares 359 entries
  5 |     var w = zeros(val.n)
    |     ^^^^^^^^^^^^^^^^^^^^
t.blo:2:5: note: train holds 898 samples (train.n)
  2 |     train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)
    |     ^^^^^
  fix: declare w = zeros(train.n)
t.blo: 1 error
"""),
    "metric_lengths": (BASE.replace("accuracy(net(test.x), test.y)", "accuracy(net(test.x), val.y)"), """\
t.blo:17:28: error: accuracy(net(test.x), val.y): net(test.x) has 539 rows but val.y has 359 entries
 17 |     metric test_accuracy = accuracy(net(test.x), val.y)
    |                            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^
t.blo:2:17: note: test holds 539 samples (test.n)
  2 |     train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)
    |                 ^^^^
t.blo:2:12: note: val holds 359 samples (val.n)
  2 |     train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)
    |            ^^^
  fix: use tensors of one dataset on both sides
t.blo: 1 error
"""),
    "not_one_number": (program(objective='objective = sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none")'), """\
t.blo:11:17: error: the lower objective must be a single number, but it gives a tensor of shape [898]
 11 |     objective = sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none")
    |                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  fix: reduce it with mean(...) or sum(...)
t.blo: 1 error
"""),
    "torch_error": (BASE.replace("cross_entropy(net(val.x), val.y)", "cross_entropy(net(val.x), val.y) + mean(val.x, dim=5)"), """\
t.blo:6:52: error: mean(val.x, dim=5) failed: Dimension out of range (expected to be in range of [-2, 1], but got 5)
 6 |     objective = cross_entropy(net(val.x), val.y) + mean(val.x, dim=5)
   |                                                    ^^^^^^^^^^^^^^^^^^
t.blo: 1 error
"""),
}


@pytest.mark.parametrize("name", CLASHES)
def test_a_clash_is_located_before_the_first_step(name, tmp_path, monkeypatch):
    text, expected = CLASHES[name]
    assert run_in(tmp_path, monkeypatch, text) == (1, expected)
    assert not (tmp_path / "run").exists()   # no step was taken: no run folder, no metrics.jsonl


def test_a_regression_model_with_one_output_too_many(tmp_path, monkeypatch):
    text = REGRESSION.replace("var w = zeros(5)", "model w = Linear(train.features, 2)").replace("val.x @ w", "w(val.x)")
    text = text.replace("mean((train.x @ w - train.y) ** 2) + sum(exp(log_lam) * w ** 2)",
                        "mse(w(train.x), train.y) + sum(exp(log_lam) * w.weight ** 2)")
    status, err = run_in(tmp_path, monkeypatch, text)
    assert status == 1
    assert "t.blo:11:17: error: mse(w(train.x), train.y): w(train.x) has 2 values per sample but train.y has 1\n" in err
    assert "t.blo:10:5: note: w = Linear(train.features, 2) declares 2 outputs\n" in err
    assert "  fix: declare w = Linear(train.features, 1)\n" in err


def test_the_api_raises_the_located_messages(in_root):
    text = BASE.replace("var w = zeros(train.n)", "var w = zeros(val.n)")
    with pytest.raises(blodsl.BloError) as raised:
        blodsl.compile(text, compile=False, device="cpu")
    (problem,) = raised.value.diagnostics
    assert (problem.span.line, problem.span.col) == (11, 22)
    assert [note for _, note in problem.notes] == ["w = zeros(val.n) declares 359 entries",
                                                   "train holds 898 samples (train.n)"]
    assert "<program>:5:5: note: w = zeros(val.n) declares 359 entries" in str(raised.value)


def test_task_batches_are_checked_one_task_at_a_time():
    extra = "    metric query_fit = mean((learner(tasks.query_x) - tasks.query_y) ** 2)\n"
    pipeline = blodsl.compile(maml(extra), compile=False, device="cpu")
    assert pipeline.step()["step"] == 1
    wrong = maml().replace("mse(learner(tasks.query_x), tasks.query_y) with", "mse(learner(tasks.query_x), "
                                                                            "tasks.support_y) with")
    with pytest.raises(blodsl.BloError, match=r"mse\(...\): learner\(tasks.query_x\) has 7 rows but "
                                              r"tasks.support_y has 5 rows"):
        blodsl.compile(wrong, compile=False, device="cpu")


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_every_example_passes(path, in_root):
    bindings = embedded_bindings() if path.stem == "embedded" else None
    pipeline = blodsl.compile(str(path.relative_to(ROOT)), bindings=bindings, compile=False, device="cpu")
    assert pipeline.steps_done == 0


def test_a_user_module_of_the_wrong_width_gets_torchs_message(tmp_path, monkeypatch):
    (tmp_path / "widths.py").write_text("import torch\n"
                                        "def Wide(n):\n"
                                        "    return torch.nn.Linear(n, 10)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = 'import "widths:Wide" as Wide\n' + BASE.replace("Linear(train.features, train.classes)", "Wide(3)")
    status, err = run_in(tmp_path, monkeypatch, text)
    assert status == 1
    # the program does not declare the module's widths: torch's message, at the application
    assert err.startswith("t.blo:7:31: error: net(val.x) failed: mat1 and mat2 shapes cannot be multiplied "
                          "(359x64 and 3x10)\n")


def test_a_metric_that_trains_the_lower_level_again_checks_it_on_the_swapped_data(tmp_path, monkeypatch):
    """`with train = test` re-trains the lower level on test: its objective's clash (sample weights
    sized by train) is found before the first step, said under the metric, with no misleading fix."""
    text = program(steps="steps = 2").replace("metric test_accuracy = accuracy(net(test.x), test.y)",
                                               "metric t = accuracy(net(val.x), val.y) with train = test")
    status, err = run_in(tmp_path, monkeypatch, text)
    assert status == 1
    assert "error: sigmoid(w) * cross_entropy(...): sigmoid(w) has 898 entries but cross_entropy(...) has 539" in err
    assert "note: under metric t's `with train = test`, which trains the lower level again on the swapped data" in err
    assert "fix:" not in err


# --- images: reshape, flatten and the layers of a CNN ------------------------------------------

IMAGES = BASE.replace("label_noise=0.4)", "label_noise=0.4, images=True)")
CNN = "Sequential(Conv2d(train.channels, 4, 3), ReLU(), MaxPool2d(2), Flatten(), Linear(36, train.classes))"


def test_reshape_and_flatten_run_and_keep_the_samples(in_root):
    text = (IMAGES.replace("net(val.x)", "net(flatten(val.x))")
            .replace("net(train.x)", "net(reshape(train.x, [-1, train.features]))")
            .replace("net(test.x)", "net(flatten(reshape(flatten(test.x), [-1, train.channels, 8, 8]), start_dim=1))"))
    pipeline = blodsl.compile(text, compile=False, device="cpu")
    assert torch.isfinite(pipeline.hypergradient()["w"]).all()
    assert 0 < pipeline.evaluate()["test_accuracy"] <= 1


def test_a_shape_the_values_do_not_fill(tmp_path, monkeypatch):
    text = BASE.replace("net(val.x)", "net(flatten(reshape(val.x, [-1, 1, 8, 9])))")
    assert run_in(tmp_path, monkeypatch, text) == (1, """\
t.blo:6:43: error: reshape(val.x, [-1, 1, 8, 9]): val.x holds 64 values per sample but 1 x 8 x 9 is 72
 6 |     objective = cross_entropy(net(flatten(reshape(val.x, [-1, 1, 8, 9]))), val.y)
   |                                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
t.blo:2:12: note: val holds 64 features (val.features)
 2 |     train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)
   |            ^^^
t.blo: 1 error
""")
    text = BASE.replace("net(val.x)", "net(flatten(reshape(val.x, [train.n, 1, 8, 8])))")
    status, err = run_in(tmp_path, monkeypatch, text)
    assert err.startswith("t.blo:6:43: error: reshape(val.x, [train.n, 1, 8, 8]): val.x holds 22976 values "
                          "(359 x 64), but 898 x 1 x 8 x 8 is 57472\n")
    assert "note: train holds 898 samples (train.n)\n" in err
    assert err.endswith("  fix: write -1 for the samples: reshape(val.x, [-1, 1, 8, 8])\nt.blo: 1 error\n")


def test_images_into_a_linear_model_are_flattened_by_the_fix(tmp_path, monkeypatch):
    status, err = run_in(tmp_path, monkeypatch, IMAGES)
    assert (status, err.count("error:")) == (1, 3)
    assert err.startswith("""\
t.blo:6:31: error: net(val.x): net takes 64 inputs but val.x has shape [359, 1, 8, 8]
  6 |     objective = cross_entropy(net(val.x), val.y)
    |                               ^^^^^^^^^^
t.blo:10:5: note: net = Linear(train.features, train.classes) declares 64 inputs
 10 |     model net = Linear(train.features, train.classes)
    |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  fix: flatten the images first: net(flatten(val.x))
""")


def test_a_convolution_on_flat_data_says_to_load_images(tmp_path, monkeypatch):
    status, err = run_in(tmp_path, monkeypatch, BASE.replace("Linear(train.features, train.classes)",
                                                             CNN.replace("train.channels", "1")))
    assert status == 1
    assert err.startswith("t.blo:6:31: error: net(val.x): net takes images (N x C x H x W) but val.x has shape "
                          "[359, 64]\n")
    assert "t.blo:2:12: note: val holds 64 features (val.features)\n" in err
    assert "  fix: load images: digits(..., images=True)\n" in err
    # and train.channels, where digits gives no images, is the checker's
    assert errors_of(BASE.replace("Linear(train.features, train.classes)", CNN)) == [
        "dataset 'train' has no size 'channels'"]


@pytest.mark.parametrize("layers,message,fix", [
    (CNN.replace("Linear(36", "Linear(128"), "Linear(128, train.classes), layer 5 of net, takes 128 inputs but the "
     "layers before it give 36", "declare net = " + CNN),
    (CNN.replace("Flatten(), ", ""), "Linear(36, train.classes), layer 4 of net, takes 36 inputs but the layers before "
     "it give shape [359, 4, 3, 3]", "put Flatten() before it"),
])
def test_a_layer_inside_a_sequential_is_checked_against_the_layers_before_it(layers, message, fix, tmp_path,
                                                                            monkeypatch):
    status, err = run_in(tmp_path, monkeypatch, IMAGES.replace("Linear(train.features, train.classes)", layers))
    assert status == 1
    first = err.split("\nt.blo:11:", 1)[0]
    assert first.startswith(f"t.blo:6:31: error: net(val.x): {message}\n")
    assert f"t.blo:10:5: note: net's layer {4 if 'put' in fix else 5} is Linear(" in first
    assert first.endswith(f"  fix: {fix}")


@pytest.mark.parametrize("call,message", [
    ("reshape(val.x, 64)", "reshape's shape is a list of dimensions"),
    ("reshape(val.x, [-1, val.y])", "reshape's dimensions are whole numbers and dataset sizes, not val.y"),
    ("reshape(val.x, [-1, 1.5])", "reshape's dimensions are whole numbers and dataset sizes, not 1.5"),
    ("reshape(val.x, [0, 64])", "a dimension of reshape is -1 (what is left) or a whole number >= 1, not 0"),
    ("reshape(val.x, [-1, -1, 8])", "only one of reshape's dimensions may be -1"),
    ("flatten(val.x, start_dim=0.5)", "flatten's start_dim must be an integer, not 0.5"),
    ("flatten(val.x, 1)", "flatten takes 1 positional argument, not 2"),
])
def test_reshape_and_flatten_arguments_are_checked(call, message):
    assert errors_of(BASE.replace("net(val.x)", f"net({call})")) == [message]
    assert errors_of(BASE.replace("net(val.x)", "net(reshape(val.x, [-1, 2 * val.features - 64]))")) == []


@pytest.mark.parametrize("layers,message", [
    ("MLP(train.features, [1e-30], train.classes)",
     "MLP's hidden must be a list of whole numbers >= 1, e.g. [32, 32], not [1e-30]"),
    ("Linear(train.features, 2.5)", "Linear's out_features must be an integer >= 1, not 2.5"),
    ("Sequential(Conv2d(1, 8, 0), Flatten(), Linear(8, 10))", "Conv2d's kernel_size must be an integer >= 1, not 0"),
])
def test_a_layers_sizes_are_whole_numbers(layers, message):
    assert errors_of(BASE.replace("Linear(train.features, train.classes)", layers)) == [message]
