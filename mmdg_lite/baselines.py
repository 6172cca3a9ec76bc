"""The baselines MMD guidance is compared with (paper Sec. 6, Table 1), as sampler pieces.

- **Classifier guidance** (Dhariwal & Nichol 2021): a noise-conditioned binary classifier
  c(x_t, t) = p(reference | x_t) trained on references (label 1) vs base-model samples (label 0);
  ``ClassifierGuidance`` is a hook for ``mmdg_lite.sampling.sample``.
- **Fine-tuning**: continue training a copy of the pretrained denoiser on the references
  (``finetune_denoiser``); a model without trainable weights gets a zero-initialised residual.
- **Classifier-free guidance** (Ho & Salimans 2022) for a conditional model
  (``classifier_free_guidance`` wraps ``denoisers.CFGDenoiser``).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import (_describe, check_autograd, check_bool, check_choice, check_finite, check_int,
                          check_nonnegative, check_pair, check_points, check_positive, is_real_number)
from .denoisers import CFGDenoiser, MLPDenoiser, ResidualMLP
from .sampling import check_input_scales, check_state_timestep, state_number
from .seeding import make_generator
from .training import fit, noising_scheduler, train_denoiser

__all__ = ["NoisyClassifier", "train_classifier", "classifier_accuracy", "ClassifierGuidance",
           "ResidualDenoiser", "finetune_denoiser", "classifier_free_guidance", "VARIANCES"]

VARIANCES = ("posterior", "beta")


class NoisyClassifier(ResidualMLP):
    """Binary classifier on noisy samples: forward(x_t, t) -> (B,) logit of p(reference | x_t, t).

    The denoiser's residual MLP trunk (``denoisers.ResidualMLP``: sinusoidal time embedding
    added to every block) with one output; inputs (B, *S) are flattened. ``noise_schedule``: the
    (T,) alphas_cumprod it was trained at (set by ``train_classifier``; None: unknown), which
    ``ClassifierGuidance`` compares with each step's noise level.
    """

    def __init__(self, dim: int, hidden: int = 128, layers: int = 2, time_embed_dim: int = 32) -> None:
        super().__init__(check_int(dim, "dim", 1), 1, hidden=check_int(hidden, "hidden", 1),
                         layers=check_int(layers, "layers", 1),
                         time_embed_dim=check_int(time_embed_dim, "time_embed_dim", 2))
        self.noise_schedule: Tensor | None = None

    def forward(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        x = self.flat_input(x_t, "classifier")  # (B, D) in the weights' dtype
        emb = self.time_embedding(t, x.shape[0], x)  # (B, H)
        return self.trunk(x, emb).squeeze(1)  # (B,)

    def log_prob(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """log p(reference | x_t, t), shape (B,)."""
        return nn.functional.logsigmoid(self(x_t, t))


def train_classifier(references: Tensor, base_samples: Tensor, scheduler: Any = None, steps: int = 1000,
                     batch_size: int = 256, lr: float = 2e-3, seed: int = 0, hidden: int = 128,
                     layers: int = 2, progress: bool = False) -> tuple[NoisyClassifier, list[float]]:
    """Train c(x_t, t) on references (label 1) vs base-model samples (label 0); returns (model, losses).

    Every minibatch holds batch_size/2 points of each set (drawn with replacement, so equal class
    priors: the optimum is q / (q + p)), one uniform timestep per point, and both sets noised with
    ``scheduler.add_noise`` (default: DDPM, 1000 linear-beta steps). BCE loss, Adam, cosine lr.
    Deterministic given ``seed`` (it also seeds the weights; the global RNG is left untouched).
    """
    refs = check_points(references, "references", min_count=2)
    base = check_points(base_samples, "base_samples", min_count=2)
    refs, base = check_pair(refs, base, "references", "base_samples")
    steps, batch_size = check_int(steps, "steps", 1), check_int(batch_size, "batch_size", 2)
    if batch_size % 2:  # half of each set: an odd size lost its last point, silently
        raise ValueError(f"batch_size must be even (batch_size/2 references and as many base samples per "
                         f"minibatch); got {batch_size}")
    lr, progress = check_positive(lr, "lr"), check_bool(progress, "progress")  # "no" showed the bar
    sched = noising_scheduler(scheduler)
    n_train = int(sched.config.num_train_timesteps)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = NoisyClassifier(refs.shape[1], hidden=hidden, layers=layers)
    model.noise_schedule = torch.as_tensor(sched.alphas_cumprod).detach().cpu().double().clone()  # (T,)
    refs, base = refs.detach().float(), base.detach().float()  # a graph (encoded outside no_grad) broke step 1
    gen = make_generator(seed)
    half = batch_size // 2
    labels = torch.cat([torch.ones(half), torch.zeros(half)])  # (2h,)

    def loss_step() -> Tensor:
        x0 = torch.cat([refs[torch.randint(0, len(refs), (half,), generator=gen)],
                        base[torch.randint(0, len(base), (half,), generator=gen)]])  # (2h, D)
        t = torch.randint(0, n_train, (2 * half,), generator=gen)  # (2h,)
        x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=gen, dtype=torch.float32), t)  # (2h, D)
        return nn.functional.binary_cross_entropy_with_logits(model(x_t, t), labels)

    return model, fit(model, loss_step, steps, lr, progress=progress, desc="classifier")


@torch.no_grad()
def classifier_accuracy(classifier: NoisyClassifier, references: Tensor, base_samples: Tensor,
                        t: int, scheduler: Any = None, seed: int = 0) -> float:
    """Balanced accuracy (mean of the two per-class accuracies) at timestep ``t``, threshold 1/2."""
    if not callable(classifier):
        raise TypeError(f"classifier must be a NoisyClassifier (from train_classifier), called as "
                        f"classifier(x_t, t); got {_describe(classifier)}")
    sched = noising_scheduler(scheduler)
    trained = getattr(classifier, "noise_schedule", None)  # train_classifier's (T,) alphas_cumprod
    abar = torch.as_tensor(sched.alphas_cumprod).detach().cpu().double()
    if isinstance(trained, Tensor) and (trained.shape != abar.shape or not torch.allclose(trained, abar)):
        raise ValueError(f"scheduler noises with another schedule ({len(abar)} timesteps) than the classifier was "
                         f"trained with ({len(trained)}): the accuracy would be measured at noise levels it never saw; "
                         "pass the scheduler given to train_classifier")
    t = check_int(t, "t", 0)
    if t >= int(sched.config.num_train_timesteps):
        raise ValueError(f"t must be < num_train_timesteps={int(sched.config.num_train_timesteps)}; got {t}")
    refs, base = check_pair(check_points(references, "references"), check_points(base_samples, "base_samples"),
                            "references", "base_samples")
    dim = getattr(classifier, "dim", None)
    if isinstance(dim, int) and refs.shape[1] != dim:  # it said "x_t has ... features"
        raise ValueError(f"references and base_samples have {refs.shape[1]} features per point but the classifier "
                         f"expects dim={dim}")
    gen = make_generator(seed)
    accs = []
    for x, label in ((refs.float(), 1.0), (base.float(), 0.0)):
        tt = torch.full((len(x),), t, dtype=torch.long)
        x_t = sched.add_noise(x, torch.randn(x.shape, generator=gen, dtype=torch.float32), tt)
        accs.append(float(((classifier(x_t, tt) > 0).float() == label).float().mean()))
    return sum(accs) / 2


class ClassifierGuidance:
    """Classifier guidance as a hook: x_{t-1} <- x_{t-1} + scale * Sigma_t * grad_x log c(ref | x_t, t).

    This is Dhariwal & Nichol's Algorithm 1 (mean shift mu + s Sigma g, then the usual noise;
    adding s Sigma g to the scheduler's noisy proposal is the same thing), with the gradient
    taken at x_t by autograd through the classifier. ``variance="posterior"`` uses the DDPM
    posterior variance of this (possibly strided) step, Sigma_t = (1 - abar_prev) / (1 - abar_t)
    * beta_t, the variance the default DDPM scheduler (fixed_small) samples with;
    ``"beta"`` uses beta_t = 1 - abar_t / abar_prev itself (fixed_large; it does not vanish at the
    last step and also gives DDIM a push). The paper's classifier-guidance baseline is a binary
    classifier of references vs base-model samples (Sec. 6, Table 1: FD 1195.85 vs 1220.51
    unguided on FFHQ sunglasses, i.e. barely better than no guidance with 500 references).
    With sigma-scaled latents (Euler) all of this happens on the DDPM-normalised c_in x_t, the
    points the classifier was trained on (``StepState.input_scale``), and the shift is mapped back.
    """

    def __init__(self, classifier: nn.Module, scale: float = 1.0, variance: str = "posterior") -> None:
        if not callable(getattr(classifier, "log_prob", None)):
            raise TypeError("classifier must have log_prob(x_t, t) -> (B,) (e.g. a NoisyClassifier from "
                            f"train_classifier); got {type(classifier).__name__}")
        self.classifier = classifier
        self.scale = check_nonnegative(scale, "scale")
        self.variance = check_choice(variance, "variance", VARIANCES)

    def gradient(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """grad_x log p(reference | x_t, t), same shape as x_t (rows are independent)."""
        check_autograd("ClassifierGuidance")
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.classifier.log_prob(x, t).sum(), x)
        return g

    def step_variance(self, alpha_bar_t: float, alpha_bar_prev: float) -> float:
        """Sigma_t of one reverse step from abar_t to abar_prev (see the class docstring)."""
        beta = 1.0 - alpha_bar_t / alpha_bar_prev
        if self.variance == "beta":
            return beta
        return (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * beta

    def check_noise_level(self, state: Any) -> None:
        """Refuse a step whose noise level is not the one the classifier was trained at for its t
        (``NoisyClassifier.noise_schedule``; within the neighbouring timesteps', as Euler's fractional
        and Karras' rounded timesteps need): trained on another schedule it was guided silently."""
        abar = getattr(self.classifier, "noise_schedule", None)
        if abar is None:
            return
        t, ab, last = int(state.t), float(state.alpha_bar_t), len(abar) - 1
        if not 0 <= t <= last:
            raise ValueError(f"the classifier was trained on timesteps 0..{last}, but step {state.step_index} is at "
                             f"t={t}: train it with the sampler's noise schedule (train_classifier(scheduler=...))")
        lo, hi = float(abar[min(t + 1, last)]), float(abar[max(t - 1, 0)])
        if not lo * (1 - 1e-3) - 1e-6 <= ab <= hi * (1 + 1e-3) + 1e-6:
            raise ValueError(f"step {state.step_index} (t={t}) has alpha_bar_t={ab:.4g}, but the classifier was trained "
                             f"at alpha_bar={float(abar[t]):.4g} for t={t}: it learnt another noise schedule than the "
                             "sampler's; train it with a DDPMScheduler of the sampler's betas (train_classifier("
                             "scheduler=DDPMScheduler.from_config(sampler_scheduler.config)))")

    def __call__(self, state: Any) -> Tensor:
        if self.scale == 0:
            return state.x_prev
        _check_step(state)
        check_input_scales(state)  # a sigma-scaled (Euler) state without its factors: unit-scale data assumed
        self.check_noise_level(state)  # the noise schedule the classifier was trained at
        # sigma-scaled latents (Euler: x_t = x_0 + sigma eps) are DDPM-normalised by c_in, as the denoiser
        # sees them and the classifier was trained; the shift is made there and mapped back by 1 / c_in'
        c_in = float(getattr(state, "input_scale", 1.0))
        c_prev = float(getattr(state, "input_scale_prev", 1.0))
        var = self.step_variance(state.alpha_bar_t, state.alpha_bar_prev)
        g = self.gradient(c_in * state.x_t, state.t)  # (B, *S), w.r.t. the normalised x_t
        return state.x_prev + (self.scale * var / c_prev) * g.to(state.x_prev.dtype)


def _check_step(state: Any) -> None:
    """Refuse a hand-built state ClassifierGuidance would misread: a (B,) t or x_t of another shape failed
    in bare torch errors; alpha_bar_prev of 0, None or below alpha_bar_t (the two swapped) and
    input_scale(_prev) <= 0 divided by zero, or gave a negative Sigma_t, a push away from the references."""
    check_state_timestep(state.t)
    if not isinstance(state.x_t, Tensor) or state.x_t.shape != state.x_prev.shape:
        got = tuple(state.x_t.shape) if isinstance(state.x_t, Tensor) else type(state.x_t).__name__
        raise ValueError(f"state.x_t must be a tensor of x_prev's shape {tuple(state.x_prev.shape)}; got {got}")
    for name in ("input_scale", "input_scale_prev"):
        c = state_number(getattr(state, name, 1.0))
        if not is_real_number(c) or not (math.isfinite(c) and c > 0):
            raise ValueError(f"state.{name} must be a finite number > 0 (scale_model_input's factor; 1 for "
                             f"DDPM-normalised latents); got {c!r:.60}")
    ab, ab_prev = state_number(state.alpha_bar_t), state_number(state.alpha_bar_prev)
    if not (is_real_number(ab) and is_real_number(ab_prev) and 0.0 <= ab < 1.0 and ab <= ab_prev <= 1.0):
        raise ValueError(f"ClassifierGuidance needs 0 <= alpha_bar_t < 1 and alpha_bar_t <= alpha_bar_prev <= 1 (the "
                         f"noise level falls by the step); got alpha_bar_t={ab!r:.40}, alpha_bar_prev={ab_prev!r:.40}")


class ResidualDenoiser(nn.Module):
    """eps = base(x_t, t, cond) + residual(x_t, t): a frozen base model plus a trainable correction.
    A base that is an nn.Module is a registered submodule, so ``.to(device)`` moves the caller's base too."""

    def __init__(self, base: Any, residual: nn.Module) -> None:
        super().__init__()
        if not callable(base):
            raise TypeError(f"base must be callable as base(x_t, t, cond); got {type(base).__name__}")
        if not isinstance(residual, nn.Module):  # a function failed in .train() / .eval(), None at the first call
            raise TypeError(f"residual must be an nn.Module called as residual(x_t, t) (the trainable correction, "
                            f"e.g. MLPDenoiser(dim)); got {_describe(residual)}")
        self.base, self.residual = base, residual

    def train(self, mode: bool = True) -> "ResidualDenoiser":
        """Switch the residual only: the frozen base is the caller's model and keeps its own mode."""
        self.training = mode
        self.residual.train(mode)
        return self

    def forward(self, x_t: Tensor, t: Tensor | int, cond: Tensor | None = None) -> Tensor:
        # no graph through the frozen base while training; but a gradient w.r.t. x_t (MMDGuidance's
        # eval_point "x0_hat_backprop") must go through it too, not through the residual alone
        with torch.set_grad_enabled(torch.is_grad_enabled() and x_t.requires_grad):
            eps = self.base(x_t, t, cond)  # (B, *S)
        return eps + self.residual(x_t, t)


def _check_base_fits(model: Any, refs: Tensor) -> None:
    """One reference through the frozen base, so a shape mismatch names the references before training
    (it surfaced at the first training step as 'x_t has ... features')."""
    try:
        with torch.no_grad():
            model(refs[:1].float(), torch.zeros(1, dtype=torch.long), None)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"references of shape {tuple(refs.shape)} do not fit the base model "
                         f"{type(model).__name__}: {err}") from err


def finetune_denoiser(model: Any, references: Tensor, steps: int = 500, lr: float = 1e-3,
                      batch_size: int = 256, seed: int = 0, scheduler: Any = None, hidden: int | None = None,
                      layers: int | None = None, progress: bool = False) -> tuple[nn.Module, list[float]]:
    """Fine-tune a copy of ``model`` on the references by eps-prediction MSE; returns (model, losses).

    A model with trainable weights (``MLPDenoiser`` or any nn.Module eps-predictor) is deep-copied
    and trained further with ``training.train_denoiser`` (the original is untouched). A model
    without weights (the exact ``GaussianMixtureDenoiser``) becomes ``ResidualDenoiser(model,
    MLPDenoiser(dim, hidden, layers))`` (default 256 and 3; only such a residual takes them) whose
    residual starts at exactly zero, so training starts from the pretrained model (adapter-style
    fine-tuning); the base model is neither copied nor changed. The paper fine-tunes the pretrained
    latent diffusion model on the user's 500 references (Table 1, FFHQ sunglasses: FD 747.69 vs
    692.87 for MMD guidance and 1220.51 unguided); with few references and many steps it overfits.
    The references carry no condition, so training runs with cond=None: a conditional model is
    fine-tuned on its unconditional (null-condition) branch only.
    """
    if not callable(model):
        raise TypeError("model must be a denoiser callable as model(x_t, t, cond); "
                        f"got {type(model).__name__}")
    refs = check_points(references, "references", flatten=False)
    steps = check_int(steps, "steps", 1)
    sched = noising_scheduler(scheduler)
    trainable = isinstance(model, nn.Module) and any(p.requires_grad for p in model.parameters())
    if trainable:
        if hidden is not None or layers is not None:  # they were ignored: the model is trained as it is
            raise ValueError(f"hidden and layers size the residual added to a model without trainable weights; this "
                             f"{type(model).__name__} has trainable weights and is fine-tuned as it is (got "
                             f"hidden={hidden!r}, layers={layers!r}; leave both unset)")
        dim = getattr(model, "dim", None)
        if dim is not None and refs[0].numel() != dim:
            raise ValueError(f"references have {refs[0].numel()} features per sample but the model "
                             f"expects dim={dim}")
        tuned = copy.deepcopy(model)
    else:
        _check_base_fits(model, refs)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            residual = MLPDenoiser(refs[0].numel(), hidden=256 if hidden is None else hidden,
                                   layers=3 if layers is None else layers)
        nn.init.zeros_(residual.out_proj.weight)
        nn.init.zeros_(residual.out_proj.bias)
        tuned = ResidualDenoiser(model, residual)
    losses = train_denoiser(tuned, refs.float(), sched, steps=steps, batch_size=batch_size, lr=lr,
                            seed=seed, progress=progress)
    return tuned, losses


def classifier_free_guidance(model: nn.Module, cond: Tensor, n: int,
                             guidance_scale: float = 3.0) -> tuple[CFGDenoiser, Tensor]:
    """CFG baseline: (CFGDenoiser(model, guidance_scale), cond repeated to (n, C)) for ``sample``.

    ``model`` must be conditional (trained with condition dropout, e.g. ``MLPDenoiser(cond_dim=C)``
    trained by ``train_denoiser(..., cond=..., cond_dropout=0.1)``); ``cond`` is one condition
    (C,) or (1, C), or one per sample (n, C). Use: ``den, c = classifier_free_guidance(m, y, n);
    sample(den, n, shape, cond=c)``. In the paper CFG is the text-to-image models' own guidance
    with the sampling prompt (SDXL, PixArt); it follows the prompt, not the reference set.
    """
    n = check_int(n, "n", 1)
    scale = check_nonnegative(guidance_scale, "guidance_scale")
    cond_dim = getattr(model, "cond_dim", None)
    if cond_dim == 0:
        raise ValueError("model is unconditional (cond_dim=0); classifier-free guidance needs a model "
                         "trained with conditions and condition dropout (MLPDenoiser(cond_dim=C))")
    if not isinstance(cond, Tensor) or not cond.dtype.is_floating_point:
        got = f"tensor of dtype {cond.dtype}" if isinstance(cond, Tensor) else type(cond).__name__
        raise TypeError(f"cond must be a float tensor of shape (C,), (1, C) or ({n}, C); got {got}")
    check_finite(cond, "cond")
    c = cond.reshape(1, -1) if cond.ndim == 1 else cond
    if c.ndim != 2 or c.shape[0] not in (1, n) or (cond_dim is not None and c.shape[1] != cond_dim):
        want = f"({cond_dim},)" if cond_dim is not None else "(C,)"
        raise ValueError(f"cond must have shape {want}, (1, C) or ({n}, C) with C = the model's cond_dim; "
                         f"got {tuple(cond.shape)}")
    return CFGDenoiser(model, scale), c.expand(n, -1).clone()
