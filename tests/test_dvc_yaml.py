"""dvc.yaml lists, for each stage, its module and every module of the package it imports (transitively)."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE_MODULES = {"generate", "featurize", "split", "train", "evaluate", "predict"}


def imported_modules(name: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if name in seen:
        return seen
    seen.add(name)
    tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            for alias in node.names:
                imported_modules(alias.name, seen)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages."):
            imported_modules(node.module.split(".", 1)[1], seen)
    return seen


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    for name, stage in stages().items():
        body = stage.get("do", stage)
        listed = {d for d in body["deps"] if str(d).startswith("stages/")}
        expected = {f"stages/{m}.py" for m in imported_modules(name)}
        assert listed == expected, (name, listed ^ expected)


def test_each_stage_lists_its_params_section_and_no_resources():
    for name, stage in stages().items():
        params = stage.get("do", stage)["params"]
        assert name in params, name
        assert not any(str(p).startswith("resources") for p in params)
    assert stages()["train"]["params"] == ["train", "xgb"]


def test_metrics_and_plots_are_declared():
    body = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "metrics/evaluate.json" in str(body["stages"]["evaluate"]["metrics"])
    assert "metrics/train/metrics.json" in str(body["stages"]["train"]["metrics"])
    assert len(body["plots"]) >= 2
