"""Pictures of a whole sweep besides its table: accuracy against a swept number (e.g.
``data.k``), and the attention of the models side by side (static score per layer and
head; the attention matrix of one graph), from the jobs' ``metrics.json`` and
``attention.pt``."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gnn_attn.analysis.attention_plots import draw_matrix, static_references
from gnn_attn.analysis.jobs import Job, mean_std, split_override

ATTENTION_FILE = "attention.pt"


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported when a picture is drawn (as
    :func:`gnn_attn.analysis.aggregate.plot` does: a sweep that draws nothing does not
    pay for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def swept_number(jobs: list[Job]) -> str | None:
    """The first override key (not ``seed``) that every job sets and that takes three
    or more numeric values across the sweep's jobs, else ``None``."""
    values: OrderedDict[str, set[str]] = OrderedDict()
    for job in jobs:
        for o in job.overrides:
            key, value = split_override(o)
            if key != "seed":
                values.setdefault(key, set()).add(value)
    for key, seen in values.items():
        everywhere = all(any(split_override(o)[0] == key for o in j.overrides) for j in jobs)
        if everywhere and len(seen) >= 3 and all(_number(v) is not None for v in seen):
            return key
    return None


def series_of(job: Job, key: str | None, common: set[str] = frozenset()) -> str:
    """The job's overrides without ``seed``, ``key`` and those ``common`` to every job:
    its curve or bar group."""
    kept = [
        o.lstrip("+") for o in job.overrides
        if split_override(o)[0] not in ("seed", key) and o not in common
    ]  # fmt: skip
    return ",".join(kept) or "(all)"


def common_overrides(jobs: list[Job]) -> set[str]:
    """The overrides every job shares (left out of the legends)."""
    return set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()


def _value(job: Job, key: str) -> float:
    return next(float(split_override(o)[1]) for o in job.overrides if split_override(o)[0] == key)


def accuracy_curve(jobs: list[Job], key: str, path: Path) -> Path:
    """Train and test accuracy (of the selected checkpoints; mean ± std over seeds)
    against ``key``, one colour per series: solid test, dashed train."""
    plt = _pyplot()
    done = [j for j in jobs if j.status == "ok"]
    common = common_overrides(done)
    series = list(OrderedDict.fromkeys(series_of(j, key, common) for j in done))
    fig, ax = plt.subplots(figsize=(10, 4.8))
    palette = plt.get_cmap("tab10")
    for si, name in enumerate(series):
        members = [j for j in done if series_of(j, key, common) == name]
        xs = sorted({_value(j, key) for j in members})
        for metric, style in (("test/acc", "-"), ("train/acc", "--")):
            stats = [
                mean_std(
                    [100 * float(j.metrics[metric]) for j in members
                     if _value(j, key) == x and metric in j.metrics]
                )
                for x in xs
            ]  # fmt: skip
            mean = np.array([m for m, _ in stats])
            std = np.array([s for _, s in stats])
            if np.isnan(mean).all():
                continue
            label = f"{name} ({metric.split('/')[0]})"
            ax.errorbar(xs, mean, yerr=std, fmt=style + "o", color=palette(si % 10),
                        capsize=3, ms=4, label=label)  # fmt: skip
    seeds = sorted({int(j.metrics.get("seed", -1)) for j in done})
    ticks = sorted({_value(j, key) for j in done})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel(key)
    ax.set_ylabel("accuracy (%) of the selected checkpoint")
    ax.set_ylim(0, 103)
    ax.set_title(
        f"Train (dashed) and test (solid) accuracy against {key}\nmean ± std over seeds {seeds}",
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _attention(job: Job) -> dict[str, Any] | None:
    path = job.path / ATTENTION_FILE
    if job.status != "ok" or not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a damaged export: the picture leaves the job out
        return None


def compared_jobs(jobs: list[Job], key: str | None) -> tuple[list[Job], str]:
    """The jobs whose attention is compared: all of them, or where a number is swept,
    those at its middle value (the lower median: k = 10 of 5, 10, 15, 20); and a
    caption."""
    if key is None:
        return jobs, ""
    values = sorted({_value(j, key) for j in jobs})
    chosen = values[(len(values) - 1) // 2]
    return [j for j in jobs if _value(j, key) == chosen], f"{key}={chosen:g}"


def static_figure(
    jobs: list[Job], key: str | None, path: Path, exports: dict[Path, dict[str, Any] | None]
) -> Path | None:
    """Static-attention score per layer and head (mean ± std over seeds): one group of
    bars per series, one bar per layer and head; ``None`` when no job exported one."""
    plt = _pyplot()
    chosen, caption = compared_jobs(jobs, key)
    common = common_overrides(jobs)
    scores: OrderedDict[str, list[list[list[float]]]] = OrderedDict()  # series → seeds
    for job in chosen:
        export = exports.get(job.path)
        if export is None or not all("static" in layer for layer in export["layers"]):
            continue
        per_layer = [layer["static"]["per_head"] for layer in export["layers"]]
        scores.setdefault(series_of(job, key, common), []).append(per_layer)
    if not scores:
        return None
    palette = plt.get_cmap("tab10")
    x, heights, errors, colors, names, centres = [], [], [], [], [], []
    position = 0.0
    for si, (name, runs) in enumerate(scores.items()):
        shape = [len(hs) for hs in runs[0]]
        start = position
        for li, heads in enumerate(shape):
            for h in range(heads):
                values = [r[li][h] for r in runs if not math.isnan(r[li][h])]
                m, sd = mean_std(values)
                x.append(position)
                heights.append(m)
                errors.append(sd)
                colors.append(palette(si % 10))
                names.append(f"L{li + 1}h{h + 1}" if sum(shape) > 1 else "")
                position += 1
        centres.append(((start + position - 1) / 2, f"{name}\n(n={len(runs)})"))
        position += 1.0  # a gap between series
    fig, ax = plt.subplots(figsize=(max(6.5, 0.32 * position + 3), 4.8))
    ax.bar(x, np.nan_to_num(heights), 0.85, yerr=np.nan_to_num(errors), capsize=2,
           color=colors)  # fmt: skip
    for xi, v, label in zip(x, heights, names, strict=True):
        text = "n/a" if math.isnan(v) else f"{v:.2f}"
        ax.annotate(text, (xi, 0 if math.isnan(v) else v), ha="center", va="bottom",
                    fontsize=6, rotation=90 if len(x) > 12 else 0)  # fmt: skip
        if label:
            ax.annotate(label, (xi, 0.02), ha="center", va="bottom", fontsize=5,
                        rotation=90, color="white")  # fmt: skip
    static_references(ax)
    ax.set_xticks([c for c, _ in centres], [t for _, t in centres], fontsize=7)
    ax.set_ylabel("share of shared-neighbour pairs ranked alike")
    where = f" — {caption}" if caption else ""
    ax.set_title(
        f"Static attention per layer (L) and head (h), mean ± std over seeds{where}\n"
        "1: every query ranks its neighbours in one global order", fontsize=10,
    )  # fmt: skip
    ax.legend(fontsize=7, loc="upper right", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def matrix_figure(
    jobs: list[Job], key: str | None, path: Path, exports: dict[Path, dict[str, Any] | None]
) -> Path | None:
    """One graph's attention matrix (queries × neighbours) per series, side by side
    (each series' lowest seed); ``None`` when no job exported a matrix."""
    plt = _pyplot()
    chosen, caption = compared_jobs(jobs, key)
    common = common_overrides(jobs)
    panels: OrderedDict[str, tuple[Job, dict[str, Any]]] = OrderedDict()
    for job in sorted(chosen, key=lambda j: int(j.metrics.get("seed", 0)) if j.metrics else 0):
        name = series_of(job, key, common)
        if name in panels:
            continue
        export = exports.get(job.path)
        if export is not None and "matrix" in export:
            panels[name] = (job, export["matrix"])
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (name, (job, matrix)) in zip(axes[0], panels.items(), strict=True):
        image = draw_matrix(ax, matrix["alpha"], vmax=1.0)
        ax.set_xlabel("neighbour (key–value node)")
        acc = 100 * float(job.metrics["test/acc"])
        ax.set_title(f"{name}\nseed {job.metrics.get('seed')}: test acc {acc:.1f} %", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="attention α (layer 1)")
    where = f" ({caption})" if caption else ""
    fig.suptitle(
        f"Attention of one test graph{where}: static attention lights the same columns "
        "for every query; dynamic attention can follow the query's key",
        fontsize=10,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def sweep_pictures(jobs: list[Job], sweep: Path) -> list[Path]:
    """Whichever of the pictures above the sweep's jobs allow, written into ``sweep``
    (each compared job's ``attention.pt`` read once)."""
    written: list[Path] = []
    key = swept_number(jobs)
    done = [j for j in jobs if j.status == "ok"]
    if not done:
        return written
    if key is not None:
        written.append(accuracy_curve(done, key, sweep / f"accuracy_vs_{key}.png"))
    exports = {j.path: _attention(j) for j in compared_jobs(done, key)[0]}
    for draw, name in ((static_figure, "static_attention.png"),
                       (matrix_figure, "attention_matrices.png")):  # fmt: skip
        path = draw(done, key, sweep / name, exports)
        if path is not None:
            written.append(path)
    return written
