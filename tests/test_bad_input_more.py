"""Bad input and faults, the remaining points of issue 23: every error names the file or place and what was
expected, and the command line answers a user's error with one line and a non-zero exit, never a traceback.

Each test stands for something that failed before: a raw torch error from ``step`` / ``init_state``, a Python
``TypeError`` from ``zoo.create(123)``, a bare trained-folder path read as an unknown model, a malformed
``HF_ENDPOINT`` read as an unreachable Hub, torch's size-mismatch dump for a checkpoint of another run,
safetensors' own error type (no file, a traceback from the CLI) on a full disk, raw YAML parser text and
pydantic trailers on the command line. The fuzz tests at the end feed random data files, ``recommend`` /
``score`` / ``step`` inputs and ``config.json`` edits, and accept only the documented errors, quickly.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

import zoo
from zoo import checkpoint as ckpt
from zoo import cli, hub
from zoo.cli import main
from zoo.data import load_dataset
from zoo.data.synthetic import generate_dataset
from zoo.hub import PretrainedLoadError
from zoo.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TINY = {"d_model": 16, "encoder.0.repeat": 1, "train.batch_size": 16}
V = 20
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def data():
    return generate_dataset(num_users=40, num_items=V, length=(5, 10), seed=0).split("loo")


@pytest.fixture(scope="module")
def run_folder(data, tmp_path_factory):
    """A finished one-epoch run of a tiny SASRec: a trained folder with its checkpoint."""
    out = tmp_path_factory.mktemp("run") / "sasrec"
    train("sasrec", data, out, epochs=1, seed=0, overrides=TINY, progress=False)
    return out


@pytest.fixture
def folder(run_folder, tmp_path):
    """A copy of the run folder that a test may damage."""
    return Path(shutil.copytree(run_folder, tmp_path / "copy"))


def zoo_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``zoo ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "zoo.cli", "--threads", "1", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def one_line_error(err: str, command: str) -> str:
    """``err`` checked to be the command line's answer to a user error: one line, no traceback; returns it."""
    assert "Traceback" not in err, err
    assert err.startswith(f"zoo {command}: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def gru():
    return zoo.create("gru4rec", num_items=V, d_model=16).eval()


# ---------------------------------------------------------------- streaming: init_state and step


@pytest.mark.parametrize("batch_size", [-1, 0, 2.5, "2", True, None, torch.tensor(2.0)])
def test_init_state_refuses_a_batch_size_that_is_not_a_count_of_users(gru, batch_size):
    with pytest.raises(ValueError, match=r"init_state: batch_size must be an integer >= 1"):
        gru.init_state(batch_size)


def test_init_state_of_more_users_than_memory_holds_says_so(gru, monkeypatch):
    with pytest.raises(ValueError, match=r"init_state\(4,611,686,018,427,387,904\): the streaming state of .* does not "
                                         r"fit in memory .* stream fewer users at a time"):
        gru.init_state(2**62)  # torch: "Storage size calculation overflowed"
    def refuse(*args: Any) -> Any:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 8000000000000 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(gru.encoder, "init_state", refuse)
    with pytest.raises(ValueError, match=r"init_state\(1,000,000,000,000\).*does not fit in memory"):
        gru.init_state(10**12)


def test_init_state_lets_other_errors_through(gru, monkeypatch):
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in a block")
    monkeypatch.setattr(gru.encoder, "init_state", broken)
    with pytest.raises(RuntimeError, match="a bug in a block"):
        gru.init_state(2)


def test_step_refuses_a_state_of_another_batch_model_or_kind(gru):
    state = gru.init_state(2)
    mamba = zoo.create("mamba4rec", num_items=V, d_model=16).eval()
    wider = zoo.create("gru4rec", num_items=V, d_model=32).eval()
    cases = [
        (torch.tensor([1, 2, 3]), state, r"state\[0\] should have shape \(3,\), got \(2,\)"),  # another batch
        (torch.tensor([1, 2]), wider.init_state(2), r"state\[1\]\[0\] should have shape \(1, 2, 16\), got \(1, 2, 32\)"),
        (torch.tensor([1, 2]), mamba.init_state(2), r"state\[1\] should hold 2 parts, got 4 parts"),
        (torch.tensor([1, 2]), None, r"state should hold 2 parts, got NoneType"),
        (torch.tensor([1, 2]), (), r"state should hold 2 parts, got 0 parts"),
    ]
    for ids, given_state, message in cases:
        with pytest.raises(ValueError, match=rf"step: {message}; pass the state that init_state\(\d\) or the previous step"):
            gru.step(ids, given_state)
    with pytest.raises(ValueError, match=r"step: state\[1\] should hold 4 parts, got 2 parts"):
        mamba.step(torch.tensor([1, 2]), state)


@pytest.mark.parametrize("ids, message", [
    ([1, 2], "item_ids_t must be a LongTensor of shape \\(B,\\), got list"),
    (torch.tensor([], dtype=torch.long), "with B >= 1, got torch.int64 \\(0,\\)"),
    (torch.tensor([[1, 2]]), "LongTensor of shape \\(B,\\)"),
    (torch.tensor([1.0, 2.0]), "LongTensor of shape \\(B,\\)"),
    (torch.tensor([0, 2]), "streamed item indices must be in 1..20"),
])
def test_step_refuses_item_ids_that_are_not_a_batch_of_items(gru, ids, message):
    with pytest.raises(ValueError, match=message):
        gru.step(ids, gru.init_state(2))


def test_checked_steps_still_equal_scoring_across_batch_sizes(gru):
    """The state check (its layout cached per batch size) lets every state ``step`` returns through."""
    histories = torch.tensor([[3, 7, 1, 9], [2, 2, 5, 4], [20, 1, 1, 6]])
    with torch.no_grad():
        for rows in (histories[:2], histories, histories[1:2]):
            state = gru.init_state(len(rows))
            for column in rows.T:
                scores, state = gru.step(column, state)
            torch.testing.assert_close(scores[:, 1:], gru.score(rows)[:, 1:], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- zoo.create


@pytest.mark.parametrize("name", [123, None, 2.5, b"sasrec", ["sasrec"]])
def test_create_refuses_what_is_not_a_name_path_or_recipe(name):
    with pytest.raises(ValueError, match=r"expected a model name \('sasrec'\), a recipe file .* got"):
        zoo.create(name, num_items=5)


@pytest.mark.parametrize("num_items", [0, -1, 2.5, "5", True, [5]])
def test_create_refuses_a_num_items_that_is_not_a_count(num_items):
    with pytest.raises(ValueError, match=r"num_items must be an integer >= 1"):
        zoo.create("sasrec", num_items=num_items, d_model=16)
    assert zoo.create("sasrec", num_items=np.int64(5), d_model=16).num_items == 5


def test_a_trained_folder_without_local_dir_says_how_to_load_it(run_folder, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=rf"'{run_folder}' is a trained folder, not a recipe: load it with "
                                         rf"zoo.create\('local-dir:{run_folder}'\)"):
        zoo.create(str(run_folder))
    with pytest.raises(ValueError, match=rf"did you mean zoo.create\('local-dir:{run_folder}'\)"):
        zoo.create(str(run_folder), pretrained=True)
    with pytest.raises(ValueError, match=rf"'{tmp_path}' is a folder, not a recipe"):
        zoo.create(str(tmp_path), num_items=5)
    shutil.copytree(run_folder, tmp_path / "mine", ignore=shutil.ignore_patterns("checkpoints"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no pretrained weights are named 'mine', but a trained folder is: load it with "
                                         "'local-dir:mine'"):
        zoo.create("mine", pretrained=True)


def test_a_folder_named_like_a_bundled_recipe_does_not_shadow_it(run_folder, monkeypatch):
    monkeypatch.chdir(run_folder.parent)  # holds the trained folder "sasrec"
    assert zoo.create("sasrec", num_items=5, d_model=16).recipe.name == "sasrec"


# ---------------------------------------------------------------- the Hub address


@pytest.mark.parametrize("url", ["not a url", "http://", "ftp://host", "http://host:port", "huggingface.co"])
def test_a_malformed_hub_address_is_named_before_any_request(url, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.monotonic()
    with pytest.raises(ValueError, match=rf"endpoint is '{url}', not a Hub URL: expected http\(s\)://host\[:port\]"):
        zoo.create("hf-hub:org/name", endpoint=url)
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(ValueError, match=rf"HF_ENDPOINT is '{url}', not a Hub URL"):
        hub.download_folder("org/name")
    assert time.monotonic() - started < 2


def test_cli_names_a_malformed_hf_endpoint():
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "recommend", "hf-hub:org/name", "--history", "1"],
                          capture_output=True, text=True, timeout=60,
                          env={**ENV, "HF_ENDPOINT": "not a url", "HF_HUB_OFFLINE": "0"})
    assert done.returncode == 2
    assert "HF_ENDPOINT is 'not a url', not a Hub URL" in one_line_error(done.stderr, "recommend")


# ---------------------------------------------------------------- trained folders: config.json and weights


@pytest.mark.parametrize("edit, where", [
    (lambda c: c.update(dataset=-1), "'dataset' must be a mapping"),
    (lambda c: c["dataset"].update(item_vocabulary="x"), "'dataset.item_vocabulary' must be a mapping of 'raw_ids'"),
    (lambda c: c["dataset"]["item_vocabulary"].update(raw_ids=[[1]] * V), "'dataset.item_vocabulary'"),
    (lambda c: c["dataset"].update(preprocessing=[]), "'dataset.preprocessing' must be a mapping"),
    (lambda c: c.update(metrics="high"), "'metrics' must be a mapping"),
])
def test_malformed_dataset_facts_in_config_json_name_the_file(folder, edit, where):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedLoadError, match=rf"{folder / 'config.json'}: {where}"):
        zoo.create(f"local-dir:{folder}")


def test_non_utf8_config_json_names_the_file(folder):
    (folder / "config.json").write_bytes(b'{"library_name": "caf\xe9"}')
    with pytest.raises(PretrainedLoadError, match=rf"{folder / 'config.json'}: not valid JSON .*utf-8"):
        zoo.create(f"local-dir:{folder}")


def test_a_failed_safetensors_write_is_an_os_error_naming_the_file(tmp_path):
    def full(name: str) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(OSError) as info:
        ckpt.write_safetensors(tmp_path / "w.safetensors", full)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "w.safetensors")
    def odd(name: str) -> None:
        raise SafetensorError("something else")
    with pytest.raises(OSError, match="safetensors could not write the file .something else."):
        ckpt.write_safetensors(tmp_path / "w.safetensors", odd)


def test_a_full_disk_while_saving_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """safetensors' own ``SafetensorError`` from a failed write, as ``save_pretrained`` and checkpoints meet it."""
    model = zoo.create("sasrec", num_items=V, d_model=16)
    def full(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OSError, match=r"No space left on device: '.*model\.safetensors'"):
        model.save_pretrained(tmp_path / "out")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(OSError, match=r"No space left on device: '.*step-1.*model\.safetensors'"):
        ckpt.save_checkpoint(tmp_path / "checkpoints", "step-1", model, optimizer, {})
    assert not (tmp_path / "out").exists() and ckpt.latest_checkpoint(tmp_path / "checkpoints") is None


FULL_DISK = """
set -e
mount -t tmpfs -o size=600k tmpfs "$DISK"
set +e
"$PYTHON" -m zoo.cli --threads 1 train sasrec --data "$LOG" --out "$DISK/run" --epochs 1 --quiet --set d_model=64 \
    --set train.batch_size=16 2>"$ERR"
echo "first=$?"
mount -o remount,size=50m tmpfs "$DISK"
"$PYTHON" -m zoo.cli --threads 1 train sasrec --data "$LOG" --out "$DISK/run" --epochs 1 --quiet --set d_model=64 \
    --set train.batch_size=16 >/dev/null 2>"$ERR.again"
echo "second=$?"
"$PYTHON" -c "import zoo, sys; print('loads', zoo.create('local-dir:' + sys.argv[1]).num_items)" "$DISK/run"
"""


def test_cli_training_on_a_full_tmpfs_fails_in_one_line_and_resumes_when_there_is_room(tmp_path):
    """A real full disk (a 600 kB tmpfs in a private mount namespace; skipped where that is not allowed): one line
    naming the file and what to do, exit 2; with room again the same command finishes the run."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a private tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    log = tmp_path / "log.csv"
    rng = random.Random(0)
    log.write_text("user,item,timestamp\n" + "".join(f"u{u},i{rng.randrange(V)},{1000 + t}\n" for u in range(40) for t in range(8)))
    env = {**ENV, "DISK": str(disk), "LOG": str(log), "PYTHON": sys.executable, "ERR": str(tmp_path / "err")}
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", FULL_DISK], capture_output=True,
                          text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    if "first=" not in done.stdout:
        pytest.skip(f"cannot mount a private tmpfs here: {done.stderr.strip()}")
    err = (tmp_path / "err").read_text()
    assert "first=2" in done.stdout, (done.stdout, err)
    assert "No space left on device" in one_line_error(err, "train") and "run the same command again" in err
    assert "second=0" in done.stdout and "loads 20" in done.stdout, (done.stdout, done.stderr,
                                                                      (tmp_path / "err.again").read_text())


# ---------------------------------------------------------------- checkpoints


def test_a_checkpoint_of_another_shape_is_a_different_run_without_torchs_dump(folder, data):
    with pytest.raises(ValueError) as info:
        train("sasrec", data, folder, epochs=1, seed=0, overrides={**TINY, "d_model": 32}, progress=False)
    message = str(info.value)
    assert "holds a checkpoint of a different run (it differs in ['recipe.d_model']" in message
    assert "weight tensors differ in shape" in message and "zoo train --restart" in message
    assert "size mismatch" not in message and "\n" not in message


def test_damaged_checkpoint_files_name_the_file(folder, data):
    step = ckpt.latest_checkpoint(folder / "checkpoints")
    state = step / ckpt.STATE_FILE
    good = state.read_bytes()
    state.write_bytes(b"\xff" + good)
    with pytest.raises(ValueError, match=rf"{state}: not valid UTF-8 JSON"):
        train("sasrec", data, folder, epochs=1, seed=0, overrides=TINY, progress=False)
    document = json.loads(good)
    document.pop("files")  # a checkpoint without digests: the file itself must say it is broken
    state.write_text(json.dumps(document))
    (step / ckpt.OPTIMIZER_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match=rf"{step / ckpt.OPTIMIZER_FILE}: not a readable safetensors file"):
        train("sasrec", data, folder, epochs=1, seed=0, overrides=TINY, progress=False)
    (folder / "checkpoints" / ckpt.LATEST).write_bytes(b"\xfe\xff")
    with pytest.raises(ValueError, match="latest: not a checkpoint name"):
        ckpt.latest_checkpoint(folder / "checkpoints")


# ---------------------------------------------------------------- the command line: one line, no traceback


def test_cli_errors_are_one_line_with_the_place(run_folder, folder, tmp_path, capsys):
    truncated = folder / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:100])
    cases = [
        (["recommend", str(folder), "--history", "1,2"], f"{truncated}: not a readable safetensors file"),
        (["info", "sasrec", "--set", "d_model=[1,"],
         "override 'd_model' (value '[1,'): not valid YAML: expected the node content, but found '<stream end>' "
         "(line 1, column 4)"),
        (["info", "sasrec", "--set", "encoder.0.layers.0.num_heads=3"],
         "recipes/sasrec.yaml: encoder[0].layers[0]: block 'transformer_layer': self_attention: d_model 64 must be "
         "divisible by num_heads 3 (>= 1) (override 'encoder.0.layers.0.num_heads')"),
        (["convert", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o"), "--config", "n_heads=[1,"],
         "--config n_heads='[1,': not valid YAML"),
        (["info", str(run_folder)], f"is a trained folder, not a recipe: load it with zoo.create('local-dir:{run_folder}')"),
        (["train", "sasrec", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "r")],
         f"dataset '{tmp_path / 'none.csv'}' is neither a built-in name"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = one_line_error(capsys.readouterr().err, argv[0])
        assert expected in err, (argv, err)
        assert "[type=" not in err and "<unicode string>" not in err


def test_cli_lists_several_recipe_errors_one_per_line(capsys):
    assert main(["info", "sasrec", "--set", "d_model=x", "--set", "max_len=-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "[type=" not in err
    first, *problems = err.splitlines()
    assert first.endswith("recipes/sasrec.yaml: 2 problems") and len(problems) == 2, err
    assert all(line.startswith("  ") and "(override '" in line for line in problems), err


def test_cli_os_errors_name_the_file_and_what_to_do(tmp_path, capsys, monkeypatch):
    def full(args: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "model.safetensors"))
    monkeypatch.setattr(cli, "cmd_info", full)
    assert main(["info", "sasrec"]) == 2
    err = one_line_error(capsys.readouterr().err, "info")
    assert f"{tmp_path / 'run' / 'model.safetensors'}: No space left on device; free some disk space" in err
    assert "run the same command again" in err


def test_cli_unexpected_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    def bug(args: Any) -> int:
        raise AttributeError("'NoneType' object has no attribute 'x'")
    monkeypatch.setattr(cli, "cmd_info", bug)
    assert main(["info", "sasrec"]) == 1
    err = one_line_error(capsys.readouterr().err, "info")
    assert "unexpected AttributeError" in err and "--debug" in err
    for argv in (["--debug", "info", "sasrec"], ["info", "sasrec", "--debug"]):
        with pytest.raises(AttributeError):
            main(argv)
    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_info", interrupted)
    assert main(["info", "sasrec"]) == 130
    assert capsys.readouterr().err == "zoo info: interrupted\n"


def test_cli_in_a_subprocess_one_line_then_the_traceback_with_debug(folder):
    (folder / "model.safetensors").write_bytes(b"garbage")
    done = zoo_cli("recommend", str(folder), "--history", "1,2")
    assert done.returncode == 2
    assert "not a readable safetensors file" in one_line_error(done.stderr, "recommend")
    debug = zoo_cli("recommend", str(folder), "--history", "1,2", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "PretrainedLoadError" in debug.stderr


def test_a_long_error_is_clipped_to_a_few_lines(capsys):
    assert cli.report_error("x", ValueError("\n".join(f"line {i}" for i in range(100)))) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == cli.MAX_ERROR_LINES + 1 and lines[0] == "zoo x: error: line 0"
    assert lines[-1] == f"  ... ({100 - cli.MAX_ERROR_LINES} more lines)"


# ---------------------------------------------------------------- fuzzing: only documented errors, quickly


FUZZ = settings(max_examples=50, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MAX_RSS_GROWTH_MB = 400  # a fuzz run may not grow the process by more than this


def documented_only(call: Callable[[], Any], seconds: float, errors: tuple[type, ...] = (ValueError,)) -> Any:
    """``call()``'s result, else None after one of ``errors`` with a message; anything else, or a slow answer, fails."""
    start = time.perf_counter()
    try:
        return call()
    except errors as exc:
        assert str(exc).strip(), "an error must say what is wrong"
        return None
    finally:
        assert time.perf_counter() - start < seconds, f"took {time.perf_counter() - start:.1f} s"


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def rss_bound():
    """The memory bound of the fuzz tests: the process's peak may grow by :data:`MAX_RSS_GROWTH_MB` at most."""
    before = max_rss_mb()
    yield
    assert max_rss_mb() - before < MAX_RSS_GROWTH_MB


CSV_LOG = "user,item,timestamp,rating\n" + "".join(f"u{u},i{(u * 3 + t) % 7},{1000 + t},{t % 5}\n"
                                                      for u in range(6) for t in range(5))
INTER_LOG = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"u{u}\ti{(u * 3 + t) % 7}\t{t % 5}\t{1000 + t}\n" for u in range(6) for t in range(5))
DATA_FILES = [(CSV_LOG, "log.csv"), (CSV_LOG.replace(",", "\t"), "log.tsv"), (CSV_LOG.split("\n", 1)[1], "log.csv"),
              (INTER_LOG, "log.inter")]
JUNK = st.sampled_from([b"\x00", b"\xff\xfe", b",", b"\t", b"\n", b'"', b"nan", b"inf", b"1e309", b"9" * 40, b"\r",
                        b"\xef\xbb\xbf", b"2023-13-45T99:99", b":token", b"user", b"\x85", b"-"]) | st.binary(max_size=6)


@FUZZ
@given(base=st.sampled_from(DATA_FILES), edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 8), JUNK),
                                                         min_size=1, max_size=4))
def test_mutated_data_files_raise_only_data_errors(base, edits, rss_bound):
    text, name = base
    raw = bytearray(text.encode())
    for at, cut, junk in edits:
        place = int(at * len(raw))
        raw[place:place + cut] = junk
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(bytes(raw))
        documented_only(lambda: load_dataset(path).split("loo"), seconds=3.0)


@pytest.fixture(scope="module")
def sasrec():
    return zoo.create("sasrec", num_items=V, d_model=16).eval()


ATOMS = st.sampled_from([0, 1, 5, V, V + 1, -1, 2**63, 2.0, 1.5, float("nan"), True, None, "1", b"1", np.int64(3),
                         np.float32(2), torch.tensor(3), torch.tensor([1, 2]), [], [1], {}, 10**30])
HISTORY = (st.lists(ATOMS, max_size=4) | st.lists(st.integers(-2, V + 2), max_size=60)
           | st.builds(lambda values, dtype: torch.tensor(values, dtype=dtype), st.lists(st.integers(-2, V + 2), max_size=4),
                       st.sampled_from([torch.long, torch.int32, torch.float32, torch.bool, torch.uint8])))
HISTORIES = st.lists(HISTORY, max_size=3) | ATOMS
K = st.sampled_from([1, 3, V, 0, V + 1, -1, 2.0, True, None, "3", np.int64(2), torch.tensor(2), 10**20])
TIMESTAMPS = st.sampled_from([None, [[1.0] * 3], [[float("nan")]], "x", [[1, 2, 3]] * 3])


@FUZZ
@given(histories=HISTORIES, k=K, timestamps=TIMESTAMPS, exclude_seen=st.booleans())
def test_recommend_inputs_raise_only_value_errors(sasrec, histories, k, timestamps, exclude_seen, rss_bound):
    documented_only(lambda: sasrec.recommend(histories, k=k, timestamps=timestamps, exclude_seen=exclude_seen), 2.0)


def test_recommend_refuses_a_zero_dimensional_tensor_as_histories(sasrec):
    with pytest.raises(ValueError, match="histories must be a sequence of histories.*0-d tensor"):
        sasrec.recommend(torch.tensor(3), k=3)


SCORE_INPUTS = st.builds(lambda rows, width, low: torch.randint(low, V + 2, (rows, width)), st.integers(0, 3),
                         st.integers(0, 60), st.integers(-1, 1)) | st.sampled_from(
    [torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), [[1, 2]], torch.ones(3, dtype=torch.long),
     torch.ones(1, 2, 3, dtype=torch.long), np.ones((2, 3), dtype=np.int64), torch.tensor([[2**40]])])


@FUZZ
@given(item_ids=SCORE_INPUTS, timestamps=st.sampled_from([None, torch.zeros(2, 3), torch.full((2, 3), float("nan")),
                                                          "x", torch.zeros(3)]))
def test_score_inputs_raise_only_value_errors(sasrec, item_ids, timestamps, rss_bound):
    documented_only(lambda: sasrec.score(item_ids, timestamps), 2.0)


@FUZZ
@given(batch=st.sampled_from([1, 2, 3, 0, -1, 2.0, None, "2", np.int64(2)]),
       ids=st.sampled_from([torch.tensor([1, 2]), torch.tensor([0]), torch.tensor([V + 1, 1]), torch.tensor([1.0]), [1],
                            torch.tensor([[1]]), torch.tensor([1, 2, 3])]),
       state_kind=st.sampled_from(["own", "none", "empty", "half", "other"]),
       timestamps=st.sampled_from([None, torch.zeros(2), torch.zeros(5), torch.tensor([float("inf"), 1.0])]))
def test_streaming_inputs_raise_only_value_errors(gru, batch, ids, state_kind, timestamps, rss_bound):
    def stream() -> Any:
        state = gru.init_state(batch)
        given_state = {"own": state, "none": None, "empty": (), "half": (state[0],),
                       "other": (state[1], state[0])}[state_kind]
        return gru.step(ids, given_state, timestamps)
    documented_only(stream, 2.0)


CONFIG_VALUES = st.sampled_from([None, True, -1, 0, 10**12, 2.5, "x", [], {}, [1, "a"], {"a": 1}])


@FUZZ
@given(choice=st.randoms(use_true_random=False), value=CONFIG_VALUES)
def test_edited_config_json_raises_only_documented_errors(run_folder, choice, value, rss_bound):
    config = json.loads((run_folder / "config.json").read_text())
    config.pop(hub.WEIGHTS_SHA256)

    def places(node: Any, here: tuple = ()) -> list[tuple]:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        found = [here] if here else []
        for key, child in list(items)[:30]:  # not every raw id of the vocabulary
            found += places(child, (*here, key))
        return found

    place = choice.choice(places(config))
    parent = config
    for key in place[:-1]:
        parent = parent[key]
    parent[place[-1]] = value
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(shutil.copytree(run_folder, Path(scratch) / "f", ignore=shutil.ignore_patterns("checkpoints")))
        (folder / "config.json").write_text(json.dumps(config))
        model = documented_only(lambda: zoo.create(f"local-dir:{folder}"), 5.0, (ValueError, FileNotFoundError))
        if model is not None:
            documented_only(lambda: model.recommend([[1, 2]], k=3), 2.0)
