"""The parts of MMDGuidance, each alone: reference set, step size, evaluation point (DDPM and
sigma-scaled latents), generated set, and the run-level bandwidth."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mmdg_lite import GaussianKernel, MMDGuidance, mmd2, sample
from mmdg_lite.guidance import EvalPoint, ReferenceSet, StepSize
from mmdg_lite.sampling import noise_level


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)  # conftest restores float32 after each test


def state(B=5, D=3, c_in=1.0, c_prev=1.0, ab=0.4, denoiser=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, D, generator=g) * 2
    eps = torch.randn(B, D, generator=g)
    return SimpleNamespace(x_t=x_t, x_prev=0.9 * x_t, eps=eps, t=300, step_index=2, num_steps=10,
                           alpha_bar_t=ab, alpha_bar_prev=ab + 0.05, denoiser=denoiser, cond=None,
                           sample_index=torch.arange(B), input_scale=c_in, input_scale_prev=c_prev)


def test_euler_noise_level_matches_scale_model_input():
    from diffusers import EulerDiscreteScheduler
    sched = EulerDiscreteScheduler(num_train_timesteps=1000)
    sched.set_timesteps(20)
    for i in (0, 7, 19):
        ab, c_in = noise_level(sched, sched.timesteps, i)
        sched._step_index = i
        scaled = sched.scale_model_input(torch.ones(3), sched.timesteps[i])
        assert float(scaled[0]) == pytest.approx(c_in, rel=1e-6)
        sigma = float(sched.sigmas[i])
        assert ab == pytest.approx(1 / (1 + sigma**2))
    assert noise_level(sched, sched.timesteps, 20) == (1.0, 1.0)  # final sigma 0: clean


def test_dpm_solver_latents_are_ddpm_normalised():
    """DPM-Solver lists sigmas like Euler, but its denoiser sees x_t unscaled: c_in = 1."""
    from diffusers import DPMSolverMultistepScheduler
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000)
    sched.set_timesteps(20)
    for i in (0, 7, 19):
        ab, c_in = noise_level(sched, sched.timesteps, i)
        assert torch.equal(sched.scale_model_input(torch.ones(3), sched.timesteps[i]), torch.ones(3))
        assert c_in == 1.0 and ab == float(sched.alphas_cumprod[int(sched.timesteps[i])])
    assert noise_level(sched, sched.timesteps, 20) == (1.0, 1.0)


def test_x0_hat_for_sigma_scaled_latents_is_x_minus_sigma_eps():
    sigma = 3.0
    st = state(c_in=1 / math.sqrt(1 + sigma**2), ab=1 / (1 + sigma**2))
    loc = EvalPoint("x0_hat").locate(st, torch.float64)
    torch.testing.assert_close(loc.z, st.x_t - sigma * st.eps)
    assert loc.scale == pytest.approx(1.0)  # d x0_hat / d x_t = 1 in sigma space


def test_x_t_point_gradient_is_chain_rule_through_scale_model_input():
    c = 0.3
    st = state(c_in=c)
    y = torch.randn(7, 3, generator=torch.Generator().manual_seed(3))
    k = GaussianKernel(1.1)
    guide = MMDGuidance(y, kernel=k, strength=0.5, strength_scale="none", normalization="none")
    x = st.x_t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mmd2(c * x, y, k), x)
    torch.testing.assert_close(guide(st), st.x_prev - 0.5 * g)


def test_backprop_point_feeds_the_denoiser_the_scaled_input():
    seen = []
    net = torch.nn.Linear(3, 3)

    def den(x, t, cond):
        seen.append(x.detach().clone())
        return net(x)
    c, ab = 0.5, 0.3
    st = state(c_in=c, ab=ab, denoiser=den)
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    k = GaussianKernel(1.0)
    out = MMDGuidance(y, kernel=k, strength=0.2, strength_scale="none", normalization="none",
                      eval_point="x0_hat_backprop")(st)
    torch.testing.assert_close(seen[0], c * st.x_t)
    x = st.x_t.clone().requires_grad_(True)
    x0 = (c * x - math.sqrt(1 - ab) * net(c * x)) / math.sqrt(ab)
    (g,) = torch.autograd.grad(mmd2(x0, y, k), x)
    torch.testing.assert_close(out, st.x_prev - 0.2 * g)


def test_backprop_point_refuses_a_denoiser_without_a_gradient():
    # a denoiser wrapped in torch.no_grad() (a common way to call a model) gave eps without a graph:
    # the pull-back then took the linear part alone, and x0_hat_backprop returned exactly x0_hat's step
    net = torch.nn.Linear(3, 3)

    @torch.no_grad()
    def den(x, t, cond):
        return net(x)
    st = state(c_in=0.5, ab=0.3, denoiser=den)
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match=r"eval_point='x0_hat_backprop' backpropagates through the denoiser, but "
                                         r"its output carries no gradient .*or use eval_point='x0_hat'"):
        MMDGuidance(y, eval_point="x0_hat_backprop")(st)
    MMDGuidance(y, eval_point="x0_hat_backprop")(state(c_in=0.5, ab=0.3, denoiser=lambda x, t, c: net(x)))


def test_reference_set_of_numpy_arrays_is_not_changed_by_later_edits_to_them():
    # numpy references (and prompts) were held as views: an in-place numpy edit afterwards bumps no torch
    # version counter, so check_unchanged let it through and the kernel saw the edited references
    # against the old centre, radius and mean square (refs += 100: centre 0.06, references seen at 99.9)
    import numpy as np
    a = np.random.default_rng(0).standard_normal((10, 3))
    p = np.eye(3)[np.arange(10) % 3]
    rs = ReferenceSet(a, p)
    before = rs.on(torch.zeros(1)).clone(), rs.prompts.clone(), rs.centre.clone()
    a += 100.0
    p *= -1.0
    rs.check_unchanged()
    assert torch.equal(rs.on(torch.zeros(1)), before[0]) and torch.equal(rs.prompts, before[1])
    torch.testing.assert_close(rs.on(torch.zeros(1)).mean(0), rs.centre)  # references and summaries agree
    torch.testing.assert_close(rs.centre, torch.from_numpy(a - 100.0).mean(0))


def test_reference_set_caches_device_copies_and_checks_shape():
    rs = ReferenceSet(torch.randn(4, 2, 3))
    like = torch.zeros(1, dtype=torch.float32)
    assert rs.on(like) is rs.on(like)  # one copy per (device, dtype), not one per step
    assert rs.on(like).shape == (4, 6) and rs.on(like).dtype == torch.float64  # the wider dtype
    half = ReferenceSet(torch.randn(4, 6).half())
    assert half.on(torch.zeros(1, dtype=torch.float16)).dtype == torch.float32  # never half
    rs.check_samples(torch.zeros(5, 2, 3))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        rs.check_samples(torch.zeros(5, 3, 2))


def test_step_size_window_and_clip():
    ss = StepSize(2.0, start=0.2, stop=0.5)
    assert [ss.weight(i, 10, 0.5) for i in range(10)] == [0, 0, 2, 2, 2, 0, 0, 0, 0, 0]
    g = torch.tensor([[30.0, 40.0], [0.3, 0.4]])
    step = StepSize(1.0, normalization="clipped", clip_norm=1.0).step(g, g, 1.0, 1.0, 1.0, 5.0)
    torch.testing.assert_close(step.norm(dim=1), torch.tensor([1.0, 0.5]))
    default_cap = StepSize(1.0).step(g, g, 1.0, 1.0, 1.0, 5.0)  # 0.2 x the data scale 5
    torch.testing.assert_close(default_cap.norm(dim=1), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="start and stop"):
        StepSize(1.0, start=0.6, stop=0.5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_window_holding_only_step_0_of_a_ramp_is_refused(schedule):
    # s(t) of "linear" and "cosine" is 0 at step 0 of a run of two or more steps, so stop=0.2 in a
    # 5-step run (the window holds step 0 alone) guided nothing, yet check_window accepted it
    ss = StepSize(1.0, schedule=schedule, stop=0.2)
    assert [ss.weight(i, 5, 0.5) for i in range(5)] == [0.0] * 5
    with pytest.raises(ValueError, match=rf"no step of this 5-step run falls in the guided window \(start=0, "
                                         rf"stop=0.2; step i sits at the fraction i / 5; schedule='{schedule}' is 0 "
                                         r"at step 0\)"):
        ss.check_window(5)
    StepSize(1.0, schedule=schedule, stop=0.4).check_window(5)  # step 1 is guided: accepted
    StepSize(1.0, schedule=schedule, stop=0.2).check_window(1)  # one step: u = 1, guided
    for n in (1, 2, 5, 10):  # the window check agrees with the weights, step by step
        for stop in (0.1, 0.2, 0.5, 1.0):
            ss = StepSize(1.0, schedule=schedule, stop=stop)
            assert [ss.weight(i, n, 0.5) > 0 for i in range(n)] == [ss.guides_any([i], n) for i in range(n)]


def test_a_start_rounded_above_a_step_guides_the_step_check_window_accepted():
    # start=0.1 * 3 is 0.30000000000000004: check_window (guides_any, 1e-9 tolerance) took step 3 of
    # 10 as in the window [start, 0.35), but weight() compared exactly and returned 0 for it, so the
    # run went silently unguided instead of being refused; the two now agree
    ss = StepSize(1.0, start=0.1 * 3, stop=0.35)
    ss.check_window(10)
    assert [ss.weight(i, 10, 0.5) for i in range(10)] == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    for n in (7, 10, 25, 50):  # every step the window accepts is guided, and only those
        for start, stop in ((0.1 * 3, 0.9), (1 - 0.7, 0.6), (0.7 * 0.5, 1.0)):
            ss = StepSize(1.0, start=start, stop=stop)
            assert [ss.weight(i, n, 0.5) > 0 for i in range(n)] == [ss.guides_any([i], n) for i in range(n)]


def test_bandwidth_is_resolved_once_per_run(monkeypatch):
    import mmdg_lite.guidance.guide as guide_mod
    import mmdg_lite.kernels as kernels_mod
    calls = []
    real = kernels_mod.median_bandwidth

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(kernels_mod, "median_bandwidth", counting)
    monkeypatch.setattr(guide_mod, "median_bandwidth", counting)
    from diffusers import DDPMScheduler
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()  # sample()'s default schedule
    # the exact noise prediction for N(0, I) data, so the runs stay on the data's scale (an eps = 0
    # denoiser let x_t grow by 1 / sqrt(alpha_t) per step, to the edge of the blow-up check)
    den = lambda x, t, c: (1 - abar[t]).sqrt()[:, None] * x  # noqa: E731
    y = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    guide = MMDGuidance(y)
    sample(den, 16, 2, num_steps=30, guidance=guide, seed=0, dtype=torch.float64)
    first = len(calls)
    assert first == 2  # the data scale and the kernel's bandwidths, once each
    sample(den, 16, 2, num_steps=30, guidance=guide, seed=1, dtype=torch.float64)
    assert len(calls) == 2 * first  # a new run re-reads them once (reset before the run)
    calls.clear()
    sample(den, 16, 2, num_steps=30, guidance=MMDGuidance(y, bandwidth_update="step"), seed=0,
           dtype=torch.float64)
    assert len(calls) > 20  # the per-step policy re-reads them at every guided step


def _euler_first_step(drop: tuple[str, ...]):
    """A hand-written Euler loop's first StepState (sigma-scaled latents), less the fields in ``drop``."""
    from diffusers import EulerDiscreteScheduler
    sched = EulerDiscreteScheduler(num_train_timesteps=1000)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, generator=g) * sched.init_noise_sigma
    eps = torch.randn(8, 2, generator=g)
    t = sched.timesteps[0]
    x_prev = sched.step(eps, t, x).prev_sample
    (ab, c_in), (ab_prev, c_prev) = noise_level(sched, sched.timesteps, 0), noise_level(sched, sched.timesteps, 1)
    fields = dict(x_t=x, x_prev=x_prev, eps=eps, t=int(t), step_index=0, num_steps=10, alpha_bar_t=ab,
                  alpha_bar_prev=ab_prev, denoiser=None, cond=None, sample_index=torch.arange(8),
                  input_scale=c_in, input_scale_prev=c_prev)
    return SimpleNamespace(**{k: v for k, v in fields.items() if k not in drop})


@pytest.mark.parametrize("drop, match", [(("input_scale_prev",), "input_scale_prev is 1"),
                                         (("input_scale", "input_scale_prev"), "input_scale left at 1")])
@pytest.mark.parametrize("point", ["x_t", "x_prev", "x0_hat"])
def test_a_sigma_scaled_state_without_its_input_scales_is_refused(drop, match, point):
    # a hand-written Euler loop that left out the optional factors got wrong samples or a divergence
    # error advising a lower strength; now the state's inconsistency is named
    refs = torch.randn(20, 2, generator=torch.Generator().manual_seed(1))
    MMDGuidance(refs, eval_point=point)(_euler_first_step(()))  # the full state runs
    with pytest.raises(ValueError, match=match):
        MMDGuidance(refs, eval_point=point)(_euler_first_step(drop))


def test_x0_hat_at_a_zero_snr_step_names_the_cause_and_a_way_out():
    """A zero-terminal-SNR schedule (DDIM with rescale_betas_zero_snr and 'trailing' spacing, as
    v-prediction models use) starts at alpha_bar = 0, where Tweedie's x0_hat divides by 0: the
    error said only 'x0_hat needs 0 < alpha_bar_t <= 1; got 0.0', after the first UNet call,
    with no hint that a guided window starting after that step runs."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    sched.set_timesteps(5)
    ab, _ = noise_level(sched, sched.timesteps, 0)
    assert ab == 0.0  # the schedule's own first noise level
    refs = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    st = SimpleNamespace(x_t=x, x_prev=x.clone(), eps=torch.zeros_like(x), t=int(sched.timesteps[0]), step_index=0,
                         num_steps=5, alpha_bar_t=ab, alpha_bar_prev=noise_level(sched, sched.timesteps, 1)[0],
                         input_scale=1.0, input_scale_prev=1.0, sample_index=torch.arange(4), denoiser=None, cond=None)
    with pytest.raises(ValueError, match=r"undefined at step 0, where alpha_bar_t = 0.*zero-terminal-SNR.*start="):
        MMDGuidance(refs, strength=1.0, eval_point="x0_hat")(st)
    out = MMDGuidance(refs, strength=1.0, eval_point="x0_hat", start=0.05)(st)  # the way out it names
    assert torch.equal(out, st.x_prev)  # step 0 is outside the window: left as it was


def test_reference_summaries_take_blocks_of_rows_not_a_float64_copy(monkeypatch):
    # ReferenceSet copied the whole set to float64 and squared it for the mean square (with the
    # radius's centred copy: 4x the references' memory; 200,000 x 64 references took 196 MB extra,
    # now 11 MB). Values against numpy in float64.
    import numpy as np
    import mmdg_lite.guidance.references as references
    monkeypatch.setattr(references, "_SUMMARY_ROWS", 7)
    widest = []
    double = torch.Tensor.double
    monkeypatch.setattr(torch.Tensor, "double", lambda self: widest.append(len(self)) or double(self))
    y = 3.0 + torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    rs = ReferenceSet(y)
    assert max(widest) <= 7
    a = y.numpy().astype(np.float64)
    assert rs.mean_square == pytest.approx(float((a**2).mean()), rel=1e-12)
    assert rs.radius == pytest.approx(float(np.linalg.norm(a - a.mean(0), axis=1).max()), rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_step_is_named_before_its_distance(bad):
    """The hook's blow-up check settles an ordinary step by one distance per sample; a NaN or Inf
    in the proposal still gets its own message, not the distance one."""
    from mmdg_lite.guidance import GuidanceDivergenceError
    refs = torch.randn(20, 3, generator=torch.Generator().manual_seed(1))
    guide = MMDGuidance(refs, kernel=GaussianKernel(1.0), eval_point="x_t")
    st = state()
    guide(st)  # an ordinary step passes
    st.x_prev[1, 2] = bad
    with pytest.raises(GuidanceDivergenceError, match="produced NaN/Inf at step 2"):
        guide(st)
    far = state()
    far.x_prev[3] = 1e6  # finite, but thrown far from the references by the "guidance"
    far.x_t = far.x_prev / 0.9  # the proposal was far already: not the hook's doing, so not refused
    guide(far)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm", "euler", "dpm_karras", "ddim_trailing"])
def test_noise_levels_of_a_run_match_each_scheduler_by_its_own_definition(name):
    """noise_levels reads every step's (alpha_bar, c_in) at once; the oracle is each scheduler's
    own numbers: alphas_cumprod at its timesteps (then its final value), or 1/(1 + sigma^2) and
    scale_model_input's factor for sigma-scaled latents."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                           EulerDiscreteScheduler)
    from mmdg_lite.sampling import noise_levels
    sched = {"ddpm": lambda: DDPMScheduler(), "ddim": lambda: DDIMScheduler(),
             "dpm": lambda: DPMSolverMultistepScheduler(), "euler": lambda: EulerDiscreteScheduler(),
             "dpm_karras": lambda: DPMSolverMultistepScheduler(use_karras_sigmas=True),
             "ddim_trailing": lambda: DDIMScheduler(timestep_spacing="trailing")}[name]()
    sched.set_timesteps(12)
    ts = sched.timesteps
    levels = noise_levels(sched, ts)
    assert len(levels) == len(ts) + 1
    for i, (ab, c_in) in enumerate(levels):
        if name in ("euler", "dpm_karras"):
            sigma = float(sched.sigmas[i])
            assert ab == pytest.approx(1 / (1 + sigma**2), rel=1e-12)
            if name == "euler" and i < len(ts):
                sched._step_index = i
                assert float(sched.scale_model_input(torch.ones(1), ts[i])[0]) == pytest.approx(c_in, rel=1e-6)
            else:
                assert c_in == (1.0 if name == "dpm_karras" else pytest.approx(1 / math.sqrt(1 + sigma**2)))
        elif i < len(ts):
            assert (ab, c_in) == (float(sched.alphas_cumprod[int(ts[i])]), 1.0)
        else:
            final = getattr(sched, "final_alpha_cumprod", None)
            assert (ab, c_in) == ((1.0 if final is None else float(final)), 1.0)
        assert (ab, c_in) == noise_level(sched, ts, i)  # the one-step reader agrees


@pytest.mark.parametrize("weighting", ["equal", "displacement"])
def test_batch_bandwidth_step_is_2c_times_the_kernel_weighted_displacement(weighting):
    # the docs gave the strength scale as B * sum_k sigma_k^2 / a^2 for every multi-bandwidth
    # kernel; with weighting="equal" it is B / sum_k sigma_k^-2 (the bandwidths' displacements
    # averaged by sigma_k^-2), with "displacement" weights B * sum_k sigma_k^2, so that in both the
    # step is 2c times each sample's displacement toward the references less toward the batch.
    # Oracle: those displacements summed by hand, pair by pair.
    from mmdg_lite import MultiGaussianKernel
    bws, c = (0.7, 2.5), 0.3
    st = state(B=4, D=3, ab=0.5)
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    guide = MMDGuidance(y, kernel=MultiGaussianKernel(bandwidths=bws, weighting=weighting), strength=c,
                        normalization="none", stop=1.0)
    step = st.x_prev - guide(st)  # (B, D); a = 1 at x_t
    x = st.x_t
    om = [b * b / sum(b * b for b in bws) for b in bws] if weighting == "displacement" else [1.0] * len(bws)

    def pull(i, pts):  # sum_k om_k / sigma_k^2 * mean_j k_k(x_i, p_j) (p_j - x_i)
        tot = torch.zeros(3)
        for b, o in zip(bws, om):
            for p in pts:
                tot += o / b**2 * math.exp(-float((x[i] - p).square().sum()) / (2 * b * b)) * (p - x[i]) / len(pts)
        return tot

    scale = sum(b * b for b in bws) if weighting == "displacement" else 1 / sum(b**-2 for b in bws)
    for i in range(4):
        expected = 2 * c * scale * (pull(i, x) - pull(i, y))  # minus the displacement toward the references
        torch.testing.assert_close(step[i], expected)


def test_schedule_callable_errors_are_the_documented_types():
    # schedule_weight's docstring said any bad value raised ValueError; a non-number raises TypeError
    from mmdg_lite.guidance.step_size import schedule_weight
    for value, error in (("1", TypeError), (torch.tensor(0.5), TypeError), (float("nan"), ValueError),
                         (-1.0, ValueError), (float("inf"), ValueError)):
        with pytest.raises(error, match="the schedule callable"):
            schedule_weight(lambda i, n, ab: value, 0, 3, 0.5)  # noqa: B023
    assert schedule_weight(lambda i, n, ab: 0.25, 0, 3, 0.5) == 0.25


def test_memory_mode_leaves_the_whole_first_chunk_unguided():
    # MemorySet's docs said "the first sample is unguided"; with batch_size=2 the first chunk of two is,
    # as sample() says (each chunk is guided against the samples finished before it). Oracle: the same
    # DDIM run (eta 0, initial noise drawn for all samples first) without guidance
    net = torch.nn.Linear(3, 3)
    den = lambda x, t, c: 0.1 * net(x)  # noqa: E731
    y = torch.randn(10, 3, generator=torch.Generator().manual_seed(0)) + 2
    kw = dict(scheduler="ddim", num_steps=10, seed=0, batch_size=2, dtype=torch.float64)
    plain = sample(den, 6, 3, **kw).samples
    guided = sample(den, 6, 3, guidance=MMDGuidance(y, generated_set="memory"), **kw).samples
    assert [bool(torch.equal(plain[i], guided[i])) for i in range(6)] == [True, True, False, False, False, False]
