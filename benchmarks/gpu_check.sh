#!/usr/bin/env bash
# One-shot verification of the CUDA part of issue 8 on a machine with an NVIDIA GPU:
#   1. report the machine (GPU, driver, nvcc, Python, torch);
#   2. build xaisdk._ext and xaisdk._ext_cuda in place with nvcc (when nvcc is missing, use the modules
#      already in xaisdk/, e.g. carried over from a build machine: they must match this Python);
#   3. run the two GPU test files (kernels against the CPU kernels and numpy; the torch-cuda backend
#      against TorchBackend and the IG driver) and print pytest's summary.
#   4. with --bench: `xaisdk bench --suites ig,floor` on this GPU (Captum on CUDA, torch-cuda with and
#      without the CUDA graph, TensorRT where it imports), results into benchmarks/results/.
# Usage, from anywhere: bash benchmarks/gpu_check.sh [--slow] [--bench]   (--slow adds the torch.compile test)
# Environment: PYTHON (default: python3), BUILD_TEMP (default: /tmp/xaisdk_gpu_build).
# Exit status: pytest's (0 = all passed), or 2 when the build or an import fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
BUILD_TEMP="${BUILD_TEMP:-/tmp/xaisdk_gpu_build}"
MARKS="not slow"
BENCH=0
for arg in "$@"; do
    [[ "$arg" == "--slow" ]] && MARKS=""
    [[ "$arg" == "--bench" ]] && BENCH=1
done

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
NVCC="$(command -v nvcc || true)"
for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
    [[ -z "$NVCC" && -n "$home" && -x "$home/bin/nvcc" ]] && NVCC="$home/bin/nvcc"
done
if [[ -n "$NVCC" ]]; then "$NVCC" --version | tail -n 2; else echo "nvcc: not found"; fi
"$PY" - <<'EOF' || { echo "python/torch missing: install torch with CUDA first"; exit 2; }
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
EOF

echo "== build"
if [[ -n "$NVCC" ]]; then
    # pybind11 is only needed to build; a carried copy next to the tree (see below) works too.
    if ! "$PY" -c "import pybind11" 2>/dev/null; then
        for site in .venv/lib/python3*/site-packages; do
            [[ -d "$site/pybind11" ]] && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" && echo "using pybind11 from $site"
        done
    fi
    start=$(date +%s)
    if ! "$PY" setup.py build_ext --inplace --build-temp "$BUILD_TEMP" > "$BUILD_TEMP.log" 2>&1; then
        tail -n 40 "$BUILD_TEMP.log"
        echo "build failed (full log: $BUILD_TEMP.log)"
        exit 2
    fi
    echo "built in $(( $(date +%s) - start )) s"
else
    echo "no nvcc: testing the modules already in xaisdk/: $(ls xaisdk/_ext*.so 2>/dev/null | tr '\n' ' ')"
fi
"$PY" - <<'EOF' || { echo "the extensions do not import"; exit 2; }
import xaisdk._ext as cpu, xaisdk._ext_cuda as gpu
print(cpu.build_info())
print(gpu.build_info())
print("xaisdk._ext_cuda.device_count() =", gpu.device_count())
EOF

echo "== tests"
"$PY" -m pytest tests/test_cuda_kernels.py tests/test_torch_cuda_backend.py -q -rs -p no:cacheprovider \
    -o addopts="" ${MARKS:+-m "$MARKS"}
status=$?
if [[ $BENCH == 1 ]]; then
    echo "== bench"
    # needs captum, onnxruntime, click, tqdm, matplotlib and onnx next to torch (e.g. wheels carried in .whl/)
    PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m xaisdk.cli bench --suites ig,floor --out benchmarks/results --force \
        || echo "bench failed (missing packages? see above)"
fi
echo "== done: pytest exit status $status"
exit $status
