#!/usr/bin/env bash
# Run every test: unit tests, every notebook top to bottom through nbval, then build the book
# (warnings as errors) and check the built site: static checks and every page in headless
# Chromium (tests/test_book_site.py, tests/test_book_browser.py). Extra arguments go to the
# unit-test run.
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # pytest would print its own help, then all ran
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # the whole header comment
  exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
BOOK_TESTS=(tests/test_book_site.py tests/test_book_browser.py)
echo "[test] unit tests"
python -m pytest tests/ -q "${BOOK_TESTS[@]/#/--ignore=}" "$@"
echo "[test] notebooks (nbval)"
python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider -q notebooks/[0-9][0-9]_*.ipynb
echo "[test] book"
bash scripts/build_book.sh
python -m pytest -q "${BOOK_TESTS[@]}"
