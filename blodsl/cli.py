"""The `blodsl` command.

Exit status: 0 valid, 1 invalid program (located messages on stderr),
2 bad command line (missing file, unknown option, a --set that names nothing
to set, or --set values that make a valid program invalid), 3 internal error.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from pathlib import Path

from . import __version__, ir
from .catalogue.params import RUN
from .frontend import check_file
from .semantics.settings import BadSetting, SettingsRejected
from .syntax.ast import dump
from .syntax.diagnostics import BloError, render_all

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
    settings = _Parser(add_help=False)
    settings.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                          help="set a setting as if the program wrote it, e.g. lower.steps=20, CG.k=5, "
                               "upper.optimizer.lr=0.01, upper.scheduler.T_max=50, upper.clip=1 (repeatable)")
    check = commands.add_parser("check", help="check .blo programs and summarise them", parents=[settings])
    check.add_argument("files", nargs="+", metavar="FILE")
    compile_ = commands.add_parser("compile", help="print a stage of the compiler for one program", parents=[settings])
    compile_.add_argument("file", metavar="FILE")
    compile_.add_argument("--emit", choices=("ast", "ir", "plan", "py"), default=None,
                          help="ast: the syntax tree; ir: the checked program as JSON (the default); plan: what "
                               "the pipeline lowers to; py: the generated Python module (the default with -o)")
    compile_.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead of printing")
    run = commands.add_parser("run", help="train a program and report its metrics", parents=[settings])
    run.add_argument("file", metavar="FILE", nargs="?", help="the program (with --resume: the run's own by default)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    run.add_argument("--checkpoint-every", type=_run_setting("checkpoint_every", int), metavar="N",
                     help="a checkpoint every N outer steps (default: after every minute of training)")
    run.add_argument("--tensorboard", nargs="?", const="", metavar="DIR",
                     help="also write the scalars as TensorBoard events (default DIR: the run folder's tensorboard/)")
    # these set the run block's settings, checked by its rows (and recorded as --set values are)
    run.add_argument("--outer-steps", type=_run_setting("outer_steps", int), metavar="N",
                     help="outer steps (default: the program's)")
    run.add_argument("--device", type=_run_setting("device", str),
                     help="cpu, cuda or cuda:N (default: the program's, else CUDA when present)")
    run.add_argument("--dtype", type=_run_setting("dtype", str), help="float32 or float64")
    run.add_argument("--seed", type=_run_setting("seed", int))
    run.add_argument("--no-compile", action="store_true", help="run the same code eagerly (no torch.compile)")
    run.add_argument("--no-baseline", action="store_true", help="skip the program's baseline comparison")
    run.add_argument("--json", action="store_true", help="print the final metrics as one JSON object on stdout")
    run.add_argument("--out", metavar="DIR", help="the run folder (default: a new runs/PROGRAM-NNN)")
    fmt = commands.add_parser("fmt", help="rewrite .blo files in the canonical layout")
    fmt.add_argument("files", nargs="+", metavar="FILE")
    fmt.add_argument("--check", action="store_true", help="change nothing; exit 1 listing the files that would change")
    operators = commands.add_parser("operators", help="the pipeline operators' cheat sheet, or one operator's card")
    operators.add_argument("name", nargs="?", metavar="NAME")
    commands.add_parser("lsp", help="the language server, over stdio (needs pygls: pip install \"blodsl[lsp]\")")
    plot = commands.add_parser("plot", help="overlay the curves of run folders in one picture")
    plot.add_argument("runs", nargs="+", metavar="RUN")
    plot.add_argument("-o", "--output", metavar="OUT", default="runs.png", help="the picture (default: runs.png)")
    return parser


def _run_setting(name: str, kind: type):
    """An option that sets the run block's `name`, checked by that setting's row."""

    def read(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = text
        problem = RUN[name].problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{name} {problem}, not {text!r}")
        return value

    return read


FLAGS = ("outer_steps", "device", "dtype", "seed", "checkpoint_every")   # `blodsl run --NAME` sets run.NAME


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:   # the reader of the output went away: `blodsl operators | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # so that the flush at exit is quiet
        return 141


def _main(argv: list[str] | None) -> int:
    args = _arguments().parse_args(argv)
    if args.command is None:
        _arguments().print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "run":
        return _run(args)
    if args.command == "plot":
        return _plot(args)
    if args.command == "fmt":
        from .tooling.format import format_files

        return format_files(args.files, check=args.check)
    if args.command == "operators":
        from .tooling.cheatsheet import operators_main

        return operators_main(args.name)
    if args.command == "lsp":
        return _lsp()
    status = EXIT_OK
    for path in args.files if args.command == "check" else [args.file]:
        checked = _checked(path, args.settings)
        if isinstance(checked, int):     # reported; check the other files (a bug in blodsl stops it)
            status = max(status, checked)
            if checked == EXIT_INTERNAL:
                return checked
            continue
        if args.command == "check":
            print(summary(checked.program))
        else:
            status = _compile(args, checked) or status
    return status


def _checked(path: str, settings: list[str]):
    """The checked program, its warnings printed; or the exit status, its errors printed."""
    try:
        checked = check_file(path, settings)
    except OSError as e:
        print(f"blodsl: error: cannot read '{path}': {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except BadSetting as e:
        print(f"blodsl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BloError as e:
        return _invalid(e, path)
    except Exception as e:  # a bug in blodsl, not in the user's program
        if os.environ.get("BLODSL_DEBUG"):
            raise
        print(f"blodsl: internal error while checking '{path}': {type(e).__name__}: {e}\n"
              "Please report it with the program; BLODSL_DEBUG=1 shows the traceback.", file=sys.stderr)
        return EXIT_INTERNAL
    if checked.warnings:
        print(render_all(checked.warnings, checked.source), file=sys.stderr)
    return checked


def _invalid(e: BloError, path: str) -> int:
    """Prints every located message and how many errors there were; the exit status they call for."""
    print(render_all(e.diagnostics, e.source), file=sys.stderr)
    errors = sum(d.severity == "error" for d in e.diagnostics)
    cause = " with the --set values (it checks without them)" if isinstance(e, SettingsRejected) else ""
    print(f"{path}: {errors} error{'s' if errors != 1 else ''}{cause}", file=sys.stderr)
    return EXIT_USAGE if isinstance(e, SettingsRejected) else EXIT_INVALID


def _compile(args, checked) -> int:
    emit = args.emit or ("py" if args.output else "ir")
    if emit == "ast":
        text = dump(checked.tree) + "\n"
    elif emit == "plan":
        from .lowering.plan import plan_of

        text = f"{plan_of(checked.program)}\n"
    elif emit == "ir":
        text = checked.program.model_dump_json(indent=2) + "\n"
    else:
        from .lowering.codegen import generate

        text = generate(checked.program, Path(args.output).parent if args.output else None)
    if not args.output:
        print(text, end="")
        return EXIT_OK
    out = Path(args.output)
    if out.exists() and (out.is_dir() or emit != "py" or not _is_generated(out)):
        print(f"blodsl: error: '{out}' exists and was not written by blodsl; not overwriting it", file=sys.stderr)
        return EXIT_USAGE
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as e:
        print(f"blodsl: error: cannot write '{out}': {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def _is_generated(path: Path) -> bool:
    try:
        head = path.read_text(errors="replace")[:300]
    except OSError:
        return False
    return head.startswith('"""') and "compiled by blodsl" in head.splitlines()[0]


def _usage(message: str) -> int:
    print(f"blodsl: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# settings a resumed run keeps: with others, it would not continue the run it resumes
KEPT_ON_RESUME = ("run.seed", "run.dtype")


def _run(args) -> int:
    from .runs.folder import NotARunFolder, RunFolder, program_hash

    settings = args.settings + [f"run.{name}={getattr(args, name)}" for name in FLAGS if getattr(args, name) is not None]
    resume, path, recorded = None, args.file, {}
    if args.resume:
        if args.out:
            return _usage("--resume continues a run in its own folder; --out does not go with it")
        try:
            resume = RunFolder.open(Path(args.resume))
        except NotARunFolder as e:
            return _usage(str(e))
        recorded = resume.summary()
        changed = [s for s in settings if s.partition("=")[0].strip() in KEPT_ON_RESUME]
        if changed:
            return _usage(f"a resumed run keeps its seed and dtype ({', '.join(changed)} would start another run); "
                          "start a new run instead")
        new_settings, settings = settings, recorded["settings"] + settings
        path = path or _as_given(recorded)
    elif path is None:
        return _usage("run needs a program (FILE), or --resume DIR")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _usage(f"'{out}' already exists and is not empty; choose a new run folder")
    tensorboard = None
    if args.tensorboard is not None:
        if importlib.util.find_spec("tensorboard") is None:
            return _usage("--tensorboard needs the tensorboard package: pip install tensorboard")
        tensorboard = args.tensorboard
    checked = _checked(path, settings)
    if isinstance(checked, int):
        return checked
    program = checked.program
    if program.run.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return _usage(f"device {program.run.device}: this machine has no CUDA GPU; use --device cpu")
    if resume is not None:
        if program_hash(checked.source.text) != recorded["program_sha256"]:
            return _usage(f"'{path}' has changed since the run in {resume.path} started; a run resumes the program "
                          "it began with: restore it, or start a new run")
        refused = _schedule_kept(program, new_settings)
        if refused:
            return _usage(refused)
    return _train(args, program, checked.source, settings, out, resume, tensorboard)


def _as_given(recorded: dict) -> str:
    """The resumed program's path as the run was given it, where that still names the same file."""
    given = Path(recorded["program"])
    return str(given) if given.resolve() == Path(recorded["program_file"]) else recorded["program_file"]


def _schedule_kept(program: ir.Program, new_settings: list[str]) -> str | None:
    """A learning-rate schedule goes on as saved: settings that would change it are refused."""
    schedule = program.upper.scheduler
    if schedule is None:
        return None
    keys = [s.partition("=")[0].strip() for s in new_settings]
    touched = [k for k in keys if k.startswith(("upper.optimizer", "upper.scheduler"))
               or (k == "run.outer_steps" and schedule.name == "OneCycleLR")]
    if not touched:
        return None
    return (f"the upper learning rate follows {schedule.name}, which a resumed run takes up as saved: "
            f"{', '.join(touched)} would not change it; start a new run to change the schedule")


def _train(args, program, source, settings, out, resume, tensorboard) -> int:
    from .runs.folder import NotARunFolder
    from .runs.loop import Interrupted, ResumeRefused, run
    from .runtime import BuildError
    from .runtime.data import DataError
    from .runtime.operators import RunError

    try:
        run(program, source, settings, compile=not args.no_compile, out=out, as_json=args.json,
            baseline=not args.no_baseline, resume=resume, tensorboard=tensorboard)
    except BloError as e:   # an objective or metric that cannot be computed, found before the first step
        return _invalid(e, program.path)
    except (ResumeRefused, NotARunFolder) as e:
        return _usage(str(e))
    except (BuildError, DataError, RunError) as e:
        line = _lines(program).get(getattr(e, "where", None), (None,))[0] or _declared_at(e)
        notes = "".join(f"\n  {note}" for note in getattr(e, "__notes__", ()))
        print(f"{program.path}{f':{line}' if line else ''}: error: {e}{notes}", file=sys.stderr)
        return EXIT_INVALID
    except Interrupted as e:
        print(f"\ninterrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted before training began (or during the baseline, after the last checkpoint)",
              file=sys.stderr)
        return 130
    except Exception as e:
        where = _blame(e, program)
        if os.environ.get("BLODSL_DEBUG"):
            raise
        if where is None:
            print(f"blodsl: internal error while running '{program.path}': {type(e).__name__}: {e}\n"
                  "Please report it with the program; BLODSL_DEBUG=1 shows the traceback.", file=sys.stderr)
            return EXIT_INTERNAL
        print(f"{program.path}:{where[0]}: error: {where[1]} failed while running: {type(e).__name__}: {e}",
              file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _lsp() -> int:
    try:
        from .tooling.lsp import serve
    except ImportError as e:
        if (e.name or "").partition(".")[0] not in ("pygls", "lsprotocol"):
            raise
        return _usage('the language server needs pygls: pip install "blodsl[lsp]"')
    serve()
    return EXIT_OK


def _plot(args) -> int:
    from .runs.folder import NotARunFolder, RunFolder
    from .runs.plots import plot_runs

    try:
        folders = [RunFolder.open(Path(run)) for run in args.runs]
        out = plot_runs(folders, Path(args.output))
    except NotARunFolder as e:
        return _usage(str(e))
    except OSError as e:
        return _usage(f"cannot write '{args.output}': {e.strerror or e}")
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def _lines(program: ir.Program) -> dict[str, tuple[int, str]]:
    """Generated method -> (.blo line, what it is)."""
    lines = {"hypergradient": (program.hypergradient.line, "the pipeline"),
             "upper_optimizer": (program.upper.optimizer.line, "the upper optimizer"),
             "upper_objective": (program.upper.objective.line, "the upper objective"),
             "lower_objective": (program.lower.objective.line, "the lower objective")}
    lines.update({f"metric_{m.name}": (m.line, f"metric {m.name}") for m in program.run.metrics})
    if program.upper.scheduler is not None:
        lines["scheduler"] = (program.upper.scheduler.line, "the upper scheduler")
    return lines


def _blame(error: BaseException, program: ir.Program) -> tuple[int, str] | None:
    """The .blo line of the objective or metric whose generated code raised, if any."""
    lines = _lines(program)
    tb, found = error.__traceback__, None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.startswith("<blodsl:") and code.co_name in lines:
            found = lines[code.co_name]
        tb = tb.tb_next
    return found


def _declared_at(error: BaseException) -> int | None:
    """The .blo line of the declaration whose generated code raised (a dataset being loaded, a
    model sized by the data): each generated line ends with a `# prog.blo:LINE` comment."""
    import linecache

    tb, found = error.__traceback__, None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith("<blodsl:"):
            written = re.search(r"# \S+:(\d+)$", linecache.getline(filename, tb.tb_lineno).rstrip())
            found = int(written[1]) if written else found
        tb = tb.tb_next
    return found


def summary(program: ir.Program) -> str:
    """A few lines a user can check their program against."""
    data = ", ".join(f"{d.name} ({d.source}{'' if d.split is None else f' part {d.split + 1}'}"
                     f"{'' if d.batch is None else f', minibatches of {d.batch}'})" for d in program.datasets)
    lines = [f"{program.path}: ok"]
    if data:
        lines.append(f"  data      {data}")
    for level in (program.upper, program.lower):
        decls = [f"var {v.name}" + (ir.written(v.shape) if v.shape else " (scalar)")
                 for v in level.variables]
        decls += [f"model {m.name} = {ir.written(m.spec)}" for m in level.models]
        how = ir.call_text(level.optimizer.name, [], ir.written_settings(level.optimizer))
        if level.scheduler is not None:
            how += f", scheduled by {ir.call_text(level.scheduler.name, [], level.scheduler.args)}"
        if level.clip is not None:
            how += f", hypergradient clipped to norm {level.clip.norm:g}"
        if level.level == "lower":
            start = f"from {level.start.source}" if level.start.mode == "from" else level.start.mode
            how += f", {level.steps} step{'s' if level.steps != 1 else ''} per outer step, {start} start"
        lines.append(f"  {level.level:<9} {'; '.join(decls)}")
        lines.append(f"  {'':<9} {how}")
    lines.append(f"  pipeline  {program.hypergradient.text}")
    run = program.run
    metrics = ", ".join(m.name for m in run.metrics) or "none"
    lines.append(f"  run       {run.outer_steps} outer steps, metrics {metrics} every {run.eval_every}; "
                 f"seed {run.seed}, device {run.device}, {run.dtype}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
