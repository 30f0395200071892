"""The blocks a program is made of and the settings each one holds."""

from ..catalogue.params import RUN

BLOCKS = ("data", "upper", "lower", "run")
LEVEL_SETTINGS = {"upper": ("objective", "optimizer", "scheduler", "clip"),
                  "lower": ("objective", "optimizer", "steps", "start")}
RUN_SETTINGS = (*RUN, "baseline")
TOP_SETTINGS = ("hypergradient",)
