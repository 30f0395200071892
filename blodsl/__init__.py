"""blodsl: a language for gradient-based bilevel optimisation.

The front end (parse, check, IR) never imports torch; `blodsl check` is fast.
`blodsl.compile(...)` builds a runnable pipeline (and imports torch then).
"""

__version__ = "0.1.0"

from .syntax.diagnostics import BloError  # noqa: E402 - an invalid program, with located messages

__all__ = ["BloError", "compile"]


def compile(path_or_source, bindings=None, device=None, compile=True, dtype=None, seed=None,  # noqa: A001
            settings=None):
    """Checks, generates and builds a program: see blodsl.api.compile."""
    from .api import compile as build

    return build(path_or_source, bindings=bindings, device=device, compile=compile, dtype=dtype, seed=seed,
                 settings=settings)
