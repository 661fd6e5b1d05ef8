"""Scaling benchmark: full-batch vs mini-batch training on synthetic graphs of growing size.

``make bench-scale`` (``python benchmarks/bench_scale.py``). For every size (default 10 k,
100 k, 1 M, 3 M nodes, mean degree 10: ``data=synthetic``) and mode (``data.loader=full`` and
``neighbor``), one fresh process builds the data module and the model from the same
configs as ``train.py`` (GAT by default) and trains a few epochs with the real Trainer,
validation off. It reports the median time of a training epoch (the first epoch, which
includes one-off work, is left out), the process's peak resident memory (``ru_maxrss``,
everything: Python, torch, the graph, the epoch), and for each mode the slope of
log(time) against log(edges) (1 = linear). Prints a table, writes ``bench_scale.json``
and ``bench_scale.png``. A benchmark, not a test.

A mode that runs out of memory is reported as such: each run's address space is capped
(``--memory-limit-gb``, default two thirds of the machine's memory), so that a full batch
too big for the machine fails inside its process instead of pushing the machine into
swap or the kernel's OOM killer. Mini-batch time grows faster than the graph until the
graph outgrows one batch's sampled neighbourhood (~10^5 nodes for 1024 seeds and fan-out
[10, 10]: on smaller graphs the samples overlap), then linearly; the slopes between
consecutive sizes show where.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import psutil

from gnn_attn.config import project_root
from gnn_attn.errors import exits_cleanly, is_out_of_memory


class _EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._t = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._t)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(nodes: int, loader: str, model: str, epochs: int, cache_dir: str) -> dict[str, Any]:
    """One (size, mode) run in this process; returns its figures."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from gnn_attn.console import quiet
    from gnn_attn.run.build import build_data_and_model

    quiet()
    overrides = [
        "data=synthetic",
        f"data.num_nodes={nodes}",
        f"data.loader={loader}",
        f"model={model}",
        f"paths.cache_dir={cache_dir}",
        "paths.output_dir=.",
    ]
    conf = Path(project_root()) / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    L.seed_everything(0, verbose=False)
    cfg.data.verbose = False
    dm = instantiate(cfg.data)
    dm.prepare_data()  # generate/cache the graph outside the measurement
    before = _peak_mib()
    dm, module = build_data_and_model(cfg, "fit")
    timer = _EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    result: dict[str, Any] = {
        "nodes": nodes,
        "edges": dm.stats["edges"],
        "loader": loader,
        "model": model,
        "threads": torch.get_num_threads(),
        "graph_peak_mib": round(before, 1),
    }
    try:
        trainer.fit(module, datamodule=dm)
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        return {**result, "status": "out of memory", "peak_mib": round(_peak_mib(), 1)}
    steady = timer.seconds[1:] or timer.seconds
    batches = len(dm.train_dataloader())
    return {
        **result,
        "status": "ok",
        "batches_per_epoch": batches,
        "epoch_seconds": round(statistics.median(steady), 4),
        "epochs_timed": len(steady),
        "peak_mib": round(_peak_mib(), 1),
    }


def _run_one(args: argparse.Namespace, nodes: int, loader: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        str(nodes),
        loader,
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--cache-dir",
        args.cache_dir,
    ]
    if args.memory_limit_gb:
        cmd += ["--memory-limit-gb", str(args.memory_limit_gb)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    status = "out of memory" if proc.returncode in (-9, 137) else f"failed: {tail[:160]}"
    return {"nodes": nodes, "loader": loader, "model": args.model, "status": status}


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x)."""
    if len(points) < 2:
        return None
    lx = [math.log(x) for x, _ in points]
    ly = [math.log(y) for _, y in points]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else None


def _table(rows: list[dict[str, Any]], slopes: dict[str, float | None]) -> str:
    head = (
        f"{'nodes':>9} {'edges':>10} {'loader':>8} {'batches':>7} {'s/epoch':>9} "
        f"{'peak MiB':>9}  status"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        sec = f"{r['epoch_seconds']:.3f}" if "epoch_seconds" in r else "-"
        batches, peak = r.get("batches_per_epoch", "-"), r.get("peak_mib", "-")
        out.append(
            f"{r['nodes']:>9} {r.get('edges', '-'):>10} {r['loader']:>8} "
            f"{batches:>7} {sec:>9} {peak:>9}  {r['status']}"
        )
    for loader, s in slopes.items():
        shown = "n/a (fewer than 2 sizes ran)" if s is None else f"{s:.2f}"
        ok = [r for r in rows if r["loader"] == loader and r["status"] == "ok"]
        steps = [
            f"{_short(a['nodes'])}→{_short(b['nodes'])}: "
            f"{slope([(a['edges'], a['epoch_seconds']), (b['edges'], b['epoch_seconds'])]):.2f}"
            for a, b in itertools.pairwise(ok)
        ]
        between = f" (between sizes: {', '.join(steps)})" if len(steps) > 1 else ""
        out.append(f"log-log slope of s/epoch vs edges, {loader}: {shown}{between}")
    return "\n".join(out)


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def _plot(rows: list[dict[str, Any]], slopes: dict[str, float | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.5))
    for loader, color in (("full", "#C44E52"), ("neighbor", "#4C72B0")):
        ok = [r for r in rows if r["loader"] == loader and r["status"] == "ok"]
        if not ok:
            continue
        e = [r["edges"] for r in ok]
        s = slopes.get(loader)
        label = f"{loader} (slope {s:.2f})" if s is not None else loader
        ax_t.plot(e, [r["epoch_seconds"] for r in ok], "o-", color=color, label=label)
        ax_m.plot(e, [r["peak_mib"] / 1024 for r in ok], "o-", color=color, label=loader)
    for ax in (ax_t, ax_m):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("undirected edges")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_t.set_ylabel("seconds per training epoch")
    ax_m.set_ylabel("peak resident memory (GiB)")
    model = rows[0]["model"] if rows else "?"
    fig.suptitle(f"{model.upper()} on synthetic SBM graphs (mean degree 10): full vs mini-batch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", default="10000,100000,1000000,3000000", help="node counts, comma-separated"
    )
    p.add_argument("--loaders", default="full,neighbor")
    p.add_argument("--model", default="gat")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    p.add_argument("--cache-dir", default=str(Path(project_root()) / ".cache"))
    p.add_argument("--out", default="bench_scale.json")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=round(psutil.virtual_memory().total / 2**30 * 2 / 3, 1),
        help="address-space cap of each run (0 = none; default 2/3 of the memory)",
    )
    p.add_argument("--one", nargs=2, metavar=("NODES", "LOADER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        if args.memory_limit_gb:
            limit = int(args.memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        nodes, loader = int(args.one[0]), args.one[1]
        print(json.dumps(measure(nodes, loader, args.model, args.epochs, args.cache_dir)))
        return
    rows = []
    for nodes in [int(s) for s in args.sizes.split(",")]:
        for loader in args.loaders.split(","):
            row = _run_one(args, nodes, loader)
            rows.append(row)
            print(json.dumps(row), flush=True)
    slopes = {
        loader: slope(
            [
                (r["edges"], r["epoch_seconds"])
                for r in rows
                if r["loader"] == loader and r["status"] == "ok"
            ]
        )
        for loader in args.loaders.split(",")
    }
    print(_table(rows, slopes))
    out = Path(args.out)
    out.write_text(json.dumps({"runs": rows, "slopes": slopes}, indent=2) + "\n")
    _plot(rows, slopes, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    with exits_cleanly():
        main()
