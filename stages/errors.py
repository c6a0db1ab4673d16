"""The errors a stage refuses with, and the wording of messages (params.yaml's checks, missing outputs, unwritable
paths) given by modules that many stages list: nothing here shapes an output.

No stage lists this module as a dep in ``dvc.yaml`` (``tests/test_dvc_yaml.py`` names it as output-neutral), so
rewording a message here reruns no stage. :func:`stages.cli.run_main` turns these errors into one line on stderr.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class InputError(ValueError):
    """An input file is missing, unreadable or not in the expected format; the message names file and column."""


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or does not match the schema."""


class ArtifactError(ValueError):
    """A model, encoder or scaler artifact is missing, of another schema version, or altered."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to many lines), or its type's name
    when it has none: what a one-line error quotes."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def missing_output(path: str | os.PathLike[str], what: str | None = None) -> str:
    """An earlier stage's output (``what``, when named) is not there."""
    return f"{path}: {what + ' ' if what else ''}not found (run the stage that writes it: dvc repro)"


def not_json(path: str | os.PathLike[str], what: str, exc: BaseException) -> str:
    return f"{path}: {what} is not valid JSON ({exc})"


def file_blocks_directory(blocker: Path, path: Path) -> str:
    return f"{blocker}: is a file, where a directory is needed to write {path}"


def directory_blocks_file(path: Path) -> str:
    return f"{path}: is a directory, where a file is to be written (choose a file name)"


def file_blocks_output_directory(path: Path) -> str:
    return f"{path}: is a file, where an output directory is to be written (remove it or choose another path)"


# ------------------------------------------------------------------------------------------- params.yaml's checks

SAME_INPUTS = "inputs.train and inputs.test must be different files"
NO_FEATURES = "featurize needs at least one descriptor or a fingerprint (fingerprint.type is none)"
DISTRIBUTED_EXTERNAL = (
    "train.distributed_workers > 0 keeps each rank's part in an in-memory QuantileDMatrix; "
    "it needs train.data_mode=in_memory"
)


def n_bits_not_bytes(n_bits: int) -> str:
    return f"featurize.fingerprint.n_bits must be a multiple of 8, got {n_bits}"


def unknown_descriptors(unknown: list[str], allowed: list[str]) -> str:
    return f"unknown RDKit descriptor(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"


def repeated_descriptors(names: Sequence[str]) -> str:
    return f"descriptors must not repeat, got {list(names)}"


def too_little_to_train(held_out: float, valid: float, method: str, train_fraction: float) -> str:
    return (
        f"split.held_out_building_blocks={held_out} and split.valid_fraction={valid} with method={method} leave "
        f"about {train_fraction:.0%} of the molecules to train on (at least 30% needed); lower one of them"
    )


def two_samplings(rate: float, per_positive: object) -> str:
    return (
        "train.negative_sample_rate and train.negatives_per_positive both sample negatives: set one "
        f"(negative_sample_rate={rate}, negatives_per_positive={per_positive}); negative_sample_rate: 1.0 keeps "
        "every negative"
    )


def not_hist(value: object) -> str:
    return (
        f"tree_method {value!r} cannot train on the streamed QuantileDMatrix train builds (XGBoost: "
        "'Only hist tree method can use QuantileDMatrix'); use hist"
    )


def params_not_a_mapping(source: str, raw: object) -> str:
    return f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}"


def params_not_found(path: Path) -> str:
    return f"{path}: not found (run from the repository root, or pass --params)"


def params_not_yaml(path: Path, exc: BaseException) -> str:
    return f"{path}: not valid YAML: {exc}"


def duplicate_key(key: object, lines: str) -> str:
    return f"key {key!r} appears twice ({lines}): YAML would keep the last silently"
