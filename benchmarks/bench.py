"""Benchmark: ms/epoch of the GAT article's plain PyG loop vs this template.

    python benchmarks/bench.py [--epochs 200] [--reps 5] [--seeds 1] [--out bench.json]

For GCN, GAT and GATv2 on Cora and CiteSeer, in one process, with the configurations
interleaved (every repetition runs each of them once) and medians reported:

(a) ``article``: the article's recipe as a plain PyG loop, dense features
    (``F.dropout`` on the :math:`N \\times F` matrix, PyG's ``GCNConv``/``GATConv``/
    ``GATv2Conv``);
(b) ``pyg_csr``: the same loop with the features as CSR (dropout on stored values);
(c) ``ours``: ``gnn_attn.run.train.run`` — the real LightningModule and Trainer, fixed epochs,
    no early stopping, no logger, no pictures;
(d) ``bare``: our backbone (same config, CSR features) in a bare PyTorch loop, on the
    same receptive-field batches as (c) for GAT/GATv2, to show what Lightning adds (c/d);
(e) ``stacked S``: S members of (c)'s config trained as one stack
    (:class:`gnn_attn.run.stacked.StackTrainer`, what ``hydra/launcher=stacked`` runs;
    on a GPU its epochs replay a CUDA graph), reported as ms per *member*-epoch
    (``--stack-sizes``, default 1 10 100; test accuracy is the members' mean).

An epoch is one training step plus one validation forward. Test accuracy: (a) and (b)
at the epoch of best validation accuracy; (c) from ``metrics.json`` (the paper's
selection rule). Peak memory is the largest growth of the process's resident memory
during a run (CPU), or ``torch.cuda.max_memory_allocated`` on a GPU. This is a
benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn
from torch_geometric.nn import GATConv, GATv2Conv, GCNConv

from gnn_attn.console import quiet
from gnn_attn.data import PlanetoidDataModule
from gnn_attn.data.sampler import receptive_field
from gnn_attn.errors import exits_cleanly
from gnn_attn.run.build import build_data_and_model
from gnn_attn.run.stacked import StackTrainer
from gnn_attn.run.train import run

MODELS = ("gcn", "gat", "gatv2")
KINDS = ("article", "pyg_csr", "ours", "bare")
DATASETS = ("cora", "citeseer")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.models.plain_backbones (USER)


class ArticleNet(nn.Module):
    """The article's two-layer models, written the way PyG's examples write them."""

    def __init__(self, model: str, in_channels: int, classes: int) -> None:
        super().__init__()
        if model == "gcn":
            self.conv1, self.conv2, self.p = GCNConv(in_channels, 16), GCNConv(16, classes), 0.5
        else:
            conv = GATConv if model == "gat" else GATv2Conv
            self.conv1 = conv(in_channels, 8, heads=8, dropout=0.6)
            self.conv2 = conv(64, classes, heads=1, dropout=0.6)
            self.p = 0.6
        self.act = F.relu if model == "gcn" else F.elu

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        if x.layout == torch.sparse_csr:
            values = F.dropout(x.values(), self.p, self.training)
            x = torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape)
        else:
            x = F.dropout(x, self.p, self.training)
        x = self.act(self.conv1(x, edge_index))
        x = F.dropout(x, self.p, self.training)
        return self.conv2(x, edge_index)


def plain_loop(
    model: str, data: Any, epochs: int, seed: int, net: nn.Module | None = None, opt: Any = None
) -> dict[str, float]:
    """(a)/(b): the article's loop; returns ms/epoch and test acc at the best val epoch."""
    torch.manual_seed(seed)
    if net is None:
        net = ArticleNet(model, data.x.size(1), int(data.y.max()) + 1).to(data.y.device)
        lr = 0.01 if model == "gcn" else 0.005
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=5e-4)
    best_val, test_at_best = -1.0, 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        opt.zero_grad()
        out = net(data.x, data.edge_index)
        F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()
        net.eval()
        with torch.no_grad():
            pred = net(data.x, data.edge_index).argmax(-1)
        val = float((pred[data.val_mask] == data.y[data.val_mask]).float().mean())
        if val > best_val:
            best_val = val
            test_at_best = float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
    _sync()
    ms = 1000 * (time.perf_counter() - start) / epochs
    return {"ms_per_epoch": ms, "test_acc": test_at_best}


# (e)'s user backbone: the tests' plain PyG SAGE (no template code), with gcn.yaml's keys
USER = ["model=gcn", "model._target_=tests.models.plain_backbones.SAGE", "model.name=sage"]


def ours(
    model: str, dataset: str, epochs: int, seed: int, out_dir: Path, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    """(c): the real training run through Hydra's compose API and gnn_attn.run.train.run."""
    overrides = [
        f"model={model}",
        f"data={dataset}",
        f"seed={seed}",
        f"paths.output_dir={out_dir}",
        f"trainer.max_epochs={epochs}",
        "early_stopping.patience=0",
        "callbacks=none",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "print_config=false",
        "data.verbose=false",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = run(cfg)
    return {"ms_per_epoch": metrics["ms_per_epoch"], "test_acc": metrics["test/acc"]}


def stacked(
    model: str, dataset: str, epochs: int, size: int, out_dir: Path, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    """(e): ``size`` members (seeds 0..size-1) of (c)'s config as one stack, fixed epochs;
    ms per member-epoch of the epoch loop (set-up not counted, as for (a)–(d)). ``extra``
    overrides (the user's SAGE: stacked through torch.func, also on the CPU)."""
    overrides = [
        f"model={model}",
        f"data={dataset}",
        f"paths.output_dir={out_dir}",
        f"trainer.max_epochs={epochs}",
        "early_stopping.patience=0",
        "callbacks=none",
        "logger=none",
        "data.verbose=false",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfgs = [compose("train", overrides=[*overrides, f"seed={s}"]) for s in range(size)]
    trainer = StackTrainer(cfgs, torch_func_on_cpu=bool(extra))
    trainer.fit()
    accs = [r.metrics["test/acc"] for r in trainer.results()]
    ms = 1000 * trainer.fit_seconds / trainer.member_epochs
    return {"ms_per_epoch": ms, "test_acc": statistics.mean(accs)}


def bare_loop(model: str, dataset: str, data: Any, epochs: int, seed: int) -> dict[str, float]:
    """(d): the backbone and optimizer ``ours`` builds, in a bare PyTorch loop."""
    overrides = [f"model={model}", f"data={dataset}", "paths.output_dir=.", "data.verbose=false"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(seed)
    _, module = build_data_and_model(cfg, "fit")
    module = module.to(data.y.device)
    net, opt = module.net, module.configure_optimizers()
    if getattr(net, "exact_hops", None) is not None:  # what (c) does: receptive fields
        return field_loop(net, opt, data, epochs)
    return plain_loop(model, data, epochs, seed, net=net, opt=opt)


def field_loop(net: nn.Module, opt: Any, data: Any, epochs: int) -> dict[str, float]:
    """The plain loop on each split's receptive field (the nodes within the model's hops
    of the split's nodes, built once), as :class:`~gnn_attn.models.NodeClassifier` runs
    full-batch GAT; the test nodes' logits are computed when validation improves."""
    fields = {
        s: receptive_field(data, data[f"{s}_mask"].nonzero().view(-1), net.exact_hops)
        for s in ("train", "val", "test")
    }

    def logits(b: Any) -> torch.Tensor:
        return net(
            b.x,
            b.edge_index,
            num_sampled_nodes_per_hop=b.num_sampled_nodes,
            num_sampled_edges_per_hop=b.num_sampled_edges,
        )

    def acc(b: Any) -> float:
        return float((logits(b).argmax(-1) == b.y[: b.batch_size]).float().mean())

    train = fields["train"]
    best_val, test_at_best = -1.0, 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        opt.zero_grad()
        F.cross_entropy(logits(train), train.y[: train.batch_size]).backward()
        opt.step()
        net.eval()
        with torch.no_grad():
            val = acc(fields["val"])
            if val > best_val:
                best_val, test_at_best = val, acc(fields["test"])
    _sync()
    ms = 1000 * (time.perf_counter() - start) / epochs
    return {"ms_per_epoch": ms, "test_acc": test_at_best}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def with_peak_memory(fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run ``fn`` and add ``peak_mb``: peak RSS growth (CPU) or CUDA peak allocation."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        return {**result, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return {**result, "peak_mb": (peak[0] - base) / 2**20}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (medians)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds for the accuracy runs")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument(
        "--stack-sizes", nargs="*", type=int, default=[1, 10, 100], help="(e): members per stack"
    )
    parser.add_argument(
        "--user-epochs", type=int, default=20, help="(e) SAGE: epochs (0: leave it out)"
    )
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args(argv)
    quiet()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graphs = {}
    for name in args.datasets:
        dm = PlanetoidDataModule(
            name,
            data_dir=str(ROOT / "data/planetoid"),
            cache_dir=str(ROOT / ".cache/planetoid"),
            verbose=False,
            sparse_features=False,
        )
        dm.setup()
        dense = dm.data.to(device)
        csr = dense.clone()
        csr.x = dense.x.to_sparse_csr()
        graphs[name] = {"article": dense, "pyg_csr": csr}
    kinds = [*KINDS, *(f"stacked{n}" for n in args.stack_sizes)]
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # seeds × reps, interleaved: each repetition runs every configuration once
        for rep in range(max(args.reps, args.seeds)):
            seed = rep % args.seeds
            for name in args.datasets:
                for model in args.models:
                    for kind in kinds:
                        data = graphs[name]["article" if kind == "article" else "pyg_csr"]
                        out = Path(tmp) / f"{name}-{model}-{rep}"
                        if kind.startswith("stacked"):
                            size = int(kind.removeprefix("stacked"))
                            fn = functools.partial(stacked, model, name, args.epochs, size, out)
                        elif kind == "ours":
                            fn = functools.partial(ours, model, name, args.epochs, seed, out)
                        elif kind == "bare":
                            fn = functools.partial(bare_loop, model, name, data, args.epochs, seed)
                        else:
                            fn = functools.partial(plain_loop, model, data, args.epochs, seed)
                        runs.setdefault((name, model, kind), []).append(with_peak_memory(fn))
                        r = runs[(name, model, kind)][-1]
                        print(
                            f"rep {rep} {name:8s} {model:5s} {kind:8s} "
                            f"{r['ms_per_epoch']:8.2f} ms/epoch  acc {r['test_acc']:.3f}",
                            flush=True,
                        )
    rows = []
    for name in args.datasets:
        for model in args.models:
            row: dict[str, Any] = {"dataset": name, "model": model}
            for kind in kinds:
                rs = runs[(name, model, kind)]
                row[f"{kind}_ms"] = statistics.median(r["ms_per_epoch"] for r in rs[: args.reps])
                row[f"{kind}_peak_mb"] = max(r["peak_mb"] for r in rs)
                accs = [r["test_acc"] for r in rs[: args.seeds]]
                row[f"{kind}_acc"] = statistics.mean(accs)
                row[f"{kind}_acc_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
            row["a_over_c"] = row["article_ms"] / row["ours_ms"]
            row["b_over_c"] = row["pyg_csr_ms"] / row["ours_ms"]
            row["c_over_d"] = row["ours_ms"] / row["bare_ms"]
            rows.append(row)
    print_table(rows, args, device)
    if args.stack_sizes:
        print_stacked(rows, args.stack_sizes)
    user = user_backbone(args) if args.user_epochs > 0 else []
    result = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "reps": args.reps,
        "seeds": args.seeds,
        "rows": rows,
        "user_backbone": user,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, device: Any) -> None:
    print(
        f"\nms/epoch (median of {args.reps}, {args.epochs} epochs, {device}, "
        f"{torch.get_num_threads()} threads); test acc mean over {args.seeds} seed(s)"
    )
    head = (
        f"{'dataset':9s}{'model':7s}{'(a) article':>12s}{'(b) pyg csr':>12s}{'(c) ours':>10s}"
        f"{'a/c':>7s}{'b/c':>7s}{'(d) bare':>10s}{'c/d':>6s}{'peak MB a/b/c':>16s}"
        f"{'acc a/b/c':>20s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        peak = f"{r['article_peak_mb']:.0f}/{r['pyg_csr_peak_mb']:.0f}/{r['ours_peak_mb']:.0f}"
        acc = f"{r['article_acc']:.3f}/{r['pyg_csr_acc']:.3f}/{r['ours_acc']:.3f}"
        print(
            f"{r['dataset']:9s}{r['model']:7s}{r['article_ms']:12.1f}{r['pyg_csr_ms']:12.1f}"
            f"{r['ours_ms']:10.1f}{r['a_over_c']:7.1f}{r['b_over_c']:7.1f}{r['bare_ms']:10.1f}"
            f"{r['c_over_d']:6.2f}{peak:>16s}{acc:>20s}"
        )


def print_stacked(rows: list[dict[str, Any]], sizes: list[int]) -> None:
    """(e): ms per member-epoch of stacks of each size, next to (c) and (d)."""
    print("\n(e) stacked: ms per member-epoch (S members in one process); speed-up over (c)")
    head = f"{'dataset':9s}{'model':7s}{'(c) ours':>10s}{'(d) bare':>10s}" + "".join(
        f"{f'S={n}':>10s}{'c/S':>7s}" for n in sizes
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = "".join(
            f"{r[f'stacked{n}_ms']:10.3f}{r['ours_ms'] / r[f'stacked{n}_ms']:7.1f}" for n in sizes
        )
        print(f"{r['dataset']:9s}{r['model']:7s}{r['ours_ms']:10.2f}{r['bare_ms']:10.2f}{cells}")


def user_backbone(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(e) for a user's backbone: the tests' plain SAGE, one run (c) and a stack of 10 (through
    torch.func), ``--user-epochs`` epochs, interleaved over ``--reps`` (at most 3)."""
    rows = []
    print(f"\n(e) a user's backbone (SAGE, plain PyG), {args.user_epochs} epochs: "
          "ms per (member-)epoch")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            lone, stack = [], []
            for rep in range(min(args.reps, 3)):
                out = Path(tmp) / f"sage-{name}-{rep}"
                lone.append(ours("gcn", name, args.user_epochs, 0, out, tuple(USER)))
                stack.append(stacked("gcn", name, args.user_epochs, 10, out, tuple(USER)))
            row = {
                "dataset": name,
                "model": "sage",
                "ours_ms": statistics.median(r["ms_per_epoch"] for r in lone),
                "stacked10_ms": statistics.median(r["ms_per_epoch"] for r in stack),
            }
            rows.append(row)
            print(f"{name:9s}sage   (c) {row['ours_ms']:8.2f}   S=10 {row['stacked10_ms']:8.2f}"
                  f"   c/S {row['ours_ms'] / row['stacked10_ms']:.2f}")  # fmt: skip
    return rows


if __name__ == "__main__":
    with exits_cleanly():
        main()
