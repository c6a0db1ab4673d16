import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from rdkit import Chem

from stages.generate import RAW_SCHEMA, generate, to_kaggle_table
from stages.params import Generate

BASE = dict(seed=3, train_molecules=600, test_shared_molecules=60, test_unseen_molecules=60,
            positive_rate=0.005, test_only_building_blocks=0.15)  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return generate(Generate(**BASE))


def test_kaggle_columns_and_types(data):
    train, test = data
    assert to_kaggle_table(train).schema == RAW_SCHEMA
    assert to_kaggle_table(test).schema == RAW_SCHEMA.remove(RAW_SCHEMA.get_field_index("binds"))
    assert RAW_SCHEMA.field("id").type == pa.int64()


def test_each_training_molecule_once_per_protein_in_belka_order(data):
    train, _ = data
    assert len(train) == 3 * 600
    proteins = train["protein_name"].to_list()
    assert proteins[:6] == ["BRD4", "HSA", "sEH"] * 2
    per_molecule = train.group_by("molecule_smiles", maintain_order=True).agg(pl.col("protein_name"))
    assert len(per_molecule) == 600
    assert all(p == ["BRD4", "HSA", "sEH"] for p in per_molecule["protein_name"].to_list())
    assert train["id"].to_list() == list(range(len(train)))


def test_del_chemistry(data):
    train, _ = data
    for row in train.head(30).iter_rows(named=True):
        smiles = row["molecule_smiles"]
        assert smiles.count("[Dy]") == 1 and "[NH]" not in smiles  # Kaggle writes N[Dy]
        assert Chem.MolFromSmiles(smiles).HasSubstructMatch(Chem.MolFromSmarts("[Dy][NX3H1]C(=O)"))
        fmoc = Chem.MolFromSmarts("O=C(N)OCC1c2ccccc2-c2ccccc21")
        assert Chem.MolFromSmiles(row["buildingblock1_smiles"]).HasSubstructMatch(fmoc)
        triazine = Chem.MolFromSmarts("c1ncncn1")
        assert Chem.MolFromSmiles(smiles).HasSubstructMatch(triazine)


def test_positive_rate_is_low_and_sEH_highest():
    train, _ = generate(Generate(**{**BASE, "train_molecules": 6000}))
    rates = dict(train.group_by("protein_name").agg(pl.col("binds").mean()).iter_rows())
    overall = train["binds"].mean()
    assert 0.002 < overall < 0.01
    assert rates["sEH"] == max(rates.values())
    assert set(train["binds"].unique().to_list()) == {0, 1}


def test_test_set_has_seen_and_test_only_building_blocks(data):
    train, test = data
    seen = set(pl.concat([train[c] for c in train.columns if c.startswith("buildingblock")]).to_list())
    blocks = test.select([c for c in test.columns if c.startswith("buildingblock")]).rows()
    shared = [all(b in seen for b in row) for row in blocks]
    assert any(shared) and not all(shared)
    assert not set(test["molecule_smiles"]) & set(train["molecule_smiles"])
    assert test["id"].min() == 295_246_830


def test_deterministic_and_growing_train_appends_rows_and_leaves_test_alone(data):
    train, test = data
    again_train, again_test = generate(Generate(**BASE))
    assert train.equals(again_train) and test.equals(again_test)
    bigger_train, bigger_test = generate(Generate(**{**BASE, "train_molecules": 700}))
    assert bigger_train.head(len(train)).equals(train)
    assert bigger_test.equals(test)
    more_test_train, _ = generate(Generate(**{**BASE, "test_unseen_molecules": 90}))
    assert more_test_train.equals(train)


def test_seed_changes_the_data(data):
    other, _ = generate(Generate(**{**BASE, "seed": 4}))
    assert not np.array_equal(other["molecule_smiles"].to_numpy(), data[0]["molecule_smiles"].to_numpy())


def test_a_process_pool_changes_nothing_but_speed(data, monkeypatch):
    from stages import engine
    from stages import generate as generate_module

    monkeypatch.setattr(generate_module, "SMILES_CHUNK", 100)  # 600 molecules: several tasks
    with engine.executor("local", 2) as pool:
        train, test = generate(Generate(**BASE), pool)
    assert train.equals(data[0]) and test.equals(data[1])


def test_positions_2_and_3_draw_from_one_amine_pool_and_test_only_molecules_use_only_test_only_blocks(data):
    train, test = data
    assert set(train["buildingblock2_smiles"]) & set(train["buildingblock3_smiles"])
    seen = set(pl.concat([train[c] for c in train.columns if c.startswith("buildingblock")]).to_list())
    bb = [c for c in test.columns if c.startswith("buildingblock")]
    for row in test.select(bb).rows():
        assert sum(b in seen for b in row) in (
            0,
            3,
        )  # no test molecule mixes seen and unseen blocks (Kaggle's)


def test_the_rule_scores_a_molecule_the_same_with_its_amines_swapped():
    from stages.generate import (
        PROTEINS,
        BindingRule,
        _profiles,
        build_libraries,
        draw_molecules,
        make_binding_rule,
    )

    params = Generate(**BASE)
    libraries = build_libraries(params)
    rule = make_binding_rule(params, libraries)
    profiles = _profiles(libraries, draw_molecules(params, libraries, "train", 600))
    swapped = profiles[:, [0, 2, 1]]
    assert not np.array_equal(profiles, swapped)  # the draws do differ in their amines
    noise = np.random.default_rng(0).normal(size=len(profiles))
    for protein in PROTEINS:
        scores = rule.scores(protein, profiles, noise)
        assert np.array_equal(scores, rule.scores(protein, swapped, noise))
        assert not np.array_equal(
            scores, rule.scores(protein, profiles[:, [1, 0, 2]], noise)
        )  # position 1 differs
    # The BRD4 synergy by hand: an aryl amine (pattern 4) with an aryl-halide amine (pattern 0), in either order.
    zero = BindingRule(weights={p: np.zeros((2, profiles.shape[2])) for p in PROTEINS}, thresholds={})
    pair = np.zeros((2, 3, profiles.shape[2]))
    pair[0, 1, 4] = pair[0, 2, 0] = 1.0  # aryl in position 2, aryl halide in position 3
    pair[1, 2, 4] = pair[1, 1, 0] = 1.0  # the same molecule, amines the other way round
    assert zero.scores("BRD4", pair, np.zeros(2)).tolist() == [1.5, 1.5]
    assert zero.scores("HSA", pair, np.zeros(2)).tolist() == [0.0, 0.0]


def test_drawing_the_amines_in_the_other_order_gives_the_same_molecules_and_labels(data, monkeypatch):
    from stages import generate as generate_module

    draw = generate_module._draw_combinations
    monkeypatch.setattr(generate_module, "_draw_combinations", lambda *a, **k: draw(*a, **k)[:, [0, 2, 1]])
    swapped = generate_module.generate_all(Generate(**BASE))
    train, test = data
    bb2, bb3 = "buildingblock2_smiles", "buildingblock3_smiles"
    assert (
        swapped.train[bb2].to_list() == train[bb3].to_list()
        and swapped.train[bb3].to_list() == train[bb2].to_list()
    )
    assert swapped.train.drop(bb2, bb3).equals(train.drop(bb2, bb3))  # same SMILES, same labels, row for row
    assert swapped.test.drop(bb2, bb3).equals(test.drop(bb2, bb3))
    assert swapped.test_labels.equals(generate_module.generate_all(Generate(**BASE)).test_labels)
    # and within the data, a molecule has one label per protein
    per_molecule = train.group_by("molecule_smiles", "protein_name").agg(pl.col("binds").n_unique())
    assert per_molecule["binds"].max() == 1


def kaggle_groups(train: pl.DataFrame, test: pl.DataFrame) -> dict[int, str]:
    """id -> group by Kaggle's definition, from the building blocks of the two tables."""
    bb = [c for c in train.columns if c.startswith("buildingblock")]
    seen = {b for row in train.select(bb).rows() for b in row}
    names = {3: "share", 0: "non_share", 1: "mixed", 2: "mixed"}
    return {row[0]: names[sum(b in seen for b in row[1:])] for row in test.select(["id", *bb]).rows()}


def test_hidden_test_labels_one_row_per_test_id_and_kaggle_groups(data):
    from stages.generate import generate_all

    generated = generate_all(Generate(**BASE))
    train, test = data
    labels = generated.test_labels
    assert generated.test.equals(test) and "binds" not in test.columns
    assert labels.columns == ["id", "protein_name", "binds", "group"]
    assert labels.select("id", "protein_name").equals(test.select("id", "protein_name"))
    assert sorted(labels["id"].to_list()) == sorted(test["id"].to_list()) and labels["id"].is_unique().all()
    assert dict(labels.select("id", "group").rows()) == kaggle_groups(train, test)
    # BASE's sizes: 60 shared molecules x 3 proteins, 60 test-only molecules x 1 protein
    assert labels["group"].value_counts().sort("group").rows() == [("non_share", 60), ("share", 180)]
    assert set(labels["binds"].unique().to_list()) <= {0, 1}


def test_a_training_set_too_small_to_use_every_block_gives_mixed_test_molecules_their_own_group():
    from stages.generate import generate_all

    tiny = generate_all(Generate(**{**BASE, "seed": 5, "train_molecules": 100}))
    groups = dict(tiny.test_labels.select("id", "group").rows())
    assert groups == kaggle_groups(tiny.train, tiny.test)
    assert set(groups.values()) == {"share", "non_share", "mixed"}


def test_the_cli_writes_the_hidden_labels_apart_from_an_unlabelled_test_file(tmp_path):
    import yaml

    from stages import generate as generate_module
    from tests.conftest import ROOT, deep_update

    params = deep_update(
        yaml.safe_load((ROOT / "params.yaml").read_text()), {"generate": BASE, "resources": {"workers": 1}}
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = {name: tmp_path / f"{name}.parquet" for name in ("train", "test", "test-labels")}
    argv = [
        "--params",
        str(tmp_path / "params.yaml"),
        "--train",
        str(out["train"]),
        "--test",
        str(out["test"]),
    ]
    assert generate_module.main([*argv, "--test-labels", str(out["test-labels"])]) == 0
    test, labels = pl.read_parquet(out["test"]), pl.read_parquet(out["test-labels"])
    assert "binds" not in test.columns
    assert labels.schema == pl.Schema(
        {"id": pl.Int64, "protein_name": pl.String, "binds": pl.Int64, "group": pl.String}
    )
    assert labels.sort("id")["id"].to_list() == test.sort("id")["id"].to_list()
