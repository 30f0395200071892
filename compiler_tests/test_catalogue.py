"""The operator catalogue: each operator is one row, and only the catalogue (and the
runtime's registry) knows operators by name."""

import ast as pyast
from pathlib import Path

import pytest

from blodsl.catalogue.operators import BY_NAME, CATALOGUE
from blodsl.catalogue.params import AtRunTime
from helpers import check_text, program

PACKAGE = Path(__file__).resolve().parent.parent / "blodsl"
OWN_NAMES = (("catalogue",), ("runtime", "operators"))  # the rows, and the runtime's registry of lowerings


def operator_names_in(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every string literal in a module that is an operator's name."""
    tree = pyast.parse(path.read_text(), str(path))
    return [(node.lineno, node.value) for node in pyast.walk(tree)
            if isinstance(node, pyast.Constant) and isinstance(node.value, str) and node.value in BY_NAME]


def test_no_module_outside_the_catalogue_tests_an_operators_name():
    found = [f"{path.relative_to(PACKAGE)}:{line}: {name!r}"
             for path in sorted(PACKAGE.rglob("*.py"))
             if not any(path.relative_to(PACKAGE).parts[:len(own)] == own for own in OWN_NAMES)
             for line, name in operator_names_in(path)]
    assert found == []


def test_the_name_check_finds_a_name_test(tmp_path):
    module = tmp_path / "rules.py"
    module.write_text('def rule(ops):\n    return "IAD" in ops or ops[-1] == "CG"  # RAD in a comment\n')
    assert operator_names_in(module) == [(2, "IAD"), (2, "CG")]


def test_rows_refer_to_rows_and_their_own_parameters():
    for op in CATALOGUE:
        assert set(op.excludes) <= set(BY_NAME) and set(op.overrides) <= set(BY_NAME), op.name
        assert not op.requires or op.requires[0] <= set(BY_NAME), op.name
        assert set(op.bounded_by_steps) <= {p.name for p in op.params}, op.name
        assert op.differentiates in (None, "trajectory", "solution"), op.name
        assert op.inner_optimizer in ("steps", "lr"), op.name
        assert op.terminal == (op.differentiates is not None), op.name
        assert not op.through_trajectory or op.needs_successor, op.name


@pytest.mark.parametrize("name,params", [
    ("MESO", ["eta", "gamma_1", "c0"]),                # y_hat_lr is not in its definition
    ("GAFFO", ["lambda", "sigma", "lower_step"]),      # blodsl follows the paper: no `maximize`
    ("VSO", ["z_loop", "z_lr", "ll_l2_reg", "ul_l2_reg", "ul_ln_reg", "reg_decay", "eps"]),
    ("DM", ["v_lr", "tau", "p", "mu0", "strategy"]),
])
def test_parameters_of_the_first_order_and_single_loop_methods(name, params):
    assert [p.name for p in BY_NAME[name].params] == params


def test_vso_eps_defaults_to_what_the_runtime_knows():
    eps = BY_NAME["VSO"].param("eps")
    assert isinstance(eps.default, AtRunTime) and repr(eps.default) == "the number of lower-level parameters"
    chain = check_text(program(hypergradient="hypergradient = VSO")).program.hypergradient
    assert chain.operators[0].params["eps"] is None
    assert chain.text == ("VSO(z_loop=5, z_lr=0.01, ll_l2_reg=0.1, ul_l2_reg=0.01, ul_ln_reg=10, "
                          "reg_decay=True)")
    written = check_text(program(hypergradient="hypergradient = VSO(eps=0.5)")).program.hypergradient
    assert written.operators[0].params["eps"] == 0.5 and written.text.endswith("reg_decay=True, eps=0.5)")


def test_every_operator_the_checker_accepts_has_a_lowering_and_nothing_else_does():
    """What `blodsl check` accepts, `blodsl run` runs: the runtime's registry and the catalogue
    name the same operators."""
    from blodsl.runtime.operators import REGISTRY

    assert set(REGISTRY) == set(BY_NAME)
