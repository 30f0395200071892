"""`blodsl operators`: the cheat sheet is written from the catalogue rows."""

from dataclasses import replace

from blodsl.catalogue import operators as catalogue
from blodsl.catalogue.operators import BY_NAME, CATALOGUE
from conftest import run_cli


def test_every_operator_is_in_the_overview_under_its_stage():
    status, out, err = run_cli("operators")
    assert status == 0 and err == ""
    lines = out.splitlines()
    for op in CATALOGUE:
        at = next(i for i, line in enumerate(lines)
                  if line.startswith(f"  {op.name}(") or line.split() == [op.name, *op.summary.split()])
        heading = next(line for line in reversed(lines[:at]) if line and not line.startswith(" "))
        assert heading.startswith(f"{op.stage}s: "), (op.name, heading)
        assert op.summary in lines[at] or op.summary in lines[at + 1]
    assert "  CG(k=10, tol=1e-10)".ljust(36) + "implicit differentiation, conjugate gradient" in lines
    assert "hypergradients: exactly one ends the pipeline" in lines
    assert "dynamics cores: at most one, NGD when none is written" in lines


def test_an_operators_card():
    status, out, err = run_cli("operators", "CG")
    assert status == 0 and err == ""
    assert out.splitlines()[:9] == [
        "CG: implicit differentiation, conjugate gradient",
        "  stage     hypergradient",
        "  computes  dF/dx - J^T q, q = H^-1 v by k steps of conjugate gradient",
        "  paper     Pedregosa, ICML 2016 (HOAG)",
        "",
        "parameters",
        "  k    an integer >= 1  default 10",
        "  tol  a number > 0     default 1e-10",
        "",
    ]
    assert "  - DM needs it (or RAD): the dual-multiplier method's upper gradient is defined for RAD or CG" in out
    assert "  - not with RAD, FD, IGA, NS and NYSTROM: a pipeline has one hypergradient" in out


def test_every_row_has_a_card_with_its_maths_and_rules():
    for op in CATALOGUE:
        status, out, _ = run_cli("operators", op.name)
        assert status == 0 and op.maths and f"computes  {op.maths}" in out
        assert all(f"  {p.name} " in out for p in op.params)
        assert all(f"not with {other}: {why}" in out for other, why in op.excludes.items())
    rgt = run_cli("operators", "RGT")[1]
    assert "  truncate  an integer > 0  default required" in rgt
    assert "  - its truncate must truncate fewer than the lower level's steps" in rgt


def test_a_changed_row_changes_the_sheet(monkeypatch):
    changed = replace(BY_NAME["CG"], summary="conjugate gradient, changed", params=BY_NAME["CG"].params[:1],
                      excludes={"IAD": "a reason written in the row"})
    monkeypatch.setattr(catalogue, "CATALOGUE", tuple(changed if op.name == "CG" else op for op in CATALOGUE))
    overview = run_cli("operators")[1]
    assert "  CG(k=10)".ljust(36) + "conjugate gradient, changed" in overview.splitlines()
    card = run_cli("operators", "CG")[1]
    assert "tol" not in card and "  - not with IAD: a reason written in the row" in card
    assert "  - not with CG: a reason written in the row" in run_cli("operators", "IAD")[1]


def test_an_unknown_operator_is_a_located_error_with_a_suggestion():
    status, out, err = run_cli("operators", "rad")
    assert (status, out) == (2, "")
    assert err.splitlines() == ["command line:1:18: error: unknown operator 'rad'",
                                " 1 | blodsl operators rad",
                                "   |                  ^^^",
                                "  fix: did you mean 'RAD'? Operator names are upper case."]
    assert "fix: known operators: GDA, DI, NGD" in run_cli("operators", "XYZZY")[2]
