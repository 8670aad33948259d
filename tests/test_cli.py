"""The ``zoo`` command line, end to end on a small generated log: list, info, train, eval, recommend."""

from __future__ import annotations

import subprocess
import sys

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


def test_train_takes_the_precision(log_csv, tmp_path, monkeypatch):
    import zoo.train

    asked = []
    autocast = zoo.train._autocast
    monkeypatch.setattr(zoo.train, "_autocast", lambda device, precision: asked.append(precision) or autocast(device, precision))
    code = main(["train", "gru4rec", "--data", str(log_csv), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--set", "d_model=16", "--precision", "bf16", "--quiet"])
    assert code == 0 and asked == ["bf16"]


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


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["list", "--pretrained"]])
def test_help_and_list_do_not_import_torch(argv):
    """`zoo --help` / `zoo list` answer from the recipe files: torch (seconds to import) is never loaded."""
    done = run_python(f"import sys, zoo.cli\ntry:\n    zoo.cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
                      "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    assert done.stdout.strip().splitlines()[-1] == "NO-TORCH", done.stderr


def test_import_zoo_is_light_and_create_still_works():
    done = run_python("import sys, zoo\nlight = 'torch' not in sys.modules\nm = zoo.create('sasrec', num_items=5)\n"
                      "from zoo.registry import get_block\nprint(light, type(m).__name__, get_block('gru').__name__)")
    assert done.stdout.split() == ["True", "SeqRecModel", "GRU"], done.stderr


def test_a_closed_pipe_ends_quietly():
    """`zoo list | head` must not end in a BrokenPipeError traceback."""
    done = subprocess.run(f"{sys.executable} -c 'import zoo.cli, sys; sys.exit(zoo.cli.main([\"list\", \"--blocks\"]))' | true",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_metrics_sort_by_name_then_cut_off():
    from zoo.cli import metric_order

    assert sorted(["ndcg@10", "hr@20", "hr@5", "hr@10", "ndcg@5"], key=metric_order) == ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10"]


def test_compare_prints_one_table_and_one_plot(trained, trained_sampled, tmp_path, capsys):
    import json

    import zoo

    plot = tmp_path / "curves.png"
    assert main(["compare", str(trained), str(trained_sampled), "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | recipe | test HR@10 | test NDCG@10")
    rows = [line.split(" | ") for line in lines[2:4]]
    for row, folder in zip(rows, (trained, trained_sampled)):
        result = json.loads((folder / "result.json").read_text())
        full = result["full_ranking"]["test"]
        assert row[2:5] == [f"{full[m]:.4f}" for m in ("hr@10", "ndcg@10", "mrr@10")]  # full ranking, comparable
        assert row[5] == f"{result['best_epoch']} / {result['epochs_run']}"
        parameters = sum(p.numel() for p in zoo.create(f"local-dir:{folder}").parameters())
        assert row[7].rstrip(" |") == f"{parameters:,}"
    assert plot.stat().st_size > 1000
    assert main(["compare", str(tmp_path)]) == 2
    assert "result.json does not exist" in capsys.readouterr().err


DAMAGES = {
    "truncated weights": ("model.safetensors", lambda data: data[: len(data) // 2], "model.safetensors: not a readable safetensors"),
    "non-UTF-8 log": ("metrics.jsonl", lambda data: b"\xff\xfe" + data, "metrics.jsonl: not UTF-8"),
    "torn log line": ("metrics.jsonl", lambda data: data + b'{"epoch": 9, "val', "metrics.jsonl, line"),
    "log line without the metric": ("metrics.jsonl", lambda data: data + b'{"epoch": 9}\n', "no field 'valid.ndcg@10'"),
    "result holding a list": ("result.json", lambda data: b"[1, 2]", "result.json: no field 'test'"),
    "result with a text epoch": ("result.json", lambda data: data.replace(b'"best_epoch": ', b'"best_epoch": "x'), "not valid UTF-8 JSON"),
    "config without a recipe": ("config.json", lambda data: b"{}", "config.json: no field 'recipe.name'"),
    "result with a string count": ("result.json", None, "field 'epochs_run' is str"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_compare_names_the_damaged_file(trained, tmp_path, capsys, damage):
    """A run folder with a damaged file is one line naming the file (and field or line), exit 2, no traceback."""
    import json
    import shutil

    name, change, expected = DAMAGES[damage]
    folder = tmp_path / "run"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("checkpoints"))
    path = folder / name
    if change is None:
        result = json.loads(path.read_text())
        path.write_text(json.dumps({**result, "epochs_run": "many"}))
    else:
        path.write_bytes(change(path.read_bytes()))
    assert main(["compare", str(folder), "--plot", "none"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_threads_option_sets_torchs_threads():
    done = run_python("import torch, zoo.cli\nzoo.cli.main(['--threads', '1', 'info', 'gru4rec', '--num-items', '10'])\n"
                      "a = torch.get_num_threads()\nzoo.cli.main(['--threads', '2', 'info', 'gru4rec', '--num-items', '10'])\n"
                      "print(a, torch.get_num_threads())")
    assert done.stdout.split()[-2:] == ["1", "2"], done.stderr
    assert main(["--threads", "0", "info", "gru4rec"]) == 2


def test_more_epochs_continue_a_finished_run(log_csv, tmp_path):
    """``zoo train ... --epochs 3`` on a finished 2-epoch run trains epoch 3 (in a subprocess, as a user runs it)."""
    args = ["train", "gru4rec", "--data", str(log_csv), "--out", str(tmp_path / "run"), "--set", "d_model=16",
            "--set", "train.batch_size=32", "--quiet"]
    for epochs in ("2", "3"):
        done = subprocess.run([sys.executable, "-m", "zoo.cli", *args, "--epochs", epochs], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_info_on_a_block_shows_its_arguments():
    """``zoo info mamba`` explains the block and lists what a recipe may set, with defaults."""
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "info", "mamba"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("mamba: sequence block") and "selective_scan" in done.stdout
    arguments = lines[next(i for i, line in enumerate(lines) if line.startswith("arguments")) + 1:]
    assert {line.split()[0]: line.split()[-1] for line in arguments}["d_state"] == "16"
    assert not any(line.split()[0] in ("d_model", "num_items", "max_len") for line in arguments)


def test_recommend_shows_the_titles_of_a_built_in_dataset():
    """A model trained on ml-100k lists each recommended id with its MovieLens title."""
    from zoo.data import load_dataset

    done = subprocess.run([sys.executable, "-m", "zoo.cli", "recommend", "sasrec.ml-100k", "--history", "50,172,181",
                           "-k", "3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    header, _, *rows = done.stdout.splitlines()
    assert header.split() == ["rank", "item", "score", "title"] and len(rows) == 3
    dataset = load_dataset("ml-100k")
    title_of = dict(zip(dataset.item_vocab.raw_ids, dataset.item_features.text[1:]))
    for row in rows:
        rank, item, score, *title = row.split()
        assert " ".join(title) == title_of[item] != ""
