#!/usr/bin/env bash
# Regenerate every table in benchmarks/results/ (about 75 minutes on 2 CPU cores; the image tables
# (calibration, benchmark, untuned defaults, ceiling, reference count, classifier negatives, FD sample
# count, feature kernels, shapes validity, VAE decoder) take about 54 of them: their stated times sum to 2,967 s,
# and images.py's step timing now samples 400 runs of 50 steps (311 s in images.json), where the 376 s
# that images.md states included 60 such runs).
#
#   bash benchmarks/run_all.sh            # every benchmark, in order
#   bash benchmarks/run_all.sh synthetic_tables gradients   # only these (names without .py)
#
# Each script writes its own markdown (and JSON/PNG) under benchmarks/results/ with the exact
# command, every argument included, in its header. Scripts that do not exist yet are skipped with
# a note. The run stops at the first failing script; a timing summary is printed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${MMDG_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg PYTHONHASHSEED=0

# name | arguments (the ones that produced the committed tables)
BENCHMARKS=(
  "gradients|--threads 1 2"
  "performance|"
  "performance|--rff"
  "toy_guidance|--seeds 5 --n 1000 --threads 1"
  "prompt_aware|"
  "synthetic_tables|"
  "mlp_100d|"
  "sd|"
  "calibration|--domain digits"
  "calibration|--domain shapes"
  "images|--jobs 2"
  "images_untuned|--jobs 2"
  "style_ceiling|--jobs 2"
  "digits_reference_count|--jobs 2"
  "classifier_negatives|"
  "fd_samples|--jobs 2"
  "feature_kernels|--jobs 2"
  "vae_decoder|--jobs 2"
  "shapes_validity|"
  "defaults|"
  "robustness|"
  "overhead|"
  "distributed|--repeats 3"
)

want() {  # with arguments on the command line, run only the named benchmarks
  [ "$#" -eq 1 ] && return 0
  local name="$1"; shift
  for w in "$@"; do [ "$w" = "$name" ] && return 0; done
  return 1
}

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the whole header comment
  exit 0
fi
NAMES=" ${BENCHMARKS[*]%%|*} "
for w in "$@"; do  # a misspelt name ran nothing and exited 0
  case "$NAMES" in
    *" $w "*) ;;
    *) echo "run_all.sh: unknown benchmark '$w'; valid names:${NAMES% }" >&2; exit 2 ;;
  esac
done

SUMMARY=()
START=$(date +%s)
for entry in "${BENCHMARKS[@]}"; do
  name="${entry%%|*}"; args="${entry#*|}"
  want "$name" "$@" || continue
  script="benchmarks/$name.py"
  if [ ! -f "$script" ]; then
    echo "[run_all] skip $script (not present)"
    SUMMARY+=("$(printf '%-32s skipped (missing)' "$name $args")")
    continue
  fi
  echo "[run_all] $PY $script $args"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  "$PY" "$script" $args
  SUMMARY+=("$(printf '%-32s %5d s' "$name $args" $(( $(date +%s) - t0 )))")
done

echo
echo "[run_all] timings"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "  total                            $(( $(date +%s) - START )) s"
