"""The blocks a program is made of and the settings each one holds."""

BLOCKS = ("data", "upper", "lower", "run")
LEVEL_SETTINGS = {"upper": ("objective", "optimizer"),
                  "lower": ("objective", "optimizer", "steps", "start")}
RUN_SETTINGS = ("outer_steps", "eval_every", "seed", "device", "dtype", "baseline")
TOP_SETTINGS = ("hypergradient",)
