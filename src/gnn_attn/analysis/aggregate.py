"""Aggregate a sweep into mean ± std tables and a bar plot.

    python -m gnn_attn.analysis.aggregate multirun/<date>/<time>   (or: make table SWEEP=...)

Jobs are grouped by their overrides minus ``seed``; each group reports ``n`` and
mean ± std (sample std over seeds) of ``test/acc``, ``val/acc_best``, ``epochs`` and
``fit_seconds``. Writes ``results.csv``, ``results.md`` (a paper-style table — rows =
models, columns = datasets, cells ``83.1 ± 0.6`` — when the sweep has that shape, else one
row per group) and ``results.png`` into the sweep dir, and prints the table. Failed and
unfinished jobs are counted and listed, never dropped silently; a sweep still running
aggregates what has finished.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gnn_attn.analysis.jobs import Job, find_jobs
from gnn_attn.errors import UserError, exits_cleanly

METRICS = ("test/acc", "val/acc_best", "epochs", "fit_seconds", "ms_per_epoch")


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def group_key(job: Job) -> tuple[str, ...]:
    return tuple(o for o in job.overrides if _split(o)[0] != "seed")


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


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
        }
        for o in key:
            k, v = _split(o)
            if k in ("model", "data"):
                row[k] = v
        for m in METRICS:
            values = [float(j.metrics[m]) for j in done if m in j.metrics]
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(values)
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
    print(table)
    print(f"\n{summary}; wrote {sweep}/results.{{csv,md,png}}")
    for line in listing:
        print(line, file=sys.stderr)
    return {"rows": rows, "jobs": len(jobs), "problems": [str(j.path) for j in problems]}


def _cell(
    row: dict[str, Any], metric: str = "test/acc", scale: float = 100, digits: int = 1
) -> str:
    """``mean ± std`` of a group (``± –`` for a single run); ``failed`` or ``unfinished``
    (still running, or interrupted) when no job of the group finished."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if math.isnan(mean):
        return "failed" if row["failed"] and not row["unfinished"] else "unfinished"
    spread = "–" if row["n"] < 2 else f"{scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {spread}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """Paper layout (models × datasets) when every group is exactly one model and one
    dataset; otherwise one row per group."""
    pairs = [(r.get("model"), r.get("data")) for r in rows]
    paper = (
        all(m and d for m, d in pairs)
        and len(set(pairs)) == len(rows)
        and all(
            set(r["group"].split(",")) <= {f"model={r['model']}", f"data={r['data']}"} for r in rows
        )
    )
    if paper:
        order = {r["model"]: r["order"] for r in rows}
        models = sorted({m for m, _ in pairs}, key=lambda m: (order[m], m))
        datasets = list(OrderedDict.fromkeys(d for _, d in pairs))
        by = {(r["model"], r["data"]): r for r in rows}
        lines = ["| model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
        for m in models:
            cells = [
                (_cell(by[(m, d)]) + f" (n={by[(m, d)]['n']})") if (m, d) in by else "–"
                for d in datasets
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "Test accuracy (%), mean ± std over seeds\n\n" + "\n".join(lines)
    lines = [
        "| group | n | test/acc (%) | val/acc_best (%) | epochs | fit s | ms/epoch | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            _cell(r),
            _cell(r, "val/acc_best"),
            _cell(r, "epochs", 1, 0),
            _cell(r, "fit_seconds", 1, 2),
            _cell(r, "ms_per_epoch", 1, 1),
        ]
        lines.append(
            f"| {r['group']} | {r['n']} | {' | '.join(cells)} | {r['failed'] + r['unfinished']} |"
        )
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(OrderedDict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars of mean test accuracy with ±std error bars, one per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # long override lists (one group: every override is common) are wrapped and cut
    labels = [textwrap.shorten(r["group"].replace(",", ", "), 80) for r in rows]
    labels = ["\n".join(textwrap.wrap(label, 30)) for label in labels]
    means = [100 * r["test/acc_mean"] for r in rows]
    stds = [100 * r["test/acc_std"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4.5))
    bars = ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    finite = [m for m in means if not math.isnan(m)]
    low = max(0, min(finite, default=0) - 10)
    ax.set_ylim(low, 100)
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(
            f"n={r['n']}",
            (bar.get_x() + bar.get_width() / 2, low + 1),
            ha="center",
            fontsize=7,
            color="white",
        )
    ax.set_title(f"Sweep {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Aggregate a Hydra sweep directory.")
    parser.add_argument("sweep_dir")
    args = parser.parse_args(argv)
    with exits_cleanly():
        aggregate(args.sweep_dir)


if __name__ == "__main__":
    main()
