"""The ``zoo`` command line, end to end on a small generated log: list, info, train, eval, recommend."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.cli import main


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    """A small interaction log: 60 users walking a 5-item cycle over 30 items, so it is learnable."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "log.csv"
    lines = ["user,item,timestamp"]
    for user in range(60):
        start = rng.integers(0, 30)
        for t in range(int(rng.integers(6, 15))):
            lines.append(f"u{user},i{(start + t * 5 + user % 5) % 30},{1_000_000 + 3600 * t}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, log_csv):
    out = tmp_path_factory.mktemp("run") / "gru"
    code = main(["train", "gru4rec", "--data", str(log_csv), "--out", str(out), "--epochs", "3",
                 "--set", "d_model=16", "--set", "train.batch_size=32", "--quiet"])
    assert code == 0
    return out


def test_list_models_and_blocks(capsys):
    assert main(["list"]) == 0
    assert "sasrec" in capsys.readouterr().out
    assert main(["list", "--blocks", "--kind", "fusion"]) == 0
    out = capsys.readouterr().out
    assert "mixing" in out and "gru" not in out.split()


def test_info_shows_parameters_flops_and_tree(capsys):
    assert main(["info", "gru4rec", "--num-items", "100", "--set", "d_model=8"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "FLOPs / sequence" in out and "streaming (step)" in out and "gru(" in out
    assert "d_model / max_len        8 / 50" in out


def test_train_writes_a_loadable_folder(trained, capsys):
    for name in ("config.json", "model.safetensors", "README.md", "metrics.jsonl", "curve.png"):
        assert (trained / name).is_file(), name


def test_eval_prints_metrics(trained, log_csv, capsys):
    assert main(["eval", str(trained), "--data", str(log_csv), "--k", "5", "10"]) == 0
    out = capsys.readouterr().out
    assert "NDCG" in out and "@10" in out and "60 users, fp32" in out


def test_eval_in_bf16(trained, log_csv, capsys):
    assert main(["eval", str(trained), "--data", str(log_csv), "--precision", "bf16"]) == 0
    assert "60 users, bf16" in capsys.readouterr().out


def test_recommend_takes_and_returns_raw_ids(trained, capsys):
    assert main(["recommend", str(trained), "--history", "i1,i6,i11", "-k", "4", "--exclude-seen"]) == 0
    out = capsys.readouterr().out
    items = [line.split()[1] for line in out.strip().splitlines()[2:]]
    assert len(items) == 4 and all(i.startswith("i") for i in items)
    assert not {"i1", "i6", "i11"} & set(items)


def test_recommend_unknown_items(trained, capsys):
    assert main(["recommend", str(trained), "--history", "i1,nope", "-k", "3"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["recommend", str(trained), "--history", "i1,nope", "-k", "3", "--unknown", "skip"]) == 0
    assert main(["recommend", str(trained), "--history", "nope", "--unknown", "skip"]) == 2
    assert "nothing to recommend" in capsys.readouterr().err


def test_eval_refuses_other_data(trained, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("user,item,timestamp\n" + "\n".join(f"u{u},x{t},{t}" for u in range(5) for t in range(4)) + "\n")
    assert main(["eval", str(trained), "--data", str(other)]) == 2
    assert "differ" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_sampled(tmp_path_factory, log_csv):
    """A folder whose recipe selects and reports on 1 + 10 sampled candidates (train.eval_protocol)."""
    out = tmp_path_factory.mktemp("run") / "gru-sampled"
    code = main(["train", "gru4rec", "--data", str(log_csv), "--out", str(out), "--epochs", "2", "--set", "d_model=16",
                 "--set", "train.batch_size=32", "--set", "train.eval_protocol=sampled", "--set", "train.eval_negatives=10",
                 "--quiet"])
    assert code == 0
    return out


def test_train_reports_the_recipes_protocol_and_full_ranking(trained_sampled, log_csv, capsys):
    # The module fixture trained already; training again resumes the finished run and prints its table.
    assert main(["train", "gru4rec", "--data", str(log_csv), "--out",
                 str(trained_sampled), "--epochs", "2", "--set", "d_model=16", "--set", "train.batch_size=32",
                 "--set", "train.eval_protocol=sampled", "--set", "train.eval_negatives=10", "--quiet"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert header.split("  ")[0] == "metric" and "valid (1 + 10 sampled)" in header
    assert "test (1 + 10 sampled)" in header and "test (full ranking)" in header


def test_eval_follows_the_recipes_protocol_unless_told(trained_sampled, trained, log_csv, capsys):
    assert main(["eval", str(trained_sampled), "--data", str(log_csv)]) == 0
    out = capsys.readouterr().out
    assert "sampled ranking, the recipe's protocol" in out and "1 + 10 negatives, seed 0" in out
    assert main(["eval", str(trained_sampled), "--data", str(log_csv), "--mode", "full"]) == 0
    assert "(test split, full ranking, 60 users" in capsys.readouterr().out
    assert main(["eval", str(trained), "--data", str(log_csv), "--mode", "sampled", "--negatives", "5"]) == 0
    assert "1 + 5 negatives" in capsys.readouterr().out
    assert main(["eval", str(trained), "--data", str(log_csv)]) == 0
    assert "full ranking, the recipe's protocol" in capsys.readouterr().out
