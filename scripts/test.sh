#!/usr/bin/env bash
# Run every test: unit tests, then every notebook top to bottom through nbval.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m pytest tests/ -q "$@"
python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider -q notebooks/
