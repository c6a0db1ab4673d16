"""Train and predict on the in-process mini pipeline: base rates before sampling, feature parity, and scoring
molecules on demand through the pipeline's own code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import xgboost

from stages import environment, predict
from stages.errors import ArtifactError, InputError
from stages.featurize import featurize_file
from stages.fitting import train_model
from stages.model import load_model
from stages.scoring import predict_file
from tests.conftest import ROOT, MiniRun, project_env


def test_base_rates_are_the_training_rates_before_negative_sampling(mini_run: MiniRun, tmp_path: Path):
    params = mini_run.params.model_copy(
        update={"train": mini_run.params.train.model_copy(update={"negative_sample_rate": 0.05})}
    )
    train_model(params, mini_run.split / "train", mini_run.features, tmp_path / "models", tmp_path / "live")
    base_rate = load_model(tmp_path / "models").manifest["base_rate"]
    rows = pl.read_parquet(mini_run.split / "train")  # every training row, read directly
    expected = {p: float(r) for p, r in rows.group_by("protein_name").agg(pl.col("binds").mean()).iter_rows()}
    assert base_rate == pytest.approx(expected)
    assert (
        max(base_rate.values()) < 0.15
    )  # not the ~50% a 5% negative sample would give at a 5% positive rate


def features_with(mini_run: MiniRun, tmp_path: Path, **fingerprint) -> Path:
    settings = mini_run.params.featurize.model_copy(
        update={"fingerprint": mini_run.params.featurize.fingerprint.model_copy(update=fingerprint)}
    )
    params = mini_run.params.model_copy(update={"featurize": settings})
    out = tmp_path / "features"
    featurize_file(mini_run.raw_test, out, tmp_path / "rejects.csv", params, False, tmp_path / "cache")
    return out


def test_features_made_with_another_radius_are_refused(mini_run: MiniRun, tmp_path: Path):
    features = features_with(mini_run, tmp_path, radius=3)
    with pytest.raises(InputError, match=r"made differently .*fingerprint\.radius: 3 != 2") as info:
        predict_file(features, None, mini_run.models, 1000)
    assert str(info.value).endswith("(dvc repro)")  # params: `dvc repro` reruns what they change


def test_features_made_with_another_rdkit_or_feature_version_are_refused(mini_run: MiniRun, tmp_path: Path):
    features = tmp_path / "features"
    shutil.copytree(mini_run.test_features, features)
    manifest = json.loads((features / "manifest.json").read_text())
    manifest["features"]["rdkit"] = "2023.09.1"
    manifest["features"]["version"] = 0
    (features / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError) as info:
        predict_file(features, None, mini_run.models, 1000)
    assert "version: 0 != 1" in str(info.value) and "rdkit: '2023.09.1' != " in str(info.value)
    # another RDKit: `dvc repro` sees no change until the environment is recorded, so the hint names that command
    hint = str(info.value)
    assert f"({environment.COMMAND}, then dvc repro)" in hint and "uv sync --frozen" in hint


def test_a_model_trained_by_another_xgboost_is_refused(mini_run: MiniRun, tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(mini_run.models, models)
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["xgboost"] == xgboost.__version__
    manifest["xgboost"] = "1.7.6"
    (models / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"trained with XGBoost 1\.7\.6, .* is installed") as info:
        load_model(models)
    assert f"({environment.COMMAND}, then dvc repro)" in str(info.value) and "\n" not in str(info.value)


def predict_cli(*args: str) -> subprocess.CompletedProcess:
    """The real command, in its own process."""
    return subprocess.run([sys.executable, "-m", "stages.predict", *args], cwd=ROOT, env=project_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def predict_main(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """The command's main() in this process (its exit code, stdout and stderr), without the import cost."""
    code = predict.main([*args, "--params", str(ROOT / "params.yaml")])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_scoring_a_file_on_demand_equals_the_submission(mini_run: MiniRun, tmp_path: Path):
    out = tmp_path / "scored.csv"
    result = predict_cli(
        "--models", str(mini_run.models), "--input", str(mini_run.raw_test), "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == mini_run.submission.read_bytes()


def test_scoring_one_smiles_prints_its_submission_probability(mini_run: MiniRun, capsys):
    test = pl.read_parquet(mini_run.raw_test)
    submission = pl.read_csv(mini_run.submission)
    for row in test.head(2).iter_rows(named=True):
        result = predict_main(capsys, "--models", str(mini_run.models), "--smiles", row["molecule_smiles"],
                              "--protein", row["protein_name"])  # fmt: skip
        assert result.returncode == 0, result.stderr
        expected = submission.filter(pl.col("id") == row["id"])["binds"][0]
        assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-12)


def test_a_csv_without_ids_gets_one_row_per_input_row(mini_run: MiniRun, tmp_path: Path, capsys):
    test = pl.read_parquet(mini_run.raw_test).head(5)
    source = tmp_path / "molecules.csv"
    test.select("molecule_smiles", "protein_name").with_columns(
        pl.when(pl.int_range(pl.len()) == 2)
        .then(pl.lit("CC"))
        .otherwise(pl.col("molecule_smiles"))
        .alias("molecule_smiles")
    ).write_csv(source)
    out = tmp_path / "scored.csv"
    result = predict_main(
        capsys, "--models", str(mini_run.models), "--input", str(source), "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    scored = pl.read_csv(out)
    assert scored.columns == ["id", "binds"] and scored["id"].to_list() == [0, 1, 2, 3, 4]
    base_rate = load_model(mini_run.models).manifest["base_rate"][test["protein_name"][2]]
    assert scored["binds"][2] == pytest.approx(base_rate)  # row 2 has no [Dy]: rejected, gets the base rate
    assert "1 rejected rows get their protein's base rate" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--smiles", "CCO", "--protein", "BRD4"], "error: --smiles 'CCO': no [Dy] DNA-linker marker"),
        (["--smiles", "CC(=O)N[Dy]", "--protein", "EGFR"], "unknown protein_name value(s) 'EGFR'"),
    ],
)
def test_scoring_bad_input_is_one_clear_error(mini_run: MiniRun, args: list[str], message: str, capsys):
    result = predict_main(capsys, "--models", str(mini_run.models), *args)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_damaged_rows_shard_is_one_error_naming_it(mini_run: MiniRun, tmp_path: Path):
    features = tmp_path / "features"
    shutil.copytree(mini_run.test_features, features)
    shard = sorted((features / "rows").glob("part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(InputError, match=rf"{shard}: not a readable rows shard"):
        predict_file(features, None, mini_run.models, 1000)
