"""Atomic writes: every output is written under a temporary name and renamed when complete. Nothing here shapes an
output's bytes (what is written is decided by the caller: :mod:`stages.io` for the formats).

No stage lists this module as a dep in ``dvc.yaml`` (``tests/test_dvc_yaml.py`` names it as output-neutral).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from stages import errors
from stages.errors import InputError

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
STALE_FOREIGN_SECONDS = 24 * 3600


def _tmp_name(path: Path) -> Path:
    """``.name.tmp-HOST-PID-RANDOM``: unique per writer, so writers sharing a directory (two clones or DVC
    experiment workers sharing the feature cache) never write to, or clean up, each other's temporaries."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that made ``tmp`` may still be writing it. Only a dead writer's temporaries are
    stale: one of this host whose PID is gone, or one of another host (or unknown form) untouched for a day."""
    host, _, pid = tmp.name.rpartition(".tmp-")[2].rpartition("-")[0].rpartition("-")
    if host != _HOST or not pid.isdigit():
        try:
            return time.time() - tmp.lstat().st_mtime < STALE_FOREIGN_SECONDS
        except FileNotFoundError:
            return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_stale_tmp(path: Path) -> None:
    """Remove what a killed writer left beside ``path`` (``.name.tmp-HOST-PID-RANDOM``), never a live one's."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if _writer_alive(stale):
            continue
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def _make_parent(path: Path) -> None:
    """Create ``path``'s directory; a file where one of its directories should be is named in the error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir())
        raise InputError(errors.file_blocks_directory(blocker, path)) from None


def _fresh_tmp(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this writer, once its directory exists and what dead writers
    left there is removed."""
    _make_parent(path)
    remove_stale_tmp(path)
    return _tmp_name(path)


def scratch_dir(path: str | os.PathLike[str]) -> Path:
    """A new empty directory beside ``path``, named like an atomic write's temporary (unique to this writer);
    what dead writers left there is removed first. The caller removes it when done."""
    tmp = _fresh_tmp(Path(path))
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only when the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise InputError(errors.directory_blocks_file(path))
    tmp = _fresh_tmp(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces ``path`` only when the block succeeds.

    A killed run leaves only ``.name.tmp-HOST-PID-RANDOM`` behind, which DVC does not take for the output and the
    next run removes.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(errors.file_blocks_output_directory(path))
    tmp = scratch_dir(path)
    try:
        yield tmp
        # the previous output, for a moment: a killed writer's is removed like a temporary
        old = _tmp_name(path)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
