"""Data-parallel training: 2 CPU processes under torchrun (gloo) match one process with the same global batch.

Each process takes half of every global batch of 16 sequences (shards of unequal target
counts, and an odd last batch), divides its summed loss by the global target count and the
gradients are summed, so the update equals the single-process one up to float summation
order. Dropout is off (its draws differ per process by design). Tolerance: weights within
1e-5 absolute + 1e-4 relative after 2 epochs; logged losses within 1e-5 relative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zoo import distributed as dist_utils
from zoo.data.synthetic import generate_dataset
from zoo.train import train

OVERRIDES = {"d_model": 16, "encoder.0.repeat": 1, "train.batch_size": 16, "item_encoder.dropout": 0.0,
             "encoder.0.layers.0.dropout": 0.0, "encoder.0.layers.0.attention_dropout": 0.0}
# Plain SGD (momentum), unlike Adam, is sensitive to the gradient's scale: a mean taken twice shows.
SETTINGS = dict(epochs=2, seed=0, overrides=OVERRIDES, config={"optimizer": "sgd", "lr": 0.1}, progress=False,
                save_model=False, plot=False)

WORKER = """
import json, os, sys
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from zoo.data.synthetic import generate_dataset
from zoo.train import train

out = sys.argv[1]
data = generate_dataset(num_users=75, num_items=30, length=(4, 30), seed=0).split("loo")
result = train("sasrec", data, out, **eval(sys.argv[2]))
rank = os.environ["RANK"]
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"history": result.history, "test": result.test}, f)
"""


def test_shards_are_disjoint_contiguous_and_cover_the_batch():
    indices = np.arange(11)
    parts = [dist_utils.shard(indices, dist_utils.DistContext(rank=r, world_size=3)) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert dist_utils.shard(indices, dist_utils.DistContext()) is indices


def test_two_gloo_processes_match_single_process_training(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "worker.py"), str(out), repr(SETTINGS)]
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = generate_dataset(num_users=75, num_items=30, length=(4, 30), seed=0).split("loo")
        single = train("sasrec", data, tmp_path / "single", **SETTINGS)  # meanwhile, in this process
    finally:
        torch.set_num_threads(threads)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output.decode()[-3000:]

    expected = single.model.state_dict()
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    for name, value in expected.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the processes"
        torch.testing.assert_close(ranks[0][name], value, atol=1e-5, rtol=1e-4, msg=name)
    logs = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert logs[0]["test"] == logs[1]["test"]
    losses = [r["loss"] for r in logs[0]["history"]]
    assert losses == pytest.approx([r["loss"] for r in single.history], rel=1e-5)
    assert logs[0]["test"]["ndcg@10"] == pytest.approx(single.test["ndcg@10"], abs=1e-3)
    # Only rank 0 wrote the checkpoint and the log.
    assert (out / "checkpoints" / "latest").is_file() and (out / "metrics.jsonl").is_file()
