"""Bad input, faults, interrupts and reproducibility, met the way a user meets them."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from gnn_attn.callbacks import EarlyStoppingCheckpoint
from gnn_attn.data import PlanetoidDataModule
from gnn_attn.errors import UserError, exits_cleanly
from gnn_attn.run.build import config_error
from gnn_attn.run.entry import check_command_line, run_task
from gnn_attn.run.train import train
from tests.conftest import (
    CONF,
    ROOT,
    read_metrics,
    run_cli,
    run_entry,
    start_train,
    train_overrides,
)

DATA = ROOT / "data" / "planetoid"


# (overrides, the start of the one line). The first group fails when the command line
# composes (Hydra/OmegaConf), the second when the config is built (the constructors'
# own checks, in config words), the last one during the run.
BAD_INPUT = [
    (["model=transformer"], "Error: unknown model 'transformer'; choose one of gat, gatv2"),
    (["data=reddit"], "Error: unknown data 'reddit'; choose one of citeseer, cora"),
    (["model=gcn", "model.heads=4"], "Error: Could not override 'model.heads'"),
    (["trainer.max_epoch=5"], "Error: Could not override 'trainer.max_epoch'"),
    (["seed=abc"], "Error: seed: Value 'abc' of type 'str' could not be converted to Integer"),
    (["threads=two"], "Error: threads: Value 'two'"),
    (
        ["hydra.run.dir=/dev/null/run"],
        "Error: cannot create the output dir /dev/null/run (/dev/null is not a folder)",
    ),
    (
        ["hydra.run.dir=/proc/gnn_attn/run"],  # as root only the kernel says no
        "Error: cannot create the output dir /proc/gnn_attn/run (No such file or directory)",
    ),
    # values against the types the constructors declare (Lightning's Trainer too)
    (["trainer.max_epochs=abc"], "Error: trainer.max_epochs=abc: expected int | None"),
    (["trainer.deterministic=maybe"], "Error: trainer.deterministic=maybe: expected bool"),
    (["model.concat=maybe"], "Error: model.concat=maybe: expected bool | Sequence[bool]"),
    (["data.normalize_features=maybe"], "Error: data.normalize_features=maybe: expected bool"),
    (["data.batch_size='64'"], "Error: data.batch_size=64: expected int (an argument of"),
    (["callbacks=tsne", "callbacks.tsne.max_nodes=many"], "Error: callbacks.tsne.max_nodes="),
    (["logger=csv", "+logger.csv.flush_logs_every_n_steps=x"], "Error: logger.csv.flush_logs_"),
    (["early_stopping.patience=soon"], "Error: early_stopping.patience=soon: expected int"),
    (["trainer.max_epochs=true"], "Error: trainer.max_epochs=True: expected int | None"),
    (["data.num_neighbors=['10','10']"], "Error: data.num_neighbors=['10', '10']: expected"),
    (["checkpoint.every_minutes=soon"], "Error: checkpoint.every_minutes=soon: expected float"),
    (["-m", "model.lr=0.01,abc"], "Error: model.lr: Value 'abc' of type 'str' could not be"),
    # validation alone selects
    (["optimized_metric=test/acc"], "Error: optimized_metric=test/acc would select on the test"),
    (
        ["early_stopping.monitors=[val/loss:min,test/acc:max]"],
        "Error: early_stopping.monitors=test/acc would select on the test set",
    ),
    (["early_stopping.monitors=[val/acc]"], "Error: early_stopping.monitors entry 'val/acc'"),
    (["model.heads=0"], "Error: model.heads must be an integer ≥ 1 (got 0)"),
    (["model.hidden_channels=0"], "Error: model.hidden_channels must be an integer ≥ 1 (got 0)"),
    (["model.num_layers=0"], "Error: model.num_layers must be an integer ≥ 1 (got 0)"),
    (["model.dropout=1.0"], "Error: model.dropout must be in [0, 1) (got 1.0)"),
    (["model.lr=0"], "Error: model.lr must be > 0 (got 0"),
    (["model.lr=fast"], "Error: model.lr: Value 'fast' of type 'str' could not be converted"),
    (["model.weight_decay=-1"], "Error: model.weight_decay must be ≥ 0 (got -1"),
    (["model.weight_decay_on=bias"], "Error: model.weight_decay_on must be one of all, weights"),
    (["model.version=v3"], "Error: model.version 'v3' is unknown; choose v1 or v2"),
    (["model._target_=nowhere.Net"], "Error: model._target_ 'nowhere.Net' cannot be imported"),
    (["+model.heds=4"], "Error: model.heds is not an argument of gnn_attn.models.GAT"),
    (["early_stopping.patience=-1"], "Error: early_stopping.patience must be an integer ≥ 0"),
    (["ckpt_path=/nonexistent/last.ckpt"], "Error: checkpoint not found"),
    (["model.dropout_per_head=maybe"], "Error: model.dropout_per_head=maybe: expected bool"),
    (
        ["model.impl=pyg", "model.feat_dropout=0", "model.dropout_per_head=true"],
        "Error: model.dropout_per_head needs impl=fused",
    ),
    (["trainer=ddp_cpu"], "Error: trainer=ddp with 2 processes needs mini-batches"),
    (
        ["model=gat", "data.loader=neighbor", "data.num_neighbors=[5,5,5]"],
        "Error: data.num_neighbors has 3 entries but the model has 2 layers",
    ),
    (["data.loader=sampled"], "Error: data.loader 'sampled' is unknown; choose full or neighbor"),
    (["data=synthetic", "data.homophily=2"], "Error: data.homophily must be in [0, 1]"),
    (["trainer.max_epochs=0"], "Error: training ran no validation epoch"),
    (["data=karate", "data.split=null"], "Error: data.split: karate has no val_mask, test_mask"),
    # a real allocation failure: a model far too wide for memory
    (["model=gat", "model.hidden_channels=1000000000"], "Error: out of memory (could not allocate"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys, overrides, message: str) -> None:
    """The entry wrapper in-process, as ``train.py`` runs it: first the command line
    composes (:func:`check_command_line`), then the task runs (:func:`run_task`)."""
    out = tmp_path / "out"
    args = [*train_overrides(out, tmp_path / "c", *overrides), f"paths.output_dir={out}"]
    with pytest.raises(SystemExit) as exit_info:
        with exits_cleanly():
            check_command_line(args, "train")
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=args)
        run_task(train, cfg)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(message), lines
    assert "Traceback" not in "\n".join(lines)
    assert not (out / "metrics.json").exists()


def test_constructor_errors_are_named_as_config_keys() -> None:
    """What a constructor says about its own argument, in the words of the config."""
    node = {
        "_target_": "gnn_attn.callbacks.EarlyStoppingCheckpoint",
        "monitors": [],
        "dirpath": ".",
    }
    with pytest.raises(ValueError) as info:
        EarlyStoppingCheckpoint(".", monitors=["val/acc:up"])
    err = config_error("early_stopping", node, info.value)
    assert str(err).startswith("early_stopping.monitors entry 'val/acc:up' must be")
    with pytest.raises(TypeError) as info:
        EarlyStoppingCheckpoint(".", monitor="val/acc")  # type: ignore[call-arg]
    err = config_error("early_stopping", node, info.value)
    assert str(err).startswith("early_stopping.monitor is not an argument of gnn_attn.callbacks")


def test_unknown_optimized_metric_is_one_line(tmp_path: Path, capsys) -> None:
    """Known only once the run has its metrics: the run's files stay, the sweeper gets
    one line instead of a KeyError."""
    out = tmp_path / "out"
    extra = ["model=mlp", "data=cora", "trainer.max_epochs=2", "optimized_metric=val/f1"]
    args = [*train_overrides(out, tmp_path / "c", *extra), f"paths.output_dir={out}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=args)
    with pytest.raises(SystemExit) as exit_info:
        run_task(train, cfg)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("Error: optimized_metric=val/f1 is not a metric of the run"), last


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=reddit"], "Error: unknown data 'reddit'"),
        (["model.heads=0"], "Error: model.heads must be an integer ≥ 1 (got 0)"),
    ],
)
def test_bad_input_through_the_cli(tmp_path: Path, overrides, message: str) -> None:
    out = tmp_path / "out"
    proc = run_cli("train.py", *train_overrides(out, tmp_path / "c", *overrides), check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(message), lines
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()


def test_eval_without_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    proc = run_entry("eval.py", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ckpt_path: missing mandatory")
    assert "Traceback" not in proc.stderr


def test_checkpoint_of_another_model_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    first = tmp_path / "gcn"
    run_entry(
        "train.py",
        *train_overrides(first, cache_dir, "model=gcn", "data=cora", "trainer.max_epochs=2"),
    )
    proc = run_entry(
        "train.py",
        *train_overrides(
            tmp_path / "gat",
            cache_dir,
            "model=gat",
            "data=cora",
            f"ckpt_path={first}/checkpoints/last.ckpt",
        ),
        check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "is a gcn (gnn_attn.models.GCN) checkpoint but model=gat (gnn_attn.models.GAT)" in last


def test_shipped_files_are_checked_against_sha256(tmp_path: Path) -> None:
    shutil.copytree(DATA / "Cora", tmp_path / "Cora")
    shutil.copy(DATA / "SHA256SUMS", tmp_path / "SHA256SUMS")
    target = tmp_path / "Cora" / "raw" / "ind.cora.tx"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte, same size
    target.write_bytes(bytes(data))
    dm = PlanetoidDataModule("cora", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match=r"ind\.cora\.tx does not match its sha256"):
        dm.setup()


def test_diverging_training_stops_and_is_recorded(tmp_path: Path, cache_dir: Path) -> None:
    proc = run_entry(
        "train.py",
        *train_overrides(
            tmp_path, cache_dir, "model=mlp", "data=cora", "model.lr=1e30", "model.dropout=0"
        ),
        check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: training diverged: train/loss is nan at epoch"), last
    assert "lower model.lr" in last
    assert read_metrics(tmp_path)["status"] == "failed"


def test_wandb_that_cannot_start_falls_back_to_csv(tmp_path: Path, cache_dir: Path) -> None:
    proc = run_entry(
        "train.py",
        *train_overrides(
            tmp_path,
            cache_dir,
            "logger=wandb",
            "logger.wandb.mode=no-such-mode",
            "model=gcn",
            "data=cora",
            "trainer.max_epochs=3",
        ),
    )
    assert "W&B could not start" in proc.stderr
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert read_metrics(tmp_path)["epochs"] == 3


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_last_checkpoint_and_prints_resume(
    tmp_path: Path, cache_dir: Path, sig, code
) -> None:
    out = tmp_path / "out"
    args = train_overrides(
        out,
        cache_dir,
        "model=gcn",
        "data=cora",
        "callbacks=dataset_report",
        "trainer.max_epochs=100000",
        "early_stopping.patience=0",
    )
    proc = start_train(*args)
    deadline = time.time() + 120
    # training runs once the CSV log is first flushed (a signal during set-up and the
    # "before" pictures is another matter: see the interrupt issue)
    while not (out / "csv" / "metrics.csv").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert "Resume with:" in stderr and f"ckpt_path={out}/checkpoints/last.ckpt" in stderr
    assert "Traceback" not in stderr
    assert not (out / "metrics.json").exists()  # not presented as a finished result


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _comparable(metrics: dict) -> dict:
    skip = {"fit_seconds", "ms_per_epoch", "run_seconds", "checkpoint", "output_dir"}
    return {k: v for k, v in metrics.items() if k not in skip}


def test_same_seed_same_numbers(tmp_path: Path, cache_dir: Path) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run_entry(
            "train.py",
            *train_overrides(
                run, cache_dir, "model=gat", "data=cora", "trainer.max_epochs=12", "seed=5"
            ),
        )
    assert _comparable(read_metrics(runs[0])) == _comparable(read_metrics(runs[1]))
    _same_weights(*runs)


def test_resume_is_exact(tmp_path: Path, cache_dir: Path) -> None:
    common = ["model=gat", "data=cora", "seed=2", "early_stopping.patience=1000"]
    whole, first, resumed = tmp_path / "whole", tmp_path / "first", tmp_path / "resumed"
    run_entry("train.py", *train_overrides(whole, cache_dir, *common, "trainer.max_epochs=16"))
    run_entry("train.py", *train_overrides(first, cache_dir, *common, "trainer.max_epochs=8"))
    run_entry(
        "train.py",
        *train_overrides(
            resumed,
            cache_dir,
            *common,
            "trainer.max_epochs=16",
            f"ckpt_path={first}/checkpoints/last.ckpt",
        ),
    )
    _same_weights(whole, resumed)
    a, b = read_metrics(whole), read_metrics(resumed)
    for key in ("test/acc", "val/acc", "val/acc_best", "best_epoch", "epochs"):
        assert a[key] == b[key], key


def test_misspelt_key_in_a_sweep_is_one_line_before_any_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_entry(
        "train.py",
        "-m",
        f"hydra.sweep.dir={sweep}",
        "model=gat,gatv2",
        "seed=range(2)",
        "trainer.max_epoch=5",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: Could not override 'trainer.max_epoch'"), lines
    assert "Traceback" not in proc.stderr
    assert not sweep.exists()  # no job started


def test_a_file_of_the_run_dir_that_cannot_be_written_is_one_line(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A write that fails inside the run dir (here a folder stands where metrics.json goes;
    a full disk or a read-only mount alike) is one line naming the file and the reason."""
    out = tmp_path / "out"
    (out / "metrics.json").mkdir(parents=True)
    proc = run_entry(
        "train.py",
        *train_overrides(out, cache_dir, "model=mlp", "data=cora", "trainer.max_epochs=2"),
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: cannot write {out / 'metrics.json'} (Is a directory)"), last
    assert "Traceback" not in proc.stderr
