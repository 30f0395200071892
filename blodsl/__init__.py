"""blodsl: a language for gradient-based bilevel optimisation.

The front end (parse, check, IR) never imports torch; `blodsl check` is fast.
"""

__version__ = "0.1.0"
