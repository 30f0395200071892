"""Lowering a checked pipeline to its plan (`blodsl compile --emit plan`).

The plan is the runtime's: each operator's lowering, registered under its name in
blodsl.runtime.operators, adds what the operator means. This imports torch.
"""

from __future__ import annotations

from .. import ir


def plan_of(program: ir.Program):
    """The plan the program's pipeline lowers to (printable)."""
    from ..runtime.operators import lower

    ops = [(op.name, op.params) for op in program.hypergradient.operators]
    return lower(ops, program.lower.steps, program.lower.optimizer.args["lr"])
