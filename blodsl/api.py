"""Embedding: `blodsl.compile(...)` turns a program into a runnable Pipeline."""

from __future__ import annotations

import builtins
import itertools
import linecache
import sys
import types
from pathlib import Path

from . import ir
from .frontend import Checked, check_file, check_source
from .lowering.codegen import generate
from .syntax.source import Source

_counter = itertools.count()


def load_module(code: str, program: ir.Program) -> types.ModuleType:
    """Executes generated code as a module whose source tracebacks and inspect can show."""
    name = f"blodsl_generated_{Path(program.path).stem}_{next(_counter)}"
    filename = f"<blodsl: {program.path}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    exec(builtins.compile(code, filename, "exec"), module.__dict__)
    return module


def checked_program(path_or_source: str | Path, settings=None) -> ir.Program:
    """A .blo file (a Path, or a string naming an existing file) or the text of a program,
    with `settings` applied as `--set` applies them."""
    return _checked(path_or_source, settings).program


def _checked(path_or_source: str | Path, settings) -> Checked:
    text = str(path_or_source)
    if isinstance(path_or_source, Path) or ("\n" not in text and (text.endswith(".blo") or Path(text).is_file())):
        return check_file(path_or_source, settings)
    return check_source(Source("<program>", text), Path.cwd(), settings)


def compile(path_or_source, bindings: dict | None = None, device: str | None = None, compile: bool = True,
            dtype: str | None = None, seed: int | None = None, settings=None):  # noqa: A001 - the public name
    """Checks, generates and builds a program; returns its runtime Pipeline.

    `settings` changes the program as `blodsl run --set` does: {"CG.k": 3, "lower.start": "reinit"}
    (a str value is read as on the command line) or ["CG.k=3", ...].
    Raises blodsl.BloError (with located messages) for an invalid program, settings that make
    it invalid, or an objective or metric that cannot be computed on the data (checked once,
    before any step); ValueError for a setting that names nothing to set, and
    blodsl.runtime.BuildError for a binding or file that does not fit it.
    """
    run = {f"run.{name}": value for name, value in (("device", device), ("dtype", dtype), ("seed", seed))
           if value is not None}    # checked as the run block's settings are
    if run:
        settings = ({**settings, **run} if isinstance(settings, dict)
                    else [*(settings or []), *(f"{k}={v}" for k, v in run.items())])
    from .runtime import shapes

    checked = _checked(path_or_source, settings)
    module = load_module(generate(checked.program), checked.program)
    pipeline = module.build(bindings=bindings, compile=compile)
    shapes.check(checked.program, checked.source, pipeline)
    return pipeline
