"""The same guarantees on a CUDA GPU: the fused GAT layer equals PyG's layer there, CSR
features work on the device, and train.py / eval.py run with ``trainer=gpu`` (full
batch and mini-batches). Skipped on machines without CUDA (CI has none); run them on a
GPU machine with ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import json

import pytest
import torch
from torch_geometric.nn import GATConv, GATv2Conv

from gnn_attn.models.sparse import dropout, project_per_head
from gnn_attn.run.stacked import StackTrainer
from tests.conftest import read_metrics, run_cli, sweep_overrides, train_overrides
from tests.models.pyg_reference import fused_layer, load_pyg
from tests.models.test_fast_paths import BACKBONES, assert_same_gradients, random_graph

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"
)
CUDA = torch.device("cuda")


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("sparse", [False, True])
def test_fused_layer_equals_pyg_on_cuda(version: str, sparse: bool) -> None:
    torch.manual_seed(0)
    x, edge_index = random_graph(n=300, f=50, e=2000)
    x, edge_index = x.to(CUDA), edge_index.to(CUDA)
    ref_cls = GATConv if version == "v1" else GATv2Conv
    ref = ref_cls(50, 6, heads=4).to(CUDA).eval()
    fused = fused_layer(50, 6, heads=4, version=version).to(CUDA)
    load_pyg(fused, ref.state_dict())
    fused.eval()
    out_ref = ref(x, edge_index)
    out_fused = fused(x.to_sparse_csr() if sparse else x, edge_index)
    assert out_fused.device.type == "cuda"
    assert torch.allclose(out_fused, out_ref, atol=1e-5)
    assert_same_gradients(ref, out_ref, fused, out_fused, atol=1e-4)


@pytest.mark.parametrize("make", BACKBONES[:4])  # fused GAT, GCN, MLP
def test_backbones_take_csr_on_cuda(make) -> None:
    torch.manual_seed(0)
    x, edge_index = random_graph()
    net = make().eval()
    cpu = net(x, edge_index)
    net = net.to(CUDA)
    gpu = net(x.to(CUDA).to_sparse_csr(), edge_index.to(CUDA))
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


def test_sparse_dropout_on_cuda_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 100, device=CUDA)
    x[x < 0.9] = 0
    csr = x.to_sparse_csr()
    draws = torch.stack([dropout(csr, 0.6, True).to_dense() for _ in range(400)])
    assert ((draws != 0) <= (x != 0)).all()  # only stored values are dropped
    keep = (draws != 0).float().mean()
    assert abs(float(keep) - 0.4 * float((x != 0).float().mean())) < 0.01
    assert torch.allclose(draws.mean(0), x, atol=0.25)


@pytest.mark.parametrize("loader", ["full", "neighbor"])
def test_train_and_eval_on_gpu(tmp_path, cache_dir, loader: str) -> None:
    out = tmp_path / "run"
    run_cli(
        "train.py",
        *train_overrides(out, cache_dir, "model=gat", "data=cora", f"data.loader={loader}"),
        "trainer=gpu",
        "trainer.max_epochs=60",
    )
    m = read_metrics(out)
    assert m["epochs"] >= 1 and m["test/acc"] > 0.5
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"]  # written from the GPU run, loadable anywhere
    ev = tmp_path / "eval"
    run_cli(
        "eval.py",
        f"ckpt_path={out}/checkpoints/best.ckpt",
        f"hydra.run.dir={ev}",
        f"paths.cache_dir={cache_dir}",
        "trainer=gpu",
    )
    reproduced = json.loads((ev / "eval_metrics.json").read_text())["test/acc"]
    # CUDA's index_add/scatter use atomics (sums in any order): allow 2 of 1000 test nodes
    assert abs(reproduced - m["test/acc"]) <= 0.002


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_per_head_input_dropout_on_cuda(version: str) -> None:
    """The per-head path (CSR head copies, v2's per-head weight layout) on the device: a
    dropout that drops nothing keeps outputs and gradients; real dropout draws
    independent masks per head."""
    torch.manual_seed(0)
    x, edge_index = random_graph(n=300, f=50, e=2000)
    x, edge_index = x.to(CUDA).to_sparse_csr(), edge_index.to(CUDA)
    plain = fused_layer(50, 6, heads=4, version=version).to(CUDA)
    per_head = fused_layer(50, 6, heads=4, version=version, input_dropout=1e-9).to(CUDA)
    per_head.load_state_dict(plain.state_dict())
    out_plain, out_head = plain(x, edge_index), per_head(x, edge_index)
    assert torch.allclose(out_head, out_plain, atol=1e-5)
    out_plain.square().sum().backward()
    out_head.square().sum().backward()
    assert torch.allclose(per_head.weight.grad, plain.weight.grad, atol=1e-4)
    ones = torch.ones(4000, 1, device=CUDA).to_sparse_csr()
    kept = project_per_head(ones, torch.ones(1, 4, 1, device=CUDA), 4, 0.5, True) != 0
    assert abs(float((kept[:, 0] & kept[:, 1]).float().mean()) - 0.25) < 0.03


def test_stacked_epochs_replay_a_cuda_graph_with_no_host_sync(tmp_path, cache_dir) -> None:
    """Dropout off, a stack of 3 GATs: the epochs replayed from a CUDA graph give the
    eager epochs' history, and an epoch makes no synchronizing CUDA call."""
    from tests.test_stacked import NO_DROPOUT, configs

    def stack(graph: bool) -> StackTrainer:
        cfgs = configs(tmp_path, cache_dir, range(3), "model=gat", "data=cora",
                       "trainer.max_epochs=120", *NO_DROPOUT["gat"], trainer="gpu")  # fmt: skip
        trainer = StackTrainer(cfgs, readout_every=40, cuda_graph=graph)
        trainer.fit()
        return trainer

    eager, graphed = stack(False), stack(True)
    assert graphed.graphed and not eager.graphed
    torch.testing.assert_close(graphed.history, eager.history, atol=2e-3, rtol=1e-3)
    fresh = StackTrainer(configs(tmp_path, cache_dir, range(3), "model=gat", "data=cora",
                                 trainer="gpu"))  # fmt: skip
    fresh.run_epochs(1)  # builds the caches (the graph's structure is read once)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fresh.run_epochs(3)  # eager epochs: any synchronizing call raises
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_stacked_sweep_on_gpu(tmp_path, cache_dir) -> None:
    run_cli("train.py", *sweep_overrides(tmp_path / "s", cache_dir, trainer="gpu"),
            "hydra/launcher=stacked", "model=gat,gcn", "data=cora", "seed=0,1,2",
            "trainer.max_epochs=80")  # fmt: skip
    for job in range(6):
        metrics = read_metrics(tmp_path / "s" / str(job))
        assert metrics["stack"]["device"].startswith("cuda")
    job = tmp_path / "s" / "1"
    run_cli("eval.py", f"ckpt_path={job}/checkpoints/best.ckpt",
            f"hydra.run.dir={tmp_path / 'eval'}", "trainer=gpu")  # fmt: skip
    again = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    assert again["test/acc"] == read_metrics(job)["test/acc"]
