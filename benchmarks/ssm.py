"""Speed and memory of the pure-PyTorch state-space scans against a plain loop and the machine's bounds.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/ssm.py                 # the issue's full grid
    python benchmarks/ssm.py --quick --scan ssd ssd-compiled         # a small subset
    python benchmarks/ssm.py --batch 1 16 --length 200 1000 --plot ssm.png
    python benchmarks/ssm.py --scan mamba-compiled ssd-compiled --paired 2 --processes 2   # linearity only

Scans: Mamba ``zoo.blocks.ssm.selective_scan.selective_scan`` with d_inner=128, d_state=32 (B, C input-
dependent ``(b, n, l)``, D, delta_bias, softplus); Mamba2 ``zoo.blocks.ssm.ssd.ssd_scan`` with 8 heads ×
16, d_state 64, one group, D, dt_bias, softplus. All fp32. ``mamba`` and ``ssd`` are the pure-PyTorch
algorithms; ``mamba-compiled`` and ``ssd-compiled`` the same public functions with the optional C++
CPU kernels (``SEQREC_ZOO_CPU_KERNEL=1``, :mod:`zoo.blocks.ssm.cpu_kernel`; built before timing). For
each (scan, b, l) it prints forward
and forward+backward time of ours and of the plain loop over time that ships beside the scans
(``zoo.blocks.ssm.reference``; same dtype, inputs ``unbind``-ed once so its backward is linear in l),
and the bounds measured in the same run.
Ours runs each (scan, b, l) in ``--processes`` fresh subprocesses (each: up to three warm-up calls,
then the best of at least ``--repeats`` calls, for the forward and for forward+backward) and keeps
the best: whether its large buffers reuse freed memory or fault in fresh pages then does not depend
on the cases run before it (that alone moved b=256 times by up to 2x), it is measured in the steady
state of a training or inference loop, and one process's unlucky memory layout (the same call took
0.015-0.026 s in different processes) does not decide the number. The loop runs in this process.
Every timed call of ours and of the loop starts with the CPU caches evicted (``CacheFlush``).
Bounds:

* Mamba floor = 3 fp32 elementwise passes over b·d·l·n elements, from the elementwise rate
  measured on a 64M-element buffer (``torch.mul(a, b, out=c)``; time scaled by size);
* SSD bound = FLOPs of the chunked algorithm (``ssd.ssd_flops``) / measured fp32 matmul GFLOP/s
  (1024×1024 square matmul).

When the loop would take longer than ``--loop-timeout`` seconds, or its backward graph would hold
more than ``--loop-memory`` GiB, it is timed on a prefix of the steps and extrapolated linearly;
such entries are marked ``~`` (estimated).

Peak memory (``--memory``, default for l=4000): each case runs forward only in a fresh subprocess;
the number is the growth of the process's peak resident set (``VmHWM`` from ``/proc/self/status``,
reset through ``/proc/self/clear_refs``) over its resident set just before the inputs were created,
divided by the bytes of inputs + outputs. It therefore counts inputs, outputs and every temporary
that was resident at the peak.

Linearity (l=4000 time / l=1000 time) is printed under the table. Both times are the best of the same
number of calls: each l=4000 process makes as many calls as the corresponding l=1000 process did
within its budget (the best of more calls is lower, so unequal counts would inflate the ratio by
themselves). ``--paired ROUNDS`` prints only that, measured so that a drift of the machine's speed
between cells cannot enter it: each fresh process times l=1000 and l=4000 in turn, ROUNDS times, and
keeps the best of each.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time
from typing import Sequence

import torch

from measure import malloc_library, proc_status_kib
from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.reference import selective_scan_ref, ssd_scan_ref
from zoo.blocks.ssm.selective_scan import selective_scan
from zoo.blocks.ssm.ssd import ssd_flops, ssd_scan

MAMBA = dict(d_inner=128, d_state=32)
SSD = dict(nheads=8, headdim=16, ngroups=1, d_state=64, chunk_size=256)


# ---------------------------------------------------------------------------------------------- inputs
def mamba_inputs(b: int, l: int, requires_grad: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    d, n = MAMBA["d_inner"], MAMBA["d_state"]
    t = dict(
        u=torch.randn(b, d, l, generator=g),
        delta=torch.randn(b, d, l, generator=g) * 0.5 - 1.0,
        A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        B=torch.randn(b, n, l, generator=g),
        C=torch.randn(b, n, l, generator=g),
        D=torch.ones(d),
        delta_bias=torch.randn(d, generator=g) * 0.1,
    )
    return {k: v.requires_grad_(requires_grad) for k, v in t.items()}


def ssd_inputs(b: int, l: int, requires_grad: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, p, ng, n = SSD["nheads"], SSD["headdim"], SSD["ngroups"], SSD["d_state"]
    t = dict(
        x=torch.randn(b, l, h, p, generator=g),
        dt=torch.randn(b, l, h, generator=g) * 0.5 - 2.0,
        A=-torch.linspace(1.0, 16.0, h),
        B=torch.randn(b, l, ng, n, generator=g),
        C=torch.randn(b, l, ng, n, generator=g),
        D=torch.ones(h),
        dt_bias=torch.randn(h, generator=g) * 0.1,
    )
    return {k: v.requires_grad_(requires_grad) for k, v in t.items()}


SCANS = ["mamba", "mamba-compiled", "ssd", "ssd-compiled"]
LINEARITY_LENGTHS = (1000, 4000)  # time linear in l: the second within 4.5x of the first (issue 3)


def base(scan: str) -> str:
    """``mamba-compiled`` -> ``mamba``: the scan whose inputs, loop and bound a variant shares."""
    return scan.split("-")[0]


def select_implementation(scan: str) -> None:
    """Point the public scan functions at the compiled kernel (``*-compiled``) or the pure algorithm,
    and run it once on a tiny input, so a kernel is built and loaded before anything is timed or measured."""
    if scan.endswith("-compiled"):
        os.environ[cpu_kernel.KERNEL_ENV_VAR] = "1"
    else:
        os.environ.pop(cpu_kernel.KERNEL_ENV_VAR, None)
    with torch.no_grad():
        run_ours(scan, INPUTS[base(scan)](1, 2))


def run_ours(scan: str, t: dict):
    if base(scan) == "mamba":
        return selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], delta_bias=t["delta_bias"],
                              delta_softplus=True)
    return ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], SSD["chunk_size"], D=t["D"], dt_bias=t["dt_bias"],
                    dt_softplus=True)


# ---------------------------------------------------------------------------------------------- loops
def mamba_loop(t: dict, steps: int | None = None) -> torch.Tensor:
    """The shipped plain loop (:func:`selective_scan_ref`) over the first ``steps`` steps (all by default)."""
    l = t["u"].shape[-1] if steps is None else steps
    return selective_scan_ref(t["u"][..., :l], t["delta"][..., :l], t["A"], t["B"][..., :l], t["C"][..., :l], D=t["D"],
                              delta_bias=t["delta_bias"], delta_softplus=True)


def ssd_loop(t: dict, steps: int | None = None) -> torch.Tensor:
    """The shipped plain loop (:func:`ssd_scan_ref`) over the first ``steps`` steps (all by default)."""
    l = t["x"].shape[1] if steps is None else steps
    return ssd_scan_ref(t["x"][:, :l], t["dt"][:, :l], t["A"], t["B"][:, :l], t["C"][:, :l], D=t["D"],
                        dt_bias=t["dt_bias"], dt_softplus=True)[0]


LOOPS = {"mamba": mamba_loop, "ssd": ssd_loop}
INPUTS = {"mamba": mamba_inputs, "ssd": ssd_inputs}


# ---------------------------------------------------------------------------------------------- timing
def largest_cache_bytes(default: int = 32 * 2**20) -> int:
    """Size of the CPU's largest cache (Linux sysfs, e.g. ``32768K``); ``default`` where it cannot be read."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(path) as f:
            text = f.read().strip()
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=default)


class CacheFlush:
    """Evicts the CPU caches before a timed call by writing a buffer four times the largest cache
    (untimed), as Triton's ``do_bench`` clears the GPU's L2 between runs.

    Without it, calling a scan again on the same inputs finds them still in this machine's 32 MiB L3
    when they fit (b = 16, l = 1000: 28 MB) and in memory when they do not (l = 4000: 112 MB), so a
    best-of-repeats time grows faster than l for a reason no caller sees: in a model the scan's inputs
    come fresh from the layer before it. ``--warm-cache`` turns it off.
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes, self.enabled = nbytes, True
        self.buffer: torch.Tensor | None = None  # made on first use, so it is not counted by the memory runs

    def __call__(self) -> None:
        if not self.enabled:
            return
        if self.buffer is None:
            self.buffer = torch.zeros(self.nbytes // 4)
        self.buffer.add_(1.0)


flush_caches = CacheFlush(4 * largest_cache_bytes())


def best_of(fn, repeats: int, budget: float = 1.0, cold: bool = True) -> tuple[float, int]:
    """Best time of ``repeats`` calls, or of more (up to 100) while they fit in ``budget`` seconds, and
    the number of calls made: a millisecond call's best of 5 still varies by a third here, its best of
    50 much less. ``budget=0`` makes exactly ``repeats`` calls. ``cold``: each call starts from evicted
    caches (:class:`CacheFlush`, not timed)."""
    best, spent, calls = math.inf, 0.0, 0
    while calls < repeats or (spent < budget and calls < 100):
        if cold:
            flush_caches()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return best, calls


def timed(fn, repeats: int, budget: float = 1.0, cold: bool = True) -> float:
    """Best time of :func:`best_of`."""
    return best_of(fn, repeats, budget, cold)[0]


def forward_backward(fn, t: dict) -> None:
    for leaf in t.values():  # every repetition does the same work: no accumulation into earlier gradients
        leaf.grad = None
    y = fn(t)
    y.backward(torch.ones_like(y))


def warm_up(fn, calls: int = 3, seconds: float = 2.0) -> None:
    """Call ``fn`` ``calls`` times, or once more after ``seconds`` have passed: glibc's heap settles only after
    a few calls (buffers near its 32 MiB mmap threshold are first faulted in fresh, later reused)."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
        if time.perf_counter() - start > seconds:
            return


def time_ours(scan: str, b: int, l: int, repeats: int, calls: Sequence[int] | None = None) -> dict:
    """Best forward and forward+backward times, ``{"fwd", "fb", "calls": [forward calls, f+b calls]}``.

    ``calls`` fixes how many calls each is the best of (else: ``repeats``, more within the budget).
    The linearity ratio passes the shorter length's counts to the longer one: the best of more calls is
    lower (here the best of 5 of the same call was 1.1-1.4x its best of 75), so unequal counts would
    inflate l=4000 / l=1000 by themselves.
    """
    select_implementation(scan)
    counts, budget = (calls, 0.0) if calls is not None else ((repeats, repeats), 1.0)
    t = INPUTS[base(scan)](b, l)
    with torch.no_grad():
        warm_up(lambda: run_ours(scan, t))
        fwd, fwd_calls = best_of(lambda: run_ours(scan, t), counts[0], budget)
    tg = INPUTS[base(scan)](b, l, requires_grad=True)
    warm_up(lambda: forward_backward(lambda s: run_ours(scan, s), tg))
    fb, fb_calls = best_of(lambda: forward_backward(lambda s: run_ours(scan, s), tg), counts[1], budget)
    return {"fwd": fwd, "fb": fb, "calls": [fwd_calls, fb_calls]}


def loop_state_bytes(scan: str, t: dict) -> int:
    """Bytes of one step's state in the loop (its autograd graph keeps a few of these per step)."""
    if scan == "mamba":
        return t["u"].shape[0] * t["A"].numel() * t["u"].element_size()
    b, _, h, p = t["x"].shape
    return b * h * p * t["B"].shape[-1] * t["x"].element_size()


def time_loop(scan: str, b: int, l: int, repeats: int, timeout: float, memory_gb: float) -> tuple[float, float, bool]:
    """Loop times (forward, forward+backward), and whether they were extrapolated from a prefix.

    The loop runs in full when that fits in ``timeout`` seconds and its backward graph (about four
    states per step) in ``memory_gb``; otherwise it is timed on a prefix and scaled to ``l`` steps.
    """
    loop = LOOPS[scan]
    probe = min(l, 50)
    t = INPUTS[scan](b, l)
    tg = INPUTS[scan](b, l, requires_grad=True)
    memory_steps = max(probe, int(memory_gb * 2**30 / (4 * loop_state_bytes(scan, t))))
    with torch.no_grad():
        fwd_probe = timed(lambda: loop(t, probe), 1)
    bwd_probe = timed(lambda: forward_backward(lambda s: loop(s, probe), tg), 1)
    if (fwd_probe + bwd_probe) * l / probe * repeats <= timeout and l <= memory_steps:
        with torch.no_grad():
            fwd = timed(lambda: loop(t), repeats)
        return fwd, timed(lambda: forward_backward(loop, tg), repeats), False
    steps = max(probe, int(probe * timeout / 4 / (fwd_probe + bwd_probe)))
    steps = min(steps, l, memory_steps)
    with torch.no_grad():
        fwd = timed(lambda: loop(t, steps), 1) * l / steps
    bwd = timed(lambda: forward_backward(lambda s: loop(s, steps), tg), 1) * l / steps
    return fwd, bwd, steps < l


def elementwise_rate() -> float:
    """fp32 elements per second of one out-of-place elementwise pass (a * b -> c) on 64M elements."""
    n = 1 << 26
    a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
    torch.mul(a, b, out=c)
    return n / timed(lambda: torch.mul(a, b, out=c), 5, cold=False)


def matmul_gflops() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    return 2 * 1024**3 / timed(lambda: a @ b, 10, cold=False) / 1e9


def floor_seconds(scan: str, b: int, l: int, rate: float, gflops: float) -> float:
    if base(scan) == "mamba":
        return 3 * b * MAMBA["d_inner"] * l * MAMBA["d_state"] / rate
    s = SSD
    return ssd_flops(b, l, s["nheads"], s["headdim"], s["ngroups"], s["d_state"], s["chunk_size"]) / (gflops * 1e9)


# ---------------------------------------------------------------------------------------------- memory
def memory_child(scan: str, b: int, l: int) -> None:
    """Run in a fresh process: print JSON {peak_bytes, io_bytes} for one forward pass."""
    torch.randn(8) @ torch.randn(8)  # load the kernels' libraries before the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    select_implementation(scan)
    before = proc_status_kib("VmRSS")
    t = INPUTS[base(scan)](b, l)
    with torch.no_grad():
        y = run_ours(scan, t)
    peak = proc_status_kib("VmHWM")
    io_bytes = sum(v.numel() * v.element_size() for v in t.values()) + y.numel() * y.element_size()
    print(json.dumps({"peak_bytes": (peak - before) * 1024, "io_bytes": io_bytes}))


def timing_child(scan: str, b: int, l: int, repeats: int, calls: Sequence[int] | None) -> None:
    """Run in a fresh process: print JSON of :func:`time_ours`."""
    print(json.dumps(time_ours(scan, b, l, repeats, calls)))


def pair_child(scan: str, b: int, repeats: int, rounds: int) -> None:
    """Run in a fresh process: time l=1000 and l=4000 in turn, ``rounds`` times; print JSON of the best times.

    Alternating the two lengths within one process and a minute or so puts both under the same
    machine speed, which on a shared VM drifts by a quarter between the cells of a full table.
    """
    best = {l: [math.inf, math.inf] for l in LINEARITY_LENGTHS}
    short, long = LINEARITY_LENGTHS
    for _ in range(rounds):
        first = time_ours(scan, b, short, repeats)
        second = time_ours(scan, b, long, repeats, calls=first["calls"])  # as many calls as l=1000 made
        for l, timing in ((short, first), (long, second)):
            best[l] = [min(best[l][0], timing["fwd"]), min(best[l][1], timing["fb"])]
    print(json.dumps({str(l): times for l, times in best.items()}))


def run_child(kind: str, *args) -> dict | None:
    """One ``--memory-child`` / ``--timing-child`` / ``--pair-child`` run in a fresh process with this one's thread count."""
    cmd = [sys.executable, __file__, f"--{kind}-child", *map(str, args), "--threads", str(torch.get_num_threads()),
           *([] if flush_caches.enabled else ["--warm-cache"])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {kind} run failed for {args}: {done.stderr.strip()[-300:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(scan: str, b: int, l: int) -> float | None:
    result = run_child("memory", scan, b, l)
    return None if result is None else result["peak_bytes"] / result["io_bytes"]


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", choices=SCANS, nargs="+", default=SCANS)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--length", type=int, nargs="+", default=[50, 200, 1000, 4000])
    parser.add_argument("--quick", action="store_true", help="b in {1, 16}, l in {50, 200, 1000}")
    parser.add_argument("--repeats", type=int, default=5,
                        help="best of at least this many runs, more while they take under 1 s (the loop: 1 where ours takes over 2 s)")
    parser.add_argument("--processes", type=int, default=3, help="time ours in this many fresh processes, keep the best")
    parser.add_argument("--loop-timeout", type=float, default=20.0, help="seconds before the loop is extrapolated")
    parser.add_argument("--loop-memory", type=float, default=4.0,
                        help="GiB the loop's backward graph may hold before the loop is extrapolated")
    parser.add_argument("--memory", choices=["auto", "all", "none"], default="auto",
                        help="peak-memory subprocess runs: auto = only l = 4000")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="time repeated calls without evicting the caches between them (see CacheFlush)")
    parser.add_argument("--plot", default=None, help="save a PNG of the times to this path")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--timing-child", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--pair-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--paired", type=int, default=None, metavar="ROUNDS",
                        help="only the linearity check: per (scan, b), one fresh process per --processes times "
                        "l=1000 and l=4000 alternately for ROUNDS rounds (no table, no loop)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flush_caches.enabled = not args.warm_cache
    if args.memory_child:
        scan, b, l = args.memory_child
        memory_child(scan, int(b), int(l))
        return
    if args.timing_child:
        scan, b, l, repeats, fwd_calls, fb_calls = args.timing_child
        calls = None if fwd_calls == "0" else (int(fwd_calls), int(fb_calls))  # "0 0": as many as the budget allows
        timing_child(scan, int(b), int(l), int(repeats), calls)
        return
    if args.pair_child:
        scan, b, repeats, rounds = args.pair_child
        pair_child(scan, int(b), int(repeats), int(rounds))
        return
    if args.quick:
        args.batch, args.length = [1, 16], [50, 200, 1000]
    scans = args.scan
    for scan in scans:  # build the kernels now, not inside a timing
        select_implementation(scan)

    rate, gflops = elementwise_rate(), matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '-')}, THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '-')}, "
          f"allocator {malloc_library()}, MALLOC_CONF={os.environ.get('MALLOC_CONF', '-')}, "
          f"caches {'evicted before each timed call' if flush_caches.enabled else 'warm (--warm-cache)'}")
    print(f"machine bounds (this run): elementwise {rate / 1e9:.2f} G fp32 elements/s per pass; "
          f"fp32 matmul {gflops:.1f} GFLOP/s (1024^2)")
    print(f"Mamba: d_inner={MAMBA['d_inner']}, d_state={MAMBA['d_state']}; "
          f"SSD: {SSD['nheads']} heads x {SSD['headdim']}, d_state={SSD['d_state']}, {SSD['ngroups']} group")
    if args.paired:
        paired_linearity(scans, args.batch, args.repeats, args.paired, args.processes)
        return
    header = (f"{'scan':14} {'b':>4} {'l':>5} | {'ours fwd':>9} {'loop fwd':>10} {'loop/ours':>9} | "
              f"{'ours f+b':>9} {'loop f+b':>10} {'loop/ours':>9} | {'floor':>8} {'fwd/floor':>9} | {'peak/io':>7}")
    print(header)
    print("-" * len(header))
    rows, loops = [], {}
    short, long = LINEARITY_LENGTHS
    for scan in scans:
        for b in args.batch:
            short_calls: list[list[int]] = []  # calls each l=1000 process made; l=4000's processes make as many
            for l in args.length:
                repeats = args.repeats
                # Fresh processes: no heap left by other cases; the best of several, as each process's memory
                # layout is its own.
                calls = short_calls if l == long and short_calls else [[0, 0]]
                timings = [run_child("timing", scan, b, l, repeats, *calls[i % len(calls)]) for i in range(args.processes)]
                timings = [t for t in timings if t is not None]
                if not timings:
                    continue
                if l == short:
                    short_calls = [t["calls"] for t in timings]
                fwd, fb = min(t["fwd"] for t in timings), min(t["fb"] for t in timings)
                if (base(scan), b, l) not in loops:  # variants of one scan share its loop timing
                    loops[base(scan), b, l] = time_loop(base(scan), b, l, 1 if fb > 2 else repeats, args.loop_timeout,
                                                            args.loop_memory)
                loop_fwd, loop_fb, estimated = loops[base(scan), b, l]
                floor = floor_seconds(scan, b, l, rate, gflops)
                peak = None
                if args.memory == "all" or (args.memory == "auto" and l == 4000):
                    peak = measure_memory(scan, b, l)
                mark = "~" if estimated else " "
                row = dict(scan=scan, b=b, l=l, fwd=fwd, fb=fb, loop_fwd=loop_fwd, loop_fb=loop_fb,
                           estimated=estimated, floor=floor, peak=peak)
                rows.append(row)
                print(f"{scan:14} {b:>4} {l:>5} | {fwd:9.4f} {mark}{loop_fwd:9.4f} {loop_fwd / fwd:9.1f} | "
                      f"{fb:9.4f} {mark}{loop_fb:9.4f} {loop_fb / fb:9.1f} | {floor:8.4f} {fwd / floor:9.1f} | "
                      f"{'' if peak is None else f'{peak:7.2f}'}", flush=True)
    print("times in seconds (best of runs); ~ = loop extrapolated from a prefix of the steps; floor = Mamba: 3 "
          "elementwise passes over b*d*l*n, SSD: chunked-algorithm FLOPs / matmul rate; peak/io = peak RSS growth "
          "of a fresh process running the forward / bytes of inputs+outputs")
    print_ratios(rows)
    if args.plot:
        plot(rows, args.plot)


def print_ratios(rows: list[dict]) -> None:
    short, long = LINEARITY_LENGTHS
    by_key = {(r["scan"], r["b"], r["l"]): r for r in rows}
    print(f"\nlinearity (l={long} time / l={short} time, each the best of the same number of calls; 4.0 = linear):")
    for (scan, b, l), r in by_key.items():
        if l == long and (scan, b, short) in by_key:
            ref = by_key[(scan, b, short)]
            print(f"  {scan:14} b={b:>3}: fwd {r['fwd'] / ref['fwd']:.2f}, fwd+bwd {r['fb'] / ref['fb']:.2f}")


def paired_linearity(scans: list[str], batches: list[int], repeats: int, rounds: int, processes: int) -> None:
    """Print l=4000 / l=1000 from :func:`pair_child` runs (best of ``processes`` fresh processes per length)."""
    short, long = LINEARITY_LENGTHS
    print(f"\npaired linearity (l={long} time / l={short} time, both timed in turn in the same process, "
          f"{rounds} rounds, best of {processes} processes; 4.0 = linear):")
    for scan in scans:
        for b in batches:
            runs = [r for r in (run_child("pair", scan, b, repeats, rounds) for _ in range(processes)) if r is not None]
            if not runs:
                continue
            fwd = {l: min(r[str(l)][0] for r in runs) for l in LINEARITY_LENGTHS}
            fb = {l: min(r[str(l)][1] for r in runs) for l in LINEARITY_LENGTHS}
            print(f"  {scan:14} b={b:>3}: fwd {fwd[long] / fwd[short]:.2f} ({fwd[short]:.4f} -> {fwd[long]:.4f} s), "
                  f"fwd+bwd {fb[long] / fb[short]:.2f} ({fb[short]:.4f} -> {fb[long]:.4f} s)", flush=True)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = sorted({base(r["scan"]) for r in rows})
    fig, axes = plt.subplots(1, len(bases), figsize=(6 * len(bases), 4), squeeze=False)
    for ax, name in zip(axes[0], bases):
        for b in sorted({r["b"] for r in rows if base(r["scan"]) == name}):
            for scan in sorted({r["scan"] for r in rows if base(r["scan"]) == name}):
                sel = [r for r in rows if r["scan"] == scan and r["b"] == b]
                ax.plot([r["l"] for r in sel], [r["fb"] for r in sel], "o-", label=f"{scan} f+b, b={b}")
            ax.plot([r["l"] for r in sel], [r["loop_fb"] for r in sel], "x--", label=f"loop f+b, b={b}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="seconds", title=name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot saved to {path}")


if __name__ == "__main__":
    main()
