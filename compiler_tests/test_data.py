"""Data sources: the built-in generators and loaders for files users have."""

import gzip
import struct

import numpy as np
import pytest
import torch

import blodsl
from blodsl.runtime import data
from blodsl.runtime.data import DataError
from conftest import run_cli
from helpers import BASE, META


def features_and_labels(n=40, features=3, classes=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, features, generator=g), torch.arange(n) % classes


def test_digits_splits_flips_and_marks_labels():
    train, val, test = data.digits(split=[0.5, 0.2, 0.3], label_noise=0.4, seed=0)
    assert [t.sizes["n"] for t in (train, val, test)] == [898, 359, 539]
    assert train.sizes["features"] == 64 and train.sizes["classes"] == 10
    noisy = train.fields["noisy"]
    assert noisy.sum().item() == round(0.4 * 898)
    # exactly the marked labels differ from the clean ones; the other splits are clean
    assert torch.equal(train.fields["y"] != train.fields["y_clean"], noisy)
    assert torch.equal(val.fields["y"], val.fields["y_clean"]) and not val.fields["noisy"].any()
    # standardised with the first split's statistics
    assert train.fields["x"].mean().abs() < 1e-5


def test_same_seed_same_split_other_seed_other_split():
    a, b = data.classification(n=100, features=5, seed=3)[0], data.classification(n=100, features=5, seed=3)[0]
    c = data.classification(n=100, features=5, seed=4)[0]
    assert torch.equal(a.fields["x"], b.fields["x"]) and not torch.equal(a.fields["x"], c.fields["x"])


def test_sinusoid_batches_are_reproducible_and_shaped_per_task():
    tasks = data.sinusoid(tasks=3, shots=4, queries=6, seed=0)
    first, again, second = tasks.batch(0), tasks.batch(0), tasks.batch(1)
    assert first.fields["support_x"].shape == (3, 4, 1) and first.fields["query_y"].shape == (3, 6, 1)
    assert torch.equal(first.fields["query_y"], again.fields["query_y"])
    assert not torch.equal(first.fields["query_y"], second.fields["query_y"])
    assert first.fields["support_x"].abs().max() <= 5


def test_npz_pt_and_csv_files(tmp_path):
    x, y = features_and_labels()
    np.savez(tmp_path / "d.npz", features=x.numpy(), labels=y.numpy())
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    rows = ["a,b,c,label"] + [",".join(f"{v:.6f}" for v in row) + f",{int(t)}" for row, t in zip(x.tolist(), y)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    loaded = [data.npz(tmp_path / "d.npz", x="features", y="labels", split=[1.0])[0],
              data.pt(tmp_path / "d.pt", split=[1.0])[0],
              data.csv(tmp_path / "d.csv", target="label", split=[1.0])[0]]
    for table in loaded:
        assert table.sizes == {"n": 40, "features": 3, "classes": 4}
        order = torch.argsort(table.fields["x"][:, 0])
        torch.testing.assert_close(table.fields["x"][order], x[torch.argsort(x[:, 0])], atol=1e-5, rtol=0,
                                   check_dtype=False)
        assert table.fields["y"].dtype == torch.long


def write_idx(folder, images: torch.Tensor, labels: torch.Tensor):
    """An MNIST-format folder: the images uncompressed, the labels gzipped."""
    n, h, w = images.shape
    (folder / "train-images-idx3-ubyte").write_bytes(struct.pack(">HBB3I", 0, 8, 3, n, h, w) + images.numpy().tobytes())
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBBI", 0, 8, 1, n) + labels.numpy().tobytes())


def test_idx_images_load_as_n_x_1_x_h_x_w(tmp_path):
    images = torch.randint(0, 256, (12, 4, 5), dtype=torch.uint8)
    write_idx(tmp_path, images, torch.arange(12, dtype=torch.uint8) % 3)
    table, = data.idx(tmp_path, split=[1.0], seed=0)
    assert table.sizes == {"n": 12, "features": 20, "classes": 3, "channels": 1, "height": 4, "width": 5}
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))   # split_table's shuffle
    torch.testing.assert_close(table.fields["x"], images[order].unsqueeze(1) / 255)
    assert table.fields["y"].tolist() == (order % 3).tolist()


def test_digits_as_images_are_the_flat_digits_reshaped():
    flat = data.digits(split=[0.5, 0.5], seed=0)[0]
    images = data.digits(split=[0.5, 0.5], seed=0, images=True)[0]
    assert images.fields["x"].shape == (898, 1, 8, 8)
    assert images.sizes == {**flat.sizes, "channels": 1, "height": 8, "width": 8}
    # standardised per pixel, as the flat ones are per feature
    torch.testing.assert_close(images.fields["x"].flatten(1), flat.fields["x"])
    assert torch.equal(images.fields["y"], flat.fields["y"])


def test_npz_images_gain_a_channel_axis_and_other_shapes_are_kept(tmp_path):
    grey, colour = np.arange(6 * 5 * 4.0).reshape(6, 5, 4), np.ones((6, 3, 5, 4))
    np.savez(tmp_path / "grey.npz", x=grey, y=np.arange(6) % 2)
    np.savez(tmp_path / "colour.npz", x=colour, y=np.arange(6) % 2)
    table, = data.npz(tmp_path / "grey.npz")
    assert table.fields["x"].shape == (6, 1, 5, 4) and table.sizes["channels"] == 1
    assert sorted(table.fields["x"][:, 0, 0, 0].tolist()) == [0, 20, 40, 60, 80, 100]
    table, = data.npz(tmp_path / "colour.npz")
    assert table.sizes == {"n": 6, "features": 60, "classes": 2, "channels": 3, "height": 5, "width": 4}


@pytest.mark.parametrize("make,message", [
    (lambda p: data.npz(p / "missing.npz"), "does not exist"),
    (lambda p: (np.savez(p / "d.npz", a=np.zeros(3)), data.npz(p / "d.npz"))[1], "has no array 'x'; it holds a"),
    (lambda p: ((p / "d.csv").write_text("a,b\n1,x\n"), data.csv(p / "d.csv"))[1], "not a number"),
    (lambda p: ((p / "images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x09"),
                (p / "labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09"),
                data.idx(p))[2], "truncated"),
    (lambda p: data.split_table(torch.zeros(3, 2), torch.zeros(3), [0.1, 0.9], 0), "leaves a part empty"),
])
def test_bad_files_say_what_is_wrong(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        make(tmp_path)


FILE_PROGRAM = """
data {
    train, val = npz("d.npz", split=[0.5, 0.5], seed=0)
}
upper {
    var log_decay = -2.0
    objective = cross_entropy(net(val.x), val.y)
    optimizer = Adam(lr=0.1)
}
lower {
    model net = Linear(train.features, train.classes)
    objective = cross_entropy(net(train.x), train.y) + exp(log_decay) * sqnorm(net)
    optimizer = SGD(lr=0.1)
    steps = 5
}
hypergradient = RAD
"""


def test_a_program_reads_a_file_beside_it(tmp_path):
    x, y = features_and_labels(n=60, classes=2)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    (tmp_path / "p.blo").write_text(FILE_PROGRAM)
    pipeline = blodsl.compile(tmp_path / "p.blo", compile=False)
    assert pipeline.problem.sizes == {"train.n": 30, "train.features": 3, "train.classes": 2,
                                      "val.n": 30, "val.features": 3, "val.classes": 2}
    assert pipeline.hypergradient()["log_decay"].abs() > 0



# --- image models --------------------------------------------------------------------------

CNN = "Sequential(Conv2d(train.channels, 4, 3), ReLU(), MaxPool2d(2), Flatten(), Linear(LINEAR, train.classes))"


def one_outer_step_moves(pipeline, name: str):
    """The hypergradient is finite and not zero, and one outer step moves the upper variable along it."""
    before = pipeline.upper[name].clone()
    gradient = pipeline.hypergradient()[name]
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    record = pipeline.step()
    assert record["hypergradient_norm"] == pytest.approx(gradient.norm().item(), rel=1e-4)
    assert not torch.equal(pipeline.upper[name], before)


def test_a_cnn_trains_on_an_mnist_format_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    write_idx(tmp_path, torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=g),
              torch.arange(40, dtype=torch.uint8) % 4)
    # 28 x 28 -> a 3 x 3 convolution: 26 x 26 -> pooled: 13 x 13, in 4 channels: 676 values
    text = FILE_PROGRAM.replace('npz("d.npz"', 'idx("."').replace("Linear(train.features, train.classes)",
                                                                     CNN.replace("LINEAR", "676"))
    (tmp_path / "p.blo").write_text(text)
    pipeline = blodsl.compile(tmp_path / "p.blo", compile=False, device="cpu")
    assert {k: v for k, v in pipeline.problem.sizes.items() if k.startswith("train.")} == {
        "train.n": 20, "train.features": 784, "train.classes": 4, "train.channels": 1, "train.height": 28,
        "train.width": 28}
    one_outer_step_moves(pipeline, "log_decay")


def test_a_cnn_trains_on_digits_images():
    text = (BASE.replace("label_noise=0.4)", "label_noise=0.4, images=True)")
            .replace("Linear(train.features, train.classes)", CNN.replace("LINEAR", "36"))
            .replace("steps = 20", "steps = 2"))
    pipeline = blodsl.compile(text, compile=False, device="cpu")
    assert pipeline.tables["train"]["x"].shape == (898, 1, 8, 8)
    one_outer_step_moves(pipeline, "w")


def test_misaligned_inputs_and_targets():
    with pytest.raises(DataError, match="10 rows but the targets 8"):
        data.split_table(torch.randn(10, 2), torch.zeros(8), [1.0], 0)


# --- class labels or regression targets ---------------------------------------------------------

def test_a_floating_target_is_regression_even_when_its_values_are_whole(tmp_path):
    """-2, -1, 0, 5 were once taken as labels and renumbered to 0..3: now they are targets as written."""
    y = torch.tensor([-2.0, -1.0, 0.0, 5.0] * 5)
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 2)), y=y.numpy())
    table, = data.npz(tmp_path / "d.npz")
    assert "classes" not in table.sizes and sorted(set(table.fields["y"].tolist())) == [-2, -1, 0, 5]
    text = """data {
    train = input()
}
upper {
    var log_decay = -2.0
    objective = mse(net(train.x), train.y)
    optimizer = Adam(lr=0.1)
}
lower {
    model net = Linear(train.features, 1)
    objective = mse(net(train.x), train.y) + exp(log_decay) * sqnorm(net)
    optimizer = SGD(lr=0.1)
    steps = 2
}
hypergradient = RAD
"""
    pipeline = blodsl.compile(text, bindings={"train": (torch.randn(20, 2), y)}, compile=False, device="cpu")
    assert torch.equal(pipeline.tables["train"]["y"], y) and "train.classes" not in pipeline.problem.sizes


def test_labels_are_said_by_the_dtype_or_by_labels():
    x = torch.zeros(6, 2)
    assert data.split_table(x, torch.tensor([0, 2, 1] * 2), [1.0], 0)[0].sizes["classes"] == 3
    as_labels, = data.split_table(x, torch.tensor([0.0, 2.0, 1.0] * 2), [1.0], 0, labels=True)
    assert as_labels.sizes["classes"] == 3 and as_labels.fields["y"].dtype == torch.long
    as_targets, = data.split_table(x, torch.tensor([0, 2, 1] * 2), [1.0], 0, labels=False)
    assert "classes" not in as_targets.sizes and as_targets.fields["y"].is_floating_point()


@pytest.mark.parametrize("y,labels,message", [
    (torch.tensor([-1, 1] * 3), None, "class labels must be 0, 1, ..., classes - 1, but y holds labels from -1 to 1"),
    (torch.tensor([0.0, 0.5] * 3), True, r"labels=True, but y holds values that are not whole numbers \(e.g. 0.5\)"),
    (torch.zeros(6, 2, dtype=torch.long), None, r"one number per sample, but y has shape \[6, 2\]"),
])
def test_labels_that_are_not_0_to_classes_minus_1_are_refused(y, labels, message):
    with pytest.raises(DataError, match=message):
        data.split_table(torch.zeros(6, 2), y, [1.0], 0, labels=labels)


def test_a_csv_target_is_labels_when_written_as_whole_numbers(tmp_path):
    (tmp_path / "labels.csv").write_text("a,t\n0.5,1\n1.5,0\n2.5,2\n")
    (tmp_path / "targets.csv").write_text("a,t\n0.5,1.0\n1.5,-3\n2.5,2\n")
    assert data.csv(tmp_path / "labels.csv")[0].sizes["classes"] == 3
    table, = data.csv(tmp_path / "targets.csv", seed=0)
    assert "classes" not in table.sizes and sorted(table.fields["y"].tolist()) == [-3, 1, 2]
    assert "classes" not in data.csv(tmp_path / "labels.csv", labels=False)[0].sizes
    with pytest.raises(DataError, match=r"'.*labels.csv': class labels must be .* from -3 to 2"):
        (tmp_path / "labels.csv").write_text("a,t\n0.5,1\n1.5,-3\n2.5,2\n")
        data.csv(tmp_path / "labels.csv")


def test_a_program_says_labels_out_of_range_before_training(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 3)), y=np.arange(20) % 3 - 1)
    (tmp_path / "p.blo").write_text(FILE_PROGRAM)
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli("run", "p.blo", "--no-compile", "--outer-steps", "1", "--out", "run")
    assert status == 1
    assert err == ("p.blo:3: error: 'd.npz': class labels must be 0, 1, ..., classes - 1, but y holds labels from -1 "
                   "to 1: renumber them, or pass labels=False if y holds regression targets\n")
    (tmp_path / "p.blo").write_text(FILE_PROGRAM.replace('npz("d.npz", split=[0.5, 0.5], seed=0)',
                                                         'npz("d.npz", split=[0.5, 0.5], seed=0, labels=False)'))
    status, out, err = run_cli("run", "p.blo", "--no-compile", "--outer-steps", "1", "--out", "run")
    assert (status, err) == (1, "p.blo:11: error: dataset 'train' has no size 'classes' (its y holds regression "
                                "targets: a floating y does unless the source says labels=True)\n")


# --- task batches from Python -----------------------------------------------------------------

BOUND_TASKS = META.replace("tasks = sinusoid(tasks=4, shots=5, queries=5)", "tasks = input(tasks=True)")


def test_task_batches_bound_from_python_give_the_built_in_sources_hypergradient():
    built_in = blodsl.compile(META, compile=False, device="cpu")
    each_step = blodsl.compile(BOUND_TASKS, bindings={"tasks": data.sinusoid(tasks=4, shots=5, queries=5)},
                               compile=False, device="cpu")
    one_batch = blodsl.compile(BOUND_TASKS, bindings={"tasks": data.sinusoid(tasks=4, shots=5, queries=5).batch(0).fields},
                               compile=False, device="cpu")
    assert each_step.problem.sizes == built_in.problem.sizes == {"tasks.tasks": 4, "tasks.shots": 5, "tasks.queries": 5}
    expected = built_in.hypergradient()
    assert expected["meta.0.weight"].abs().sum() > 0
    for bound in (each_step, one_batch):
        got = bound.hypergradient()
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    for _ in range(3):   # an object with batch(k) draws outer step k's tasks, as the built-in source does
        built_in.step(), each_step.step()
    for name, value in built_in.upper.items():
        torch.testing.assert_close(each_step.upper[name], value, rtol=0, atol=0)


def test_a_bound_task_batch_is_checked_as_one():
    batch = data.sinusoid(tasks=4, shots=5, queries=5).batch(0).fields
    with pytest.raises(DataError, match=r"binding 'tasks': every field of a task batch leads with its 4 tasks, but "
                                        r"query_y of batch 0 has shape \[3, 5, 1\]"):
        blodsl.compile(BOUND_TASKS, bindings={"tasks": {**batch, "query_y": batch["query_y"][:3]}}, compile=False)
    with pytest.raises(DataError, match="binding 'tasks' has no field 'query_x'"):
        blodsl.compile(BOUND_TASKS, bindings={"tasks": {k: v for k, v in batch.items() if k != "query_x"}},
                       compile=False)
    # a bound task batch is a task batch to the checker too: meta-test tasks may replace it
    text = BOUND_TASKS.replace("tasks = input(tasks=True)", "tasks = input(tasks=True)\n    test_tasks = sinusoid(seed=1)")
    text += "run {\n    metric meta_test = mse(learner(tasks.query_x), tasks.query_y) with tasks = test_tasks\n}\n"
    pipeline = blodsl.compile(text, bindings={"tasks": batch}, compile=False, device="cpu")
    assert pipeline.evaluate()["meta_test"] > 0


def test_inputs_keywords_describe_a_dataset():
    from helpers import errors_of

    assert errors_of(BOUND_TASKS.replace("input(tasks=True)", "input(tasks=True, labels=True)")) == [
        "a task batch's fields are taken as they are bound; labels= is for a dataset of x and y"]
    assert errors_of(BASE.replace("var w = zeros(train.n)", 'var w = input(fields=["x"])')) == [
        "input has no keyword argument 'fields'"]
    # labels=True from the program reaches the binding: whole floats as labels
    text = FILE_PROGRAM.replace('train, val = npz("d.npz", split=[0.5, 0.5], seed=0)',
                                "train = input(labels=True)\n    val = input()")
    x, y = features_and_labels(classes=3)
    pipeline = blodsl.compile(text, bindings={"train": (x, y.double()), "val": (x, y)}, compile=False, device="cpu")
    assert pipeline.problem.sizes["train.classes"] == 3 and pipeline.tables["train"]["y"].dtype == torch.long
