"""The sweep recipe of docs/models.md through real `dvc exp` commands: queue a grid, run it, compare, keep the best."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import Repo, clone, run_queue

pytestmark = pytest.mark.slow

# docs/models.md's recipe, the same commands ("Sweeps and the model registry").
GRID = ["-S", "train.model=joint,per_protein", "-S", "xgb.max_depth=3"]
SHOW = ["exp", "show", "--sort-by", "metrics/evaluate.json:score", "--sort-order", "desc",
        "--drop", ".*", "--keep", "Experiment|score$|share$|non_share$|train.model|max_depth"]  # fmt: skip


def experiments(repo: Repo) -> dict[str, dict]:
    """name -> {params, metrics} of every experiment `dvc exp show --json` lists."""
    out = {}
    for entry in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for exp in entry.get("experiments") or []:
            data = exp["revs"][0]["data"]
            out[exp.get("name") or data["rev"]] = {
                "params": data["params"]["params.yaml"]["data"],
                "metrics": data["metrics"]["metrics/evaluate.json"]["data"],
            }
    return out


def test_a_queued_grid_runs_compares_and_the_best_is_applied(reproduced_repo: Repo, tmp_path: Path) -> None:
    repo = clone(reproduced_repo, tmp_path / "clone")
    queued = repo.dvc("exp", "run", "--queue", *GRID)
    assert queued.stdout.count("Queued experiment") == 2, queued.stdout
    status = run_queue(repo.dvc, 900)
    found = experiments(repo)
    assert len(found) == 2 and all(re.search(rf"\b{name}\s.*Success", status) for name in found), status
    assert sorted(e["params"]["train"]["model"] for e in found.values()) == ["joint", "per_protein"]
    assert all(e["params"]["xgb"]["max_depth"] == 3 for e in found.values())
    table = repo.dvc(*SHOW).stdout
    assert "score" in table and all(name in table for name in found), table
    assert "BRD4/train" not in table and "stop_share" not in table  # readable: the training curves dropped
    best = max(found, key=lambda name: found[name]["metrics"]["score"])
    repo.dvc("exp", "apply", best)
    params = yaml.safe_load((repo.path / "params.yaml").read_text())
    assert params["train"]["model"] == found[best]["params"]["train"]["model"]
    assert json.loads((repo.path / "metrics/evaluate.json").read_text()) == found[best]["metrics"]
    assert (repo.path / "models/final/manifest.json").exists()
    manifest = json.loads((repo.path / "models/final/manifest.json").read_text())
    assert manifest["model"] == params["train"]["model"]
    # the model registry: commit the best, register a version of the model dvc.yaml declares (GTO's git tag, as
    # `gto register` writes it), and DVC finds that version
    repo.commit("the best of the sweep")
    repo.git(
        "tag", "-a", "belka-binding-model@v1.0.0", "-m", "Registering artifact belka-binding-model v1.0.0"
    )
    shown = repo.run(sys.executable, "-c", "import dvc.api, json; "
                     "print(json.dumps(dvc.api.artifacts_show('belka-binding-model', repo='.')))").stdout  # fmt: skip
    head = repo.git("rev-parse", "HEAD").stdout.strip()
    assert json.loads(shown) == {"rev": head, "path": "models/final"}, shown
