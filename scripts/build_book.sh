#!/usr/bin/env bash
# Build the book from the committed (executed) notebooks; no execution, offline, -W.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
rm -rf book/_build
jupyter-book build book/ -W -n --keep-going
