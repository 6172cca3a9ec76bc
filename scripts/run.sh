#!/usr/bin/env bash
# The main job: execute every notebook in place on a fresh kernel, then build the book
# (Jupyter Book 1.x, offline, warnings as errors) into book/_build/html.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
for nb in notebooks/[0-9]*.ipynb; do
  echo "[run] executing $nb"
  jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 "$nb"
done
bash scripts/build_book.sh
echo "[run] book: $ROOT/book/_build/html/index.html"
