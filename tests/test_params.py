"""params.yaml errors: each names the key path and what is allowed; a stage turns them into one `error:` line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.params import ParamsError, load_params, parse_params
from tests.conftest import ROOT, project_env

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def changed(path: str, value: object) -> dict:
    raw = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value
    return raw


def without(path: str) -> dict:
    raw = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    del node[last]
    return raw


def error_of(raw: object) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw, "params.yaml")
    return str(info.value)


def test_the_repository_params_are_valid() -> None:
    assert parse_params(copy.deepcopy(BASE)).featurize.fingerprint.n_bits % 8 == 0


def test_typo_in_a_key_names_the_key_and_the_allowed_ones() -> None:
    raw = copy.deepcopy(BASE)
    raw["xgb"]["max_dept"] = raw["xgb"].pop("max_depth")
    message = error_of(raw)
    assert "xgb.max_dept: unknown key" in message
    assert "max_depth" in message and "n_estimators" in message  # what is allowed
    assert "xgb.max_depth: missing (required)" in message


def test_typo_in_a_nested_key() -> None:
    raw = copy.deepcopy(BASE)
    raw["featurize"]["fingerprint"]["nbits"] = raw["featurize"]["fingerprint"].pop("n_bits")
    message = error_of(raw)
    assert (
        "featurize.fingerprint.nbits: unknown key (allowed here: type, radius, n_bits, chirality)" in message
    )


def test_unknown_section() -> None:
    message = error_of({**copy.deepcopy(BASE), "trian": {"seed": 1}})
    assert "trian: unknown key" in message and "train" in message and "featurize" in message


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("xgb.learning_rate", 0.0, "xgb.learning_rate: Input should be greater than 0"),
        ("xgb.learning_rate", 3, "xgb.learning_rate: Input should be less than or equal to 1"),
        ("split.valid_fraction", 1.5, "split.valid_fraction: Input should be less than 1"),
        (
            "featurize.max_reject_fraction",
            -0.1,
            "featurize.max_reject_fraction: Input should be greater than or",
        ),
        (
            "featurize.max_smiles_length",
            5,
            "featurize.max_smiles_length: Input should be greater than or equal to 10",
        ),
        ("generate.train_molecules", "many", "generate.train_molecules: Input should be a valid integer"),
        ("split.method", "scaffold", "split.method: Input should be 'belka', 'random' or 'building_blocks'"),
        (
            "split.held_out_building_blocks",
            0.0,
            "split.held_out_building_blocks: Input should be greater than 0",
        ),
        ("xgb.device", "tpu", "xgb.device: Input should be 'cpu' or 'cuda'"),
        ("train.data_mode", "disk", "train.data_mode: Input should be 'in_memory' or 'external'"),
        ("resources.workers", -1, "resources.workers: Input should be greater than or equal to 0"),
        ("evaluate.mixed_sample", -1, "evaluate.mixed_sample: Input should be greater than or equal to 0"),
        (
            "resources.evaluate_memory_mb",
            8,
            "resources.evaluate_memory_mb: Input should be greater than or equal to 64",
        ),
    ],
)
def test_value_out_of_range_names_key_value_and_range(path: str, value: object, expected: str) -> None:
    message = error_of(changed(path, value))
    assert expected in message
    assert f"(got {value!r})" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            changed("featurize.fingerprint.n_bits", 1001),
            "featurize.fingerprint.n_bits must be a multiple of 8",
        ),
        (
            changed("inputs.test", BASE["inputs"]["train"]),
            "inputs.train and inputs.test must be different files",
        ),
        (
            changed("inputs.test", "./" + BASE["inputs"]["train"]),
            "inputs.train and inputs.test must be different",
        ),
        (
            {**copy.deepcopy(BASE), "xgb": {**BASE["xgb"], "tree_method": "exact"}},
            "xgb.tree_method: tree_method 'exact' cannot train on the streamed QuantileDMatrix",
        ),
        (
            {**copy.deepcopy(BASE), "xgb": {**BASE["xgb"], "tree_method": "approx"}},
            "(XGBoost: 'Only hist tree method can use QuantileDMatrix'); use hist (got 'approx')",
        ),
        (
            {
                **copy.deepcopy(BASE),
                "train": {**BASE["train"], "negative_sample_rate": 0.1, "negatives_per_positive": 5},
            },
            "train.negative_sample_rate and train.negatives_per_positive both sample negatives: set one",
        ),
        (
            {
                **copy.deepcopy(BASE),
                "split": {**BASE["split"], "held_out_building_blocks": 0.3, "valid_fraction": 0.5},
            },
            # by hand: (1 - 0.3)^3 * (1 - 0.5) = 0.1715
            "held_out_building_blocks=0.3 and split.valid_fraction=0.5 with method=belka leave about 17% of the "
            "molecules to train on (at least 30% needed)",
        ),
        (
            {**copy.deepcopy(BASE), "split": {**BASE["split"], "method": "random", "valid_fraction": 0.75}},
            "with method=random leave about 25% of the molecules",
        ),
        (
            changed("featurize.descriptors", ["MolWt", "NumHDonors", "MolWeight"]),
            "featurize.descriptors: unknown RDKit descriptor(s) 'MolWeight'; allowed: MaxAbsEStateIndex",
        ),
        (
            changed("featurize.descriptors", ["MolWt", "MolWt"]),
            "featurize.descriptors: descriptors must not repeat",
        ),
        (
            {
                **changed("featurize.descriptors", []),
                "featurize": {
                    **BASE["featurize"],
                    "descriptors": [],
                    "fingerprint": {**BASE["featurize"]["fingerprint"], "type": "none"},
                },
            },
            "featurize needs at least one descriptor or a fingerprint (fingerprint.type is none)",
        ),
    ],
)
def test_inconsistent_values(raw: dict, expected: str) -> None:
    message = error_of(raw)
    assert expected in message


@pytest.mark.parametrize("section", ["inputs", "featurize", "xgb", "resources"])
def test_missing_section(section: str) -> None:
    # every section is required
    assert f"{section}: missing (required)" in error_of(without(section))


def test_missing_nested_key() -> None:
    assert "featurize.fingerprint.n_bits: missing (required)" in error_of(
        without("featurize.fingerprint.n_bits")
    )


@pytest.mark.parametrize("raw", [None, [], "text", 3])
def test_not_a_mapping(raw: object) -> None:
    assert "expected a mapping of sections at the top level" in error_of(raw)


def test_the_allowed_descriptors_are_rdkits_own() -> None:
    message = error_of(changed("featurize.descriptors", ["Nope"]))
    from rdkit.Chem import Descriptors

    for name in ("MolWt", "TPSA", "MolLogP", "RingCount", "qed"):
        assert name in message and hasattr(Descriptors, name)
    parse_params(changed("featurize.descriptors", ["TPSA", "MolLogP", "qed"]))  # any of them is accepted


def test_keys_that_moved_to_resources_are_unknown_where_they_were() -> None:
    assert "xgb.n_jobs: unknown key" in error_of(changed("xgb.n_jobs", 2))
    assert "predict: unknown key" in error_of({**copy.deepcopy(BASE), "predict": {"batch_rows": 1000}})


def test_every_problem_is_listed_at_once() -> None:
    raw = changed("xgb.max_depth", -1)
    raw["split"]["seeed"] = 1
    message = error_of(raw)
    assert "xgb.max_depth" in message and "split.seeed: unknown key" in message


def test_load_params_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nope\.yaml: not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("xgb: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml: not valid YAML"):
        load_params(bad)


def test_a_stage_reports_one_error_line_and_exits_1(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(changed("featurize.fingerprint.n_bits", 1001)))
    output = tmp_path / "features"
    result = subprocess.run(
        [sys.executable, "-m", "stages.featurize", "--input", str(tmp_path / "in.csv"), "--output", str(output),
         "--params", str(params)],
        cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: {params} is invalid:")
    assert "featurize.fingerprint.n_bits must be a multiple of 8, got 1001" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_the_feature_cache_is_the_users_unless_set(monkeypatch, tmp_path) -> None:
    from stages.params import feature_cache_dir

    monkeypatch.delenv("BELKA_FEATURE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    params = parse_params(changed("resources.feature_cache", None))
    assert feature_cache_dir(params) == tmp_path / "home" / ".cache" / "belka-dvc" / "features"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert feature_cache_dir(params) == tmp_path / "xdg" / "belka-dvc" / "features"
    configured = parse_params(changed("resources.feature_cache", "~/belka/$USER_PART"))
    monkeypatch.setenv("USER_PART", "cache")
    assert feature_cache_dir(configured) == tmp_path / "home" / "belka" / "cache"
    monkeypatch.setenv("BELKA_FEATURE_CACHE", "/runner/volume/features")  # the environment wins: CI, hosts
    assert feature_cache_dir(configured) == Path("/runner/volume/features")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path) -> None:
    text = (ROOT / "params.yaml").read_text().replace("  max_depth: 6\n", "  max_depth: 6\n  max_depth: 8\n")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(tmp_path / "params.yaml")
    line = text.splitlines().index("  max_depth: 8") + 1
    assert f"key 'max_depth' appears twice (lines {line - 1} and {line})" in str(info.value)
