"""The model card labels every number with the ranking protocol it was measured with (``config.json``'s ``protocols``)."""

from __future__ import annotations

import json

import pytest
import torch

import zoo

pytestmark = pytest.mark.kernel_independent  # the kernels-off pass leaves it out (pyproject.toml)

METRICS = {"valid": {"ndcg@10": 0.5}, "test": {"ndcg@10": 0.4}, "test_full": {"ndcg@10": 0.1}}
PROTOCOLS = {
    "valid": {"split": "valid", "mode": "sampled", "num_negatives": 100, "seed": 0},
    "test": {"split": "test", "mode": "sampled", "num_negatives": 100, "seed": 0},
    "test_full": {"split": "test", "mode": "full"},
}


def tiny() -> zoo.SeqRecModel:
    torch.manual_seed(0)
    return zoo.create("sasrec", num_items=12, d_model=8, max_len=5)


def test_each_number_says_its_protocol(tmp_path):
    from huggingface_hub import ModelCard

    folder = tiny().save_pretrained(tmp_path / "run", dataset_facts={"name": "toy", "split": {"method": "loo"}},
                                    metrics=METRICS, protocols=PROTOCOLS)
    assert json.loads((folder / "config.json").read_text())["protocols"] == PROTOCOLS
    card = ModelCard.load(folder / "README.md")
    results = {(r.dataset_split, r.metric_name, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert results == {
        ("validation", "NDCG@10 (1 + 100 sampled)", "leave-one-out by time; 1 + 100 sampled"): 0.5,
        ("test", "NDCG@10 (1 + 100 sampled)", "leave-one-out by time; 1 + 100 sampled"): 0.4,
        ("test", "NDCG@10 (full ranking)", "leave-one-out by time; full ranking"): 0.1,
    }
    text = card.text
    assert "| metric | validation (1 + 100 sampled) | test (1 + 100 sampled) | test (full ranking) |" in text
    assert "| NDCG@10 | 0.5000 | 0.4000 | 0.1000 |" in text
    assert ("validation (1 + 100 sampled), test (1 + 100 sampled): each target is ranked among itself and 100 items "
            "drawn uniformly without replacement from the items outside its history and the target (seed 0, drawn once); "
            "test (full ranking): each target is ranked among all items") in text


def test_without_protocols_the_card_reads_as_before(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "run", metrics={"test": {"ndcg@10": 0.2}})
    text = (folder / "README.md").read_text()
    assert "protocols" not in json.loads((folder / "config.json").read_text())
    assert "| metric | test |" in text and "full ranking over all items unless noted" in text


@pytest.mark.parametrize("protocols, message", [
    ({"valid_full": {"split": "valid", "mode": "full"}}, "describes no metrics part"),
    ({"test": {"split": "train", "mode": "full"}}, "must say split"),
    ({"test": {"split": "test", "mode": "sampled"}}, "needs num_negatives"),
])
def test_bad_protocols_are_refused(tmp_path, protocols, message):
    with pytest.raises(ValueError, match=message):
        tiny().save_pretrained(tmp_path / "run", metrics={"test": {"ndcg@10": 0.2}}, protocols=protocols)


@pytest.mark.parametrize("facts, card, expected", [
    ({"name": "toy"}, None, {"license": "apache-2.0"}),
    ({"name": "ml-100k"}, None, {"license": "other", "license_name": "movielens-100k",
                                 "license_link": "https://files.grouplens.org/datasets/movielens/ml-100k-README.txt"}),
    ({"name": "ml-100k"}, {"license": "mit"}, {"license": "mit"}),
])
def test_every_card_states_a_license_the_hub_reads(tmp_path, facts, card, expected):
    """The data's terms for a built-in dataset, the library's license otherwise, the trainer's choice first."""
    from huggingface_hub import ModelCard

    folder = tiny().save_pretrained(tmp_path / "run", dataset_facts=facts, metrics={"test": {"ndcg@10": 0.2}}, card=card)
    data = ModelCard.load(folder / "README.md").data.to_dict()
    assert {key: data.get(key) for key in ("license", "license_name", "license_link")} == {
        "license": None, "license_name": None, "license_link": None, **expected}
    assert "## License" in (folder / "README.md").read_text()
