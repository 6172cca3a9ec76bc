#!/usr/bin/env bash
# Build the book into book/_build/html: offline, warnings as errors (-W -n --keep-going).
#
#   bash scripts/build_book.sh            render the outputs committed in notebooks/*.ipynb
#   bash scripts/build_book.sh --execute  execute every notebook on a fresh kernel *into the
#                                         build* (myst-nb, in memory) and render those outputs;
#                                         notebooks/*.ipynb are not modified
#
# Exits non-zero if the build fails. Fetches the widget scripts from the npm registry on first
# use (book/_ext/vendor.py, cached in book/_vendor), so the site itself loads nothing remotely.
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the whole header comment
  exit 0
fi
# arguments first: a typo must not wait for (or trigger) the environment setup
EXECUTE=0
for arg in "$@"; do
  case "$arg" in
    --execute) EXECUTE=1 ;;
    *) echo "build_book.sh: unknown argument '$arg' (valid: --execute)" >&2; exit 2 ;;
  esac
done
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# book/notebooks is a git-tracked symlink to ../notebooks (Sphinx reads only inside book/);
# recreate it if a checkout turned it into a plain file.
if [ ! -d book/notebooks ]; then
  rm -f book/notebooks
  ln -s ../notebooks book/notebooks
fi
python book/_ext/vendor.py
CONFIG=book/_config.yml
if [ "$EXECUTE" = 1 ]; then
  # Same configuration with execution forced. It must sit in book/ (Jupyter Book resolves the
  # output folder and local extensions relative to the config file); git ignores it.
  CONFIG=book/_config.execute.yml
  trap 'rm -f book/_config.execute.yml' EXIT
  sed 's/^  execute_notebooks: "off"$/  execute_notebooks: "force"/' book/_config.yml > "$CONFIG"
  grep -q '^  execute_notebooks: "force"$' "$CONFIG" || { echo "[book] could not force execution in $CONFIG" >&2; exit 1; }
fi
rm -rf book/_build
START=$(date +%s)
jupyter-book build book/ --config "$CONFIG" -W -n --keep-going
test -f book/_build/html/index.html
echo "[book] built in $(( $(date +%s) - START )) s: $ROOT/book/_build/html/index.html" \
     "($(find book/_build/html -name '*.html' -not -path '*/_static/*' | wc -l) pages," \
     "$(ls book/_build/html/_images 2>/dev/null | wc -l) images)"
