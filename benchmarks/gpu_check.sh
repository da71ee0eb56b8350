#!/usr/bin/env bash
# The GPU check in one call: VGG16 feature extraction (JAX vs PyTorch and the project's own
# pipeline, 224 px, bf16 and fp32), what the host feeds (benchmarks/host_feed.py), the
# three-model study end to end on real faces at 224 px with random bases (each phase's seconds),
# configs/custom.py's real test accuracy, and (STEPS=tests) the GPU-relevant tests.
# Sized for about 9 minutes on one H100/H200. Prints a short table and writes it to $OUT/gpu_check.md (logs and JSON beside it) when $OUT is set.
#
#   bash benchmarks/gpu_check.sh DATA_DIR           # on the GPU machine, from the repo root
#   bash benchmarks/gpu_check.sh DATA_DIR --small   # tiny sizes on CPU: checks the script here
#
# Packages the GPU image lacks travel as wheels in .whl/ (see benchmarks/README.md) and are
# installed into /tmp/site (WHEELS= skips that, where the packages are there already); the project
# itself is imported from the checkout (PYTHONPATH), since `pip install -e .` there fetches
# setuptools from the network. The custom step needs the converted MTCNN weights of
# configs/custom.py (carry weights/mtcnn). PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR [--small]}
MODE=${2:-full}
PY=${PYTHON:-python3}
WHEELS=${WHEELS-.whl}
OUT=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
# The datasets and caches (about 2 GB) go to memory where the machine has room for them: the
# check times the GPU, and the disk is probed apart (below).
SCRATCH=/tmp
if [[ -w /dev/shm ]] && (( $(df --output=avail -B1G /dev/shm | tail -1) >= 8 )); then
  SCRATCH=/dev/shm
fi
WORK=$(mktemp -d "$SCRATCH/gpu_check_work.XXXXXX")
mkdir -p "$OUT"
TABLE="$OUT/gpu_check.md"
# Progress bars redraw at most every 10 s in the logs. A step that runs past its limit gets
# SIGABRT, on which Python's faulthandler writes every thread's traceback into the step's log.
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10 PYTHONFAULTHANDLER=1
# JAX and PyTorch share the card in the extraction benchmark; pytest workers share it too.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if [[ $MODE == --small ]]; then
  export JAX_PLATFORMS=cpu
  DEVICE=cpu TEST_SELECT='models' STEP_LIMIT=${STEP_LIMIT:-300} BUDGET=${BUDGET:-100000}
  EXTRACT=(--sizes=32 --dtypes=bfloat16,float32 --batch=4 --iters=1 --warmup=1
           --pipeline_images=8)
  STUDY=(--config=configs/tiny.py:custom)
  FEED=(--sizes=32 --images=128 --rounds=1)
  CUSTOM=(--config.num_train=64 --config.num_valid=32 --config.num_test=32
          --config.num_epochs=1 --config.image_size=32)
else
  export JAX_PLATFORMS=cuda
  DEVICE=gpu TEST_SELECT='train or models' STEP_LIMIT=${STEP_LIMIT:-150} BUDGET=${BUDGET:-580}
  EXTRACT=(--sizes=224 --dtypes=bfloat16,float32 --batch=256 --iters=5 --warmup=2
           --pipeline_images=4096)
  STUDY=(--config=configs/default.py --config.image_size=224 --config.compute_dtype=bfloat16)
  FEED=(--sizes=224 --images=4096 --rounds=3)
  CUSTOM=()
fi

row() { echo "$*" | tee -a "$TABLE"; }
limited() { timeout -s ABRT -k 10 "$STEP_LIMIT" "$@"; }  # rc 124: stopped at the limit.
# fits NAME: whether a step of STEP_LIMIT still ends inside the device call (BUDGET seconds).
fits() {
  (( SECONDS + STEP_LIMIT < BUDGET )) && return
  row "| $1 | skipped: not enough time left after ${SECONDS} s | |"
  return 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

: > "$TABLE"
row "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), mode ${MODE}, commit $(git rev-parse --short HEAD 2>/dev/null))"
row

# --- Install: missing packages from .whl/, then the project itself (no index, no deps). ---
start=$(now)
if [[ -n $WHEELS ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WHEELS"/*.whl > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
row "install: $(since "$start") s"
probe=$( { dd if=/dev/zero of="/tmp/gpu_check_probe.$$" bs=1M count=1024 conv=fdatasync; } 2>&1 |
         tail -1)
rm -f "/tmp/gpu_check_probe.$$"
row "disk (/tmp, 1 GiB written and synced): ${probe##*, }; scratch: $SCRATCH"
row "machine: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
row "versions: $("$PY" -c 'import jax, flax, optax, sys
try:
  import torch; t = torch.__version__
except ImportError:
  t = "none"
print(f"python {sys.version.split()[0]}, jax {jax.__version__} ({jax.devices()[0].device_kind}),",
      f"flax {flax.__version__}, optax {optax.__version__}, torch {t}")' 2>&1 | tail -1)"
row

# STEPS picks the steps (default: all but tests, whose fake-CPU-device tests fail on one GPU).
# They run in the order tests, extraction, feed, study, custom (the issue's targets first), each only if
# it fits in the time left; CUSTOM_VARIANTS adds runs of the custom model beside
# configs/custom.py, as ';'-separated lists of --config overrides.
STEPS=${STEPS:-extraction feed study custom}
has() { [[ " $STEPS " == *" $1 "* ]]; }

row "| step | result | seconds |"
row "| --- | --- | --- |"

# --- Tests on the accelerator. ---
if has tests; then
start=$(now)
limited "$PY" -m pytest -q -n 4 -p no:cacheprovider tests -k "$TEST_SELECT" \
    > "$OUT/tests.log" 2>&1
rc=$?
row "| tests -k '$TEST_SELECT' (rc $rc) | $(grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -1) | $(since "$start") |"
fi

# --- Feature extraction: JAX vs PyTorch, and evaluation.extract_features (the project's path). ---
if has extraction; then
start=$(now)
limited "$PY" benchmarks/feature_extraction.py --device="$DEVICE" "${EXTRACT[@]}" \
    --pipeline --json="$OUT/extraction.json" > "$OUT/extraction.log" 2>&1
rc=$?
if [[ $rc == 0 ]]; then
  "$PY" - "$OUT/extraction.json" "$(since "$start")" <<'EOF' | tee -a "$TABLE"
import json, sys
rows = json.load(open(sys.argv[1]))['results']
for r in rows:
  print(f"| extraction {r['size']} px {r['dtype']} batch {r['batch']} | jax {r['jax_img_s']:.0f}, "
        f"torch {r['torch_img_s']:.0f}, pipeline {r['pipeline_img_s']:.0f} img/s; "
        f"jax/torch {r['jax_over_torch']:.2f}x (target pipeline bf16 >= 12000) | {sys.argv[2]} |")
EOF
else
  row "| extraction (rc $rc) | $(tail -1 "$OUT/extraction.log") | $(since "$start") |"
fi
fi

# --- What the host feeds: training batches at 224 px (augmented in the step). ---
if has feed; then
start=$(now)
limited "$PY" benchmarks/host_feed.py "${FEED[@]}" > "$OUT/feed.log" 2>&1
rc=$?
row "| host feed (rc $rc) | $(grep -E '^feed' "$OUT/feed.log" | paste -sd';' -) | $(since "$start") |"
fi

# --- The study end to end: three models, random pretrained bases, compilation included. ---
study() {  # study NAME: one timed run of gender_jax.study into $WORK/NAME.
  local start rc
  start=$(now)
  limited "$PY" -m gender_jax.study --workdir="$WORK/$1" "${STUDY[@]}" \
      --config.data_dir="$DATA" --config.tfds_dir="$WORK/tfds" \
      --config.allow_random_base=True > "$OUT/$1.log" 2>&1
  rc=$?
  since "$start" > "$WORK/$1.seconds"
  "$PY" - "$WORK/$1" "$1" "$rc" "$(cat "$WORK/$1.seconds")" <<'EOF' | tee -a "$TABLE"
import json, os, sys
workdir, name, rc, seconds = sys.argv[1:]
cells = []
for model in ('custom', 'vgg16', 'vggface'):
  path = os.path.join(workdir, model, 'results.json')
  if os.path.exists(path):
    r = json.load(open(path))
    data = r['total_seconds'] - r['feature_seconds'] - r['train_seconds']
    cells.append(f"{model} acc {r['metrics']['accuracy']:.3f} in {r['total_seconds']:.0f} s "
                 f"(data {data:.0f} s, features {r['feature_seconds']:.0f} s, "
                 f"train {r['train_seconds']:.0f} s)")
  else:
    cells.append(f'{model} missing')
print(f"| {name} (rc {rc}, target < 60 s) | {'; '.join(cells)} | {seconds} |")
EOF
}
# The first run also builds the TFDS dataset and the decoded-image cache; the second reuses them
# (compilation is repeated), if the first left time for it inside the device call's 10 minutes.
if has study; then
  study study_cold
  fits study_warm && study study_warm
fi

# --- The custom model on the study's protocol (configs/custom.py): real test accuracy. ---
custom() {  # custom NAME OVERRIDES...: one timed training run into $WORK/NAME.
  local name=$1 start rc
  shift
  start=$(now)
  limited "$PY" -m gender_jax.main --config=configs/custom.py --workdir="$WORK/$name" \
      --config.data_dir="$DATA" --config.tfds_dir="$WORK/tfds" "${CUSTOM[@]}" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  "$PY" - "$WORK/$name" "$OUT/$name.log" "$name" "$rc" "$(since "$start")" "$*" <<'EOF' \
      | tee -a "$TABLE"
import json, os, sys
workdir, log, name, rc, seconds, overrides = sys.argv[1:]
path = os.path.join(workdir, 'results.json')
if os.path.exists(path):
  r = json.load(open(path))
  m = r['metrics']
  cell = (f"test acc {m['accuracy']:.4f} (n={m['num_examples']}), AUC {m['roc_auc']:.4f}, "
          f"best epoch {r['best_epoch']}/{r['num_epochs']}, {r['train_images_per_second']:.0f} "
          f"train img/s")
else:  # The run's own one-line error (missing weights, say), if it ended with one.
  errors = [line for line in open(log, errors='replace') if line.startswith('error:')]
  cell = 'no results.json' + (f'; {errors[-1].strip()}' if errors else '')
print(f"| custom {name} {overrides} (rc {rc}) | {cell} | {seconds} |")
EOF
}
if has custom && fits custom; then
  custom custom_config
  IFS=';' read -ra variants <<< "${CUSTOM_VARIANTS:-}"
  for i in "${!variants[@]}"; do
    # shellcheck disable=SC2086  # Each variant is a list of flags.
    fits "custom_variant$i" && custom "custom_variant$i" ${variants[$i]}
  done
fi

# Only 8 files come back from the device machine: the table, and the rest (logs, JSON, each run's
# results.json and metrics.jsonl) in one archive.
for run in "$WORK"/custom_* "$WORK"/study_*/*; do
  if [[ -f $run/results.json ]]; then
    mkdir -p "$OUT/runs/${run#"$WORK"/}"
    cp "$run"/results.json "$run"/metrics.jsonl "$OUT/runs/${run#"$WORK"/}/"
  fi
done
(cd "$OUT" && tar czf logs.tgz --exclude=gpu_check.md --exclude=logs.tgz -- * &&
 find . -mindepth 1 ! -name gpu_check.md ! -name logs.tgz -delete)
rm -rf "$WORK"
echo "Table: $TABLE; logs: $OUT"
