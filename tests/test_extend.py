"""The README's "Add your own model" example, as a new researcher would follow it: a plain
PyG backbone in a new module and one YAML, no other file touched, trains with the
default pictures, is swept, aggregated and evaluated."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gnn_attn.analysis.aggregate import aggregate
from tests.conftest import ROOT, read_metrics, run_entry


def readme_block(after: str, lang: str) -> str:
    """The first ``lang`` code block of the README after the text ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {lang} block after {after!r}"
    return match.group(1)


@pytest.mark.slow
def test_readme_example_backbone_trains_sweeps_and_evaluates(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    user = tmp_path / "user"
    (user / "my_models").mkdir(parents=True)
    (user / "my_models" / "sage.py").write_text(readme_block("my_models/sage.py", "python"))
    (user / "conf" / "model").mkdir(parents=True)
    (user / "conf" / "model" / "sage.yaml").write_text(readme_block("conf/model/sage.yaml", "yaml"))
    monkeypatch.setenv("PYTHONPATH", f"{user}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(user))  # this process (run_entry); workers: PYTHONPATH
    sweep = tmp_path / "sweep"
    run_entry(
        "train.py",
        "-m",
        f"hydra.searchpath=[file://{user}/conf]",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={cache_dir}",
        "model=sage,gcn",
        "data=cora",
        "trainer=cpu",
        "trainer.max_epochs=100",
        "trainer.enable_progress_bar=false",
        "print_config=false",
    )
    jobs = {read_metrics(d)["model"]: d for d in sweep.iterdir() if (d / "metrics.json").exists()}
    assert set(jobs) == {"sage", "gcn"}
    sage = read_metrics(jobs["sage"])
    assert sage["test/acc"] > 0.6 and sage["epochs"] <= 100
    # default callbacks and features: the pictures that apply are drawn, attention skipped
    for name in ("tsne_before.png", "tsne_after.png", "degree_accuracy.png", "dataset.json"):
        assert (jobs["sage"] / name).is_file(), name
    assert not (jobs["sage"] / "attention.pt").exists()
    assert sage["tsne/silhouette_after"] > sage["tsne/silhouette_before"]
    # the aggregated table has a row for it, in the order its YAML declares (gcn: 2, sage: 5)
    table = aggregate(sweep)
    models = [r["model"] for r in table["rows"]]
    assert models == ["sage", "gcn"]  # rows in job order; the paper layout orders them
    md = (sweep / "results.md").read_text()
    assert md.index("| gcn |") < md.index("| sage |")
    # eval.py rebuilds it from the checkpoint alone
    proc = run_entry(
        "eval.py",
        f"ckpt_path={jobs['sage']}/checkpoints/best.ckpt",
        f"hydra.run.dir={tmp_path / 'eval'}",
        f"paths.cache_dir={cache_dir}",
        "trainer=cpu",
    )
    assert f"test/acc {sage['test/acc']:.4f}" in proc.stdout


PLAIN_GCN = '''
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv


class PlainGCN(nn.Module):
    """A plain backbone taking gcn.yaml's arguments, with no first_layer attribute."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 16,
                 num_layers: int = 2, dropout: float = 0.5, activation: str = "relu",
                 residual: bool = False) -> None:
        super().__init__()
        sizes = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(sizes, sizes[1:]))
        self.dropout = dropout

    def forward(self, x, edge_index):
        for i, conv in enumerate(self.convs):
            x = conv(F.dropout(x, self.dropout, self.training), edge_index)
            x = F.relu(x) if i < len(self.convs) - 1 else x
        return x
'''


def test_a_copy_of_gcn_yaml_with_only_target_and_name_changed_trains(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    """The README's advice taken literally: copy gcn.yaml (it says weight_decay_on:
    first_layer), change `_target_` and `name`; the first layer is then the backbone's
    first submodule with parameters (convs[0]) and only it is decayed."""
    from gnn_attn.models.module import decay_groups

    user = tmp_path / "user"
    (user / "plain_models").mkdir(parents=True)
    (user / "plain_models" / "plain.py").write_text(PLAIN_GCN)
    text = (ROOT / "conf" / "model" / "gcn.yaml").read_text()
    assert "weight_decay_on: first_layer" in text
    text = re.sub(r"(?m)^_target_: .*$", "_target_: plain_models.plain.PlainGCN", text)
    text = re.sub(r"(?m)^name: .*$", "name: plaingcn", text)
    (user / "conf" / "model").mkdir(parents=True)
    (user / "conf" / "model" / "plaingcn.yaml").write_text(text)
    monkeypatch.syspath_prepend(str(user))
    out = tmp_path / "run"
    run_entry(
        "train.py",
        f"hydra.searchpath=[file://{user}/conf]",
        f"hydra.run.dir={out}",
        f"paths.cache_dir={cache_dir}",
        "model=plaingcn",
        "data=cora",
        "trainer=cpu",
        "trainer.max_epochs=30",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
        "logger=none",
    )
    m = read_metrics(out)
    assert m["model"] == "plaingcn" and m["epochs"] == 30 and m["test/acc"] > 0.3
    from plain_models.plain import PlainGCN

    net = PlainGCN(10, 3)
    decayed, rest = decay_groups(net, "first_layer")
    first = {id(p) for p in net.convs[0].parameters()}
    assert {id(p) for p in decayed["params"]} == first and rest["weight_decay"] == 0.0
    assert sum(p.numel() for p in rest["params"]) == sum(
        p.numel() for p in net.convs[1].parameters()
    )
    assert len(decayed["params"]) == 2  # convs[0]'s weight and bias
