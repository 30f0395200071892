"""The `blodsl` command.

Exit status: 0 valid, 1 invalid program (located messages on stderr),
2 bad command line (missing file, unknown option), 3 internal error.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__, ir
from .ast import dump
from .diagnostics import BloError, render_all
from .frontend import check_file

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"blodsl: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _arguments() -> argparse.ArgumentParser:
    parser = _Parser(prog="blodsl", description="A language for gradient-based bilevel optimisation.")
    parser.add_argument("--version", action="version", version=f"blodsl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    check = commands.add_parser("check", help="check .blo programs and summarise them")
    check.add_argument("files", nargs="+", metavar="FILE")
    compile_ = commands.add_parser("compile", help="print a stage of the compiler for one program")
    compile_.add_argument("file", metavar="FILE")
    compile_.add_argument("--emit", choices=("ast", "ir"), default="ir",
                          help="ast: the syntax tree; ir: the checked program as JSON (default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    if args.command is None:
        _arguments().print_help(sys.stderr)
        return EXIT_USAGE
    files = args.files if args.command == "check" else [args.file]
    status = EXIT_OK
    for path in files:
        try:
            checked = check_file(path)
        except OSError as e:
            print(f"blodsl: error: cannot read '{path}': {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
        except BloError as e:
            print(render_all(e.diagnostics, e.source), file=sys.stderr)
            errors = sum(d.severity == "error" for d in e.diagnostics)
            print(f"{path}: {errors} error{'s' if errors != 1 else ''}", file=sys.stderr)
            status = EXIT_INVALID
            continue
        except Exception as e:  # a bug in blodsl, not in the user's program
            if os.environ.get("BLODSL_DEBUG"):
                raise
            print(f"blodsl: internal error while checking '{path}': {type(e).__name__}: {e}\n"
                  "Please report it with the program; BLODSL_DEBUG=1 shows the traceback.", file=sys.stderr)
            return EXIT_INTERNAL
        if checked.warnings:
            print(render_all(checked.warnings, checked.source), file=sys.stderr)
        if args.command == "check":
            print(summary(checked.program))
        elif args.emit == "ast":
            print(dump(checked.tree))
        else:
            print(checked.program.model_dump_json(indent=2))
    return status


def summary(program: ir.Program) -> str:
    """A few lines a user can check their program against."""
    data = ", ".join(f"{d.name} ({d.source}{'' if d.split is None else f' part {d.split + 1}'})"
                     for d in program.datasets)
    lines = [f"{program.path}: ok"]
    if data:
        lines.append(f"  data      {data}")
    for level in (program.upper, program.lower):
        decls = [f"var {v.name}" + (f"[{', '.join(_dim(d) for d in v.shape)}]" if v.shape else " (scalar)")
                 for v in level.variables]
        decls += [f"model {m.name} = {_spec(m.spec)}" for m in level.models]
        how = _call(level.optimizer.name, level.optimizer.args)
        if level.level == "lower":
            start = f"from {level.start.source}" if level.start.mode == "from" else level.start.mode
            how += f", {level.steps} step{'s' if level.steps != 1 else ''} per outer step, {start} start"
        lines.append(f"  {level.level:<9} {'; '.join(decls)}")
        lines.append(f"  {'':<9} {how}")
    lines.append(f"  pipeline  {program.pipeline.text}")
    run = program.run
    metrics = ", ".join(m.name for m in run.metrics) or "none"
    lines.append(f"  run       {run.outer_steps} outer steps, metrics {metrics} every {run.eval_every}; "
                 f"seed {run.seed}, device {run.device}, {run.dtype}")
    return "\n".join(lines)


def _dim(d) -> str:
    return f"{d.dataset}.{d.size}" if isinstance(d, ir.SizeRef) else str(d)


def _arg(a) -> str:
    if isinstance(a, ir.SizeRef):
        return _dim(a)
    if isinstance(a, ir.LayerSpec):
        return _spec(a)
    if isinstance(a, list):
        return "[" + ", ".join(_arg(x) for x in a) + "]"
    return repr(a) if isinstance(a, str) else str(a)


def _spec(spec: ir.LayerSpec) -> str:
    name = {"user": spec.name, "input": "input"}.get(spec.kind, spec.name)
    return _call(name, spec.kwargs, spec.args)


def _call(name: str, kwargs: dict, args: list = ()) -> str:
    parts = [_arg(a) for a in args] + [f"{k}={_arg(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


if __name__ == "__main__":
    sys.exit(main())
