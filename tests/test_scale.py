"""bench/scale.py: its report step on a fixture (fast), and the whole script end to end at a tiny size (slow tier), so
it cannot rot. The figures themselves are not asserted: they mean nothing at this size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import scale
from tests.conftest import ROOT, project_env
from tests.e2e.test_pipeline import ALL_STAGES, MODEL_STAGES

GB = 1e9


def stage(name: str, rows: int, wall: float, cpu: float, main: float, rss: float) -> dict:
    return {"stage": name, "rows": rows, "wall_s": wall, "cpu_s": cpu, "main_thread_cpu_s": main,
            "peak_rss": rss, "output_bytes": 3_000_000, "log": ""}  # fmt: skip


def result(millions: int) -> dict:
    """A run at ``millions`` M rows: featurize@train linear (2 s serial and 8 s parallel CPU per M rows, 1 GB flat),
    predict a fixed 4 s plus 0.1 ms a test row on its main thread and 1 s off it, its RSS doubling with the rows."""
    rows, test_rows = millions * 1_000_000, millions * 5_000
    stages = [
        stage("featurize@train", rows, 10.0 * millions, 10.0 * millions, 2.0 * millions, 1 * GB),
        stage("predict", test_rows, 6.0, 5.0 + test_rows * 1e-4, 4.0 + test_rows * 1e-4, 0.5 * millions * GB),
    ]
    scenario = {"scenario": "from nothing", "command": "dvc repro featurize@train predict", "train_rows": rows,
                "test_rows": test_rows, "wall_s": 20.0 * millions, "cpu_s": 12.0 * millions + 10.0, "peak_rss": 2 * GB,
                "output_bytes": 6_000_000, "feature_cache_bytes": 1_000_000, "dvc_cache_bytes": 5_000_000,
                "load": [1.0, 2.0], "stages": stages}  # fmt: skip
    c = {**scenario, "scenario": "C: new test data", "stages": stages[1:], "wall_s": 8.0, "cpu_s": 7.0}
    return {"rows": rows, "molecules": rows // 3, "test_rows": test_rows, "date": "2026-12-07 01:00 UTC", "cores": 2,
            "memory_bytes": 25 * GB, "commit": "abc1234", "settings": {"featurize.fingerprint.n_bits": 2048},
            "data_seconds": {}, "scenarios": [scenario, c]}  # fmt: skip


@pytest.fixture
def results() -> list[dict]:
    return [result(3), result(1)]  # any order


def test_markdown_tables(results):
    text = scale.markdown(results)
    assert text.startswith("## The whole DAG by size (bench/scale.py)\n\nSizes: 1M, 3M rows.")
    assert text.index("### 1M rows") < text.index("### 3M rows")
    assert "| from nothing | featurize@train | 30.0 | 30.0 | 1.00 | 3 MB | 3,000,000 | 100,000 |" in text
    assert "| C: new test data | predict | 6.0 | 6.5 | 1.50 | 3 MB | 15,000 | 2,500 |" in text
    # the scenario's own line: dvc's share is its wall less its stages'
    assert "| from nothing | 60.0 | 24.0 | 46.0 | 2.00 | 6 MB | 1 MB | 5 MB | 1.0 / 2.0 | `dvc repro" in text
    # growth: featurize linear in time, flat in memory; predict's RSS linear
    assert "| featurize@train | 1.00 | 1.00 | 0.00 | 1.00 / 1.00 |" in text
    assert "| predict | 0.00 |" in text and "| 0.50 / 1.50 |" in text
    assert "| featurize@train | 1.00 | 1.00 | 1.00 |" in text  # peak RSS, 3M against 1M
    assert "| predict | 0.50 | 1.50 | 3.00 |" in text


def test_estimate_table(results):
    """The fits' logged memory estimates against their measured peaks; stages without an estimate are left out."""
    first = results[0]["scenarios"][0]["stages"]
    first.append({**stage("train", 3_000_000, 9.0, 9.0, 5.0, 1.25 * GB), "memory_estimate": 1.5 * GB})
    text = scale.markdown(results)
    assert "| 3M | from nothing | train | 1.50 GB | 1.25 GB | +20% |" in text
    assert text.count("| from nothing | train |") == 2  # the 3M size table's line, and the estimate's
    assert "| train | n/a (measured at one size) |" in text  # no projection from one size


def test_no_estimates_no_estimate_table(results):
    assert "memory estimate" not in scale.markdown(results)


def test_projection(results):
    text = scale.markdown(results)
    # featurize: 590.5 s serial + 2,362 s parallel at 295M rows; 1 GB flat
    assert (
        "| featurize@train | 295,246,830 | 0.82 h | 20% | 0.49 h | 0.21 h | 0.17 h | 1.00 GB | 1.00 GB |"
        in text
    )
    # predict: a fixed 4 s plus 0.1 ms a row (serial), 1 s off the main thread; RSS 0.5 GB per 5,000 rows
    p = scale.projection(sorted(results, key=lambda r: r["rows"]), "predict")
    assert p["rows"] == scale.BELKA_TEST_ROWS
    assert p["cpu_s"] == pytest.approx(4 + scale.BELKA_TEST_ROWS * 1e-4 + 1)
    # XGBoost's main thread does its share of the parallel work: 1 s of it, as much as the other thread
    assert p["wall_s"][64] == pytest.approx(3 + scale.BELKA_TEST_ROWS * 1e-4 + 2 / 64)
    assert p["peak_rss"] == pytest.approx(scale.BELKA_TEST_ROWS / 5_000 * 0.5 * GB)
    assert "| dvc's own work (serial) |" in text and "| all, `dvc repro` from nothing |" in text


def test_project_and_exponent():
    assert scale.exponent([1, 10], [3, 30]) == pytest.approx(1.0)
    assert scale.exponent([1], [3]) is None
    assert scale.project([1, 2, 3], [11, 12, 13], 100) == pytest.approx(
        110
    )  # a fixed part plus a part per row
    assert scale.project([1, 2], [5, 5], 100) == 5  # flat
    assert scale.project([1, 10], [1, 100], 100) == pytest.approx(10_000)  # faster than linear: the power law


def test_one_size_has_no_growth_or_projection(results):
    text = scale.markdown(results[1:])
    assert "### 1M rows" in text and "Growth" not in text and "Projection" not in text


def test_stage_name():
    assert (
        scale.stage_name(["python", "-m", "stages.featurize", "--side", "test", "--input", "x"])
        == "featurize@test"
    )
    assert scale.stage_name(["/venv/python", "-m", "stages.train", "--rows", "r"]) == "train"
    assert scale.stage_name(["python", "-m", "dvc", "repro"]) is None
    assert scale.stage_name(["sh", "-c", "python -m stages.train"]) is None


def test_stage_rss_attributes_a_tree_to_its_stage(tmp_path):
    """The sampler sums a stage command's process and its children under the stage's name, below the tree's peak."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "sleeper.py").write_text(
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'import time; x = bytearray(50_000_000); time.sleep(1.5)'])\n"
    )
    shell = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -m stages.sleeper --side train; true"], cwd=tmp_path
    )
    with scale.StageRss(shell.pid, "test") as rss:
        shell.wait()
    assert list(rss.stages) == ["sleeper@train"]
    assert 50e6 < rss.stages["sleeper@train"] <= rss.peak


@pytest.mark.slow
def test_scale_small_run(tmp_path):
    """Every scenario at 30k rows, through real dvc: each reruns exactly the stages its change touches. About 3
    minutes on 2 idle cores (19 stage processes, each with its imports); the timeout allows for a busy machine."""
    work, out = tmp_path / "work", tmp_path / "results"
    command = [sys.executable, "bench/scale.py", "run", "--rows", "30k", "--set", "xgb.n_estimators=3",
               "--set", "evaluate.bootstrap_samples=10", "--workdir", str(work), "--results-dir", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((out / "scale-30k.json").read_text())
    ran = {s["scenario"]: {st["stage"] for st in s["stages"]} for s in data["scenarios"]}
    everything = ALL_STAGES - {"generate"}  # generate's data is not read
    assert ran == {
        "from nothing": everything,
        "A: append 10%": everything - {"featurize@test"},
        "B: xgb.max_depth=8": MODEL_STAGES,
        "C: new test data": {"featurize@test", "predict"},
    }
    first = data["scenarios"][0]
    assert all(s["peak_rss"] > 0 and s["cpu_s"] > 0 and s["wall_s"] > 0 for s in first["stages"])
    assert first["feature_cache_bytes"] > 0 and first["dvc_cache_bytes"] > 0
    assert data["rows"] == 30_000 and data["scenarios"][1]["train_rows"] == 33_000
    assert "(10000 reused from the feature cache, 1000 computed)" in data["scenarios"][1]["stages"][0]["log"]
    assert data["settings"]["featurize.fingerprint.n_bits"] == 2048
    # each fit's memory estimate, from the line stages.memory logs before the fit reads a row
    estimates = {s["stage"]: s["memory_estimate"] for s in first["stages"] if s["memory_estimate"]}
    assert set(estimates) == {"train", "final", "learning_curve"}, first["stages"]
    assert all(0.1 * GB < estimate < 10 * GB for estimate in estimates.values()), estimates
    assert "| A: append 10% | featurize@train |" in done.stdout
    assert not any(work.iterdir())  # each size's work directory removed after its run
    report = subprocess.run([sys.executable, "bench/scale.py", "report", "--results-dir", str(out)], cwd=ROOT,
                            env=project_env(), capture_output=True, text=True, check=True)  # fmt: skip
    assert "### 30k rows" in report.stdout


def test_belka_shaped_data(tmp_path):
    """BELKA's building-block counts, ~0.5% positives, and a Kaggle-like test file: share molecules (training blocks,
    3 rows each, never in training) and non-share ones (test-only blocks, one row each), no labels; another version
    is other molecules; a larger training file starts with the smaller one."""
    import polars as pl

    from bench import belka_gen

    small, large = tmp_path / "small.parquet", tmp_path / "train.parquet"
    assert belka_gen.write_shaped_train(small, 30_000) == {"rows": 30_000, "molecules": 10_000}
    belka_gen.write_shaped_train(large, 90_000)
    train = pl.read_parquet(large)
    assert train.head(30_000).equals(pl.read_parquet(small))
    blocks = [train[f"buildingblock{p}_smiles"].n_unique() for p in (1, 2, 3)]
    assert blocks == [271, 693, 872]
    assert train["molecule_smiles"].n_unique() == 30_000
    assert 0.003 < train["binds"].mean() < 0.008
    assert train["protein_name"].head(3).to_list() == ["BRD4", "HSA", "sEH"]

    counts = belka_gen.write_shaped_test(tmp_path / "test.parquet", 30_000)
    test = pl.read_parquet(tmp_path / "test.parquet")
    assert "binds" not in test.columns and test.height == counts["rows"]
    assert counts["share_molecules"] == round(30_000 * 369_039 / 98_415_610)
    assert counts["non_share_molecules"] == round(30_000 * 508_983 / 98_415_610)
    assert test["id"].min() == 295_246_830 and test["id"].n_unique() == test.height
    seen = {p: set(train[f"buildingblock{p}_smiles"]) for p in (1, 2, 3)}
    in_train = [
        all(row[f"buildingblock{p}_smiles"] in seen[p] for p in (1, 2, 3))
        for row in test.iter_rows(named=True)
    ]
    none_in_train = [not any(row[f"buildingblock{p}_smiles"] in seen[p] for p in (1, 2, 3))
                     for row in test.iter_rows(named=True)]  # fmt: skip
    assert sum(in_train) == 3 * counts["share_molecules"]  # no test molecule mixes seen and unseen blocks
    assert sum(none_in_train) == counts["non_share_molecules"]
    assert not set(test["molecule_smiles"]) & set(train["molecule_smiles"])
    belka_gen.write_shaped_test(tmp_path / "test-1.parquet", 30_000, version=1)
    assert not set(pl.read_parquet(tmp_path / "test-1.parquet")["molecule_smiles"]) & set(
        test["molecule_smiles"]
    )


def test_memory_compares_the_largest_with_a_tenth_of_it():
    """At 1M / 3M / 10M / 30M the peak RSS table is 30M against 3M (the issue's comparison), not against 1M."""
    text = scale.markdown([result(1), result(3), result(10), result(30)])
    assert "Peak RSS from nothing, 30M against 3M rows (10.0x the rows):" in text
    assert "| predict | 1.50 | 15.00 | 10.00 |" in text


def test_heading_says_which_scenarios_ran(results):
    """A size run with --scenarios 1 says so; one that stopped early says that; a complete one says nothing."""
    asked, stopped = result(1), result(3)
    asked.update(complete=False, scenarios_asked=1, scenarios=asked["scenarios"][:1])
    stopped.update(complete=False, scenarios_asked=4, scenarios=stopped["scenarios"][:1])
    text = scale.markdown([asked, stopped, result(10)])
    assert "test 5,000 rows), the first 1 of 4 scenarios (--scenarios 1)\n" in text
    assert "test 15,000 rows), stopped before the end\n" in text
    assert "test 50,000 rows)\n" in text
