"""Logging, progress and command-line error handling: nothing here shapes an output.

No stage lists this module as a dep in ``dvc.yaml`` (``tests/test_dvc_yaml.py`` names it as output-neutral), so
editing a log format, the progress display or an error message reruns no stage. Stage modules import it for their
``main()`` only.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

log = logging.getLogger("stages")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: one summary line per stage at INFO (the default), details with ``-v``."""
    level = logging.DEBUG if verbose else os.environ.get("BELKA_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(stream=sys.stderr, level=level, format="%(name)s: %(message)s", force=True)


def progress(what: str, total: int | None, unit: str = "rows", every: float = 5.0) -> tqdm:
    """A progress bar on stderr (done, rate, time left): shown when stderr is a terminal, or always with
    ``BELKA_PROGRESS=1`` (CI logs); ``BELKA_PROGRESS=0`` hides it."""
    forced = os.environ.get("BELKA_PROGRESS")
    enabled = forced == "1" if forced is not None else sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=what,
        unit=f" {unit}",
        unit_scale=True,
        mininterval=every if not sys.stderr.isatty() else 0.5,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
    )


def run_main(body: Callable[..., Any], *args: Any) -> int:
    """Run a stage body; turn the errors we expect into one clear line on stderr and exit code 1."""
    from stages.io import ArtifactError, InputError
    from stages.params import ParamsError

    try:
        body(*args)
    except (InputError, ParamsError, ArtifactError) as exc:
        log.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc} ({exc.filename or 'no file name'})", file=sys.stderr)
        return 1
    return 0
