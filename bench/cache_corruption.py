"""What a damaged feature-cache part does to featurize: random one-byte flips, a truncation, another part's file.
A script that prints figures; it asserts nothing.

    python bench/cache_corruption.py                       # 6,500 generated training molecules, 400 flips
    python bench/cache_corruption.py --molecules 2000 --flips 50

It featurizes generated training data once (a sound feature cache), then:

- flips: ``--flips`` seeded one-byte flips (position and XOR mask at random) of one cache part's parquet file, each
  on a sound cache. For each: whether a plain parquet reader (polars) reads the damaged file without error and with
  the same or other values, and what the feature cache returns for the part's molecules: all of them with their
  right values, some with wrong values (used silently by featurize), none (the part reported and its molecules
  computed again), or an exception out of the cache (featurize stops);
- scenarios: featurize run on a damaged cache (the first flip that a reader reads with other values, the part cut
  to half its size, another part's file copied under its name), then once more: warnings logged, molecules computed
  in each run, and whether the output equals the sound run's byte for byte.

Only the stages' public functions are called (``featurize_file``, ``FeatureCache(directory, schema).lookup``), so the
same script measures an older checkout: ``PYTHONPATH=<old source> python bench/cache_corruption.py``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import random
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: an older source given there is the one measured

from stages import featurize, generate  # noqa: E402
from stages.dataset import KEY  # noqa: E402
from stages.io import write_parquet  # noqa: E402
from stages.molecules import CHECK, FeatureCache, molecule_schema  # noqa: E402
from stages.params import Params, parse_params  # noqa: E402


class Records(logging.Handler):
    """The warnings the stages log, kept."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Setup:
    params: Params
    source: Path
    sound_output: Path
    cache: Path  # the namespace directory of the feature spec
    part: Path  # the part that is damaged
    other: Path  # another part, whose file is copied under ``part``'s name


def make_params(molecules: int, batch_rows: int) -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["generate"]["train_molecules"] = molecules
    raw["featurize"]["batch_rows"] = batch_rows
    raw["resources"]["workers"] = 1
    return parse_params(copy.deepcopy(raw))


def set_up(workdir: Path, molecules: int, batch_rows: int) -> Setup:
    params = make_params(molecules, batch_rows)
    train_rows, _ = generate.generate(params.generate)
    source = workdir / "train.parquet"
    write_parquet(generate.to_kaggle_table(train_rows), source)
    cache_root = workdir / "cache"
    featurize.featurize_file(
        source, workdir / "sound", workdir / "sound-rejects.csv", params, True, cache_root
    )
    (cache,) = [p for p in cache_root.iterdir() if p.is_dir()]
    parts = sorted(cache.glob("part-*.parquet"))
    return Setup(params, source, workdir / "sound", cache, parts[len(parts) // 2], parts[0])


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def restore(cache: Path, snapshot: dict[str, bytes]) -> None:
    """The cache as it was when sound: every file back, nothing else."""
    for path in cache.iterdir():
        if path.is_file() and path.name not in snapshot:
            path.unlink()
    for name, data in snapshot.items():
        path = cache / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)


def reader_outcome(path: Path, sound: pl.DataFrame) -> str:
    try:
        frame = pl.read_parquet(path)
    except Exception:  # any error a reader raises is what is counted
        return "read error"
    except BaseException as exc:  # a Rust panic surfaces as a BaseException
        if isinstance(exc, KeyboardInterrupt):
            raise
        return "read error"
    return "reads, same values" if frame.equals(sound) else "reads, other values"


def cache_outcome(setup: Setup, sound: pl.DataFrame, records: Records) -> str:
    schema = molecule_schema(featurize.feature_config(setup.params))
    try:
        frame, found = FeatureCache(setup.cache, schema).lookup(sound.select(KEY, CHECK))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"exception ({type(exc).__name__}): featurize stops"
    reported = any(
        setup.part.name in r.getMessage() or setup.part.stem in r.getMessage() for r in records.records
    )
    used = int(found.sum())
    if used == 0:
        return "none used: " + ("reported" if reported else "not reported") + ", computed again"
    right = sound.select(frame.columns).filter(pl.col(KEY).is_in(frame[KEY].to_list()))
    if frame.sort(KEY).equals(right.sort(KEY)):
        return "all used, right values" if used == len(sound) else "some used, right values"
    return "used with wrong values (silently)" if not reported else "used with wrong values (reported)"


def flips(
    setup: Setup, count: int, seed: int, records: Records
) -> tuple[Counter, Counter, tuple[int, int] | None]:
    snapshot = {p.name: p.read_bytes() for p in setup.cache.iterdir() if p.is_file()}
    data = snapshot[setup.part.name]
    sound = pl.read_parquet(setup.part)
    rng = random.Random(seed)
    readers, caches, first_silent = Counter(), Counter(), None
    for _ in range(count):
        position, mask = rng.randrange(len(data)), rng.randrange(1, 256)
        restore(setup.cache, snapshot)
        damaged = bytearray(data)
        damaged[position] ^= mask
        setup.part.write_bytes(bytes(damaged))
        reader = reader_outcome(setup.part, sound)
        readers[reader] += 1
        records.records.clear()
        caches[cache_outcome(setup, sound, records)] += 1
        if reader == "reads, other values" and first_silent is None:
            first_silent = (position, mask)
    restore(setup.cache, snapshot)
    return readers, caches, first_silent


def scenario(setup: Setup, workdir: Path, name: str, damage: bytes, records: Records) -> dict:
    """Featurize on a cache whose part holds ``damage``, then again: what each run did."""
    cache = workdir / f"cache-{name}"
    shutil.copytree(setup.cache.parent, cache)
    (cache / setup.cache.name / setup.part.name).write_bytes(damage)
    row: dict = {"scenario": name}
    for run in ("damaged run", "next run"):
        records.records.clear()
        out = workdir / f"{name}-{run.replace(' ', '-')}"
        counts = featurize.featurize_file(
            setup.source, out, out.with_name(out.name + "-rejects.csv"), setup.params, True, cache
        )
        naming = [r for r in records.records if setup.part.stem in r.getMessage()]
        row[run] = (
            f"{counts['computed']} computed, {len(records.records)} warning(s) "
            f"({len(naming)} naming the part), output "
            + ("equal" if tree_digest(out) == tree_digest(setup.sound_output) else "DIFFERENT")
        )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/cache_corruption.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--molecules", type=int, default=6500, help="generated training molecules (3 rows each)"
    )
    parser.add_argument(
        "--batch-rows", type=int, default=4000, help="featurize.batch_rows: one part per batch"
    )
    parser.add_argument("--flips", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="kept when given (default: a temporary directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    records = Records()
    stages_log = logging.getLogger("stages")
    stages_log.addHandler(records)
    stages_log.setLevel(logging.WARNING)
    stages_log.propagate = False  # kept, not printed
    with tempfile.TemporaryDirectory(prefix="cache-corruption-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        setup = set_up(workdir, args.molecules, args.batch_rows)
        sound = pl.read_parquet(setup.part)
        parts = len(list(setup.cache.glob("part-*.parquet")))
        print(f"feature cache: {parts} parts; damaged part: {setup.part.name}, {len(sound)} molecules, "
              f"{setup.part.stat().st_size} bytes")  # fmt: skip
        readers, caches, first = flips(setup, args.flips, args.seed, records)
        print(f"\n{args.flips} one-byte flips (seed {args.seed})\n\n| parquet reader | flips |\n|---|---:|")
        for outcome, n in sorted(readers.items()):
            print(f"| {outcome} | {n} |")
        print("\n| feature cache lookup of the part's molecules | flips |\n|---|---:|")
        for outcome, n in sorted(caches.items()):
            print(f"| {outcome} | {n} |")
        data = setup.part.read_bytes()
        damages = {
            "truncated to half": data[: len(data) // 2],
            "another part's file": setup.other.read_bytes(),
        }
        if first is not None:
            flipped = bytearray(data)
            flipped[first[0]] ^= first[1]
            damages = {f"byte {first[0]} ^ {first[1]:#04x} (reads)": bytes(flipped), **damages}
        print("\n| damage | damaged run | next run |\n|---|---|---|")
        for name, damage in damages.items():
            row = scenario(setup, workdir, name.split(" ")[0], damage, records)
            print(f"| {name} | {row['damaged run']} | {row['next run']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
