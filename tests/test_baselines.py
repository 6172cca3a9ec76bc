"""Baselines: classifier guidance (gradient, no-op at scale 0, a classifier that works),
fine-tuning (moves mode proportions), classifier-free guidance, and argument errors."""
from __future__ import annotations

import pytest
import torch
from conftest import central_fd, rel_err

from mmdg_lite import (CFGDenoiser, GaussianMixtureDenoiser, MLPDenoiser, circle_mixture, make_scheduler,
                       mode_proportions, sample, subset_mixture, total_variation)
from mmdg_lite.baselines import (ClassifierGuidance, NoisyClassifier, ResidualDenoiser, classifier_accuracy,
                                 classifier_free_guidance, finetune_denoiser, train_classifier)
from mmdg_lite.sampling import StepState
from mmdg_lite.toys.models import load_or_train_toy_2d

USER_MODES = [0, 2, 4, 6]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _classifier(dim: int = 3, seed: int = 0) -> NoisyClassifier:
    torch.manual_seed(seed)
    return NoisyClassifier(dim, hidden=16, layers=2)


def _state(x_t: torch.Tensor, t: int, abar_t: float, abar_prev: float) -> StepState:
    g = torch.Generator().manual_seed(1)
    return StepState(x_t=x_t, x_prev=0.9 * x_t + 0.1 * torch.randn(x_t.shape, generator=g, dtype=x_t.dtype),
                     eps=torch.zeros_like(x_t), t=t, step_index=3, num_steps=10, alpha_bar_t=abar_t,
                     alpha_bar_prev=abar_prev, denoiser=None, cond=None,
                     sample_index=torch.arange(len(x_t)))


def test_hook_gradient_is_autograd_of_log_prob():
    clf = _classifier().double()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    hook = ClassifierGuidance(clf, scale=2.0)
    g = hook.gradient(x, 400)  # (5, 3)
    for i in range(len(x)):  # row by row: rows must not interact
        xi = x[i:i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(clf.log_prob(xi, 400).sum(), xi)
        assert torch.allclose(g[i], gi[0], rtol=1e-10, atol=1e-12)
    fd = central_fd(lambda z: clf.log_prob(z, 400).sum().detach(), x)  # independent oracle
    assert rel_err(g, fd) < 1e-6


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_hook_step_is_mean_shift_by_variance(variance):
    clf = _classifier().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    abar_t, abar_prev = 0.5, 0.6
    state = _state(x, 500, abar_t, abar_prev)
    hook = ClassifierGuidance(clf, scale=3.0, variance=variance)
    beta = 1 - abar_t / abar_prev
    var = beta if variance == "beta" else (1 - abar_prev) / (1 - abar_t) * beta
    expected = state.x_prev + 3.0 * var * hook.gradient(x, 500)
    assert torch.allclose(hook(state), expected, rtol=1e-12, atol=1e-14)
    assert hook.step_variance(abar_t, abar_prev) == pytest.approx(var)


def test_scale_zero_is_bit_for_bit_unguided():
    mix = circle_mixture()
    den = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler("ddpm"))
    plain = sample(den, 64, 2, num_steps=20, seed=3).samples
    guided = sample(den, 64, 2, num_steps=20, seed=3, guidance=ClassifierGuidance(_classifier(2), 0.0)).samples
    assert torch.equal(plain, guided)
    nonzero = sample(den, 64, 2, num_steps=20, seed=3, guidance=ClassifierGuidance(_classifier(2), 5.0)).samples
    assert not torch.equal(plain, nonzero)


def test_trained_classifier_separates_references_from_base_samples():
    mix = circle_mixture()
    g = torch.Generator().manual_seed(0)
    refs = subset_mixture(mix, [0, 3]).sample(200, g)[0]  # (200, 2) the user: 2 of 8 modes
    base = mix.sample(400, g)[0]  # (400, 2) what the pretrained model draws
    clf, losses = train_classifier(refs, base, steps=300, hidden=64, seed=0)
    assert sum(losses[-30:]) / 30 < sum(losses[:30]) / 30
    # optimal balanced accuracy at t = 0 is (1 + 6/8) / 2 = 0.875; chance is 0.5
    assert classifier_accuracy(clf, refs, base, t=10) > 0.75
    assert classifier_accuracy(clf, refs, base, t=999) < 0.65  # pure noise: near chance
    again, _ = train_classifier(refs, base, steps=300, hidden=64, seed=0)  # deterministic
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))


def test_finetuning_moves_mode_proportions_toward_references():
    model, mix = load_or_train_toy_2d(progress=False)
    target = subset_mixture(mix, USER_MODES)
    refs = target.sample(200, torch.Generator().manual_seed(5))[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, losses = finetune_denoiser(model, refs, steps=300, seed=0)
    assert isinstance(tuned, MLPDenoiser) and tuned is not model and len(losses) == 300
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched

    def tv(den) -> float:
        x = sample(den, 400, 2, num_steps=50, seed=1).samples
        return total_variation(mode_proportions(x, mix.means), target.weights)

    tv_base, tv_tuned = tv(model), tv(tuned)
    assert tv_base > 0.4  # the pretrained model covers all 8 modes
    assert tv_tuned < tv_base - 0.2, (tv_base, tv_tuned)


def test_finetuning_a_weightless_model_adds_a_zero_residual():
    mix = circle_mixture()
    den = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler("ddpm"))
    refs = subset_mixture(mix, USER_MODES).sample(50, torch.Generator().manual_seed(0))[0]
    tuned, _ = finetune_denoiser(den, refs, steps=3, lr=1e-12, hidden=16, layers=1)
    assert isinstance(tuned, ResidualDenoiser) and tuned.base is den
    x, t = torch.randn(8, 2), torch.full((8,), 300)
    assert torch.allclose(tuned(x, t), den(x, t), atol=1e-6)  # starts at the pretrained model


def test_classifier_free_guidance_baseline():
    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=16, layers=1, cond_dim=3).eval()
    den, cond = classifier_free_guidance(model, torch.tensor([1.0, 0.0, 0.0]), n=6, guidance_scale=1.0)
    assert isinstance(den, CFGDenoiser) and cond.shape == (6, 3)
    x, t = torch.randn(6, 2), torch.full((6,), 100)
    with torch.no_grad():
        assert torch.allclose(den(x, t, cond), model(x, t, cond), atol=1e-6)  # scale 1 = conditional
    assert sample(den, 6, 2, num_steps=5, cond=cond).samples.shape == (6, 2)


def test_bad_arguments_raise_clear_errors():
    clf = _classifier(2)
    with pytest.raises(ValueError, match="scale"):
        ClassifierGuidance(clf, scale=-1.0)
    with pytest.raises(ValueError, match="variance"):
        ClassifierGuidance(clf, variance="large")
    with pytest.raises(TypeError, match="log_prob"):
        ClassifierGuidance(torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="dim=2"):
        clf(torch.randn(4, 3), 10)
    with pytest.raises(ValueError, match="dimension mismatch"):
        train_classifier(torch.randn(10, 2), torch.randn(10, 3), steps=1)
    with pytest.raises(ValueError, match="base_samples"):
        train_classifier(torch.randn(10, 2), torch.randn(1, 2), steps=1)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        classifier_accuracy(clf, torch.randn(4, 2), torch.randn(4, 2), t=1000)
    with pytest.raises(TypeError, match="callable"):
        finetune_denoiser("model", torch.randn(10, 2))
    with pytest.raises(ValueError, match="dim=2"):
        finetune_denoiser(MLPDenoiser(2, hidden=8, layers=1), torch.randn(10, 3), steps=1)
    with pytest.raises(ValueError, match="steps"):
        finetune_denoiser(MLPDenoiser(2, hidden=8, layers=1), torch.randn(10, 2), steps=0)
    with pytest.raises(ValueError, match="unconditional"):
        classifier_free_guidance(MLPDenoiser(2, hidden=8, layers=1), torch.ones(3), n=4)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        classifier_free_guidance(MLPDenoiser(2, hidden=8, layers=1, cond_dim=3), torch.ones(5, 3), n=4)
    with pytest.raises(TypeError, match="float"):
        classifier_free_guidance(MLPDenoiser(2, hidden=8, layers=1, cond_dim=3), torch.ones(3, dtype=torch.long), n=4)


def test_classifier_sizes_and_cfg_cond_are_validated():
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"hidden must be an integer >= 1; got {bad}"):
            NoisyClassifier(2, hidden=bad)
        with pytest.raises(ValueError, match=f"hidden must be an integer >= 1; got {bad}"):
            train_classifier(torch.randn(10, 2), torch.randn(10, 2), steps=1, hidden=bad)
    with pytest.raises(ValueError, match="layers must be an integer >= 1; got 0"):
        NoisyClassifier(2, layers=0)
    model = MLPDenoiser(2, hidden=8, layers=1, cond_dim=3)
    with pytest.raises(ValueError, match=r"cond contains 3 NaN or Inf"):
        classifier_free_guidance(model, torch.full((3,), float("nan")), n=4)


def test_classifier_guidance_under_inference_mode_says_why():
    """torch.inference_mode() turns autograd off: the gradient failed with torch's bare
    'element 0 of tensors does not require grad'."""
    guide = ClassifierGuidance(_classifier())
    x = torch.randn(4, 3)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="ClassifierGuidance.*inference_mode"):
        guide.gradient(x, 10)


def test_float32_classifier_guides_float64_samples():
    # a float64 run (e.g. the exact mixture denoiser, dtype=torch.float64) with a float32 classifier
    # raised "mat1 and mat2 must have the same dtype": the time embedding took x_t's dtype
    clf = _classifier()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = ClassifierGuidance(clf, scale=1.0).gradient(x, 300)
    xf = x.float().requires_grad_(True)
    (oracle,) = torch.autograd.grad(clf.log_prob(xf, 300).sum(), xf)  # the float32 computation itself
    assert g.dtype == torch.float64 and torch.allclose(g.float(), oracle, rtol=1e-5, atol=1e-7)
    refs, base = torch.randn(20, 3) + 1, torch.randn(20, 3)  # and a float64 classifier on float32 points
    assert classifier_accuracy(clf.double(), refs, base, 10) == classifier_accuracy(_classifier(), refs, base, 10)


def test_train_classifier_progress_must_be_a_bool():
    # progress="no" was truthy: it printed the bar the caller had turned off
    refs, base = torch.randn(6, 2) + 1, torch.randn(6, 2)
    with pytest.raises(TypeError, match="progress"):
        train_classifier(refs, base, steps=1, hidden=4, layers=1, progress="no")


def test_finetune_hidden_and_layers_only_size_a_residual():
    # with a trainable model they were silently ignored (hidden=-1 trained happily)
    refs = torch.randn(10, 2)
    for kwargs in (dict(hidden=64), dict(layers=-1)):
        with pytest.raises(ValueError, match="hidden and layers"):
            finetune_denoiser(MLPDenoiser(2, hidden=8, layers=1), refs, steps=1, **kwargs)
    den = GaussianMixtureDenoiser.from_mixture(circle_mixture(), make_scheduler("ddpm"))
    tuned, _ = finetune_denoiser(den, refs, steps=1, hidden=16, layers=1)
    assert tuned.residual.config["hidden"] == 16 and tuned.residual.config["layers"] == 1


def test_finetune_leaves_a_frozen_base_as_it_was():
    # the ResidualDenoiser wraps the caller's own model: training switched it to train() and back to eval()
    base = MLPDenoiser(2, hidden=8, layers=1).requires_grad_(False).train()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    tuned, _ = finetune_denoiser(base, torch.randn(10, 2), steps=3, hidden=8, layers=1)
    assert isinstance(tuned, ResidualDenoiser) and tuned.base is base
    assert base.training and not tuned.training and not tuned.residual.training
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())
    assert not any(p.requires_grad for p in base.parameters())


def test_finetune_names_references_that_do_not_fit_a_weightless_base():
    # it failed at the first training step with "x_t has 3 features per sample (shape (256, 3))"
    den = GaussianMixtureDenoiser.from_mixture(circle_mixture(), make_scheduler("ddpm"))
    with pytest.raises(ValueError, match=r"references of shape \(10, 3\) do not fit the base model"):
        finetune_denoiser(den, torch.randn(10, 3), steps=1)


def test_hook_on_sigma_scaled_latents_is_the_ddpm_step_mapped_back():
    # Euler latents are x_t = x_vp / c_in; the classifier saw them unnormalised (up to 157x too large at
    # t=999) and the shift was not mapped back by 1 / c_in'. The hook must commute with that change of variables.
    clf = _classifier().double()
    g = torch.Generator().manual_seed(2)
    x_vp = torch.randn(4, 3, generator=g, dtype=torch.float64)
    prev_vp = torch.randn(4, 3, generator=g, dtype=torch.float64)
    abar_t, abar_prev = 0.2, 0.3
    c_in, c_prev = abar_t ** 0.5, abar_prev ** 0.5  # 1 / sqrt(1 + sigma^2) with abar = 1 / (1 + sigma^2)
    hook = ClassifierGuidance(clf, scale=2.0)
    vp = _state(x_vp, 700, abar_t, abar_prev)
    vp.x_prev = prev_vp
    want = hook(vp)  # DDPM-normalised latents (c_in = 1), checked against autograd above
    sig = _state(x_vp / c_in, 700, abar_t, abar_prev)
    sig.x_prev, sig.input_scale, sig.input_scale_prev = prev_vp / c_prev, c_in, c_prev
    assert torch.allclose(c_prev * hook(sig), want, rtol=1e-12, atol=1e-14)


def test_classifier_accuracy_names_points_that_do_not_fit():
    # a bad base_samples was refused only after the references were scored, and points of the wrong
    # dimension were reported as "x_t has 3 features per sample"
    clf = _classifier(dim=2)
    with pytest.raises(ValueError, match="dimension mismatch: references has 2 features"):
        classifier_accuracy(clf, torch.randn(5, 2), torch.randn(5, 3), 10)
    with pytest.raises(ValueError, match="references and base_samples have 3 features per point but the classifier "
                                         "expects dim=2"):
        classifier_accuracy(clf, torch.randn(5, 3), torch.randn(5, 3), 10)


@pytest.mark.parametrize("drop", ["input_scale_prev", "both"])
def test_hook_refuses_sigma_scaled_latents_without_their_input_scales(drop):
    # a hand-written Euler loop that left the factors at 1 was guided in the wrong units, silently
    clf = _classifier().double()
    g = torch.Generator().manual_seed(3)
    abar_t, abar_prev = 0.004, 0.01
    c_in, c_prev = abar_t ** 0.5, abar_prev ** 0.5  # Euler: 1 / sqrt(1 + sigma^2) = sqrt(abar)
    sig = _state(torch.randn(16, 3, generator=g, dtype=torch.float64) / c_in, 999, abar_t, abar_prev)
    sig.input_scale, sig.input_scale_prev = c_in, c_prev
    ClassifierGuidance(clf)(sig)  # the full state runs
    sig.input_scale_prev = 1.0
    if drop == "both":
        sig.input_scale = 1.0
    with pytest.raises(ValueError, match="input_scale_prev is 1" if drop != "both" else "input_scale left at 1"):
        ClassifierGuidance(clf)(sig)


def test_residual_denoiser_backpropagates_through_its_base():
    # the base ran under no_grad, so eval_point="x0_hat_backprop" through a fine-tuned weightless model saw the
    # Jacobian of the residual alone: with a zero residual (the fine-tuning's start) it must guide as the base does
    from mmdg_lite import GaussianKernel, MMDGuidance

    den = GaussianMixtureDenoiser.from_mixture(circle_mixture(), make_scheduler("ddpm"))
    refs = subset_mixture(circle_mixture(), USER_MODES).sample(20, torch.Generator().manual_seed(0))[0]
    tuned, _ = finetune_denoiser(den, refs, steps=1, lr=1e-12, hidden=8, layers=1)
    torch.nn.init.zeros_(tuned.residual.out_proj.weight)  # the residual and its Jacobian exactly zero
    x, t = torch.randn(6, 2, requires_grad=True), torch.full((6,), 400)
    (g_base,) = torch.autograd.grad(den(x, t).sum(), x)
    (g_tuned,) = torch.autograd.grad(tuned(x, t).sum(), x)
    assert torch.allclose(g_tuned, g_base, atol=1e-7) and g_base.abs().max() > 0.1
    runs = [sample(d, 8, 2, scheduler="ddim", num_steps=8, seed=0,
                   guidance=MMDGuidance(refs, kernel=GaussianKernel(), eval_point="x0_hat_backprop")).samples
            for d in (den, tuned)]
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_training_refuses_a_scheduler_that_does_not_noise_at_train_timesteps(name):
    # Euler's add_noise is sigma-scaled (x_0 + sigma eps, while the hook feeds the classifier c_in x_t) and
    # DPM-Solver's reads t as a position in its inference schedule (t = 999 barely noised): both trained silently
    import diffusers

    sched = getattr(diffusers, name)(num_train_timesteps=1000)
    ones, t = torch.ones(2, 1), torch.tensor([999, 10])
    assert not torch.allclose(sched.add_noise(ones, torch.zeros_like(ones), t)[:, 0],
                              make_scheduler("ddpm").alphas_cumprod[t].sqrt(), atol=1e-3)  # the defect itself
    refs, base = torch.randn(10, 2) + 2, torch.randn(10, 2)
    for call in (lambda: train_classifier(refs, base, scheduler=sched, steps=1),
                 lambda: classifier_accuracy(_classifier(2), refs, base, 10, scheduler=sched),
                 lambda: finetune_denoiser(MLPDenoiser(2, hidden=8, layers=1), refs, scheduler=sched, steps=1)):
        with pytest.raises(ValueError, match=f"scheduler {name} does not noise as training needs.*at t=999"):
            call()
    fixed = diffusers.DDPMScheduler.from_config(sched.config)  # the way out the error names
    a, _ = train_classifier(refs, base, scheduler=fixed, steps=2)
    b, _ = train_classifier(refs, base, steps=2)  # the default: DDPM, the same linear betas
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_hook_refuses_a_classifier_trained_on_another_noise_schedule():
    # train_classifier noised with DDPM's linear betas by default; sampling with another schedule (cosine betas, or
    # 500 train timesteps) fed the classifier x_t at noise levels it never saw for that t, silently
    import re

    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    refs, base = torch.randn(12, 2) + 2, torch.randn(12, 2)
    linear, _ = train_classifier(refs, base, steps=2)
    cosine, _ = train_classifier(refs, base, scheduler=make_scheduler("ddpm", beta_schedule="squaredcos_cap_v2"),
                                 steps=2)
    cos_ddim = make_scheduler("ddim", beta_schedule="squaredcos_cap_v2")
    den = GaussianMixtureDenoiser.from_mixture(circle_mixture(), cos_ddim)
    run = dict(n=3, shape=2, num_steps=5, seed=0)
    want = (f"step 0 (t=800) has alpha_bar_t={float(cos_ddim.alphas_cumprod[800]):.4g}, but the classifier was "
            f"trained at alpha_bar={float(make_scheduler('ddpm').alphas_cumprod[800]):.4g} for t=800")
    with pytest.raises(ValueError, match=re.escape(want)):
        sample(den, scheduler=cos_ddim, guidance=ClassifierGuidance(linear), **run)
    long = make_scheduler("ddim", 2000)
    with pytest.raises(ValueError, match=r"trained on timesteps 0..999, but step 0 is at t=1600"):  # DDIM 5 of 2000
        sample(GaussianMixtureDenoiser.from_mixture(circle_mixture(), long), scheduler=long,
               guidance=ClassifierGuidance(linear), **run)
    sample(den, scheduler=cos_ddim, guidance=ClassifierGuidance(cosine), **run)  # its own schedule runs
    assert torch.equal(linear.noise_schedule, make_scheduler("ddpm").alphas_cumprod.double())
    lin_den = GaussianMixtureDenoiser.from_mixture(circle_mixture(), make_scheduler("ddpm"))
    for sched in ("ddpm", EulerDiscreteScheduler(), DPMSolverMultistepScheduler(use_karras_sigmas=True)):
        sample(lin_den, scheduler=sched, guidance=ClassifierGuidance(linear), **run)  # fractional / rounded t


def test_train_classifier_refuses_an_odd_batch_size():
    # each minibatch holds batch_size // 2 points of each set: batch_size=3 trained on minibatches of 2, silently
    refs, base = torch.randn(6, 2) + 2, torch.randn(6, 2)
    with pytest.raises(ValueError, match="batch_size must be even .*; got 3"):
        train_classifier(refs, base, steps=1, batch_size=3)
    train_classifier(refs, base, steps=1, batch_size=2)


def test_residual_denoiser_needs_a_module_residual():
    # a function residual failed in .eval() ("'function' object has no attribute 'train'"), None at the first call
    for residual in (lambda x, t: x, None):
        with pytest.raises(TypeError, match="residual must be an nn.Module called as residual"):
            ResidualDenoiser(MLPDenoiser(2, hidden=8, layers=1), residual)


def test_classifier_accuracy_refuses_another_noise_schedule_than_the_classifiers():
    # a classifier trained with cosine betas was scored at the default linear betas' noise levels, silently
    cosine = make_scheduler("ddpm", beta_schedule="squaredcos_cap_v2")
    refs, base = torch.randn(12, 2) + 2, torch.randn(12, 2)
    clf, _ = train_classifier(refs, base, scheduler=cosine, steps=2)
    with pytest.raises(ValueError, match="scheduler noises with another schedule .* than the classifier was trained"):
        classifier_accuracy(clf, refs, base, 500)
    assert 0 <= classifier_accuracy(clf, refs, base, 500, scheduler=cosine) <= 1


def test_train_classifier_treats_sets_with_a_graph_as_plain_values():
    """References encoded outside no_grad carry a graph: step 0 backpropagated into the encoder and
    step 1 failed with torch's 'Trying to backward through the graph a second time'."""
    g = torch.Generator().manual_seed(0)
    encoder = torch.nn.Linear(2, 2)
    refs, base = encoder(torch.randn(12, 2, generator=g)), torch.randn(12, 2, generator=g)
    _, losses = train_classifier(refs, base, steps=3, batch_size=8)
    _, plain = train_classifier(refs.detach(), base, steps=3, batch_size=8)
    assert losses == plain and encoder.weight.grad is None


def test_classifier_guidance_names_a_hand_built_state_it_would_misread():
    # alpha_bar_t and alpha_bar_prev swapped gave a negative Sigma_t, a step pushing *away* from the classifier's
    # class, silently; alpha_bar_prev 0 or input_scale_prev 0 raised a bare ZeroDivisionError, input_scale -1
    # flipped x_t silently, a (B,) t and x_t of another batch failed in torch's own errors
    import dataclasses
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    state = _state(x, 400, 0.3, 0.35)
    hook = ClassifierGuidance(_classifier(), scale=2.0)
    pulled = hook(state) - state.x_prev
    swapped = dataclasses.replace(state, alpha_bar_t=0.35, alpha_bar_prev=0.3)
    cases = [(swapped, r"alpha_bar_t <= alpha_bar_prev.*alpha_bar_t=0\.35, alpha_bar_prev=0\.3"),
             (dataclasses.replace(state, alpha_bar_prev=0.0), r"alpha_bar_prev=0\.0"),
             (dataclasses.replace(state, input_scale_prev=0.0), r"state\.input_scale_prev must be .*> 0.*got 0\.0"),
             (dataclasses.replace(state, input_scale=-1.0), r"state\.input_scale must be .*> 0.*got -1\.0"),
             (dataclasses.replace(state, t=torch.full((4,), 400)), r"state\.t must be .*shape \(4,\)"),
             (dataclasses.replace(state, x_t=x[:2]), r"state\.x_t must be a tensor of x_prev's shape \(4, 3\)")]
    for bad, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            hook(bad)
    # a scheduler's one-element tensors still read as numbers: the same step, along the classifier's gradient
    tensors = dataclasses.replace(state, t=torch.tensor(400), alpha_bar_t=torch.tensor(0.3),
                                  alpha_bar_prev=torch.tensor(0.35))
    assert torch.equal(hook(tensors) - state.x_prev, pulled)
    assert float((pulled * hook.gradient(x, 400)).sum()) > 0
