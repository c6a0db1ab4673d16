"""What featurize's set of molecules already seen (``stages.featurize.KeySet``) costs as it grows, against an
earlier commit's.

Adds ``--keys`` random 63-bit keys in batches of ``--batch`` as featurize does with each batch's unique molecules:
a look-up, then the keys not found are added (``--repeat`` of each batch's keys were added by an earlier batch,
like a molecule whose rows straddle a batch boundary). Both sets see the same keys and must agree on every
look-up. Prints a markdown table: seconds in look-ups and in adds, the slowest batch, and the peak memory the set
allocated (tracemalloc: numpy's buffers are traced).

    python bench/keyset.py --keys 20M --batch 100k --baseline 2ea1684
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import definitions_at, parse_size  # noqa: E402
from stages.dataset import find_sorted  # noqa: E402
from stages.featurize import KeySet  # noqa: E402


def keyset_at(ref: str) -> type:
    """The ``KeySet`` class of ``stages/featurize.py`` at commit ``ref`` (its source alone, with numpy and
    ``find_sorted`` and any module-level helper it calls)."""
    namespace = {"np": np, "find_sorted": find_sorted}
    return definitions_at(ref, "stages/featurize.py", {"KeySet", "merge_runs"}, namespace)["KeySet"]


def batches(keys: int, batch: int, repeat: float, seed: int) -> list[np.ndarray]:
    """Batches of distinct random keys; after the first, ``repeat`` of each batch are keys of earlier batches."""
    rng = np.random.default_rng(seed)
    drawn = np.unique(rng.integers(0, 2**63 - 1, size=keys + keys // 1000 + 10, dtype=np.int64))
    fresh = rng.permutation(drawn)[:keys]  # collisions among 2^63 values are rare: the margin covers them
    out, start = [], 0
    while start < keys:
        new = fresh[start : start + batch]
        old = min(int(len(new) * repeat), start)
        again = fresh[rng.integers(0, start, size=old)] if old else fresh[:0]
        out.append(np.unique(np.concatenate([new, again])))
        out[-1] = rng.permutation(out[-1])
        start += len(new)
    return out


def measure(cls: type, work: list[np.ndarray]) -> tuple[dict, list[np.ndarray]]:
    """Run the batches through a fresh set: (timings and peak memory, each batch's found mask)."""
    tracemalloc.start()
    keys, looked, added, slowest, found_masks = cls(), 0.0, 0.0, 0.0, []
    for batch in work:
        start = time.perf_counter()
        found, _ = keys.lookup(batch)
        middle = time.perf_counter()
        new = batch[~found]
        keys.add(new, new ^ 0x5DEECE66D)
        end = time.perf_counter()
        looked, added, slowest = looked + middle - start, added + end - middle, max(slowest, end - start)
        found_masks.append(found)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    stats = {"keys": len(keys), "lookup": looked, "add": added, "slowest": slowest, "peak_mb": peak / 1e6}
    return stats, found_masks


def table(rows: list[tuple[str, dict]]) -> str:
    lines = [
        "| KeySet | keys | look-ups s | adds s | total s | slowest batch s | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows:
        total = s["lookup"] + s["add"]
        lines.append(
            f"| {name} | {s['keys']:,} | {s['lookup']:.2f} | {s['add']:.2f} | {total:.2f} | {s['slowest']:.3f} "
            f"| {s['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=parse_size, default=20_000_000, help="distinct keys added in all")
    parser.add_argument("--batch", type=parse_size, default=100_000, help="new keys a batch")
    parser.add_argument(
        "--repeat", type=float, default=0.1, help="share of a batch's keys seen in earlier ones"
    )
    parser.add_argument("--baseline", help="a commit whose KeySet runs on the same keys (e.g. 2ea1684)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work = batches(args.keys, args.batch, args.repeat, args.seed)
    rows = []
    current, found = measure(KeySet, work)
    rows.append(("this commit", current))
    if args.baseline:
        baseline, found_before = measure(keyset_at(args.baseline), work)
        if any(not np.array_equal(a, b) for a, b in zip(found, found_before, strict=True)):
            raise SystemExit("the two sets disagree on a look-up")
        rows.append((args.baseline, baseline))
    print(
        f"{args.keys:,} keys in batches of {args.batch:,} new keys ({args.repeat:.0%} of each batch seen before)"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
