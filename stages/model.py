"""The trained model's artifacts, all JSON (never pickle), and the design matrix they define.

- ``encoder.json``: the one-hot encoder of ``protein_name`` (its categories).
- ``scaler.json``: the StandardScaler of the descriptors (mean, scale, variance, samples seen).
- the XGBoost booster(s) in XGBoost's own JSON format (each loads into ``XGBClassifier.load_model``):
  ``model.json`` for ``train.model: joint`` (one booster for every protein, the protein one-hot encoded), or
  ``model-<protein>.json`` for ``per_protein`` (one booster per protein, trained on that protein's rows only).
- ``manifest.json``: schema version, model form, booster files, feature layout, base rates, and the sha256 of every
  file above, so an artifact that is missing, from another schema version or altered is refused with a clear
  error.

The design matrix is ``[one-hot protein | scaled descriptors | fingerprint bits]`` in float32 for the joint model
and ``[scaled descriptors | fingerprint bits]`` for a per-protein booster. A batch's molecule part is built once and
shared by every protein's rows, whichever the form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages.environment import mismatch_message
from stages.errors import ArtifactError, InputError, first_line
from stages.features import spec_differences
from stages.io import PROTEIN, read_json, sha256_file, write_json
from stages.molecules import MoleculeStore, spec_is_complete

SCHEMA_VERSION = 3
ENCODER, SCALER, MODEL, MANIFEST = "encoder.json", "scaler.json", "model.json", "manifest.json"
JOINT = "*"  # the booster key of the joint model: every protein


def encoder_to_json(encoder: OneHotEncoder) -> dict:
    return {
        "format": "belka-onehot-encoder",
        "schema_version": SCHEMA_VERSION,
        "feature": PROTEIN,
        "categories": [str(c) for c in encoder.categories_[0]],
    }


def encoder_from_json(data: dict, source: str) -> OneHotEncoder:
    _check_format(data, "belka-onehot-encoder", source)
    categories = data.get("categories")
    if not (isinstance(categories, list) and categories and all(isinstance(c, str) for c in categories)):
        raise ArtifactError(f"{source}: 'categories' must be a non-empty list of protein names")
    encoder = OneHotEncoder(
        categories=[categories], handle_unknown="error", sparse_output=False, dtype=np.float32
    )
    return encoder.fit(np.array(categories, dtype=object).reshape(-1, 1))


def scaler_to_json(scaler: StandardScaler, descriptors: list[str]) -> dict:
    return {
        "format": "belka-standard-scaler",
        "schema_version": SCHEMA_VERSION,
        "features": list(descriptors),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "var": scaler.var_.tolist(),
        "n_samples_seen": int(scaler.n_samples_seen_),
    }


def scaler_from_json(data: dict, source: str, descriptors: list[str]) -> StandardScaler:
    _check_format(data, "belka-standard-scaler", source)
    if data.get("features") != list(descriptors):
        raise ArtifactError(
            f"{source}: scaler features {data.get('features')} != the model's {list(descriptors)}"
        )
    scaler = StandardScaler()
    try:
        scaler.mean_ = np.asarray(data["mean"], dtype=np.float64)
        scaler.scale_ = np.asarray(data["scale"], dtype=np.float64)
        scaler.var_ = np.asarray(data["var"], dtype=np.float64)
        scaler.n_samples_seen_ = int(data["n_samples_seen"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{source}: scaler field missing or not numeric ({exc})") from None
    scaler.n_features_in_ = len(descriptors)
    if any(len(a) != len(descriptors) for a in (scaler.mean_, scaler.scale_, scaler.var_)):
        raise ArtifactError(f"{source}: scaler arrays must have {len(descriptors)} values")
    return scaler


def _check_format(data: object, expected: str, source: str) -> None:
    if not isinstance(data, dict) or data.get("format") != expected:
        raise ArtifactError(f"{source}: not a {expected} artifact")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{source}: schema_version {data.get('schema_version')!r}, this code reads {SCHEMA_VERSION} "
            "(retrain: dvc repro train)"
        )


def feature_names(categories: list[str] | None, descriptors: list[str], n_bits: int) -> list[str]:
    """Design-matrix column names: the one-hot protein columns (joint model only), descriptors, fingerprint bits."""
    onehot = [f"protein={c}" for c in categories] if categories is not None else []
    return onehot + list(descriptors) + [f"fp{i}" for i in range(n_bits)]


def booster_file(key: str) -> str:
    return MODEL if key == JOINT else f"model-{key}.json"


@dataclass
class Model:
    encoder: OneHotEncoder
    scaler: StandardScaler
    boosters: dict[str, xgb.Booster]  # {JOINT: booster} or {protein: booster}
    manifest: dict

    @property
    def categories(self) -> list[str]:
        return [str(c) for c in self.encoder.categories_[0]]

    @property
    def joint(self) -> bool:
        return JOINT in self.boosters

    def check_proteins(self, proteins: pl.Series, source: str) -> None:
        unknown = sorted(set(proteins.unique().to_list()) - set(self.categories))
        if unknown:
            raise InputError(
                f"{source}: unknown protein_name value(s) {', '.join(map(repr, unknown))}; "
                f"the model knows {', '.join(self.categories)}"
            )

    @property
    def feature_spec(self) -> dict:
        return self.manifest["features"]

    @property
    def description(self) -> str:
        """Which model this is, in words: the final model (every labelled row) or the split model, and its rows."""
        fit = self.manifest.get("fit")
        if not isinstance(fit, dict):
            return "a model whose manifest does not say which rows it saw (made by an older version)"
        skipped = "; train.final_fit is false" if fit.get("final_fit") is False else ""
        return f"the {fit['model']} model, fit on {fit['rows']}: {fit['labelled_rows']:,} rows{skipped}"

    def check_features(self, store: MoleculeStore) -> None:
        """Refuse features made differently from the model's (settings, RDKit version, feature version)."""
        differences = spec_differences(store.spec, self.feature_spec)
        if not differences:
            return
        found = (
            f"{store.directory}: features were made differently from the model's training features "
            f"(features != model): {'; '.join(differences)}"
        )
        if store.spec.get("rdkit") != self.feature_spec.get("rdkit"):  # `dvc repro` alone changes no RDKit
            raise InputError(mismatch_message(f"{found}. Featurize and train with one RDKit"))
        raise InputError(f"{found}. Featurize and train with the same featurize params (dvc repro)")

    def predict(self, rows: pl.DataFrame, store: MoleculeStore) -> np.ndarray:
        """Each row's probability of binding. A per-protein model builds one protein's matrix at a time, so a
        batch holds one float32 matrix of its largest protein's rows, not all rows' plus a masked copy."""
        if self.joint:
            matrix = np.hstack(
                [protein_matrix(rows, self.encoder), molecule_matrix(rows, store, self.scaler)]
            )
            return self.boosters[JOINT].inplace_predict(matrix).astype(np.float64)
        probabilities = np.empty(len(rows), dtype=np.float64)
        proteins = rows[PROTEIN].to_numpy()
        for protein in np.unique(proteins):
            mask = proteins == protein
            matrix = molecule_matrix(rows.filter(pl.Series(mask)), store, self.scaler)
            probabilities[mask] = self.boosters[protein].inplace_predict(matrix)
        return probabilities

    def total_gain(self) -> dict[str, float]:
        """Each feature's total gain, summed over the boosters, by design-matrix name."""
        names = self.manifest["feature_names"]
        gains: dict[str, float] = {}
        for booster in self.boosters.values():
            # keys f0, f1, ...: the booster has no feature names, the manifest has them in design-matrix order
            for key, gain in booster.get_score(importance_type="total_gain").items():
                name = names[int(key[1:])]
                gains[name] = gains.get(name, 0.0) + float(gain)
        return gains


def protein_matrix(rows: pl.DataFrame, encoder: OneHotEncoder) -> np.ndarray:
    return encoder.transform(rows[PROTEIN].to_numpy().reshape(-1, 1)).astype(np.float32)


def molecule_matrix(rows: pl.DataFrame, store: MoleculeStore, scaler: StandardScaler) -> np.ndarray:
    """``[scaled descriptors | fingerprint bits]`` of each row's molecule, float32."""
    molecules = store.lookup(rows["molecule_key"].to_numpy())
    descriptors = molecules.descriptors
    scaled = (scaler.transform(descriptors) if descriptors.shape[1] else descriptors).astype(np.float32)
    return np.hstack([scaled, store.unpack(molecules.fingerprints)])


def design_matrix(
    rows: pl.DataFrame, store: MoleculeStore, encoder: OneHotEncoder | None, scaler: StandardScaler
) -> np.ndarray:
    """The matrix a booster sees: with the one-hot protein columns for the joint model (``encoder``), without for a
    per-protein booster (``encoder=None``)."""
    molecules = molecule_matrix(rows, store, scaler)
    return molecules if encoder is None else np.hstack([protein_matrix(rows, encoder), molecules])


def save_model(
    directory: Path,
    encoder: OneHotEncoder,
    scaler: StandardScaler,
    boosters: dict[str, xgb.Booster],
    extra: dict,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / ENCODER, encoder_to_json(encoder))
    write_json(directory / SCALER, scaler_to_json(scaler, extra["features"]["descriptors"]))
    files = {key: booster_file(key) for key in sorted(boosters)}
    for key, name in files.items():
        boosters[key].save_model(str(directory / name))  # the caller writes into an atomic_dir
    manifest = {
        "format": "belka-model",
        "schema_version": SCHEMA_VERSION,
        "boosters": files,
        "sha256": {name: sha256_file(directory / name) for name in (ENCODER, SCALER, *files.values())},
        **extra,
    }
    write_json(directory / MANIFEST, manifest)


def load_model(directory: Path) -> Model:
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"{directory}: a file, where the trained model's directory is expected")
    manifest = read_json(directory / MANIFEST, "model manifest")
    _check_format(manifest, "belka-model", str(directory / MANIFEST))
    files = manifest.get("boosters")
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
        raise ArtifactError(f"{directory / MANIFEST}: 'boosters' must map proteins (or '*') to model files")
    digests = manifest.get("sha256")
    if not isinstance(digests, dict):
        raise ArtifactError(f"{directory / MANIFEST}: 'sha256' must map each artifact to its digest")
    for name in (ENCODER, SCALER, *files.values()):
        path = directory / name
        if not path.exists():
            raise ArtifactError(f"{path}: not found (run: dvc repro train)")
        expected = digests.get(name)
        if sha256_file(path) != expected:
            raise ArtifactError(
                f"{path}: content does not match the sha256 recorded in {directory / MANIFEST} "
                "(altered or from another run; retrain or restore it: dvc checkout)"
            )
    if not spec_is_complete(manifest.get("features")):
        raise ArtifactError(
            f"{directory / MANIFEST}: no complete feature spec (made by an older version: dvc repro train)"
        )
    trained_with = manifest.get("xgboost")
    if trained_with is not None and trained_with != xgb.__version__:
        raise ArtifactError(
            mismatch_message(
                f"{directory}: trained with XGBoost {trained_with}, {xgb.__version__} is installed"
            )
        )
    encoder = encoder_from_json(read_json(directory / ENCODER, "encoder"), str(directory / ENCODER))
    descriptors = manifest["features"]["descriptors"]
    scaler = scaler_from_json(read_json(directory / SCALER, "scaler"), str(directory / SCALER), descriptors)
    if JOINT not in files and set(files) != {str(c) for c in encoder.categories_[0]}:
        raise ArtifactError(
            f"{directory / MANIFEST}: per-protein boosters {sorted(files)} != the encoder's proteins "
            f"{[str(c) for c in encoder.categories_[0]]}"
        )
    boosters = {}
    for key, name in files.items():
        booster = xgb.Booster()
        try:
            booster.load_model(str(directory / name))
        except xgb.core.XGBoostError as exc:
            raise ArtifactError(f"{directory / name}: XGBoost cannot load it ({first_line(exc)})") from None
        boosters[key] = booster
    return Model(encoder, scaler, boosters, manifest)
