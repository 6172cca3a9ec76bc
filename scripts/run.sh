#!/usr/bin/env bash
# The main job: build the whole site (the book) into book/_build/html.
#
#   bash scripts/run.sh            execute every notebook top to bottom on a fresh kernel *into
#                                  the build* and render the fresh outputs; the committed
#                                  notebooks/*.ipynb are left as they are
#   bash scripts/run.sh --refresh  execute every notebook *in place* (this is how the committed
#                                  outputs are regenerated), then build the book from them
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the whole header comment
  exit 0
fi
# arguments first: a typo must not wait for (or trigger) the environment setup
REFRESH=0
for arg in "$@"; do
  case "$arg" in
    --refresh) REFRESH=1 ;;
    *) echo "run.sh: unknown argument '$arg' (valid: --refresh)" >&2; exit 2 ;;
  esac
done
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
if [ "$REFRESH" = 1 ]; then
  for nb in notebooks/[0-9]*.ipynb; do
    echo "[run] executing $nb in place"
    jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 "$nb"
  done
  bash scripts/build_book.sh
else
  bash scripts/build_book.sh --execute
fi
echo "[run] book: $ROOT/book/_build/html/index.html"
