"""Kill a training process with SIGKILL mid-epoch, resume it, and get exactly the uninterrupted run's result.

Tolerance: none. On CPU with one thread and deterministic algorithms the resumed run must give
bit-identical weights, losses and metrics (dropout is on, so the restored RNG state matters).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from zoo.checkpoint import latest_checkpoint
from zoo.data.synthetic import generate_dataset
from zoo.train import train

SETTINGS = dict(epochs=3, seed=0, checkpoint_every=2, progress=False, save_model=False, plot=False,
                overrides={"d_model": 16, "encoder.0.repeat": 1, "train.batch_size": 16})

WORKER = """
import sys, time
import torch
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
import zoo.train as trainer
from zoo.data.synthetic import generate_dataset

step = trainer._Run._step
def slowed(self, batch):  # slow each step down so the test can kill the run mid-epoch
    time.sleep(0.1)
    return step(self, batch)
trainer._Run._step = slowed
data = generate_dataset(num_users=80, num_items=30, length=(6, 16), seed=0).split("loo")
trainer.train("sasrec", data, sys.argv[1], **eval(sys.argv[2]))
"""


def dataset():
    return generate_dataset(num_users=80, num_items=30, length=(6, 16), seed=0).split("loo")


def without_timing(history):
    timing = {"train_seconds", "eval_seconds", "targets_per_second", "wall"}
    return [{k: v for k, v in record.items() if k not in timing} for record in history]


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_result(tmp_path, deterministic):
    run_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(run_dir), repr(SETTINGS)],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    try:
        reference = train("sasrec", dataset(), tmp_path / "reference", **SETTINGS)  # meanwhile, uninterrupted
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "latest").exists():
            assert process.poll() is None, f"the worker ended before its first checkpoint: {process.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    folder = latest_checkpoint(run_dir / "checkpoints")
    _, epoch, step = folder.name.split("-")[1:]
    assert int(epoch) < SETTINGS["epochs"] and int(step) > 0, f"killed at {folder.name}: not mid-epoch"

    resumed = train("sasrec", dataset(), run_dir, resume=True, **SETTINGS)
    assert without_timing(resumed.history) == without_timing(reference.history)
    assert resumed.valid == reference.valid and resumed.test == reference.test
    ref_state, res_state = reference.model.state_dict(), resumed.model.state_dict()
    assert ref_state.keys() == res_state.keys()
    for name in ref_state:
        assert torch.equal(ref_state[name], res_state[name]), name
