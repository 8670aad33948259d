"""Train and evaluate the zoo's ``sasrec`` and RecBole's SASRec on ml-100k, side by side.

Shared protocol: leave-one-out split by time (validation = second-to-last item, test = last),
max length 50, embedding size 64 (2 layers, 2 heads, FFN 256, dropout 0.2 in both), full-softmax
CE, Adam lr 1e-3, up to 200 epochs with early stopping (patience 10 on validation NDCG@10),
full-ranking evaluation over all items, best-validation weights tested. Batch sizes are each
library's own: RecBole trains on every prefix of every sequence (2048 prefixes a batch, its
default); the zoo trains causal models on all positions of a sequence at once (256 sequences a
batch, its recipe).

Each system runs as its own process, one after the other, with the same number of threads:
RecBole in ``benchmarks/.recbole-venv`` (``bash benchmarks/recbole_env.sh`` makes it), the zoo in
this interpreter. Reported per run: wall time per epoch (training + validation), the time to
reach RecBole's best validation NDCG@10 (from the start of training; the target is the mean over
RecBole's seeds, and RecBole's own runs report the time to their own best), full-ranking
evaluation throughput (validation users per second) averaged over the epochs and, for the best
model, timed alone (median of five evaluations; the zoo's in fp32 and bf16, each with and without
its compiled CPU kernels), peak memory (max RSS of the process), and test HR/NDCG/MRR@10. The zoo
trains with ``SEQREC_ZOO_CPU_KERNEL=1`` (so the benchmark needs a C++ compiler, as the kernels do):
the kernels serve inference only (its validation runs), training itself takes the PyTorch path
either way. Writes ``OUT/results.json``, ``OUT/curves.png`` and
prints a markdown table.

Evaluation speed is also timed side by side (``eval_duel``, ``--eval-rounds``, default 15): both best
checkpoints (RecBole's first seed, the zoo's first seed) loaded in two waiting processes, which
evaluate in turns, RecBole then the zoo in every variant, round after round. This VM's speed drifts by
up to 1.5x within minutes, so the ratio of two rates timed minutes apart carries that drift; the
evaluation goal is judged on the median of the paired per-round ratios.

Usage: python benchmarks/train_eval.py [--out runs/bench] [--threads 2] [--recbole-seeds 2020 0]
                                      [--zoo-seeds 2020 0 1] [--reuse] [--only recbole|zoo]
                                      [--eval-rounds 15]

Each system trains once per seed (default 2020), because one ml-100k test NDCG@10 carries a
standard error near 0.005 and a single seed of either system says little about the difference.
The quality verdict compares the means. ``--only`` runs one system into ``--out`` and keeps the
other's logs already there (``OUT/recbole-seedS``, ``OUT/zoo-seedS``), so RecBole's long runs need
not be repeated when only the zoo side changes; each process's finishing time is recorded in
``processes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECBOLE_PYTHON = HERE / ".recbole-venv" / "bin" / "python"
METRICS = ("hr@10", "ndcg@10", "mrr@10")
EVAL_REPEATS = 5
# glibc malloc settings for the side-by-side evaluation servers: keep freed memory in the process instead of
# giving it back to the OS, as a long-running process's grown heap does (see eval_duel).
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32),
                     "MALLOC_TOP_PAD_": str(2**28)}


# ---------------------------------------------------------------- the zoo side (a worker process)


def run_zoo(out: Path, threads: int, seed: int, max_epochs: int) -> None:
    """Train ``sasrec`` with ``zoo.train`` exactly as a user would; translate its metrics log."""
    import torch

    from zoo.blocks import compiled
    from zoo.train import train

    torch.set_num_threads(threads)
    os.environ[compiled.KERNEL_ENV_VAR] = "1"
    for kernel in ("attention", "transformer_layer"):  # built once per machine: not part of the training time
        compiled.load(kernel)
    begin = time.perf_counter()
    result = train("sasrec", "ml-100k", out / "model", epochs=max_epochs, seed=seed, resume=False, progress=False)
    total = time.perf_counter() - begin
    config = json.loads((out / "model" / "config.json").read_text(encoding="utf-8"))
    history = [json.loads(line) for line in (out / "model" / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    train_config = result.model.recipe.train
    events = [{"event": "setup", "seconds": total - history[-1]["wall"], "users": config["dataset"]["num_users"],
               "items": config["num_items"], "interactions": config["dataset"]["num_interactions"],
               "config": {"batch_size": train_config.batch_size, "lr": train_config.lr, "objective": train_config.objective,
                          "window_shift": train_config.window_shift, "epochs": train_config.epochs,
                          "patience": train_config.patience}}]
    users = config["dataset"]["split"]["valid_targets"]
    events += [{"event": "epoch", "epoch": h["epoch"], "train_seconds": h["train_seconds"], "eval_seconds": h["eval_seconds"],
                "eval_users": users, "wall": h["wall"], "valid": h["valid"], "loss": h["loss"]} for h in history]
    speeds, tests = eval_speed(result.model, out)
    events.append({"event": "eval_speed", "users": users, "users_per_second": speeds, "test_by_variant": tests})
    events.append({"event": "done", "fit_seconds": result.train_seconds, "best_valid": result.valid, "test": result.test})
    (out / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")


# Evaluation variants timed alone: precision, and whether the compiled CPU kernels serve inference.
EVAL_VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "fp32 kernels": ("fp32", True),
                 "bf16 kernels": ("bf16", True)}


def validation_split(out: Path):
    """The split of the zoo run in ``out``, from the dataset facts its model folder records."""
    from zoo.data import load_dataset

    facts = json.loads((out / "model" / "config.json").read_text(encoding="utf-8"))["dataset"]
    return load_dataset("ml-100k", **facts.get("preprocessing", {})).split("loo")


def evaluate_variant(model, split, variant: str, which: str, **kwargs):
    """``zoo.evaluate`` in one of EVAL_VARIANTS (sets the kernel variable accordingly)."""
    from zoo.blocks import compiled
    from zoo.evaluate import evaluate

    precision, kernels = EVAL_VARIANTS[variant]
    os.environ[compiled.KERNEL_ENV_VAR] = "1" if kernels else "0"
    return evaluate(model, split, which=which, precision=precision, **kwargs)


def eval_speed(model, out: Path) -> tuple[dict, dict]:
    """Median validation users/s of the best model over EVAL_REPEATS evaluations alone in each of
    EVAL_VARIANTS (interleaved, after one untimed evaluation each), and its test metrics in every variant
    but plain fp32 (the run's own test)."""
    from zoo.blocks import compiled

    split = validation_split(out)
    requested = os.environ.get(compiled.KERNEL_ENV_VAR)
    for variant in EVAL_VARIANTS:
        evaluate_variant(model, split, variant, "valid")
    rates: dict[str, list[float]] = {variant: [] for variant in EVAL_VARIANTS}
    for _ in range(EVAL_REPEATS):
        for variant, values in rates.items():
            values.append(evaluate_variant(model, split, variant, "valid").examples_per_second)
    tests = {variant: {k.lower(): v for k, v in evaluate_variant(model, split, variant, "test", ks=(10,),
                                                                 metrics=("hr", "ndcg", "mrr")).metrics.items()}
             for variant in EVAL_VARIANTS if variant != "fp32"}
    if requested is None:
        os.environ.pop(compiled.KERNEL_ENV_VAR)
    else:
        os.environ[compiled.KERNEL_ENV_VAR] = requested
    return {k: statistics.median(v) for k, v in rates.items()}, tests


def serve_zoo_eval(out: Path, threads: int) -> None:
    """The zoo's side of :func:`eval_duel`: one timed validation evaluation of the best model in ``out``
    per line on stdin (the line names the variant), answered with ``EVAL {"users_per_second": ...}``."""
    import torch

    import zoo

    torch.set_num_threads(threads)
    model = zoo.create(f"local-dir:{out / 'model'}", pretrained=True)
    split = validation_split(out)
    for line in sys.stdin:
        rate = evaluate_variant(model, split, line.strip(), "valid").examples_per_second
        print("EVAL " + json.dumps({"users_per_second": rate}), flush=True)


def eval_duel(recbole_run: Path, recbole_seed: int, zoo_run: Path, threads: int, rounds: int) -> dict:
    """Both systems' validation evaluation timed in turns, in the same minutes.

    This VM's speed moves by up to 1.5x within minutes, so rates timed in each system's own process at
    the end of its training (minutes apart) can differ by that much for reasons neither system controls.
    Here both stay loaded side by side (the best checkpoint of each run), and each round times one
    RecBole evaluation, then one zoo evaluation in every variant, a fraction of a second apart; the one
    waiting blocks on its input and uses no CPU. After an untimed round: each system's median users/s and,
    per variant, the median over rounds of the zoo's rate over RecBole's in the same round.

    Both servers run with glibc's malloc keeping freed memory (KEEP_FREED_MEMORY). A fresh process
    otherwise hands every large temporary back to the OS and has its pages faulted in again on the next
    allocation: that halved RecBole's rate here (2.6k against 5.5k users/s, while the process that had
    just trained it measured 5.0k), a cost of this VM's page faults rather than of either library."""
    log = open(zoo_run.parent / "eval-duel.log", "w", encoding="utf-8")
    commands = {
        "recbole": [str(RECBOLE_PYTHON), str(HERE / "recbole_sasrec.py"), str(recbole_run), "--threads", str(threads),
                    "--seed", str(recbole_seed), "--serve-eval"],
        "zoo": [sys.executable, str(Path(__file__).resolve()), "--worker", "zoo-eval", "--out", str(zoo_run),
                "--threads", str(threads)],
    }
    servers = {name: subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                      env=os.environ | KEEP_FREED_MEMORY)
               for name, command in commands.items()}

    def ask(name: str, request: str) -> float:
        server = servers[name]
        server.stdin.write(request + "\n")
        server.stdin.flush()
        for reply in server.stdout:
            if reply.startswith("EVAL "):
                return json.loads(reply[len("EVAL "):])["users_per_second"]
        raise RuntimeError(f"the {name} evaluation server stopped; see {log.name}")

    def one_round() -> dict[str, float]:
        return {"recbole": ask("recbole", "valid"), **{variant: ask("zoo", variant) for variant in EVAL_VARIANTS}}

    try:
        one_round()
        timed = [one_round() for _ in range(rounds)]
    finally:
        for server in servers.values():
            server.stdin.close()
            server.wait()
        log.close()
    return {
        "rounds": rounds,
        "users_per_second": {name: statistics.median(r[name] for r in timed) for name in timed[0]},
        "speedup": {variant: statistics.median(r[variant] / r["recbole"] for r in timed) for variant in EVAL_VARIANTS},
        "per_round": timed,
    }


# ---------------------------------------------------------------- the harness


def run_process(command: list[str], log_file: Path) -> dict:
    """Run ``command`` to completion; its wall time and peak memory (max RSS, this process only)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}; see {log_file}")
    return {"seconds": time.perf_counter() - start, "max_rss_mb": usage.ru_maxrss / 1024,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_after": os.getloadavg()}


def read_log(path: Path) -> dict:
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        "setup": next(e for e in events if e["event"] == "setup"),
        "epochs": [e for e in events if e["event"] == "epoch"],
        "done": next(e for e in events if e["event"] == "done"),
        "eval_speed": next((e for e in events if e["event"] == "eval_speed"), None),  # absent in older logs
    }


def normalise(metrics: dict) -> dict:
    """RecBole's ``hit@10`` is HR@10; keys lower case."""
    return {k.lower().replace("hit@", "hr@"): float(v) for k, v in metrics.items()}


def best_valid(log: dict) -> float:
    return max(normalise(e["valid"])["ndcg@10"] for e in log["epochs"])


def summarise(name: str, log: dict, process: dict, target: float) -> dict:
    """One system's row; ``seconds_to_target``: when its validation NDCG@10 first reached ``target``."""
    epochs = log["epochs"]
    reached = next((e["wall"] for e in epochs if normalise(e["valid"])["ndcg@10"] >= target), None)
    best = max(epochs, key=lambda e: normalise(e["valid"])["ndcg@10"])
    speed = log["eval_speed"]
    return {
        "system": name,
        "epochs": len(epochs),
        "seconds_per_epoch": epochs[-1]["wall"] / len(epochs),
        "train_seconds_per_epoch": sum(e["train_seconds"] for e in epochs) / len(epochs),
        "fit_seconds": log["done"]["fit_seconds"],
        "setup_seconds": log["setup"]["seconds"],
        "seconds_to_target": reached,
        "best_valid_ndcg@10": normalise(best["valid"])["ndcg@10"],
        "best_epoch": best["epoch"],
        "eval_users_per_second": sum(e["eval_users"] for e in epochs) / sum(e["eval_seconds"] for e in epochs),
        "eval_users_per_second_alone": speed["users_per_second"] if speed else None,
        "test_by_eval_variant": speed.get("test_by_variant") if speed else None,
        "max_rss_mb": process["max_rss_mb"],
        "threads": process.get("threads"),  # absent in older records
        "process_seconds": process["seconds"],
        "test": {k: normalise(log["done"]["test"])[k] for k in METRICS},
        "curve": [(e["wall"], normalise(e["valid"])["ndcg@10"]) for e in epochs],
    }


def markdown(rows: list[dict], target: float) -> str:
    def cell(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"| system | epochs | s / epoch | time to valid NDCG@10 ≥ target (s) | eval users/s in training "
        "| eval users/s alone, fp32 / bf16 | with kernels, fp32 / bf16 | peak RSS (MB) | test HR@10 | test NDCG@10 "
        "| test MRR@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        alone = r["eval_users_per_second_alone"] or {}
        lines.append(
            f"| {r['system']} | {r['epochs']} | {r['seconds_per_epoch']:.2f} | {cell(r['seconds_to_target'], '.1f')} "
            f"| {r['eval_users_per_second']:.0f} | {cell(alone.get('fp32'), '.0f')} / {cell(alone.get('bf16'), '.0f')} "
            f"| {cell(alone.get('fp32 kernels'), '.0f')} / {cell(alone.get('bf16 kernels'), '.0f')} "
            f"| {r['max_rss_mb']:.0f} | {r['test']['hr@10']:.4f} | {r['test']['ndcg@10']:.4f} | {r['test']['mrr@10']:.4f} |"
        )
    lines.append(f"\nTarget: RecBole's best validation NDCG@10, {target:.4f} (mean over its seeds); RecBole rows give "
                 "the time to their own best.")
    return "\n".join(lines)


def duel_markdown(duel: dict, recbole: str, zoo: str) -> str:
    """The side-by-side evaluation timing as a table: median users/s and the median paired ratio."""
    rates, speedup = duel["users_per_second"], duel["speedup"]
    lines = [f"Validation users/s side by side ({duel['rounds']} rounds; ratio: median over rounds of the zoo's rate "
             f"over RecBole's in the same round):", "", "| system | users/s | × RecBole |", "|---|---:|---:|",
             f"| {recbole} | {rates['recbole']:.0f} | 1 |"]
    lines += [f"| {zoo}, {variant} | {rates[variant]:.0f} | {speedup[variant]:.2f} |" for variant in EVAL_VARIANTS]
    return "\n".join(lines)


def mean_or_none(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else statistics.mean(values)


def goals(zoo_rows: list[dict], recbole_rows: list[dict], recbole_capped: bool, duel: dict | None = None) -> dict:
    """The issue's three goals, judged on means over seeds (each seed's value alongside).

    Times and speeds are compared only with the RecBole runs recorded with the zoo runs' thread count
    (None when there are none). Time to RecBole's quality, read two ways: strictly, each zoo seed's
    time to RecBole's mean best validation NDCG@10 (None when a seed never gets there; how many did
    is given); and, when the quality goal holds on the means, the zoo's whole runs (early stopping
    included) against RecBole's time to its best epoch. Evaluation speed: in training (fp32, the
    recipe's settings), and timed alone after training in fp32 and bf16 against RecBole's own timing
    alone (fp32; its in-training rate where its log has none); with a side-by-side timing (``duel``, from
    :func:`eval_duel`) the evaluation goal is judged on its paired ratios instead, since rates timed
    minutes apart differ by this VM's drift. When RecBole's epochs were capped below what its early
    stopping would have run, its best validation and test numbers are not its real ones: the time and
    quality goals are then not judged (None)."""
    def ratio(zoo_values: list, recbole_values: list) -> float | None:
        """Mean of the zoo's values over the mean of RecBole's."""
        zoo_mean, recbole_mean = mean_or_none(zoo_values), mean_or_none(recbole_values)
        return None if zoo_mean is None or recbole_mean is None else zoo_mean / recbole_mean

    def alone(row: dict, precision: str) -> float | None:
        return (row["eval_users_per_second_alone"] or {}).get(precision)

    zoo_threads = {r["threads"] for r in zoo_rows}
    same_threads = [r for r in recbole_rows if len(zoo_threads) == 1 and r["threads"] in zoo_threads - {None}]
    recbole_alone = [alone(r, "fp32") or r["eval_users_per_second"] for r in same_threads]
    verdict: dict = {
        "timed_against": [r["system"] for r in same_threads],
        "eval_speedup_in_training": ratio([r["eval_users_per_second"] for r in zoo_rows],
                                            [r["eval_users_per_second"] for r in same_threads]),
        "eval_speedup_alone_fp32": ratio([alone(r, "fp32") for r in zoo_rows], recbole_alone),
        **{f"eval_speedup_alone_{variant.replace(' ', '_')}": ratio([alone(r, variant) for r in zoo_rows], recbole_alone)
           for variant in EVAL_VARIANTS},
    }
    if verdict["eval_speedup_alone_fp32"] is None:  # older zoo logs: no timing alone
        verdict["eval_speedup_alone_fp32"] = verdict["eval_speedup_in_training"]
    if duel:
        verdict |= {f"eval_speedup_side_by_side_{variant.replace(' ', '_')}": duel["speedup"][variant]
                    for variant in EVAL_VARIANTS}
    judged_on = "side_by_side" if duel else "alone"
    for variant in EVAL_VARIANTS:
        speedup = verdict[f"eval_speedup_{judged_on}_{variant.replace(' ', '_')}"]
        verdict[f"eval_goal_met_{variant.replace(' ', '_')} (>= 5x)"] = speedup is not None and speedup >= 5
    if recbole_capped:
        return {"recbole_capped": True, "time_goal_met (<= 1/3)": None, **verdict, "quality_goal_met (no worse)": None}
    recbole_times = [r["seconds_to_target"] for r in same_threads]
    time_ratio = ratio([r["seconds_to_target"] for r in zoo_rows], recbole_times)
    zoo_ndcg = [r["test"]["ndcg@10"] for r in zoo_rows]
    recbole_ndcg = [r["test"]["ndcg@10"] for r in recbole_rows]
    ndcg_delta = statistics.mean(zoo_ndcg) - statistics.mean(recbole_ndcg)
    whole_run_ratio = ratio([r["fit_seconds"] for r in zoo_rows], recbole_times) if ndcg_delta >= 0 else None
    return {
        "time_to_recbole_quality_ratio": time_ratio,
        "zoo_seeds_reaching_recbole_valid": sum(r["seconds_to_target"] is not None for r in zoo_rows),
        "time_goal_met (<= 1/3)": time_ratio is not None and time_ratio <= 1 / 3,
        "whole_run_to_recbole_best_ratio": whole_run_ratio,
        "time_goal_met_on_test_quality (<= 1/3)": whole_run_ratio is not None and whole_run_ratio <= 1 / 3,
        **verdict,
        "zoo_test_ndcg@10_per_seed": zoo_ndcg,
        "recbole_test_ndcg@10_per_seed": recbole_ndcg,
        "zoo_test_ndcg@10_std": statistics.stdev(zoo_ndcg) if len(zoo_ndcg) > 1 else None,
        "test_ndcg@10_delta (zoo mean - RecBole mean)": ndcg_delta,
        "quality_goal_met (no worse)": ndcg_delta >= 0,
    }


def plot(rows: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    systems = [row["system"].split(" (")[0] for row in rows]  # one colour and legend entry per system
    colors = {system: f"C{i}" for i, system in enumerate(dict.fromkeys(systems))}
    for i, (row, system) in enumerate(zip(rows, systems)):
        seeds = systems.count(system)
        label = (system if seeds == 1 else f"{system}, {seeds} seeds") if systems.index(system) == i else None
        wall, ndcg = zip(*row["curve"])
        ax.plot(wall, ndcg, marker=".", markersize=3, linewidth=1, alpha=0.8, color=colors[system], label=label)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target: RecBole's best valid NDCG@10 = {target:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("wall time since training started (s, log scale)")
    ax.set_ylabel("validation NDCG@10 (full ranking)")
    ax.set_title("SASRec on ml-100k: zoo vs RecBole")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recbole-seeds", type=int, nargs="+", default=[2020], help="train RecBole once per seed")
    parser.add_argument("--zoo-seeds", type=int, nargs="+", default=[2020], help="train the zoo once per seed")
    parser.add_argument("--max-epochs", type=int, default=200, help="cap on epochs (both systems; 200 = the protocol)")
    parser.add_argument("--recbole-max-epochs", type=int, help="cap on RecBole's epochs only (default: --max-epochs)")
    parser.add_argument("--reuse", action="store_true", help="summarise the logs already in --out without training")
    parser.add_argument("--only", choices=["recbole", "zoo"], help="run one system; reuse the other's logs in --out")
    parser.add_argument("--eval-rounds", type=int, default=15,
                        help="rounds of the side-by-side evaluation timing (eval_duel) after training; 0: none")
    parser.add_argument("--worker", choices=["zoo", "zoo-eval"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)  # the worker's seed
    args = parser.parse_args()
    out = args.out.resolve()
    if args.worker == "zoo":
        run_zoo(out, args.threads, args.seed, args.max_epochs)
        return
    if args.worker == "zoo-eval":
        serve_zoo_eval(out, args.threads)
        return
    runs = {f"recbole-seed{seed}": seed for seed in args.recbole_seeds} | {f"zoo-seed{seed}": seed for seed in args.zoo_seeds}
    if not args.reuse:
        commands = {}
        for name, seed in runs.items():
            if name.startswith("recbole"):
                commands[name] = [str(RECBOLE_PYTHON), str(HERE / "recbole_sasrec.py"), str(out / name), "--threads",
                                  str(args.threads), "--seed", str(seed),
                                  "--set", f"epochs={args.recbole_max_epochs or args.max_epochs}"]
            else:
                commands[name] = [sys.executable, str(Path(__file__).resolve()), "--worker", "zoo", "--out", str(out / name),
                                  "--threads", str(args.threads), "--seed", str(seed), "--max-epochs", str(args.max_epochs)]
        if args.only != "zoo" and not RECBOLE_PYTHON.is_file():
            sys.exit(f"RecBole's environment is missing: create it with `bash {HERE / 'recbole_env.sh'}`")
        record = out / "processes.json"
        processes = {}
        for name, command in commands.items():
            if args.only in (None, name.split("-")[0]):
                processes[name] = run_process(command, out / f"{name}.out") | {"threads": args.threads}  # (makes ``out``)
                # With --only, keep the runs already recorded, re-read now: another --only run may share the folder.
                earlier = json.loads(record.read_text()) if args.only and record.is_file() else {}
                record.write_text(json.dumps(earlier | processes, indent=2))
    processes = json.loads((out / "processes.json").read_text())
    if not set(runs) <= set(processes):
        sys.exit(f"{out / 'processes.json'} lacks {sorted(set(runs) - set(processes))}: run them with --only")
    logs = {name: read_log(out / name / "log.jsonl") for name in runs}
    recbole_names = [name for name in runs if name.startswith("recbole")]
    zoo_names = [name for name in runs if name.startswith("zoo")]
    target = statistics.mean(best_valid(logs[name]) for name in recbole_names)
    recbole_rows = [summarise(f"RecBole 1.2.1 SASRec (seed {runs[name]})", logs[name], processes[name], best_valid(logs[name]))
                    for name in recbole_names]
    zoo_rows = [summarise(f"seqrec-zoo sasrec (seed {runs[name]})", logs[name], processes[name], target) for name in zoo_names]
    rows = [*recbole_rows, *zoo_rows]
    # Capped: a RecBole run used all the epochs it was allowed, fewer than the protocol's, without stopping early.
    recbole_capped = any(len(logs[name]["epochs"]) >= logs[name]["setup"]["config"]["epochs"]
                         and logs[name]["setup"]["config"]["epochs"] < args.max_epochs for name in recbole_names)
    duel = None
    if args.eval_rounds > 0 and processes[recbole_names[0]].get("threads") == args.threads:
        duel = eval_duel(out / recbole_names[0], runs[recbole_names[0]], out / zoo_names[0], args.threads, args.eval_rounds)
    verdict = goals(zoo_rows, recbole_rows, recbole_capped, duel)
    table = markdown(rows, target) + ("\n\n" + duel_markdown(duel, rows[0]["system"], zoo_rows[0]["system"]) if duel else "")
    results = {"protocol": __doc__.split("\n\n")[1], "cpus": os.cpu_count(), "threads": args.threads,
               "recbole_seeds": args.recbole_seeds, "zoo_seeds": args.zoo_seeds, "target_valid_ndcg@10": target,
               "systems": rows, "goals": verdict, "recbole_config": logs[recbole_names[0]]["setup"]["config"],
               "zoo_config": logs[zoo_names[0]]["setup"]["config"], "processes": processes, "eval_duel": duel}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(rows, target, out / "curves.png")
    print(table)
    print()
    for key, value in verdict.items():
        print(f"- {key}: {round(value, 4) if isinstance(value, float) else value}")
    print(f"\nwrote {out / 'results.json'} and {out / 'curves.png'}")


if __name__ == "__main__":
    main()
