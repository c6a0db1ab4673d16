"""The README and docs/: every relative link leads to a file that exists and, with an anchor, to one of its
headings (GitHub's anchors); the README stays a front page; the claims it and docs/ make about defaults hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stages.params import load_params

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"[`*]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a `#` in a code block is no heading
    return {anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_anchor_is_githubs():
    assert anchor("Scenario A where the work runs (bench/scenario_a.py, issue 15)") == (
        "scenario-a-where-the-work-runs-benchscenario_apy-issue-15"
    )
    assert (
        anchor("The default pipeline: `dvc repro` from nothing")
        == "the-default-pipeline-dvc-repro-from-nothing"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if fragment and linked.suffix == ".md":
            assert fragment in anchors(linked), f"{page.name}: {target}: no such heading"


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:2] == ["What it does", "Scenarios"], headings
    for page in (
        "docs/pipeline.md",
        "docs/validation.md",
        "docs/models.md",
        "docs/scale.md",
        "docs/cluster.md",
    ):
        assert f"]({page}" in text, page
    assert "](bench/RESULTS.md" in text
    # scenario B's command, as the README gives it
    assert "dvc exp run -S xgb.max_depth=8" in text


def test_model_form_default_as_documented(tmp_path):
    """docs/models.md: params.yaml sets per_protein; the schema's default, where the key is absent, is joint."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert load_params(ROOT / "params.yaml").train.model == raw["train"]["model"] == "per_protein"
    del raw["train"]["model"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").train.model == "joint"
    assert (
        "`params.yaml` sets `train.model: per_protein`, the schema's default is\n`joint`"
        in (ROOT / "docs" / "models.md").read_text()
    )
