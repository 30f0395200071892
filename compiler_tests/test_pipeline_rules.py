"""Every rule the operator rows take part in: at least one pipeline accepted and one rejected,
checked as whole programs so the program-dependent rules (steps, IAD structure) count too;
and the warnings for settings that cannot matter."""

import pytest

from helpers import BASE, META, check_text, errors_of, program, warnings_of

GAFFO = """data {
    train, val = regression(features=5, split=[0.5, 0.5])
}
upper {
    var v = zeros(train.features)
    objective = mean((val.x @ w - val.y) ** 2) + sum(v ** 2)
    optimizer = Adam(lr=0.1)
}
lower {
    var w = zeros(train.features)
    objective = mean((train.x @ w - train.y) ** 2) + sum((w - v) ** 2)
    optimizer = SGD(lr=0.1)
    steps = 1
    start = from(v)
}
hypergradient = GAFFO(lambda=0.5)
"""

ACCEPTED = [
    # stage order: dynamics modifiers, core, trajectory modifiers, IAD, terminal
    ("full canonical chain", program(hypergradient="hypergradient = GDA(alpha=0.3) -> DI -> PTT -> RAD")),
    ("full canonical chain with RGT", program(hypergradient="hypergradient = GDA(alpha=0.3) -> PTT -> RGT(truncate=5) -> RAD")),
    ("explicit NGD", program(hypergradient="hypergradient = NGD -> RAD")),
    ("every terminal alone", program(hypergradient="hypergradient = CG(k=3)")),
    ("NS", program(hypergradient="hypergradient = NS(k=5, alpha=0.1)")),
    ("NYSTROM", program(hypergradient="hypergradient = NYSTROM(rank=3, rho=0.5)")),
    ("IGA", program(hypergradient="hypergradient = IGA")),
    ("FD", program(hypergradient="hypergradient = FD(r=0.05)")),
    ("first-order method alone", program(hypergradient="hypergradient = VFO(u1=0.2)")),
    ("PGDO choice parameter", program(hypergradient="hypergradient = PGDO(penalty=gradient)")),
    ("ALTO when F depends on x directly",
     program(BASE.replace("objective = cross_entropy(net(val.x), val.y)",
                          "objective = cross_entropy(net(val.x), val.y) + 1e-3 * sum(w ** 2)"),
             hypergradient="hypergradient = ALTO")),
    ("FOA with IAD", program(META, hypergradient="hypergradient = FOA -> IAD")),
    ("IAD alone", META),
    ("IAD handing on to CG (implicit MAML)", program(
        META, hypergradient="hypergradient = IAD -> CG(k=5)",
        objective="objective = mse(learner(tasks.support_x), tasks.support_y) + 0.5 * sqdist(learner, meta)")),
    ("IAD handing on to RAD after FOA", program(META, hypergradient="hypergradient = FOA -> IAD -> RAD")),
    ("RGT before IAD when the lower objective reads the meta-model", program(
        META, hypergradient="hypergradient = RGT(truncate=2) -> IAD",
        objective="objective = mse(learner(tasks.support_x), tasks.support_y) + 0.5 * sqdist(learner, meta)")),
    ("DI without IAD", program(hypergradient="hypergradient = DI -> RAD")),
    ("RGT with FD absent", program(hypergradient="hypergradient = RGT(truncate=19) -> RAD")),
    ("DM with CG and one step", program(steps="steps = 1", hypergradient="hypergradient = DM -> CG")),
    ("DM with RAD and one step", program(steps="steps = 1", hypergradient="hypergradient = DM(strategy=s2) -> RAD")),
    ("GAFFO on identical structures", GAFFO),
]

REJECTED = [
    ("FOA before an implicit terminal", program(META, hypergradient="hypergradient = FOA -> IAD -> CG",
                                                 objective="objective = mse(learner(tasks.support_x), "
                                                           "tasks.support_y) + sqdist(learner, meta)"),
     "FOA approximates the derivative through the inner trajectory, but CG differentiates at the lower solution"),
    ("RGT before an implicit terminal", program(hypergradient="hypergradient = RGT(truncate=5) -> NS"),
     "RGT truncates the differentiated inner trajectory, but NS"),
    ("DI before an implicit terminal", program(hypergradient="hypergradient = DI -> IGA"),
     "DI learns the start through the inner trajectory, but IGA"),
    ("implicit terminal with no upper variable in the lower objective",
     program(META, hypergradient="hypergradient = IAD -> CG(k=5)"), "does not read meta, which the lower level starts from"),
    ("implicit MAML whose lower objective reads another upper variable but not the start",
     program(META.replace("model meta = MLP(1, [8], 1)", "model meta = MLP(1, [8], 1)\n    var lam = -3.0"),
             hypergradient="hypergradient = IAD -> CG(k=5)",
             objective="objective = mse(learner(tasks.support_x), tasks.support_y) + exp(lam) * sqnorm(learner)"),
     "does not read meta, which the lower level starts from"),
    ("FD when the lower objective ignores the upper level",
     program(BASE, hypergradient="hypergradient = FD", objective="objective = cross_entropy(net(train.x), train.y)"),
     "this lower objective uses none"),
    ("wrong order", program(hypergradient="hypergradient = PTT -> DI -> RAD"), "DI cannot come after PTT"),
    ("terminal first", program(hypergradient="hypergradient = RAD -> PTT"), "PTT cannot come after RAD"),
    ("first-order combined", program(hypergradient="hypergradient = VFO -> RAD"), "VFO is a first-order method"),
    ("first-order last", program(hypergradient="hypergradient = RAD -> MESO"), "MESO is a first-order method"),
    ("lowercase", program(hypergradient="hypergradient = rad"), "unknown operator 'rad'"),
    ("mixed case", program(hypergradient="hypergradient = Cg(k=3)"), "unknown operator 'Cg'"),
    ("unknown", program(hypergradient="hypergradient = CGG"), "unknown operator 'CGG'"),
    ("duplicate", program(hypergradient="hypergradient = PTT -> PTT -> RAD"), "PTT appears twice"),
    ("two cores", program(steps="steps = 1", hypergradient="hypergradient = NGD -> DM -> CG"),
     "NGD and DM are both dynamics cores"),
    ("two terminals", program(hypergradient="hypergradient = CG -> NS"), "CG and NS are both terminal"),
    ("GDA last", program(hypergradient="hypergradient = GDA"), "GDA modifies what the next operator"),
    ("DI last", program(hypergradient="hypergradient = DI"), "DI modifies what the next operator"),
    ("PTT last", program(hypergradient="hypergradient = PTT"), "PTT modifies what the next operator"),
    ("RGT last", program(hypergradient="hypergradient = RGT(truncate=3)"), "RGT modifies what the next operator"),
    ("core without terminal", program(steps="steps = 1", hypergradient="hypergradient = DM"),
     "the pipeline has no hypergradient operator"),
    ("DI with IAD", program(META, hypergradient="hypergradient = DI -> IAD"),
     "DI and IAD cannot be combined"),
    ("DI with RGT", program(hypergradient="hypergradient = DI -> RGT(truncate=5) -> RAD"),
     "RGT cuts the differentiated trajectory off from the lower level's start, so the start DI learns would never move"),
    ("DI with an explicit reinit start", program(hypergradient="hypergradient = DI -> RAD", after_steps="start = reinit"),
     "DI learns the lower level's initial value; each outer step starts from it, not from a reinitialisation"),
    ("RGT before IAD with no other path from the upper level", program(META, hypergradient="hypergradient = RGT(truncate=2) -> IAD"),
     "RGT cuts the differentiated trajectory off from the lower level's start, and the lower objective does not "
     "read meta"),
    ("FD after IAD", program(META, hypergradient="hypergradient = IAD -> FD",
                             objective="objective = mse(learner(tasks.support_x), tasks.support_y) + sqdist(learner, meta)"),
     "FD and IAD cannot be combined: FD differentiates at the final lower solution only"),
    ("IGA after IAD", program(META, hypergradient="hypergradient = IAD -> IGA",
                              objective="objective = mse(learner(tasks.support_x), tasks.support_y) + sqdist(learner, meta)"),
     "IGA and IAD cannot be combined: IGA differentiates at the final lower solution only"),
    ("FOA without IAD", program(hypergradient="hypergradient = FOA -> RAD"), "FOA needs IAD"),
    ("FD with RGT", program(hypergradient="hypergradient = RGT(truncate=3) -> FD"), "FD and RGT cannot be combined"),
    ("DM with NS", program(steps="steps = 1", hypergradient="hypergradient = DM -> NS"), "DM needs CG or RAD"),
    ("DM with many steps", program(hypergradient="hypergradient = DM -> CG"), "needs one inner step per outer step"),
    ("RGT truncating all steps", program(hypergradient="hypergradient = RGT(truncate=20) -> RAD"),
     "RGT(truncate=20) must truncate fewer than the 20 inner steps"),
    ("RGT truncate zero", program(hypergradient="hypergradient = RGT(truncate=0) -> RAD"),
     "RGT's truncate must be an integer > 0"),
    ("RGT needs truncate", program(hypergradient="hypergradient = RGT -> RAD"), "RGT needs its parameter 'truncate'"),
    ("IAD on different structures", program(META, **{"model learner": "model learner = MLP(1, [16], 1)"}),
     "IAD needs upper and lower variables of identical structure"),
    ("IAD without start", program(META, start=None), "IAD learns the lower level's initial value"),
    ("start from without IAD", program(META, hypergradient="hypergradient = RAD"),
     "the lower level starts from an upper-level model, which only IAD or GAFFO learns"),
    ("ALTO with zero gradient", program(hypergradient="hypergradient = ALTO"),
     "ALTO gives upper-level 'w' only the direct gradient of the upper objective, which does not read it"),
    ("ALTO with a variable only the lower objective reads",
     program(BASE.replace("var w = zeros(train.n)", "var w = zeros(train.n)\n    var shift = 0.0")
             .replace("objective = cross_entropy(net(val.x), val.y)",
                      "objective = cross_entropy(net(val.x), val.y) + 1e-3 * sum(w ** 2)")
             .replace("cross_entropy(net(train.x), train.y", "cross_entropy(net(train.x) + shift, train.y"),
             hypergradient="hypergradient = ALTO", steps="steps = 1"),
     "ALTO gives upper-level 'shift' only the direct gradient"),
    ("FOA with RGT", program(META, hypergradient="hypergradient = FOA -> RGT(truncate=2) -> IAD"),
     "FOA and RGT cannot be combined"),
    ("DM with RGT", program(steps="steps = 1", hypergradient="hypergradient = DM -> RGT(truncate=1) -> RAD"),
     "DM and RGT cannot be combined"),
    ("DM with PTT", program(steps="steps = 1", hypergradient="hypergradient = DM -> PTT -> RAD"),
     "DM and PTT cannot be combined"),
    ("DM with DI", program(steps="steps = 1", hypergradient="hypergradient = DI -> DM -> RAD"),
     "DM and DI cannot be combined"),
    ("a reinit start beside a method that keeps the lower level",
     program(steps="steps = 1", hypergradient="hypergradient = MESO", after_steps="start = reinit"),
     "MESO moves the lower level on from where it stands"),
    ("PGDO's penalty schedule falling", program(hypergradient="hypergradient = PGDO(gamma_init=1, gamma_max=0.1)"),
     "PGDO's gamma_init (1) is above its gamma_max (0.1)"),
    ("task batches read by the upper objective only",
     program(BASE.replace("train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)",
                          "train, val, test = digits(split=[0.5, 0.2, 0.3], label_noise=0.4)\n"
                          "    tasks = sinusoid(tasks=4, shots=5, queries=5)"),
             ).replace("objective = cross_entropy(net(val.x), val.y)",
                       "objective = cross_entropy(net(val.x), val.y) + 0.1 * mean(tasks.query_y ** 2)"),
     "few-shot task batches are learned by meta-learning pipelines"),
    ("GAFFO on different structures", program(hypergradient="hypergradient = GAFFO", after_steps="start = from(w)"),
     "GAFFO needs upper and lower variables of identical structure"),
    ("GAFFO without start", program(hypergradient="hypergradient = GAFFO"),
     "GAFFO learns the lower level's initial value, but the lower level does not start from an upper-level model"),
    ("parameter of wrong type", program(hypergradient="hypergradient = CG(k=2.5)"), "CG's k must be an integer >= 1"),
    ("negative checkpoint", program(hypergradient="hypergradient = RAD(checkpoint=-1)"),
     "RAD's checkpoint must be an integer >= 0"),
    ("parameter out of range", program(hypergradient="hypergradient = GDA(alpha=1) -> RAD"),
     "GDA's alpha must be a number in [0, 1)"),
    ("unknown parameter", program(hypergradient="hypergradient = NS(kk=3)"), "NS has no parameter 'kk'"),
    ("bad choice", program(steps="steps = 1", hypergradient="hypergradient = DM(strategy=s4) -> CG"),
     "DM's strategy must be one of s1, s2, s3"),
    ("positional parameter", program(hypergradient="hypergradient = CG(10)"), "CG takes keyword arguments only"),
]


# Settings that cannot matter: warnings, not errors.
ONE_STEP = program(steps="steps = 1", hypergradient="hypergradient = FD")
WARNED = [
    ("momentum with one inner step", program(ONE_STEP, optimizer="optimizer = SGD(lr=0.5, momentum=0.9)"),
     ["momentum has no effect with one inner step: the optimiser's state starts at zero every outer step, "
      "so its first step does not depend on it"]),
    ("Adam's betas with one inner step", program(ONE_STEP, optimizer="optimizer = Adam(lr=0.01, betas=[0.5, 0.9])"),
     ["betas has no effect with one inner step: the optimiser's state starts at zero every outer step, "
      "so its first step does not depend on it"]),
    ("inner arguments beside a method that steps at the inner lr",
     program(optimizer="optimizer = SGD(lr=0.5, momentum=0.9, weight_decay=0.1)", hypergradient="hypergradient = VFO"),
     ["VFO steps the lower variables by plain gradient steps at the inner learning rate: momentum has no effect",
      "VFO steps the lower variables by plain gradient steps at the inner learning rate: weight_decay has no effect"]),
    ("Adam beside a method that steps at the inner lr",
     program(steps="steps = 1", optimizer="optimizer = Adam(lr=0.01)", hypergradient="hypergradient = DM -> RAD"),
     ["DM steps the lower variables by plain gradient steps at the inner learning rate: Adam's own update is not used"]),
    ("steps beside a method that takes one lower step", program(hypergradient="hypergradient = MESO"),
     ["MESO takes one lower step per outer step: `steps = 20` has no effect"]),
]
CLEAN = [
    ("momentum with nesterov and one step",
     program(ONE_STEP, optimizer="optimizer = SGD(lr=0.5, momentum=0.9, nesterov=True)")),
    ("momentum with several steps", program(optimizer="optimizer = SGD(lr=0.5, momentum=0.9)")),
    ("Adam's eps and weight decay with one step", program(ONE_STEP, optimizer="optimizer = Adam(lr=0.01, eps=1e-6, weight_decay=0.1)")),
    ("only the lr beside a method that steps at the inner lr", program(hypergradient="hypergradient = PGDO")),
    ("one step beside a method that takes one lower step", program(
        BASE.replace("objective = cross_entropy(net(val.x), val.y)",
                     "objective = cross_entropy(net(val.x), val.y) + 1e-3 * sum(w ** 2)"),
        steps="steps = 1", hypergradient="hypergradient = ALTO")),
]


@pytest.mark.parametrize("name,text,warnings", WARNED, ids=[w[0] for w in WARNED])
def test_settings_that_cannot_matter_are_warned(name, text, warnings):
    assert warnings_of(text) == warnings


@pytest.mark.parametrize("name,text", CLEAN, ids=[c[0] for c in CLEAN])
def test_settings_that_matter_are_not_warned(name, text):
    assert warnings_of(text) == []


@pytest.mark.parametrize("name,text", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(name, text):
    assert errors_of(text) == []


@pytest.mark.parametrize("name,text,message", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected(name, text, message):
    errors = errors_of(text)
    assert any(message in e for e in errors), errors


def test_wrong_order_fix_shows_the_canonical_order_and_nothing_is_reordered():
    from blodsl.syntax.diagnostics import BloError
    text = program(hypergradient="hypergradient = RGT(truncate=3) -> GDA(alpha=0.2) -> DI -> RAD")
    with pytest.raises(BloError) as raised:
        check_text(text)
    (diag,) = raised.value.diagnostics
    assert diag.fix == "write `hypergradient = GDA(alpha=0.2) -> DI -> RGT(truncate=3) -> RAD`"
    assert (diag.span.line, diag.span.col) == (15, 36)  # at GDA, the first out of place


def test_first_order_module_lists_each_rule_once_per_violation():
    """Two independent violations give two messages, each at its own operator."""
    errors = errors_of(program(hypergradient="hypergradient = FOA -> RGT(truncate=3) -> FD"))
    assert sorted(errors) == sorted([
        "FD and RGT cannot be combined: FD differentiates at the final lower solution only; "
        "there is no back-propagated trajectory for RGT to truncate",
        "FOA and RGT cannot be combined: FOA takes dy_T/dy_0 as the identity; there is no differentiated "
        "trajectory for RGT to truncate",
        "FOA needs IAD in the pipeline: without IAD the first-order hypergradient is identically zero",
    ])


def test_base_programs_are_valid():
    assert errors_of(BASE) == [] and errors_of(META) == []
