# Sourced by scripts/run.sh and scripts/test.sh: create .venv on first use and (re)install the
# package (editable) with every extra when pyproject.toml, setup.py or the constraints change.
# Idempotent. (Users install it the same way or from a wheel: tests/test_packaging.py builds one.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MMDG_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
pip_quiet() {  # pip's own exit status (a failed install stops here), its location notices filtered out
  "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
STAMP="$VENV/.mmdg-stamp"
WANT="$(cat pyproject.toml setup.py .ci/constraints.txt scripts/_env.sh | sha256sum | cut -d' ' -f1)"
# the import check runs outside the checkout, where only an installed mmdg_lite can be found
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! (cd / && "$PY" -c "import mmdg_lite") 2>/dev/null; then
  echo "[setup] installing mmdg_lite[notebooks,book,dev,sd] (torch held by .ci/constraints.txt)"
  rm -f "$STAMP"
  pip_quiet install -q --upgrade pip || { echo "[setup] upgrading pip failed" >&2; exit 1; }
  pip_quiet install -q -c .ci/constraints.txt -e ".[notebooks,book,dev,sd]" \
    || { echo "[setup] installing mmdg_lite failed (see pip's message above)" >&2; exit 1; }
  # the optional third image set (mmdg_lite.images.load_animals); the wheel declares tensorflow,
  # which its data does not need, so without dependencies
  pip_quiet install -q --no-deps "animal-mnist>=0.4,<1" \
    || echo "[setup] animal-mnist not installed (optional: only mmdg_lite.images.load_animals needs it)"
  (cd / && "$PY" -c "import mmdg_lite, torch; print('[setup] torch', torch.__version__)") \
    || { echo "[setup] mmdg_lite does not import after the install" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONHASHSEED=0  # no MPLBACKEND here: notebooks need the inline backend for their figures
