"""DVC experiments reach the feature cache: queued (`dvc exp run --queue`, `dvc queue start`) and temporary
(`dvc exp run --temp`) experiments run in a copy of the workspace, yet reuse the molecules that earlier runs
featurized, through the default cache location
(the user's cache directory, here ``$XDG_CACHE_HOME`` pointed at a temporary directory, never the real ~/.cache)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from stages import generate
from stages.params import parse_params
from tests.conftest import Repo, deep_update, make_repo, project_env, run, run_queue
from tests.e2e.test_remote import featurized

pytestmark = pytest.mark.slow

QUEUE_TIMEOUT_S = 600


class Experiments:
    """dvc's experiment commands in ``repo``, with the user's cache directory at ``home_cache``."""

    def __init__(self, repo: Repo, home_cache: Path) -> None:
        self.repo = repo
        self.env = project_env() | {"XDG_CACHE_HOME": str(home_cache)}

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "dvc", *args], self.repo.path, check=check, env=self.env)

    def queue(self, name: str, *overrides: str) -> None:
        self.dvc("exp", "run", "--queue", "--name", name, *[f"--set-param={o}" for o in overrides])

    def featurized(self, name: str, source: str) -> dict[str, int]:
        return featurized(self.dvc("queue", "logs", name).stdout, source)


def generated_molecules(repo: Repo, train_molecules: int) -> tuple[set[str], set[str]]:
    """The distinct training and test SMILES that the generate stage writes for ``train_molecules``."""
    params = parse_params(deep_update(repo.params(), {"generate": {"train_molecules": train_molecules}}))
    train, test = generate.generate(params.generate)
    return set(train["molecule_smiles"].to_list()), set(test["molecule_smiles"].to_list())


def test_queued_and_temporary_experiments_share_the_feature_cache(tmp_path):
    """Two queued experiments, the second with about 10% more training molecules: the first featurizes everything
    into the user's cache directory, the second (run after it by the one worker) computes only the new molecules;
    then a temporary experiment with 10% more again computes only its own new ones."""
    repo = make_repo(tmp_path / "repo")
    repo.set_params({"resources": {"feature_cache": None}})  # the default: the user's cache directory
    repo.commit("default feature cache")
    home_cache = tmp_path / "home-cache"
    experiments = Experiments(repo, home_cache)
    base = repo.params()["generate"]["train_molecules"]
    appended = base * 11 // 10

    experiments.queue("base", f"generate.train_molecules={base}")
    experiments.queue("appended", f"generate.train_molecules={appended}")
    status = run_queue(experiments.dvc, QUEUE_TIMEOUT_S)

    assert re.search(r"base\s.*Success", status) and re.search(r"appended\s.*Success", status), status
    first_train, first_test = generated_molecules(repo, base)
    assert experiments.featurized("base", "data/generated/train.parquet") == {
        "unique": len(first_train), "reused": 0, "computed": len(first_train),
    }  # fmt: skip
    train, _ = generated_molecules(repo, appended)
    seen = first_train | first_test
    counts = experiments.featurized("appended", "data/generated/train.parquet")
    print("queued experiment with 10% more molecules, featurize@train:", counts)
    assert counts == {"unique": len(train), "reused": len(train & seen), "computed": len(train - seen)}
    assert 0 < counts["computed"] <= counts["unique"] // 5, counts
    # The experiments ran in their own copies of the workspace: the cache they shared is the user's.
    assert list((home_cache / "belka-dvc" / "features").rglob("part-*.parquet"))
    assert not (repo.path / ".cache").exists()

    # A temporary experiment (`dvc exp run --temp`, also in a copy of the workspace) reuses what both computed.
    more = appended * 11 // 10
    result = experiments.dvc("exp", "run", "--temp", f"--set-param=generate.train_molecules={more}",
                             "featurize@train")  # fmt: skip
    train_more, _ = generated_molecules(repo, more)
    seen |= train
    counts = featurized(result.stdout + result.stderr, "data/generated/train.parquet")
    assert counts == {
        "unique": len(train_more),
        "reused": len(train_more & seen),
        "computed": len(train_more - seen),
    }
    assert 0 < counts["computed"] <= counts["unique"] // 5, counts
