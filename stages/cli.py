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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: one summary line per stage at INFO (the default), details with ``-v``. ``BELKA_LOG_LEVEL``
    sets another level; a value that is not one is said in a warning, and INFO is used."""
    configured = os.environ.get("BELKA_LOG_LEVEL", "INFO")
    known = configured.upper() in LOG_LEVELS
    level = "DEBUG" if verbose else configured.upper() if known else "INFO"
    logging.basicConfig(stream=sys.stderr, level=level, format="%(name)s: %(message)s", force=True)
    if not known:
        log.warning("BELKA_LOG_LEVEL=%r is not one of %s: using INFO", configured, ", ".join(LOG_LEVELS))


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
    """Run a stage body; turn the errors we expect into one clear line on stderr and exit code 1. A file that
    polars or pyarrow cannot read where no check named it (a damaged output of an earlier stage, say) still gets
    one line; ``-v`` logs the traceback, which says where."""
    import polars as pl
    import pyarrow as pa

    from stages.errors import ArtifactError, InputError, first_line
    from stages.params import ParamsError

    try:
        body(*args)
    except (InputError, ParamsError, ArtifactError) as exc:
        log.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        log.debug("failed", exc_info=True)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except (pl.exceptions.PolarsError, pa.ArrowException) as exc:
        log.debug("failed", exc_info=True)
        print(
            f"error: a data file could not be read: {type(exc).__name__}: {first_line(exc)} (-v shows where)",
            file=sys.stderr,
        )
        return 1
    return 0
