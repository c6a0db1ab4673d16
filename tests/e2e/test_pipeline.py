"""The pipeline as DVC sees it: real git and dvc in temporary repositories (issue 3's scenarios)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import ROOT, Repo, clone, lock_out_hashes, make_repo, ran_stages, run

pytestmark = pytest.mark.slow

ALL_STAGES = {
    "generate",
    "featurize@train",
    "featurize@test",
    "split",
    "train",
    "final",
    "learning_curve",
    "evaluate",
    "predict",
}
MODEL_STAGES = {
    "train",
    "final",
    "learning_curve",
    "evaluate",
    "predict",
}  # scenario B: the three fits, the estimate, the submission


@pytest.fixture
def cloned(reproduced_repo: Repo, tmp_path: Path) -> Repo:
    return clone(reproduced_repo, tmp_path / "clone")


def test_full_repro_then_nothing_to_do(reproduced_repo: Repo) -> None:
    assert reproduced_repo.dvc("status").stdout.strip() == "Data and pipelines are up to date."
    assert reproduced_repo.repro() == []
    submission = pl.read_csv(reproduced_repo.path / "data/submission.csv")
    test_ids = pl.read_parquet(reproduced_repo.path / "data/generated/test.parquet")["id"]
    assert submission.columns == ["id", "binds"]
    assert submission["id"].to_list() == sorted(test_ids.to_list())
    assert submission["binds"].is_between(0, 1).all()


def test_scenario_b_new_hyperparameters_skip_data_stages(cloned: Repo) -> None:
    result = cloned.dvc("exp", "run", "-S", "xgb.max_depth=8")
    assert set(ran_stages(result.stdout)) == MODEL_STAGES
    shown = json.loads(cloned.dvc("exp", "show", "--json").stdout)
    experiments = [exp for entry in shown for exp in (entry.get("experiments") or [])]
    assert experiments, shown
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["xgb"]["max_depth"] == 8
    assert data["metrics"]["metrics/evaluate.json"]["data"]["score"] > 0


def test_scenario_c_new_test_data_reruns_only_the_test_side(cloned: Repo) -> None:
    cloned.set_params({"generate": {"test_unseen_molecules": 200}})
    train_before = cloned.read("data/generated/train.parquet")
    ran = cloned.repro()
    assert cloned.read("data/generated/train.parquet") == train_before
    assert set(ran) == {"generate", "featurize@test", "predict"}
    assert len(pl.read_csv(cloned.path / "data/submission.csv")) == 150 * 3 + 200


def test_scenario_a_new_training_rows_featurize_only_new_molecules(cloned: Repo, tmp_path: Path) -> None:
    cloned.set_params({"generate": {"train_molecules": 1800}})
    result = cloned.dvc("repro")
    assert set(ran_stages(result.stdout)) == ALL_STAGES - {"featurize@test"}
    # The feature cache held the first 1500 molecules: only the 300 appended ones are computed.
    assert "1500 reused from the feature cache, 300 computed" in result.stdout + result.stderr
    # Same bytes as featurizing the new input from scratch with an empty cache.
    scratch = tmp_path / "scratch"
    run(
        [sys.executable, "-m", "stages.featurize", "--side", "train", "--input", "data/generated/train.parquet",
         "--output", str(scratch / "train"), "--rejects", str(scratch / "rejects.csv"), "--cache",
         str(tmp_path / "empty-cache")],
        cwd=cloned.path,
    )  # fmt: skip
    incremental = cloned.path / "data/features/train"
    files = sorted(p.relative_to(incremental) for p in incremental.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(scratch / "train") for p in (scratch / "train").rglob("*") if p.is_file()
    )
    for name in files:
        assert (incremental / name).read_bytes() == (scratch / "train" / name).read_bytes(), name


def test_code_change_reruns_that_stage_and_downstream_only(cloned: Repo) -> None:
    with open(cloned.path / "stages/evaluate.py", "a") as handle:
        handle.write("\n# a comment changes the file's hash\n")
    assert cloned.repro() == ["evaluate"]
    with open(cloned.path / "stages/predict.py", "a") as handle:
        handle.write("\n# another\n")
    assert cloned.repro() == ["predict"]
    with open(cloned.path / "stages/split.py", "a") as handle:
        handle.write("\n# split.py is imported by train too\n")
    ran = cloned.repro()
    assert ran[0] == "split" and set(ran) <= {"split"} | MODEL_STAGES, ran


def test_a_comment_in_the_feature_code_keeps_the_feature_version_the_cache_and_the_models(
    cloned: Repo,
) -> None:
    """chem.py is a featurize dep, so DVC reruns featurize; the features are read back from the cache (nothing
    computed), byte-identical, so nothing downstream reruns and the existing model keeps scoring."""
    before = lock_out_hashes(cloned)
    with open(cloned.path / "stages/chem.py", "a") as handle:
        handle.write("\n# a comment does not change what features are\n")
    result = cloned.dvc("repro")
    assert sorted(ran_stages(result.stdout)) == ["featurize@test", "featurize@train"]
    assert "1500 reused from the feature cache, 0 computed" in result.stderr, result.stderr
    assert lock_out_hashes(cloned) == before
    test = pl.read_parquet(cloned.path / "data/generated/test.parquet").head(1)
    scored = run([sys.executable, "-m", "stages.predict", "--models", "models/final", "--smiles",
                  test["molecule_smiles"][0], "--protein", test["protein_name"][0]], cwd=cloned.path)  # fmt: skip
    expected = pl.read_csv(cloned.path / "data/submission.csv").filter(pl.col("id") == test["id"][0])[
        "binds"
    ][0]
    assert float(scored.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-12)


def test_output_neutral_edits_rerun_nothing(cloned: Repo) -> None:
    """Log messages, the progress display and error formatting live in stages/cli.py, shared error messages in
    stages/errors.py, atomic writes in stages/atomic.py, which no stage lists; featurize.max_reject_fraction and
    resources.* are not params deps."""
    text = (cloned.path / "stages/cli.py").read_text()
    text = text.replace('format="%(name)s: %(message)s"', 'format="%(levelname)s %(name)s: %(message)s"')
    (cloned.path / "stages/cli.py").write_text(text.replace("unit_scale=True", "unit_scale=False"))
    errors = cloned.path / "stages/errors.py"
    assert "not found (run the stage" in errors.read_text()
    errors.write_text(errors.read_text().replace("not found (run the stage", "is missing (run the stage"))
    with open(cloned.path / "stages/atomic.py", "a") as handle:
        handle.write("\n# atomic writes shape no output\n")
    cloned.set_params({"featurize": {"max_reject_fraction": 0.01},
                       "resources": {"workers": 1, "threads": 1, "batch_rows": 5000}})  # fmt: skip
    assert cloned.dvc("status").stdout.strip() == "Data and pipelines are up to date."
    assert cloned.repro() == []


def test_a_new_fingerprint_size_does_not_rerun_the_split(cloned: Repo) -> None:
    cloned.set_params({"featurize": {"fingerprint": {"n_bits": 128}}})
    assert set(cloned.repro()) == {"featurize@train", "featurize@test"} | MODEL_STAGES


def test_metrics_and_params_diff_between_commits(cloned: Repo) -> None:
    cloned.set_params({"xgb": {"max_depth": 2, "n_estimators": 10}})
    assert set(cloned.repro()) == MODEL_STAGES
    cloned.commit("shallower trees")
    metrics = cloned.dvc("metrics", "diff", "HEAD~1", "HEAD", "--md").stdout
    assert "metrics/evaluate.json" in metrics and "score" in metrics
    params = cloned.dvc("params", "diff", "HEAD~1", "HEAD", "--md").stdout
    assert "xgb.max_depth" in params and "xgb.n_estimators" in params
    plots = json.loads(cloned.dvc("plots", "diff", "HEAD~1", "--json").stdout)["data"]
    assert any("Precision-recall" in name for name in plots) and any("importance" in n for n in plots)
    (training,) = [
        name for name in plots if name.startswith("Training curves")
    ]  # one chart, not one per file
    assert not any("plots/metrics" in name for name in plots), list(plots)
    rows = plots[training][0]["content"]["data"]["values"]
    assert {row["rev"] for row in rows} == {"HEAD~1", "workspace"}  # both revisions side by side
    assert {row["part"] for row in rows} == {"train"} and {row["booster"] for row in rows} == {"all"}
    assert {row["best_round"] for row in rows} == {""}  # no early stopping: no best round marked
    from ci.mr_report import render_plots

    rendered = [plot for plot in render_plots({"data": plots}) if plot.name == training]
    assert rendered and rendered[0].png and rendered[0].png.startswith(b"\x89PNG"), rendered


def test_two_runs_from_scratch_give_identical_hashes(reproduced_repo: Repo, tmp_path: Path) -> None:
    again = make_repo(tmp_path / "again")
    again.repro()
    assert lock_out_hashes(again) == lock_out_hashes(reproduced_repo)
    assert again.read("metrics/evaluate.json") == reproduced_repo.read("metrics/evaluate.json")


def test_default_data_reproduces_the_committed_lock_and_beats_chance(tmp_path: Path) -> None:
    """The repository's own params, from nothing: the model is far above chance, and every output hash equals
    the committed dvc.lock (so a fresh clone reproduces what was committed)."""
    repo = make_repo(tmp_path / "default", params={})
    shutil.copy(ROOT / "params.yaml", repo.path / "params.yaml")
    repo.set_params({"resources": {"feature_cache": str(repo.path / ".cache")}})
    assert set(repo.repro()) == ALL_STAGES
    metrics = json.loads(repo.read("metrics/evaluate.json"))
    summary = json.loads(repo.read("metrics/evaluate-summary.json"))
    assert metrics["pairs_scored"] == 6 and len(metrics) < 20
    rate = summary["positives"] / summary["rows"]
    assert metrics["score"] > 10 * rate, metrics
    # the gap Kaggle saw: unseen building blocks score lower, yet far above chance
    assert 3 * rate < metrics["non_share"] < metrics["share"], metrics
    assert all(metrics[f"roc_auc_{p}"] > 0.8 for p in ("BRD4", "HSA", "sEH")), metrics
    committed = yaml.safe_load((ROOT / "dvc.lock").read_text())
    expected = {
        f"{stage}:{out['path']}": out["md5"]
        for stage, body in committed["stages"].items()
        for out in body["outs"]
    }
    assert lock_out_hashes(repo) == expected


def positive_rate(repo: Repo) -> float:
    summary = json.loads(repo.read("metrics/evaluate-summary.json"))
    return summary["positives"] / summary["rows"]


def mean_auc(metrics: dict) -> float:
    return sum(metrics[f"roc_auc_{p}"] for p in ("BRD4", "HSA", "sEH")) / 3


def test_small_model_beats_chance_and_each_split_method_scores_its_groups(cloned: Repo) -> None:
    metrics = json.loads(cloned.read("metrics/evaluate.json"))
    assert {"share", "non_share"} <= set(metrics), metrics  # the default split scores both groups
    assert metrics["score"] > 2 * positive_rate(cloned), metrics
    assert mean_auc(metrics) > 0.65, metrics
    for method, groups, other in (
        ("building_blocks", {"non_share", "mixed"}, "share"),
        ("random", {"share"}, "mixed"),
    ):
        cloned.set_params({"split": {"method": method}})
        # the final model reads every labelled row, whatever the split: refit with the same rounds, it is the same
        # model, so predict is not rerun
        assert set(cloned.repro()) == {"split", "train", "final", "learning_curve", "evaluate"}
        metrics = json.loads(cloned.read("metrics/evaluate.json"))
        pairs = json.loads(cloned.read("metrics/evaluate-summary.json"))["pairs"]
        assert {pair.split("/")[1] for pair in pairs} == groups, pairs
        assert other not in metrics and groups & set(metrics), metrics
        assert metrics["score"] > positive_rate(cloned), metrics


def test_external_memory_training_is_a_params_switch(cloned: Repo, tmp_path: Path) -> None:
    """train.data_mode=external pages XGBoost's quantised matrix to disk (ExtMemQuantileDMatrix) under
    resources.external_memory_dir: only the model side reruns, the model is as good, XGBoost warns of nothing, and
    the pages are gone afterwards."""
    in_memory = mean_auc(json.loads(cloned.read("metrics/evaluate.json")))
    pages = tmp_path / "pages"
    cloned.set_params(
        {"train": {"data_mode": "external", "negative_sample_rate": 0.5},
         "resources": {"external_memory_dir": str(pages)}}
    )  # fmt: skip
    result = cloned.dvc("repro")
    assert set(ran_stages(result.stdout)) == MODEL_STAGES
    assert "features (ExtMemQuantileDMatrix); trees kept per booster: all: 25 of 25" in result.stderr, (
        result.stderr
    )
    assert "WARNING" not in result.stderr and "remove it manually" not in result.stderr, result.stderr
    assert pages.is_dir() and not list(pages.iterdir())  # the pages were there, and were removed
    metrics = json.loads(cloned.read("metrics/evaluate.json"))
    assert metrics["score"] > 2 * positive_rate(cloned), metrics
    assert mean_auc(metrics) > 0.65 and abs(mean_auc(metrics) - in_memory) < 0.1, metrics
    rates = json.loads(cloned.read("models/split/manifest.json"))["negative_rate"]
    assert rates == {"BRD4": 0.5, "HSA": 0.5, "sEH": 0.5}


def test_real_belka_rows_plug_in_through_params_and_dvc(
    cloned: Repo, belka_sample: Path, tmp_path: Path
) -> None:
    """Kaggle's files come in with `dvc import-url` from a directory outside the repository; no code edits."""
    outside = tmp_path / "downloads"
    outside.mkdir()
    shutil.copy(belka_sample, outside / "train.csv")
    # A test file in Kaggle's test format (no binds), as parquet.
    sample = pl.read_csv(belka_sample).head(600)
    sample.drop("binds").with_columns(pl.col("id") + 10**9).write_parquet(outside / "test.parquet")
    (cloned.path / "data/belka").mkdir(parents=True)
    cloned.dvc("import-url", str(outside / "train.csv"), "data/belka/train.csv")
    cloned.dvc("import-url", str(outside / "test.parquet"), "data/belka/test.parquet")
    cloned.set_params({"inputs": {"train": "data/belka/train.csv", "test": "data/belka/test.parquet"}})
    ran = cloned.repro()
    assert "generate" not in ran and {
        "featurize@train",
        "featurize@test",
        "train",
        "final",
        "predict",
    } <= set(ran)
    manifest = json.loads(cloned.read("data/features/train/manifest.json"))
    assert manifest["rows"] + manifest["rejected_rows"] == 16_731
    submission = pl.read_csv(cloned.path / "data/submission.csv")
    assert len(submission) == 600 and submission["id"].n_unique() == 600
    summary = json.loads(cloned.read("metrics/evaluate-summary.json"))
    assert summary["rows"] > 0 and summary["positives"] > 0
    metrics = json.loads(cloned.read("metrics/evaluate.json"))
    print("real BELKA rows:", {k: metrics.get(k) for k in ("score", "share", "non_share")}, summary["pairs"])
    assert "share" in metrics or "non_share" in metrics


def test_scoring_the_test_file_on_demand_equals_the_submission(reproduced_repo: Repo, tmp_path: Path) -> None:
    out = tmp_path / "scored.csv"
    run([sys.executable, "-m", "stages.predict", "--models", "models/final", "--input", "data/generated/test.parquet",
         "--output", str(out)], cwd=reproduced_repo.path)  # fmt: skip
    assert out.read_bytes() == reproduced_repo.read("data/submission.csv")


def test_every_stage_runs_outside_dvc(reproduced_repo: Repo) -> None:
    for stage in sorted({name.split("@")[0] for name in ALL_STAGES}):
        out = run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=reproduced_repo.path).stdout
        assert "usage: python -m stages." in out and "--params" in out, stage
    help_text = run([sys.executable, "-m", "stages.featurize", "--help"], cwd=reproduced_repo.path).stdout
    assert "--input" in help_text and "--output" in help_text


def test_the_submission_equals_scoring_the_test_rows_independently_of_the_pipeline(
    reproduced_repo: Repo,
) -> None:
    """No stages code here: RDKit called directly on the SMILES with the [Dy] linker removed by hand, the design
    matrix built from the params and the scaler's JSON numbers, the booster(s) loaded from the model's JSON files."""
    import numpy as np
    import xgboost as xgb
    from rdkit import Chem
    from rdkit.Chem import Descriptors, rdFingerprintGenerator

    path = reproduced_repo.path
    params = reproduced_repo.params()
    manifest = json.loads((path / "models/final/manifest.json").read_text())
    scaler = json.loads((path / "models/final/scaler.json").read_text())
    fingerprint = params["featurize"]["fingerprint"]
    generator = rdFingerprintGenerator.GetMorganGenerator(
        radius=fingerprint["radius"], fpSize=fingerprint["n_bits"], includeChirality=fingerprint["chirality"]
    )
    test = pl.read_parquet(path / "data/generated/test.parquet").sample(300, seed=1)
    rows = []
    for smiles in test["molecule_smiles"]:
        mol = Chem.MolFromSmiles(smiles.replace("[Dy]", ""))  # N[Dy] -> N: the primary amide
        descriptors = [getattr(Descriptors, name)(mol) for name in params["featurize"]["descriptors"]]
        scaled = (np.array(descriptors) - np.array(scaler["mean"])) / np.array(scaler["scale"])
        rows.append(np.concatenate([scaled, generator.GetFingerprintAsNumPy(mol)]))
    molecules = np.array(rows, dtype=np.float32)
    proteins = test["protein_name"].to_numpy()
    expected = np.empty(len(test))
    assert manifest["model"] == "joint"  # SMALL_PARAMS' model (the per-protein default: tests/test_train.py)
    categories = json.loads((path / "models/final/encoder.json").read_text())["categories"]
    onehot = (proteins[:, None] == np.array(categories)[None, :]).astype(np.float32)
    booster = xgb.Booster(model_file=str(path / "models/final/model.json"))
    expected[:] = booster.inplace_predict(np.hstack([onehot, molecules]))
    submission = pl.read_csv(path / "data/submission.csv")
    got = test.select("id").join(submission, on="id", how="left", maintain_order="left")["binds"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
