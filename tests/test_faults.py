"""Faults: damaged weights, concurrent runs, foreign folders, changed data, and a writer killed or out of disk
at every step of every multi-file write (a trained folder, a checkpoint, the end of a training run).

A kill is simulated in-process: from the chosen step on, every file-system step (``os.replace``,
``rename``, ``link``, ``unlink``, ``rmdir``, ``fsync``) raises :class:`Killed`, so not even the
writer's clean-up runs, as after SIGKILL. Afterwards a loader, or a resumed run, must see the
old consistent state or the new one: never a mix, never a silently wrong result.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import zoo
from zoo import checkpoint as ckpt
from zoo import hub
from zoo.cli import main as cli_main
from zoo.data import InteractionDataset, Sequences
from zoo.data.synthetic import generate_dataset
from zoo.data.vocab import Vocabulary
from zoo.hub import PretrainedLoadError
from zoo.train import NotARunFolderError, RunFolderBusyError, run_folder_lock, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

NUM_ITEMS = 12
STEPS = ("replace", "rename", "link", "unlink", "rmdir", "fsync")
TINY = {"d_model": 16, "encoder.0.repeat": 1, "train.batch_size": 16}
RUN = dict(epochs=1, seed=0, overrides=TINY, progress=False)
TIMING = {"train_seconds", "eval_seconds", "targets_per_second", "wall"}


class Killed(BaseException):
    """The simulated death of the writing process (a BaseException: no ``except Exception`` swallows it)."""


class Killer:
    """Counts the file-system steps taken; the ``at``-th (from 0) and every later one raise :class:`Killed`."""

    def __init__(self, at: int | None) -> None:
        self.at, self.steps, self.dead = at, 0, False

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            if self.dead or self.steps == self.at:
                self.dead = True
                raise Killed(f"killed at step {self.at}")
            self.steps += 1
            return real(*args, **kwargs)

        return step


@contextmanager
def killed_at(at: int | None) -> Iterator[Killer]:
    """Run the body with the process killed at file-system step ``at`` (None: count the steps only)."""
    killer, originals = Killer(at), {name: getattr(os, name) for name in STEPS}
    for name, real in originals.items():
        setattr(os, name, killer.wrap(real))
    try:
        yield killer
    except Killed:
        pass
    finally:
        for name, real in originals.items():
            setattr(os, name, real)


def kill_points(write: Callable[[], Any]) -> int:
    """How many file-system steps ``write`` takes."""
    with killed_at(None) as killer:
        write()
    return killer.steps


def tiny(seed: int, d_model: int = 8) -> zoo.SeqRecModel:
    torch.manual_seed(seed)
    model = zoo.create("sasrec", num_items=NUM_ITEMS, d_model=d_model, max_len=5)
    model.item_vocab = Vocabulary([f"i{k}" for k in range(NUM_ITEMS)])
    return model.eval()


def save(model: zoo.SeqRecModel, folder: Path, note: str) -> Path:
    return model.save_pretrained(folder, metrics={"test": {"ndcg@10": 0.1}}, card={"notes": note})


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def loaded_state(folder: Path) -> dict[str, torch.Tensor] | None:
    """The weights ``zoo.create`` loads from ``folder``, or None when there is no trained folder there yet."""
    try:
        return zoo.create(f"local-dir:{folder}").state_dict()
    except FileNotFoundError:
        return None


def leftovers(folder: Path) -> list[str]:
    """Hidden entries a writer left behind (temporary files, an unfinished update)."""
    return sorted(p.name for p in folder.rglob(".*"))


def record_digest(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(config))


def forget_digest(folder: Path) -> None:
    """Make ``folder`` look written before digests were recorded."""
    config = json.loads((folder / "config.json").read_text())
    del config["weights_sha256"]
    (folder / "config.json").write_text(json.dumps(config))


# ---------------------------------------------------------------- weights that are not what was saved


def test_the_config_records_the_weights_digest_and_two_processes_write_the_same_bytes(tmp_path):
    folder = save(tiny(0), tmp_path / "here", "n")
    config = json.loads((folder / "config.json").read_text())
    assert config["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_faults import save, tiny
        save(tiny(0), __import__("pathlib").Path(sys.argv[1]), "n")
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "there")], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (folder / name).read_bytes() == (tmp_path / "there" / name).read_bytes(), name


def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(tmp_path):
    folder = save(tiny(0), tmp_path / "run", "n")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: the file still parses, one weight changed
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PretrainedLoadError) as info:
        zoo.create(f"local-dir:{folder}")
    message = str(info.value)
    assert message.startswith(f"{folder / 'model.safetensors'}: its content") and str(folder / "config.json") in message
    assert "re-download" in message and "save the trained folder again" in message


def test_a_folder_written_before_digests_were_recorded_still_loads(tmp_path):
    model = tiny(0)
    folder = save(model, tmp_path / "run", "n")
    forget_digest(folder)
    assert same_weights(loaded_state(folder), model.state_dict())


def test_a_malformed_digest_is_refused(tmp_path):
    folder = save(tiny(0), tmp_path / "run", "n")
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = "abc"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedLoadError, match="config.json: 'weights_sha256' must be 64 lowercase hex digits"):
        zoo.create(f"local-dir:{folder}")


@pytest.mark.parametrize("digest", ["recorded", "absent"])
def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path, digest):
    folder = save(tiny(0), tmp_path / "run", "n")
    weights = load_file(str(folder / "model.safetensors"))
    weights["item_encoder.embedding.weight"][1] = float("nan")
    weights["item_encoder.position.weight"][0, 0] = float("inf")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    record_digest(folder) if digest == "recorded" else forget_digest(folder)
    with pytest.raises(PretrainedLoadError, match=r"model.safetensors: 2 tensors hold NaN or infinity \(.*"
                                                  r"item_encoder.position.weight\)"):
        zoo.create(f"local-dir:{folder}")


def test_non_finite_weights_are_not_saved(tmp_path):
    model = tiny(0)
    with torch.no_grad():
        model.item_encoder.embedding.weight[3, 1] = float("nan")
    with pytest.raises(ValueError, match="not saved: 1 weight tensors hold NaN or infinity "
                                         r"\(item_encoder.embedding.weight\).*train.grad_clip"):
        save(model, tmp_path / "run", "n")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- killed while writing


@pytest.mark.parametrize("before", ["hashed", "legacy", "none"])
def test_save_pretrained_killed_at_any_step_leaves_the_old_or_the_new_folder(tmp_path, before):
    """``legacy``: the old folder predates digests, so only the order of the writes keeps old and new apart."""
    old, new = tiny(0), tiny(1)
    template = tmp_path / "template"
    if before != "none":
        save(old, template, "old")
        (template / "metrics.jsonl").write_text("{}\n")  # a run folder: other files stay
        if before == "legacy":
            forget_digest(template)
    expected_card = {"old": (template / "README.md").read_bytes() if before != "none" else None}
    if before != "none":
        shutil.copytree(template, tmp_path / "count")
    points = kill_points(lambda: save(new, tmp_path / "count", "new"))
    expected_card["new"] = (tmp_path / "count" / "README.md").read_bytes()
    seen = []
    for at in range(points):
        folder = tmp_path / f"killed-{at}"
        if before != "none":
            shutil.copytree(template, folder)
        with killed_at(at) as killer:
            save(new, folder, "new")
        assert killer.dead, f"the save took fewer than {at + 1} steps"
        state = loaded_state(folder)
        which = ("none" if state is None else "old" if same_weights(state, old.state_dict()) else
                 "new" if same_weights(state, new.state_dict()) else "mixed")
        seen.append(which)
        if which in ("old", "new"):  # the model card goes with its config and weights
            assert hub.current_file(folder, "README.md").read_bytes() == expected_card[which], at
        save(new, folder, "new")  # the next write finishes or discards what the killed one left
        assert same_weights(loaded_state(folder), new.state_dict())
        assert leftovers(folder) == [] and not list(tmp_path.glob(f".killed-{at}.*"))
        assert hub.read_config(folder)["weights_sha256"]
    first = "none" if before == "none" else "old"
    assert seen == [first] * seen.count(first) + ["new"] * seen.count("new"), seen
    assert seen.count("new") >= 1 and seen.count(first) >= 1


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def checkpoint_snapshot(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model weights, optimiser state, trainer state) restored from ``folder``."""
    torch.manual_seed(123)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    optimizer = torch.optim.Adam(model.parameters())
    state = ckpt.load_checkpoint(folder, model, optimizer)
    ckpt.load_moving_average(folder, nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2)))
    best = ckpt.load_best_weights(folder)
    return model.state_dict(), {"optimizer": optimizer.state_dict()["state"], "best": best}, state


def test_checkpoint_killed_at_any_step_resumes_the_old_or_the_new_one(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    make_step(model, optimizer, 0)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    template = tmp_path / "template"
    ckpt.save_checkpoint(template, "step-1", model, optimizer, {"epoch": 1}, best=best, ema=model)
    old = checkpoint_snapshot(ckpt.latest_checkpoint(template))
    make_step(model, optimizer, 1)

    def write(root: Path) -> None:  # the best weights did not change: linked from the previous checkpoint
        ckpt.save_checkpoint(root, "step-2", model, optimizer, {"epoch": 2}, ema=model)

    shutil.copytree(template, tmp_path / "count")
    points = kill_points(lambda: write(tmp_path / "count"))
    new = checkpoint_snapshot(ckpt.latest_checkpoint(tmp_path / "count"))
    seen = []
    for at in range(points):
        root = tmp_path / f"killed-{at}"
        shutil.copytree(template, root)
        with killed_at(at) as killer:
            write(root)
        assert killer.dead
        weights, tensors, state = checkpoint_snapshot(ckpt.latest_checkpoint(root))
        which = "old" if state["epoch"] == 1 else "new"
        expected = old if which == "old" else new
        assert same_weights(weights, expected[0]) and state == expected[2], at
        assert all(same_weights(tensors["optimizer"][i], expected[1]["optimizer"][i]) for i in expected[1]["optimizer"])
        assert same_weights(tensors["best"], expected[1]["best"])
        seen.append(which)
        write(root)  # the next save clears what the killed one left
        assert leftovers(root) == [] and sorted(p.name for p in root.iterdir()) == ["latest", "step-2"]
    assert seen == ["old"] * seen.count("old") + ["new"] * seen.count("new") and "old" in seen and "new" in seen


def test_a_corrupted_checkpoint_file_is_refused_naming_it(tmp_path):
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    folder = ckpt.save_checkpoint(tmp_path, "step-1", model, optimizer, {}, best=model.state_dict())
    data = bytearray((folder / ckpt.BEST_FILE).read_bytes())
    data[-1] ^= 0x10
    (folder / ckpt.BEST_FILE).write_bytes(bytes(data))
    ckpt.load_checkpoint(folder, model, optimizer)  # the other files are intact
    with pytest.raises(ValueError, match=f"{folder / ckpt.BEST_FILE}: its content does not match.*resume=False.*restart"):
        ckpt.load_best_weights(folder)


@pytest.fixture(scope="module")
def data():
    return generate_dataset(num_users=40, num_items=30, length=(6, 12), pattern="markov", seed=0).split("loo")


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def test_training_killed_at_any_step_of_its_writes_resumes_to_the_uninterrupted_result(data, tmp_path, deterministic):
    """Every file-system step of a one-epoch run: the first metrics log, the checkpoint, the metrics log after it,
    the trained folder, the curve and the summary."""
    reference = train("sasrec", data, tmp_path / "reference", **RUN)
    points = kill_points(lambda: train("sasrec", data, tmp_path / "count", **RUN))
    assert points >= 25
    for at in range(points):
        out = tmp_path / f"killed-{at}"
        with killed_at(at) as killer:
            train("sasrec", data, out, **RUN)
        assert killer.dead
        state = loaded_state(out)
        assert state is None or same_weights(state, reference.model.state_dict()), at
        resumed = train("sasrec", data, out, **RUN)
        assert without_timing(resumed.history) == without_timing(reference.history), at
        assert resumed.test == reference.test and same_weights(loaded_state(out), reference.model.state_dict())
        for name in ("model.safetensors", "config.json"):
            assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), (at, name)
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert without_timing(logged) == without_timing(reference.history), at
        assert json.loads((out / "result.json").read_text())["test"] == reference.test
        assert (out / "curve.png").is_file() and leftovers(out) == [], at


# ---------------------------------------------------------------- a full disk


def torn_writer(real: Callable[..., Any]) -> Callable[..., Any]:
    """A safetensors writer on a disk that fills up half-way: half a file, then ENOSPC."""
    def write(tensors: Any, path: str, *args: Any, **kwargs: Any) -> None:
        real(tensors, path, *args, **kwargs)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    return write


def test_a_full_disk_never_leaves_a_torn_folder_or_checkpoint(tmp_path, monkeypatch):
    old, new = tiny(0), tiny(1)
    folder = save(old, tmp_path / "run", "old")
    optimizer = torch.optim.SGD(old.parameters(), lr=0.1)
    ckpt.save_checkpoint(folder / "checkpoints", "step-1", old, optimizer, {"epoch": 1})
    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "save_file", torn_writer(ckpt.save_file))  # every safetensors write goes through it
        with pytest.raises(OSError, match="No space left"):
            save(new, folder, "new")
        with pytest.raises(OSError, match="No space left"):
            ckpt.save_checkpoint(folder / "checkpoints", "step-2", new, optimizer, {"epoch": 2})
    assert same_weights(loaded_state(folder), old.state_dict()) and leftovers(folder) == []
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(folder / "checkpoints"), new, optimizer)["epoch"] == 1
    assert same_weights(new.state_dict(), old.state_dict())


FULL_TMPFS = """
import json, os, sys, traceback
sys.path.insert(0, {tests!r})
from pathlib import Path
import torch
from zoo import checkpoint as ckpt
from test_faults import leftovers, loaded_state, same_weights, save, tiny

disk, old, new = Path(sys.argv[1]), tiny(0, d_model=64), tiny(1, d_model=64)  # 200 kB of weights
folder = save(old, disk / "run", "old")
optimizer = torch.optim.SGD(old.parameters(), lr=0.1)
ckpt.save_checkpoint(folder / "checkpoints", "step-1", old, optimizer, {{"epoch": 1}})
with open(disk / "filler", "wb", buffering=0) as handle:  # fill the disk but for a few kB
    try:
        while handle.write(b"x" * 4096):
            pass
    except OSError:
        pass
os.truncate(disk / "filler", os.path.getsize(disk / "filler") - 16384)
failures = []
for write in (lambda: save(new, folder, "new"),
              lambda: ckpt.save_checkpoint(folder / "checkpoints", "step-2", new, optimizer, {{"epoch": 2}})):
    try:
        write()
    except Exception as exc:
        failures.append(f"{{type(exc).__name__}} in {{traceback.extract_tb(exc.__traceback__)[-1].name}}: {{exc}}")
report = {{"failures": failures, "old": same_weights(loaded_state(folder), old.state_dict()),
          "leftovers": leftovers(folder),
          "epoch": ckpt.load_checkpoint(ckpt.latest_checkpoint(folder / "checkpoints"), tiny(2, d_model=64),
                                        optimizer)["epoch"]}}
(disk / "filler").unlink()
save(new, folder, "new")
report["new"] = same_weights(loaded_state(folder), new.state_dict())
print(json.dumps(report))
"""


def test_a_full_tmpfs_never_leaves_a_torn_folder_or_checkpoint(tmp_path):
    """The same on a real 2 MB tmpfs, mounted in a private mount namespace (skipped where that is not allowed)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a private tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = FULL_TMPFS.format(tests=str(Path(__file__).parent))
    command = f'mount -t tmpfs -o size=2m tmpfs "$1" && exec "$2" -c "$3" "$1"'
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", command, "sh", str(disk),
                           sys.executable, script], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0 and ("mount" in done.stderr or "unshare" in done.stderr) and "Traceback" not in done.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert len(report["failures"]) == 2 and all("No space left" in f for f in report["failures"]), report
    assert report["old"] and report["leftovers"] == [] and report["epoch"] == 1 and report["new"], report


# ---------------------------------------------------------------- run folders


def test_a_second_run_into_a_busy_folder_fails_at_once_naming_the_holder(data, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from zoo.train import run_folder_lock\n"
         "with run_folder_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(300)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusyError, match=f"{out} is being written by another training run "
                                                     rf"\(pid {holder.pid} on .*, since .*\)"):
            train("sasrec", data, out, **RUN)
    finally:
        holder.kill()  # a killed holder releases the lock
        holder.wait()
    assert train("sasrec", data, out, **RUN).epochs_run == 1


def test_the_lock_is_released_after_a_run_and_a_failed_one(data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="optimizer 'nope'"):
        train("sasrec", data, out, **{**RUN, "config": {"optimizer": "nope"}})
    train("sasrec", data, out, **RUN)
    with run_folder_lock(out):  # free again
        pass


def foreign_folder(root: Path) -> Path:
    """A trained folder someone keeps their own checkpoints in: not a training run's folder."""
    folder = save(tiny(0), root / "mine", "n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "keep.me").write_text("precious")
    return folder


def test_training_into_a_folder_of_other_files_is_refused_and_changes_nothing(data, tmp_path, capsys):
    folder = foreign_folder(tmp_path)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(NotARunFolderError, match=f"{folder} is not empty and is not a training run folder"):
        train("sasrec", data, folder, **RUN)
    assert cli_main(["train", "sasrec", "--data", "x.csv", "--out", str(folder), "--restart", "--quiet"]) == 2
    assert f"zoo train: error: {folder} is not empty and is not a training run folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotARunFolderError, match="is a file"):
        train("sasrec", data, tmp_path / "file", **RUN)
    (tmp_path / "empty").mkdir()
    assert train("sasrec", data, tmp_path / "empty", **RUN).epochs_run == 1


def test_a_run_folder_written_before_run_markers_still_resumes(data, tmp_path):
    first = train("sasrec", data, tmp_path / "run", **RUN)
    (tmp_path / "run" / "run.lock").unlink()
    again = train("sasrec", data, tmp_path / "run", **RUN)
    assert again.history == first.history


def test_a_lost_metrics_log_is_rebuilt_on_resume(data, tmp_path):
    out = tmp_path / "run"
    first = train("sasrec", data, out, **{**RUN, "epochs": 2})
    (out / "metrics.jsonl").write_text(json.dumps(first.history[0]) + "\n")  # as if killed before the last rewrite
    (out / "result.json").unlink()
    again = train("sasrec", data, out, **{**RUN, "epochs": 2})
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == first.history
    assert json.loads((out / "result.json").read_text())["test"] == again.test == first.test


def changed_content(split: Any) -> Any:
    """The same dataset with two interactions of the first user swapped: every count stays the same."""
    dataset = split.dataset
    items = dataset.sequences.items.copy()
    first = int(np.flatnonzero(items[1:] != items[0])[0]) + 1
    items[[0, first]] = items[[first, 0]]
    sequences = Sequences(dataset.sequences.offsets, items, dataset.sequences.timestamps)
    changed = InteractionDataset(dataset.name, sequences, dataset.item_vocab, dataset.user_vocab, facts=dataset.facts)
    return changed.split("loo")


def test_resuming_with_changed_data_of_the_same_size_is_refused(data, tmp_path):
    out = tmp_path / "run"
    train("sasrec", data, out, **RUN)
    changed = changed_content(data)
    assert changed.train.num_interactions == data.train.num_interactions
    with pytest.raises(ValueError, match=r"different run \(it differs in \['data.sha256'\] \(same sizes, other "
                                         r"interactions.*resume=False \(`zoo train --restart`\)"):
        train("sasrec", changed, out, **RUN)
    assert train("sasrec", changed, out, resume=False, **RUN).epochs_run == 1


def test_a_checkpoint_without_a_data_digest_still_resumes(data, tmp_path):
    out = tmp_path / "run"
    first = train("sasrec", data, out, **RUN)
    state_file = ckpt.latest_checkpoint(out / "checkpoints") / ckpt.STATE_FILE
    state = json.loads(state_file.read_text())
    del state["fingerprint"]["data"]["sha256"]  # as an older version wrote it
    state_file.write_text(json.dumps(state))
    assert train("sasrec", data, out, **RUN).history == first.history
    state["fingerprint"]["data"]["interactions"] += 1
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"differs in \['data.interactions'\]"):
        train("sasrec", data, out, **RUN)
