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
