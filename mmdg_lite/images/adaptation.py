"""Image domain adaptation: a pretrained model, a user's few references of a minority style,
and the methods compared in the paper's Table 1 (MMD guidance, classifier guidance, fine-tuning).

One ``AdaptationTask`` describes either domain: the pixel digits UNet (style: thick strokes) or
the latent shapes UNet + VAE (style: outlined). ``run_method`` samples with one method and
measures the target-attribute rate, the valid rate (detectors), FD, KD, density and coverage to
held-out images of the target style in the project's feature space (``features.image_features``),
and the cost.
"""
from __future__ import annotations


import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .._validation import _describe, check_bool, check_int, check_nonnegative, check_positive
from ..seeding import check_seed

__all__ = ["AdaptationTask", "MethodResult", "digits_task", "shapes_task", "run_method", "METHODS"]

METHODS = ("unguided", "mmd", "classifier", "finetune")
_DC_K = 5  # density / coverage neighbours (Naeem et al. 2020's default)


@dataclass
class AdaptationTask:
    """Everything a method needs; ``decode`` maps model samples to images in [-1, 1]."""

    name: str
    denoiser: Any                              # eps = denoiser(x_t, t, cond)
    shape: tuple[int, ...]                     # one model sample (C, H, W)
    references: Tensor                         # (N_r, *shape) the user's references, model space
    reference_images: Tensor                   # (N_r, C, H, W) the same, as images
    target_images: Tensor                      # (M, C, H, W) held-out target-style images (FD/KD)
    decode: Callable[[Tensor], Tensor]         # model samples -> images
    has_style: Callable[[Tensor], Tensor]      # images -> (N,) bool target attribute
    is_valid: Callable[[Tensor], Tensor]       # images -> (N,) bool realism check
    style: str
    classify: Callable[[Tensor], Tensor] | None = None  # images -> (N,) long content class
    n_classes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodResult:
    method: str
    images: Tensor            # (n, C, H, W) decoded samples
    style_rate: float         # fraction with the target attribute
    valid_rate: float         # fraction the detector calls valid
    fd: float                 # FD to held-out target-style images (feature net space)
    kd: float                 # KD (x 1e3) to the same, features divided by the targets' std
    seconds: float            # sampling wall time
    setup_seconds: float = 0.0  # wall time before sampling: fine-tuning's training; classifier guidance's
    # unguided negatives (max(references, 64) samples) and its training
    class_tv: float = float("nan")  # TV between the content-class histogram and uniform
    samples: Tensor | None = None   # (n, *task.shape) the model-space samples (latents for shapes)
    density: float = float("nan")   # density and coverage (k = 5) of the samples' features against
    coverage: float = float("nan")  # the targets' (nan with <= 5 targets: no 5 neighbours)


def digits_task(n_refs: int = 50, seed: int = 0, stratified: bool = True) -> AdaptationTask:
    """Pixel space: the shipped digits UNet (20 % thick in pretraining); references = ``n_refs``
    thick digits of the held-out test split; targets = the other test digits, thickened.

    ``stratified`` (default): the references cover the ten classes evenly (5 of each for 50), as
    the held-out targets do. A plain random draw of 50 is lopsided (seed 0: eleven 0s, twelve 4s,
    no 1s), and MMD guidance matches the references' class mix faithfully, so FD to the
    targets would then measure the luck of the draw more than the style.

    ``n_refs``: 1 to ``N_TEST_DIGITS - 2`` (498), so that at least 2 held-out targets remain for FD."""
    from .adapters import UNetDenoiser
    from .detectors import detect_thick
    from .digits import N_TEST_DIGITS, load_digit_set
    from .features import detect_valid_digit, predict
    from .models import load_digits_unet

    valid = (f"an integer from 1 to {N_TEST_DIGITS - 2} (references and targets split the {N_TEST_DIGITS} "
             "held-out test digits; FD needs at least 2 targets)")
    if isinstance(n_refs, bool) or not isinstance(n_refs, (int, np.integer)):
        raise TypeError(f"n_refs must be {valid}; got {_describe(n_refs)}")
    if not 1 <= n_refs <= N_TEST_DIGITS - 2:
        raise ValueError(f"n_refs must be {valid}; got {n_refs}")

    seed, stratified = check_seed(seed), check_bool(stratified, "stratified")
    test = load_digit_set("test", style_fraction=1.0)
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    if stratified:  # the first n_refs of the permutation in round-robin class order
        rank = torch.empty_like(perm)
        for c in range(10):
            members = perm[test.labels[perm] == c]
            rank[members] = torch.arange(len(members)) * 10 + c
        perm = perm[rank[perm].argsort()]
    refs, targets = test.images[perm[:n_refs]], test.images[perm[n_refs:]]

    return AdaptationTask("digits", UNetDenoiser(load_digits_unet()), (1, 16, 16), refs, refs, targets,
                          decode=lambda x: x.clamp(-1, 1), has_style=detect_thick, is_valid=detect_valid_digit,
                          style="thick", classify=lambda x: predict(x, "digit").argmax(1), n_classes=10)


_SHAPES_REFERENCE_SEED, _SHAPES_TARGET_SEED = 1000, 2000  # make_shapes seeds: references 1000 + seed


def shapes_task(n_refs: int = 50, seed: int = 0) -> AdaptationTask:
    """Latent space: the shipped shapes VAE + latent UNet (25 % outlined in pretraining);
    references = ``n_refs`` outlined shapes (other attributes at the pretraining mix), encoded
    with the VAE's scaling factor once; targets = 500 other outlined shapes."""
    from .adapters import UNetDenoiser
    from .detectors import detect_shapes
    from .models import load_shapes_unet, load_shapes_vae, sample_shape
    from .references import decode_latents, encode_references
    from .shapes import make_shapes

    check_int(n_refs, "n_refs", 1)
    seed = check_seed(seed)
    if _SHAPES_REFERENCE_SEED + seed == _SHAPES_TARGET_SEED:  # the references would be drawn as the targets are
        raise ValueError(f"seed {seed} draws the references with the held-out targets' own seed "
                         f"({_SHAPES_TARGET_SEED}), so they would be the targets, not other shapes: use another seed")

    vae, unet = load_shapes_vae(), load_shapes_unet()
    ref_imgs = make_shapes(n_refs, {"fill": {"outlined": 1.0}}, seed=_SHAPES_REFERENCE_SEED + seed).images
    targets = make_shapes(500, {"fill": {"outlined": 1.0}}, seed=_SHAPES_TARGET_SEED).images
    return AdaptationTask("shapes", UNetDenoiser(unet), sample_shape(unet),
                          encode_references(vae, ref_imgs), ref_imgs, targets,
                          decode=lambda z: decode_latents(vae, z),
                          has_style=lambda x: detect_shapes(x).attributes["fill"] == 1,
                          is_valid=lambda x: detect_shapes(x).valid, style="outlined",
                          classify=lambda x: detect_shapes(x).attributes["shape"], n_classes=3,
                          extra={"vae": vae})


def _measure(task: AdaptationTask, method: str, z: Tensor, seconds: float, setup: float) -> MethodResult:
    from ..metrics import density_coverage, frechet_distance, kernel_distance
    from .features import image_features

    images = task.decode(z)
    f, g = image_features(images), image_features(task.target_images)
    scale = float(g.std())  # KD's cubic kernel (u.v / D + 1)^3 needs features of unit scale
    kd = kernel_distance(f / scale, g / scale, n_subsets=20).mean * 1e3
    dc = density_coverage(g, f, k=_DC_K) if len(g) > _DC_K else None  # real k-NN balls need k other targets
    tv = float("nan")
    if task.classify is not None:  # guidance must not collapse the content classes
        labels = task.classify(images)  # (N,), -1 for an image of no class (a blank shape)
        hist = torch.bincount(labels[labels >= 0], minlength=task.n_classes).double() / len(images)
        none = float((labels < 0).double().mean())  # an extra bin the uniform target gives 0
        tv = 0.5 * (float((hist - 1.0 / task.n_classes).abs().sum()) + none)
    return MethodResult(method, images, float(task.has_style(images).float().mean()),
                        float(task.is_valid(images).float().mean()), frechet_distance(f, g), kd,
                        seconds, setup, tv, z, dc.density if dc else float("nan"), dc.coverage if dc else float("nan"))


_NEGATIVES_SEED_OFFSET = 10_000  # the classifier's unguided negatives: another draw than the samples'
_MAX_CLASSIFIER_SEED = 2**63 - 1 - _NEGATIVES_SEED_OFFSET


def run_method(task: AdaptationTask, method: str, *, n: int = 64, seed: int = 0, num_steps: int = 50,
               scheduler: str = "ddim", guidance: Any = None, classifier_scale: float = 10.0,
               classifier_steps: int = 400, finetune_steps: int = 100, finetune_lr: float = 5e-4,
               batch_size: int | None = None, eta: float = 0.0) -> MethodResult:
    """Sample ``n`` (>= 2: FD and KD need two samples) with ``method`` ("unguided", "mmd" with
    the given ``guidance``: a hook such as ``MMDGuidance(task.references, ...)`` or a dict of its
    keyword arguments, so ``run_method(task, **PRESETS["digits"]["mmd x0_hat"])`` works;
    "classifier": a noisy classifier of references vs unguided samples, "finetune": the UNet
    trained further on the references) and measure it. ``setup_seconds`` is the wall time before
    sampling: the classifier's includes drawing its max(references, 64) unguided negatives.
    ``eta``: DDIM's noise (0, the default, is deterministic), also used for the classifier's base
    samples. Every argument is checked before any sampling or training."""
    from ..baselines import ClassifierGuidance, finetune_denoiser, train_classifier
    from ..sampling import sample

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    valid_n = "an integer >= 2 (FD and KD compare at least 2 samples with the targets)"
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be {valid_n}; got {_describe(n)}")
    if n < 2:
        raise ValueError(f"n must be {valid_n}; got {n}")
    check_seed(seed)
    if method == "classifier" and seed > _MAX_CLASSIFIER_SEED:  # its negatives are drawn with seed + 10_000
        raise ValueError(f"seed must be an integer in [0, {_MAX_CLASSIFIER_SEED}] for method='classifier' (its "
                         f"unguided negatives are drawn with seed + {_NEGATIVES_SEED_OFFSET}); got {seed}")
    if guidance is not None and method != "mmd":
        raise ValueError(f"guidance is used only by method='mmd'; got method={method!r} with guidance "
                         f"{type(guidance).__name__} (drop it, or use method='mmd')")
    if method in ("classifier", "finetune") or isinstance(guidance, dict):  # they use task.references
        _check_references(task)
    if method == "classifier" and len(task.references) < 2:
        raise ValueError(f"method='classifier' trains a classifier on the references and needs at least 2; "
                         f"the task has {len(task.references)} (use n_refs >= 2)")
    # the baselines' own knobs, checked under the names given here (the helpers call them scale/steps/lr)
    # the sampler's own arguments too: they were checked only by the final sample(), after training
    from ..sampling import _check_eta, _resolve_scheduler

    check_int(num_steps, "num_steps", 1)
    if batch_size is not None:
        check_int(batch_size, "batch_size", 1)
    eta = check_nonnegative(eta, "eta")
    _check_eta(eta, _resolve_scheduler(scheduler, 1000, "linear"))
    check_nonnegative(classifier_scale, "classifier_scale")
    check_int(classifier_steps, "classifier_steps", 1)
    check_int(finetune_steps, "finetune_steps", 1)
    check_positive(finetune_lr, "finetune_lr")
    denoiser, hook, setup = task.denoiser, None, 0.0
    if method == "mmd":
        if guidance is None:
            raise ValueError("method='mmd' needs guidance=MMDGuidance(task.references, ...) or a dict of "
                             "its keyword arguments (e.g. PRESETS['digits']['mmd x0_hat']['guidance'])")
        if isinstance(guidance, dict):  # a preset's settings
            from ..guidance import MMDGuidance

            guidance = MMDGuidance(task.references, **guidance)
        hook = guidance
    elif method == "classifier":
        t0 = time.perf_counter()
        base = sample(denoiser, max(len(task.references), 64), task.shape, scheduler=scheduler,
                      num_steps=num_steps, seed=_NEGATIVES_SEED_OFFSET + seed, eta=eta).samples
        clf, _ = train_classifier(task.references, base, steps=classifier_steps, batch_size=128, seed=seed)
        hook = ClassifierGuidance(clf, scale=classifier_scale, variance="beta")
        setup = time.perf_counter() - t0
    elif method == "finetune":
        t0 = time.perf_counter()
        # any nn.Module denoiser (a task's own MLPDenoiser too: it read task.denoiser.unet, an AttributeError)
        module = denoiser if isinstance(denoiser, torch.nn.Module) else None
        params = list(module.parameters()) if module is not None else []
        frozen = [p.requires_grad for p in params]  # the caller's flags, put back afterwards
        with torch.enable_grad():
            if module is not None:
                module.requires_grad_(True)
            try:
                denoiser, _ = finetune_denoiser(denoiser, task.references, steps=finetune_steps,
                                                lr=finetune_lr, batch_size=16, seed=seed)
            finally:
                for p, flag in zip(params, frozen):
                    p.requires_grad_(flag)
        denoiser.eval().requires_grad_(False)
        setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    z = sample(denoiser, n, task.shape, scheduler=scheduler, num_steps=num_steps, seed=seed,
               guidance=hook, batch_size=batch_size, eta=eta).samples
    return _measure(task, method, z, time.perf_counter() - t0, setup)


def _check_references(task: AdaptationTask) -> None:
    """task.references must be (N, *task.shape), N >= 1, in the model's space: fine-tuning a
    convolutional UNet on references of another size ran without a word (28 px silhouettes for
    the 16 px digits model), and the classifier sampled its base set before failing."""
    refs, shape = task.references, tuple(task.shape)
    if not isinstance(refs, Tensor) or tuple(refs.shape[1:]) != shape or len(refs) == 0:
        got = f"shape {tuple(refs.shape)}" if isinstance(refs, Tensor) else _describe(refs)
        raise ValueError(f"task.references must be a tensor (N, {', '.join(map(str, shape))}): N >= 1 references in "
                         f"the model's space (task.shape = {shape}); got {got}. Load images at the model's size "
                         "and channels (load_reference_folder / references_from_tensors), and encode them with "
                         "encode_references for a latent model")


def _presets() -> dict[str, dict[str, dict[str, Any]]]:
    """Chosen by ``benchmarks/calibration.py`` on seeds 100-103 (task references and sampling
    seed), which ``benchmarks/images.py`` never uses: 128 samples per seed in one batch, DDIM 50,
    50 references; each method given a small sweep, each preset kept by one rule written down
    before the sweep ran (tables: benchmarks/results/calibration_digits.md, calibration_shapes.md).

    Digits (every setting keeps >= 97 % valid, so the rule is the lowest mean FD). MMD on x0_hat,
    Gaussian 0.5 x median, strength 1.5, DDIM eta 0.25 (FD 272; at eta 0: 291, eta 0.5: 281; at
    eta 0, strength 1 / 2: 315 / 297; 0.35 x median 311 / 317; 0.7 x median 315; the library's
    default kernel family, displacement-weighted Gaussians at 0.25/0.5/1 x median strength 0.5:
    295, at 0.5/1/2 x median strength 0.3: 440). Classifier scale 2.5 at eta 0 (FD 490; 1.5 / 2 /
    3: 610 / 515 / 521; at eta 0.25 / 0.5: 534 / 572). The eta candidates joined the sweep in
    stop 31, for both methods, when digit validity showed that DDIM at eta 0 leaves speckled
    samples (7 % of MMD's on seed 0, 3 % unguided) that DDIM's noise removes. MMD on x_t:
    strength 1 with the median bandwidth, not recalibrated (an earlier seed-0 sweep; no measure
    rests on it).

    Shapes: the realism bound (>= 93 % valid) binds, so two presets per guidance method. "mmd x_t"
    and "classifier": the lowest mean FD among the settings with mean valid >= 0.93, and where none
    reaches it the highest valid. "mmd x0_hat" and "classifier best FD": the lowest mean FD of all.
    MMD on x_t, norm-matched step (alpha): Gaussian 0.5 x median alpha 0.15 (valid 0.945, FD 615;
    alpha 0.05 / 0.1 / 0.2: valid 0.883 / 0.928 / 0.941, FD 1356 / 621 / 656), the cubic kernel
    (``PolynomialKernel``) alpha 0.1 / 0.15 (valid 0.912 / 0.908, FD 803 / 797). MMD on x0_hat:
    Gaussian 0.5 x median alpha 0.05 (FD 277, valid 0.846; 0.1: 314), cubic alpha 0.03 / 0.05 / 0.1
    (294 / 315 / 299). Classifier scale 2 / 3 / 5 / 7 (valid 0.896 / 0.893 / 0.893 / 0.885, FD 1590
    / 1162 / 998 / 1019: none reaches 0.93, 2 is the most valid, 5 the lowest FD). Fine-tuning:
    100 steps (not swept). These are the 8-channel latents of the rebuilt VAE; on the earlier
    4x8x8 latents no setting reached 0.93 (the most valid, cubic alpha 0.15, 0.918) and the
    cubic kernel was kept for both MMD presets.

    Earlier presets were calibrated on seed 0 alone (one of the benchmark's seeds) with 128
    samples and randomly drawn digit references; moving the calibration to disjoint seeds
    changed the digits classifier scale (2 -> 2.5) and the shapes x_t kernel (Gaussian 0.5 x
    median, alpha 0.1 -> cubic, alpha 0.15).
    """
    from ..kernels import GaussianKernel

    # Every MMDGuidance knob that shapes the step is given, so a change of the library's
    # defaults does not move these settings.
    fixed = dict(schedule="constant", start=0.0, stop=0.9, strength_scale="batch_bandwidth",
                 bandwidth_update="run", estimator="biased", generated_set="batch")
    return {
        "digits": {
            "unguided": {"method": "unguided"},
            "mmd x_t": {"method": "mmd", "guidance": dict(kernel=GaussianKernel(), strength=1.0,
                                                          normalization="none", eval_point="x_t", **fixed)},
            # DDIM with a little noise (eta 0.25): no speckled samples, and the lowest calibration FD
            "mmd x0_hat": {"method": "mmd", "guidance": dict(kernel=GaussianKernel(median_scale=0.5), strength=1.5,
                                                             normalization="none", eval_point="x0_hat", **fixed),
                           "eta": 0.25},
            "classifier": {"method": "classifier", "classifier_scale": 2.5},
            "finetune": {"method": "finetune", "finetune_steps": 100},
        },
        "shapes": {
            "unguided": {"method": "unguided"},
            # the reference code's norm-matched step
            "mmd x_t": {"method": "mmd", "guidance": dict(kernel=GaussianKernel(median_scale=0.5), strength=0.15,
                                                          normalization="norm_matched", eval_point="x_t", **fixed)},
            "mmd x0_hat": {"method": "mmd", "guidance": dict(kernel=GaussianKernel(median_scale=0.5), strength=0.05,
                                                             normalization="norm_matched", eval_point="x0_hat",
                                                             **fixed)},
            "classifier": {"method": "classifier", "classifier_scale": 2.0},
            "classifier best FD": {"method": "classifier", "classifier_scale": 5.0},
            "finetune": {"method": "finetune", "finetune_steps": 100},
        },
    }


# Calibrated settings per domain (notebooks 05/06 and benchmarks/images.py use these).
PRESETS = _presets()
