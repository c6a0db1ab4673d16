"""Model, encoder and scaler artifacts: missing, from another schema version or altered -> a clear error.
Nothing is ever unpickled: the artifacts are JSON only."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.errors import ArtifactError
from stages.model import SCHEMA_VERSION, load_model
from tests.conftest import ROOT, MiniRun, project_env


@pytest.fixture
def models(mini_run: MiniRun, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(mini_run.models, target)
    return target


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def rehash(models: Path, name: str) -> None:
    """Record a file's new sha256 in the manifest, as if it had been written by a (different) run."""
    digest = hashlib.sha256((models / name).read_bytes()).hexdigest()
    edit_json(models / "manifest.json", lambda m: m["sha256"].__setitem__(name, digest))


def test_a_good_model_loads(models: Path) -> None:
    model = load_model(models)
    assert model.categories == ["BRD4", "HSA", "sEH"]


@pytest.mark.parametrize("name", ["manifest.json", "encoder.json", "scaler.json", "model-BRD4.json"])
def test_missing_artifact(models: Path, name: str) -> None:
    (models / name).unlink()
    with pytest.raises(ArtifactError, match=rf"{re.escape(str(models / name))}: .*not found"):
        load_model(models)


def test_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="model manifest not found"):
        load_model(tmp_path / "models")


@pytest.mark.parametrize("name", ["encoder.json", "scaler.json", "manifest.json"])
def test_other_schema_version(models: Path, name: str) -> None:
    edit_json(models / name, lambda d: d.__setitem__("schema_version", 99))
    if name != "manifest.json":
        rehash(models, name)  # a consistent set of files, just from another version of the code
    with pytest.raises(
        ArtifactError, match=rf"{re.escape(name)}: schema_version 99, this code reads {SCHEMA_VERSION}"
    ):
        load_model(models)


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("scaler.json", lambda d: d["mean"].__setitem__(0, d["mean"][0] + 1.0)),
        ("encoder.json", lambda d: d["categories"].reverse()),
        ("model-BRD4.json", lambda d: d["learner"]["learner_model_param"].__setitem__("base_score", "5E-1")),
    ],
)
def test_tampered_artifact(models: Path, name: str, change) -> None:
    edit_json(models / name, change)
    with pytest.raises(
        ArtifactError, match=rf"{re.escape(name)}: content does not match the sha256 recorded"
    ):
        load_model(models)


def test_tampered_and_rehashed_values_are_still_checked(models: Path) -> None:
    edit_json(models / "scaler.json", lambda d: d.__setitem__("mean", [1.0]))
    rehash(models, "scaler.json")
    with pytest.raises(ArtifactError, match="scaler arrays must have 3 values"):
        load_model(models)
    edit_json(models / "encoder.json", lambda d: d.__setitem__("format", "sklearn-pickle"))
    rehash(models, "encoder.json")
    with pytest.raises(ArtifactError, match=r"encoder\.json: not a belka-onehot-encoder artifact"):
        load_model(models)


def test_model_json_that_is_not_json(models: Path) -> None:
    (models / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json: model manifest is not valid JSON"):
        load_model(models)


def test_predict_with_a_tampered_model_reports_one_line(
    mini_run: MiniRun, models: Path, tmp_path: Path
) -> None:
    edit_json(models / "scaler.json", lambda d: d["scale"].__setitem__(1, 0.5))
    output = tmp_path / "submission.csv"
    features = mini_run.test_features
    cmd = [sys.executable, "-m", "stages.predict", "--models", str(models), "--features", str(features)]
    cmd += ["--rejects", str(tmp_path / "none.csv"), "--output", str(output)]
    cmd += ["--params", str(ROOT / "params.yaml")]
    result = subprocess.run(cmd, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {models / 'scaler.json'}: content does not")
    )
    assert "Traceback" not in result.stderr
    assert not output.exists()


PICKLE_MODULES = ("pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve", "marshal")


def test_no_stage_code_can_unpickle() -> None:
    pattern = re.compile(rf"^\s*(import|from)\s+({'|'.join(PICKLE_MODULES)})\b", re.MULTILINE)
    calls = re.compile(
        r"\b(pickle|joblib)\.(load|loads)\b|np\.load\([^)]*allow_pickle\s*=\s*True|torch\.load"
    )
    for path in sorted((ROOT / "stages").rglob("*.py")):
        text = path.read_text()
        assert not pattern.search(text), f"{path} imports a pickle module"
        assert not calls.search(text), f"{path} calls a pickle loader"


def test_models_holds_only_json(mini_run: MiniRun) -> None:
    files = [p for p in mini_run.models.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".json" for p in files), files
    for path in files:
        json.loads(path.read_text())  # each one is plain JSON
