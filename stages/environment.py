"""The environment as a dependency: the versions of the packages that shape outputs, recorded in a file DVC reads.

``environment.yaml`` (at the project's root, beside ``dvc.yaml``) records the installed version of each package in
:data:`PACKAGES`. ``dvc.yaml`` lists its keys as params of exactly the stages each package can change, so a new
RDKit makes the stages that run RDKit stale, and nothing else. ``python -m stages.environment`` records the
installed versions (after ``uv lock --upgrade-package NAME`` and ``uv sync``); every stage refuses to start while
the installed versions differ from the recorded ones (:func:`check`), so no output is ever made by a version that
``dvc.lock`` does not name. ``tests/test_environment.py`` checks that the recorded versions are ``uv.lock``'s.

This module shapes no output: it refuses or records, and no stage lists it as a dep (``tests/test_dvc_yaml.py``).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "environment.yaml"
COMMAND = "python -m stages.environment"
# The packages whose version can change the bytes of some stage's outputs, by distribution name (uv.lock's); which
# stages each one shapes is in dvc.yaml (the keys of environment.yaml each stage lists as params).
PACKAGES = ("rdkit", "xgboost", "scikit-learn", "numpy", "polars", "pyarrow", "dvclive")
HEADER = f"""\
# The installed versions of the packages that shape outputs, written by `{COMMAND}`, never by
# hand. dvc.yaml lists each key as a param of the stages that package can change, so a new version makes exactly
# those stale. Every stage refuses to start while the installed versions differ; tests check these are uv.lock's.
"""


class EnvironmentMismatch(Exception):
    """An installed package's version is not the one environment.yaml records."""


def installed(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The installed version of each package (the distribution's metadata: cheap, nothing is imported)."""
    return {name: _version(name) for name in packages}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def read_record(path: Path | None = None) -> dict[str, str] | None:
    """The recorded versions (in ``path``, default :data:`RECORD`), or None when the project has none (an installed
    wheel, a bare copy)."""
    path = RECORD if path is None else path
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    return {str(k): str(v) for k, v in (data or {}).items()}


def render(versions: dict[str, str]) -> str:
    return HEADER + "".join(
        f"{name}: {yaml.safe_dump(version).splitlines()[0]}\n" for name, version in versions.items()
    )


def differences(have: dict[str, str], recorded: dict[str, str], label: str = "recorded") -> list[str]:
    """``name version (recorded: version)`` for each package whose installed version is not the recorded one."""
    return [
        f"{name} {have.get(name, 'none')} ({label}: {recorded.get(name, 'none')})"
        for name in sorted(set(have) | set(recorded))
        if have.get(name) != recorded.get(name)
    ]


def mismatch_message(what: str) -> str:
    """The one-line refusal for a version mismatch: the two commands that fix it, whichever side is right."""
    return (
        f"{what}: install the recorded versions (uv sync --frozen), or record the installed ones and rerun what they "
        f"change ({COMMAND}, then dvc repro)"
    )


def check(path: Path | None = None) -> None:
    """Refuse (:class:`EnvironmentMismatch`) when an installed version differs from the recorded one (in ``path``,
    default :data:`RECORD`)."""
    path = RECORD if path is None else path
    recorded = read_record(path)
    if recorded is None:
        return
    found = differences(installed(tuple(recorded)), recorded)
    if found:
        raise EnvironmentMismatch(
            mismatch_message(f"installed versions differ from {path.name}: {'; '.join(found)}")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=RECORD, help="the record to write (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    before = read_record(args.output) or {}
    versions = installed()
    args.output.write_text(render(versions))
    changed = differences(versions, before, label="was")
    print(
        f"recorded in {args.output}: "
        + ("; ".join(changed) + ": now run dvc repro" if changed else "no change"),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
