"""Faults: kill -9 mid-stage, a full disk, an unwritable output, two `dvc repro` at once, byte-identical reruns,
secrets kept out of logs and files."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.featurize import featurize_file
from tests.conftest import ROOT, SMALL_PARAMS, Repo, deep_update, make_repo, project_env, run, tree_hashes
from tests.test_bad_input import make_params, raw_frame

OUTPUT_ROOTS = ("data", "models", "metrics")
REUSED = re.compile(r"(\d+) reused from the feature cache, (\d+) computed")


def output_hashes(repo: Repo) -> dict[str, str]:
    """sha256 of every file under data/, models/, metrics/ and of dvc.lock (leftover temp names excluded)."""
    hashes = tree_hashes(repo.path, "dvc.lock", *OUTPUT_ROOTS)
    return {name: digest for name, digest in hashes.items() if ".tmp-" not in name}


def start(repo: Repo, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`dvc <args>` in its own process group, so the whole tree (dvc and the stage) can be killed at once."""
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", *args], cwd=repo.path, env=env or project_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"finished before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def status(repo: Repo, *targets: str) -> str:
    return repo.dvc("status", *targets).stdout


UP_TO_DATE = "Data and pipelines are up to date."


# ---------------------------------------------------------------------------------------------- reruns


@pytest.mark.slow
def test_two_runs_from_scratch_are_byte_identical_and_keep_secrets(
    reproduced_repo: Repo, tmp_path: Path
) -> None:
    secret = "FAKEsecret/" + hashlib.sha256(str(tmp_path).encode()).hexdigest()
    env = {**project_env(), "AWS_SECRET_ACCESS_KEY": secret, "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE"}
    fresh = make_repo(tmp_path / "fresh")
    result = run([sys.executable, "-m", "dvc", "repro", "-v"], fresh.path, env=env)
    fresh.commit("repro")
    assert output_hashes(fresh) == output_hashes(reproduced_repo)
    assert secret not in result.stdout + result.stderr
    leaks = [p for p in fresh.path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []
    assert secret not in fresh.git("log", "-p", "--all").stdout


# ---------------------------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_featurize_killed_resumes_from_cache_and_a_second_repro_is_locked_out(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"generate": {"train_molecules": 6000}})
    repo.repro("generate")
    cache = repo.path / ".cache" / "features"

    def cache_parts() -> list[Path]:
        return sorted(cache.glob("*/part-*.parquet"))

    process = start(repo, "repro", "featurize@train")
    wait_for(lambda: len(cache_parts()) >= 3, process, "three feature cache parts")
    kill(process)
    killed_parts = len(cache_parts())

    # No output DVC would take as valid: no features directory, no lock entry, dvc status says it must run.
    assert not (repo.path / "data/features/train").exists()
    lock = yaml.safe_load(repo.read("dvc.lock"))
    assert "featurize@train" not in lock["stages"]
    assert "featurize@train" in status(repo, "featurize@train")

    rerun = repo.dvc("repro", "featurize@train")
    reused, computed = map(int, REUSED.search(rerun.stderr).groups())
    assert reused > 0 and computed > 0 and reused + computed == 6000, rerun.stderr
    assert killed_parts <= len(cache_parts())
    assert not list((repo.path / "data/features").glob(".train.tmp-*"))  # the killed run's leftovers are gone
    resumed = tree_hashes(repo.path / "data/features")
    assert status(repo, "featurize@train").strip() == UP_TO_DATE

    # An uninterrupted run from an empty cache gives the same bytes; a second repro meanwhile is refused (the
    # first is held just before its rename, so the second surely meets it running).
    shutil.rmtree(cache)
    marker = pause_hook(tmp_path)
    env = {**project_env(), "PYTHONPATH": str(marker.parent), "BELKA_PAUSE_BEFORE_RENAME": "train",
           "BELKA_PAUSE_MARKER": str(marker)}  # fmt: skip
    first = start(repo, "repro", "-f", "featurize@train", env=env)
    wait_for(marker.exists, first, "featurize to reach its rename")
    second = repo.dvc("repro", "featurize@train", check=False)
    assert second.returncode != 0
    assert "lock" in (second.stdout + second.stderr).lower(), second.stderr
    Path(f"{marker}.release").touch()
    _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert REUSED.search(err).groups() == ("0", "6000")
    assert tree_hashes(repo.path / "data/features") == resumed


def pause_hook(tmp_path: Path) -> Path:
    """Install HOOK as sitecustomize in a directory (put it on PYTHONPATH); return the marker path it signals."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    return hook / "paused"


HOOK = """
import os, time
_target = os.environ.get("BELKA_PAUSE_BEFORE_RENAME")
if _target:
    _replace = os.replace

    def _paused_replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == _target:
            marker = os.environ["BELKA_PAUSE_MARKER"]
            open(marker, "w").close()
            deadline = time.monotonic() + 600
            while not os.path.exists(marker + ".release") and time.monotonic() < deadline:
                time.sleep(0.05)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _paused_replace
"""


@pytest.fixture
def copied(reproduced_repo: Repo, tmp_path: Path) -> Repo:
    """A full copy of the reproduced repository (git, DVC cache and outputs), free to modify."""
    shutil.copytree(reproduced_repo.path, tmp_path / "copy", symlinks=True)
    return Repo(tmp_path / "copy")


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "target"), [("train", "split"), ("predict", "submission.csv")])
def test_stage_killed_before_its_output_is_renamed(
    copied: Repo, tmp_path: Path, stage: str, target: str
) -> None:
    """The most dangerous moment: the complete output sits under its temporary name. A hook (sitecustomize) holds
    the stage there so the kill lands deterministically."""
    before = output_hashes(copied)
    marker = pause_hook(tmp_path)
    env = {**project_env(), "PYTHONPATH": str(marker.parent), "BELKA_PAUSE_BEFORE_RENAME": target}
    env["BELKA_PAUSE_MARKER"] = str(marker)
    process = start(copied, "repro", "-f", stage, env=env)
    wait_for(marker.exists, process, f"{stage} to reach the rename of {target}")
    marker.unlink()
    leftovers = [p for p in copied.path.rglob(f".{target}.tmp-*")]
    assert leftovers, "the hook paused before the temporary output existed"
    kill(process)

    # DVC removed the stage's outputs before running it; nothing partial took their place, dvc status says the
    # stage must run (the leftover temp name is not taken for an output), and nothing is lost: dvc checkout
    # restores the cached outputs (metrics with cache: false come back with the rerun).
    after = output_hashes(copied)
    assert after.items() <= before.items() and after != before
    assert "deleted" in status(copied, stage)
    copied.dvc("checkout")
    restored = output_hashes(copied)
    assert restored.items() <= before.items()
    assert all(
        name.startswith("metrics/") for name in set(before) - set(restored)
    )  # cache: false, rerun only

    process = start(
        copied, "repro", "-f", stage, env=env
    )  # killed again; this time the rerun starts from there
    wait_for(marker.exists, process, f"{stage} to reach the rename of {target} again")
    kill(process)
    rerun = copied.dvc("repro", "-f", stage)
    assert f"Running stage '{stage}'" in rerun.stdout
    assert output_hashes(copied) == before  # byte-identical to the uninterrupted run
    assert not list(copied.path.rglob(f".{target}.tmp-*"))


# ---------------------------------------------------------------------------------------------- disk faults


def stage_params(tmp_path: Path) -> Path:
    raw = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), copy.deepcopy(SMALL_PARAMS))
    raw["resources"]["workers"] = 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def featurize_cmd(tmp_path: Path, source: Path, output: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "stages.featurize", "--input", str(source), "--output", str(output),
        "--params", str(stage_params(tmp_path)), "--cache", str(cache),
    ]  # fmt: skip


@pytest.fixture
def previous(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A raw file and a good featurize output of it, as a previous run left them."""
    source = tmp_path / "raw.parquet"
    raw_frame(3000).write_parquet(source)
    output = tmp_path / "features" / "train"
    featurize_file(
        source, output, tmp_path / "features" / "train-rejects.csv", make_params(), True, tmp_path / "c0"
    )
    return source, output, tree_hashes(tmp_path / "features")


def test_full_disk_is_a_clear_error_and_keeps_the_previous_output(tmp_path: Path, previous) -> None:
    source, output, before = previous

    def small_disk() -> None:  # writes past 4 kB fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run(
        featurize_cmd(tmp_path, source, output, tmp_path / "fresh-cache"), cwd=ROOT, env=project_env(),
        capture_output=True, text=True, timeout=180, preexec_fn=small_disk,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "too large" in errors[0].lower(), result.stderr
    assert "Traceback" not in result.stderr
    assert tree_hashes(tmp_path / "features") == before
    assert not [p for p in (tmp_path / "features").iterdir() if ".tmp-" in p.name]


def test_output_whose_parent_is_a_file(tmp_path: Path, previous) -> None:
    source, _, _ = previous
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be\n")
    result = subprocess.run(
        featurize_cmd(tmp_path, source, blocker / "train", tmp_path / "c1"), cwd=ROOT, env=project_env(),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert str(blocker) in result.stderr and "Traceback" not in result.stderr
    assert blocker.read_text() == "a file where a directory should be\n"


def test_read_only_output_directory(tmp_path: Path, previous) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing (the full-disk test covers this)")
    source, output, before = previous
    parent = output.parent
    parent.chmod(0o555)
    try:
        result = subprocess.run(
            featurize_cmd(tmp_path, source, output, tmp_path / "c2"), cwd=ROOT, env=project_env(),
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        parent.chmod(0o755)
    assert result.returncode == 1
    assert "error: Permission denied" in result.stderr and "Traceback" not in result.stderr
    assert tree_hashes(parent) == before


# ---------------------------------------------------------------------------------------------- bad raw input


@pytest.mark.slow
def test_a_bad_part_in_an_input_directory_fails_dvc_repro_before_any_work(tmp_path: Path) -> None:
    """inputs.train is a directory of parquet parts whose ids are unique but not increasing across the parts
    (accepted at featurize.batch_rows 1000); a part appended with a null building block fails `dvc repro` with one
    error line naming that part, the column, the first id and the count, before any molecule is featurized; nothing
    is lost: `dvc checkout` restores the previous features, and removing the part makes the pipeline up to date."""
    import polars as pl

    repo = make_repo(tmp_path / "repo", {"inputs": {"train": "data/belka/train"}})
    repo.repro("generate")
    rows = pl.read_parquet(repo.path / "data/generated/train.parquet")
    parts = repo.path / "data/belka/train"
    parts.mkdir(parents=True)
    half = len(rows) // 2
    rows.slice(half).write_parquet(parts / "part-0.parquet")  # the later ids first
    rows.head(half).write_parquet(parts / "part-1.parquet")
    assert "featurize@train" in repo.repro("featurize@train")
    repo.commit("features of a two-part input")
    good_lock, good_features = repo.read("dvc.lock"), tree_hashes(repo.path / "data/features")
    cache = repo.path / ".cache" / "features"
    cached = sorted(cache.rglob("part-*.parquet"))

    appended = rows.head(10).with_columns(
        (pl.col("id") + len(rows)).alias("id"),
        pl.when(pl.int_range(pl.len()) >= 7)
        .then(None)
        .otherwise(pl.col("buildingblock2_smiles"))
        .alias("buildingblock2_smiles"),
    )
    appended.write_parquet(parts / "part-2.parquet")
    failed = repo.dvc("repro", "featurize@train", check=False)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: data/belka/train/part-2.parquet: column 'buildingblock2_smiles' must be a building block's SMILES "
        f"on every row, found an empty value at id {len(rows) + 7} (3 rows in all)"
    ], failed.stderr
    assert "Traceback" not in failed.stderr
    assert repo.read("dvc.lock") == good_lock
    assert sorted(cache.rglob("part-*.parquet")) == cached  # no molecule reached RDKit
    assert not [p for p in (repo.path / "data/features").iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    repo.dvc("checkout", "data/features/train", "data/features/train-rejects.csv")
    (parts / "part-2.parquet").unlink()
    assert tree_hashes(repo.path / "data/features") == good_features
    assert status(repo, "featurize@train").strip() == UP_TO_DATE
