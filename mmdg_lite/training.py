"""Training a denoiser by eps-prediction MSE (DDPM).

Forward noising is diffusers' ``DDPMScheduler.add_noise``: x_t = sqrt(abar_t) x_0 + sqrt(1-abar_t) eps.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ._validation import (_describe, as_float_tensor, check_autograd, check_bool, check_finite, check_int,
                          check_nonnegative, check_points, check_positive)
from .sampling import check_eps_prediction, make_scheduler
from .seeding import make_generator, own_rng

__all__ = ["train_denoiser", "fit", "noising_scheduler"]


def train_denoiser(model: nn.Module, data: Tensor, scheduler: Any = None, steps: int = 5000,
                   batch_size: int = 256, lr: float = 1e-3, seed: int = 0, cond: Tensor | None = None,
                   cond_dropout: float = 0.1, progress: bool = True) -> list[float]:
    """Fit ``model`` to predict the noise added by ``scheduler.add_noise``; returns the loss per step.

    data (N, *S) are clean samples, drawn in minibatches with replacement; cond (N, C) optional
    per-sample conditions, replaced by the null condition with probability ``cond_dropout``
    (classifier-free guidance; the model is called with ``drop_cond=``, a (B,) bool tensor, as
    ``MLPDenoiser`` takes). Adam with cosine-decayed learning rate. Deterministic given
    ``seed`` and the model's initial weights: random layers (dropout) draw from torch's RNG
    seeded with ``seed`` in a fork, so the caller's global RNG neither matters nor moves.
    ``scheduler`` must noise as DDPM does and predict epsilon (DDPMScheduler, DDIMScheduler);
    others (v-prediction, Euler, DPM-Solver) are refused.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (e.g. MLPDenoiser); got {_describe(model)}")
    progress = check_bool(progress, "progress")
    data = check_points(data, "data", flatten=False)
    dim = getattr(model, "dim", None)  # MLPDenoiser's; the model said "x_t has ... (shape (batch_size, ...))"
    if isinstance(dim, int) and not isinstance(dim, bool) and data[0].numel() != dim:
        raise ValueError(f"data has {data[0].numel()} features per point (shape {tuple(data.shape)}) but the model "
                         f"expects dim={dim}")
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    lr = check_positive(lr, "lr")
    cond_dropout = check_nonnegative(cond_dropout, "cond_dropout")
    if cond_dropout > 1:
        raise ValueError(f"cond_dropout must be in [0, 1]; got {cond_dropout}")
    if cond is not None:
        cond = as_float_tensor(cond, "cond")
        cond_dim = getattr(model, "cond_dim", None)  # MLPDenoiser's; unknown for other models
        cond_dim = cond_dim if isinstance(cond_dim, int) and cond_dim > 0 else None
        want = f"({data.shape[0]}, {cond_dim or 'C'})"
        if cond.ndim != 2 or cond.shape[0] != data.shape[0] or cond.shape[1] != (cond_dim or cond.shape[1]):
            raise ValueError(f"cond must have one row per data point and the model's cond_dim columns, "
                             f"shape {want}; got {_describe(cond)}")
        check_finite(cond, "cond")
        if not _takes_drop_cond(model):  # it failed at the first step with a bare "unexpected keyword"
            raise TypeError(f"with cond, train_denoiser calls model(x_t, t, cond, drop_cond=...), drop_cond a (B,) bool "
                            "tensor of the rows to train with the null condition (cond_dropout, for classifier-free "
                            f"guidance); {type(model).__name__}.forward takes no drop_cond: add it, as MLPDenoiser has")
    scheduler = noising_scheduler(scheduler)
    n_train = int(scheduler.config.num_train_timesteps)
    check_eps_prediction(scheduler, "train_denoiser trains eps-prediction (the model predicts the added noise)")
    param = next(model.parameters(), None)
    if param is None:
        raise TypeError(f"model must be an nn.Module with trainable parameters; got {type(model).__name__} "
                        "without any")
    device, dtype = param.device, param.dtype
    if dtype in (torch.float16, torch.bfloat16):  # Adam's second moment underflows: NaN weights, no error
        raise TypeError(f"model parameters are {dtype}; train in float32 (or float64) and cast the trained "
                        "model afterwards (model.half())")
    # detached: data encoded outside no_grad backpropagated into its encoder at step 0, then failed at
    # step 1 with torch's 'Trying to backward through the graph a second time'
    data = data.detach().to(device, dtype)  # e.g. float64 / numpy data for a float32 model
    cond = cond.detach().to(device, dtype) if cond is not None else None
    gen = make_generator(seed)  # CPU generator: same numbers on any device

    def loss_step() -> Tensor:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)  # (B,)
        t = torch.randint(0, n_train, (batch_size,), generator=gen)  # (B,)
        noise = torch.randn((batch_size, *data.shape[1:]), generator=gen,
                            dtype=torch.float32).to(device, data.dtype)  # (B, *S)
        x0 = data[idx.to(device)]  # (B, *S)
        x_t = scheduler.add_noise(x0, noise, t.to(device))  # (B, *S)
        if cond is None:
            pred = model(x_t, t.to(device))
        else:
            drop = (torch.rand(batch_size, generator=gen, dtype=torch.float32) < cond_dropout).to(device)  # (B,)
            pred = model(x_t, t.to(device), cond[idx.to(device)], drop_cond=drop)
        # a (B, 1) output broadcast against (B, D) noise with a warning only; a bare diffusers UNet's
        # UNet2DOutput failed in mse_loss as "'UNet2DOutput' object has no attribute 'size'"
        if not isinstance(pred, Tensor):
            raise TypeError(f"the model must return the predicted noise, a tensor of x_t's shape "
                            f"{tuple(noise.shape)}; {type(model).__name__} returned {type(pred).__name__} (a diffusers "
                            "UNet: train mmdg_lite.images.UNetDenoiser(unet), which returns unet(x_t, t).sample)")
        if pred.shape != noise.shape:
            raise ValueError(f"the model must return the predicted noise, a tensor of x_t's shape "
                             f"{tuple(noise.shape)}; {type(model).__name__} returned shape {tuple(pred.shape)}")
        return nn.functional.mse_loss(pred, noise)

    with own_rng(seed, device):  # dropout in the model draws from torch's RNG: seeded, the caller's left alone
        return fit(model, loss_step, steps, lr, progress=progress, desc="training")


def noising_scheduler(scheduler: Any) -> Any:
    """The scheduler to train with (None: DDPM, 1000 linear betas), checked to noise as the samplers
    and hooks assume: add_noise(x_0, eps, t) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at train
    timestep t (DDPMScheduler, DDIMScheduler). Euler's add_noise gives sigma-scaled x_0 + sigma eps
    and DPM-Solver's reads t as a position in its inference schedule (t = 999 barely noised): a model
    trained through either learns other noise levels than it is sampled at, silently."""
    scheduler = make_scheduler("ddpm") if scheduler is None else scheduler
    if not hasattr(scheduler, "add_noise"):
        raise TypeError(f"scheduler must be a diffusers scheduler with add_noise (e.g. DDPMScheduler); "
                        f"got {type(scheduler).__name__}")
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:  # nothing to compare with
        return scheduler
    abar = torch.as_tensor(abar).detach().cpu().double()  # (T,)
    t, ones = torch.arange(len(abar)), torch.ones(len(abar), 1)
    probe = copy.deepcopy(scheduler)  # add_noise may move or index the scheduler's own state
    try:
        signal = probe.add_noise(ones, torch.zeros_like(ones), t)[:, 0].double()  # (T,) sqrt(abar_t) wanted
        noise = probe.add_noise(torch.zeros_like(ones), ones, t)[:, 0].double()  # (T,) sqrt(1 - abar_t) wanted
    except (IndexError, RuntimeError, ValueError) as err:
        signal = noise = None
        why = f"add_noise failed on the train timesteps 0..{len(abar) - 1} ({err})"
    if signal is not None:
        bad = ((signal - abar.sqrt()).abs() + (noise - (1 - abar).sqrt()).abs()).argmax()
        if torch.allclose(signal, abar.sqrt(), rtol=1e-4, atol=1e-6) and \
                torch.allclose(noise, (1 - abar).sqrt(), rtol=1e-4, atol=1e-6):
            return scheduler
        why = (f"at t={int(bad)} add_noise gives {float(signal[bad]):.4g} x_0 + {float(noise[bad]):.4g} eps, not "
               f"sqrt(abar_t) = {float(abar[bad].sqrt()):.4g} and sqrt(1 - abar_t) = {float((1 - abar[bad]).sqrt()):.4g}")
    raise ValueError(f"scheduler {type(scheduler).__name__} does not noise as training needs (the DDPM forward process "
                     f"at train timestep t): {why}; train with a DDPMScheduler of the same betas, e.g. "
                     "DDPMScheduler.from_config(scheduler.config), and sample with any scheduler")


def _takes_drop_cond(model: nn.Module) -> bool:
    """Whether ``model.forward`` accepts a ``drop_cond`` keyword (by name or ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return True
    return "drop_cond" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def fit(model: nn.Module, loss_step: Callable[[], Tensor], steps: int, lr: float, *,
        progress: bool = False, desc: str = "training") -> list[float]:
    """The one optimisation loop: Adam, learning rate cosine-decayed to 5 %, ``steps`` calls of
    ``loss_step()`` (which draws its own minibatch, with grad on even in a caller's ``no_grad``
    block); returns the loss per step. Used by the denoisers, the noisy classifier and the
    fine-tuning baseline."""
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):  # None, a list of modules, a Parameter: a bare AttributeError on .parameters
        raise TypeError(f"model must be the nn.Module whose parameters fit trains; got {_describe(model)}")
    if not callable(loss_step):
        raise TypeError(f"loss_step must be a function returning the minibatch loss; got {_describe(loss_step)}")
    steps, lr = check_int(steps, "steps", 1), check_positive(lr, "lr")  # steps=0 returned [] untrained
    progress = check_bool(progress, "progress")
    check_autograd(f"the {desc} loop")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{desc}: every parameter of {type(model).__name__} has requires_grad=False, so there is "
                         "nothing to train; unfreeze it first (model.requires_grad_(True))")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        with torch.enable_grad():  # a caller's no_grad block must not leave the loss without a graph
            loss = loss_step()
        if not isinstance(loss, Tensor) or loss.numel() != 1:  # torch's errors named neither
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else _describe(loss)
            raise TypeError(f"loss_step must return the loss as a one-element tensor (e.g. .mean() of per-sample "
                            f"losses); got {got}")
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"the {desc} loss is {float(loss.detach())} at step {len(losses)} of {steps} (lr {lr:g}); "
                                     "lower lr, or check the data for NaN/Inf or extreme values")
        if not loss.requires_grad:  # backward failed in torch's 'element 0 of tensors does not require grad'
            raise ValueError(f"the {desc} loss has no autograd graph (loss_step returned a detached tensor or one "
                             f"computed without grad); return the loss computed from {type(model).__name__}'s outputs")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not losses and all(p.grad is None for p in model.parameters()):  # constant losses, nothing trained
            raise ValueError(f"the {desc} loss does not depend on any trainable parameter of the model given to fit "
                             f"({type(model).__name__}): loss_step must compute the loss with that model")
        opt.step()
        sched_lr.step()
        losses.append(float(loss.detach()))
        if progress and len(losses) % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / 100:.4f}")
    model.eval()
    return losses
