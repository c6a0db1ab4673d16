"""CPU instructions a molecule (valgrind's cachegrind): the parse and featurize costs, unaffected by other jobs.

    python bench/instructions.py --molecules 1000

Wall and CPU seconds on a shared machine move with the other jobs' load; instruction counts do not (they vary by
a percent or so between runs). For the first ``--molecules`` unique molecules of ``../shared``'s real sample (or
``--smiles-file``, one cleaned SMILES a line), each measurement runs in its own process under cachegrind, less a
process that only loads the molecules, and prints thousands of instructions a molecule: RDKit's default parse,
the fast parse, and ``chem.featurize_smiles`` (params.yaml's descriptors and fingerprint) with each. Instructions
are not time (memory stalls differ), but the ratios track the seconds of a quiet machine. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE = ROOT.parent / "shared" / "data" / "belka_sample" / "val.csv"
WORK = ("load", "default_parse", "fast_parse", "featurize_default", "featurize_fast")


def molecules(smiles_file: Path | None, n: int) -> list[str]:
    from stages import chem

    if smiles_file:
        return smiles_file.read_text().split()[:n]
    import polars as pl

    raw = pl.read_csv(SAMPLE)["molecule_smiles"].unique(maintain_order=True).head(n).to_list()
    return [chem.clean_smiles(s)[0] for s in raw]


def run_work(work: str, smiles_file: Path) -> None:
    """One measured process: load the molecules and RDKit, then do ``work`` on all of them."""
    from stages import chem
    from stages.featurize import feature_config
    from stages.params import load_params

    cleaned = smiles_file.read_text().split()
    config = feature_config(load_params(ROOT / "params.yaml"))
    chem.featurize_smiles(cleaned[:2], config)  # RDKit's lazy initialisation, in every process alike
    if work == "default_parse":
        [chem.default_parse(s) for s in cleaned]
    elif work == "fast_parse":
        [chem.parse(s, config.fingerprint.reads_stereo) for s in cleaned]
    elif work != "load":
        chem.featurize_smiles(cleaned, config, fast=work == "featurize_fast")


def instructions(work: str, smiles_file: Path) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT), "POLARS_MAX_THREADS": "1"}
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
               sys.executable, __file__, "one", work, str(smiles_file)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return int(re.search(r"I\s+refs:\s+([\d,]+)", done.stderr).group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", type=int, default=1000)
    parser.add_argument(
        "--smiles-file", type=Path, help="cleaned SMILES, one a line (default: the real sample)"
    )
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("one", help="one measured process (what the main command runs under cachegrind)")
    one.add_argument("work", choices=WORK)
    one.add_argument("smiles", type=Path, help="cleaned SMILES, one a line")
    args = parser.parse_args(argv)
    if args.command == "one":
        run_work(args.work, args.smiles)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    cleaned = molecules(args.smiles_file, args.molecules)
    listing = Path(os.environ.get("TMPDIR", "/tmp")) / f"instructions-{os.getpid()}.smi"
    listing.write_text("\n".join(cleaned))
    try:
        counts = {work: instructions(work, listing) for work in WORK}
    finally:
        listing.unlink()
    per = {work: (counts[work] - counts["load"]) / len(cleaned) / 1e3 for work in WORK[1:]}
    print(f"thousands of instructions a molecule, {len(cleaned):,} molecules:")
    for work, value in per.items():
        print(f"  {work:18s} {value:8,.0f}")
    print(f"  fast / default parse: {per['fast_parse'] / per['default_parse']:.2f}; "
          f"featurize_smiles fast / default: {per['featurize_fast'] / per['featurize_default']:.2f} "
          f"({per['featurize_default'] / per['featurize_fast']:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
