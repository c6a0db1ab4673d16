"""Distributed training's plan and its rank, without a cluster: which rows each rank reads, and one rank of
XGBoost's collective (in this process, with its tracker) against the single-machine model. Clusters, lost workers
and determinism across runs: tests/e2e/test_dask.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import xgboost as xgb
import yaml

from stages import fit_dask, fitting, train_rows
from stages.io import list_shards
from stages.molecules import MoleculeStore
from stages.params import threads
from tests.conftest import ROOT, MiniRun, project_env
from tests.test_train import quick_stopping, with_train


def train_cli(
    params: dict, rows: Path, features: Path, out: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m stages.train` with ``params`` (written to ``out / "params.yaml"``) on the split's ``rows`` and
    ``features``; the models go to ``out / "models"``, the curves to ``out / "live"``."""
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "stages.train", "--params", str(out / "params.yaml"),
                           "--rows", str(rows), "--features", str(features),
                           "--models", str(out / "models"), "--live", str(out / "live")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_share_out_gives_each_rank_a_contiguous_run_in_order():
    assert fit_dask.share_out(list("abcde"), 2) == [("a", "b", "c"), ("d", "e")]  # i * 2 // 5: 0 0 0 1 1
    assert fit_dask.share_out(list("abcd"), 4) == [("a",), ("b",), ("c",), ("d",)]
    assert fit_dask.share_out(list("ab"), 3) == [
        ("a",),
        ("b",),
        (),
    ]  # i * 3 // 2: 0 1; rank 2 trains on nothing


def test_partitions_cover_every_selected_row_once_in_the_local_order(mini_run: MiniRun):
    """Read back partition by partition, the rows are those of the split read directly, in order: every protein's,
    or one protein's."""
    rows_dir = mini_run.split / "train"
    every_row = pl.concat([pl.read_parquet(shard) for shard in list_shards(rows_dir)])
    for protein in (None, "BRD4"):
        selection = train_rows.RowSelection(rule=None, part=train_rows.FIT, protein=protein, rates=(), seed=0)
        parts = fit_dask.partitions(rows_dir, 1000, selection)
        read = pl.concat(fit_dask.PartitionSource(tuple(parts), selection, 0, "test").batches())
        expected = every_row if protein is None else every_row.filter(pl.col("protein_name") == protein)
        assert read.drop("weight").equals(expected)
        one_by_one = [
            len(pl.concat(fit_dask.PartitionSource((p,), selection, 0, "test").batches())) for p in parts
        ]
        assert [part.rows for part in parts] == one_by_one
        assert all(part.stop - part.start <= 1000 for part in parts)
    assert len(every_row) > 1000 and every_row["protein_name"].n_unique() == 3  # several batches, 3 proteins


def test_one_rank_of_the_collective_trains_the_single_machine_model(mini_run: MiniRun, tmp_path: Path):
    """A collective of one rank reads the same batches as the single-machine DataIter: the same model bytes, here
    for one protein's booster with early stopping (its inner parts are matrices of the collective too). (Two or
    more ranks give another model: the sketches and histograms are then sums over ranks.)"""
    params = with_train(mini_run.params, model="per_protein", early_stopping=quick_stopping(mini_run.params))
    settings = params.train
    rows_dir = mini_run.split / "train"
    fitting.train_model(
        params, rows_dir, mini_run.features, tmp_path / "local", tmp_path / "live"
    )  # one machine
    booster_params = xgb.XGBClassifier(**params.xgb.classifier_kwargs(threads(params))).get_xgb_params()
    store = MoleculeStore(mini_run.features)
    prep = train_rows.fit_preprocessing(params, rows_dir, store)
    selections = train_rows.part_selections(params, prep, "BRD4")
    assert set(selections) == {
        train_rows.FIT,
        train_rows.STOP_SHARE,
        train_rows.STOP_UNSEEN,
    }  # the early-stopping parts too
    n_features = len(store.descriptors) + store.n_bits  # a per-protein booster: no one-hot protein
    setup = fit_dask.RankSetup(mini_run.features, None, prep.scaler, booster_params, params, n_features)
    (work,) = fit_dask.plan_ranks(
        settings.model_copy(update={"distributed_workers": 1}), rows_dir, setup, selections
    )
    with fit_dask.rabit_tracker("127.0.0.1", 1) as collective:
        result = fit_dask.train_rank(work, collective, "test")
    result.booster.save_model(str(tmp_path / "model.json"))
    assert (tmp_path / "model.json").read_bytes() == (tmp_path / "local" / "model-BRD4.json").read_bytes()
    assert result.best_iteration < result.rounds - 1  # it stopped early, and kept the best round's trees
    fit_rows = sum(
        len(selections[train_rows.FIT].apply(pl.read_parquet(shard))) for shard in list_shards(rows_dir)
    )
    assert result.rows == fit_rows


def test_a_malformed_scheduler_address_is_one_error_line_and_no_model(mini_run: MiniRun, tmp_path: Path):
    """$DASK_SCHEDULER_ADDRESS that Dask cannot parse: the stage says so in one line naming the variable."""
    raw = mini_run.params.model_dump(mode="json")
    raw["train"]["distributed_workers"] = 2
    env = {**project_env(), "DASK_SCHEDULER_ADDRESS": "scheduler-without-port"}
    result = train_cli(raw, mini_run.split / "train", mini_run.features, tmp_path, env, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: $DASK_SCHEDULER_ADDRESS='scheduler-without-port': no Dask scheduler reached: "
        "missing port number in address 'scheduler-without-port'"
    )
    assert not (tmp_path / "models").exists()
