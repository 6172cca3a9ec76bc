"""One-line set-up for notebooks: seeds, a single torch thread, quiet warnings, figure style."""
from __future__ import annotations

import warnings

import torch

from .seeding import seed_everything


def setup_notebook(seed: int = 0, threads: int = 1, dpi: int = 90) -> torch.Generator:
    """Seed everything and return a generator; use ``threads`` torch threads.

    One thread is the default: small-tensor loops on a shared 2-core laptop run many times
    faster than with torch's default thread pool, and results are reproducible.
    """
    from ._validation import check_int, check_positive
    from .seeding import check_seed

    # every argument is checked before anything changes: a refused call leaves the session as it was
    seed, threads, dpi = check_seed(seed), check_int(threads, "threads", 1), check_positive(dpi, "dpi")
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="diffusers")
    try:
        import matplotlib as mpl
        import seaborn as sns

        sns.set_theme(context="notebook", style="whitegrid")
        mpl.rcParams["figure.dpi"] = dpi
    except ImportError:  # plotting extras not installed: seeds and threads still apply
        pass
    return seed_everything(seed)
