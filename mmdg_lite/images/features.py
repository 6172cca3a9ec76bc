"""The project's image feature space: a small CNN trained on the real images (digits + shapes).

It stands in for the paper's DINOv2 features (and is NOT Inception): FD, KD, density and
coverage of generated images are computed on its 64-D penultimate layer. One network serves
both domains: digits (1x16x16) are resized to 32x32 and repeated to three channels. Heads:
digit class (10) and thick strokes (2) on digits; shape (3), colour (4), size (2) and fill (2)
on shapes. Trained by scripts/train_feature_net.py; shipped in data/images/feature_net.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._resources import data_path
from .._validation import _describe, check_finite, check_int, with_overrides
from ..seeding import make_generator, own_rng, seed_everything
from .detectors import _check_background, _check_scale

__all__ = ["FeatureNet", "FEATURE_NET_DIR", "FEATURE_NET_RECIPE", "HEADS", "train_feature_net",
           "load_feature_net", "save_feature_net", "image_features", "predict", "digit_atypicality",
           "digit_typicality_threshold", "detect_valid_digit", "DIGIT_TYPICAL_QUANTILE"]

FEATURE_NET_DIR = data_path("images", "feature_net")
HEADS: dict[str, int] = {"digit": 10, "thick": 2, "shape": 3, "colour": 4, "size": 2, "fill": 2}
DIGIT_HEADS, SHAPE_HEADS = ("digit", "thick"), ("shape", "colour", "size", "fill")
# A generated digit is valid when the digit head is confident AND its features lie where real
# digits' do: within the atypicality of all but this share of the held-out real digits.
DIGIT_TYPICAL_QUANTILE = 0.995
FEATURE_NET_RECIPE: dict[str, Any] = {"seed": 0, "steps": 1500, "batch_size": 32, "lr": 2e-3,
                                      "n_shapes": 4000, "shapes_seed": 1, "width": 32, "feature_dim": 64}


class FeatureNet(nn.Module):
    """conv 3x3 (32) -> stride-2 convs 32/64/64 -> 4x4 -> linear -> 64-D features -> heads."""

    def __init__(self, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        w = width
        self.config = {"width": width, "feature_dim": feature_dim}
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.SiLU(),           # 16x16
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),       # 8x8
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),   # 4x4
            nn.Flatten(), nn.Linear(2 * w * 16, feature_dim), nn.SiLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, v) for k, v in HEADS.items()})

    @staticmethod
    def check_shape(images: Any) -> None:
        """ValueError unless ``images`` is a tensor (N, 1 or 3, H, W)."""
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor (N, 1 or 3, H, W) in [-1, 1]; got {got}")

    @staticmethod
    def prepare(images: Tensor) -> Tensor:
        """(N, 1 or 3, H, W) in [-1, 1] -> (N, 3, 32, 32)."""
        FeatureNet.check_shape(images)
        x = images.float()
        if x.shape[-2:] != (32, 32):
            x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def features(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, feature_dim), the evaluation feature space."""
        return self.body(self.prepare(images))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        f = self.features(images)  # (N, F)
        return {k: head(f) for k, head in self.heads.items()}


def save_feature_net(net: FeatureNet, folder: Path, info: dict[str, Any]) -> None:
    """Write ``net`` to ``folder`` as ``load_feature_net`` reads it: model.safetensors, config.json
    and training.json (``info`` plus the weights' sha256, size and the torch version)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    import hashlib

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors")
    (folder / "model.safetensors").chmod(0o644)  # safetensors writes 0600
    (folder / "config.json").write_text(json.dumps(net.config, indent=2) + "\n")
    weights = (folder / "model.safetensors").read_bytes()
    info = {**info, "sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights),
            "torch": torch.__version__}
    (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def load_feature_net(folder: Path | str | None = None) -> FeatureNet:
    """The shipped feature network (eval mode, no grad)."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else FEATURE_NET_DIR
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"no feature network at {folder}; build it with scripts/train_feature_net.py")
    with own_rng():  # the init's draws are overwritten; the caller's global RNG must not move
        net = FeatureNet(**json.loads((folder / "config.json").read_text())).float()  # whatever the default dtype
    net.load_state_dict(load_file(folder / "model.safetensors"))
    return net.eval().requires_grad_(False)


def _check_images(images: Any) -> None:
    """Finite images on the [-1, 1] scale: 0-255 pixels (or NaN) would give features, and an FD,
    without an error. (Not in ``FeatureNet.prepare``: a kernel on Tweedie estimates may see values
    far outside [-1, 1] at the noisy steps.)"""
    FeatureNet.check_shape(images)
    check_finite(images.detach(), "images")
    _check_scale(images.detach(), "images")
    _check_background(images.detach(), "images")  # the network was trained on bright ink on -1, as the detectors


def image_features(images: Tensor, net: FeatureNet | None = None, batch_size: int = 512) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, 64) features of the shipped (or given) network, on its device
    (images on another device, e.g. samples on a GPU, are moved there)."""
    _check_images(images)
    check_int(batch_size, "batch_size", 1)
    net = _net(net)
    device = _device(net)
    with torch.no_grad():
        return torch.cat([net.features(chunk.to(device)) for chunk in images.split(batch_size)])


def predict(images: Tensor, head: str, net: FeatureNet | None = None, batch_size: int = 512) -> Tensor:
    """(N, K) softmax probabilities of one head ("digit", "thick", "shape", ...)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}; got {head!r}")
    _check_images(images)
    check_int(batch_size, "batch_size", 1)
    net = _net(net)
    device = _device(net)
    with torch.no_grad():
        return torch.cat([net.heads[head](net.features(c.to(device))).softmax(-1) for c in images.split(batch_size)])


def _net(net: Any) -> FeatureNet:
    """The given FeatureNet, or the shipped one for None; anything else (a folder path, a diffusers
    model) raised AttributeError from inside the forward."""
    if net is None:
        return _cached()
    if not isinstance(net, FeatureNet):
        raise TypeError(f"net must be a FeatureNet (e.g. load_feature_net(folder)) or None for the shipped one; "
                        f"got {_describe(net)}")
    return net


def _device(net: FeatureNet) -> torch.device:
    """Where the network's weights are: GPU samples met the CPU network in a bare conv2d device error."""
    return next(net.parameters()).device


_CACHE: dict[str, Any] = {}


def _cached() -> FeatureNet:
    if "net" not in _CACHE:
        _CACHE["net"] = load_feature_net()
    return _CACHE["net"]


def _mahalanobis(f: Tensor, mu: Tensor, prec: Tensor) -> Tensor:
    """(N,) sqrt((f - mu)^T prec (f - mu)) for features f (N, F), in float64."""
    d = f.double() - mu  # (N, F)
    return ((d @ prec) * d).sum(1).clamp_min(0).sqrt()


def _real_digit_stats() -> tuple[Tensor, Tensor, float]:
    """Mean (64,) and inverse covariance (64, 64) of the shipped net's features of the real
    digits of the train split, half of them thickened (float64), and the atypicality threshold:
    the DIGIT_TYPICAL_QUANTILE quantile over the 500 held-out test digits, half thickened."""
    if "digit_stats" not in _CACHE:
        from .digits import load_digit_set

        f = image_features(load_digit_set("train", style_fraction=0.5).images).double()  # (1297, 64)
        mu = f.mean(0)  # (64,)
        cov = torch.cov((f - mu).T) + 1e-3 * torch.eye(f.shape[1], dtype=torch.float64)  # (64, 64)
        prec = torch.linalg.inv(cov)
        held_out = _mahalanobis(image_features(load_digit_set("test", style_fraction=0.5).images), mu, prec)
        _CACHE["digit_stats"] = (mu, prec, float(held_out.quantile(DIGIT_TYPICAL_QUANTILE)))
    return _CACHE["digit_stats"]


def digit_atypicality(images: Tensor) -> Tensor:
    """(N,) Mahalanobis distance of the feature net's embedding of digits (N, 1, H, W) in [-1, 1]
    from the real digits' (train split, half thickened): how far from anything a real digit shows.

    The digit head alone can be confident on images no real digit resembles (the blotches of
    over-strong guidance in the digits explorer grid); this distance is not."""
    mu, prec, _ = _real_digit_stats()
    return _mahalanobis(image_features(images), mu, prec).float()  # (N,)


def digit_typicality_threshold() -> float:
    """The atypicality that all but 0.5 % (DIGIT_TYPICAL_QUANTILE) of the 500 held-out real
    digits stay within."""
    return _real_digit_stats()[2]


def detect_valid_digit(images: Tensor) -> Tensor:
    """(N,) bool: a valid digit: the digit head is >= 50 % confident of one class and the image's
    features are typical of real digits (atypicality <= ``digit_typicality_threshold()``)."""
    net = _cached()
    f = image_features(images, net)  # (N, 64), once for both conditions
    with torch.no_grad():
        confident = net.heads["digit"](f).softmax(-1).max(1).values >= 0.5  # (N,)
    mu, prec, threshold = _real_digit_stats()
    return confident & (_mahalanobis(f, mu, prec).float() <= threshold)


def train_feature_net(progress: bool = True, **overrides: Any) -> tuple[FeatureNet, list[float], float]:
    """Multi-task cross-entropy on digits (train split, thick on a random half of each batch)
    and balanced shapes; ``training.fit`` (Adam, cosine lr). Returns (net, losses, seconds)."""
    from ..training import fit

    from .digits import load_digit_set, thicken
    from .shapes import make_shapes

    r = with_overrides(FEATURE_NET_RECIPE, overrides, "train_feature_net")
    digits = load_digit_set("train", style_fraction=0.0)
    shapes = make_shapes(r["n_shapes"], {"size": [0.5, 0.5], "fill": [0.5, 0.5]}, seed=r["shapes_seed"])
    seed_everything(r["seed"])
    net = FeatureNet(r["width"], r["feature_dim"])
    gen = make_generator(r["seed"])
    ce = nn.functional.cross_entropy
    b = r["batch_size"]

    def loss_step() -> Tensor:
        di = torch.randint(0, len(digits), (b,), generator=gen)  # (b,)
        thick = torch.rand(b, generator=gen, dtype=torch.float32) < 0.5  # (b,)
        xd = digits.images[di].clone()  # (b, 1, 16, 16)
        xd[thick] = thicken(xd[thick])
        si = torch.randint(0, len(shapes), (b,), generator=gen)
        out_d, out_s = net(xd), net(shapes.images[si])
        loss = ce(out_d["digit"], digits.labels[di]) + ce(out_d["thick"], thick.long())
        return loss + sum(ce(out_s[k], shapes.attributes[k][si]) for k in SHAPE_HEADS)

    start = time.process_time()  # CPU seconds: the idle-core wall time on one thread
    losses = fit(net, loss_step, r["steps"], r["lr"], progress=progress, desc="feature net")
    return net.eval().requires_grad_(False), losses, time.process_time() - start
