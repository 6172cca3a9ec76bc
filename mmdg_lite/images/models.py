"""The shipped image models in diffusers formats: recipes, training, and offline loaders.

- ``digits_unet``: pixel-space ``UNet2DModel`` on 16x16 digits whose pretraining set has 20 %
  thick strokes (``load_digit_set("train")``).
- ``shapes_vae``: ``AutoencoderKL`` on 32x32 shapes with ALL styles balanced (so the minority
  style is representable), 8x8x8 latents; ``config.scaling_factor`` = 1 / std of the latents.
- ``shapes_unet``: latent ``UNet2DModel`` on those latents of a pretraining set with 25 %
  outlined and 25 % large shapes (``make_shapes`` defaults).

Each lives in data/images/<name>/ as a ``save_pretrained`` folder (config.json +
diffusion_pytorch_model.safetensors) with training.json (recipe, time, loss, sha256) and
samples.png. Built by scripts/train_digits_unet.py, train_shapes_vae.py, train_shapes_unet.py.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .._io import from_pretrained
from .._resources import data_path
from .._validation import with_overrides
from ..seeding import make_generator, seed_everything

__all__ = ["DIGITS_UNET_DIR", "SHAPES_VAE_DIR", "SHAPES_UNET_DIR", "DIGITS_UNET_RECIPE",
           "SHAPES_VAE_RECIPE", "SHAPES_UNET_RECIPE", "train_digits_unet", "train_shapes_vae",
           "train_shapes_unet", "load_digits_unet", "load_shapes_vae", "load_shapes_unet",
           "save_model", "sample_shape", "TINY"]

DIGITS_UNET_DIR = data_path("images", "digits_unet")
SHAPES_VAE_DIR = data_path("images", "shapes_vae")
SHAPES_UNET_DIR = data_path("images", "shapes_unet")

DIGITS_UNET_RECIPE: dict[str, Any] = {
    "seed": 0, "size": 16, "style": "thick", "style_fraction": 0.2, "steps": 4000,
    "batch_size": 32, "lr": 2e-3,
    "unet": dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=[16, 32, 64],
                 layers_per_block=1, down_block_types=["DownBlock2D"] * 3,
                 up_block_types=["UpBlock2D"] * 3, norm_num_groups=8),
}
SHAPES_VAE_RECIPE: dict[str, Any] = {
    "seed": 0, "n_data": 6000, "data_seed": 1, "proportions": {"size": [0.5, 0.5], "fill": [0.5, 0.5]},
    "steps": 1500, "batch_size": 32, "lr": 2e-3, "kl_weight": 1e-4,
    "vae": dict(in_channels=3, out_channels=3, block_out_channels=[16, 32, 32],
                down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                latent_channels=8, layers_per_block=1, norm_num_groups=8, sample_size=32),
}
SHAPES_UNET_RECIPE: dict[str, Any] = {
    "seed": 0, "n_data": 10000, "data_seed": 2, "proportions": None, "steps": 6500,
    "batch_size": 32, "lr": 2e-3,
    "unet": dict(sample_size=8, in_channels=8, out_channels=8, block_out_channels=[32, 64],
                 layers_per_block=2, down_block_types=["DownBlock2D"] * 2,
                 up_block_types=["UpBlock2D"] * 2, norm_num_groups=8),
}
# A few steps on a few images: the build scripts' --tiny mode (tests run it end to end).
TINY: dict[str, Any] = {"steps": 3, "n_data": 64, "batch_size": 8}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_model(model: Any, folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """``save_pretrained`` into ``folder`` plus training.json (info + sha256 of the weights)."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.chmod(0o644)  # safetensors writes 0600; the file is meant to be shared, like the shipped ones
    info = {**info, "sha256": _sha256(weights), "bytes": weights.stat().st_size,
            "torch": torch.__version__}
    (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _load(cls_name: str, folder: Path | str | None, default: Path) -> Any:
    import diffusers

    folder = Path(folder) if folder is not None else default
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers model at {folder} (config.json missing); build it with "
                                f"scripts/train_{default.name}.py")
    # strict: weights that do not match the config (another model's folder, a truncated file) raise
    # ArtifactError instead of diffusers' warning and randomly initialised tensors
    # float32 whatever torch's default dtype: a float64 default loaded float64 models that sample() refused
    model = from_pretrained(getattr(diffusers, cls_name), folder, hint=f"scripts/train_{default.name}.py rebuilds it",
                            low_cpu_mem_usage=False, torch_dtype=torch.float32)
    return model.eval().requires_grad_(False)


def load_digits_unet(folder: Path | str | None = None) -> Any:
    """The shipped pixel ``UNet2DModel`` on 16x16 digits (eval mode, no grad), loaded offline."""
    return _load("UNet2DModel", folder, DIGITS_UNET_DIR)


def load_shapes_vae(folder: Path | str | None = None) -> Any:
    """The shipped ``AutoencoderKL`` on 32x32 shapes (eval mode, no grad), loaded offline."""
    return _load("AutoencoderKL", folder, SHAPES_VAE_DIR)


def load_shapes_unet(folder: Path | str | None = None) -> Any:
    """The shipped latent ``UNet2DModel`` (8x8x8 shapes latents), loaded offline."""
    return _load("UNet2DModel", folder, SHAPES_UNET_DIR)


def sample_shape(unet: Any) -> tuple[int, int, int]:
    """(C, H, W) of one sample of a ``UNet2DModel``, read from its config (e.g. (8, 8, 8)); a
    config without ``sample_size`` (diffusers' default is None) raises a ValueError."""
    size = unet.config.sample_size
    if size is None:  # tuple(None): a bare "'NoneType' object is not iterable"
        raise ValueError(f"this UNet's config has no sample_size, so the shape of its samples is unknown: pass "
                         f"sample's shape as ({int(unet.config.in_channels)}, H, W) yourself, at the size it was "
                         "trained on")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(unet.config.in_channels), int(h), int(w)


def _train_unet(unet: Any, data: Tensor, recipe: dict[str, Any], progress: bool) -> tuple[list[float], float]:
    from ..training import train_denoiser
    from .adapters import UNetDenoiser

    start = time.process_time()
    losses = train_denoiser(UNetDenoiser(unet), data, steps=recipe["steps"], batch_size=recipe["batch_size"],
                            lr=recipe["lr"], seed=recipe["seed"], progress=progress)
    return losses, time.process_time() - start


def train_digits_unet(progress: bool = True, **overrides: Any) -> tuple[Any, list[float], float]:
    """Train the digits UNet by ``DIGITS_UNET_RECIPE`` (+ overrides); returns (unet, losses, seconds).

    Seconds are CPU seconds of this process (``time.process_time``): on one thread that is the
    wall time the training takes on an idle core, whatever else shares the machine."""
    from diffusers import UNet2DModel

    from .digits import load_digit_set

    recipe = with_overrides(DIGITS_UNET_RECIPE, overrides, "train_digits_unet", extra=("n_data",))
    data = load_digit_set("train", size=recipe["size"], style=recipe["style"],
                          style_fraction=recipe["style_fraction"], seed=recipe["seed"]).images
    if "n_data" in recipe:
        data = data[: recipe["n_data"]]
    seed_everything(recipe["seed"])
    unet = UNet2DModel(**recipe["unet"])
    losses, secs = _train_unet(unet, data, recipe, progress)
    return unet.eval(), losses, secs


def _shapes_data(recipe: dict[str, Any]) -> Tensor:
    from .shapes import make_shapes

    return make_shapes(recipe["n_data"], recipe["proportions"], seed=recipe["data_seed"]).images


def train_shapes_vae(progress: bool = True, **overrides: Any) -> tuple[Any, list[float], float, float]:
    """Train the shapes VAE (MSE + kl_weight * KL, Adam, cosine lr); returns
    (vae, losses, seconds, held-out reconstruction MSE). Sets ``config.scaling_factor``."""
    from diffusers import AutoencoderKL

    from ..training import fit
    from .shapes import make_shapes

    recipe = with_overrides(SHAPES_VAE_RECIPE, overrides, "train_shapes_vae")
    data = _shapes_data(recipe)  # (N, 3, 32, 32)
    seed_everything(recipe["seed"])
    vae = AutoencoderKL(**recipe["vae"])
    gen = make_generator(recipe["seed"])

    def loss_step() -> Tensor:
        x = data[torch.randint(0, data.shape[0], (recipe["batch_size"],), generator=gen)]  # (B, 3, 32, 32)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen, dtype=torch.float32)  # (B, 8, 8, 8)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean.pow(2) + post.var - 1 - post.logvar).mean()
        return torch.nn.functional.mse_loss(rec, x) + recipe["kl_weight"] * kl

    start = time.process_time()
    losses = fit(vae, loss_step, recipe["steps"], recipe["lr"], progress=progress, desc="vae")
    secs = time.process_time() - start
    vae.eval()
    test = make_shapes(min(512, recipe["n_data"]), recipe["proportions"], seed=recipe["data_seed"] + 100).images
    with torch.no_grad():
        z = vae.encode(data[:1024]).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        test_mse = float(torch.nn.functional.mse_loss(vae.decode(vae.encode(test).latent_dist.mean).sample, test))
    return vae, losses, secs, test_mse


def train_shapes_unet(vae: Any, progress: bool = True, **overrides: Any) -> tuple[Any, list[float], float]:
    """Train the latent UNet on ``encode_references(vae, shapes)`` (posterior means x scaling_factor)."""
    from diffusers import UNet2DModel

    from .references import encode_references

    recipe = with_overrides(SHAPES_UNET_RECIPE, overrides, "train_shapes_unet")
    latents = encode_references(vae, _shapes_data(recipe))  # (N, 8, 8, 8)
    seed_everything(recipe["seed"])
    unet = UNet2DModel(**recipe["unet"])
    losses, secs = _train_unet(unet, latents, recipe, progress)
    return unet.eval(), losses, secs


def sample_grid(images: Tensor, path: Path, nrow: int = 8) -> None:
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid (``display.save_grid``)."""
    from .display import save_grid

    save_grid(images, path, nrow)


def build_cli(doc: str, build: Callable[[Path, bool], dict[str, Any]], default: Path) -> None:
    """Shared command line of the build scripts: ``--tiny`` (a few steps into a temp dir) or
    ``--out DIR``; one torch thread so the weights do not depend on the machine."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a few steps on a few images, into a temp dir")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {default})")
    args = parser.parse_args()
    if args.out is not None:  # checked before minutes of training, not when saving after them
        if args.out.exists() and not args.out.is_dir():
            parser.error(f"--out: {str(args.out)!r} exists and is not a folder")
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--out: cannot create {str(args.out)!r} ({err.strerror or err})")
    torch.set_num_threads(1)
    out = args.out or (Path(tempfile.mkdtemp(prefix=f"mmdg-{default.name}-")) if args.tiny else default)
    start = time.perf_counter()
    info = build(out, args.tiny)
    print(json.dumps({k: v for k, v in info.items() if k not in ("recipe",)}, indent=1))
    print(f"wrote {out}; total {time.perf_counter() - start:.1f} s")
