"""Stacked members (``hydra/launcher=stacked``): a member trains as the lone run of its
seed, the stack reaches the accuracy of separate jobs, its epochs never wait on the
host, every member's job writes what a lone job writes (``eval.py`` reproduces its
test accuracy), the same sweep twice gives the same numbers, and what cannot stack says
so in one line and runs one job at a time."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gnn_attn.run.build import build_data_and_model
from gnn_attn.run.stacked import HISTORY, MemberSelection, NotStackable, StackTrainer
from gnn_attn.run.train import run
from hydra_plugins.gnn_attn_stacked.stacked_launcher import StackedLauncher
from tests.conftest import CONF, read_metrics, run_entry, sweep_overrides

NO_DROPOUT = {
    "mlp": ["model.dropout=0"],
    "gcn": ["model.dropout=0"],
    "gat": ["model.dropout=0", "model.attn_dropout=0", "model.feat_dropout=0"],
    "gatv2": ["model.dropout=0", "model.attn_dropout=0", "model.feat_dropout=0"],
}


def configs(
    tmp_path: Path, cache: Path, seeds: range, *overrides: str, trainer: str = "cpu"
) -> list[DictConfig]:
    """One composed train config per seed, each with its own output dir."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return [
            compose(
                "train",
                overrides=[
                    f"seed={s}",
                    f"paths.output_dir={tmp_path / str(s)}",
                    f"paths.cache_dir={cache}",
                    f"trainer={trainer}",
                    "logger=none",
                    "callbacks=none",
                    "data.verbose=false",
                    "print_config=false",
                    *overrides,
                ],
            )
            for s in seeds
        ]


def stacked_after_steps(stack: StackTrainer, k: int) -> torch.Tensor:
    """The stack's training logits :math:`(n, S, C)` after ``k`` epochs, with the
    gradients of one more step in its parameters."""
    stack.run_epochs(k)
    batch = stack.train_batch
    stack.optimizer.zero_grad()
    logits = batch.logits(stack.net)
    y = batch.y.view(-1, 1).expand(-1, logits.size(1))
    F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0).sum().backward()
    return logits


def lone_after_steps(cfg: DictConfig, k: int) -> tuple[torch.Tensor, Any]:
    """The lone run's training logits after ``k`` optimizer steps, and its module holding
    the gradients of one more step."""
    datamodule, module = build_data_and_model(cfg, "fit")  # the lone run's start
    opt = module.configure_optimizers()
    batch = next(iter(datamodule.train_dataloader()))
    for step in range(k + 1):
        module.train()
        out = module(batch)
        seeds = "batch_size" in batch
        out = out[: batch.batch_size] if seeds else out[batch.train_mask]
        y = batch.y[: out.size(0)] if seeds else batch.y[batch.train_mask]
        opt.zero_grad()
        F.cross_entropy(out, y).backward()
        if step < k:
            opt.step()
    return out, module


@pytest.mark.parametrize("model", list(NO_DROPOUT))
def test_member_follows_the_lone_run_of_its_seed(tmp_path: Path, cache_dir: Path, model) -> None:
    """Dropout off: after K steps, member s's logits and gradients are the lone run's."""
    k = 4
    cfgs = configs(tmp_path, cache_dir, range(3), f"model={model}", "data=cora",
                   *NO_DROPOUT[model])  # fmt: skip
    stack = StackTrainer(cfgs)
    logits = stacked_after_steps(stack, k)
    for s, cfg in enumerate(cfgs):
        out, module = lone_after_steps(cfg, k)
        torch.testing.assert_close(logits[:, s].detach(), out.detach(), atol=1e-5, rtol=1e-5)
        for i, layer in enumerate(stack.net.layers):
            grads = layer.member_state(s, grad=True)
            for name, p in module.net.layers[i].named_parameters():
                torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_stack_reaches_the_accuracy_of_separate_jobs(tmp_path: Path, cache_dir: Path) -> None:
    """Dropout on, 10 seeds of GAT on Cora for 200 epochs: the stack's mean test accuracy
    is within 1 point of the same 10 seeds trained as separate runs."""
    common = ("model=gat", "data=cora", "trainer.max_epochs=200")
    stack = StackTrainer(configs(tmp_path / "stack", cache_dir, range(10), *common))
    stack.fit()
    stacked = [r.metrics["test/acc"] for r in stack.results()]
    separate = [
        run(cfg)["test/acc"]
        for cfg in configs(
            tmp_path / "lone", cache_dir, range(10), *common, "trainer.enable_progress_bar=false"
        )
    ]
    print(f"stacked {statistics.mean(stacked):.4f}, separate {statistics.mean(separate):.4f}")
    assert abs(statistics.mean(stacked) - statistics.mean(separate)) <= 0.01


def test_stopped_members_leave_the_stack_without_changing_results(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Dropout off, patience 10: members stop at different epochs; shrinking the stack
    as they do gives every member the selection and accuracy of the stack that never
    shrinks (losses to float precision: reductions over fewer members round apart)."""
    cfgs = configs(tmp_path, cache_dir, range(4), "model=gat", "data=cora",
                   "trainer.max_epochs=150", "early_stopping.patience=10",
                   *NO_DROPOUT["gat"])  # fmt: skip

    def train(shrink: bool) -> tuple[StackTrainer, list]:
        stack = StackTrainer(cfgs, readout_every=10, shrink=shrink)
        stack.fit()
        return stack, stack.results()

    shrunk, ours = train(True)
    full, theirs = train(False)
    assert shrunk.done and shrunk.member_epochs < full.member_epochs
    assert len({r.metrics["epochs"] for r in theirs}) > 1  # they stopped at different epochs
    keys = ("best_epoch", "epochs", "val/acc", "test/acc")
    for a, b in zip(ours, theirs, strict=True):
        assert {k: a.metrics[k] for k in keys} == {k: b.metrics[k] for k in keys}
        values = [[r[k] for k in HISTORY] for r in a.history]
        torch.testing.assert_close(values, [[r[k] for k in HISTORY] for r in b.history])
        torch.testing.assert_close(a.checkpoint["state_dict"], b.checkpoint["state_dict"])


SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero")


@contextmanager
def counting_host_syncs() -> Iterator[list[str]]:
    """Count the calls of tensor methods that read a value on the host (and so wait for
    the device) made from gnn_attn's code."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCS}

    def wrap(name: str):
        original = originals[name]

        def counted(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "gnn_attn" in caller:
                calls.append(f"{name} from {Path(caller).name}")
            return original(self, *args, **kwargs)

        return counted

    for name in SYNCS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize("model", ["gat", "gcn"])
def test_epochs_between_read_outs_never_read_the_device(
    tmp_path: Path, cache_dir: Path, model: str
) -> None:
    stack = StackTrainer(configs(tmp_path, cache_dir, range(3), f"model={model}", "data=cora"))
    stack.run_epochs(2)  # warm-up: caches are built once, outside the count
    with counting_host_syncs() as calls:
        stack.run_epochs(5)
    assert calls == []
    with counting_host_syncs() as calls:
        stack.read_out(0, 7)
    assert calls  # the counter sees the read-out's syncs


def test_selection_follows_the_paper_rule() -> None:
    """val/loss min and val/acc max, patience 2: select when both are at their best, reset
    patience when either improves, stop after 2 validations without improvement."""
    weights = torch.zeros(2, 3)
    sel = MemberSelection({"val/loss": "min", "val/acc": "max"}, 2, [(weights, 0)])
    loss_acc = [  # per epoch: member 0 (loss, acc), member 1 (loss, acc)
        ((1.0, 0.5), (1.0, 0.5)),
        ((0.9, 0.6), (1.1, 0.4)),
        ((0.95, 0.6), (1.2, 0.3)),  # m0: acc tie counts, loss worse: reset, no selection
        ((0.99, 0.5), (0.1, 0.9)),  # m1 stopped at epoch 2 (2 without improvement): ignored
        ((0.99, 0.5), (0.1, 0.9)),  # m0 stops here
        ((0.1, 0.9), (0.1, 0.9)),  # both stopped: ignored
    ]
    for epoch, members in enumerate(loss_acc):
        metrics = torch.zeros(len(HISTORY), 2)
        for s, (loss, acc) in enumerate(members):
            metrics[HISTORY.index("val/loss"), s] = loss
            metrics[HISTORY.index("val/acc"), s] = acc
        weights += 1  # "training": the snapshot must hold the selected epoch's weights
        sel.update(metrics, torch.tensor(epoch))
    assert sel.best_epoch.tolist() == [1, 0]
    assert sel.stop_epoch.tolist() == [4, 2]
    assert sel.snapshot[0][:, 0].tolist() == [2.0, 1.0]


def stacked_sweep(
    sweep_dir: Path, cache_dir: Path, *overrides: str, seeds: str = "0,1", epochs: int = 3
) -> subprocess.CompletedProcess[str]:
    """``train.py -m hydra/launcher=stacked data=cora seed=<seeds> <overrides>``."""
    return run_entry(
        "train.py",
        *sweep_overrides(sweep_dir, cache_dir),
        "hydra/launcher=stacked",
        "data=cora",
        f"seed={seeds}",
        f"trainer.max_epochs={epochs}",
        *overrides,
    )


def test_groups_larger_than_max_members_are_split(tmp_path: Path, cache_dir: Path) -> None:
    proc = stacked_sweep(
        tmp_path, cache_dir, "hydra.launcher.max_members=2", "model=gcn", seeds="0,1,2"
    )
    assert "3 jobs in 2 stacks" in proc.stdout and "seeds 0–1" in proc.stdout
    assert "one seed (" in proc.stdout  # seed 2 alone: a lone job
    assert all((tmp_path / str(job) / "metrics.json").is_file() for job in range(3))
    # by default: stacks of 10 on the CPU
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=cpu"])
    assert StackedLauncher()._stack_size(cfg) == 10
    assert StackedLauncher(max_members=3)._stack_size(cfg) == 3


@pytest.mark.slow
def test_stacked_sweep_writes_every_job_and_repeats_exactly(
    tmp_path: Path, cache_dir: Path
) -> None:
    def sweep(name: str, *extra: str) -> tuple[Path, str]:
        proc = stacked_sweep(
            tmp_path / name, cache_dir, "model=gat,gcn", "logger=csv", *extra, seeds="0,1,2",
            epochs=40,
        )  # fmt: skip
        return tmp_path / name, proc.stdout

    first, out = sweep("a")  # two stacks: in two worker processes
    assert "6 jobs in 2 stacks" in out and "stack of 3" in out
    # a progress line at each read-out (40 epochs < readout_every: one, at the end)
    lines = re.findall(r"stack of seeds 0–2: epoch 40/40 \| (\d) of 3 training \| best "
                       r"val/acc min ([\d.]+) median ([\d.]+) max ([\d.]+)", out)  # fmt: skip
    assert len(lines) == 2, out  # one per stack (gat, gcn)
    assert all(float(lo) <= float(mid) <= float(hi) for _, lo, mid, hi in lines)
    # the basic sweeper's place is taken by the one composing a job per group of seeds
    assert "StackedSweeper" in (first / "multirun.yaml").read_text()
    # one after the other, in this process, with the workers' thread count (a CPU kernel's
    # rounding may depend on it: GCN's does)
    second, _ = sweep("b", "hydra.launcher.n_jobs=1", "threads=1")
    volatile = {"fit_seconds", "ms_per_epoch", "run_seconds", "stack", "checkpoint", "output_dir"}
    for job in range(6):
        m1, m2 = read_metrics(first / str(job)), read_metrics(second / str(job))
        assert {k: v for k, v in m1.items() if k not in volatile} == {
            k: v for k, v in m2.items() if k not in volatile
        }
        assert m1["stack"]["members"] == 3
        assert (first / str(job) / ".hydra" / "overrides.yaml").is_file()
        rows = (first / str(job) / "csv" / "metrics.csv").read_text().splitlines()
        assert len(rows) == m1["epochs"] + 1  # header + one row per epoch
        # val/acc_best as a lone run reports it: the best val/acc up to the selected epoch
        col = rows[0].split(",").index("val/acc")
        accs = [float(r.split(",")[col]) for r in rows[1 : m1["best_epoch"] + 2]]
        assert m1["val/acc_best"] == pytest.approx(max(accs))
    assert len({read_metrics(first / str(j))["test/acc"] for j in range(3)}) > 1  # own seeds
    job = first / "4"
    evaluated = run_entry("eval.py", f"ckpt_path={job}/checkpoints/best.ckpt",
                        f"hydra.run.dir={tmp_path / 'eval'}", "trainer=cpu")  # fmt: skip
    assert "test/acc" in evaluated.stdout
    again = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert again["test/acc"] == read_metrics(job)["test/acc"]
    assert again["val/acc"] == read_metrics(job)["val/acc"]
    # a stacked member's best.ckpt holds weights only: no resume from it
    proc = run_entry("train.py", f"ckpt_path={job}/checkpoints/best.ckpt", "model=gcn",
                   "data=cora", check=False)  # fmt: skip
    assert proc.returncode == 2 and "weights only" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("+trainer.gradient_clip_val=1.0", "gradient_clip_val"),
        ("trainer.check_val_every_n_epoch=2", "validates every epoch"),
        ("+model.optimizer=torch.optim.RMSprop", "only elementwise optimizers"),
        ("model.impl=pyg", "impl=fused"),
        ("model.readout=linear", "linear read-out does not stack"),
    ],
)
def test_settings_a_stack_would_not_honour_are_refused(
    tmp_path: Path, cache_dir: Path, setting: str, reason: str
) -> None:
    extra = ["model.feat_dropout=0"] if "impl" in setting else []
    cfgs = configs(tmp_path, cache_dir, range(2), "model=gat", "data=cora", setting, *extra)
    with pytest.raises(NotStackable, match=reason):
        StackTrainer(cfgs)


def test_a_set_of_graphs_does_not_stack(tmp_path: Path, cache_dir: Path) -> None:
    cfgs = configs(tmp_path, cache_dir, range(2), "model=gatv2", "data=dictionary_lookup")
    with pytest.raises(NotStackable, match="set of graphs"):
        StackTrainer(cfgs)


def test_what_cannot_stack_says_so_and_runs_alone(tmp_path: Path, cache_dir: Path) -> None:
    proc = stacked_sweep(
        tmp_path / "s", cache_dir, "model=gat", "data.loader=neighbor", "data.num_neighbors=[5,5]"
    )
    assert "not stacked (data.loader=neighbor: stacks train full batch only)" in proc.stdout
    assert all((tmp_path / "s" / str(j) / "metrics.json").is_file() for j in range(2))
    proc = stacked_sweep(tmp_path / "r", cache_dir, "model=gat", "model.residual=true")
    assert "not stacked (GAT with residual=true does not stack)" in proc.stdout
    assert "Traceback" not in proc.stderr
    proc = run_entry(  # one run (no -m): the default stacked launcher has no part in it
        "train.py",
        f"hydra.run.dir={tmp_path / 'one'}",
        f"paths.cache_dir={cache_dir}",
        "trainer=cpu",
        "callbacks=none",
        "trainer.max_epochs=3",
        "data=cora",
    )
    assert "stacked launcher" not in proc.stdout and "stacks the seeds" not in proc.stdout
    assert (tmp_path / "one" / "metrics.json").is_file()


PLAIN = "tests.models.plain_backbones"


@pytest.mark.parametrize("backbone", ["SAGE", "GIN"])
def test_a_plain_pyg_backbone_stacks_and_its_member_follows_its_lone_run(
    tmp_path: Path, cache_dir: Path, backbone: str
) -> None:
    """A backbone of plain PyG layers (gcn.yaml's keys, `_target_` changed) stacks through
    torch.func; dropout off, after K steps member s's logits and every gradient are its
    lone run's (weight decay on its first layer only, as gcn.yaml asks)."""
    k = 4
    plain = [f"model._target_={PLAIN}.{backbone}", f"model.name={backbone.lower()}"]
    cfgs = configs(tmp_path, cache_dir, range(3), "model=gcn", "data=cora", "model.dropout=0",
                   *plain)  # fmt: skip
    stack = StackTrainer(cfgs, torch_func_on_cpu=True)
    assert type(stack.net).__name__ == "FunctionalStack"
    logits = stacked_after_steps(stack, k)
    stacked = dict(stack.net.stacked.named_parameters())
    for s, cfg in enumerate(cfgs):
        out, module = lone_after_steps(cfg, k)
        torch.testing.assert_close(logits[:, s].detach(), out.detach(), atol=1e-5, rtol=1e-5)
        for name, p in module.net.named_parameters():
            torch.testing.assert_close(stacked[name].grad[s], p.grad, atol=1e-5, rtol=1e-4)


def test_a_plain_backbone_sweep_stacks_and_what_torch_func_cannot_batch_runs_alone(
    tmp_path: Path, cache_dir: Path
) -> None:
    sage = ["model=gcn", f"model._target_={PLAIN}.SAGE", "model.name=sage"]
    proc = stacked_sweep(tmp_path / "cpu", cache_dir, *sage)  # by default not on the CPU
    assert "not stacked (SAGE stacks only through torch.func, which on the CPU" in proc.stdout
    proc = stacked_sweep(
        tmp_path / "sage", cache_dir, *sage, "hydra.launcher.torch_func_on_cpu=true"
    )
    assert "stack of 2" in proc.stdout, proc.stdout
    for job in range(2):
        m = read_metrics(tmp_path / "sage" / str(job))
        assert m["model"] == "sage" and m["stack"]["members"] == 2 and "test/f1_macro" in m
    proc = stacked_sweep(tmp_path / "bad", cache_dir, "model=gcn", "model.name=inplace",
                         f"model._target_={PLAIN}.InPlaceSum",
                         "hydra.launcher.torch_func_on_cpu=true")  # fmt: skip
    assert "not stacked (InPlaceSum: torch.func cannot stack it" in proc.stdout, proc.stdout
    assert all((tmp_path / "bad" / str(j) / "metrics.json").is_file() for j in range(2))
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("backbone", "reason"),
    [
        ("DropEdge", "torch.func cannot stack it ("),
        ("Normed", "its buffer norm.running_mean changes as it trains"),
        ("Lazy", "torch.func cannot stack it ("),
    ],
)
def test_what_torch_func_cannot_stack_is_named_before_training(
    tmp_path: Path, cache_dir: Path, backbone: str, reason: str
) -> None:
    """Found by the probe (eval and training mode, buffers watched) or when the stack is
    built, in one line: the jobs then run one by one instead of failing mid-training."""
    cfgs = configs(tmp_path, cache_dir, range(2), "model=gcn", "data=cora",
                   f"model._target_={PLAIN}.{backbone}")  # fmt: skip
    with pytest.raises(NotStackable, match=re.escape(f"{backbone}: {reason}")):
        StackTrainer(cfgs, torch_func_on_cpu=True)


@pytest.mark.parametrize("model", ["mlp", "gcn", "gat", "gatv2"])
def test_with_dropout_on_a_member_is_the_lone_run_of_its_seed(
    tmp_path: Path, cache_dir: Path, model: str
) -> None:
    """The paper recipe, dropout on: a member draws its lone run's masks from its own
    stream and computes with the lone rounding, so its metrics are those of
    ``train.py seed=1`` alone."""
    common = (f"model={model}", "data=cora", "trainer.max_epochs=150")
    stack = StackTrainer(configs(tmp_path / "stack", cache_dir, range(2), *common))
    stack.fit()
    member = stack.results()[1].metrics
    (cfg,) = configs(tmp_path / "lone", cache_dir, range(1, 2), *common,
                     "trainer.enable_progress_bar=false")  # fmt: skip
    lone = run(cfg)
    keys = ("test/acc", "val/acc_best", "best_epoch", "epochs")
    assert [member[k] for k in keys] == [lone[k] for k in keys]


def test_a_plain_sweep_stacks_and_each_member_gets_its_lone_runs_pictures(
    tmp_path: Path, cache_dir: Path
) -> None:
    """No launcher named: the seeds stack; each job has the pictures of ``callbacks``,
    computed from its own weights (dropout off: its silhouettes and degree accuracies
    are the lone run's). ``hydra/launcher=basic`` runs the jobs one by one."""
    pictures = ("callbacks=[tsne,degree_accuracy]", "model=gat", "data=cora",
                "trainer.max_epochs=20", *NO_DROPOUT["gat"])  # fmt: skip
    overrides = [o for o in sweep_overrides(tmp_path / "s", cache_dir) if o != "callbacks=none"]
    proc = run_entry("train.py", *overrides, "seed=0,1", *pictures)
    assert "2 jobs in 1 stack" in proc.stdout
    lone_dir = tmp_path / "lone"
    run_entry("train.py", f"hydra.run.dir={lone_dir}", f"paths.cache_dir={cache_dir}",
              "trainer=cpu", "logger=none", "seed=1", *pictures)  # fmt: skip
    member, lone = read_metrics(tmp_path / "s" / "1"), read_metrics(lone_dir)
    for key in ("tsne/silhouette_before", "tsne/silhouette_after", "degree/acc_low", "test/acc"):
        assert member[key] == lone[key], key
    for name in ("tsne_before.png", "tsne_after.png", "degree_accuracy.png"):
        assert (tmp_path / "s" / "1" / name).stat().st_size > 10_000
    table = "degree_accuracy.csv"
    assert (tmp_path / "s" / "1" / table).read_text() == (lone_dir / table).read_text()
    basic = run_entry("train.py", *sweep_overrides(tmp_path / "b", cache_dir), "seed=0,1",
                      "hydra/launcher=basic", "model=gcn", "data=cora",
                      "trainer.max_epochs=2")  # fmt: skip
    assert "stacked launcher" not in basic.stdout
    assert all((tmp_path / "b" / str(j) / "metrics.json").is_file() for j in range(2))


def test_a_members_history_reaches_its_csv_log_at_every_read_out(
    tmp_path: Path, cache_dir: Path
) -> None:
    """The stack writes each member's epochs to its CSV log at each read-out, before
    its job is finished (W&B gets them when the stack ends)."""
    cfgs = configs(tmp_path, cache_dir, range(2), "model=gcn", "data=cora",
                   "trainer.max_epochs=20", "logger=csv")  # fmt: skip
    stack = StackTrainer(cfgs, readout_every=5)
    stack.log_live()
    stack.max_epochs = 10  # two read-outs
    stack.fit()
    for s in range(2):
        lines = (tmp_path / str(s) / "csv" / "metrics.csv").read_text().splitlines()
        assert len(lines) == 1 + 10 and "val/acc_best" in lines[0]
    stack.max_epochs = 20
    stack.fit()  # two more read-outs: the rows follow
    stack.close_live()
    lines = (tmp_path / "0" / "csv" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 20
