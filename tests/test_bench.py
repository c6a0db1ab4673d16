"""A small run of bench/bench.py, so the benchmark script cannot rot. It checks the script runs and reports; the
figures themselves are not asserted (they mean nothing at this size)."""

from __future__ import annotations

import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from bench import belka_gen
from tests.conftest import ROOT, project_env

pytestmark = pytest.mark.slow


def test_generator_is_belka_shaped_and_prefix_stable(tmp_path):
    small, large = tmp_path / "small.parquet", tmp_path / "large.parquet"
    assert belka_gen.write_belka(small, 3000) == {"rows": 3000, "molecules": 1000}
    belka_gen.write_belka(large, 3300)
    a, b = pq.read_table(small).to_pylist(), pq.read_table(large).to_pylist()
    assert b[:3000] == a  # appending rows leaves the earlier rows as they were
    assert [r["protein_name"] for r in a[:3]] == ["BRD4", "HSA", "sEH"]
    assert len({r["molecule_smiles"] for r in b}) == 1100
    assert [r["id"] for r in b] == list(range(3300))
    assert all(r["molecule_smiles"].count("[Dy]") == 1 for r in a)


def test_bench_small_run(tmp_path):
    results, measured = tmp_path / "RESULTS.md", tmp_path / "results.json"
    command = [
        sys.executable,
        "bench/bench.py",
        "run",
        "--sizes",
        "3000,9000",
        "--train-sizes",
        "9000",
        "--append-sizes",
        "9000",
        "--trees",
        "3",
        "--trees-large",
        "3",
        "--naive-rows",
        "600",
        "--ceiling-molecules",
        "300",
        "--negative-sample-rate",
        "0.2",
        "--train-repeats",
        "2",
        "--workers",
        "2",
        "--batch-rows",
        "3000",
        "--workdir",
        str(tmp_path / "work"),
        "--results",
        str(results),
        "--json",
        str(measured),
    ]
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    text = results.read_text()
    again = subprocess.run([sys.executable, "bench/bench.py", "report", str(measured)], cwd=ROOT, env=project_env(),
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout == text + "\n"  # the report is the results' alone
    for heading in ("## Featurize", "## Appending 10%", "## Train", "## Targets", "## Projection"):
        assert heading in text
    # train against the same rows and features given to XGBoost as one in-memory array
    limit = text.split("## Train against the in-memory limit", 1)[1].split("## Targets", 1)[0]
    assert re.search(r"\| 9,000 \| [\d,]+ \| yes \| [\d,]+ \| 3 \|", limit)  # same sampled rows, rounds
    assert "| 3 / 3 |" in limit  # both models have the rounds asked for
    assert "9k rows, seconds of each run: train " in limit  # --train-repeats 2: both runs listed
    assert "| 9,000 | 3,000 |" in text
    assert "reused from the feature cache, 300 computed" in text
    assert "RDKit ceiling, default parse" in text and "RDKit ceiling, fast parse" in text  # both ceilings
    assert "vs default ceiling" in text and "on 16 cores" in text
    assert not (tmp_path / "work").exists()


def test_parse_speed_bench_small_run(tmp_path):
    """bench/parse_speed.py on tiny inputs, with the base commit's featurize alternated with the current one."""
    results = tmp_path / "parse-speed.md"
    command = [sys.executable, "bench/parse_speed.py", "--sizes", "3000,6000", "--ceiling-molecules", "200",
               "--baseline", "HEAD", "--workdir", str(tmp_path), "--results", str(results)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    text = results.read_text()
    assert re.search(r"\| default \| \d+ \|", text) and re.search(r"\| fast \| \d+ \|", text)
    for size in ("3,000", "6,000"):
        assert f"| {size} | " in text and text.count(f"| {size} | ") == 2  # the current code and HEAD's
    assert "| read | clean and hash | new molecules |" in text  # featurize's own work, step by step
    assert "h on 16, " in text
    assert list(tmp_path.iterdir()) == [results]  # the work directory is gone


def test_engines_bench_small_run(tmp_path):
    """bench/engines.py on a tiny file: it measures both engines and checks they wrote the same bytes."""
    results = tmp_path / "engines.md"
    command = [sys.executable, "bench/engines.py", "--rows", "3000", "--workers", "1,2", "--engines", "local,dask",
               "--results", str(results)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    text = results.read_text()
    assert "| local | 2 |" in text and "| dask | 2 |" in text
    assert "same bytes from every engine and worker count" in text


def test_raw_checks_bench_small_run():
    """bench/raw_checks.py on a tiny file: every input form is measured."""
    command = [sys.executable, "bench/raw_checks.py", "--rows", "3000", "--repeats", "1"]
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for row in (
        "| parquet, ids increasing |",
        "| parquet, ids shuffled |",
        "| csv |",
        "labelled pairs, positive",
        "labelled pairs, both ways",
    ):
        assert row in done.stdout


def test_cache_corruption_bench_small_run():
    """bench/cache_corruption.py on a small cache: every flip is counted, and no damage reaches the features."""
    command = [sys.executable, "bench/cache_corruption.py", "--molecules", "1000", "--batch-rows", "1000",
               "--flips", "10"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| feature cache lookup of the part's molecules | flips |" in done.stdout
    assert "| none used: reported, computed again | 10 |" in done.stdout  # every flip detected
    for damage in ("truncated to half", "another part's file"):
        assert re.search(rf"\| {damage} \| 333 computed, 1 warning\(s\) \(1 naming the part\), output equal \| "
                         r"0 computed, 0 warning\(s\) \(0 naming the part\), output equal \|", done.stdout)  # fmt: skip


def test_keyset_bench_small_run():
    """bench/keyset.py on a few keys, against a commit's KeySet (this one's: the history is there): both agree."""
    command = [sys.executable, "bench/keyset.py", "--keys", "20k", "--batch", "1k", "--baseline", "HEAD"]
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "20,000 keys in batches of 1,000 new keys" in done.stdout
    assert "| this commit | 20,000 |" in done.stdout and "| HEAD | 20,000 |" in done.stdout


def test_evaluate_memory_bench_small_run(tmp_path):
    """bench/evaluate_memory.py on a tiny valid part: HEAD's evaluate and this checkout's at two memory budgets, on
    the same inputs; the report says the budgets wrote the same bytes and the score equals HEAD's."""
    results = tmp_path / "evaluate.md"
    command = [sys.executable, "bench/evaluate_memory.py", "--rows", "12000", "--trees", "2", "--budgets", "64,1024",
               "--baseline", "HEAD", "--workdir", str(tmp_path / "work"), "--results", str(results)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    text = results.read_text()
    assert "| baseline HEAD | " in text and text.count("| this checkout, ") == 2
    assert re.search(r"\| this checkout, 64 MB \| \d+\.\d\d GB \|", text)
    assert "wrote identical metrics and summary bytes: yes" in text
    assert "score, share and non_share equal to baseline HEAD's: yes" in text
