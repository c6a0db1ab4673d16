"""What the checks of a raw input cost: the pass before any work, and the label check after the rows are written.

For a BELKA-format file of ``--rows`` rows (``bench/belka_gen.py``: 3 rows a molecule, ids increasing), as a parquet
file, the same rows as a CSV and as a parquet file with shuffled ids (the sort path of the duplicate-id check), it
prints a markdown table of:

- ``check``: :func:`stages.io.check_raw_input`, the pass before any work (schemas, nulls, ids, protein names,
  labels), and the peak memory it added (tracemalloc of numpy's and Python's allocations; polars' and pyarrow's
  own buffers are not counted),
- ``read``: streaming the whole input in ``featurize.batch_rows`` batches once checked (what featurize reads
  anyway), and the check as a fraction of it,
- ``labelled pairs``: the passes over the raw rows (cleaned SMILES, protein, label) before any RDKit work that
  ``featurize.conflicting_labels`` needs: the positive pairs (:func:`stages.featurize.label_counts`, every policy),
  then the pairs labelled both ways (:func:`stages.featurize.label_conflicts`, error and drop only).

Featurize itself takes about 100 s a million rows on 2 cores (bench/RESULTS.md), the yardstick for all three.

    python bench/raw_checks.py --rows 1M
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from bench.belka_gen import write_belka  # noqa: E402
from bench.common import parse_size  # noqa: E402
from stages.featurize import label_conflicts, label_counts  # noqa: E402
from stages.io import BINDS, ID, PROTEIN, SMILES  # noqa: E402
from stages.raw_input import (  # noqa: E402
    CHECK_BATCH_ROWS,
    RawInput,
    check_raw_input,
    iter_raw_batches,
    read_batches,
)


def timed(work: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best wall seconds of ``repeats`` runs, peak MB traced in the last)."""
    best = float("inf")
    for _ in range(repeats):
        tracemalloc.start()
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return best, peak / 1e6


def read_all(source: Path, batch_rows: int) -> None:
    for _ in iter_raw_batches(source, batch_rows, needs_binds=True):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_size, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=100_000, help="featurize.batch_rows")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement (the best is shown)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="belka-raw-checks-") as tmp:
        work = Path(tmp)
        parquet, csv, shuffled = work / "train.parquet", work / "train.csv", work / "shuffled.parquet"
        counts = write_belka(parquet, args.rows)
        frame = pl.read_parquet(parquet)
        frame.write_csv(csv)
        order = np.random.default_rng(0).permutation(len(frame))
        frame[order].write_parquet(shuffled, row_group_size=300_000)
        del frame
        print(f"{counts['rows']:,} rows, {counts['molecules']:,} molecules; best of {args.repeats} runs\n")
        print(
            "| input | size | check | check peak (traced) | read | check / read | check / featurize (100 s/M) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, source in [
            ("parquet, ids increasing", parquet),
            ("parquet, ids shuffled", shuffled),
            ("csv", csv),
        ]:
            check, peak = timed(lambda s=source: check_raw_input(RawInput(s), needs_binds=True), args.repeats)
            read, _ = timed(lambda s=source: read_all(s, args.batch_rows), args.repeats)
            read -= check  # iter_raw_batches runs the check first
            featurize = 100.0 * counts["rows"] / 1e6
            print(
                f"| {name} | {source.stat().st_size / 1e6:.0f} MB | {check:.2f} s | {peak:.0f} MB | {read:.2f} s "
                f"| {check / read:.2f} | {check / featurize:.3f} |"
            )
        raw = RawInput(parquet)

        def batches() -> Iterator[pl.DataFrame]:
            return read_batches(raw, [ID, SMILES, PROTEIN, BINDS], CHECK_BATCH_ROWS)

        positives, peak = timed(lambda: label_counts(batches, 400, 1), args.repeats)
        print(
            f"\nlabelled pairs, positive (conflicting_labels any: one pass): {positives:.2f} s, {peak:.0f} MB traced"
        )
        found = label_counts(batches, 400, 1)
        conflicts, peak = timed(lambda: label_conflicts(batches, found, 400), args.repeats)
        print(
            f"labelled pairs, both ways (error and drop: a second pass): {conflicts:.2f} s, {peak:.0f} MB traced"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
