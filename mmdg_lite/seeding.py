"""One place for seeds: the same seed gives the same numbers."""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch's global RNGs; return a torch Generator with the same seed.
    numpy takes 32-bit words: a seed >= 2**32 is given to it as two (seed % 2**32 gave 2**32 seed 0's stream)."""
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32])
    torch.manual_seed(seed)
    return make_generator(seed)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch Generator seeded with ``seed`` (pass it to samplers and data helpers)."""
    check_seed(seed)
    return torch.Generator(device=device).manual_seed(int(seed))


@contextmanager
def own_rng(seed: int | None = None, device: str | torch.device | None = None) -> Iterator[None]:
    """Run a block (building modules, whose default init draws from torch's global CPU RNG)
    and put that RNG back as it was afterwards; with ``seed`` the block's draws are seeded.
    Loading a shipped model must not move, or reseed, the caller's random stream. A CUDA
    ``device``'s global RNG (what dropout on that device draws from) is forked and seeded too."""
    if seed is not None:
        check_seed(seed)
    dev = torch.device(device) if device is not None else None
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev is not None and dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.random.default_generator.manual_seed(int(seed))
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(int(seed))
        yield


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int in [0, 2**63) (what torch generators accept), else ValueError naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"{name} must be an integer in [0, 2**63); got {seed!r}")
    return int(seed)
