import json

import numpy as np
import xgboost as xgb
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages import model as artifacts
from stages.features import FeatureConfig, FingerprintConfig

EXTRA = {
    "features": FeatureConfig(
        ("MolWt", "NumHDonors", "NumHAcceptors"), FingerprintConfig("none"), 400
    ).spec(),
    "base_rate": {},
}


def fitted():
    rng = np.random.default_rng(0)
    proteins = np.array(["BRD4", "HSA", "sEH"], dtype=object).reshape(-1, 1)
    encoder = OneHotEncoder(sparse_output=False, dtype=np.float32).fit(proteins)
    descriptors = rng.normal(size=(200, 3)) * [100, 2, 3] + [500, 3, 8]
    scaler = StandardScaler().fit(descriptors)
    x = rng.random((300, 10)).astype(np.float32)
    y = (x[:, 0] + 0.2 * rng.random(300) > 0.6).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, label=y), 10)
    return encoder, scaler, booster, descriptors, x


def test_encoder_and_scaler_round_trip_through_json(tmp_path):
    encoder, scaler, booster, descriptors, _ = fitted()
    artifacts.save_model(tmp_path, encoder, scaler, {artifacts.JOINT: booster}, EXTRA)
    loaded = artifacts.load_model(tmp_path)
    proteins = np.array(["sEH", "BRD4"], dtype=object).reshape(-1, 1)
    np.testing.assert_array_equal(loaded.encoder.transform(proteins), encoder.transform(proteins))
    np.testing.assert_array_equal(loaded.scaler.transform(descriptors), scaler.transform(descriptors))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "encoder.json",
        "manifest.json",
        "model.json",
        "scaler.json",
    ]
    for path in tmp_path.iterdir():
        json.loads(path.read_text())  # every artifact is JSON


def test_model_json_loads_into_xgbclassifier_with_the_same_predictions(tmp_path):
    encoder, scaler, booster, _, x = fitted()
    artifacts.save_model(tmp_path, encoder, scaler, {artifacts.JOINT: booster}, EXTRA)
    classifier = xgb.XGBClassifier()
    classifier.load_model(tmp_path / "model.json")
    np.testing.assert_allclose(classifier.predict_proba(x)[:, 1], booster.inplace_predict(x), rtol=1e-6)
    np.testing.assert_allclose(
        artifacts.load_model(tmp_path).boosters[artifacts.JOINT].inplace_predict(x),
        booster.inplace_predict(x),
    )


def test_per_protein_boosters_each_in_its_own_json_file(tmp_path):
    encoder, scaler, _, _, x = fitted()
    others = {p: xgb.train({"objective": "binary:logistic", "max_depth": d}, xgb.DMatrix(x, label=x[:, 1] > 0.5), 5)
              for p, d in (("BRD4", 2), ("HSA", 3), ("sEH", 4))}  # fmt: skip
    artifacts.save_model(tmp_path, encoder, scaler, others, EXTRA)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "encoder.json", "manifest.json", "model-BRD4.json", "model-HSA.json", "model-sEH.json", "scaler.json",
    ]  # fmt: skip
    loaded = artifacts.load_model(tmp_path)
    assert not loaded.joint and sorted(loaded.boosters) == ["BRD4", "HSA", "sEH"]
    for protein, original in others.items():
        classifier = xgb.XGBClassifier()
        classifier.load_model(tmp_path / f"model-{protein}.json")
        np.testing.assert_allclose(classifier.predict_proba(x)[:, 1], original.inplace_predict(x), rtol=1e-6)
