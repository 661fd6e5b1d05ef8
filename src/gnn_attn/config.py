"""OmegaConf resolvers used by the configs, registered when :mod:`gnn_attn` is imported."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def project_root() -> str:
    """The checkout holding ``conf/`` (an editable install), else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return str(here if (here / "conf").is_dir() else Path.cwd())


def paper_datasets(data_dir: str) -> str:
    """``cora,citeseer``, plus ``pubmed`` when its raw files are in ``data_dir``."""
    pubmed = Path(data_dir) / "PubMed" / "raw" / "ind.pubmed.graph"
    return "cora,citeseer,pubmed" if pubmed.is_file() else "cora,citeseer"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", project_root)
    if not OmegaConf.has_resolver("paper_datasets"):
        OmegaConf.register_new_resolver("paper_datasets", paper_datasets)
    if not OmegaConf.has_resolver("gat_name"):
        OmegaConf.register_new_resolver("gat_name", gat_name)


def gat_name(version: str) -> str:
    """``gat`` for attention version v1, ``gatv2`` for v2 (the model's name in results)."""
    return "gat" if str(version) == "v1" else f"gat{version}"
