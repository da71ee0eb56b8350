#!/usr/bin/env bash
# The GPU check in one call: the GPU-relevant tests, VGG16 feature extraction (JAX vs PyTorch and
# the project's own pipeline, 224 px, bf16 and fp32) and the three-model study end to end on real
# faces at 224 px with random bases. Sized for about 8 minutes on one H100/H200. Prints a short
# table and writes it to $OUT/gpu_check.md (logs and JSON beside it) when $OUT is set.
#
#   bash benchmarks/gpu_check.sh DATA_DIR           # on the GPU machine, from the repo root
#   bash benchmarks/gpu_check.sh DATA_DIR --small   # tiny sizes on CPU: checks the script here
#
# Packages the GPU image lacks travel as wheels in .whl/ (see benchmarks/README.md) and are
# installed into /tmp/site (WHEELS= skips that, where the packages are there already). PYTHON
# picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR [--small]}
MODE=${2:-full}
PY=${PYTHON:-python3}
WHEELS=${WHEELS-.whl}
OUT=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)
mkdir -p "$OUT"
TABLE="$OUT/gpu_check.md"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
# JAX and PyTorch share the card in the extraction benchmark; pytest workers share it too.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if [[ $MODE == --small ]]; then
  export JAX_PLATFORMS=cpu
  DEVICE=cpu TEST_SELECT='models' STEP_LIMIT=300
  EXTRACT=(--sizes=32 --dtypes=bfloat16,float32 --batch=4 --iters=1 --warmup=1
           --pipeline_images=8)
  STUDY=(--config=configs/tiny.py:custom)
else
  export JAX_PLATFORMS=cuda
  DEVICE=gpu TEST_SELECT='train or models' STEP_LIMIT=150
  EXTRACT=(--sizes=224 --dtypes=bfloat16,float32 --batch=256 --iters=5 --warmup=2
           --pipeline_images=4096)
  STUDY=(--config=configs/default.py --config.image_size=224 --config.compute_dtype=bfloat16)
fi

row() { echo "$*" | tee -a "$TABLE"; }
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
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1 \
    || { cat "$OUT/install.log"; exit 1; }
row "install: $(since "$start") s"
row "machine: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
row "versions: $("$PY" -c 'import jax, flax, optax, sys
try:
  import torch; t = torch.__version__
except ImportError:
  t = "none"
print(f"python {sys.version.split()[0]}, jax {jax.__version__} ({jax.devices()[0].device_kind}),",
      f"flax {flax.__version__}, optax {optax.__version__}, torch {t}")' 2>&1 | tail -1)"
row

# --- Tests on the accelerator. ---
start=$(now)
timeout "$STEP_LIMIT" "$PY" -m pytest -q -n 4 -p no:cacheprovider tests -k "$TEST_SELECT" \
    > "$OUT/tests.log" 2>&1
rc=$?
row "| step | result | seconds |"
row "| --- | --- | --- |"
row "| tests -k '$TEST_SELECT' (rc $rc) | $(grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -1) | $(since "$start") |"

# --- Feature extraction: JAX vs PyTorch, and train.extract_features (the project's path). ---
start=$(now)
timeout "$STEP_LIMIT" "$PY" benchmarks/feature_extraction.py --device="$DEVICE" "${EXTRACT[@]}" \
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

# --- The study end to end: three models, random pretrained bases, compilation included. ---
study() {  # study NAME: one timed run of gender_jax.study into $WORK/NAME.
  local start rc
  start=$(now)
  timeout "$STEP_LIMIT" "$PY" -m gender_jax.study --workdir="$WORK/$1" "${STUDY[@]}" \
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
    cells.append(f"{model} acc {r['metrics']['accuracy']:.3f} in {r['total_seconds']:.0f} s "
                 f"(features {r['feature_seconds']:.0f} s, train {r['train_seconds']:.0f} s)")
  else:
    cells.append(f'{model} missing')
print(f"| {name} (rc {rc}, target < 60 s) | {'; '.join(cells)} | {seconds} |")
EOF
}
# The first run also builds the TFDS dataset and the decoded-image cache; the second reuses them
# (compilation is repeated), if the first left time for it inside the device call's 10 minutes.
study study_cold
if awk -v s="$(cat "$WORK/study_cold.seconds")" -v t="$SECONDS" 'BEGIN { exit !(t + s < 540) }'
then
  study study_warm
else
  row "| study_warm | skipped: not enough time left after ${SECONDS} s | |"
fi

rm -rf "$WORK"
echo "Table: $TABLE; logs: $OUT"
