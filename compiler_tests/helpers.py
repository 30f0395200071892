"""Building small programs for tests: one valid base, changed line by line."""

from blodsl.frontend import check_source
from blodsl.syntax.diagnostics import BloError
from blodsl.syntax.source import Source

BASE = """data {
    train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)
}
upper {
    var w = zeros(train.n)
    objective = cross_entropy(net(val.x), val.y)
    optimizer = Adam(lr=0.1)
}
lower {
    model net = Linear(train.features, train.classes)
    objective = mean(sigmoid(w) * cross_entropy(net(train.x), train.y, reduction="none"))
    optimizer = SGD(lr=0.5)
    steps = 20
}
hypergradient = RAD
run {
    metric test_accuracy = accuracy(net(test.x), test.y)
}
"""

META = """data {
    tasks = sinusoid(tasks=4, shots=5, queries=5)
}
upper {
    model meta = MLP(1, [8], 1)
    objective = mse(learner(tasks.query_x), tasks.query_y)
    optimizer = Adam(lr=1e-3)
}
lower {
    model learner = MLP(1, [8], 1)
    objective = mse(learner(tasks.support_x), tasks.support_y)
    optimizer = SGD(lr=0.01)
    steps = 5
    start = from(meta)
}
hypergradient = IAD
"""


def maml(extra_metric: str = "", pipeline: str = "IAD") -> str:
    """META with meta-test tasks, a baseline and a meta-test metric (and `extra_metric`)."""
    text = META.replace("tasks = sinusoid(tasks=4, shots=5, queries=5)",
                        "tasks = sinusoid(tasks=4, shots=5, queries=5)\n"
                        "    test_tasks = sinusoid(tasks=6, shots=5, queries=7, seed=1)")
    return text.replace("hypergradient = IAD", f"hypergradient = {pipeline}") + (
        "run {\n"
        "    baseline = initial\n"
        "    metric meta_test = mse(learner(tasks.query_x), tasks.query_y) with tasks = test_tasks\n"
        f"{extra_metric}"
        "}\n")


def program(base: str = BASE, **lines: str | None) -> str:
    """`base` with lines changed. program(steps="steps = 1") replaces the last line that
    starts with `steps =` (keeping its indentation); None deletes it; a key `after_steps`
    inserts its value as a new line after it."""
    out = base.splitlines()
    for key, new in lines.items():
        anchor = key.removeprefix("after_")
        at = max(i for i, line in enumerate(out) if line.strip().startswith(anchor + " ="))
        indent = out[at][: len(out[at]) - len(out[at].lstrip())]
        if key.startswith("after_"):
            out.insert(at + 1, indent + new)
        elif new is None:
            del out[at]
        else:
            out[at] = indent + new
    return "\n".join(out) + "\n"


def check_text(text: str):
    return check_source(Source("t.blo", text))


def errors_of(text: str) -> list[str]:
    """The messages of every error in `text`; [] when it checks."""
    try:
        check_text(text)
    except BloError as e:
        return [d.message for d in e.diagnostics if d.severity == "error"]
    return []


def report_of(text: str) -> str:
    """What `blodsl check` prints of `text` as p.blo when it fails (located messages); "" when it checks."""
    try:
        check_source(Source("p.blo", text))
    except BloError as e:
        return str(e)
    return ""


def warnings_of(text: str) -> list[str]:
    """The messages of every warning of a valid program."""
    return [d.message for d in check_text(text).warnings]
