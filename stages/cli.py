"""Every stage's command line: its options, logging, params loading and one-line errors (:class:`Command`); and the
progress display. Nothing here shapes an output.

No stage lists this module as a dep in ``dvc.yaml`` (``tests/test_dvc_yaml.py`` names it as output-neutral), so
editing an option's help, a log format, the progress display or an error message reruns no stage. Stage modules
import it for their ``main()`` only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stages.params import Params, load_params

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

    from stages import environment
    from stages.errors import ArtifactError, InputError, ParamsError, first_line

    try:
        environment.check()  # no output from versions that environment.yaml (and so dvc.lock) does not name
        body(*args)
    except (InputError, ParamsError, ArtifactError, environment.EnvironmentMismatch) as exc:
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


# the help of options that several stages share
TRAIN_FEATURES = "featurize output of the train data"
MODELS = "the trained model's directory"
SPLIT_SUMMARY = (
    "the split's summary.json: the rows and positives by protein the memory estimate reads before any row "
    "(default: counted from the rows' labels)"
)

Work = Callable[[argparse.Namespace, Params], object]


class Command:
    """A stage's command line, the same for every stage: ``python -m stages.<name>`` with its own options, plus
    ``--params`` and ``-v``; then logging, params loaded and checked (:func:`stages.params.load_params`) and the
    work, whose expected errors become one line on stderr and exit code 1 (:func:`run_main`)."""

    def __init__(self, name: str, doc: str | None, epilog: str | None = None) -> None:
        self.parser = argparse.ArgumentParser(
            prog=f"python -m stages.{name}", description=(doc or "").split("\n\n")[0], epilog=epilog
        )
        self.parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        self.parser.add_argument(
            "-v", "--verbose", action="store_true", help="log details, tracebacks on errors"
        )

    def option(self, *flags: str, **kwargs: Any) -> Command:
        self.parser.add_argument(*flags, **kwargs)
        return self

    def paths(self, **helps: str) -> Command:
        """Required path options, one a keyword: ``split_model="..."`` is ``--split-model PATH`` with that help."""
        for name, help in helps.items():
            self.parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True, help=help)
        return self

    def fit(self, rows: str, models: str) -> Command:
        """The options of a fit (train, final): the rows, the train data's features, where the model goes, and
        the split's summary for the memory estimate."""
        self.paths(rows=rows, features=TRAIN_FEATURES, models=models)
        return self.option("--split-summary", type=Path, help=SPLIT_SUMMARY)

    def main(
        self,
        argv: list[str] | None,
        work: Work,
        check: Callable[[argparse.Namespace], str | None] | None = None,
    ) -> int:
        """Parse ``argv``; ``check`` returns what is wrong with a combination of options (a usage error), or None;
        then :meth:`run`."""
        args = self.parser.parse_args(argv)
        problem = check(args) if check else None
        if problem:
            self.parser.error(problem)
        return self.run(args, work)

    def run(self, args: argparse.Namespace, work: Work) -> int:
        """Log to stderr, load the params and do the work, with one-line errors."""
        setup_logging(args.verbose)
        return run_main(lambda: work(args, load_params(args.params)))
