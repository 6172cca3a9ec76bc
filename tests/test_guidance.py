"""MMDGuidance against independent formulas: autograd, hand-written reference-code rule."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mmdg_lite.guidance import MMDGuidance, schedule_weight
from mmdg_lite.kernels import GaussianKernel, PolynomialKernel
from mmdg_lite.mmd import mmd2



@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)  # conftest restores float32 after each test


def make_state(B=6, D=3, seed=0, step_index=5, num_steps=10, ab=0.6, denoiser=None, cond=None):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, D, generator=g)
    eps = torch.randn(B, D, generator=g)
    x_prev = x_t * 0.9 + 0.05 * torch.randn(B, D, generator=g)
    return SimpleNamespace(x_t=x_t, x_prev=x_prev, eps=eps, t=500, step_index=step_index,
                           num_steps=num_steps, alpha_bar_t=ab, alpha_bar_prev=ab + 0.01,
                           denoiser=denoiser, cond=cond, sample_index=torch.arange(B))


def refs(N=9, D=3, seed=1):
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed)) + 1.0


def autograd_grad(z, y, kernel):
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mmd2(z, y, kernel), z)
    return g


def test_zero_strength_returns_x_prev_unchanged():
    st = make_state()
    out = MMDGuidance(refs(), strength=0.0)(st)
    assert torch.equal(out, st.x_prev)


def test_paper_step_on_x_t_matches_autograd():
    st, y = make_state(), refs()
    guide = MMDGuidance(y, kernel=GaussianKernel(1.3), normalization="none", strength=0.7, strength_scale="none")
    expected = st.x_prev - 0.7 * autograd_grad(st.x_t, y, GaussianKernel(1.3))
    torch.testing.assert_close(guide(st), expected, rtol=1e-10, atol=1e-12)


def test_batch_bandwidth_scale_is_B_sigma_squared():
    st, y = make_state(B=5), refs()
    raw = MMDGuidance(y, kernel=GaussianKernel(2.0), normalization="none", strength=0.3, strength_scale="none")(st)
    rel = MMDGuidance(y, kernel=GaussianKernel(2.0), normalization="none", strength=0.3)(st)
    torch.testing.assert_close(st.x_prev - rel, (st.x_prev - raw) * 5 * 4.0)


def test_eval_point_x_prev_uses_gradient_after_step():
    st, y = make_state(), refs()
    k = GaussianKernel(1.0)
    out = MMDGuidance(y, kernel=k, normalization="none", strength=0.2, strength_scale="none", eval_point="x_prev")(st)
    torch.testing.assert_close(out, st.x_prev - 0.2 * autograd_grad(st.x_prev, y, k))


def test_x0_hat_detached_equals_chain_rule_with_autograd():
    st, y = make_state(ab=0.3), refs()
    k = GaussianKernel(1.0)
    xt = st.x_t.clone().requires_grad_(True)
    x0 = (xt - math.sqrt(0.7) * st.eps) / math.sqrt(0.3)
    (g,) = torch.autograd.grad(mmd2(x0, y, k), xt)
    out = MMDGuidance(y, kernel=k, normalization="none", strength=0.1, strength_scale="none", eval_point="x0_hat")(st)
    torch.testing.assert_close(out, st.x_prev - 0.1 * g)


def test_x0_hat_backprop_goes_through_denoiser():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    den = lambda x, t, c: net(x)  # noqa: E731
    st, y = make_state(denoiser=den, ab=0.5), refs()
    k = GaussianKernel(1.0)
    xt = st.x_t.clone().requires_grad_(True)
    x0 = (xt - math.sqrt(0.5) * net(xt)) / math.sqrt(0.5)
    (g,) = torch.autograd.grad(mmd2(x0, y, k), xt)
    out = MMDGuidance(y, kernel=k, normalization="none", strength=0.1, strength_scale="none",
                      eval_point="x0_hat_backprop")(st)
    torch.testing.assert_close(out, st.x_prev - 0.1 * g)


def reference_code_rule(x, memory, y, alpha):
    """The reference code's per-sample rule, written out with loops (method.md Sec. 3):
    cubic kernel (a.b/D + 1)^3 on x_{t-1}; generated set {x} + memory; V-statistic;
    step alpha * ||x|| * g / (||g|| + 1e-5) subtracted from x_{t-1}."""
    D = x.numel()
    k = lambda a, b: (a @ b / D + 1) ** 3  # noqa: E731
    dk = lambda a, b: 3 / D * (a @ b / D + 1) ** 2 * b  # grad wrt a  # noqa: E731
    m, N = len(memory), len(y)
    gen_term = 2 * 3 / D * (x @ x / D + 1) ** 2 * x  # d/dx k(x, x)
    for j in range(m):
        gen_term = gen_term + 2 * dk(x, memory[j])
    ref_term = sum(dk(x, y[j]) for j in range(N))
    g = gen_term / (m + 1) ** 2 - 2 * ref_term / ((m + 1) * N)
    assert k(x, x) > 0
    return x - alpha * x.norm() * g / (g.norm() + 1e-5)


def test_memory_mode_reproduces_reference_code_formula():
    y = refs(N=7, D=4)
    guide = MMDGuidance.reference_code(y, alpha=0.01)
    assert guide.sequential
    st0 = make_state(B=1, D=4, seed=3)
    assert torch.equal(guide(st0), st0.x_prev)  # first sample: unguided (empty memory)
    mem = torch.randn(5, 4, generator=torch.Generator().manual_seed(7))
    guide.remember(mem[:2])
    guide.remember(mem[2:])
    for seed in range(4):
        st = make_state(B=1, D=4, seed=10 + seed)
        expected = reference_code_rule(st.x_prev[0], mem, y, 0.01)
        torch.testing.assert_close(guide(st)[0], expected, rtol=1e-9, atol=1e-12)


def test_memory_keeps_newest_samples_only():
    guide = MMDGuidance(refs(), generated_set="memory", memory_size=3)
    for i in range(5):
        guide.remember(torch.full((1, 3), float(i)))
    assert guide.memory[:, 0].tolist() == [2.0, 3.0, 4.0]
    guide.reset()
    assert guide.memory is None


def test_norm_matched_correction_has_norm_alpha_times_x():
    st, y = make_state(B=8, D=5), refs(D=5)
    k = GaussianKernel(0.8)
    out = MMDGuidance(y, kernel=k, strength=0.05, normalization="norm_matched")(st)
    corr = (st.x_prev - out).norm(dim=1)
    gnorm = autograd_grad(st.x_t, y, k).norm(dim=1)
    expected = 0.05 * st.x_prev.norm(dim=1) * gnorm / (gnorm + 1e-5)
    torch.testing.assert_close(corr, expected, rtol=1e-9, atol=0)


def test_clipped_caps_every_sample_step():
    st, y = make_state(B=8), refs()
    out = MMDGuidance(y, strength=1e3, normalization="clipped", clip_norm=0.25)(st)
    norms = (st.x_prev - out).norm(dim=1)
    assert float(norms.max()) <= 0.25 + 1e-12
    assert float(norms.min()) > 0.2  # the huge step really was clipped, not zeroed


@pytest.mark.parametrize("schedule,expected", [("constant", [1, 1, 1, 1, 1]),
                                               ("linear", [0, .25, .5, .75, 1]),
                                               ("cosine", [0, .1464466, .5, .8535534, 1]),
                                               ("last", [0, 0, 0, 1, 1])])
def test_schedules(schedule, expected):
    got = [schedule_weight(schedule, i, 5, 0.5, last_fraction=0.4) for i in range(5)]
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("args,match", [((5, 5), r"step_index must be from 0 to num_steps - 1 = 4; got 5"),
                                        ((-1, 5), r"step_index must be an integer >= 0; got -1"),
                                        ((1.5, 5), r"step_index must be an integer >= 0; got float 1.5"),
                                        ((0, 0), r"num_steps must be an integer >= 1; got 0")])
def test_schedule_weight_refuses_steps_outside_the_run(args, match):
    with pytest.raises((ValueError, TypeError), match=match):  # "linear" would give u > 1 or < 0
        schedule_weight("linear", *args, 0.5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ramped_schedules_guide_a_one_step_run(schedule):
    # u = i / (n - 1) is 0/0 for one step; it used to read 0 and guide nothing, silently
    assert schedule_weight(schedule, 0, 1, 0.5) == 1.0
    st = make_state(step_index=0, num_steps=1)
    out = MMDGuidance(refs(), strength=1.0, schedule=schedule)(st)
    assert float((out - st.x_prev).norm()) > 0


def test_schedule_last_zero_steps_leave_samples_untouched():
    st = make_state(step_index=0, num_steps=10)
    out = MMDGuidance(refs(), strength=1.0, schedule="last", last_fraction=0.2)(st)
    assert torch.equal(out, st.x_prev)


def test_prompt_aware_with_identical_prompts_equals_plain_guidance():
    st, y = make_state(B=6), refs(N=9)
    k = GaussianKernel(1.1)
    plain = MMDGuidance(y, kernel=k, normalization="none", strength=0.3)(st)
    p = torch.ones(9, 4)
    prompted = MMDGuidance(y, kernel=k, normalization="none", strength=0.3, reference_prompts=p,
                           sample_prompts=torch.ones(6, 4))(st)
    torch.testing.assert_close(prompted, plain, rtol=1e-12, atol=1e-12)


def test_prompt_aware_matches_autograd_of_product_mmd():
    """prompt_weighting='joint' is Eq. 11: the gradient of the product-kernel MMD^2 (the default
    'conditional' weighting is checked against per-group MMD in test_prompt_weighting.py)."""
    st, y = make_state(B=6), refs(N=9)
    g = torch.Generator().manual_seed(4)
    rp, sp = torch.randn(9, 4, generator=g), torch.randn(6, 4, generator=g)
    k, kp = GaussianKernel(1.1), GaussianKernel(0.5)
    out = MMDGuidance(y, kernel=k, normalization="none", strength=0.3, strength_scale="none", reference_prompts=rp,
                      sample_prompts=sp, prompt_kernel=kp, prompt_weighting="joint")(st)
    from mmdg_lite.kernels import ProductKernel
    pk = ProductKernel(kp, k)
    z = st.x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mmd2(z, y, pk, x_prompts=sp, y_prompts=rp), z)
    torch.testing.assert_close(out, st.x_prev - 0.3 * grad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(schedule="exponential"), "schedule must be one of"),
    (dict(eval_point="x_T"), "eval_point must be one of"),
    (dict(strength=-0.1), "strength must be a finite number >= 0; got -0.1"),
    (dict(normalization="l2"), "normalization must be one of"),
    (dict(generated_set="pairs"), "generated_set must be one of"),
    (dict(last_fraction=1.5), "last_fraction must be in"),
    (dict(sample_prompts=torch.ones(6, 2)), "need reference_prompts"),
    (dict(reference_prompts=torch.ones(4, 2)), "reference_prompts has 4 rows but references has 9"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MMDGuidance(refs(), **kwargs)


def test_reference_dimension_must_match_samples():
    with pytest.raises(ValueError, match=r"per-sample shape \(3,\).*references have \(5,\)"):
        MMDGuidance(refs(D=5), strength=0.1)(make_state(D=3))


def test_non_finite_correction_raises():
    st = make_state(B=1, D=1)
    st.x_t = torch.zeros(1, 1)
    guide = MMDGuidance(torch.full((1, 1), 0.3), kernel=GaussianKernel(0.3), strength=1e308,
                        strength_scale="none", normalization="none")  # (clipping caps even this step)
    with pytest.raises(FloatingPointError, match="NaN/Inf at step 5"):
        guide(st)


def test_rff_option_approaches_exact_guidance_and_validates():
    st, y = make_state(B=6, D=3), refs(N=9, D=3)
    k = GaussianKernel(2.0)
    exact = MMDGuidance(y, kernel=k, normalization="none", strength=0.5)(st)
    approx = MMDGuidance(y, kernel=k, normalization="none", strength=0.5, rff_features=200_000, rff_seed=1)(st)
    rel = float((approx - exact).norm() / (exact - st.x_prev).norm())
    assert rel < 0.05
    with pytest.raises(ValueError, match="fixed bandwidth"):
        MMDGuidance(y, rff_features=64)
    with pytest.raises(ValueError, match="generated_set='batch'"):
        MMDGuidance(y, kernel=k, rff_features=64, generated_set="memory")


def test_too_few_sample_prompts_is_a_clear_error():
    st, y = make_state(B=6), refs(N=9)
    guide = MMDGuidance(y, reference_prompts=torch.ones(9, 4), sample_prompts=torch.ones(5, 4))
    with pytest.raises(ValueError, match="sample_prompts has 5 rows but the sampler is drawing at least 6"):
        guide(st)


def test_a_guided_window_that_holds_no_step_is_refused_not_silently_unguided():
    # "last" starts at 1 - last_fraction = 0.9, where the default stop=0.9 ends guidance
    with pytest.raises(ValueError, match="schedule='last'.*stop=0.9"):
        MMDGuidance(refs(), schedule="last", last_fraction=0.1)
    MMDGuidance(refs(), schedule="last", last_fraction=0.1, stop=1.0)  # the window is [0.9, 1)
    # start=0.95 holds no step fraction i / 10 of a 10-step run: refused at its first step
    g = MMDGuidance(refs(), start=0.95, stop=1.0)
    with pytest.raises(ValueError, match="no step of this 10-step run"):
        g(make_state(step_index=0, num_steps=10))
    g.reset()
    st = make_state(step_index=0, num_steps=40)  # 39/40 = 0.975 lies in [0.95, 1)
    assert torch.equal(g(st), st.x_prev)  # step 0 is outside the window but the run is fine
    with pytest.raises(ValueError, match="no step of this 10-step run"):  # the same guide, a shorter run
        g(make_state(step_index=0, num_steps=10))
    assert MMDGuidance(refs(), strength=0.0, start=0.95, stop=1.0)(make_state(step_index=0)) is not None


def test_the_last_schedule_guides_exactly_the_steps_between_1_minus_last_fraction_and_stop():
    from mmdg_lite.sampling import sample
    y = refs(D=2)
    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    g = MMDGuidance(y, schedule="last", last_fraction=0.3, track=True)
    sample(den, 8, 2, num_steps=20, guidance=g, seed=0)
    assert [h["step"] for h in g.history] == [14, 15, 16, 17]  # fractions 0.7 <= i / 20 < 0.9


def test_the_unbiased_estimator_with_a_batch_of_one_names_the_cause():
    from mmdg_lite.sampling import sample
    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    calls = []
    g = MMDGuidance(refs(D=2), estimator="unbiased")
    counted = lambda x, t, c: calls.append(1) or den(x, t, c)  # noqa: E731
    # a last chunk of one sample; chunks of one; one sample. The advice must fit the case: n=1 and
    # batch_size=1 were told to choose n % batch_size != 1, which n=1 (1 % 1 = 0) already met
    for n, bs, why in ((5, 2, r"n=5 with batch_size=2 leaves a last batch of 1: choose n and batch_size with "
                                r"n % batch_size != 1"),
                       (3, 1, r"batch_size=1 makes every batch 1 sample: use batch_size >= 2"),
                       (1, None, r"n=1 is one batch of 1: draw n >= 2")):
        with pytest.raises(ValueError, match=rf"every guided batch needs at least 2 samples; {why}, or use "
                                             r"estimator='biased'"):
            sample(counted, n, 2, num_steps=5, guidance=g, batch_size=bs)
    assert calls == []  # refused before the first step (it used to fail on the last chunk)
    sample(den, 4, 2, num_steps=5, guidance=g, batch_size=2)  # chunks of two are fine
    with pytest.raises(ValueError, match="estimator='unbiased' needs at least 2 generated samples"):
        g.gradient(torch.zeros(1, 2))  # the gradient itself still says why


@pytest.mark.parametrize("normalization,advice", [("none", "use normalization='clipped'"),
                                                  ("clipped", "clip_fraction")])
@pytest.mark.filterwarnings("ignore::mmdg_lite.guidance.ReferenceScaleWarning")  # references x 100, on purpose
def test_the_divergence_error_suggests_a_knob_not_already_in_use(normalization, advice):
    from mmdg_lite.guidance import GuidanceDivergenceError
    from mmdg_lite.sampling import sample
    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    y = torch.randn(50, 2, generator=torch.Generator().manual_seed(1)) * 100  # far off the data scale
    strength = 1.0 if normalization == "clipped" else 50.0
    with pytest.raises(GuidanceDivergenceError) as info:
        sample(den, 200, 2, num_steps=50, guidance=MMDGuidance(y, strength=strength, normalization=normalization),
               seed=0)
    assert advice in str(info.value)
    if normalization == "clipped":
        assert "use normalization='clipped'" not in str(info.value)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"rff_features": 0}, ValueError, "rff_features must be an integer >= 1"),
    ({"rff_features": 64, "rff_seed": "a"}, ValueError, "seed must be an integer"),
    ({"track": "yes"}, TypeError, "track must be True or False"),
])
def test_guidance_options_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        MMDGuidance(refs(), kernel=GaussianKernel(1.0), **kwargs)


def test_references_on_another_scale_warn_once_and_the_right_scale_does_not():
    import warnings

    from mmdg_lite.guidance import ReferenceScaleWarning
    from mmdg_lite.sampling import sample
    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    y = torch.rand(40, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1  # images in [-1, 1]
    with pytest.warns(ReferenceScaleWarning, match=r"references have RMS 1.*x the sampler's points.*x / 127.5 - 1") as rec:
        sample(den, 8, 16, num_steps=5, guidance=MMDGuidance((y + 1) * 127.5), seed=0)  # 0-255 pixels
    assert len([w for w in rec if issubclass(w.category, ReferenceScaleWarning)]) == 1  # once per run
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReferenceScaleWarning)
        sample(den, 8, 16, num_steps=5, guidance=MMDGuidance(y), seed=0)
        sample(den, 8, 16, num_steps=5, guidance=MMDGuidance(y * 10), seed=0)  # wide data: still plausible


def test_float64_reference_prompts_guide_a_float32_run_like_float32_ones():
    """numpy's float64 prompt features made the conditional prompt weights float64 against the
    float32 batch, and sampling raised a dtype RuntimeError."""
    from mmdg_lite.sampling import sample
    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    f32 = torch.float32  # (this module's default dtype is float64)
    y, rp = torch.randn(12, 2, generator=g, dtype=f32), torch.randn(12, 4, generator=g, dtype=f32)
    cond = rp[torch.arange(6) % 12]
    runs = [sample(den, 6, 2, num_steps=5, cond=cond, seed=0, dtype=f32,
                   guidance=MMDGuidance(y, reference_prompts=p)).samples for p in (rp, rp.double())]
    assert runs[0].dtype == f32 and torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], sample(den, 6, 2, num_steps=5, cond=cond, seed=0, dtype=f32).samples)


def test_gradient_of_prompt_aware_guidance_checks_its_prompts():
    G = MMDGuidance(torch.randn(10, 3), reference_prompts=torch.randn(10, 4))
    z = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"prompt-aware .* pass prompts of shape \(6, 4\)"):
        G.gradient(z)
    for bad in (torch.randn(6, 3), torch.randn(5, 4)):
        with pytest.raises(ValueError, match=rf"prompts must have shape \(6, 4\).*got \({len(bad)}, {bad.shape[1]}\)"):
            G.gradient(z, bad)
    with pytest.raises(ValueError, match="prompts were given but this guidance has no reference_prompts"):
        MMDGuidance(torch.randn(10, 3)).gradient(z, torch.randn(6, 4))
    assert G.gradient(z, torch.randn(6, 4).double()).shape == (6, 3)


def test_a_huge_strength_under_clipping_takes_the_capped_step_not_none():
    """strength * ||g|| overflowed float32 to inf, cap / inf = 0, and the guidance did nothing."""
    from mmdg_lite import draw_references, load_or_train_toy_2d, subset_mixture
    from mmdg_lite.sampling import sample
    f32 = torch.float32  # (this module's default dtype is float64, where 1e20 * ||g|| is finite)
    model, ring = load_or_train_toy_2d(progress=False)
    model = model.to(f32)
    y = draw_references(subset_mixture(ring, [0, 1, 2, 3]), n=50, seed=0).to(f32)
    run = lambda **kw: sample(model, 32, 2, num_steps=20, seed=0, dtype=f32, **kw).samples  # noqa: E731
    plain, capped = run(), run(guidance=MMDGuidance(y, strength=1e3))  # every step at the cap already
    for s in (1e20, 1e35):  # strength * ||g|| beyond float32
        huge = run(guidance=MMDGuidance(y, strength=s))
        assert not torch.equal(huge, plain) and torch.allclose(huge, capped, atol=1e-3)


def test_the_divergence_advice_names_a_change_that_works_for_data_far_from_unit_scale():
    """A ring of radius 20 (the exact mixture denoiser): untuned x_t guidance throws samples off
    and its error only said "lower strength" (0.3 still raised); evaluating at x0_hat works."""
    from mmdg_lite import draw_references, mode_proportions, subset_mixture
    from mmdg_lite.guidance import GuidanceDivergenceError
    from mmdg_lite.sampling import make_scheduler, sample
    from mmdg_lite.denoisers import GaussianMixtureDenoiser
    from mmdg_lite.toys import circle_mixture

    ring = circle_mixture(8, radius=20.0, std=1.0)
    den = GaussianMixtureDenoiser(ring.means, ring.weights, ring.std, make_scheduler("ddpm").alphas_cumprod)
    refs_ = draw_references(subset_mixture(ring, [0, 1, 2, 3]), n=200, seed=0)
    run = lambda g: sample(den, 100, 2, num_steps=50, scheduler="ddim", seed=0, guidance=g).samples  # noqa: E731
    with pytest.raises(GuidanceDivergenceError, match="eval_point='x0_hat'"):
        run(MMDGuidance(refs_))
    share = mode_proportions(run(MMDGuidance(refs_, eval_point="x0_hat")), ring.means)[:4].sum()
    assert share > 0.9, share


def test_references_far_below_unit_scale_warn_once():
    """Latents with the VAE factor applied twice (SD: RMS ~0.18) or a model's data at scale 0.1
    passed silently; the defaults, read off the noise, then overshoot such data."""
    import warnings

    from mmdg_lite.guidance import ReferenceScaleWarning
    from mmdg_lite.sampling import sample
    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    latents = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))  # RMS ~1: factor once
    with pytest.warns(ReferenceScaleWarning, match=r"RMS 0.1.*applied exactly once.*eval_point='x0_hat'") as rec:
        sample(den, 8, 16, num_steps=5, guidance=MMDGuidance(latents * 0.18215), seed=0)  # factor twice
    assert len([w for w in rec if issubclass(w.category, ReferenceScaleWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReferenceScaleWarning)
        sample(den, 8, 16, num_steps=5, guidance=MMDGuidance(latents), seed=0)
        sample(den, 8, 16, num_steps=5, guidance=MMDGuidance(latents * 0.3), seed=0)  # narrow data: plausible


def test_options_are_checked_where_they_are_given_even_if_unused():
    import numpy as np

    from mmdg_lite import draw_references
    from mmdg_lite.sampling import sample
    y = refs()
    for kw, error, msg in (
            (dict(memory_size=0), ValueError, "memory_size must be an integer >= 1; got 0"),  # batch mode too
            (dict(memory_size=True), TypeError, "memory_size must be an integer >= 1"),
            (dict(rff_seed=True), ValueError, "seed must be an integer"),
            (dict(schedule=3), ValueError, "schedule must be one of 'constant', .* or a callable"),
            (dict(reference_prompts=torch.randn(9, 4), prompt_kernel="gauss"), TypeError,
             "prompt_kernel must be a mmdg_lite Kernel")):
        with pytest.raises(error, match=msg):
            MMDGuidance(y, **kw)
    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    for schedule, msg in ((lambda i, n, ab: "1", "must return a number; got '1'"),
                          (lambda i, n: 1.0, r"called as schedule\(step_index, num_steps, alpha_bar_t\)")):
        with pytest.raises(TypeError, match=msg):
            sample(den, 4, 3, num_steps=3, guidance=MMDGuidance(y, schedule=schedule))
    with pytest.raises(TypeError, match="mixture must be a GaussianMixture.*got str"):
        draw_references("ring")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available"):
            sample(den, 4, 3, num_steps=3, device="cuda")
    y_grad = y.clone().requires_grad_(True)  # references that require grad: no torch warning, same numbers
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = sample(den, 4, 3, num_steps=3, seed=0, guidance=MMDGuidance(y_grad)).samples
    assert np.allclose(a.numpy(), sample(den, 4, 3, num_steps=3, seed=0, guidance=MMDGuidance(y)).samples.numpy())


def test_scale_warning_for_all_zero_references_says_so():
    from mmdg_lite.guidance import ReferenceScaleWarning
    from mmdg_lite.sampling import sample

    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    with pytest.warns(ReferenceScaleWarning, match=r"^references are all zero \(the sampler's points have RMS") as rec:
        try:
            sample(den, 8, 4, num_steps=5, guidance=MMDGuidance(torch.zeros(10, 4)), seed=0)
        except ValueError:
            pass  # what a zero reference set does next is not this test's concern
    assert rec  # it used to print "1/" and a 300-digit number "of the sampler's points"


@pytest.mark.parametrize("abar,err,match", [
    (float("nan"), ValueError, r"alpha_bar_t must be a number in \[0, 1\].*got nan"),
    (-0.5, ValueError, r"alpha_bar_t must be a number in \[0, 1\].*got -0.5"),
    (1.5, ValueError, r"alpha_bar_t must be a number in \[0, 1\].*got 1.5"),
    ("0.5", TypeError, r"alpha_bar_t must be a number in \[0, 1\].*got '0.5'")])
def test_schedule_weight_refuses_alpha_bar_outside_0_1(abar, err, match):
    """The "alpha_bar" schedule returned float(alpha_bar_t) unchecked: NaN, a negative weight (a
    step away from the references) or the string '0.5' read as a number."""
    with pytest.raises(err, match=match):
        schedule_weight("alpha_bar", 0, 5, abar)


@pytest.mark.parametrize("frac", [float("nan"), -0.3, 0.0, 1.5])
def test_schedule_weight_refuses_last_fraction_outside_0_1(frac):
    """last_fraction was unchecked here (StepSize checks it): NaN or 0 gave 0 on every step,
    silently, and a negative fraction guided nothing."""
    with pytest.raises(ValueError, match=r"last_fraction must be"):
        schedule_weight("last", 4, 5, 0.5, last_fraction=frac)


def test_reference_scale_warning_shows_at_every_identical_run():
    """Python's default filter shows a message once per code location: a second identical run (a
    re-run cell, a loop over seeds) returned samples pulled toward 0-255 references without a word."""
    import warnings

    from mmdg_lite.guidance import ReferenceScaleWarning, guide
    from mmdg_lite.sampling import sample

    den = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    pixels = torch.rand(40, 16, generator=torch.Generator().manual_seed(0)) * 255
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("default")
        for _ in range(2):
            sample(den, 8, 16, num_steps=5, guidance=MMDGuidance(pixels), seed=0)
    scale = [w for w in rec if issubclass(w.category, ReferenceScaleWarning)]
    assert len(scale) == 2 and {w.filename for w in scale} == {guide.__file__}
    with warnings.catch_warnings():  # the user's filters still rule
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ReferenceScaleWarning)
        sample(den, 8, 16, num_steps=5, guidance=MMDGuidance(pixels), seed=0)


def test_gradient_keeps_image_shapes_and_refuses_another_layout():
    """gradient() flattened any z of the right size: channels-last (B, H, W, C) points against
    (C, H, W) references were accepted silently (the hook refuses them), and image-shaped z got
    a (B, D) gradient back. The oracle is the same points given flat."""
    g = torch.Generator().manual_seed(0)
    refs, z = torch.randn(10, 1, 2, 3, generator=g), torch.randn(4, 1, 2, 3, generator=g)
    G = MMDGuidance(refs)
    assert torch.equal(G.gradient(z), G.gradient(z.reshape(4, 6)).reshape(z.shape))
    with pytest.raises(ValueError, match=r"the points z have per-sample shape \(2, 3, 1\) .* but references "
                                         r"have \(1, 2, 3\)"):
        G.gradient(z.permute(0, 2, 3, 1))


def test_a_step_state_without_its_optional_fields_guides_or_names_the_missing_one():
    # StepState required denoiser, cond and sample_index even where unused, and a state without the one
    # a guidance needs failed with a raw AttributeError / "'NoneType' object is not callable"
    from mmdg_lite.sampling import StepState
    full = make_state()
    core = {k: getattr(full, k) for k in ("x_t", "x_prev", "eps", "t", "step_index", "num_steps",
                                          "alpha_bar_t", "alpha_bar_prev")}
    torch.testing.assert_close(MMDGuidance(refs())(StepState(**core)), MMDGuidance(refs())(full))
    with pytest.raises(ValueError, match="x0_hat_backprop.*needs denoiser.*got NoneType"):
        MMDGuidance(refs(), eval_point="x0_hat_backprop")(StepState(**core))
    prompted = MMDGuidance(refs(), reference_prompts=torch.randn(9, 2), sample_prompts=torch.randn(6, 2))
    with pytest.raises(ValueError, match=r"sample_index, a \(6,\) long tensor.*got NoneType"):
        prompted(StepState(**core))


def test_memory_mode_in_a_loop_that_never_calls_remember_is_refused_not_silently_unguided():
    # without remember() the memory stays empty, so every chunk came back unguided with no error
    def run_chunk(guide, seed):
        return [guide(make_state(B=1, seed=seed, step_index=i, num_steps=4)) for i in range(3)]
    forgetful = MMDGuidance(refs(), generated_set="memory")
    run_chunk(forgetful, 0)
    with pytest.raises(ValueError, match=r"call guidance.remember\(x0_chunk\) after each chunk"):
        run_chunk(forgetful, 1)
    careful = MMDGuidance(refs(), generated_set="memory")
    careful.remember(run_chunk(careful, 0)[-1])
    outs = run_chunk(careful, 1)  # guided against the remembered sample
    assert not torch.equal(outs[0], make_state(B=1, seed=1, step_index=0, num_steps=4).x_prev)
    careful.reset()  # a new run starts with an empty memory and no pending chunk
    run_chunk(careful, 2)


def test_references_edited_in_place_after_building_the_guidance_are_refused_not_half_used():
    # MMDGuidance keeps a view of the caller's references: an in-place edit afterwards moved the kernel's
    # references but left the cached centre, radius, mean square (the step size and scale checks) and any RFF
    # embedding at the old values, with no error
    import copy
    import pickle
    y, z = refs(), torch.randn(6, 3)
    kernel = GaussianKernel(1.0)
    guide = MMDGuidance(y, kernel=kernel)
    torch.testing.assert_close(guide.gradient(z), autograd_grad(z, y, kernel))
    clones = [copy.deepcopy(guide), pickle.loads(pickle.dumps(guide))]
    y.mul_(2.0)
    with pytest.raises(RuntimeError, match=r"modified in place.*build a new MMDGuidance.*references.clone\(\)"):
        guide.gradient(z)
    with pytest.raises(RuntimeError, match="modified in place"):
        guide(make_state())
    for clone in clones:  # copies hold their own references: the original's edit leaves them valid
        torch.testing.assert_close(clone.gradient(z), autograd_grad(z, y / 2.0, kernel))
    torch.testing.assert_close(MMDGuidance(y, kernel=kernel).gradient(z), autograd_grad(z, y, kernel))
    p = torch.randn(9, 2)
    prompted = MMDGuidance(refs(), reference_prompts=p, sample_prompts=torch.randn(6, 2))
    p.add_(1.0)
    with pytest.raises(RuntimeError, match=r"references \(or reference_prompts\) were modified"):
        prompted(make_state())
    with torch.inference_mode():  # inference tensors keep no version counter: nothing to check, no crash
        frozen = refs()
    torch.testing.assert_close(MMDGuidance(frozen, kernel=kernel).gradient(z), autograd_grad(z, refs(), kernel))


def test_prompt_features_that_l2_normalisation_collapses_are_refused_at_construction():
    """One feature per prompt (class labels as (N, 1) floats) is reduced to its sign, so labels
    1, 2, 3 were one prompt and the guidance was plain MMD, silently; all-zero reference prompt
    rows were refused only at the first guided step, after the denoiser had run."""
    from mmdg_lite.kernels import GaussianKernel

    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(6, 2, generator=g), torch.randn(3, 2, generator=g)
    labels = torch.tensor([1.0, 1, 2, 2, 3, 3])[:, None]
    with pytest.raises(ValueError, match=r"reference_prompts have 1 feature per prompt.*shape \(6, 1\).*one-hot"):
        MMDGuidance(y, reference_prompts=labels)
    onehot = torch.eye(3)[[0, 0, 1, 1, 2, 2]]
    with pytest.raises(ValueError, match=r"sample_prompts must be non-zero vectors.*row\(s\) \[1\]"):
        MMDGuidance(y, reference_prompts=onehot,
                    sample_prompts=torch.eye(3)[[0, 1, 2]] * torch.tensor([[1.0], [0], [1]]))
    bad = onehot.clone()
    bad[4] = 0
    with pytest.raises(ValueError, match=r"reference_prompts must be non-zero vectors.*row\(s\) \[4\]"):
        MMDGuidance(y, reference_prompts=bad)
    # the one-hot labels carry the prompts: not the plain gradient
    kz = GaussianKernel(1.0)
    aware = MMDGuidance(y, kernel=kz, reference_prompts=onehot).gradient(z, torch.eye(3))
    assert float((aware - MMDGuidance(y, kernel=kz).gradient(z)).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", ["list", "tuple", "numpy", "str"])
def test_prompt_strings_given_as_prompt_features_name_the_argument_and_the_encoder(kind):
    """A numpy array of prompt strings raised torch's "can't convert np.ndarray of type numpy.str_"
    (no argument named); a list said only 'must be a torch.Tensor or numpy array'."""
    import numpy as np

    y = torch.zeros(3, 2)
    words = ["cat", "dog", "cat"]
    value = {"list": words, "tuple": tuple(words), "numpy": np.array(words), "str": "cat"}[kind]
    with pytest.raises(TypeError, match=r"^reference_prompts must be prompt features.*encoder\.encode\(prompts\)"):
        MMDGuidance(y, reference_prompts=value)
    with pytest.raises(TypeError, match=r"^sample_prompts must be prompt features.*prompt_aware_guidance"):
        MMDGuidance(y, reference_prompts=torch.eye(3), sample_prompts=value)


def test_sample_prompts_are_moved_to_the_samples_device():
    """sample_prompts (built on the CPU by an encoder) were indexed on their own device and only
    cast: a CUDA run got CPU prompt features against CUDA references and failed in the prompt
    Gram product with torch's device-mismatch error. 'meta' stands in for the GPU here."""
    from types import SimpleNamespace

    f32 = torch.float32  # (this module's default dtype is float64)
    guide = MMDGuidance(refs(N=6).to(f32), reference_prompts=torch.eye(3, dtype=f32)[[0, 0, 1, 1, 2, 2]],
                        sample_prompts=torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]])
    state = SimpleNamespace(x_prev=torch.empty(4, 3, device="meta", dtype=f32), sample_index=torch.arange(4), cond=None)
    p = guide._prompts_for(state, 4)
    assert p.device.type == "meta" and p.dtype == torch.float32 and p.shape == (4, 3)


@pytest.mark.parametrize("index, got", [(torch.tensor([0, 1, -1]), r"shape \(3,\), torch.int64, smallest -1"),
                                        (torch.arange(3, dtype=torch.float32), r"shape \(3,\), torch.float32"),
                                        (torch.arange(4), r"shape \(4,\), torch.int64")])
def test_a_hand_loops_bad_sample_index_is_named(index, got):
    """A negative index picked the last sample_prompts row (another sample's prompt), silently; a
    float index failed in torch's indexing ('tensors used as indices must be long ...')."""
    guide = MMDGuidance(refs(N=6), reference_prompts=torch.eye(3)[[0, 0, 1, 1, 2, 2]],
                        sample_prompts=torch.eye(3)[[0, 1, 2, 2]], kernel=GaussianKernel(1.0))
    state = make_state(B=3)
    state.sample_index = index
    want = rf"sample_index, a \(3,\) long tensor of the samples' indices >= 0.*got {got}$"
    with pytest.raises(ValueError, match=want):
        guide(state)
    state.sample_index = torch.tensor([0, 1, 3])
    assert guide(state).shape == (3, 3)


def test_integer_prompts_get_one_hot_advice_not_float():
    """Class indices as prompts were told 'pass a floating-point tensor, e.g. reference_prompts.float()',
    which leads to one feature per prompt (refused: L2 normalisation keeps only its sign)."""
    import numpy as np

    y = refs(N=4)
    for labels in (torch.tensor([0, 0, 1, 1]), np.array([0, 0, 1, 1]), torch.tensor([[0], [0], [1], [1]])):
        with pytest.raises(TypeError, match=r"^reference_prompts must be prompt.*integers.*torch\.eye\(C\)\[labels\]"):
            MMDGuidance(y, reference_prompts=labels)
    onehot = torch.eye(2)[[0, 0, 1, 1]]
    with pytest.raises(TypeError, match=r"^sample_prompts must be prompt.*got integers.*torch\.eye\(C\)\[labels\]"):
        MMDGuidance(y, reference_prompts=onehot, sample_prompts=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"integers \(dtype torch.int64, shape \(4, 2\)\): reference_prompts\.float\(\)$"):
        MMDGuidance(y, reference_prompts=onehot.long())


def test_gradient_and_remember_prompts_get_the_constructors_advice():
    """gradient(z, prompts) and remember(x0, prompts) given prompt strings or class indices said only
    'prompts must be a torch.Tensor or numpy array' or 'pass a floating-point tensor', where the
    constructor says to encode them (or to give one-hot rows)."""
    y = refs(N=4)
    onehot = torch.eye(2)[[0, 0, 1, 1]]
    guide = MMDGuidance(y, reference_prompts=onehot, generated_set="memory")
    z = torch.randn(2, y.shape[1], generator=torch.Generator().manual_seed(0))
    for call in (lambda p: guide.gradient(z, p), lambda p: guide.remember(z, p)):
        with pytest.raises(TypeError, match=r"^prompts must be prompt features.*got prompt strings.*encoder\.encode"):
            call(["cat", "dog"])
        with pytest.raises(TypeError, match=r"^prompts must be prompt features.*got integers.*torch\.eye\(C\)\[labels\]"):
            call(torch.tensor([0, 1]))
        with pytest.raises(ValueError, match=r"^prompts must be non-zero vectors.*row\(s\) \[1\]"):
            call(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # remember's failed only at the next step

def test_a_prompt_aware_memory_refuses_samples_without_their_prompts():
    """remember(x0) before any guided step stored samples without prompts (the next step failed
    in torch.cat: 'expected Tensor as element 1 ... got NoneType'), and remembering more samples
    than the chunk just guided paired them with too few prompt rows. remember(x0, prompts) seeds
    a prompt-aware memory; the seeded memory then guides as an autograd oracle says."""
    from mmdg_lite.kernels import ProductKernel
    from mmdg_lite.mmd import mmd2_grad_autograd

    f32, kz = torch.float32, GaussianKernel(1.0)
    y, rp = refs(N=6, D=2).to(f32), torch.eye(3, dtype=f32)[[0, 0, 1, 1, 2, 2]]
    guide = MMDGuidance(y, kernel=kz, reference_prompts=rp, sample_prompts=torch.eye(3, dtype=f32),
                        generated_set="memory", prompt_weighting="joint")
    seed = torch.randn(2, 2, generator=torch.Generator().manual_seed(3)).to(f32)
    with pytest.raises(ValueError, match=r"needs prompts of shape \(2, 3\), one row per row of x0; got none"):
        guide.remember(seed)
    with pytest.raises(ValueError, match=r"needs prompts of shape \(2, 3\).*got shape \(1, 3\)"):
        guide.remember(seed, rp[:1])
    with pytest.raises(ValueError, match="no reference_prompts"):
        MMDGuidance(y, generated_set="memory").remember(seed, rp[:2])
    guide.remember(seed, rp[[0, 2]])
    z = torch.randn(1, 2, generator=torch.Generator().manual_seed(4)).to(f32)
    got = guide.gradient(z, rp[:1])
    want = mmd2_grad_autograd(torch.cat([z, seed]), y, ProductKernel(GaussianKernel(0.3), kz),
                              x_prompts=rp[[0, 0, 2]], y_prompts=rp)[:1]
    torch.testing.assert_close(got, want)


def test_rff_summaries_are_built_in_blocks_of_chunk_size(monkeypatch):
    # chunk_size bounds the memory of a guidance step for large reference sets; with rff_features
    # the one-off build of mu and M went through (8192, F) feature blocks whatever chunk_size said
    # (F = 16,384, N_r = 20,000: 1.5 GB extra with chunk_size=512 as without it)
    from mmdg_lite.rff import RFFReferenceEmbedding
    rows = []
    features = RFFReferenceEmbedding.features
    monkeypatch.setattr(RFFReferenceEmbedding, "features", lambda self, x: rows.append(len(x)) or features(self, x))
    y = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = MMDGuidance(y, kernel=GaussianKernel(1.5), rff_features=32, rff_seed=4, chunk_size=7)
    assert max(rows) == 7 and sum(rows) == 50
    phi = math.sqrt(2 / 32) * torch.cos(y @ g.rff.W.T + g.rff.b)  # (N, F), the summaries in one piece
    assert torch.allclose(g.rff.mean, phi.mean(0), rtol=1e-12, atol=1e-14)
    assert torch.allclose(g.rff.weighted_refs, phi.T @ y / 50, rtol=1e-12, atol=1e-14)


def test_bandwidth_update_step_pools_the_noisy_batch_only_once_per_run():
    # bandwidth_update='step' pooled the noisy points at every step although only the first step
    # reads them (the data scale): one wasted all-gather per step with a DistributedBatchSet
    from mmdg_lite.guidance.generated import BatchSet

    class Counting(BatchSet):
        calls = 0

        def pool(self, z):
            Counting.calls += 1
            return super().pool(z)

    y = torch.randn(30, 3, generator=torch.Generator().manual_seed(1))
    guide = MMDGuidance(y, generated_set=Counting(), bandwidth_update="step")
    plain = MMDGuidance(y, bandwidth_update="step")
    for step in range(4):
        st = make_state(step_index=step, seed=step)
        assert torch.equal(guide(st), plain(st))
    assert Counting.calls == 1 + 4  # the data scale once, then the evaluation points at each step


def test_guidance_refuses_a_kernel_subclass_without_gram():
    """A Kernel subclass that defines no gram (e.g. a misspelt method) was accepted and failed at the
    first guided step, after the sampler's first denoiser call, with a bare NotImplementedError."""
    from mmdg_lite.kernels import Kernel

    class Misspelt(Kernel):
        def gramm(self, x, y):
            return torch.exp(-torch.cdist(x, y) ** 2)

    with pytest.raises(TypeError, match="kernel Misspelt defines no gram"):
        MMDGuidance(torch.randn(8, 2), kernel=Misspelt())


@pytest.mark.parametrize("weighting", ["conditional", "joint"])
def test_gradient_of_float32_points_against_float64_references_and_prompts(weighting):
    # MMDGuidance.gradient computed in the references' float64 but read the prompt features in z's
    # float32: the default conditional weighting failed with torch's 'addmv input tensors must have the
    # same dtype'. Now prompts follow the computation's dtype, as in the hook: float32 z and prompts
    # (exact in float64) give the float64 inputs' gradient
    g = torch.Generator().manual_seed(14)
    f32 = torch.float32  # (this module's default dtype is float64)
    y, rp = torch.randn(9, 3, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    z, p = torch.randn(5, 3, generator=g, dtype=f32), torch.randn(5, 4, generator=g, dtype=f32)
    G = MMDGuidance(y, reference_prompts=rp, prompt_weighting=weighting)
    got = G.gradient(z, p)
    assert got.dtype == torch.float64
    assert torch.allclose(got, G.gradient(z.double(), p.double()), rtol=1e-12, atol=0)


def test_a_step_index_outside_the_run_is_refused_not_silently_unguided():
    # a hand loop's step_index past num_steps - 1 (a counter carried over from a previous run) or below 0
    # sat outside the window [start, stop): the step returned x_prev unguided, silently
    state = make_state(num_steps=10)
    assert not torch.equal(MMDGuidance(refs(), stop=1.0)(state), state.x_prev)  # step 5 of 10: guided
    for bad in (10, 15, -1):
        G = MMDGuidance(refs(), stop=1.0, track=True)
        with pytest.raises(ValueError, match=f"step_index must be .*got {bad}"):
            G(SimpleNamespace(**{**vars(state), "step_index": bad}))
        assert G.history == []


def test_step_state_fields_of_the_wrong_shape_or_range_are_named():
    # x0_hat read eps (3, D) for (6, D) points reshaped as (6, D/2) and broadcast, silently; a (B,) t failed
    # in float(state.t) (track) or int(state.t) (x0_hat_backprop) with torch's 'only one element tensors';
    # input_scale_prev 0 raised a bare ZeroDivisionError, -1 flipped the step silently; x_t of another
    # batch and alpha_bar_prev None failed in bare torch / Python errors, NaN disabled the blow-up check
    state = make_state(D=4)
    cases = [("x0_hat", "eps", state.eps[:3], r"state\.eps must be a tensor of x_prev's shape \(6, 4\)"),
             ("x0_hat", "eps", None, r"state\.eps must be .*got NoneType"),
             ("x_t", "x_t", state.x_t[:3], r"state\.x_t must be a tensor of x_prev's shape \(6, 4\).*\(3, 4\)"),
             ("x_t", "t", torch.full((6,), 500), r"state\.t must be .*one-element tensor.*shape \(6,\)"),
             ("x0_hat", "input_scale_prev", 0.0, r"input_scale_prev must be a finite number > 0.*got 0\.0"),
             ("x_prev", "input_scale_prev", -1.0, r"input_scale_prev must be a finite number > 0.*got -1\.0"),
             ("x_t", "alpha_bar_prev", None, r"alpha_bar_prev must be a number in \[0, 1\].*got None"),
             ("x_t", "alpha_bar_prev", float("nan"), r"alpha_bar_prev must be a number in \[0, 1\].*got nan")]
    for eval_point, field, value, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            MMDGuidance(refs(D=4), eval_point=eval_point, track=True)(SimpleNamespace(**{**vars(state), field: value}))
    # one-element tensors (a scheduler's entries) still read as numbers: the same step
    ok = SimpleNamespace(**{**vars(state), "t": torch.tensor(500), "alpha_bar_prev": torch.tensor(state.alpha_bar_prev)})
    assert torch.equal(MMDGuidance(refs(D=4))(ok), MMDGuidance(refs(D=4))(state))


def test_remember_refuses_finished_samples_the_memory_cannot_hold():
    # a hand loop's remember(x0) took samples of another size (a bare torch.cat error at the next remember or
    # step), a list (a bare AttributeError) and NaN (every later step NaN, blamed on the strength)
    G = MMDGuidance(refs(), generated_set="memory")
    for bad, message in ((torch.randn(2, 4), r"remember's x0 have per-sample shape \(4,\).*references have \(3,\)"),
                         ([[0.0, 1.0, 2.0]], r"an \(n, \*S\) tensor with n >= 1; got list"),
                         (torch.tensor([[0.0, float("nan"), 1.0]]), "hold NaN/Inf")):
        with pytest.raises(ValueError, match=message):
            G.remember(bad)
        assert G.memory is None
    G.remember(torch.ones(2, 3))  # finished samples of the references' shape are kept as they are
    assert torch.equal(G.memory, torch.ones(2, 3))


def test_step_state_tensors_on_another_device_than_x_prev_are_named():
    # x_t / eps on another device than x_prev (a CPU copy left in a GPU loop) failed in torch's own device
    # error, naming no field; a meta tensor stands in for the other device
    state = make_state()
    for eval_point, field in (("x0_hat", "x_t"), ("x0_hat", "eps"), ("x_prev", "x_t")):
        moved = SimpleNamespace(**{**vars(state), field: getattr(state, field).to("meta")})
        with pytest.raises(ValueError, match=rf"state\.{field} is on meta but x_prev on cpu"):
            MMDGuidance(refs(), eval_point=eval_point)(moved)


def test_an_x_prev_that_is_not_a_tensor_is_named():
    # a numpy x_prev (numpy 2 arrays have .device 'cpu') was refused as 'state.x_t is on cpu but x_prev on cpu',
    # a list failed in a bare AttributeError on .shape
    state = make_state()
    for value in (state.x_prev.numpy(), state.x_prev.tolist()):
        with pytest.raises(TypeError, match=rf"state\.x_prev must be a torch\.Tensor .*got {type(value).__name__}"):
            MMDGuidance(refs())(SimpleNamespace(**{**vars(state), "x_prev": value}))


@pytest.mark.parametrize("bad", [-1, True, 1.5])
def test_bad_rff_seed_is_named_rff_seed(bad):
    # check_seed named every bad seed 'seed', so MMDGuidance(rff_seed=-1) answered 'seed must be an
    # integer ... got -1', an argument the caller never passed
    with pytest.raises(ValueError, match=r"^rff_seed must be an integer in \[0, 2\*\*63\); got"):
        MMDGuidance(torch.randn(8, 2), rff_seed=bad)


def test_reference_code_names_alpha_and_refuses_strength():
    # reference_code(y, alpha=0.05, strength=0.01) ran at 0.01 with alpha silently ignored, and a bad alpha
    # was named 'strength', an argument the caller had not given
    y = torch.randn(8, 2)
    assert MMDGuidance.reference_code(y, alpha=0.05).strength == 0.05
    with pytest.raises(TypeError, match=r"takes the step as alpha=.*got strength=0.01 and alpha=0.05"):
        MMDGuidance.reference_code(y, alpha=0.05, strength=0.01)
    with pytest.raises(TypeError, match=r"^alpha must be a number in \[0, 1\).*got bool True"):
        MMDGuidance.reference_code(y, alpha=True)
    with pytest.raises(ValueError, match=r"^alpha must be a finite number in \[0, 1\).*got 2.0"):
        MMDGuidance.reference_code(y, alpha=2.0)
