"""The trainer end to end on small generated data: outputs, learning, early stopping, optimiser groups, schedules."""

from __future__ import annotations

import copy
import json
import os
import math

import numpy as np
import pytest
import torch

import zoo
from zoo.data.synthetic import generate_dataset
from zoo.checkpoint import latest_checkpoint
from zoo.evaluate import evaluate
from zoo.train import build_optimizer, parse_metric, train

TINY = {"d_model": 16, "encoder.0.repeat": 1, "train.batch_size": 16}
TIMING = {"train_seconds", "eval_seconds", "targets_per_second", "wall"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def data():
    return generate_dataset(num_users=80, num_items=30, length=(6, 16), pattern="markov", noise=0.1, seed=0).split("loo")


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train("sasrec", data, out, epochs=4, seed=0, overrides=TINY, progress=True), out  # bars on stderr


def test_run_writes_logs_curve_and_a_loadable_trained_folder(finished, data):
    result, out = finished
    for name in ("config.json", "model.safetensors", "README.md", "metrics.jsonl", "curve.png", "result.json"):
        assert (out / name).is_file(), name
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4] == [r["epoch"] for r in result.history]
    for record in lines:
        assert {"loss", "lr", "valid", "train_seconds", "eval_seconds", "targets_per_second", "wall"} <= set(record)
        assert math.isfinite(record["loss"]) and record["lr"] == pytest.approx(1e-3)
    # The kept weights are the best epoch's: validating them again gives the best logged value.
    best = max(lines, key=lambda r: r["valid"]["ndcg@10"])
    assert result.best_epoch == best["epoch"]
    assert result.valid["ndcg@10"] == pytest.approx(best["valid"]["ndcg@10"], abs=1e-12)
    loaded = zoo.create(f"local-dir:{out}")
    test = evaluate(loaded, data, which="test", ks=(10,))
    assert {k.lower(): v for k, v in test.metrics.items()}["ndcg@10"] == pytest.approx(result.test["ndcg@10"], abs=1e-12)
    assert loaded.decode_items([1, 2]) == ["1", "2"]
    assert json.loads((out / "result.json").read_text())["best_epoch"] == result.best_epoch


def test_artifacts_get_the_permissions_of_the_umask(data, tmp_path):
    """Every file and folder of a run is readable as the umask allows, not the temp files' 0600 / 0700."""
    previous = os.umask(0o022)
    try:
        train("sasrec", data, tmp_path, epochs=1, seed=0, overrides=TINY, progress=False, plot=False)
    finally:
        os.umask(previous)
    paths = [p for p in tmp_path.rglob("*") if p.name != "run.lock"]
    assert any(p.name == "model.safetensors" for p in paths) and any(p.parent.name == "checkpoints" for p in paths)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in paths}
    expected = {name: oct(0o755 if (tmp_path / name).is_dir() else 0o644) for name in modes}
    assert modes == expected


def test_training_learns_the_markov_chain(data, tmp_path):
    result = train("sasrec", data, tmp_path, epochs=12, seed=0, progress=False, save_model=False, plot=False,
                   overrides={**TINY, "d_model": 32}, config={"lr": 1e-2})
    # Chance level is ~ 10 / 30 items for HR@10; most next items follow a fixed successor.
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 0.5
    assert result.test["hr@10"] > 0.75


def test_finished_run_resumes_to_the_same_result_without_training(finished, data):
    result, out = finished
    again = train("sasrec", data, out, epochs=4, seed=0, overrides=TINY, progress=False)
    assert again.history == result.history and again.test == result.test


def test_a_checkpoint_written_before_new_recipe_fields_still_resumes(data, tmp_path):
    settings = dict(epochs=1, seed=0, overrides=TINY, progress=False, save_model=False, plot=False)
    first = train("sasrec", data, tmp_path, **settings)
    state_file = latest_checkpoint(tmp_path / "checkpoints") / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for name in ("negatives", "eval_protocol", "eval_negatives"):  # as an older version wrote it
        del state["fingerprint"]["recipe"]["train"][name]
    state_file.write_text(json.dumps(state))
    again = train("sasrec", data, tmp_path, **settings)
    assert again.history == first.history and again.test == first.test
    state["fingerprint"]["recipe"]["train"]["lr"] = 0.5  # a real difference is still refused
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="different run.*recipe"):
        train("sasrec", data, tmp_path, **settings)


@pytest.mark.parametrize("edit", [
    # a recipe's ``pretrained:`` tags say where weights are published
    {"pretrained": {"ml-100k": {"dataset": "ml-100k", "default": True}}},
    # ``paper``, ``description`` and ``deviations`` document a recipe
    {"paper": "another title", "description": "reworded", "deviations": ["a new note"]},
], ids=["pretrained tags", "prose"])
def test_editing_what_does_not_change_the_run_does_not_stop_it_from_resuming(data, tmp_path, edit):
    """A run continues when its recipe's publishing tags or prose change."""
    settings = dict(epochs=1, seed=0, overrides=TINY, progress=False, save_model=False, plot=False)
    first = train("sasrec", data, tmp_path, **settings)
    state_file = latest_checkpoint(tmp_path / "checkpoints") / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["fingerprint"]["recipe"].update(edit)
    state_file.write_text(json.dumps(state))
    again = train("sasrec", data, tmp_path, **settings)
    assert again.history == first.history and again.test == first.test


def test_raising_the_epochs_continues_a_finished_run_to_the_longer_runs_result(data, tmp_path):
    """4 epochs, then 6 on the same folder: the same as 6 at once (no learning-rate schedule spans the epochs)."""
    settings = dict(seed=0, overrides=TINY, progress=False, save_model=False, plot=False)
    first = train("sasrec", data, tmp_path / "twice", epochs=4, **settings)
    longer = train("sasrec", data, tmp_path / "twice", epochs=6, **settings)
    at_once = train("sasrec", data, tmp_path / "once", epochs=6, **settings)
    assert longer.history[:4] == first.history and len(longer.history) == 6
    without_wall = [{k: v for k, v in r.items() if k not in TIMING} for r in longer.history]
    assert without_wall == [{k: v for k, v in r.items() if k not in TIMING} for r in at_once.history]
    assert longer.test == at_once.test


def test_raising_the_patience_continues_a_run_that_stopped_early(data, tmp_path):
    settings = dict(epochs=8, seed=0, overrides=TINY, progress=False, save_model=False, plot=False)
    stopped = train("sasrec", data, tmp_path, config={"lr": 1e-12, "patience": 1}, **settings)
    assert stopped.stopped_early and stopped.epochs_run == 2
    again = train("sasrec", data, tmp_path, config={"lr": 1e-12, "patience": 3}, **settings)
    assert again.stopped_early and again.epochs_run == 4 and again.history[:2] == stopped.history


def test_a_schedule_over_the_epochs_cannot_be_lengthened(data, tmp_path):
    settings = dict(seed=0, overrides=TINY, progress=False, save_model=False, plot=False, config={"scheduler": "cosine"})
    train("sasrec", data, tmp_path, epochs=2, **settings)
    with pytest.raises(ValueError, match=r"differs in \['recipe.train.epochs'\] - its learning-rate schedule spans "
                                         r"the epochs.*--restart"):
        train("sasrec", data, tmp_path, epochs=3, **settings)


def test_resuming_a_different_run_is_refused(finished, data):
    _, out = finished
    with pytest.raises(ValueError, match="different run.*seed"):
        train("sasrec", data, out, epochs=4, seed=1, overrides=TINY, progress=False)


def test_early_stopping_after_patience_epochs_without_gain(data, tmp_path):
    # With a negligible learning rate the metric never improves after the first epoch.
    result = train("sasrec", data, tmp_path, epochs=10, seed=0, overrides=TINY, progress=False, save_model=False, plot=False,
                   config={"lr": 1e-12, "patience": 2})
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def test_validating_every_few_epochs_keeps_the_training_and_counts_patience_in_epochs(data, tmp_path):
    """valid_every 3 over 7 epochs validates after epochs 3, 6 and 7 (the last), with the same weights as a run that
    validates every epoch; a record's loss is the mean over the epochs since the previous validation."""
    settings = dict(epochs=7, seed=0, overrides=TINY, progress=False, save_model=False, plot=False)
    every = train("sasrec", data, tmp_path / "every", **settings)
    sparse = train("sasrec", data, tmp_path / "sparse", config={"valid_every": 3}, **settings)
    assert [r["epoch"] for r in sparse.history] == [3, 6, 7] and sparse.epochs_run == 7
    by_epoch = {r["epoch"]: r for r in every.history}
    assert [r["valid"] for r in sparse.history] == [by_epoch[e]["valid"] for e in (3, 6, 7)]
    assert sparse.history[1]["loss"] == pytest.approx(np.mean([by_epoch[e]["loss"] for e in (4, 5, 6)]), rel=1e-9)
    best = max((3, 6, 7), key=lambda e: by_epoch[e]["valid"]["ndcg@10"])  # the first of equals, as the trainer keeps
    assert sparse.best_epoch == best  # and it kept that epoch's weights:
    assert sparse.valid["ndcg@10"] == pytest.approx(by_epoch[best]["valid"]["ndcg@10"], abs=1e-12)
    # Patience 4 epochs at a validation every 2: no gain after epoch 2, so epochs 4 and 6 count 2 + 2 and it stops at 6.
    stalled = train("sasrec", data, tmp_path / "stalled", config={"lr": 1e-12, "patience": 4, "valid_every": 2},
                    **{**settings, "epochs": 20})
    assert stalled.stopped_early and stalled.epochs_run == 6 and stalled.best_epoch == 2
    assert [r["epoch"] for r in stalled.history] == [2, 4, 6]


def test_recipe_cpu_precision_trains_in_bf16_only_on_a_cpu_that_computes_it(data, tmp_path, monkeypatch):
    import zoo.train as train_module

    asked = []
    autocast = train_module._autocast
    monkeypatch.setattr(train_module, "_autocast", lambda device, precision: asked.append(precision) or autocast(device, precision))
    settings = dict(epochs=1, seed=0, progress=False, plot=False, overrides={**TINY, "train.cpu_precision": "bf16"})
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(train_module, "native_cpu_bf16", lambda native=native: native)
        result = train("sasrec", data, tmp_path / expected, **settings)
        assert asked[-1] == result.precision == expected
        assert json.loads((tmp_path / expected / "result.json").read_text())["precision"] == expected
        card = (tmp_path / expected / "README.md").read_text()
        assert ("bf16 autocast on CPU" in card) == (expected == "bf16") and ("fp32 on CPU" in card) == (expected == "fp32")
    monkeypatch.setattr(train_module, "native_cpu_bf16", lambda: True)
    forced = train("sasrec", data, tmp_path / "forced", precision="fp32", **{**settings, "save_model": False})
    assert asked[-1] == forced.precision == "fp32"  # an explicit precision wins over the recipe's
    default = train("sasrec", data, tmp_path / "default", **{**settings, "overrides": TINY, "save_model": False})
    assert default.precision == "fp32"  # recipes train in fp32 unless they say otherwise


def test_no_weight_decay_on_ssm_parameters_norms_and_biases():
    model = zoo.create("mamba4rec", num_items=20, d_model=16)
    config = model.recipe.train.model_copy(update={"optimizer": "adamw", "weight_decay": 0.1})
    optimizer = build_optimizer(model, config)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(decay_of) == len(names)
    exempt = [n for n in names if n.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias", "bias") or names[n].dim() == 1]
    assert any(n.endswith("A_log") for n in exempt) and any(names[n].dim() == 2 for n in exempt)  # A_log is 2-D
    for name, param in names.items():
        assert decay_of[id(param)] == (0.0 if name in exempt else 0.1), name
    assert type(optimizer).__name__ == "AdamW"


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_adam_takes_the_steps_of_torchs_loop_implementation(name):
    """build_optimizer's fused Adam / AdamW against torch's per-parameter loop with the same groups, float64."""
    model = zoo.create("mamba4rec", num_items=20, d_model=16).double()
    twin = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    config = model.recipe.train.model_copy(update={"optimizer": name, "lr": 1e-2, "weight_decay": 0.1})
    fused = build_optimizer(model, config)
    assert all(group["fused"] for group in fused.param_groups)
    twin_of = {id(p): q for p, q in zip(model.parameters(), twin.parameters())}
    groups = [{**{k: v for k, v in g.items() if k not in ("params", "fused")}, "params": [twin_of[id(p)] for p in g["params"]]}
              for g in fused.param_groups]
    loop = type(fused)(groups, foreach=False, fused=False)
    for step in range(5):
        for optimizer, m in ((fused, model), (loop, twin)):
            for index, p in enumerate(m.parameters()):
                draws = torch.Generator().manual_seed(1000 * step + index)
                p.grad = torch.randn(p.shape, generator=draws, dtype=p.dtype)
            optimizer.step()
    for (param_name, p), q, before in zip(model.named_parameters(), twin.parameters(), start):
        assert not torch.equal(p, before), param_name
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=param_name)


def test_cosine_schedule_with_warmup_is_stepped_per_update(data, tmp_path):
    result = train("sasrec", data, tmp_path, epochs=4, seed=0, overrides=TINY, progress=False, save_model=False, plot=False,
                   config={"scheduler": "cosine", "warmup_epochs": 1, "lr": 1e-2, "patience": 10})
    # timm's cosine over all 4 epochs' updates (warm-up included): lr(t) = lr/2 (1 + cos(pi t / T)) after warm-up;
    # the logged lr is the one after the epoch's last update, t = epoch * steps_per_epoch.
    expected = [0.5e-2 * (1 + math.cos(math.pi * epoch / 4)) for epoch in (1, 2, 3)]
    assert [r["lr"] for r in result.history[:3]] == pytest.approx(expected, rel=1e-9)
    assert result.history[3]["lr"] < 1e-4


@pytest.mark.parametrize("recipe, overrides, config", [
    ("sasrec", {"encoder.0.layers.0.causal": False, "item_encoder.mask_token": True, "train.objective": "masked"},
     {"objective": "masked", "loss": "ce", "lr": 1e-2}),
    ("sasrec", {}, {"objective": "random_cut", "loss": "sampled_softmax", "num_negatives": 5, "grad_clip": 1.0, "lr": 1e-2}),
    ("gru4rec", {"d_model": 16}, {"objective": "last", "loss": "bce", "num_negatives": 3, "optimizer": "sgd", "lr": 0.05}),
])
def test_every_objective_and_loss_trains(data, tmp_path, recipe, overrides, config):
    tiny = TINY if recipe == "sasrec" else {"train.batch_size": 32}
    result = train(recipe, data, tmp_path, epochs=3, seed=0, overrides={**tiny, **overrides}, config=config,
                   progress=False, save_model=False, plot=False)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert result.history[2]["loss"] < result.history[0]["loss"]


def test_bf16_autocast_on_cpu(data, tmp_path):
    result = train("sasrec", data, tmp_path, epochs=1, seed=0, overrides=TINY, progress=False, save_model=False, plot=False,
                   precision="bf16")
    assert math.isfinite(result.history[0]["loss"]) and 0 <= result.test["ndcg@10"] <= 1


def test_eval_precision_reaches_every_evaluation(data, tmp_path, monkeypatch):
    import zoo.train as train_module

    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs["which"], kwargs["precision"]))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", spy)
    train("sasrec", data, tmp_path, epochs=2, seed=0, overrides={**TINY, "train.eval_precision": "bf16"}, progress=False,
          save_model=False, plot=False)
    assert seen == [("valid", "bf16")] * 3 + [("test", "bf16")]  # each epoch, then the best model's valid and test


def test_bad_settings_are_reported(data, tmp_path):
    with pytest.raises(ValueError, match="valid_metric 'ndcg10'"):
        parse_metric("ndcg10")
    with pytest.raises(ValueError, match="objective 'all' cannot train this model.*readout 'mean' reads every position"):
        train("bert4rec", data, tmp_path, epochs=1, overrides={**TINY, "readout": "mean", "train.objective": "all"},
              progress=False)
    with pytest.raises(ValueError, match="optimizer 'nope'"):
        train("sasrec", data, tmp_path, epochs=1, overrides=TINY, config={"optimizer": "nope"}, progress=False)
    model = zoo.create("sasrec", num_items=data.dataset.num_items + 1, **TINY)
    with pytest.raises(ValueError, match="scores 31 items but the dataset has 30"):
        train(model, data, tmp_path, epochs=1, progress=False)
    with pytest.raises(ValueError, match="architecture"):
        train(zoo.create("sasrec", num_items=30, **TINY), data, tmp_path, overrides={"d_model": 8}, progress=False)


def _record_weights_after_every_step(monkeypatch) -> list[dict[str, torch.Tensor]]:
    import zoo.train as train_module

    after_steps, step = [], train_module._Run._step

    def recording(self, batch):
        out = step(self, batch)
        after_steps.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return out

    monkeypatch.setattr(train_module._Run, "_step", recording)
    return after_steps


def test_moving_average_of_the_weights_is_validated_and_kept(data, tmp_path, monkeypatch):
    after_steps = _record_weights_after_every_step(monkeypatch)
    decay = 0.8
    result = train("sasrec", data, tmp_path, epochs=3, seed=0, overrides={**TINY, "train.ema_decay": decay},
                   progress=False, save_model=False, plot=False)
    steps_per_epoch = len(after_steps) // result.epochs_run
    # Reference: the average by hand, ema_1 = w_1 and ema_t = decay * ema_{t-1} + (1 - decay) * w_t.
    average = dict(after_steps[0])
    for weights in after_steps[1:result.best_epoch * steps_per_epoch]:
        average = {k: decay * average[k] + (1 - decay) * weights[k] if weights[k].is_floating_point() else weights[k]
                   for k in weights}
    kept, raw = result.model.state_dict(), after_steps[result.best_epoch * steps_per_epoch - 1]
    assert kept.keys() == average.keys()
    for name in kept:
        torch.testing.assert_close(kept[name], average[name], rtol=1e-5, atol=1e-6)  # float32 rounding of the updates
    assert any(not torch.allclose(kept[k], raw[k]) for k in kept if kept[k].is_floating_point())  # not the raw weights
    assert result.valid["ndcg@10"] == pytest.approx(result.history[result.best_epoch - 1]["valid"]["ndcg@10"], abs=1e-12)


def test_shifted_windows_train_every_target_once_in_epochs_of_varying_size(data, tmp_path, monkeypatch):
    import zoo.train as train_module

    step, targets, sizes = train_module._Run._step, {}, {}

    def counting(self, batch):
        total, count = step(self, batch)
        targets[self.epoch] = targets.get(self.epoch, 0) + count
        sizes[self.epoch] = self.samples.epoch_size(self.epoch)
        return total, count

    monkeypatch.setattr(train_module._Run, "_step", counting)
    overrides = {**TINY, "max_len": 4, "train.window_shift": True, "train.batch_size": 1}  # a step per window
    train("sasrec", data, tmp_path / "run", epochs=3, seed=0, overrides=overrides, progress=False, save_model=False,
          plot=False)
    every_target = int(np.maximum(data.train.lengths - 1, 0).sum())
    assert targets == {epoch: every_target for epoch in range(3)}
    assert len(set(sizes.values())) > 1


@pytest.mark.parametrize("overrides", [{"train.ema_decay": 0.8}, {"train.window_shift": True, "max_len": 4},
                                       {"train.valid_every": 2}])
def test_resumes_exactly_after_a_crash_with_a_moving_average_or_shifted_windows(data, tmp_path, monkeypatch,
                                                                                  deterministic, overrides):
    import zoo.train as train_module

    settings = dict(epochs=2, seed=0, overrides={**TINY, **overrides}, checkpoint_every=2, progress=False,
                    save_model=False, plot=False)
    reference = train("sasrec", data, tmp_path / "reference", **settings)
    step, taken = train_module._Run._step, []

    def crashing(self, batch):
        if len(taken) == 5:  # after a checkpoint at step 4 of the first epoch
            raise KeyboardInterrupt
        taken.append(1)
        return step(self, batch)

    monkeypatch.setattr(train_module._Run, "_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train("sasrec", data, tmp_path / "crashed", **settings)
    monkeypatch.setattr(train_module._Run, "_step", step)
    resumed = train("sasrec", data, tmp_path / "crashed", **settings)
    assert [r["valid"] for r in resumed.history] == [r["valid"] for r in reference.history]
    for name, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_init_from_starts_from_pretrained_weights(finished, data, tmp_path, monkeypatch):
    """Same items: every weight is the pretrained one at the start; other items: all but the item tables."""
    _, trained_dir = finished
    pretrained = zoo.create(f"local-dir:{trained_dir}")
    starts = {}

    def record(_run, model, *_args, **_kwargs):
        starts[model.num_items] = {k: v.clone() for k, v in model.state_dict().items()}
        raise StopIteration  # stop before the first step: only the starting weights matter here

    import zoo.train as training

    monkeypatch.setattr(training._Run, "__init__", record)
    with pytest.raises(StopIteration):
        train("sasrec", data, tmp_path / "same", epochs=1, overrides=TINY, init_from=f"local-dir:{trained_dir}")
    other = generate_dataset(num_users=40, num_items=45, length=(6, 12), pattern="markov", seed=1).split("loo")
    with pytest.raises(StopIteration):
        train("sasrec", other, tmp_path / "other", epochs=1, overrides=TINY, init_from=f"local-dir:{trained_dir}")
    for key, value in pretrained.state_dict().items():
        torch.testing.assert_close(starts[30][key], value, rtol=0, atol=0, msg=key)
        if key == "item_encoder.embedding.weight":
            assert starts[45][key].shape == (46, 16)
        else:
            torch.testing.assert_close(starts[45][key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match=r"--init-from .*do not fit recipe 'gru4rec'"):
        train("gru4rec", data, tmp_path / "wrong", epochs=1, overrides={"d_model": 16}, init_from=f"local-dir:{trained_dir}")
