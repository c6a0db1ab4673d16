"""Featurize against its two RDKit ceilings, RDKit's default parse and the fast parse. Prints figures; asserts nothing.

    python bench/parse_speed.py --sizes 300k,1M --workers 2 --baseline b3f593b --results /tmp/parse-speed.md

For inputs of ``--sizes`` rows (``bench/belka_gen.py``: BELKA's format, 3 adjacent rows a molecule), in one run:

- the two single-core ceilings on ``--ceiling-molecules`` unique cleaned molecules of the smallest input:
  ``chem.featurize_smiles`` in a plain loop with the default parse (``fast=False``, ``Chem.MolFromSmiles``: the
  old ceiling) and with the fast parse, alternating chunk by chunk so that load from other jobs hits both alike;
- where a molecule's time goes, on one core: parse (default and fast), descriptors, fingerprint;
- featurize's own work (not RDKit) for one batch of ``featurize.batch_rows`` rows, in this process: reading,
  cleaning and hashing, de-duplication, building the feature table, writing the shards and the cache part;
- ``python -m stages.featurize`` on ``--workers`` processes with a fresh feature cache: seconds, rows/s, CPU seconds
  and peak RSS of the process tree, and the ratio to each all-core ceiling (single-core rate x workers);
- with ``--baseline REF``: the same stage from that commit (``git archive`` into the work directory), alternated
  with the current one (``--repeats`` times each), so that times and peak RSS compare in the same conditions;
- the projection to full BELKA on 2, 16 and 32 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.baselines import alternating, ceilings, unique_cleaned  # noqa: E402
from bench.common import (  # noqa: E402
    BELKA_MOLECULES,
    BELKA_ROWS,
    fastest,
    human,
    markdown_table,
    parse_size,
    publish,
    run_measured,
    timed,
)
from bench.report import FEATURIZE_COLUMNS, all_core_rows, featurize_cells  # noqa: E402

CURRENT = "current"


@dataclass
class SizeRuns:
    """The featurize runs on one input: the fastest run of each code (current, baseline)."""

    rows: int
    molecules: int
    runs: dict[str, dict]


# ---------------------------------------------------------------------------------------------- in this process


def molecule_costs(cleaned: list[str], config) -> dict[str, float]:
    """Seconds a molecule on one core: each parse (alternating chunk by chunk, each molecule dropped at once as in
    featurize), then descriptors and fingerprint of the parsed molecules."""
    import numpy as np

    from stages import chem

    stereo = config.fingerprint.reads_stereo
    parses = alternating(
        {
            "default_parse": lambda part: [chem.default_parse(s) and None for s in part],
            "fast_parse": lambda part: [chem.parse(s, stereo) and None for s in part],
        },
        cleaned,
    )
    mols = [mol for mol, _ in map(chem.default_parse, cleaned) if mol is not None]
    functions = [chem.descriptor_functions()[name] for name in config.descriptors]
    generator = chem.fingerprint_generator(config.fingerprint)
    work = {"descriptors": lambda part: [[f(m) for f in functions] for m in part]}
    if generator is not None:
        work["fingerprint"] = lambda part: [np.packbits(generator.GetFingerprintAsNumPy(m)) for m in part]
    features = alternating(work, mols)
    costs = {name: t["seconds"] / len(cleaned) for name, t in parses.items()}
    costs.update({name: t["seconds"] / max(len(mols), 1) for name, t in features.items()})
    costs.setdefault("fingerprint", 0.0)
    return costs


def client_costs(source: Path, params_file: Path) -> dict[str, float]:
    """CPU seconds of featurize's own steps (not RDKit) for the first batch of the file, in this process."""
    import numpy as np

    from stages import chem
    from stages.featurize import KeySet, clean_batch, feature_config, new_molecules, row_frame
    from stages.io import write_parquet
    from stages.molecules import feature_frame
    from stages.params import load_params
    from stages.raw_input import iter_raw_batches

    params = load_params(params_file)
    config = feature_config(params)
    costs: dict[str, float] = {}

    def step(name: str, work):
        result, _, cpu = timed(work)
        costs[name] = cpu
        return result

    batch = step("read", lambda: next(iter(iter_raw_batches(source, params.featurize.batch_rows, True))))
    valid, _ = step("clean and hash", lambda: clean_batch(batch, config.max_smiles_length))
    unique = step("new molecules", lambda: new_molecules(valid, KeySet()))
    n = len(unique)
    features = chem.FeatureBatch(np.zeros((n, len(config.descriptors))), np.zeros((n, config.fp_bytes), np.uint8),
                                 [None] * n)  # fmt: skip
    frame = step(
        "feature table", lambda: feature_frame(unique.select("molecule_key", "check"), features, config)
    )
    with tempfile.TemporaryDirectory() as tmp:
        step("write rows", lambda: write_parquet(row_frame(valid), Path(tmp) / "rows.parquet"))
        step("write molecules", lambda: write_parquet(frame.drop("reason", "check"), Path(tmp) / "m.parquet"))
        step("write cache part", lambda: write_parquet(frame, Path(tmp) / "cache.parquet"))
    costs["rows"], costs["molecules"] = len(batch), n
    return costs


# ---------------------------------------------------------------------------------------------- stage runs


def baseline_tree(ref: str, work: Path) -> Path:
    """The stages of commit ``ref``, extracted (not checked out: the repository is left as it is)."""
    tree = work / f"baseline-{ref}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "stages"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def featurize_once(root: Path, source: Path, params_file: Path, work: Path, tag: str) -> dict:
    out, cache = work / f"features-{tag}", work / f"cache-{tag}"
    command = [sys.executable, "-m", "stages.featurize", "--input", str(source), "--output", str(out),
               "--params", str(params_file), "--cache", str(cache)]  # fmt: skip
    result = run_measured(command, work / f"featurize-{tag}.log", root)
    shutil.rmtree(out)
    shutil.rmtree(cache)
    return result


def write_params(path: Path, workers: int) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["resources"]["workers"] = workers
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------- the report


def report(args, measured: dict) -> str:
    cores, rows_per_molecule = args.workers, 3
    ceiling = measured["ceilings"]
    per_s = all_core_rows(ceiling, rows_per_molecule, cores)
    costs, client = measured["molecule_costs"], measured["client"]
    us = {name: 1e6 / c["molecules_per_s"] for name, c in ceiling.items()}
    lines = [
        "## Featurize against the default-parse and fast-parse ceilings",
        "",
        f"`python bench/parse_speed.py {' '.join(args.argv)}` on {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average {measured['load_start']:.2f} at the start. Inputs from "
        "`bench/belka_gen.py`; params.yaml's featurize settings (descriptors "
        f"{', '.join(measured['descriptors'])}; {measured['fingerprint']}), resources.workers={cores}.",
        "",
        f"Ceilings: `chem.featurize_smiles` on one core, {ceiling['fast']['molecules']:,} unique molecules, the "
        "two parses alternating chunk by chunk. All-core rows/s = molecules/s x "
        f"{cores} cores x {rows_per_molecule} rows a molecule.",
        "",
    ]
    lines += markdown_table(
        ["parse", "us a molecule", "molecules/s", "molecules per CPU s", f"all-core rows/s ({cores} cores)"],
        [[name, f"{us[name]:.0f}", f"{c['molecules_per_s']:,.0f}", f"{c['molecules_per_cpu_s']:,.0f}",
          f"{per_s[name]:,.0f}"] for name, c in ceiling.items()],
    )  # fmt: skip
    lines += [
        "",
        f"The fast parse makes the RDKit work {us['default'] / us['fast']:.2f}x cheaper. Where a molecule's time "
        "goes, one core (us):",
        "",
    ]
    lines += markdown_table(
        ["", "default parse", "fast parse"],
        [["parse", f"{costs['default_parse'] * 1e6:.0f}", f"{costs['fast_parse'] * 1e6:.0f}"],
         ["descriptors", f"{costs['descriptors'] * 1e6:.0f}", f"{costs['descriptors'] * 1e6:.0f}"],
         ["fingerprint", f"{costs['fingerprint'] * 1e6:.0f}", f"{costs['fingerprint'] * 1e6:.0f}"]],
    )  # fmt: skip
    steps = [k for k in client if k not in ("rows", "molecules")]
    total = sum(client[k] for k in steps)
    rdkit = client["molecules"] * us["fast"] / 1e6
    lines += [
        "",
        f"featurize's own work for one batch of {client['rows']:,} rows ({client['molecules']:,} new molecules), "
        f"CPU ms in one process: {total * 1e3:.0f} ms in all, {total / rdkit:.1%} of the batch's RDKit work "
        f"({rdkit:.1f} s at the fast ceiling).",
        "",
    ]
    lines += markdown_table(steps, [[f"{client[k] * 1e3:.0f}" for k in steps]])
    lines += [
        "",
        f"`python -m stages.featurize`, {cores} workers, fresh feature cache; fastest of {args.repeats} run(s) "
        "each, alternated; peak RSS: the highest of the runs, summed over the process tree every 0.2 s; `load`: the "
        "machine's mean 1-minute load average during the run.",
        "",
    ]
    fast_cpu_rows = ceiling["fast"]["molecules_per_cpu_s"] * rows_per_molecule
    rows = [
        [
            f"{size.rows:,}",
            f"{size.molecules:,}",
            code,
            *featurize_cells(size.rows, run, per_s, fast_cpu_rows),
        ]
        for size in measured["featurize"]
        for code, run in size.runs.items()
    ]
    lines += markdown_table(["rows", "molecules", "code", *FEATURIZE_COLUMNS], rows)
    largest = max(measured["featurize"], key=lambda size: size.rows)
    per_core = largest.rows / largest.runs[CURRENT]["seconds"] / cores
    default_core = per_s["default"] / cores

    def hours(rate: float, n: int) -> str:
        return f"{BELKA_ROWS / rate / n / 3600:.1f} h"

    lines += [
        "",
        f"Projection to full BELKA ({BELKA_ROWS:,} rows, {BELKA_MOLECULES:,} molecules), from the "
        f"{human(largest.rows)}-row run ({per_core:,.0f} rows/s a core), linear in cores (more than {cores} "
        f"were not measured): featurize {hours(per_core, 2)} on 2 cores, {hours(per_core, 16)} on 16, "
        f"{hours(per_core, 32)} on 32; the default-parse ceiling itself: {hours(default_core, 2)}, "
        f"{hours(default_core, 16)}, {hours(default_core, 32)}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="300k,1M", help="input sizes in rows")
    parser.add_argument("--workers", type=int, default=2, help="resources.workers for the featurize runs")
    parser.add_argument("--ceiling-molecules", type=parse_size, default=20_000)
    parser.add_argument("--baseline", help="a commit whose featurize runs alternated with the current one")
    parser.add_argument("--repeats", type=int, default=1, help="featurize runs of each code and size")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--results", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    args.argv = argv
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))

    from bench.belka_gen import write_belka
    from stages.featurize import feature_config
    from stages.params import load_params

    with tempfile.TemporaryDirectory(prefix="parse-speed-", dir=args.workdir) as tmp:
        work = Path(tmp)
        params_file = write_params(work / "params.yaml", args.workers)
        config = feature_config(load_params(params_file))
        trees = {CURRENT: ROOT} | (
            {args.baseline: baseline_tree(args.baseline, work)} if args.baseline else {}
        )
        measured: dict = {"load_start": os.getloadavg()[0], "descriptors": list(config.descriptors),
                          "fingerprint": config.fingerprint.spec(), "featurize": []}  # fmt: skip
        for number, size in enumerate(sizes):
            source = work / f"input-{human(size)}.parquet"
            counts = write_belka(source, size)
            if number == 0:
                cleaned = unique_cleaned(str(source), args.ceiling_molecules, config.max_smiles_length)
                measured["ceilings"] = ceilings(cleaned, config)
                print(f"ceilings: {measured['ceilings']}", flush=True)
                measured["molecule_costs"] = molecule_costs(cleaned[:5000], config)
                measured["client"] = client_costs(source, params_file)
            runs: dict[str, list[dict]] = {code: [] for code in trees}
            for repeat in range(args.repeats):
                for code, tree in trees.items() if repeat % 2 == 0 else reversed(trees.items()):
                    runs[code].append(
                        featurize_once(tree, source, params_file, work, f"{human(size)}-{repeat}")
                    )
                    print(f"[{human(size)}] {code}: {runs[code][-1]['seconds']:.1f} s", flush=True)
            best = {code: fastest(r) for code, r in runs.items()}
            measured["featurize"].append(SizeRuns(counts["rows"], counts["molecules"], best))
            source.unlink()
    text = report(args, measured)
    publish(text, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
