"""dvc.yaml lists, for each stage, its module and every module of the package it imports (transitively)."""

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE_MODULES = {"generate", "featurize", "split", "train", "final", "learning_curve", "evaluate", "predict"}
# Modules that shape no output (atomic writes; errors and their messages; logging, progress and the command line;
# where work runs; train's memory estimate, which refuses or logs; the environment check, which refuses or records):
# no stage lists them, so editing them reruns nothing. The one place that names them.
OUTPUT_NEUTRAL = {"atomic", "cli", "engine", "errors", "memory", "environment"}


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
        expected = {f"stages/{m}.py" for m in imported_modules(name) - OUTPUT_NEUTRAL}
        assert listed == expected, (name, listed ^ expected)


def params_keys(stage: dict, file: str = "params.yaml") -> list[str]:
    """The keys of ``file`` a stage lists as params (params.yaml's are plain strings, another file's a mapping)."""
    keys = []
    for item in stage.get("do", stage).get("params", []):
        if isinstance(item, dict):
            keys += item.get(file, [])
        elif file == "params.yaml":
            keys.append(item)
    return keys


# Which stages each recorded package can change (environment.yaml's keys as params; stages/environment.py):
ENVIRONMENT_SHAPES = {
    # RDKit: the canonical SMILES generate writes and its hidden rule's substructure matches; featurize's cleaning,
    # descriptors and fingerprints (and the version in the feature spec)
    "rdkit": {"generate", "featurize"},
    # XGBoost: the boosters (their JSON records the version) and every probability scored from them
    "xgboost": {"train", "final", "learning_curve", "evaluate", "predict"},
    # scikit-learn: the scaler's statistics and the encoder (train, final), the scaler's and encoder's transform
    # (every design matrix: evaluate, predict), evaluate's AP, ROC AUC and curves
    "scikit-learn": {"train", "final", "learning_curve", "evaluate", "predict"},
    # numpy: seeded Generator draws (generate, evaluate's bootstrap: NEP 19 promises no stream across versions), the
    # float reductions of the scaler's statistics (train, final); split's hash is integer arithmetic, exact
    "numpy": {"generate", "train", "final", "learning_curve", "evaluate"},
    # polars: every table a stage writes is built by it (joins, sorts, group-bys), and it writes the CSV outputs
    # (rejects, curves, submission: its float formatting)
    "polars": {"generate", "featurize", "split", "train", "final", "learning_curve", "evaluate"}
    | {"predict"},
    # pyarrow: writes every parquet output, its version in each file's footer (created_by)
    "pyarrow": {"generate", "featurize", "split"},
    # dvclive: train's metrics.json and per-metric step files
    "dvclive": {"train"},
}


def test_each_recorded_package_is_a_param_of_exactly_the_stages_it_shapes():
    recorded = yaml.safe_load((ROOT / "environment.yaml").read_text())
    assert set(ENVIRONMENT_SHAPES) == set(recorded)
    listed = {name: set(params_keys(stage, "environment.yaml")) for name, stage in stages().items()}
    expected = {name: {p for p, shaped in ENVIRONMENT_SHAPES.items() if name in shaped} for name in stages()}
    assert listed == expected


def test_params_deps_are_keys_that_shape_outputs():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    listed = {name: params_keys(stage) for name, stage in stages().items()}
    for name, keys in listed.items():
        for key in keys:
            node = params
            for part in str(key).split("."):
                assert part in node, (name, key)  # every listed key exists
                node = node[part]
            assert not str(key).startswith("resources"), (name, key)
    assert listed["generate"] == ["generate"]
    assert "featurize.max_reject_fraction" not in listed["featurize"]  # a threshold: changes no output
    assert set(listed["featurize"]) == {f"featurize.{k}" for k in params["featurize"]} - {
        "featurize.max_reject_fraction"
    }
    assert listed["split"] == ["split"]
    # the split model: every train key but final_fit (read by the final stage alone), and xgb
    assert set(listed["train"]) == {f"train.{k}" for k in params["train"]} - {"train.final_fit"} | {"xgb"}
    assert listed["final"] == ["train", "xgb"]
    assert listed["learning_curve"] == ["train", "xgb"]
    assert listed["evaluate"] == ["evaluate"]
    assert listed["predict"] == []  # batch size and paths only


def test_paths_live_in_dvc_yaml_only():
    """Each stage's cmd passes its inputs and outputs (an output, or a directory holding it: train's dvclive
    directory); no module keeps a default data path."""
    for name, stage in stages().items():
        body = stage.get("do", stage)
        passed = body["cmd"].replace("${key}", "train").split()
        for out in body.get("outs", []):
            path = (next(iter(out)) if isinstance(out, dict) else out).replace("${key}", "train")
            assert any(path == arg or path.startswith(arg.rstrip("/") + "/") for arg in passed), (name, path)
    default_path = re.compile(r"""(Path\(|default=|= )\s*["'](data|models|metrics)\b""")
    for path in sorted((ROOT / "stages").glob("*.py")):
        found = default_path.search(path.read_text())
        assert not found, f"{path.name} keeps a path ({found and found.group(0)}...): pass it from dvc.yaml"


def test_metrics_and_plots_are_declared():
    body = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "metrics/evaluate.json" in str(body["stages"]["evaluate"]["metrics"])
    assert "metrics/train/metrics.json" in str(body["stages"]["train"]["metrics"])
    assert len(body["plots"]) >= 2


def test_the_fits_read_the_split_summary_and_depend_on_it():
    """train and final estimate their memory from the split's counts before any row: a file they read is a dep."""
    for name in ("train", "final"):
        stage = stages()[name]
        assert "--split-summary data/split/summary.json" in stage["cmd"], name
        assert "data/split/summary.json" in stage["deps"], name


# Measured: a comment appended to each module of stages/ in a copy of a project after a completed `dvc repro`, and
# the stages `dvc status` then lists (the stages after them rerun only if those stages' outputs change). Kept here
# so a change of the layout that changes it is seen; checked against the import graph and dvc.yaml below.
FEATURIZE = {"featurize@train", "featurize@test"}
ALL_STAGES = {"generate", *FEATURIZE, "split", "train", "final", "learning_curve", "evaluate", "predict"}
FITS = {"train", "final", "learning_curve"}
MODULE_STALES: dict[str, set[str]] = {
    "atomic": set(),
    "boosting": FITS,
    "chem": FEATURIZE,
    "cli": set(),
    "compare": set(),
    "dataset": ALL_STAGES - {"generate"},
    "engine": set(),
    "errors": set(),
    "evaluate": {"evaluate"},
    "features": FEATURIZE | FITS | {"evaluate", "predict"},
    "featurize": FEATURIZE,
    "final": {"final"},
    "learning_curve": {"learning_curve"},
    "environment": set(),
    "fit_dask": FITS,
    "fit_local": FITS,
    "fitting": FITS,
    "generate": {"generate"},
    "io": ALL_STAGES,
    "memory": set(),
    "model": FITS | {"evaluate", "predict"},
    "molecules": FEATURIZE | FITS | {"evaluate", "predict"},
    "params": ALL_STAGES,
    "predict": {"predict"},
    "raw_input": FEATURIZE,
    "scoring": {"predict"},
    "serve": set(),
    "split": FITS | {"split", "evaluate"},
    "train": {"train"},
    "train_rows": FITS,
}


def test_the_measured_stale_stages_of_each_module_are_the_import_graphs():
    """A comment in a module makes stale exactly the stages whose outputs it can change: those that import it,
    output-neutral modules aside."""
    assert set(MODULE_STALES) == {path.stem for path in (ROOT / "stages").glob("*.py")}
    for module, stale in MODULE_STALES.items():
        importers = {name for name in stages() if module in imported_modules(name) - OUTPUT_NEUTRAL}
        expected = {key for name in importers for key in (FEATURIZE if name == "featurize" else {name})}
        assert stale == expected, (module, stale ^ expected)
