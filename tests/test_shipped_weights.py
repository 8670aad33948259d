"""The pretrained folders shipped in the package: each loads by its tag, and re-evaluated on its
dataset's test split it gives the numbers its config.json and model card state, to 4 decimals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import zoo
from zoo import pretrained
from zoo.data import load_dataset
from zoo.evaluate import evaluate
from zoo.paths import weights_dir

SHIPPED = sorted(p.name for p in weights_dir().glob("*.*") if p.is_dir())
METRICS = ("hr@10", "ndcg@10", "mrr@10")


def test_every_shipped_folder_is_a_declared_tag():
    declared = set(zoo.list_models(pretrained=True))
    assert set(SHIPPED) <= declared, f"folders in zoo/weights without a recipe tag: {sorted(set(SHIPPED) - declared)}"
    for name in SHIPPED:
        assert {p.name for p in (weights_dir() / name).iterdir()} == {"config.json", "model.safetensors", "README.md"}


PUBLISHED = ("sigma", "sigma-code", "cnn-mamba", "convrec", "m2rec", "sasrec", "gru4rec", "bert4rec", "mamba4rec")


def test_every_published_model_and_two_hybrids_ship_weights():
    """The zoo's promise: each published model and baseline, and at least two hybrids, load with
    ``pretrained=True`` from the installed package, with no network."""
    shipped_models = {name.split(".")[0] for name in SHIPPED}
    assert set(PUBLISHED) <= shipped_models, f"no shipped weights for {sorted(set(PUBLISHED) - shipped_models)}"
    hybrids = {name for name in shipped_models
               if zoo.create(name, num_items=10, max_len=8).recipe.fidelity == "hybrid"}
    assert len(hybrids) >= 2, f"shipped hybrids: {sorted(hybrids)}"
    for model in PUBLISHED:
        found, tag = pretrained.find_pretrained(model)
        assert found.startswith(model + ".") and tag.local_dir is not None, (model, found)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_its_card(name):
    folder = weights_dir() / name
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    card = (folder / "README.md").read_text(encoding="utf-8")
    found, tag = pretrained.find_pretrained(name)
    assert found == name and Path(tag.local_dir) == folder
    model = zoo.create(name, pretrained=True)
    facts = config["dataset"]
    dataset = load_dataset(facts["name"], **facts.get("preprocessing", {}))
    assert list(model.item_vocab.raw_ids) == list(dataset.item_vocab.raw_ids)
    split = dataset.split(facts["split"]["method"])
    parts = [p for p in ("test", "test_full") if p in config["metrics"]]
    for part in parts:
        protocol = config.get("protocols", {}).get(part, {"mode": "full"})
        result = evaluate(model, split, which="test", ks=(10,), mode=protocol["mode"],
                          num_negatives=protocol.get("num_negatives", 100), seed=protocol.get("seed", 0))
        for metric in METRICS:
            stated = config["metrics"][part][metric]
            assert f"{result[metric.upper()]:.4f}" == f"{stated:.4f}", f"{name} {part} {metric}: {result[metric.upper()]:.4f} vs {stated:.4f}"
            assert f"{stated:.4f}" in card, f"{name}: the model card lacks {part} {metric} {stated:.4f}"


def test_shipped_weights_stay_small():
    sizes = {name: (weights_dir() / name / "model.safetensors").stat().st_size for name in SHIPPED}
    assert all(size < 16 * 2**20 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 64 * 2**20, f"{sum(sizes.values()) / 2**20:.1f} MB in all"


def test_published_facts_carry_no_local_paths(tmp_path):
    """A card or config.json to publish never shows where the trainer's files were."""
    from zoo.hub import describe_data

    facts = describe_data(load_dataset("ml-100k"))
    assert facts["source"] == "ml-100k.inter" and facts["item_file"] == "ml-100k.item"
    for name in SHIPPED:
        for file in ("README.md", "config.json"):
            text = (weights_dir() / name / file).read_text(encoding="utf-8")
            assert str(Path.home()) not in text and "site-packages" not in text, f"{name}/{file}"
