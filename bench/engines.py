"""Featurize throughput by engine and worker count, against the RDKit ceiling.

For a BELKA-format file of ``--rows`` rows (``bench/belka_gen.py``: 3 rows a molecule, all molecules distinct), it
measures:

- the ceiling: one core running ``chem.featurize_smiles`` over every unique cleaned SMILES of the file in a plain
  loop (the RDKit work itself, nothing else), and
- ``python -m stages.featurize`` with an empty feature cache, for each engine (``local`` process pool, ``dask``
  LocalCluster) and each worker count,

and prints a markdown table: wall seconds, rows/s, and the fraction of the ideal (ceiling time / workers). The
engines write byte-identical outputs; the table says so (``same bytes``).

    python bench/engines.py --rows 300000 --workers 1,2 --engines local,dask
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.belka_gen import write_belka  # noqa: E402


def ceiling_seconds(source: Path, params_file: Path) -> tuple[int, float]:
    """(unique molecules, single-core seconds of RDKit work) for the file's molecules."""
    import polars as pl

    from stages import chem
    from stages.featurize import feature_config
    from stages.params import load_params

    params = load_params(params_file)
    cleaned_expr, _ = chem.clean_smiles_expr(pl.col("molecule_smiles"), params.featurize.max_smiles_length)
    unique = pl.scan_parquet(source).select("molecule_smiles").unique(maintain_order=True)
    cleaned = unique.select(cleaned_expr).collect().to_series().drop_nulls().to_list()
    config = feature_config(params)
    chem.featurize_smiles(cleaned[:50], config)  # RDKit's lazy initialisation
    start = time.perf_counter()
    chem.featurize_smiles(cleaned, config)
    return len(cleaned), time.perf_counter() - start


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return h.hexdigest()[:12]


def run_featurize(source: Path, work: Path, engine: str, workers: int) -> tuple[float, str]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["resources"].update({"engine": engine, "workers": workers})
    params_file = work / f"params-{engine}-{workers}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = work / f"features-{engine}-{workers}"
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    cmd = [sys.executable, "-m", "stages.featurize", "--input", str(source), "--output", str(out), "--params",
           str(params_file), "--cache", str(work / f"cache-{engine}-{workers}")]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    result = digest(out)
    shutil.rmtree(out)
    shutil.rmtree(work / f"cache-{engine}-{workers}", ignore_errors=True)
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--engines", default="local,dask")
    parser.add_argument("--results", type=Path, help="append the markdown table to this file")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="belka-engines-") as tmp:
        work = Path(tmp)
        source = work / "input.parquet"
        write_belka(source, args.rows, str(ROOT / "params.yaml"))
        molecules, single = ceiling_seconds(source, ROOT / "params.yaml")
        print(f"ceiling: {molecules:,} molecules in {single:.1f}s on one core ({molecules / single:,.0f}/s)")
        lines = [
            f"Featurize, {args.rows:,} rows ({molecules:,} molecules), empty feature cache, "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at start. Ceiling: {single:.1f}s of "
            f"single-core RDKit work ({molecules / single:,.0f} molecules/s).",
            "",
            "| engine | workers | seconds | rows/s | fraction of ideal (ceiling / workers) | output |",
            "|---|---:|---:|---:|---:|---|",
        ]
        digests = set()
        for engine in engines:
            for n in counts:
                seconds, result = run_featurize(source, work, engine, n)
                digests.add(result)
                ideal = single / n
                row = f"| {engine} | {n} | {seconds:.1f} | {args.rows / seconds:,.0f} | {ideal / seconds:.2f} | {result} |"
                print(row, flush=True)
                lines.append(row)
        lines.append("")
        lines.append(
            "same bytes from every engine and worker count" if len(digests) == 1 else "OUTPUTS DIFFER"
        )
    text = "\n".join(lines)
    print(text)
    if args.results:
        with open(args.results, "a") as handle:
            handle.write(text + "\n")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
