"""The benchmark commands run end to end on tiny budgets and write what they promise
(no timing is asserted: timings are figures to read, not to test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_bench_compares_the_four_loops(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--epochs", "3", "--reps", "1", "--models", "gat", "--datasets", "cora"]
    args += ["--stack-sizes", "1", "2"]  # (e) as a stack of one and of two members
    args += ["--user-epochs", "2"]  # (e) for a user's SAGE, lone and stacked
    proc = _script("bench.py", *args, "--out", str(out), cwd=ROOT)
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert (row["dataset"], row["model"]) == ("cora", "gat")
    for kind in ("article", "pyg_csr", "ours", "bare", "stacked1", "stacked2"):
        assert row[f"{kind}_ms"] > 0 and 0 <= row[f"{kind}_acc"] <= 1
    assert row["a_over_c"] == row["article_ms"] / row["ours_ms"]
    assert "(a) article" in proc.stdout  # the printed table
    (user,) = result["user_backbone"]
    assert user["model"] == "sage" and user["ours_ms"] > 0 and user["stacked10_ms"] > 0


@pytest.mark.slow
def test_bench_scale_reports_both_modes_and_slopes(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--sizes", "1500,3000", "--epochs", "2", "--cache-dir", str(tmp_path / "cache")]
    _script("bench_scale.py", *args, "--out", str(out), cwd=tmp_path)
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert [(r["nodes"], r["loader"]) for r in runs] == [
        (1500, "full"),
        (1500, "neighbor"),
        (3000, "full"),
        (3000, "neighbor"),
    ]
    assert all(r["status"] == "ok" and r["epoch_seconds"] > 0 for r in runs)
    assert runs[2]["edges"] > runs[0]["edges"]
    assert set(result["slopes"]) == {"full", "neighbor"}
    assert all(isinstance(s, float) for s in result["slopes"].values())
    assert out.with_suffix(".png").stat().st_size > 10_000
