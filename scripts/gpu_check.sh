#!/usr/bin/env bash
# The GPU check in one command:   bash scripts/gpu_check.sh OUT_JSON
#
# On one CUDA GPU (sized for an H100/H200 to end within 8 minutes: the tests and the benchmark are capped at
# 150 s and 330 s; not yet run on a GPU, so the figures are estimates), from a clone of this repo:
#   1. installs only what is missing, and says what: torch when there is none (`pip install torch`: PyPI's Linux
#      wheels are CUDA builds; a CPU build already there is replaced only with GPU_CHECK_REPLACE_TORCH=1), then the
#      few libraries csm_worker imports (transformers, safetensors, tokenizers, huggingface-hub, numpy,
#      soundfile, soxr) and pytest. Offline, put wheels in .whl/ and they are installed from there (pip
#      --no-index --find-links .whl; scripts/gpu_wheels.sh fetches them). The project itself is not
#      pip-installed: PYTHONPATH points at this tree, so Ray, boto3 and the job system's other needs are never
#      fetched and the machine's CUDA torch is never replaced;
#   2. runs the parity tests on CUDA (tests/csm_worker/engine/test_device.py with CSM_RENDER_TEST_DEVICES=cuda: the
#      portable backend's dynamic step, static step and CUDA graphs against transformers on the GPU, sampled
#      codes of all three equal, bf16 on the GPU against float32 on the CPU; the cpu backend does not apply);
#   3. benchmarks random:csm-1b in bf16 (python -m csm_worker.device_check): batch 1 and --batch-size auto, with
#      and without CUDA graphs, against transformers' generate, a batch sweep with graphs, the bf16 matmul peak;
#      every figure into OUT_JSON (rewritten after each figure, so a stopped run keeps what it measured);
#   4. times the watermark on the GPU, and with SILENTCIPHER_WEIGHTS=<the real sony/silentcipher checkpoint>
#      verifies real marks through WAV, MP3 and Opus (scripts/watermark_check.py).
# Exit status: 0 when the tests passed and the benchmark finished, 1 when either did not, 2 when it cannot start.
set -uo pipefail

OUT_JSON=${1:?usage: bash scripts/gpu_check.sh OUT_JSON}
OUT_JSON=$(realpath -m "$OUT_JSON")
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
say() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

TORCH=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu-build' if torch.version.cuda is None
else 'no-device')" 2>/dev/null || echo missing)
case $TORCH in
    missing)
        say "no torch here: installing torch from PyPI (its Linux wheels are CUDA builds)"
        $PY -m pip install -q torch || { say "cannot install torch; install a CUDA build of torch and rerun"; exit 2; }
        ;;
    cpu-build)
        if [ "${GPU_CHECK_REPLACE_TORCH:-0}" != 1 ]; then
            say "this torch ($($PY -c 'import torch; print(torch.__version__)')) is a CPU build; rerun with" \
                "GPU_CHECK_REPLACE_TORCH=1 to replace it with PyPI's CUDA build"
            exit 2
        fi
        say "replacing the CPU build of torch with PyPI's CUDA build"
        $PY -m pip install -q --force-reinstall torch || { say "cannot install torch"; exit 2; }
        ;;
esac
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { say "torch sees no CUDA device: nothing to check here"; exit 2; }
say "$($PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))')"

MISSING=$($PY - <<'PY'
import importlib.util
need = {"transformers": "transformers>=5.0", "safetensors": "safetensors>=0.4", "tokenizers": "tokenizers>=0.20",
        "huggingface_hub": "huggingface-hub>=1.0", "numpy": "numpy>=1.26", "soundfile": "soundfile>=0.12",
        "soxr": "soxr>=0.3", "pytest": "pytest>=8"}
print(" ".join(spec for module, spec in need.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$MISSING" ]; then
    if [ -d .whl ]; then
        say "installing from .whl/: $MISSING"
        $PY -m pip install -q --no-index --find-links .whl $MISSING || { say "install from .whl/ failed"; exit 2; }
    else
        say "installing from PyPI: $MISSING"
        $PY -m pip install -q $MISSING || { say "install failed (offline? put wheels in .whl/)"; exit 2; }
    fi
else
    say "nothing to install"
fi

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export CSM_RENDER_CACHE=${CSM_RENDER_CACHE:-$WORK/cache}  # presets are built here (random:csm-1b: ~6 GB)
export PYTHONUNBUFFERED=1

# The benchmark's preset (seeded random weights written to disk once, CPU work) builds while the tests use the GPU.
$PY -c "from csm_worker.model.presets import preset_dir; preset_dir('random:csm-1b')" > "$WORK/preset.log" 2>&1 &
PRESET_PID=$!

say "parity tests on CUDA"
CSM_RENDER_TEST_DEVICES=cuda timeout 150 $PY -m pytest tests/csm_worker/engine/test_device.py -q -p no:cacheprovider \
    -o addopts="" 2>&1 | tee "$WORK/tests.log"
TESTS_RC=${PIPESTATUS[0]}
say "tests exit status $TESTS_RC"

wait $PRESET_PID || { say "building random:csm-1b failed:"; cat "$WORK/preset.log"; }

say "benchmark (random:csm-1b, bf16) -> $OUT_JSON"
timeout 330 $PY -m csm_worker.device_check "$OUT_JSON" --tests-log "$WORK/tests.log" --tests-rc "$TESTS_RC"
BENCH_RC=$?
say "benchmark exit status $BENCH_RC"
[ -f "$OUT_JSON" ] && $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d.get('targets'), indent=1))" "$OUT_JSON"
# The watermark on the GPU: its cost with random weights (they read nothing back, so only the time counts), then
# real marks through WAV, MP3 and Opus where the real checkpoint is (SILENTCIPHER_WEIGHTS: a folder or hub id).
say "watermark cost (random:silentcipher, timing only)"
timeout 120 $PY scripts/watermark_check.py --weights random:silentcipher --out "${OUT_JSON%.json}-watermark-cost.json" \
    | tail -1
WM_RC=0
if [ -n "${SILENTCIPHER_WEIGHTS:-}" ]; then
    say "real marks with $SILENTCIPHER_WEIGHTS"
    timeout 180 $PY scripts/watermark_check.py --weights "$SILENTCIPHER_WEIGHTS" --out "${OUT_JSON%.json}-watermark.json"
    WM_RC=$?
    say "watermark check exit status $WM_RC"
else
    say "SILENTCIPHER_WEIGHTS not set: real marks not verified (the checkpoint cannot be fetched from here)"
fi
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ] && [ "$WM_RC" = 0 ] && exit 0
exit 1
