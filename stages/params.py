"""The one schema of ``params.yaml``.

Every stage loads its section through :func:`load_params`. Unknown keys are rejected, values are range-checked,
and cross-field checks run after the sections are parsed. Errors name the key path and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages import errors
from stages.errors import ParamsError

PARAMS_FILE = Path("params.yaml")
PROTEINS = ("BRD4", "HSA", "sEH")
DEFAULT_DESCRIPTORS = ("MolWt", "NumHDonors", "NumHAcceptors")  # the seed's MW, HBD and HBA


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Inputs(Section):
    """Raw BELKA-format files (parquet or csv, a file or a directory of parquet files)."""

    train: str = Field(min_length=1)
    test: str = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> Inputs:
        if os.path.normpath(self.train) == os.path.normpath(self.test):
            raise ValueError(errors.SAME_INPUTS)
        return self


class Generate(Section):
    """The built-in BELKA-format data set, so a fresh clone runs with no download."""

    seed: int = Field(ge=0)
    train_molecules: int = Field(ge=100, le=50_000_000)
    test_shared_molecules: int = Field(ge=10, le=10_000_000)
    test_unseen_molecules: int = Field(ge=10, le=10_000_000)
    positive_rate: float = Field(gt=0.0, le=0.2)
    test_only_building_blocks: float = Field(gt=0.0, lt=0.5)


class Fingerprint(Section):
    """One of RDKit's fingerprint generators (``stages.features.FingerprintConfig``): ``radius`` is read by the Morgan
    types only; ``type: none`` stores no fingerprint."""

    type: Literal["morgan", "feature_morgan", "atom_pair", "topological_torsion", "none"] = "morgan"
    radius: int = Field(default=2, ge=1, le=6)
    n_bits: int = Field(ge=64, le=16384)
    chirality: bool = False

    @model_validator(mode="after")
    def _bytes(self) -> Fingerprint:
        if self.n_bits % 8:
            raise ValueError(errors.n_bits_not_bytes(self.n_bits))
        return self


class Featurize(Section):
    batch_rows: int = Field(ge=1_000, le=50_000_000)
    max_smiles_length: int = Field(ge=10, le=100_000)
    max_reject_fraction: float = Field(ge=0.0, le=1.0)
    # a molecule and protein labelled both 0 and 1 (replicate measurements that disagree): error refuses the input,
    # any labels every row of the pair 1, drop leaves the pair's rows out
    conflicting_labels: Literal["error", "any", "drop"] = "any"
    descriptors: tuple[str, ...] = Field(default=DEFAULT_DESCRIPTORS, min_length=0, max_length=300)
    fingerprint: Fingerprint

    @field_validator("descriptors")
    @classmethod
    def _known_descriptors(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from rdkit.Chem import Descriptors  # imported only when this section is checked

        allowed = [name for name, _ in Descriptors._descList]
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise ValueError(errors.unknown_descriptors(unknown, allowed))
        if len(set(names)) != len(names):
            raise ValueError(errors.repeated_descriptors(names))
        return names

    @model_validator(mode="after")
    def _some_feature(self) -> Featurize:
        if not self.descriptors and self.fingerprint.type == "none":
            raise ValueError(errors.NO_FEATURES)
        return self


class Split(Section):
    """``belka`` (the default) builds a valid part like BELKA's test set, with both groups Kaggle scores:
    molecules all of whose building blocks are held out (non-share), molecules with some (mixed, reported apart)
    and a random fraction of the others (share). ``random`` takes the random fraction only (share only);
    ``building_blocks`` the molecules with held-out blocks only (non-share and mixed)."""

    method: Literal["belka", "random", "building_blocks"]
    held_out_building_blocks: float = Field(gt=0.0, lt=0.5)
    valid_fraction: float = Field(gt=0.0, lt=1.0)
    seed: int = Field(ge=0)

    def train_fraction(self) -> float:
        """The expected share of molecules left for training."""
        kept = (1.0 - self.held_out_building_blocks) ** 3 if self.method != "random" else 1.0
        return kept * (1.0 - self.valid_fraction if self.method != "building_blocks" else 1.0)

    @model_validator(mode="after")
    def _enough_to_train(self) -> Split:
        if self.train_fraction() < 0.3:
            raise ValueError(
                errors.too_little_to_train(
                    self.held_out_building_blocks, self.valid_fraction, self.method, self.train_fraction()
                )
            )
        return self


class EarlyStopping(Section):
    """Boosting stops when the mean aucpr of an inner part of the training rows has not improved for ``rounds``
    rounds (0: no early stopping, no inner part). The inner part is drawn from the training rows by the split's
    rule with these fractions and ``train.seed``: molecules with a held-out block (unseen-like) and a random
    fraction of the others (share-like); it is never the part evaluate scores."""

    rounds: int = Field(ge=0, le=100_000)
    held_out_building_blocks: float = Field(default=0.05, gt=0.0, lt=0.5)
    valid_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)


class Train(Section):
    model: Literal["joint", "per_protein"] = "joint"
    negative_sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    negatives_per_positive: float | None = Field(default=None, gt=0.0, le=1_000_000.0)
    seed: int = Field(ge=0)
    batch_rows: int = Field(ge=1_000, le=50_000_000)
    data_mode: Literal["in_memory", "external"]
    distributed_workers: int = Field(default=0, ge=0, le=4096)
    early_stopping: EarlyStopping = EarlyStopping(rounds=0)
    final_fit: bool = True  # false: the submission comes from the split model (quick experiments)

    def negative_rate(self, positives: int, negatives: int) -> float:
        """The fraction of a protein's negatives kept: ``negative_sample_rate``, or ``negatives_per_positive`` x
        positives / negatives (at most 1; 1 for a protein without positives or negatives)."""
        k = self.negatives_per_positive
        if k is None:
            return self.negative_sample_rate
        return min(1.0, k * positives / negatives) if negatives and positives else 1.0

    @model_validator(mode="after")
    def _one_sampling(self) -> Train:
        if self.negatives_per_positive is not None and self.negative_sample_rate != 1.0:
            raise ValueError(errors.two_samplings(self.negative_sample_rate, self.negatives_per_positive))
        return self


class XGB(Section):
    """Keyword arguments of ``xgboost.XGBClassifier``; every key here is passed on unchanged."""

    n_estimators: int = Field(ge=1, le=100_000)
    max_depth: int = Field(ge=0, le=64)
    learning_rate: float = Field(gt=0.0, le=1.0)
    subsample: float = Field(default=1.0, gt=0.0, le=1.0)
    colsample_bytree: float = Field(default=1.0, gt=0.0, le=1.0)
    min_child_weight: float = Field(default=1.0, ge=0.0)
    gamma: float = Field(default=0.0, ge=0.0)
    reg_alpha: float = Field(default=0.0, ge=0.0)
    reg_lambda: float = Field(default=1.0, ge=0.0)
    max_bin: int = Field(default=256, ge=2, le=65_536)
    scale_pos_weight: float = Field(default=1.0, gt=0.0)
    tree_method: Literal["hist"] = "hist"
    device: Literal["cpu", "cuda"] = "cpu"
    eval_metric: Literal["aucpr", "auc", "logloss"] = "aucpr"
    random_state: int = Field(default=0, ge=0)

    @field_validator("tree_method", mode="before")
    @classmethod
    def _hist_only(cls, value: object) -> object:
        if value in ("approx", "exact", "auto"):
            raise ValueError(errors.not_hist(value))
        return value

    def classifier_kwargs(self, threads: int) -> dict[str, Any]:
        return {**self.model_dump(), "n_jobs": threads}


class Evaluate(Section):
    curve_points: int = Field(ge=10, le=100_000)
    top_features: int = Field(default=20, ge=1, le=10_000)
    bootstrap_samples: int = Field(default=1000, ge=0, le=100_000)  # 0: no intervals
    seed: int = Field(default=0, ge=0)
    min_positives: int = Field(default=10, ge=0)  # pairs with fewer positives are flagged in the summary
    # mixed molecules (1 or 2 unseen blocks; no leaderboard scores them) scored from a seeded sample of this many
    # (0: not scored); score, share and non_share do not depend on it
    mixed_sample: int = Field(default=200_000, ge=0, le=100_000_000)


class Resources(Section):
    """How to run, not what to compute: no stage lists these as params deps, so changing them reruns nothing."""

    engine: Literal["local", "dask"] = "local"
    workers: int = Field(ge=0, le=1024)
    threads: int = Field(default=0, ge=0, le=1024)
    batch_rows: int = Field(default=10_000, ge=1_000, le=50_000_000)
    # megabytes evaluate's bootstrap computes in at once (its samples are chunked to fit; the intervals do not
    # depend on it), and at most half of it for a batch's design matrix
    evaluate_memory_mb: int = Field(default=256, ge=64, le=1_048_576)
    feature_cache: str | None = Field(default=None, min_length=1)
    external_memory_dir: str | None = Field(default=None, min_length=1)
    # seconds a Dask run waits for the workers it lacks before failing (at the start, after losing one)
    worker_wait: float = Field(default=60.0, gt=0.0, le=86_400.0)
    # the memory train's in-memory fit may use at its peak, in GB (null: what the machine has available, within a
    # cgroup's limit); $BELKA_MEMORY_LIMIT_GB wins over it
    memory_limit_gb: float | None = Field(default=None, gt=0.0, le=1_000_000.0)


FEATURE_CACHE_VARIABLE = "BELKA_FEATURE_CACHE"


def _user_cache(name: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(base, "belka-dvc", name)


def _expanded(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


def external_memory_dir(params: Params) -> Path:
    """Where ``train.data_mode: external`` pages XGBoost's quantised matrix: ``resources.external_memory_dir``, else
    the user's cache directory (``~/.cache/belka-dvc/xgb-pages``): on disk, where ``$TMPDIR`` may be tmpfs (RAM)."""
    return _expanded(params.resources.external_memory_dir or _user_cache("xgb-pages"))


def feature_cache_dir(params: Params) -> Path:
    """Where molecules featurized before are looked up: ``$BELKA_FEATURE_CACHE`` when set (a CI runner's volume, a
    host's scratch disk: no edit of params.yaml), else ``resources.feature_cache``, else the user's cache directory
    (``$XDG_CACHE_HOME/belka-dvc/features``, by default ``~/.cache/belka-dvc/features``), which every clone of the
    project and every DVC experiment of this user reaches. ``~`` and ``$VARIABLES`` are expanded; a relative path
    is relative to the working directory (the repository root under ``dvc repro``). Not a stage param: where the
    cache lives changes no output."""
    configured = os.environ.get(FEATURE_CACHE_VARIABLE) or params.resources.feature_cache
    return _expanded(configured or _user_cache("features"))


class Params(Section):
    inputs: Inputs
    generate: Generate
    featurize: Featurize
    split: Split
    train: Train
    xgb: XGB
    evaluate: Evaluate
    resources: Resources

    @model_validator(mode="after")
    def _cross_section(self) -> Params:
        if self.train.distributed_workers and self.train.data_mode == "external":
            raise ValueError(errors.DISTRIBUTED_EXTERNAL)
        return self


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def workers(params: Params) -> int:
    """Featurize processes (``resources.workers``; 0 means every core)."""
    return params.resources.workers or available_cores()


def threads(params: Params) -> int:
    """XGBoost threads (``resources.threads``; 0 means every core)."""
    return params.resources.threads or available_cores()


def _describe_error(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = err["loc"][:-1]
        model: Any = Params
        for part in parent:
            field = model.model_fields.get(str(part))
            model = field.annotation if field else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                break
        allowed = ", ".join(model.model_fields) if isinstance(model, type) else "?"
        return f"{loc}: unknown key (allowed here: {allowed})"
    if kind == "missing":
        return f"{loc}: missing (required)"
    value = raw
    for part in err["loc"]:
        value = value.get(part) if isinstance(value, dict) else None
    message = err["msg"].removeprefix("Value error, ")
    where = f"{loc}: " if loc else ""
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    return f"{where}{message}{shown}"


def parse_params(raw: Any, source: str = str(PARAMS_FILE)) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(errors.params_not_a_mapping(source, raw))
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe_error(err, raw) for err in exc.errors()]
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | os.PathLike[str] = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(errors.params_not_found(path)) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(errors.params_not_yaml(path, exc)) from None
    return parse_params(raw, str(path))


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                lines = f"lines {seen[key] + 1} and {key_node.start_mark.line + 1}"
                raise _DuplicateKey(errors.duplicate_key(key, lines))
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)
