#!/usr/bin/env bash
# The CUDA checks in one command, for a GPU machine that has PyTorch and nvcc but no network.
#
#   bash scripts/cuda_check.sh fetch   # where PyPI is reachable: fills .whl/ (ignored by git)
#   bash scripts/cuda_check.sh run     # on the GPU machine, with .whl/ beside the checkout
#
# fetch: wheels the project needs that such an image may lack (pydantic and its parts, setuptools, RecBole for
# MovieLens-100k, Python 3.12, manylinux x86-64) and the source distributions of mamba-ssm and
# causal-conv1d (the versions below), checked against PyPI's sha256.
# run: installs those wheels into /tmp/site and the project itself (editable, no dependencies),
# builds the two CUDA extensions for the present GPU alone (scripts/cuda_kernels.py, a few minutes
# on 16 cores), then writes under $OUT (default runs/cuda-check):
#   tests.log / tests.xml  the CUDA parity tests against mamba-ssm's kernels and modules
#                          (test_selective_scan, test_ssd_scan, test_mamba_layer, test_mamba2_layer,
#                          test_ssm_cuda_handover), every skip with its reason;
#   efficiency_mamba_ssm.{json,png} and efficiency_pure.{json,png}: benchmarks/efficiency.py on the
#                          GPU with mamba-ssm's kernels and with SEQREC_ZOO_PURE_SSM=1, side by side;
#   run.log                every step's output and its time.
# Every step runs under its own time limit, so a slow build still leaves the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
MAMBA_SSM=2.3.2.post1
CAUSAL_CONV1D=1.7.0

fetch() {
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing-extensions setuptools==84.2.1 recbole==1.2.1 || return 1
    python3 - "$MAMBA_SSM" "$CAUSAL_CONV1D" <<'EOF' || return 1
import hashlib, json, sys, urllib.request
from pathlib import Path
for name, version in (("mamba-ssm", sys.argv[1]), ("causal-conv1d", sys.argv[2])):
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as reply:
        sdist = next(f for f in json.load(reply)["releases"][version] if f["packagetype"] == "sdist")
    target = Path(".whl") / sdist["filename"]
    if not target.exists():
        with urllib.request.urlopen(sdist["url"], timeout=120) as reply:
            data = reply.read()
        if hashlib.sha256(data).hexdigest() != sdist["digests"]["sha256"]:
            raise SystemExit(f"cuda_check: {sdist['filename']} does not match PyPI's sha256")
        target.write_bytes(data)
    print(f"cuda_check: {target}")
EOF
    du -sh .whl
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log output and duration
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit} s)" | tee -a "$OUT/run.log"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/run.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$OUT/run.log"
    return "$rc"
}

run() {
    OUT=${OUT:-runs/cuda-check}
    mkdir -p "$OUT"
    : > "$OUT/run.log"
    step install 120 bash -c 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 -m pip install -q --no-index --no-deps \
        --no-build-isolation -e .' || return 1
    export PYTHONPATH=/tmp/site
    step environment 60 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -1;
        python3 -c "import torch, zoo; print(\"torch\", torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"'
    step build 420 python3 scripts/cuda_kernels.py --sources .whl --out build/cuda || return 1
    export PYTHONPATH=$PWD/build/cuda/site:/tmp/site
    # Import them by hand first: zoo's dispatch treats any import error as "not installed" and the tests would skip.
    step imports 120 python3 -c "import mamba_ssm, causal_conv1d
from zoo.blocks.ssm._dispatch import mamba_ssm_available, optional_function
assert mamba_ssm_available() and optional_function('causal_conv1d', 'causal_conv1d_fn') is not None
print('mamba_ssm', mamba_ssm.__version__, 'and causal_conv1d import; zoo dispatches CUDA tensors to them')" || return 1
    # The compiled CPU kernels are CI's business; off here, so nothing is compiled for the CPU on the GPU's time.
    export SEQREC_ZOO_CPU_KERNEL=0
    step tests 240 python3 -m pytest -q -rs -p no:cacheprovider --junitxml "$OUT/tests.xml" \
        tests/test_selective_scan.py tests/test_ssd_scan.py tests/test_mamba_layer.py tests/test_mamba2_layer.py \
        tests/test_ssm_cuda_handover.py > "$OUT/tests.log"
    tail -25 "$OUT/tests.log" | tee -a "$OUT/run.log"
    local bench=(python3 benchmarks/efficiency.py --device cuda --in-process --repeats 3 --warmup 1
                 --recipes sasrec mamba4rec sigma cnn-mamba m2rec --lengths 50 200 1000)
    step "efficiency, mamba-ssm kernels" 240 "${bench[@]}" --out "$OUT/efficiency_mamba_ssm.json"
    SEQREC_ZOO_PURE_SSM=1 step "efficiency, pure PyTorch" 240 "${bench[@]}" --out "$OUT/efficiency_pure.json"
}

case "${1:-}" in
    fetch) fetch ;;
    run) run ;;
    *) echo "usage: bash scripts/cuda_check.sh fetch|run" >&2; exit 2 ;;
esac
