"""Aggregate a sweep into mean ± std tables and a bar plot.

    python -m gnn_attn.analysis.aggregate multirun/<date>/<time>   (or: make table SWEEP=...)

Jobs are grouped by their overrides minus ``seed``; each group reports ``n`` and
mean ± std (sample std over seeds) of ``test/acc``, ``train/acc``, ``val/acc_best``,
``epochs`` and ``fit_seconds``, and the 95 % confidence interval of the mean test
accuracy (Student's t over the seeds). Writes ``results.csv``, ``results.md`` (a paper-style
table — rows = models, columns = datasets, cells ``83.1 ± 0.6`` — when the sweep has that
shape, else one row per group) and ``results.png`` into the sweep dir, and prints the
table; and the pictures of :mod:`gnn_attn.analysis.sweep_pictures` that the jobs allow
(accuracy against a swept number, static attention, attention matrices). Failed and
unfinished jobs are counted and listed, never dropped silently; a sweep still running
aggregates what has finished.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gnn_attn.analysis.jobs import Job, find_jobs, mean_interval, mean_std, split_override
from gnn_attn.analysis.sweep_pictures import sweep_pictures
from gnn_attn.errors import UserError, exits_cleanly

METRICS = (
    "test/acc",
    "test/f1_macro",
    "train/acc",
    "val/acc_best",
    "epochs",
    "fit_seconds",
    "ms_per_epoch",
)


def group_key(job: Job) -> tuple[str, ...]:
    return tuple(o for o in job.overrides if split_override(o)[0] != "seed")


def aggregate(sweep_dir: str | Path) -> dict[str, Any]:
    """Group the jobs of ``sweep_dir``; write results.{csv,md,png}; return the summary."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise UserError(f"sweep dir not found: {sweep}; pass multirun/<date>/<time>")
    jobs = find_jobs(sweep)
    if not jobs:
        raise UserError(f"no Hydra jobs (*/.hydra/overrides.yaml) under {sweep}")
    groups: OrderedDict[tuple[str, ...], list[Job]] = OrderedDict()
    for job in jobs:
        groups.setdefault(group_key(job), []).append(job)
    common = set.intersection(*(set(k) for k in groups)) if len(groups) > 1 else set()
    rows = []
    for key, members in groups.items():
        done = [j for j in members if j.status == "ok"]
        row: dict[str, Any] = {
            "order": min(j.order for j in members),
            "group": ",".join(o for o in key if o not in common) or ",".join(key) or "(all)",
            "n": len(done),
            "failed": sum(j.status == "failed" for j in members),
            "unfinished": sum(j.status == "unfinished" for j in members),
            "interrupted": sum(j.status == "interrupted" for j in members),
        }
        for o in key:
            k, v = split_override(o)
            if k in ("model", "data"):
                row[k] = v
        names = {str(j.metrics.get("dataset")) for j in done if j.metrics.get("dataset")}
        row["dataset"] = ", ".join(sorted(names))
        for m in METRICS:
            values = [float(j.metrics[m]) for j in done if m in j.metrics]
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(values)
            if m == "test/acc":
                row["test/acc_ci95_low"], row["test/acc_ci95_high"] = mean_interval(values)
        rows.append(row)
    problems = [j for j in jobs if j.status != "ok"]
    _write_csv(sweep / "results.csv", rows)
    table = markdown(rows)
    listing = [
        f"- {j.status}: `{j.path.relative_to(sweep)}` ({' '.join(j.overrides)})"
        + (f": {j.error.get('error', '')}" if j.error else "")
        for j in problems
    ]
    summary = f"{len(jobs) - len(problems)} of {len(jobs)} jobs finished"
    text = f"# {sweep}\n\n{table}\n\n{summary}.\n" + (
        "\n".join(["", *listing]) + "\n" if listing else ""
    )
    (sweep / "results.md").write_text(text)
    plot(rows, sweep / "results.png", title=str(sweep.relative_to(sweep.parent.parent)))
    pictures = sweep_pictures(jobs, sweep)
    print(table)
    print(f"\n{summary}; wrote {sweep}/results.{{csv,md,png}}")
    if pictures:
        print("and " + ", ".join(p.name for p in pictures))
    for line in listing:
        print(line, file=sys.stderr)
    return {"rows": rows, "jobs": len(jobs), "problems": [str(j.path) for j in problems]}


def _cell(
    row: dict[str, Any], metric: str = "test/acc", scale: float = 100, digits: int = 1
) -> str:
    """``mean ± std`` of a group (``± –`` for a single run); ``failed``, ``interrupted``
    (stopped by a signal: ``interrupted.json``) or ``unfinished`` (still running, or
    killed) when no job of the group finished."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if math.isnan(mean):
        if row["failed"] and not (row["unfinished"] or row["interrupted"]):
            return "failed"
        return "interrupted" if row["interrupted"] and not row["unfinished"] else "unfinished"
    spread = "–" if row["n"] < 2 else f"{scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {spread}"


def paper_layout(
    rows: list[dict[str, Any]],
) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]] | None:
    """``(models, datasets, row by (model, dataset))`` when every group is exactly one
    model and one dataset (models in their ``order``, datasets as they came); else None."""
    pairs = [(r.get("model"), r.get("data")) for r in rows]
    paper = (
        all(m and d for m, d in pairs)
        and len(set(pairs)) == len(rows)
        and all(
            set(r["group"].split(",")) <= {f"model={r['model']}", f"data={r['data']}"} for r in rows
        )
    )
    if not paper:
        return None
    order = {r["model"]: r["order"] for r in rows}
    models = sorted({m for m, _ in pairs}, key=lambda m: (order[m], m))
    datasets = list(OrderedDict.fromkeys(d for _, d in pairs))
    return models, datasets, {(r["model"], r["data"]): r for r in rows}


def markdown(rows: list[dict[str, Any]]) -> str:
    """Paper layout (models × datasets, :func:`paper_layout`) when the sweep has that
    shape; otherwise one row per group."""
    layout = paper_layout(rows)
    if layout:
        models, datasets, by = layout
        lines = ["| model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
        for m in models:
            cells = [
                (_cell(by[(m, d)]) + f" (n={by[(m, d)]['n']})") if (m, d) in by else "–"
                for d in datasets
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        text = "Test accuracy (%), mean ± std over seeds\n\n" + "\n".join(lines)
        if any(r["n"] > 1 for r in rows):
            text += "\n\n" + _intervals(models, datasets, by)
        return text
    lines = [
        "| group | n | test/acc (%) | 95 % interval | train/acc (%) | val/acc_best (%) "
        "| epochs | fit s | ms/epoch | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            _cell(r),
            _interval(r),
            _cell(r, "train/acc"),
            _cell(r, "val/acc_best"),
            _cell(r, "epochs", 1, 0),
            _cell(r, "fit_seconds", 1, 2),
            _cell(r, "ms_per_epoch", 1, 1),
        ]
        problems = r["failed"] + r["unfinished"] + r["interrupted"]
        lines.append(f"| {r['group']} | {r['n']} | {' | '.join(cells)} | {problems} |")
    return "\n".join(lines)


def _intervals(
    models: list[str], datasets: list[str], by: dict[tuple[str, str], dict[str, Any]]
) -> str:
    """The paper layout's 95 % confidence intervals of the mean test accuracy."""
    lines = [
        "95 % confidence interval of the mean test accuracy (%), Student's t over the seeds",
        "",
        "| model | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for m in models:
        cells = [_interval(by[(m, d)]) if (m, d) in by else "–" for d in datasets]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(row: dict[str, Any]) -> str:
    """``82.9–83.4``: the 95 % interval of the group's mean test accuracy (``–`` for
    fewer than two finished runs)."""
    low, high = row["test/acc_ci95_low"], row["test/acc_ci95_high"]
    return "–" if math.isnan(low) else f"{100 * low:.1f}–{100 * high:.1f}"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(OrderedDict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of mean test accuracy, error bars = std over seeds, the value above each bar.

    Paper layout: one group of bars per dataset, one bar per model, in ``results.md``'s
    order; otherwise one bar per group in the table's order, the dataset(s) in the title.
    The y-axis starts at a floor 5 points below the lowest mean − std (rounded down to
    5), so a 1-point gap is not drawn as a tenfold one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = paper_layout(rows)
    if layout:
        models, datasets, by = layout
        width = 0.8 / len(models)
        slots = [
            (di + (mi - (len(models) - 1) / 2) * width, by.get((m, d)), m)
            for di, d in enumerate(datasets)
            for mi, m in enumerate(models)
        ]
        ticks, labels = list(range(len(datasets))), [by_dataset_name(by, d) for d in datasets]
    else:
        width = 0.7
        slots = [(i, r, r["group"]) for i, r in enumerate(rows)]
        ticks = list(range(len(rows)))
        short = [textwrap.shorten(r["group"].replace(",", ", "), 80) for r in rows]
        labels = ["\n".join(textwrap.wrap(label, 28)) for label in short]
        names = sorted({r["dataset"] for r in rows if r.get("dataset")})
        title = f"{title} — {', '.join(names)}" if names else title
    stats = [
        (100 * r["test/acc_mean"], 100 * r["test/acc_std"]) if r else (math.nan, math.nan)
        for _, r, _ in slots
    ]
    finite = [(m, 0.0 if math.isnan(s) else s) for m, s in stats if not math.isnan(m)]
    floor = max(0.0, 5 * math.floor((min((m - s for m, s in finite), default=5) - 5) / 5))
    top = min(100.0, max((m + s for m, s in finite), default=95) + 4)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(slots) + 2.5), 4.6))
    palette = plt.get_cmap("tab10")
    colors = {m: palette(i % 10) for i, m in enumerate(models)} if layout else {}
    labelled: set[str] = set()
    for (x, r, key), (mean, std) in zip(slots, stats, strict=True):
        if r is None or math.isnan(mean):
            continue
        legend = key if layout and key not in labelled else None
        labelled.add(key)
        ax.bar(x, mean - floor, width * 0.95, bottom=floor, yerr=0 if r["n"] < 2 else std,
               capsize=3, color=colors.get(key, "#4C72B0"), label=legend)  # fmt: skip
        ax.annotate(f"{mean:.1f}", (x, mean + (std if r["n"] > 1 else 0) + 0.3), ha="center",
                    va="bottom", fontsize=7)  # fmt: skip
        ax.annotate(f"n={r['n']}", (x, floor + 0.3), ha="center", va="bottom", fontsize=6,
                    color="white")  # fmt: skip
    ax.set_xticks(ticks, labels, fontsize=8, rotation=0 if layout else 40,
                  ha="center" if layout else "right")  # fmt: skip
    ax.set_ylim(floor, top)
    ax.set_ylabel(f"test accuracy (%), axis from {floor:.0f}")
    if layout:
        ax.legend(fontsize=8, ncols=min(len(models), 4), loc="upper right")
    ax.set_title(f"Test accuracy, mean ± std over seeds — {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def by_dataset_name(by: dict[tuple[str, str], dict[str, Any]], data: str) -> str:
    """A dataset's display name (``CiteSeer``) from its jobs' metrics, else the choice."""
    names = [r["dataset"] for (_, d), r in by.items() if d == data and r.get("dataset")]
    return names[0] if names else data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Aggregate a Hydra sweep directory.")
    parser.add_argument("sweep_dir")
    args = parser.parse_args(argv)
    with exits_cleanly():
        aggregate(args.sweep_dir)


if __name__ == "__main__":
    main()
