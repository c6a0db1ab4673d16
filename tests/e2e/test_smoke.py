import pytest

pytestmark = pytest.mark.slow


def test_reproduced_repo_has_all_outputs(reproduced_repo):
    for path in ("data/submission.csv", "models/final/manifest.json", "metrics/evaluate.json", "dvc.lock"):
        assert (reproduced_repo.path / path).exists(), path
