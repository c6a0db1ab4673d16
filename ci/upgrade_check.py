"""The dependency-upgrade check of CI (`upgrade_check`): the whole pipeline, twice, on the same reduced data.

A dependency upgrade calls for a complete rerun, but on reduced data: whatever ``inputs`` in params.yaml point at
(full BELKA is hours of work), the check runs on

- ``generated``: the generate stage's own data set, as params.yaml's ``generate`` section makes it (the default);
- ``sample``: a fixed, seeded sample of the real inputs, by molecule: a molecule is in when a keyed hash
  (blake2b, seeded) of its SMILES falls under ``fraction``, so all of its rows are in or none, and the choice
  depends on nothing else (not the row order, the file layout, the batch size or any library's version: the
  sample under the old environment is the sample under the new one). Where ``inputs`` already point at the
  generated data, that data is used as it is.

Steps, as the CI job calls them:

    python ci/upgrade_check.py inputs --data sample --fraction 0.0003 --seed 0   # writes upgrade-check/inputs.json
    python ci/upgrade_check.py run before     # dvc repro --force on those inputs, an empty feature cache
    ...                                       # (uv sync to the new lock)
    python ci/upgrade_check.py run after
    python ci/upgrade_check.py compare before after --versions upgrade-check/upgrades.diff

``run`` puts the reduced inputs into params.yaml for the length of ``dvc repro --force`` and restores the file
afterwards; each run featurizes every molecule again (an empty feature cache: a new RDKit or numpy may change
features), and keeps its metrics and dvc.lock in upgrade-check/<name>/. ``compare`` prints a markdown summary:
the metrics of both runs and which outputs changed bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from stages.errors import InputError  # noqa: E402
from stages.io import SMILES, write_parquet  # noqa: E402
from stages.raw_input import iter_raw_batches  # noqa: E402

WORK = Path("upgrade-check")
SIDES = ("train", "test")
SAMPLE_BATCH_ROWS = 1_000_000
HASH_RANGE = 1 << 64


class CheckError(Exception):
    """A failure worth one clear line."""


@dataclass
class ReducedInputs:
    """The inputs the check runs on, and what they are (for the summary)."""

    train: str
    test: str
    description: str


@dataclass
class SampleCounts:
    rows_read: int
    rows_kept: int
    molecules_kept: int


@dataclass
class RunResult:
    """What one run left: its figures (metrics/evaluate.json) and its outputs' hashes (dvc.lock)."""

    metrics: dict[str, float]
    outputs: dict[str, str]


# ---------------------------------------------------------------------------------------------- the sample


def molecule_chosen(smiles: str, fraction: float, seed: int) -> bool:
    """Whether a molecule is in the sample: a keyed blake2b hash of its SMILES, under ``fraction`` of its range."""
    digest = hashlib.blake2b(smiles.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") < fraction * HASH_RANGE


def sample_molecules(rows: pl.DataFrame, fraction: float, seed: int) -> pl.DataFrame:
    """The rows of ``rows`` whose molecule is chosen, in their order (each distinct SMILES hashed once)."""
    molecules = rows[SMILES].unique(maintain_order=True)
    chosen = [molecule_chosen(smiles, fraction, seed) for smiles in molecules.to_list()]
    return rows.filter(pl.col(SMILES).is_in(molecules.filter(pl.Series(chosen, dtype=pl.Boolean)).implode()))


def sample_input(source: Path, target: Path, fraction: float, seed: int, labelled: bool) -> SampleCounts:
    """Stream a raw BELKA input (parquet file, directory of parquet files, or CSV) and write the chosen molecules'
    rows to ``target`` as one parquet file (atomically)."""
    kept: list[pl.DataFrame] = []
    rows_read = 0
    for batch in iter_raw_batches(source, SAMPLE_BATCH_ROWS, labelled):
        rows_read += len(batch)
        kept.append(sample_molecules(batch, fraction, seed))
    sample = pl.concat(kept)
    if len(sample) == 0:
        raise CheckError(
            f"{source}: the sample is empty ({rows_read} rows, fraction {fraction}, seed {seed}): "
            "raise UPGRADE_SAMPLE_FRACTION"
        )
    write_parquet(sample, target)
    return SampleCounts(rows_read, len(sample), sample[SMILES].n_unique())


# ---------------------------------------------------------------------------------------------- the inputs


def generated_inputs(dvc_yaml: Path) -> dict[str, str]:
    """The generate stage's outputs by side (the file named train.* and test.*), from dvc.yaml."""
    outs = yaml.safe_load(dvc_yaml.read_text())["stages"]["generate"]["outs"]
    paths = [next(iter(out)) if isinstance(out, dict) else out for out in outs]
    by_side = {side: [p for p in paths if Path(p).stem == side] for side in SIDES}
    if any(len(found) != 1 for found in by_side.values()):
        raise CheckError(f"{dvc_yaml}: the generate stage's outs {paths} have no single train.* and test.*")
    return {side: found[0] for side, found in by_side.items()}


def reduced_inputs(
    params: dict, generated: dict[str, str], data: str, fraction: float, seed: int, sample_dir: Path
) -> ReducedInputs:
    """Decide the reduced inputs, writing the sample when there is one."""
    if data == "generated" or params["inputs"] == generated:
        why = "" if data == "generated" else " (inputs already point at it)"
        return ReducedInputs(generated["train"], generated["test"], f"the generated data set{why}")
    if data != "sample":
        raise CheckError(f"UPGRADE_CHECK_DATA: expected 'generated' or 'sample', got {data!r}")
    if not 0 < fraction <= 1:
        raise CheckError(f"UPGRADE_SAMPLE_FRACTION: expected a fraction in (0, 1], got {fraction}")
    paths, parts = {}, []
    for side in SIDES:
        source = Path(params["inputs"][side])
        if not source.exists():
            pull = subprocess.run(["dvc", "pull", str(source)], check=False)
            if pull.returncode != 0:
                raise CheckError(f"inputs.{side}: {source} is not here and `dvc pull {source}` failed")
        target = sample_dir / f"{side}.parquet"
        counts = sample_input(source, target, fraction, seed, labelled=side == "train")
        paths[side] = str(target)
        parts.append(
            f"{side}: {counts.rows_kept:,} of {counts.rows_read:,} rows of `{source}` "
            f"({counts.molecules_kept:,} molecules)"
        )
    description = f"a sample of the real inputs by molecule (fraction {fraction}, seed {seed}): " + "; ".join(
        parts
    )
    return ReducedInputs(paths["train"], paths["test"], description)


# ---------------------------------------------------------------------------------------------- runs


def run_pipeline(name: str, inputs: ReducedInputs, work: Path) -> None:
    """``dvc repro --force`` on the reduced inputs with an empty feature cache; params.yaml is put back after."""
    params_file = Path("params.yaml")
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["inputs"] = {"train": inputs.train, "test": inputs.test}
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        with tempfile.TemporaryDirectory(prefix="belka-upgrade-features-") as cache:
            env = {**os.environ, "BELKA_FEATURE_CACHE": cache}
            print(f"upgrade check, run '{name}': dvc repro --force on {inputs.description}", flush=True)
            if subprocess.run(["dvc", "repro", "--force"], env=env, check=False).returncode != 0:
                raise CheckError(f"run '{name}': dvc repro --force failed (its log is above)")
    finally:
        params_file.write_text(original)
    kept = work / name
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copyfile("metrics/evaluate.json", kept / "evaluate.json")
    shutil.copyfile("dvc.lock", kept / "dvc.lock")


def read_run(directory: Path) -> RunResult:
    try:
        metrics = json.loads((directory / "evaluate.json").read_text())
        lock = yaml.safe_load((directory / "dvc.lock").read_text())
    except FileNotFoundError as error:
        raise CheckError(f"{error.filename}: not found (run `ci/upgrade_check.py run` first)") from None
    outputs = {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if "md5" in out
    }
    return RunResult(metrics, outputs)


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def summary(before: RunResult, after: RunResult, description: str, versions: str) -> str:
    """The check's result in markdown: both runs' metrics, the outputs whose bytes changed, the versions."""
    lines = [
        "### Dependency upgrade check",
        "",
        f"The whole pipeline (`dvc repro --force`, every molecule featurized again) twice on {description}: "
        "with the default branch's `uv.lock` (before), then with this one (after).",
        "",
        "| metric | before | after | change |",
        "|---|---:|---:|---:|",
    ]
    for name in sorted(before.metrics.keys() | after.metrics.keys()):
        old, new = before.metrics.get(name), after.metrics.get(name)
        change = number(new - old) if old is not None and new is not None else "–"
        lines.append(f"| {name} | {number(old)} | {number(new)} | {change} |")
    changed = sorted(
        p
        for p in before.outputs.keys() | after.outputs.keys()
        if before.outputs.get(p) != after.outputs.get(p)
    )
    lines.append("")
    lines.append(
        "Outputs that changed bytes: " + ", ".join(f"`{p}`" for p in changed)
        if changed
        else "Every output is byte-identical (dvc.lock's hashes)."
    )
    changes = [line for line in versions.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    lines.append("")
    lines.append("Locked versions that changed:" if changes else "No locked version changed.")
    if changes:
        lines += ["", "```diff", *changes, "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    choose = commands.add_parser("inputs", help="decide the reduced inputs (and write the sample)")
    choose.add_argument("--data", default="generated", help="generated (default) or sample")
    choose.add_argument(
        "--fraction", type=float, default=0.0003, help="sample: the fraction of molecules kept"
    )
    choose.add_argument("--seed", type=int, default=0, help="sample: the hash key")
    run = commands.add_parser(
        "run", help="dvc repro --force on the reduced inputs; keep metrics and dvc.lock"
    )
    run.add_argument("name")
    compare = commands.add_parser("compare", help="print the markdown summary of two runs")
    compare.add_argument("before")
    compare.add_argument("after")
    compare.add_argument("--versions", type=Path, help="`diff -u` of the two locks' `uv export`")
    args = parser.parse_args(argv)

    inputs_file = WORK / "inputs.json"
    try:
        if args.command == "inputs":
            params = yaml.safe_load(Path("params.yaml").read_text())
            chosen = reduced_inputs(
                params, generated_inputs(Path("dvc.yaml")), args.data, args.fraction, args.seed, WORK / "data"
            )
            WORK.mkdir(parents=True, exist_ok=True)
            inputs_file.write_text(json.dumps(asdict(chosen), indent=2) + "\n")
            print(f"upgrade check on {chosen.description}")
        elif args.command == "run":
            if not inputs_file.exists():
                raise CheckError(f"{inputs_file}: not found (run `ci/upgrade_check.py inputs` first)")
            run_pipeline(args.name, ReducedInputs(**json.loads(inputs_file.read_text())), WORK)
        else:
            description = json.loads(inputs_file.read_text())["description"] if inputs_file.exists() else "?"
            versions = args.versions.read_text() if args.versions and args.versions.exists() else ""
            print(
                summary(read_run(WORK / args.before), read_run(WORK / args.after), description, versions),
                end="",
            )
    except (CheckError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
