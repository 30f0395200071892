"""What the resolver makes of a program: references, defaults, and the choices it settles."""

from pathlib import Path

import pytest

from blodsl import ir
from blodsl.syntax.source import Source
from blodsl.frontend import check_source
from helpers import BASE, META, check_text, errors_of, program


def ops(text):
    return [(op.name, op.params, op.implied) for op in check_text(text).program.hypergradient.operators]


def test_implied_ngd_is_explicit_in_the_ir():
    assert ops(program(hypergradient="hypergradient = PTT -> RAD")) == [
        ("NGD", {}, True), ("PTT", {}, False), ("RAD", {"checkpoint": 0}, False)]
    assert ops(program(hypergradient="hypergradient = GDA -> CG")) == [
        ("GDA", {"alpha": 0.5, "alpha_decay": 0.9}, False), ("NGD", {}, True),
        ("CG", {"k": 10, "tol": 1e-10}, False)]


def test_defaults_taken_from_the_program():
    """NS's alpha and GAFFO's step are the inner learning rate; VFO's y_hat_steps the inner steps."""
    assert ops(program(hypergradient="hypergradient = NS"))[-1] == ("NS", {"k": 10, "alpha": 0.5}, False)
    assert ops(program(hypergradient="hypergradient = VFO"))[-1][1] == {"u1": 0.1, "y_hat_lr": 0.01,
                                                                        "y_hat_steps": 20}
    gaffo = program(META, hypergradient="hypergradient = GAFFO", steps="steps = 1")
    assert ops(gaffo)[-1] == ("GAFFO", {"lambda": 1.0, "sigma": 0.01, "lower_step": 0.01}, False)


def test_canonical_text_fills_parameters():
    checked = check_text(program(hypergradient="hypergradient = GDA(alpha=0.2) -> RGT(truncate=4) -> RAD"))
    assert checked.program.hypergradient.text == "GDA(alpha=0.2, alpha_decay=0.9) -> NGD -> RGT(truncate=4) -> RAD"
    checked = check_text(program(hypergradient="hypergradient = DI(lr=0.05) -> PTT -> RAD"))
    assert checked.program.hypergradient.text == "DI(lr=0.05) -> NGD -> PTT -> RAD"


def test_di_restarts_from_its_learned_value():
    lower = check_text(program(hypergradient="hypergradient = DI -> RAD")).program.lower
    assert lower.start.mode == "learned"
    assert check_text(BASE).program.lower.start.mode == "warm"


def test_references_are_resolved_to_their_level():
    text = program(objective="objective = cross_entropy(net(train.x), train.y) + 0.5 * sum(exp(w[0]) * net.weight ** 2) + sqnorm(net)",
                   **{"var w": "var w = zeros(train.features)"})
    lower = check_text(text).program.lower
    call = lower.objective.expr.left.left
    assert call == ir.Call(fn="cross_entropy", args=[
        ir.Apply(level="lower", model="net", args=[ir.DataRef(dataset="train", field="x")]),
        ir.DataRef(dataset="train", field="y")])
    assert ir.ParamRef(level="lower", model="net", param="weight") in _walk(lower.objective.expr)
    assert ir.ModelRef(level="lower", name="net") in _walk(lower.objective.expr)
    assert ir.VarRef(level="upper", name="w") in _walk(lower.objective.expr)
    assert lower.objective.text.startswith("cross_entropy(net(train.x), train.y) + 0.5")


def _walk(node):
    if isinstance(node, ir.Node):
        yield node
        for value in node.__dict__.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _walk(item)


def test_variables_shapes_and_inner_optimiser_defaults():
    program_ = check_text(program(**{"var w": "var w = normal(train.n, 3, std=0.1)"},
                                  optimizer="optimizer = SGD(lr=0.5, nesterov=True, momentum=0.9)")).program
    (w,) = program_.upper.variables
    assert (w.init, w.shape, w.args) == ("normal", [ir.SizeRef(dataset="train", size="n"), 3], {"std": 0.1})
    assert program_.lower.optimizer.args == {"lr": 0.5, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
                                              "nesterov": True}


def test_scalar_variable_from_a_number():
    text = BASE.replace("var w = zeros(train.n)", "var w = -4.0").replace(
        "mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction=\"none\"))",
        "cross_entropy(net(train.x), train.y) + exp(w) * sqnorm(net)")
    (w,) = check_text(text).program.upper.variables
    assert (w.init, w.shape, w.args) == ("full", [], {"value": -4.0})


def test_user_modules_and_functions_are_named_not_imported():
    text = ('import "nowhere_pkg.nets:TinyNet" as TinyNet\n'
            'import "nowhere_pkg.losses:focal" as focal\n'
            + program(**{"model net": "model net = TinyNet(train.features, hidden=[16, 16])"},
                      objective="objective = mean(sigmoid(w) * focal(net(train.x), train.y, gamma=2.0))"))
    checked = check_text(text).program
    (net,) = checked.lower.models
    assert net.spec == ir.LayerSpec(kind="user", name="nowhere_pkg.nets:TinyNet",
                                    args=[ir.SizeRef(dataset="train", size="features")],
                                    kwargs={"hidden": [16, 16]})
    assert checked.imports == {"TinyNet": "nowhere_pkg.nets:TinyNet", "focal": "nowhere_pkg.losses:focal"}
    assert any(isinstance(n, ir.UserCall) and n.ref == "nowhere_pkg.losses:focal"
               for n in _walk(checked.lower.objective.expr))


def test_a_malformed_import_reference():
    assert errors_of('import "nowhere_pkg.nets.TinyNet" as TinyNet\n' + BASE) == [
        "'nowhere_pkg.nets.TinyNet' is not a reference of the form \"package.module:name\""]


def test_run_settings_and_metric_rebinding():
    text = BASE.replace("run {", "run {\n    outer_steps = 30\n    device = cuda\n    dtype = \"float64\"\n"
                        "    metric val_acc = accuracy(net(val.x), val.y) with val = test")
    run = check_text(text).program.run
    assert (run.outer_steps, run.eval_every, run.device, run.dtype) == (30, 3, "cuda", "float64")
    assert run.metrics[0].rebind == {"val": "test"}


def test_bad_run_settings():
    assert errors_of(BASE.replace("run {", "run {\n    device = tpu")) == [
        "device must be auto, cpu, cuda or cuda:N, not 'tpu'"]
    assert errors_of(BASE.replace("run {", "run {\n    outer_steps = 0")) == [
        "outer_steps must be an integer >= 1, not 0"]


def test_unused_dataset_is_a_warning_not_an_error():
    text = BASE.replace("    metric test_accuracy = accuracy(net(test.x), test.y)\n", "")
    checked = check_text(text)
    assert [w.message for w in checked.warnings] == ["dataset 'test' is never used"]


def test_data_files_are_found_beside_the_program(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clean.npz").write_bytes(b"")
    text = BASE.replace('digits(split=[0.5, 0.2, 0.3], label_noise=0.4)',
                        'npz("data/clean.npz", x="features", y="labels", split=[0.5, 0.2, 0.3])')
    checked = check_source(Source("p.blo", text), base_dir=tmp_path)
    assert [d.path for d in checked.program.datasets] == ["data/clean.npz"] * 3
    assert [d.split for d in checked.program.datasets] == [0, 1, 2]
    with pytest.raises(Exception, match="no file or folder 'data/clean.npz'"):
        check_source(Source("p.blo", text), base_dir=tmp_path / "elsewhere")


def test_input_bindings_declare_fields():
    text = BASE.replace('train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)',
                        'train = input(fields=["x", "y", "weight"])\n    val = input()\n    test = input()')
    datasets = check_text(text).program.datasets
    assert [(d.name, d.source, d.fields) for d in datasets] == [
        ("train", "input", ["x", "y", "weight", "index"]), ("val", "input", ["x", "y", "index"]),
        ("test", "input", ["x", "y", "index"])]


@pytest.mark.parametrize("line,message", [
    ("objective = net(train.x)", None),
    ("objective = mean(train)", "'train' is a dataset; use one of its tensors"),
    ("objective = mean(w(train.x))", "'w' is a variable, not a function"),
    ("objective = mean(Linear(train.x))", "Linear is a layer and cannot be called in an expression"),
    ("objective = mean(net.kernel)", "model 'net' has no weight 'kernel'"),
    ("objective = mean(sigmoid(w, 2))", "sigmoid takes 1 positional argument, not 2"),
    ("objective = cross_entropy(net(train.x), train.y, reduction=\"avg\")",
     "cross_entropy's reduction must be one of 'mean', 'sum', 'none', not 'avg'"),
    ("objective = mix(w, net(train.x))", "mix's candidates are a list: mix(logits, [a(x), b(x)])"),
    ("objective = PTT -> RAD", "'->' joins the operators of the hypergradient pipeline and means nothing here"),
])
def test_expression_errors(line, message):
    errors = errors_of(program(objective=line))
    if message is None:
        assert "the lower objective does not depend" not in " ".join(errors)
    else:
        assert message in errors


def test_keyword_arguments_are_constants_checked_by_their_rows():
    text = program(**{"model net": "model net = Sequential(Conv2d(1, 4, 3, stride=2, bias=False), Flatten(), "
                                   "Linear(36, train.classes))"},
                   objective='objective = mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none"), '
                             'dim=[0])')
    lower = check_text(text).program.lower
    conv = lower.models[0].spec.args[0]
    assert (conv.name, conv.kwargs) == ("Conv2d", {"stride": 2, "bias": False})
    assert lower.objective.expr.kwargs == {"dim": ir.ListOf(items=[ir.Const(value=0)])}


@pytest.mark.parametrize("source,message", [
    ("digits(split=[0.5, 0.2, 0.3], label_noise=1.5)", "digits' label_noise must be a fraction in [0, 1), not 1.5"),
    ("digits(split=[0.5, 0.6, 0.3])", "digits' split must be a list of positive fractions that add up to at most 1"),
    ("digits(split=[0.5, 0.2, 0.3], seed=-1)", "digits' seed must be an integer >= 0, not -1"),
    ("digits(split=[0.5, 0.2, 0.3], standardize=1)", "digits' standardize must be True or False, not 1"),
])
def test_data_source_arguments_are_checked_by_their_rows(source, message):
    errors = errors_of(BASE.replace("digits(split=[0.5, 0.2, 0.3], label_noise=0.4)", source))
    assert any(e.startswith(message) for e in errors), errors
