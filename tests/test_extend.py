"""The README's "Add your own model" example, as a new researcher would follow it: a plain
PyG backbone in a new module and one YAML, no other file touched, trains with the
default pictures, is swept, aggregated and evaluated."""

from __future__ import annotations

import os
import re
from pathlib import Path

from gnn_attn.analysis.aggregate import aggregate
from tests.conftest import ROOT, read_metrics, run_cli


def readme_block(after: str, lang: str) -> str:
    """The first ``lang`` code block of the README after the text ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {lang} block after {after!r}"
    return match.group(1)


def test_readme_example_backbone_trains_sweeps_and_evaluates(
    tmp_path: Path, cache_dir: Path, monkeypatch
) -> None:
    user = tmp_path / "user"
    (user / "my_models").mkdir(parents=True)
    (user / "my_models" / "sage.py").write_text(readme_block("my_models/sage.py", "python"))
    (user / "conf" / "model").mkdir(parents=True)
    (user / "conf" / "model" / "sage.yaml").write_text(readme_block("conf/model/sage.yaml", "yaml"))
    monkeypatch.setenv("PYTHONPATH", f"{user}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    sweep = tmp_path / "sweep"
    run_cli(
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
    proc = run_cli(
        "eval.py",
        f"ckpt_path={jobs['sage']}/checkpoints/best.ckpt",
        f"hydra.run.dir={tmp_path / 'eval'}",
        f"paths.cache_dir={cache_dir}",
        "trainer=cpu",
    )
    assert f"test/acc {sage['test/acc']:.4f}" in proc.stdout
