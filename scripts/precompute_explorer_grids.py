"""Build data/explorer/<domain>.npz + .json: the image grids of explorer (iv) (notebooks 05-07).

    .venv/bin/python scripts/precompute_explorer_grids.py --domain all      # digits, shapes, sd
    .venv/bin/python scripts/precompute_explorer_grids.py --domain digits   # one domain
    .venv/bin/python scripts/precompute_explorer_grids.py --domain digits --tiny --out /tmp/g  # smoke run

For each domain, a grid of guidance strength (0, 0.3, 1, 3 x the calibrated strength) x
reference count (10, 50, 200), every cell sampled from seed 0 (32 images measured for the style
and valid rates, the first 8 kept as uint8). The sampling and the measuring are the library's
(``mmdg_lite.widgets.explorer_grid_sweep`` calls ``digits_task``/``shapes_task``/``run_method``
with ``PRESETS``, or ``pairing_task``/``run_pairing`` on the embedded SD pipeline). The JSON
records the settings and the sha256 of the models the grids came from; tests/test_widgets.py
fails when a shipped model or a calibrated default no longer matches: rerun this script then.
About 15-40 s per domain on one CPU thread (each JSON records its run's "seconds").
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmdg_lite._argtypes import positive_int  # noqa: E402
from mmdg_lite.widgets import GRID_DOMAINS, explorer_grid_sweep, save_explorer_grids  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", required=True, choices=[*GRID_DOMAINS, "all"])
    parser.add_argument("--out", type=Path, default=None, help="folder (default data/explorer)")
    parser.add_argument("--tiny", action="store_true",
                        help="2 strengths x 2 reference counts, 4 images, 2 steps (a smoke test)")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    shipped = Path(__file__).resolve().parents[1] / "data" / "explorer"
    if args.tiny and (args.out is None or args.out.resolve() == shipped):  # never replace the shipped grids
        parser.error("--tiny needs --out (a folder outside data/explorer): its 2x2 grid would replace the shipped one")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {str(args.out)!r} exists and is not a folder")
    if args.out is not None:  # before minutes of sampling, not when the grids are written
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a parent is a file, no permission, ...
            parser.error(f"--out: cannot create the folder {str(args.out)!r} ({err.strerror})")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' torch_dtype notice
    try:  # loading bars and notices of diffusers / transformers (the sd domain)
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    domains = GRID_DOMAINS if args.domain == "all" else (args.domain,)
    kw = dict(factors=(0.0, 1.0), reference_counts=(10, 20), n_shown=4, n_measured=4, num_steps=2) if args.tiny else {}
    for domain in domains:
        t0 = time.perf_counter()
        arrays, meta = explorer_grid_sweep(domain, log=print, **kw)
        meta["command"] = "python scripts/precompute_explorer_grids.py --domain " + domain + (" --tiny" if args.tiny else "")
        npz, js = save_explorer_grids(arrays, meta, args.out)
        print(f"{domain}: wrote {npz} ({npz.stat().st_size / 1e3:.0f} kB) and {js.name} "
              f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
