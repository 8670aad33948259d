"""ConvRec trains and is evaluated as its paper says: Eq. 15 with unseen negatives, Adam, the frequent-item
ID trick on training-split counts, and checkpoints chosen on Table 2's 1 + N sampled candidates while
full-ranking numbers are reported too (docs/models/convrec.md, "Training" and "Evaluation")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zoo
from zoo.blocks.convrec_encoder import AttributeContextEncoder
from zoo.builder import resolve_recipe
from zoo.checkpoint import latest_checkpoint
from zoo.data.synthetic import generate_dataset
from zoo.evaluate import evaluate
from zoo.recipe import TrainConfig
from zoo.train import build_optimizer, train

CONVREC = ["convrec", "convrec-no-intervals", "convrec-no-residuals", "convrec-one-conv", "convrec-avgpool"]
TINY = {"d_model": 16, "max_len": 10, "train.batch_size": 16, "train.num_negatives": 10, "train.eval_negatives": 20}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def data():
    return generate_dataset(num_users=80, num_items=60, length=(6, 16), pattern="markov", noise=0.1, seed=0).split("loo")


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("convrec")
    return train("convrec", data, out, epochs=3, seed=0, overrides=TINY, progress=False, plot=False), out


@pytest.mark.parametrize("name", CONVREC)
def test_convrec_recipes_train_and_evaluate_as_the_paper_says(name):
    recipe = resolve_recipe(name)
    config = recipe.train
    assert (config.objective, config.loss, config.num_negatives, config.negatives) == ("random_cut", "bce", 100, "unseen")
    assert (config.optimizer, config.lr, config.weight_decay, config.batch_size) == ("adamw", 1e-3, 0.1, 128)
    assert (config.eval_protocol, config.eval_negatives, config.epochs) == ("sampled", 100, 1000)
    assert (config.valid_every, config.patience) == (10, 800)  # the code: validate every 10, stop after 80 validations
    assert config.cpu_precision == "bf16"
    assert recipe.item_encoder.args["num_known_items"] == 0.75


def test_convrec_builds_adamw_decaying_weights_and_embeddings_only():
    model = zoo.create("convrec", num_items=200)
    optimizer = build_optimizer(model, model.recipe.train)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed = [g for g in optimizer.param_groups if g["weight_decay"] > 0]
    assert len(decayed) == 1 and decayed[0]["weight_decay"] == 0.1
    names = {id(p): n for n, p in model.named_parameters()}
    assert "item_encoder.id_embedding.weight" in {names[id(p)] for p in decayed[0]["params"]}
    assert "readout.layers.0.w1" not in {names[id(p)] for p in decayed[0]["params"]}


def test_frequent_item_share_sets_the_id_table():
    model = zoo.create("convrec", num_items=200, d_model=8)
    assert model.item_encoder.num_known_items == 150 and model.item_encoder.id_embedding.num_embeddings == 152
    with pytest.raises(ValueError, match="share of the items, in \\(0, 1\\)"):
        AttributeContextEncoder(d_model=4, num_items=10, num_known_items=1.5)


def test_new_train_fields_are_validated():
    with pytest.raises(ValueError, match="negatives"):
        TrainConfig(negatives="popular")
    with pytest.raises(ValueError, match="eval_protocol"):
        TrainConfig(eval_protocol="sampled-100")
    with pytest.raises(ValueError, match="eval_negatives"):
        TrainConfig(eval_protocol="sampled", eval_negatives=0)


def test_sampled_evaluation_with_more_negatives_than_items_says_so(data, tmp_path):
    with pytest.raises(ValueError, match="eval_negatives=100 other items, but the dataset has only 60 items"):
        train("convrec", data, tmp_path, epochs=1, overrides={**TINY, "train.eval_negatives": 100}, progress=False)
    with pytest.raises(ValueError, match="fewer than the 50 distinct negatives"):
        train("convrec", data, tmp_path, epochs=1, overrides={**TINY, "train.num_negatives": 50}, progress=False)


def test_validation_selects_on_the_sampled_protocol_and_the_test_is_also_ranked_fully(finished, data):
    result, out = finished
    assert result.protocol == {"mode": "sampled", "num_negatives": 20, "seed": 0}
    loaded = zoo.create(f"local-dir:{out}")

    def independent(which, **protocol):
        metrics = evaluate(loaded, data, which=which, ks=(5, 10, 20), **protocol).metrics
        return {k.lower(): v for k, v in metrics.items()}

    sampled_valid = independent("valid", mode="sampled", num_negatives=20, seed=0)
    best = max(result.history, key=lambda r: r["valid"]["ndcg@10"])
    assert result.best_epoch == best["epoch"]
    assert sampled_valid["ndcg@10"] == pytest.approx(best["valid"]["ndcg@10"], abs=1e-12)
    assert sampled_valid == pytest.approx(result.valid, abs=1e-12)
    assert independent("test", mode="sampled", num_negatives=20, seed=0) == pytest.approx(result.test, abs=1e-12)
    assert independent("test", mode="full") == pytest.approx(result.full_ranking["test"], abs=1e-12)
    assert independent("valid", mode="full") == pytest.approx(result.full_ranking["valid"], abs=1e-12)
    assert result.full_ranking["test"]["ndcg@10"] < result.test["ndcg@10"]  # 60 candidates are harder than 21

    stored = json.loads((out / "result.json").read_text())
    assert stored["protocol"]["mode"] == "sampled" and stored["full_ranking"]["test"] == result.full_ranking["test"]
    config = json.loads((out / "config.json").read_text())
    assert config["metrics"]["test_full"] == pytest.approx(result.full_ranking["test"])
    assert config["protocols"]["test"] == {"split": "test", "mode": "sampled", "num_negatives": 20, "seed": 0}
    assert config["protocols"]["test_full"] == {"split": "test", "mode": "full"}
    card = (out / "README.md").read_text()
    assert "| metric | validation (1 + 20 sampled) | test (1 + 20 sampled) | validation (full ranking) | test (full ranking) |" in card
    assert "name: NDCG@10 (1 + 20 sampled)" in card and "name: NDCG@10 (full ranking)" in card
    assert "best validation ndcg@10" in card and "1 + 20 sampled, at epoch" in card


def test_item_counts_come_from_the_training_split_and_stay_with_the_folder(finished, data, monkeypatch):
    result, out = finished
    train_counts = np.bincount(data.train.items, minlength=61)
    all_counts = np.bincount(data.dataset.sequences.items, minlength=61)

    def rows_by(counts):
        order = np.argsort(-counts[1:], kind="stable") + 1  # decreasing count, ties by smaller id
        rank = np.zeros(61, dtype=np.int64)
        rank[order] = np.arange(1, 61)
        return np.where(rank > 45, 46, rank)  # K = 0.75 * 60 = 45 known items; the rest share row 46

    assert not np.array_equal(rows_by(train_counts), rows_by(all_counts)), "the test needs data where the two differ"
    assert result.model.item_encoder.id_rows.tolist() == rows_by(train_counts).tolist()
    loaded = zoo.create(f"local-dir:{out}")
    assert torch.equal(loaded.item_encoder.id_rows, result.model.item_encoder.id_rows)
    history = torch.tensor([[0, 0, 3, 17, 42, 8]])
    assert torch.equal(loaded.score(history), result.model.eval().score(history))


def test_resuming_with_the_new_fields_gives_the_uninterrupted_result(data, tmp_path, deterministic, monkeypatch):
    settings = dict(epochs=3, seed=0, overrides=TINY, progress=False, save_model=False, plot=False, checkpoint_every=2)
    reference = train("convrec", data, tmp_path / "reference", **settings)

    import zoo.train as trainer

    step, calls = trainer._Run._step, []

    def crashing(self, batch):
        calls.append(1)
        if len(calls) == 8:  # epoch 2, after its first mid-epoch checkpoint
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(trainer._Run, "_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train("convrec", data, tmp_path / "killed", **settings)
    monkeypatch.setattr(trainer._Run, "_step", step)
    folder = latest_checkpoint(tmp_path / "killed" / "checkpoints")
    assert folder.name.split("-")[2:] == ["00001", "000002"], folder.name

    resumed = train("convrec", data, tmp_path / "killed", **settings)
    timing = {"train_seconds", "eval_seconds", "targets_per_second", "wall"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k not in timing} for r in reference.history]
    assert resumed.valid == reference.valid and resumed.test == reference.test
    assert resumed.full_ranking == reference.full_ranking
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
