"""Pictures of runs: a run's curves (curves.png in its folder, written at the end of a run)
and `blodsl plot RUN [RUN...]`, several runs overlaid, the legend naming what differs."""

from __future__ import annotations

from pathlib import Path

from .folder import CURVES, RunFolder

def series(folder: RunFolder) -> dict[str, tuple[list[int], list[float]]]:
    """Each scalar quantity of the metrics log (objectives, metrics) as (steps, values);
    a list-valued metric becomes one series per entry."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for record in folder.records():
        for key, value in record.items():
            if key in ("step", "time"):
                continue
            entries = ({f"{key}[{i}]": v for i, v in enumerate(value)} if isinstance(value, list) else {key: value})
            for name, v in entries.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    steps, values = out.setdefault(name, ([], []))
                    steps.append(record["step"])
                    values.append(float(v))
    return out


def effective_settings(summary: dict) -> dict[str, str]:
    """Each setting's value as the run last took it (a resume may set a key again)."""
    return dict(s.partition("=")[::2] for s in summary.get("settings", []))


def labels(folders: list[RunFolder]) -> list[str]:
    """What differs between the runs' records, as one label per run (the folder's name when
    nothing recorded differs)."""
    summaries = [f.summary() for f in folders]
    settings = [effective_settings(s) for s in summaries]
    keys = sorted({k for ss in settings for k in ss if len({repr(s.get(k)) for s in settings}) > 1})
    facts = {"program": "program_sha256", "pipeline": "pipeline", "dtype": "dtype", "device": "device"}
    differing = [name for name, key in facts.items() if len({s.get(key) for s in summaries}) > 1]
    seed_differs = len({s.get("seed") for s in summaries}) > 1 and "run.seed" not in keys
    out = []
    for folder, summary, mine in zip(folders, summaries, settings):
        parts = [Path(summary["program"]).name if name == "program" else
                 summary[name] if name == "pipeline" else f"{name} {summary[name]}" for name in differing]
        parts += [f"seed {summary['seed']}"] if seed_differs else []
        parts += [" ".join(f"{k}={mine[k]}" for k in keys if k in mine) or "no other --set"] if keys else []
        out.append(", ".join(parts) or folder.path.name)
    return out


def _figure(names: list[str]):
    import matplotlib

    matplotlib.use("Agg")   # files only: no display is needed or used
    import matplotlib.pyplot as plt

    columns = min(3, len(names)) or 1
    rows = -(-len(names) // columns) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    return plt, fig, dict(zip(names, axes.flat))


def plot_runs(folders: list[RunFolder], out: Path) -> Path:
    """Every quantity of the runs, one panel each, one line per run; each run's baseline (if it
    has one) as a dashed line of its colour."""
    all_series = [series(f) for f in folders]
    names = sorted({name for s in all_series for name in s})
    plt, fig, axes = _figure(names)
    for i, (folder, label, data) in enumerate(zip(folders, labels(folders), all_series)):
        colour = f"C{i}"
        baseline = folder.summary().get("baseline") or {}
        for name, ax in axes.items():
            if name in data:
                ax.plot(*data[name], color=colour, label=label)
            value = baseline.get(name)
            if isinstance(value, (int, float)):
                ax.axhline(value, color=colour, linestyle="--", linewidth=1, label=f"{label} baseline")
    for name, ax in axes.items():
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("outer step")
        ax.grid(alpha=0.3)
    handles, legend = [], []
    for ax in axes.values():     # every distinct line once, whichever panel has it
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if text not in legend:
                handles.append(handle)
                legend.append(text)
    bottom = 0.0
    if len(legend) > 1:
        fig.legend(handles, legend, loc="lower center", ncol=min(len(legend), 2), fontsize=8, frameon=False)
        bottom = min(0.4, 0.05 * (len(legend) + 1) / 2 * 3 / max(1, len(axes) // 3 + 1))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_curves(folder: RunFolder) -> Path | None:
    """The run's own picture, if it has logged a step."""
    return plot_runs([folder], folder.file(CURVES)) if folder.records() else None
