"""The manual and its pages: every relative link resolves (files and #anchors), and the
README stays a manual."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page: Path) -> None:
    links = LINK.findall(page.read_text())
    for target in links:
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(resolved), f"{page.name}: no heading for #{anchor}"


def test_docs_pages_say_what_they_cover_and_are_linked() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"README does not link {page.name}"
        first = next(line for line in page.read_text().splitlines()[1:] if line.strip())
        assert len(first) > 20, f"{page.name} does not open with what it covers"


def test_readme_is_a_manual_of_at_most_250_lines() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def readme_overrides() -> list[list[str]]:
    """Every ``train.py`` command line of the README's code blocks (placeholders aside),
    and the overrides its prose gives as working settings."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = []
    for line in "\n".join(blocks).splitlines():
        if "train.py" in line and "<" not in line:
            words = shlex.split(line.split("#")[0])
            lines.append(words[words.index(next(w for w in words if "train.py" in w)) + 1 :])
    prose = ["early_stopping.monitors=[val/acc:max]", "~callbacks.tsne", "callbacks=none"]
    return lines + [[o] for o in prose if f"`{o}`" in text or f"'{o}'" in text]


@pytest.mark.parametrize("argv", readme_overrides(), ids=" ".join)
def test_every_override_the_readme_shows_does_what_it_says(argv: list[str], tmp_path) -> None:
    """Composed as train.py composes it (a sweep: its first job), each override is in the
    config as given: a group's choice is chosen, a value replaces (not merges into) the
    default, a removed key is gone; and the line passes the command-line checks."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from gnn_attn.run.entry import check_command_line, probe_jobs

    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    check_command_line([*argv, f"hydra.run.dir={tmp_path}", f"hydra.sweep.dir={tmp_path}"],
                       "train")  # fmt: skip
    first = probe_jobs(overrides)[0]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=first, return_hydra_config=True)
    for o in OverridesParser.create().parse_overrides(first):
        key, value = o.key_or_group, o.value()
        if o.is_delete():
            assert OmegaConf.select(cfg, key) is None, key
        elif key in cfg.hydra.runtime.choices or "/" in key:
            assert cfg.hydra.runtime.choices[key] == value, key
        else:
            got = OmegaConf.select(cfg, key)
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert got == value, (key, got, value)
