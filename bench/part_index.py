"""What the index of feature parts (``stages.molecules.PartIndex``: the feature cache's, and every featurize
output's molecule store) costs to build and to hold, against an earlier commit's.

Builds the index of ``--keys`` random 63-bit keys in parts of ``--part`` keys (as featurize writes them: a part a
batch), then looks up ``--lookups`` keys, half of them held. Both indexes see the same keys and must agree on every
part and row. Prints a markdown table: seconds to build and to look up, the peak memory while building and what
the index holds after (tracemalloc: numpy's buffers are traced), in bytes a key.

    python bench/part_index.py --keys 10M --part 33k --baseline a66f543
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
from stages.molecules import PartIndex  # noqa: E402


def part_index_at(ref: str) -> type:
    namespace = {"np": np, "find_sorted": find_sorted}
    return definitions_at(ref, "stages/molecules.py", {"PartIndex"}, namespace)["PartIndex"]


def parts(keys: int, part: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, 2**63 - 1, size=keys, dtype=np.int64)
    return [drawn[start : start + part].copy() for start in range(0, keys, part)]


def measure(cls: type, keys: int, part: int, lookups: int, seed: int) -> tuple[dict, tuple]:
    """Build and query one index: (figures, the look-up's answer). Memory counts the parts handed to the index
    (8 bytes a key) from the start: what a caller holds while the index is built."""
    tracemalloc.start()
    work = parts(keys, part, seed)
    wanted = np.random.default_rng(seed + 1).permutation(
        np.concatenate(
            [np.concatenate(work)[: lookups // 2], np.arange(lookups - lookups // 2, dtype=np.int64)]
        )
    )
    tracemalloc.reset_peak()
    start = time.perf_counter()
    index = cls(work)
    built = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1] - wanted.nbytes
    work.clear()  # the caller lets go of the parts: the index alone is left
    held = tracemalloc.get_traced_memory()[0] - wanted.nbytes
    tracemalloc.stop()
    middle = time.perf_counter()
    found, owner, row = index.locate(wanted)
    looked = time.perf_counter() - middle
    answer = (found, np.where(found, owner, -1), np.where(found, row, -1))
    figures = {"build": built - start, "lookup": looked, "peak": peak / keys, "held": held / keys}
    return figures, answer


def table(rows: list[tuple[str, dict]], keys: int) -> str:
    lines = [
        "| PartIndex | keys | build s | look-up s | peak B a key while built, the parts included | B a key held |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {keys:,} | {s['build']:.2f} | {s['lookup']:.2f} | {s['peak']:.1f} | {s['held']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=parse_size, default=parse_size("10M"))
    parser.add_argument("--part", type=parse_size, default=parse_size("33k"), help="keys a part")
    parser.add_argument("--lookups", type=parse_size, default=parse_size("1M"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", help="a commit whose PartIndex runs on the same keys (e.g. a66f543)")
    args = parser.parse_args(argv)
    current, answer = measure(PartIndex, args.keys, args.part, args.lookups, args.seed)
    rows = [("this commit", current)]
    if args.baseline:
        baseline, before = measure(
            part_index_at(args.baseline), args.keys, args.part, args.lookups, args.seed
        )
        if any(not np.array_equal(a, b) for a, b in zip(answer, before, strict=True)):
            raise SystemExit(f"error: {args.baseline}'s index and this commit's disagree on a look-up")
        rows.append((args.baseline, baseline))
    print(f"{args.keys:,} keys in parts of {args.part:,}; {args.lookups:,} look-ups, half of them held")
    print(table(rows, args.keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
