"""The baselines featurize is measured against, each on one core: the naive way (polars ``map_elements`` calling
RDKit per row) and RDKit's ceilings (``chem.featurize_smiles`` in a plain loop, with RDKit's default parse and with
the fast parse). ``bench/bench.py naive`` and ``bench/bench.py ceiling`` run them in a process of their own."""

from __future__ import annotations

from collections.abc import Callable

from bench.common import timed


def naive(source: str, rows: int, params_file: str) -> dict:
    """The naive way: polars ``map_elements`` calling RDKit on every row, one process."""
    import numpy as np
    import polars as pl
    from rdkit import Chem
    from rdkit.Chem import Descriptors, rdFingerprintGenerator, rdMolDescriptors

    from stages.params import load_params

    fp = load_params(params_file).featurize.fingerprint
    generator = rdFingerprintGenerator.GetMorganGenerator(
        radius=fp.radius, fpSize=fp.n_bits, includeChirality=fp.chirality
    )
    frame = pl.scan_parquet(source).head(rows).collect()

    def featurize(smiles: str) -> dict:
        mol = Chem.MolFromSmiles(smiles.replace("[Dy]", ""))
        if mol is None:
            return {"mw": None, "hbd": None, "hba": None, "fp": None}
        return {
            "mw": Descriptors.MolWt(mol),
            "hbd": rdMolDescriptors.CalcNumHBD(mol),
            "hba": rdMolDescriptors.CalcNumHBA(mol),
            "fp": np.packbits(generator.GetFingerprintAsNumPy(mol)).tobytes(),
        }

    dtype = pl.Struct({"mw": pl.Float64, "hbd": pl.Int64, "hba": pl.Int64, "fp": pl.Binary})
    out, seconds, cpu = timed(
        lambda: frame.with_columns(
            pl.col("molecule_smiles").map_elements(featurize, return_dtype=dtype).alias("f")
        )
    )
    return {
        "rows": len(out),
        "compute_seconds": seconds,
        "compute_cpu": cpu,
        "rows_per_s": len(out) / seconds,
    }


def unique_cleaned(source: str, molecules: int, max_length: int) -> list[str]:
    """The first ``molecules`` distinct molecules of a BELKA-format file, cleaned as featurize cleans them."""
    import polars as pl

    from stages import chem

    cleaned_expr, _ = chem.clean_smiles_expr(pl.col("molecule_smiles"), max_length)
    unique = pl.scan_parquet(source).select("molecule_smiles").head(4 * molecules).unique(maintain_order=True)
    return unique.head(molecules).select(cleaned_expr).collect().to_series().drop_nulls().to_list()


CEILING_CHUNK = 500  # molecules timed at a time, alternating the two parses


def alternating(work: dict[str, Callable[[list], object]], items: list, chunk: int = CEILING_CHUNK) -> dict:
    """Seconds and CPU seconds of each of ``work``'s functions over ``items``, timed chunk by chunk with the
    functions taking turns (and going first in turn), so a burst of load from other jobs hits them alike."""
    totals = {name: [0.0, 0.0] for name in work}
    for number, start in enumerate(range(0, len(items), chunk)):
        part = items[start : start + chunk]
        names = list(work) if number % 2 == 0 else list(reversed(work))
        for name in names:
            _, seconds, cpu = timed(lambda: work[name](part))  # noqa: B023
            totals[name][0] += seconds
            totals[name][1] += cpu
    return {name: {"seconds": seconds, "cpu": cpu} for name, (seconds, cpu) in totals.items()}


def ceilings(cleaned: list[str], config) -> dict[str, dict]:
    """The two RDKit ceilings on one core, on the same molecules: ``chem.featurize_smiles`` in a plain loop with
    RDKit's default parse (``default``) and with the fast parse (``fast``), alternating chunk by chunk."""
    from stages import chem

    chem.featurize_smiles(cleaned[:50], config)  # warm up RDKit's lazy initialisation
    timing = alternating(
        {
            "default": lambda part: chem.featurize_smiles(part, config, fast=False),
            "fast": lambda part: chem.featurize_smiles(part, config),
        },
        cleaned,
    )
    return {
        name: {
            "molecules": len(cleaned),
            "compute_seconds": t["seconds"],
            "compute_cpu": t["cpu"],
            "molecules_per_s": len(cleaned) / t["seconds"],
            "molecules_per_cpu_s": len(cleaned) / t["cpu"],
        }
        for name, t in timing.items()
    }


def ceiling(source: str, molecules: int, params_file: str) -> dict:
    """RDKit's ceilings on one core (default and fast parse) on unique cleaned SMILES of the file."""
    from stages.featurize import feature_config
    from stages.params import load_params

    params = load_params(params_file)
    cleaned = unique_cleaned(source, molecules, params.featurize.max_smiles_length)
    return ceilings(cleaned, feature_config(params))
