"""The errors a stage refuses with, and the wording of the messages that are shared: nothing here shapes an output.

No stage lists this module as a dep in ``dvc.yaml`` (``tests/test_dvc_yaml.py`` names it as output-neutral), so
rewording a message here reruns no stage. :func:`stages.cli.run_main` turns these errors into one line on stderr.
"""

from __future__ import annotations

import os
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
