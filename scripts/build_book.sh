#!/usr/bin/env bash
# Build the book from the committed (executed) notebooks into book/_build/html: no execution,
# offline, warnings as errors (-W -n --keep-going). Exits non-zero if the build fails.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# book/notebooks is a git-tracked symlink to ../notebooks (Sphinx reads only inside book/);
# recreate it if a checkout turned it into a plain file.
if [ ! -d book/notebooks ]; then
  rm -f book/notebooks
  ln -s ../notebooks book/notebooks
fi
rm -rf book/_build
jupyter-book build book/ -W -n --keep-going
test -f book/_build/html/index.html
echo "[book] built: $ROOT/book/_build/html/index.html ($(ls book/_build/html/_images 2>/dev/null | wc -l) images)"
