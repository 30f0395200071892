"""Tables (markdown) and a plot (PNG) from the harness's results, and the targets checked."""

from __future__ import annotations

from pathlib import Path

ORDER = ("blodsl", "reference", "BOAT", "higher", "TorchOpt", "Betty")
PEERS = ("BOAT", "higher", "TorchOpt", "Betty")


def cell_status(result: dict) -> str:
    if "ms" in result:
        accuracy = (f", test accuracy {result['accuracy']:.4f}" if "accuracy" in result
                    else f", {result['accuracy_failed']}" if "accuracy_failed" in result else "")
        return f"{result['ms']:.2f} ms/step{accuracy}"
    return result.get("unsupported") or result.get("failed") or "no figure"


def _accuracy_case(case) -> bool:
    """A case run for a fixed number of outer steps and scored (the first-order suite)."""
    return bool(case["case"].get("outer_steps"))


def _impls(data) -> list[str]:
    seen = {impl for c in data["cases"] for impl in c["results"]}
    return [i for i in ORDER if i in seen]


def _ms(case, impl):
    return case["results"].get(impl, {}).get("ms")


def _note(notes: list[str], why: str) -> str:
    """The footnote marker for `why`, numbered in order of first use."""
    if why not in notes:
        notes.append(why)
    return f"[{notes.index(why) + 1}]"


def _time_cell(case, impl, notes) -> str:
    r = case["results"].get(impl, {})
    if "ms" not in r:
        return "n/a " + _note(notes, r.get("unsupported") or r.get("failed") or "not run")
    mine = _ms(case, "blodsl")
    if impl == "blodsl" or mine is None:
        return f"{r['ms']:.2f}"
    return f"{r['ms']:.2f} ({r['ms'] / mine:.1f}x)"


def _accuracy_cell(case, impl, notes) -> str:
    """Time per step, then the test accuracy; a departure from the paper as a footnote."""
    r = case["results"].get(impl, {})
    mine = _ms(case, "blodsl")
    if "ms" not in r:   # a crash is not the same as a method the library does not have
        cell = ("failed " if "failed" in r else "n/a ") + _note(notes, r.get("failed") or r.get("unsupported")
                                                                  or "not run")
    else:
        cell = f"{r['ms']:.2f} ms" + (f" ({r['ms'] / mine:.1f}x)" if impl != "blodsl" and mine else "")
        if "accuracy" in r:
            cell += f", **{r['accuracy']:.4f}**"
            if "flagged_f1" in r:
                cell += f", F1 {r['flagged_f1']:.3f}"
        elif "accuracy_failed" in r:
            cell += ", failed " + _note(notes, r["accuracy_failed"])
    if r.get("departs"):
        cell += " " + _note(notes, r["departs"])
    return cell


def first_order_table(data: dict) -> list[str]:
    """The cases run for a fixed number of outer steps: time per step and test accuracy."""
    cases = [c for c in data["cases"] if _accuracy_case(c)]
    if not cases:
        return []
    impls = _impls(data)
    steps = sorted({c["case"]["outer_steps"] for c in cases})
    notes: list[str] = []
    lines = [f"### First-order methods and DM on problem 1: time per outer step and test accuracy after "
             f"{' or '.join(map(str, steps))} outer steps", "",
             "Each cell: ms per outer step (median after warm-up; in brackets: how many times blodsl's time), "
             "then in bold the lower model's accuracy on the clean test split after the last outer step, "
             "then the F1 score of the samples whose learned weight sigmoid(w) fell below 1/2 against "
             "those whose label was replaced (how well the method found the noise). "
             "Same data, zero start for the lower model and its copies, same learning rates; each "
             "method's own defaults in each library except where a row's note says otherwise.", "",
             "| case | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    for case in cases:
        name = case["name"] + (" " + _note(notes, case["note"]) if case.get("note") else "")
        lines.append(f"| {name} | " + " | ".join(_accuracy_cell(case, i, notes) for i in impls) + " |")
    lines += [""] + [f"[{n}] {why}" for n, why in enumerate(notes, 1)] + [""]
    if data.get("baselines"):
        reached = "; ".join(f"{b['accuracy']:.4f} after {b['outer_steps']} outer steps of {b['steps']} inner "
                            f"step{'s' if b['steps'] > 1 else ''}" for b in data["baselines"])
        lines += [f"Without cleaning (x held at 0, the lower model trained by plain SGD at the inner lr on the noisy "
                  f"labels) the test accuracy is {reached}. It falls the longer the lower model fits the noisy "
                  "labels, so a method whose lower model moves less (fewer or smaller steps) can score higher "
                  "without cleaning better.", ""]
    return lines


def markdown(data: dict) -> str:
    impls = _impls(data)
    m = data["machine"]
    lines = [f"Suite `{data['suite']}` on {data['device']}: {m.get('gpu') or m['cpu']}, {m['cores']} cores, "
             f"{data.get('threads', '?')} thread(s) per process, torch {m['torch']}, Python {m['python']}; peers: "
             + ", ".join(f"{k} {m[k]}" for k in ("boat-torch", "higher", "torchopt", "betty-ml")) + ".", ""]

    notes: list[str] = []
    timed = [c for c in data["cases"] if not _accuracy_case(c)]
    if timed:
        lines += ["### Time per outer step (ms, median after warm-up; in brackets: how many times blodsl's time)", "",
                  "| case | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
        for case in timed:
            lines.append(f"| {case['name']} | " + " | ".join(_time_cell(case, i, notes) for i in impls) + " |")
        lines += [""] + [f"[{n}] {why}" for n, why in enumerate(notes, 1)] + [""]
    lines += first_order_table(data)

    lines += ["### Peak memory during a step (MB above the resident data) and hypergradient difference", "",
              "Relative difference ||g - g_blodsl|| / ||g_blodsl|| of the first outer step's hypergradient "
              "(for a first-order method or DM: the direction it hands the upper optimiser).", "",
              "| case | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    for case in data["cases"]:
        cells = []
        for impl in impls:
            r = case["results"].get(impl, {})
            if "peak_mb" not in r:
                cells.append("")
                continue
            diff = ""
            if impl != "blodsl" and "rel_diff" in r:
                diff = f", diff {r['rel_diff']:.1e}"
            elif impl != "blodsl" and "grad_norm" in r:     # blodsl's is zero: no ratio to give
                diff = f", norm {r['grad_norm']:.1e} where blodsl's is 0"
            cells.append(f"{r['peak_mb']:.1f} MB{diff}")
        lines.append(f"| {case['name']} | " + " | ".join(cells) + " |")

    compiled = [i for i in ("blodsl", "reference") if i in impls]
    lines += ["", "### Start-up: process start to the first outer step done (s)", "",
              "| case | " + " | ".join(f"{i} cold | {i} warm" for i in compiled) + " |",
              "|---" * (2 * len(compiled) + 1) + "|"]
    for case in data["cases"]:
        cells = []
        for impl in compiled:
            r = case["results"].get(impl, {})
            cells += [f"{r['cold_start_s']:.1f}" if "cold_start_s" in r else "",
                      f"{r['warm_start_s']:.1f}" if r.get("warm_start_s") else ""]
        lines.append(f"| {case['name']} | " + " | ".join(cells) + " |")
    lines += ["", "### Targets", "", *targets(data), ""]
    return "\n".join(lines)


def targets(data: dict) -> list[str]:
    """Each target of the benchmark, met or missed, with the figure that decides it."""
    out = []

    def check(name, ok, figure):
        out.append(f"- {'met' if ok else 'MISSED'}: {name}: {figure}")

    speedups = []   # (peer time / blodsl time, case, peer)
    for case in data["cases"]:
        mine = _ms(case, "blodsl")
        for peer in PEERS:
            theirs = _ms(case, peer)
            if mine and theirs:
                speedups.append((theirs / mine, case["name"], peer))
    if speedups:
        worst = min(speedups)
        check("faster than every peer on every case it runs", worst[0] > 1,
              f"smallest speed-up {worst[0]:.2f}x ({worst[2]}, {worst[1]})")
    for problems, factor, label in ((("l2_logreg", "maml"), 5.0, "at least 5x the fastest peer on problems 2 and 3"),):
        ratios = []
        for case in data["cases"]:
            if case["case"]["problem"] in problems and _ms(case, "blodsl"):
                peer_times = [_ms(case, p) for p in PEERS if _ms(case, p)]
                if peer_times:
                    ratios.append((min(peer_times) / _ms(case, "blodsl"), case["name"]))
        if ratios:
            worst = min(ratios)
            check(label, worst[0] >= factor, f"smallest {worst[0]:.1f}x ({worst[1]})")
    boat = [(_ms(c, "BOAT") / _ms(c, "blodsl"), c["name"]) for c in data["cases"]
            if c["case"]["problem"] == "hyper_cleaning" and _ms(c, "BOAT") and _ms(c, "blodsl")]
    if boat:
        worst = min(boat)
        check("at least 1.8x BOAT on problem 1", worst[0] >= 1.8, f"smallest {worst[0]:.2f}x ({worst[1]})")
    ref = [(_ms(c, "blodsl") / _ms(c, "reference"), c["name"]) for c in data["cases"]
           if _ms(c, "reference") and _ms(c, "blodsl")]
    if ref:
        worst = max(ref)
        check("within 1.15x of the hand-written reference", worst[0] <= 1.15,
              f"largest blodsl/reference {worst[0]:.2f}x ({worst[1]})")
    cold = [(c["results"]["blodsl"]["cold_start_s"], c["name"]) for c in data["cases"]
            if "cold_start_s" in c["results"].get("blodsl", {})]
    if cold:
        worst = max(cold)
        check("cold start at most 15 s", worst[0] <= 15, f"largest {worst[0]:.1f} s ({worst[1]})")
    warm = [(c["results"]["blodsl"]["warm_start_s"], c["name"]) for c in data["cases"]
            if c["results"].get("blodsl", {}).get("warm_start_s")]
    if warm:
        worst = max(warm)
        check("warm start at most 3 s", worst[0] <= 3, f"largest {worst[0]:.1f} s ({worst[1]})")
    memory = [c for c in data["cases"] if c["case"]["problem"] == "rad_memory"]
    if memory:
        longest = max(memory, key=lambda c: c["case"]["steps"])
        mine = longest["results"].get("blodsl", {}).get("peak_mb")
        theirs = longest["results"].get("higher", {}).get("peak_mb")
        if mine is not None and theirs:
            check("RAD's peak memory at most a quarter of higher's", mine <= theirs / 4,
                  f"{mine:.1f} MB vs {theirs:.1f} MB at T = {longest['case']['steps']} ({theirs / max(mine, 1e-9):.0f}x less)")
    return out


def plot(data: dict, path: Path) -> None:
    """Time per step for every case (log scale); RAD's time and memory as T grows; the test
    accuracy of the cases that have one. A panel without figures is left out."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    impls = _impls(data)
    cases = [c for c in data["cases"] if c["case"]["problem"] != "rad_memory"]
    memory = [c for c in data["cases"] if c["case"]["problem"] == "rad_memory"]
    scored = [c for c in cases if _accuracy_case(c)]
    ratios = [3] + [1, 1] * bool(memory) + [2] * bool(scored)
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * sum(ratios) / 2, 5.5), gridspec_kw={"width_ratios": ratios},
                             squeeze=False)
    axes = list(axes[0])
    _bars(axes.pop(0), impls, cases, _ms, "ms per outer step", log=True)
    if memory:
        _growth(axes.pop(0), axes.pop(0), impls, memory)
    if scored:
        _bars(axes.pop(0), impls, scored, lambda c, i: c["results"].get(i, {}).get("accuracy"),
              f"test accuracy after {scored[0]['case']['outer_steps']} outer steps", log=False)
    fig.suptitle(f"blodsl benchmark, {data['suite']} suite, {data['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, impls, cases, value, label: str, log: bool) -> None:
    """One bar per (case, implementation) that has a value."""
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        xs = [i + k * width for i, c in enumerate(cases) if value(c, impl)]
        ax.bar(xs, [value(c, impl) for c in cases if value(c, impl)], width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], [c["name"] for c in cases], rotation=40,
                  ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(label)
    ax.legend(fontsize=8)


def _growth(time_ax, memory_ax, impls, memory) -> None:
    """RAD's time per step and peak memory against the number of inner steps."""
    for impl in impls:
        rows = [(c["case"]["steps"], c["results"].get(impl, {})) for c in memory]
        rows = [(t, r) for t, r in rows if "ms" in r]
        if rows:
            time_ax.plot([t for t, _ in rows], [r["ms"] for _, r in rows], "o-", label=impl)
            memory_ax.plot([t for t, _ in rows], [max(r["peak_mb"], 0.1) for _, r in rows], "o-", label=impl)
    for ax, label in ((time_ax, "ms per outer step"), (memory_ax, "peak MB during a step")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("inner steps T (RAD, hyper-cleaning)")
        ax.set_ylabel(label)
        if ax.get_lines():
            ax.legend(fontsize=8)
