"""The environment as a dependency: environment.yaml records uv.lock's versions, every stage refuses to start in
another environment, and (slow) another RDKit reruns exactly what RDKit shapes, then the locked one brings the
committed dvc.lock back."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from stages import environment, generate
from tests.conftest import ROOT, Repo, clone, project_env, ran_stages, run
from tests.test_dvc_yaml import ENVIRONMENT_SHAPES

# An RDKit other than the locked one, with wheels for every supported Python, that the code accepts
# (pyproject.toml: rdkit>=2025.3.4).
OTHER_RDKIT = "2026.3.6"
SMILES = "C#CCOc1ccc(CNc2nc(NCC3CCCN3c3cccnn3)nc(N[C@@H](CC#C)CC(=O)N[Dy])n2)cc1"


def locked_versions() -> dict[str, list[str]]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, list[str]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], []).append(package["version"])
    return versions


def test_recorded_versions_are_uv_locks():
    recorded = environment.read_record()
    assert recorded is not None and set(recorded) == set(environment.PACKAGES)
    locked = locked_versions()
    assert {name: locked[name] for name in recorded} == {name: [v] for name, v in recorded.items()}


def test_every_package_is_locked_once_for_every_supported_python():
    """One set of versions whatever the Python: the committed dvc.lock is reproducible on each."""
    assert {name: v for name, v in locked_versions().items() if len(v) > 1} == {}


def test_the_record_command_writes_the_installed_versions(tmp_path: Path, capsys: pytest.CaptureFixture):
    record = tmp_path / "environment.yaml"
    record.write_text("rdkit: 2000.1.1\n")
    assert environment.main(["--output", str(record)]) == 0
    assert environment.read_record(record) == environment.installed()
    assert "rdkit " in capsys.readouterr().err  # says what changed
    assert environment.read_record() == environment.installed()  # the committed record: this environment's


def test_a_stage_refuses_to_start_when_a_version_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    record = tmp_path / "environment.yaml"
    record.write_text(environment.render({**environment.installed(), "rdkit": "2000.1.1"}))
    monkeypatch.setattr(environment, "RECORD", record)
    out = tmp_path / "generated"
    args = ["--train", str(out / "train.parquet"), "--test", str(out / "test.parquet")]
    code = generate.main(
        [*args, "--test-labels", str(out / "labels.parquet"), "--params", str(ROOT / "params.yaml")]
    )
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()  # refused before any work
    assert err.count("\n") == 1 and err.startswith("error: installed versions differ from environment.yaml: ")
    assert f"rdkit {environment.installed()['rdkit']} (recorded: 2000.1.1)" in err
    assert f"({environment.COMMAND}, then dvc repro)" in err and "uv sync --frozen" in err


def overlay_venv(path: Path, **pins: str) -> Path:
    """A venv that sees this environment's packages, except ``pins`` installed into it (real installs, through uv
    and its cache): its site-packages come first on sys.path, this environment's after them (a .pth file)."""
    run(["uv", "venv", "-q", "--python", sys.executable, str(path)], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=path
    ).stdout
    Path(purelib.strip(), "_locked_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    specs = [f"{name}=={version}" for name, version in pins.items()]
    run(["uv", "pip", "install", "-q", "--no-deps", "--python", str(python), *specs], cwd=path.parent)
    return python


def in_venv(python: Path) -> dict[str, str]:
    env = project_env()
    env["PATH"] = f"{python.parent}:{env['PATH']}"  # `python` in the stages' commands: this venv's
    return env


def dvc_status(repo: Repo, env: dict[str, str]) -> set[str]:
    out = run([str(env_python(env)), "-m", "dvc", "status", "--json"], repo.path, env=env).stdout
    return set(yaml.safe_load(out))


def env_python(env: dict[str, str]) -> Path:
    return Path(env["PATH"].split(":")[0]) / "python"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv, which installs the other RDKit")
def test_another_rdkit_reruns_what_rdkit_shapes_and_the_locked_one_restores_dvc_lock(
    reproduced_repo: Repo, tmp_path: Path
):
    repo = clone(reproduced_repo, tmp_path / "clone")
    committed_lock = repo.read("dvc.lock")
    other = in_venv(overlay_venv(tmp_path / "venv", rdkit=OTHER_RDKIT))
    python = env_python(other)

    def dvc(*args: str, env: dict[str, str] = other) -> subprocess.CompletedProcess:
        return run([str(env_python(env)), "-m", "dvc", *args], repo.path, env=env)

    # a feature cache of its own (a resource: reruns nothing), so the shared repository's stays as it was
    repo.set_params({"resources": {"feature_cache": str(tmp_path / "features")}})
    # installed, not recorded: nothing is stale yet, and a stage run anyway refuses, naming the command that records
    assert dvc_status(repo, other) == set()
    refused = run([str(python), "-m", "stages.featurize", "--side", "test", "--input", "data/generated/test.parquet",
                   "--output", str(tmp_path / "f"), "--rejects", str(tmp_path / "r.csv")], repo.path, env=other,
                  check=False)  # fmt: skip
    assert refused.returncode == 1 and not (tmp_path / "f").exists()
    assert f"({environment.COMMAND}, then dvc repro)" in refused.stderr

    run([str(python), "-m", "stages.environment"], repo.path, env=other)
    assert environment.read_record(repo.path / "environment.yaml")["rdkit"] == OTHER_RDKIT
    # exactly what runs RDKit is stale (and `repro --dry` runs those: the rest waits for their outputs)
    stale = {"generate", "featurize@train", "featurize@test"}
    assert dvc_status(repo, other) == stale
    assert set(ran_stages(dvc("repro", "--dry").stdout)) == stale
    # `dvc repro` runs them and what follows (the features' manifests record RDKit's version); split too when the
    # rows changed (the generated SMILES), which depends on what the new RDKit writes
    ran = set(ran_stages(dvc("repro").stdout))
    assert stale | {"train", "final", "evaluate", "predict"} <= ran
    assert dvc_status(repo, other) == set()
    features = yaml.safe_load((repo.path / "data/features/test/manifest.json").read_text())
    assert Version(features["features"]["rdkit"]) == Version(OTHER_RDKIT)  # rdkit.__version__ is 2026.03.6

    # on-demand scoring: the new model, featurized by the other RDKit
    scored = run([str(python), "-m", "stages.serve", "--models", "models/final", "--smiles", SMILES,
                  "--protein", "BRD4"], repo.path, env=other)  # fmt: skip
    assert 0.0 <= float(scored.stdout.splitlines()[-1]) <= 1.0
    # the locked RDKit with this model: refused, naming the commands that fix it
    locked = in_venv(Path(sys.executable))
    refused = run([sys.executable, "-m", "stages.serve", "--models", "models/final", "--smiles", SMILES,
                   "--protein", "BRD4"], repo.path, env=locked, check=False)  # fmt: skip
    assert refused.returncode == 1 and "uv sync --frozen" in refused.stderr

    # the locked version back: recorded, and `dvc repro` restores the committed dvc.lock (from the run cache)
    run([sys.executable, "-m", "stages.environment"], repo.path, env=locked)
    assert (repo.path / "environment.yaml").read_text() == (ROOT / "environment.yaml").read_text()
    dvc("repro", env=locked)
    assert repo.read("dvc.lock") == committed_lock


@pytest.mark.slow
def test_a_recorded_version_change_makes_exactly_the_stages_it_shapes_stale(
    reproduced_repo: Repo, tmp_path: Path
):
    """DVC tracks environment.yaml per key: each package's change is seen by the stages that list it, no other."""
    repo = clone(reproduced_repo, tmp_path / "clone")
    record = (repo.path / "environment.yaml").read_text()
    env = in_venv(Path(sys.executable))
    for package, shaped in ENVIRONMENT_SHAPES.items():
        versions = {**environment.read_record(repo.path / "environment.yaml"), package: "0.0.1"}
        (repo.path / "environment.yaml").write_text(environment.render(versions))
        expected = {f"featurize@{side}" for side in ("train", "test")} if "featurize" in shaped else set()
        assert dvc_status(repo, env) == expected | (shaped - {"featurize"}), package
        (repo.path / "environment.yaml").write_text(record)
    assert dvc_status(repo, env) == set()
