"""blodsl's runtime: what generated programs import. Imports torch."""

from . import data, functions, inner, layers, trees
from .pipeline import MetricSpec, Pipeline
from .problem import Bound, BuildError, Init, Level, Like, Op, Problem, program_folder, source_of

__all__ = ["data", "functions", "inner", "layers", "trees", "MetricSpec", "Pipeline", "Bound", "BuildError", "Init",
           "Level", "Like", "Op", "Problem", "program_folder", "source_of"]
