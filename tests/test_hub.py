"""Trained folders: save_pretrained, strict loading, pretrained names, the Hub cache and a fake Hub.

No test touches the network: Hub downloads are served by a pre-populated cache in ``tmp_path``
(offline) or by the loopback stand-in of the Hub in ``tests/fake_hub.py``. Publishing, and the
download protocol end to end, are tested in ``test_hub_loopback.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub, online  # noqa: F401 (online is a fixture)
from safetensors.torch import load_file, save_file, save_model
from torch import nn

import zoo
from zoo import hub, pretrained
from zoo.data.vocab import Vocabulary
from zoo.hub import PretrainedLoadError

NUM_ITEMS = 12
RAW_IDS = [f"movie-{k}" for k in range(NUM_ITEMS)]
METRICS = {"valid": {"ndcg@10": 0.25, "hr@10": 0.5}, "test": {"ndcg@10": 0.2, "hr@10": 0.4, "mrr@10": 0.15}}
SHA = "0123456789abcdef0123456789abcdef01234567"
HISTORY = torch.tensor([[0, 0, 3, 5, 7], [1, 2, 3, 4, 12]])


def tiny(name: str = "sasrec", **overrides) -> zoo.SeqRecModel:
    torch.manual_seed(0)
    model = zoo.create(name, num_items=NUM_ITEMS, d_model=8, max_len=5, **overrides)
    model.item_vocab = Vocabulary(RAW_IDS)
    return model.eval()


def facts() -> dict:
    return {"name": "toy", "num_users": 3, "preprocessing": {"dedup": "all"}, "split": {"method": "loo"}}


def rewrite_weights(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    """Replace a folder's weights and record their digest, as a save of such weights would."""
    save_file(weights, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[zoo.SeqRecModel, Path]:
    model = tiny()
    return model, model.save_pretrained(tmp_path / "run", dataset_facts=facts(), metrics=METRICS)


# ---------------------------------------------------------------- save_pretrained


def test_save_writes_the_hub_layout_and_nothing_else(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in folder.parent.iterdir()] == ["run"], "the staging folder must be gone"
    config = json.loads((folder / "config.json").read_text())
    assert config["library_name"] == "seqrec-zoo" and config["library_version"] == zoo.__version__
    assert config["recipe"] == model.recipe.model_dump(mode="json")
    assert config["num_items"] == NUM_ITEMS and config["architecture"] == "sasrec"
    assert config["dataset"]["item_vocabulary"]["raw_ids"] == RAW_IDS
    assert config["dataset"]["max_len"] == 5 and config["dataset"]["split"] == {"method": "loo"}
    assert config["metrics"] == METRICS


def test_weights_are_safetensors_of_the_state_dict(saved):
    model, folder = saved
    stored = load_file(str(folder / "model.safetensors"))
    expected = model.state_dict()
    assert stored.keys() == expected.keys()
    for key, value in stored.items():
        assert torch.equal(value, expected[key]), key


def test_load_roundtrip_scores_vocabulary_and_eval_mode(saved):
    model, folder = saved
    loaded = zoo.create(f"local-dir:{folder}")
    assert not loaded.training
    assert loaded.recipe == model.recipe and loaded.num_items == NUM_ITEMS
    torch.testing.assert_close(loaded.score(HISTORY), model.score(HISTORY), rtol=0, atol=0)
    assert loaded.item_vocab == model.item_vocab
    also = zoo.create(f"local-dir:{folder}", pretrained=True)
    torch.testing.assert_close(also.score(HISTORY), model.score(HISTORY), rtol=0, atol=0)


def test_resave_of_a_loaded_model_keeps_its_vocabulary(saved, tmp_path):
    _, folder = saved
    again = zoo.create(f"local-dir:{folder}").save_pretrained(tmp_path / "again", metrics=METRICS)
    assert hub.read_config(again)["dataset"]["item_vocabulary"]["raw_ids"] == RAW_IDS


def test_save_into_an_existing_run_folder_keeps_other_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "config.json").write_text("old")
    tiny().save_pretrained(run, metrics=METRICS)
    assert (run / "metrics.jsonl").read_text() == "{}\n"
    assert hub.read_config(run)["metrics"] == METRICS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_save_leaves_the_old_files_untouched(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hub, "write_module", broken)
    with pytest.raises(OSError, match="disk full"):
        tiny().save_pretrained(run)
    assert (run / "config.json").read_text() == "old"
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_save_checks_vocabulary_size_and_metrics(tmp_path):
    model = tiny()
    model.item_vocab = Vocabulary(RAW_IDS[:-1])
    with pytest.raises(ValueError, match="11 raw ids but the model scores 12 items"):
        model.save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="metrics must map a split"):
        tiny().save_pretrained(tmp_path / "b", metrics={"ndcg@10": 0.1})
    with pytest.raises(ValueError, match="finite"):
        tiny().save_pretrained(tmp_path / "c", metrics={"test": {"ndcg@10": float("nan")}})
    assert not any(tmp_path.iterdir())


def test_dataset_facts_from_a_data_split(tmp_path):
    from zoo.data import InteractionDataset, Sequences

    rows = [[1, 2, 3, 4], [2, 3, 5], [6, 7, 8, 9, 10, 11, 12]]
    dataset = InteractionDataset("toy", Sequences.from_rows(rows), Vocabulary(RAW_IDS), Vocabulary(["u1", "u2", "u3"], padding=False))
    split = dataset.split("loo")
    folder = tiny().save_pretrained(tmp_path / "run", dataset_facts=split)
    stored = hub.read_config(folder)["dataset"]
    assert stored["name"] == "toy" and stored["num_interactions"] == 14
    assert stored["split"]["method"] == "loo" and stored["split"]["test_targets"] == 3
    assert stored["item_vocabulary"]["raw_ids"] == RAW_IDS


def test_model_card_metadata_and_page(saved):
    from huggingface_hub import ModelCard

    model, folder = saved
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "seqrec-zoo" and card.data.datasets == ["toy"]
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("validation", "ndcg@10"): 0.25, ("validation", "hr@10"): 0.5,
                       ("test", "ndcg@10"): 0.2, ("test", "hr@10"): 0.4, ("test", "mrr@10"): 0.15}
    text = card.text
    assert model.recipe.paper in text and "leave-one-out by time" in text
    assert "| NDCG@10 | 0.2500 | 0.2000 |" in text and "| MRR@10 |  | 0.1500 |" in text
    assert 'zoo.create("local-dir:' in text and "12 raw ids in index order" in text


def test_model_card_rejects_unknown_fields(tmp_path):
    with pytest.raises(ValueError, match="unknown model card fields \\['licence'\\]"):
        tiny().save_pretrained(tmp_path / "run", card={"licence": "mit"})


# ---------------------------------------------------------------- strict loading


def test_missing_and_unexpected_keys_are_listed(saved):
    _, folder = saved
    weights = load_file(str(folder / "model.safetensors"))
    dropped = "head.bias" if "head.bias" in weights else sorted(weights)[0]
    del weights[dropped]
    weights["encoder.extra.weight"] = torch.zeros(2)
    rewrite_weights(folder, weights)
    with pytest.raises(PretrainedLoadError) as info:
        zoo.create(f"local-dir:{folder}")
    message = str(info.value)
    assert f"missing keys (1): {dropped}" in message and "unexpected keys (1): encoder.extra.weight" in message


def test_shape_mismatch_is_an_error(saved):
    _, folder = saved
    weights = load_file(str(folder / "model.safetensors"))
    key = next(k for k, v in weights.items() if v.dim() == 2)
    weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])
    rewrite_weights(folder, weights)
    with pytest.raises(PretrainedLoadError, match=f"{key}: stored"):
        zoo.create(f"local-dir:{folder}")


def test_shape_changing_override_fails_strictly_but_others_apply(saved):
    _, folder = saved
    with pytest.raises(PretrainedLoadError, match="shapes do not fit"):
        zoo.create(f"local-dir:{folder}", d_model=16)
    loaded = zoo.create(f"local-dir:{folder}", **{"train.lr": 0.5})
    assert loaded.recipe.train.lr == 0.5


def test_num_items_must_match_the_weights(saved):
    _, folder = saved
    with pytest.raises(ValueError, match="trained on 12 items; num_items=13"):
        zoo.create(f"local-dir:{folder}", num_items=13)
    assert zoo.create(f"local-dir:{folder}", num_items=NUM_ITEMS).num_items == NUM_ITEMS


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    torch.manual_seed(1)
    source, target = Tied(), Tied()
    save_model(source, str(tmp_path / "model.safetensors"))
    assert len(load_file(str(tmp_path / "model.safetensors"))) == 1
    hub.load_weights(target, tmp_path / "model.safetensors")
    assert torch.equal(target.out.weight, source.embed.weight)
    assert target.out.weight is target.embed.weight


def test_pickle_weights_are_refused(saved, tmp_path):
    _, folder = saved
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="found pytorch_model.bin.*safetensors only.*never unpickles"):
        zoo.create(f"local-dir:{folder}")
    with pytest.raises(PretrainedLoadError, match="only .safetensors"):
        hub.load_weights(tiny(), folder / "pytorch_model.bin")


def test_config_errors_are_clear(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        zoo.create(f"local-dir:{folder}")
    (folder / "config.json").write_text(json.dumps({"library_name": "timm"}))
    with pytest.raises(PretrainedLoadError, match="not a seqrec-zoo model"):
        zoo.create(f"local-dir:{folder}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.create(f"local-dir:{tmp_path / 'absent'}")


def test_side_feature_buffers_come_back(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("sasrec", num_items=NUM_ITEMS, d_model=8, max_len=5,
                       item_encoder={"block": "llm_projector", "text_dim": 6})
    text = torch.randn(NUM_ITEMS + 1, 6)
    model.set_item_features(text=text)
    loaded = zoo.create(f"local-dir:{model.save_pretrained(tmp_path / 'run')}")
    torch.testing.assert_close(loaded.item_encoder.text, model.item_encoder.text, rtol=0, atol=0)
    assert loaded.item_encoder.text.abs().sum() > 0


# ---------------------------------------------------------------- raw item ids


def test_encode_and_decode_items(saved):
    _, folder = saved
    model = zoo.create(f"local-dir:{folder}")
    assert model.encode_items(["movie-4", "movie-0"]).tolist() == [5, 1]
    assert model.encode_items(["movie-4", "nope"], unknown="skip").tolist() == [5]
    with pytest.raises(KeyError, match="'nope'"):
        model.encode_items(["movie-4", "nope"])
    assert model.decode_items(torch.tensor([5, 1])) == ["movie-4", "movie-0"]
    assert model.decode_items([12]) == ["movie-11"]
    top = model.recommend([model.encode_items(["movie-1", "movie-2"]).tolist()], k=3)
    assert len(model.decode_items(top.items[0])) == 3


def test_a_model_without_vocabulary_says_so():
    model = zoo.create("sasrec", num_items=NUM_ITEMS, d_model=8)
    with pytest.raises(RuntimeError, match="no item vocabulary"):
        model.encode_items(["a"])


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("local-dir:runs/a", hub.Source("local-dir", "runs/a")),
        ("hf-hub:org/name", hub.Source("hf-hub", "org/name")),
        (f"hf-hub:org/name@{SHA}", hub.Source("hf-hub", "org/name", SHA)),
        ("sasrec.ml-100k", hub.Source("tag", "sasrec.ml-100k")),
        ("sasrec", hub.Source("tag", "sasrec")),
    ],
)
def test_parse_source(name, expected):
    assert hub.parse_source(name) == expected


@pytest.mark.parametrize("name", ["hf-hub:justname", "hf-hub:org/name@", "local-dir:", "runs/a", "my.yaml", "C:\\x"])
def test_parse_source_rejects_ambiguous_names(name):
    with pytest.raises(ValueError):
        hub.parse_source(name)


def test_bare_name_without_published_weights_says_how_to_get_some(tag_table):
    with pytest.raises(ValueError) as info:
        zoo.create("sasrec", pretrained=True)
    message = str(info.value)
    assert "no pretrained weights are published for 'sasrec'" in message
    assert "zoo train sasrec" in message and "local-dir:DIR" in message


def test_a_tagged_name_without_pretrained_says_so(tag_table):
    with pytest.raises(ValueError, match=r"'sigma.ml-100k' names pretrained weights of 'sigma', not a recipe: .*pretrained=True"):
        zoo.create("sigma.ml-100k", num_items=10)
    with pytest.raises(ValueError, match="unknown model 'nosuch.tag'"):
        zoo.create("nosuch.tag", num_items=10)


def test_a_recipe_file_with_pretrained_is_refused(tmp_path):
    with pytest.raises(ValueError, match="recipe files carry no weights"):
        zoo.create("recipes/sasrec.yaml", pretrained=True)


@pytest.fixture
def tag_table(monkeypatch):
    """An empty tag table: the bundled recipes' tags count as read (and are not there)."""
    monkeypatch.setattr(pretrained, "_TAGS", {})
    monkeypatch.setattr(pretrained, "_DEFAULT_TAG", {})
    monkeypatch.setattr(pretrained, "_DECLARED", [True])
    return pretrained


@pytest.mark.parametrize("new_items", [NUM_ITEMS + 9, NUM_ITEMS - 4, NUM_ITEMS])
def test_reset_items_keeps_every_weight_but_the_item_tables(tmp_path, new_items):
    trained = tiny("cnn-mamba")  # item embeddings, an item bias in the head, learned positions
    with torch.no_grad():
        trained.head.bias.fill_(1.0)  # its fresh initialisation is 0
    folder = trained.save_pretrained(tmp_path / "run")
    moved = zoo.create(f"local-dir:{folder}", num_items=new_items, reset_items=True)
    before, after = trained.state_dict(), moved.state_dict()
    item_tables = {"item_encoder.embedding.weight", "head.bias"}
    assert moved.num_items == new_items and getattr(moved, "item_vocab", None) is None
    for key, value in after.items():
        if key in item_tables:
            assert value.shape[0] == new_items + 1 and not torch.equal(value[: min(new_items, NUM_ITEMS) + 1].float(),
                                                                       before[key][: min(new_items, NUM_ITEMS) + 1].float())
        else:
            torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="trained on 12 items; num_items=21 .*reset_items=True"):
        zoo.create(f"local-dir:{folder}", num_items=21)
    with pytest.raises(ValueError, match="reset_items applies to pretrained weights only"):
        zoo.create("sasrec", num_items=5, reset_items=True)


def test_tags_are_declared_by_the_recipes(saved, tmp_path, monkeypatch, capsys):
    """A recipe's ``pretrained:`` section fills the table: bundled folder first, else its Hub repo."""
    from zoo.builder import recipe_path
    from zoo.cli import main as cli_main

    model, folder = saved
    recipes, weights = tmp_path / "recipes", tmp_path / "weights"
    recipes.mkdir()
    (recipes / "sasrec.yaml").write_text(recipe_path("sasrec").read_text() + (
        "pretrained:\n"
        "  hub: {dataset: ml-1m, hf_hub_id: org/toy, revision: " + SHA + "}\n"
        "  toy: {dataset: ml-100k, default: true}\n"
        "  later: {dataset: ml-20m}\n"), encoding="utf-8")
    (weights / "sasrec.toy").mkdir(parents=True)
    for file in folder.iterdir():
        (weights / "sasrec.toy" / file.name).write_bytes(file.read_bytes())
    monkeypatch.setattr(pretrained, "recipes_dir", lambda: recipes)
    monkeypatch.setattr(pretrained, "weights_dir", lambda: weights)
    for table, empty in (("_TAGS", {}), ("_DEFAULT_TAG", {}), ("_DECLARED", [])):
        monkeypatch.setattr(pretrained, table, empty)

    assert zoo.list_models(pretrained=True) == ["sasrec.hub", "sasrec.toy"]  # 'later' has weights nowhere yet
    assert zoo.list_models("sasrec", pretrained=True) == ["sasrec.hub", "sasrec.toy"]
    torch.testing.assert_close(zoo.create("sasrec", pretrained=True).score(HISTORY), model.score(HISTORY), rtol=0, atol=0)
    _, hub_tag = pretrained.find_pretrained("sasrec.hub")
    assert (hub_tag.hf_hub_id, hub_tag.revision, hub_tag.local_dir, hub_tag.dataset) == ("org/toy", SHA, None, "ml-1m")
    assert cli_main(["list", "--pretrained"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].split() == ["sasrec.hub", "ml-1m", f"hf-hub:org/toy@{SHA}"]
    assert rows[3].split() == ["sasrec.toy", "ml-100k", f"{METRICS['test']['ndcg@10']:.4f}", "bundled"]


@pytest.mark.parametrize("section, message", [
    ("  ml.100k: {dataset: ml-100k}\n", "no dots"),
    ("  a: {dataset: x, default: true}\n  b: {dataset: y, default: true}\n", "mark one"),
    ("  a: {dataset: x, hf_hub_id: noslash}\n", "hf_hub_id"),
    ("  a: {dataset: x, folder: there}\n", "folder"),
])
def test_bad_tag_sections_are_refused_with_the_file(tmp_path, section, message):
    from zoo.builder import recipe_path

    path = tmp_path / "mine.yaml"
    own_tags_removed = recipe_path("sasrec").read_text().split("\npretrained:")[0]
    path.write_text(own_tags_removed.replace("name: sasrec", "name: mine") + "\npretrained:\n" + section)
    with pytest.raises(ValueError, match=message):
        zoo.load_recipe(path)
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        pretrained.declared_tags(path)


def test_tag_table_defaults(tag_table):
    tag_table.register_pretrained("sasrec.a", pretrained.PretrainedTag(hf_hub_id="org/a"))
    tag_table.register_pretrained("sasrec.b", pretrained.PretrainedTag(hf_hub_id="org/b"), default=True)
    assert tag_table.list_pretrained() == ["sasrec.a", "sasrec.b"]
    assert tag_table.find_pretrained("sasrec")[0] == "sasrec.b"
    assert tag_table.find_pretrained("sasrec.a")[1].hf_hub_id == "org/a"
    tag_table.unregister_pretrained("sasrec.b")
    assert tag_table.find_pretrained("sasrec")[0] == "sasrec.a"
    with pytest.raises(ValueError, match="already registered"):
        tag_table.register_pretrained("sasrec.a", pretrained.PretrainedTag(hf_hub_id="org/a"))
    with pytest.raises(ValueError, match="needs a source"):
        pretrained.PretrainedTag()
    with pytest.raises(ValueError, match="no pretrained weights named 'sasrec.c'; published tags of 'sasrec': sasrec.a"):
        zoo.create("sasrec.c", pretrained=True)


def test_tag_with_a_bundled_folder(tag_table, saved):
    model, folder = saved
    tag_table.register_pretrained("sasrec.toy", pretrained.PretrainedTag(local_dir=str(folder)))
    loaded = zoo.create("sasrec", pretrained=True)
    torch.testing.assert_close(loaded.score(HISTORY), model.score(HISTORY), rtol=0, atol=0)


# ---------------------------------------------------------------- the Hub cache (offline)


def populate_cache(cache: Path, folder: Path, repo: str = "org/toy", sha: str = SHA, files=("config.json", "model.safetensors")) -> None:
    """The layout huggingface_hub reads: refs/main holds the commit, snapshots/<commit>/ the files."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    (root / "snapshots" / sha).mkdir(parents=True)
    for name in files:
        (root / "snapshots" / sha / name).write_bytes((folder / name).read_bytes())


def test_hf_hub_from_the_cache_offline(saved, tmp_path, monkeypatch):
    from huggingface_hub import constants

    model, folder = saved
    populate_cache(tmp_path / "cache", folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for name in ("hf-hub:org/toy", f"hf-hub:org/toy@{SHA}", "hf-hub:org/toy@main"):
        loaded = zoo.create(name, cache_dir=tmp_path / "cache")
        torch.testing.assert_close(loaded.score(HISTORY), model.score(HISTORY), rtol=0, atol=0)
        assert loaded.decode_items([1]) == ["movie-0"]


def test_registered_tag_resolves_through_the_cache(saved, tmp_path, tag_table, monkeypatch):
    from huggingface_hub import constants

    model, folder = saved
    populate_cache(tmp_path / "cache", folder)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    tag_table.register_pretrained("sasrec.toy", pretrained.PretrainedTag(hf_hub_id="org/toy", revision=SHA))
    for name in ("sasrec.toy", "sasrec"):
        loaded = zoo.create(name, pretrained=True, cache_dir=tmp_path / "cache")
        torch.testing.assert_close(loaded.score(HISTORY), model.score(HISTORY), rtol=0, atol=0)


def test_offline_cache_miss_says_why(saved, tmp_path, monkeypatch):
    from huggingface_hub import constants

    _, folder = saved
    populate_cache(tmp_path / "cache", folder, files=("config.json",))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="model.safetensors is not in the Hugging Face cache.*HF_HUB_OFFLINE is set"):
        zoo.create("hf-hub:org/toy", cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="config.json is not in the Hugging Face cache"):
        zoo.create("hf-hub:org/other", cache_dir=tmp_path / "cache")


def test_environment_variables_reach_the_hub_client(saved, tmp_path):
    """HF_HUB_OFFLINE and HF_HUB_CACHE as a user sets them: read when huggingface_hub is imported."""
    model, folder = saved
    populate_cache(tmp_path / "cache", folder)
    expected = model.score(HISTORY)
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import sys, torch, zoo\n"
        "m = zoo.create('hf-hub:org/toy')\n"
        f"h = torch.tensor({HISTORY.tolist()})\n"
        "torch.testing.assert_close(m.score(h), torch.load(sys.argv[1]), rtol=0, atol=0)\n"
        "print(m.decode_items([2]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "expected.pt")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "['movie-1']" in done.stdout


# ---------------------------------------------------------------- a fake Hub on the loopback interface (tests/fake_hub.py)


def test_download_from_a_fake_hub(saved, tmp_path, online):
    model, folder = saved
    files = {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors", "README.md")}
    with FakeHub() as fake:
        sha = fake.commit("org/toy", files)
        loaded = zoo.create("hf-hub:org/toy", endpoint=fake.url, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(loaded.score(HISTORY), model.score(HISTORY), rtol=0, atol=0)
    fetched = [path.split("?")[0].rsplit("/", 1)[-1] for method, path in fake.requests if method == "GET"]
    assert fetched == ["config.json", "model.safetensors"], "config.json first (download counting), then the weights"
    assert f"/org/toy/resolve/{sha}/model.safetensors" in {p for _, p in fake.requests}, "weights from the config's commit"
    snapshot = tmp_path / "cache" / "models--org--toy" / "snapshots" / sha
    assert (snapshot / "model.safetensors").is_file() and (snapshot / "config.json").is_file()


def test_fake_hub_without_safetensors_is_refused(saved, tmp_path, online):
    _, folder = saved
    files = {"config.json": (folder / "config.json").read_bytes(), "pytorch_model.bin": b"pickle"}
    with FakeHub() as fake:
        fake.commit("org/toy", files)
        with pytest.raises(FileNotFoundError, match="hf-hub:org/toy has no model.safetensors.*never unpickles"):
            zoo.create("hf-hub:org/toy", endpoint=fake.url, cache_dir=tmp_path / "cache")
    assert not any(path.endswith("pytorch_model.bin") for _, path in fake.requests)
