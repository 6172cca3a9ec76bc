"""MMDGuidance through the sampler: zero strength is a no-op, seeding, memory mode, errors, and
a real alignment improvement on a small instance of the 100-D task."""
from __future__ import annotations

import pytest
import torch

from mmdg_lite.denoisers import MLPDenoiser
from mmdg_lite.toys.tasks import evaluate, make_task, task_guidance
from mmdg_lite.guidance import ChainedGuidance
from mmdg_lite.guidance import MMDGuidance
from mmdg_lite.kernels import GaussianKernel
from mmdg_lite.mmd import mmd2_grad
from mmdg_lite.sampling import make_scheduler, sample
from mmdg_lite.seeding import make_generator


@pytest.fixture(autouse=True)
def _float32_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MLPDenoiser(2, hidden=32, layers=2).eval()


@pytest.fixture(scope="module")
def refs():
    return torch.randn(40, 2, generator=make_generator(5)) * 0.3 + torch.tensor([1.5, 0.0])


class IdentityHook:
    """Returns the scheduler's proposal unchanged; sequential like the memory mode."""

    def __init__(self, sequential: bool) -> None:
        self.sequential = sequential
        self.remembered = 0

    def reset(self) -> None:
        self.remembered = 0

    def remember(self, x0: torch.Tensor) -> None:
        self.remembered += len(x0)

    def __call__(self, state):
        return state.x_prev


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
def test_zero_strength_batch_equals_unguided_bit_for_bit(model, refs, scheduler):
    plain = sample(model, 24, 2, num_steps=20, seed=3, scheduler=scheduler).samples
    guided = sample(model, 24, 2, num_steps=20, seed=3, scheduler=scheduler,
                    guidance=MMDGuidance(refs, strength=0)).samples
    assert torch.equal(plain, guided)


def test_zero_strength_memory_equals_sequential_identity_run(model, refs):
    guide = MMDGuidance(refs, strength=0, generated_set="memory")
    assert guide.sequential
    guided = sample(model, 6, 2, num_steps=15, seed=4, guidance=guide).samples
    ident = IdentityHook(sequential=True)
    plain = sample(model, 6, 2, num_steps=15, seed=4, guidance=ident).samples
    assert ident.remembered == 6
    assert torch.equal(guided, plain)


@pytest.mark.parametrize("kw", [dict(), dict(generated_set="memory"), dict(eval_point="x0_hat")])
def test_same_seed_same_guided_samples(model, refs, kw):
    runs = [sample(model, 8, 2, num_steps=10, seed=11,
                   guidance=MMDGuidance(refs, strength=0.5, **kw)).samples for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = sample(model, 8, 2, num_steps=10, seed=12, guidance=MMDGuidance(refs, strength=0.5, **kw)).samples
    assert not torch.equal(runs[0], other)


def test_guidance_changes_samples(model, refs):
    plain = sample(model, 8, 2, num_steps=10, seed=1).samples
    guided = sample(model, 8, 2, num_steps=10, seed=1, guidance=MMDGuidance(refs, strength=0.5)).samples
    assert not torch.allclose(plain, guided)


def test_memory_mode_reproduces_hand_written_sequential_loop(model, refs):
    """Reference code's mode, written out: sample i runs alone; its gradient at every step is
    row 0 of Eq. 6 for the generated set {x_t^(i)} + finished samples 0..i-1 (<= memory_size);
    sample 0 is unguided; step = c (1 + M) sigma^2 grad with sigma fixed here."""
    n, steps, c, sigma, mem_size = 5, 12, 0.4, 0.8, 3
    kernel = GaussianKernel(sigma)
    guide = MMDGuidance(refs, kernel=kernel, strength=c, generated_set="memory", memory_size=mem_size,
                        normalization="none", stop=1.0)
    got = sample(model, n, 2, num_steps=steps, seed=7, guidance=guide).samples

    sched = make_scheduler("ddpm")
    sched.set_timesteps(steps)
    gen = make_generator(7)
    x_T = torch.randn(n, 2, generator=gen)
    finished: list[torch.Tensor] = []
    for i in range(n):
        x = x_T[i:i + 1]
        memory = torch.cat(finished[-mem_size:]) if finished else None
        for t in sched.timesteps:
            with torch.no_grad():
                eps = model(x, torch.full((1,), int(t), dtype=torch.long))
                x_prev = sched.step(eps, t, x, generator=gen).prev_sample
            if memory is not None:
                gen_set = torch.cat([x, memory])  # (1 + M, 2)
                g = mmd2_grad(gen_set, refs, kernel)[0:1]
                x_prev = x_prev - c * len(gen_set) * sigma**2 * g
            x = x_prev
        finished.append(x)
    expected = torch.cat(finished)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    ident = sample(model, n, 2, num_steps=steps, seed=7, guidance=IdentityHook(sequential=True)).samples
    assert torch.equal(got[0], ident[0])  # the first sample is unguided
    assert not torch.allclose(got[1:], ident[1:])  # the others are guided


def test_reference_dimension_mismatch_raises_clear_error(model):
    guide = MMDGuidance(torch.randn(10, 3), strength=0.5)
    with pytest.raises(ValueError, match=r"samples have per-sample shape \(2,\).*references have \(3,\)"):
        sample(model, 4, 2, num_steps=5, guidance=guide)


def test_chained_guidance_sums_x_t_corrections(model, refs):
    a = MMDGuidance(refs, kernel=GaussianKernel(0.5), strength=0.3)
    b = MMDGuidance(refs, kernel=GaussianKernel(2.0), strength=0.2)
    chained = sample(model, 6, 2, scheduler="dpm", num_steps=1, seed=2, guidance=ChainedGuidance(a, b)).samples
    st = {}

    def capture(state):
        st["s"] = state
        return state.x_prev

    sample(model, 6, 2, scheduler="dpm", num_steps=1, seed=2, guidance=capture)
    s = st["s"]  # both hooks see x_t, so their corrections add
    expected = s.x_prev - (s.x_prev - a(s)) - (s.x_prev - b(s))
    torch.testing.assert_close(chained, expected)
    with pytest.raises(ValueError, match="memory"):
        ChainedGuidance(a, MMDGuidance(refs, generated_set="memory"))


def test_guidance_improves_mode_tv_on_small_100d_task():
    """A real property on the paper's 100-D task (exact mixture denoiser): guidance toward the
    user's 4 modes brings the generated mode proportions much closer to the target."""
    torch.set_num_threads(1)
    task = make_task("gmm100d_4modes", seed=0, n_heldout=200)
    plain = sample(task.denoiser, 200, task.dim, num_steps=50, seed=0).samples
    guided = sample(task.denoiser, 200, task.dim, num_steps=50, seed=0,
                    guidance=task_guidance(task)).samples
    before, after = evaluate(plain, task, full=False), evaluate(guided, task, full=False)
    assert before["tv"] > 0.35  # 4 of 8 equal modes: an unguided sampler is ~0.5 TV away
    assert after["tv"] < 0.5 * before["tv"]
    assert after["off_mode"] <= 0.05  # samples stay on the modes


def test_evaluate_names_samples():
    task = make_task("ring2d_4modes", seed=0, n_references=10, n_heldout=10)
    with pytest.raises(ValueError, match=r"samples must have shape \(n, 2\).*got shape \(20,\)"):
        evaluate(torch.randn(20), task)
    with pytest.raises(ValueError, match=r"samples must have shape \(n, 2\).*got shape \(20, 3\)"):
        evaluate(torch.randn(20, 3), task)
    with pytest.raises(TypeError, match="samples must be a torch.Tensor or numpy array; got list"):
        evaluate([[0.0, 1.0]], task)


def test_evaluate_and_task_helpers_name_their_arguments():
    # an outside probe: these reached raw AttributeErrors, or blamed "subset_size", which the
    # caller never passed, or ran silently with full="no"
    from mmdg_lite.baselines import classifier_accuracy
    from mmdg_lite.toys import circle_mixture, dirichlet_mixture, subset_mixture

    task = make_task("ring2d_4modes", seed=0, n_references=10, n_heldout=10)
    with pytest.raises(ValueError, match=r"n >= 2 \(full=True computes FD and KD"):
        evaluate(task.heldout[:1], task)
    assert set(evaluate(task.heldout[:1], task, full=False)) == {"tv", "off_mode"}
    with pytest.raises(ValueError, match="kid_subset must be an integer >= 2; got 1"):
        evaluate(task.heldout, task, kid_subset=1)
    with pytest.raises(TypeError, match="full must be True or False; got 'no'"):
        evaluate(task.heldout, task, full="no")
    with pytest.raises(TypeError, match="task must be a SyntheticTask.*got str 'ring2d_4modes'"):
        evaluate(task.heldout, "ring2d_4modes")
    with pytest.raises(TypeError, match="task must be a SyntheticTask or one of .*got int 42"):
        task_guidance(42)
    for build in (lambda: subset_mixture("x", [0]), lambda: dirichlet_mixture("x", 2)):
        with pytest.raises(TypeError, match="mixture must be a GaussianMixture.*got str 'x'"):
            build()
    assert subset_mixture(circle_mixture(), [0]).weights[0] == 1.0  # the check lets a mixture through
    with pytest.raises(TypeError, match="classifier must be a NoisyClassifier.*got str 'x'"):
        classifier_accuracy("x", task.references, task.references, 5)


# ---------------------------------------------------------------- found by an outside probe

def _mixture_model():
    from mmdg_lite.denoisers import GaussianMixtureDenoiser
    from mmdg_lite.toys import circle_mixture

    ring = circle_mixture()
    return GaussianMixtureDenoiser(ring.means, ring.weights, ring.std, make_scheduler("ddpm")), ring.means[:2].repeat(20, 1)


def test_sample_refuses_schedulers_that_undo_the_correction():
    # UniPC's corrector and KDPM2 / Heun's stored state dropped or reversed the step: KDPM2 moved
    # samples AWAY from the references (2 % on their modes against 48 % unguided), silently
    from diffusers import HeunDiscreteScheduler, KDPM2DiscreteScheduler, UniPCMultistepScheduler

    den, refs = _mixture_model()
    for sched, match in ((UniPCMultistepScheduler(), "corrector"), (KDPM2DiscreteScheduler(), "second stage rebuilds"),
                         (HeunDiscreteScheduler(), "repeats timesteps")):
        with pytest.raises(ValueError, match=f"MMD guidance cannot run through {type(sched).__name__}: .*{match}"):
            sample(den, 4, 2, scheduler=sched, num_steps=5, guidance=MMDGuidance(refs))
    heun = HeunDiscreteScheduler(beta_start=1e-4, beta_end=0.02)  # the betas the model was built with
    assert sample(den, 4, 2, scheduler=heun, num_steps=5).samples.shape == (4, 2)  # unguided: fine
    with pytest.raises(ValueError, match=r"timesteps repeat at num_steps=1000 .* use fewer steps"):
        sample(den, 2, 2, scheduler="dpm", num_steps=1000)  # t = 500 twice: a step of size 0, then NaN


def test_sample_refuses_eta_for_schedulers_without_it_and_blames_the_model_for_its_nan():
    den, refs = _mixture_model()
    with pytest.raises(ValueError, match="eta=0.5 is DDIM's noise level, but DDPMScheduler.step takes no eta"):
        sample(den, 2, 2, scheduler="ddpm", num_steps=5, eta=0.5)  # gave the eta-0 samples

    def broken(x, t, cond=None):
        out = den(x, t, cond)
        return out * float("nan") if int(t.flatten()[0]) < 500 else out
    for g in (MMDGuidance(refs), MMDGuidance(refs, eval_point="x0_hat")):  # blamed the guidance before
        with pytest.raises(FloatingPointError, match="in the denoiser's noise prediction"):
            sample(broken, 4, 2, scheduler="ddim", num_steps=10, guidance=g)


@pytest.mark.parametrize("point", ["x_t", "x0_hat"])
def test_euler_steps_match_the_ddpm_normalised_step(point):
    # sigma-scaled latents: the step was converted with c_in (step t) but lands on x_{t-1}, whose
    # unit is 1 / c_in': 2.9x too large at the first of 10 Euler steps, past any clip
    from types import SimpleNamespace

    den, refs = _mixture_model()
    g = torch.Generator().manual_seed(0)
    c_in, c_prev, ab = 0.07, 0.2, 0.005  # first Euler steps: sigma 14.6 -> 4.9
    x_t, eps = torch.randn(8, 2, generator=g) / c_in, torch.randn(8, 2, generator=g)
    x_prev = x_t * 0.3

    def state(xt, xp, ci, cp):
        return SimpleNamespace(x_t=xt, x_prev=xp, eps=eps, t=980, step_index=0, num_steps=10, alpha_bar_t=ab,
                               alpha_bar_prev=0.04, denoiser=den, cond=None, sample_index=torch.arange(8),
                               input_scale=ci, input_scale_prev=cp)
    euler = state(x_t, x_prev, c_in, c_prev)
    normalised = state(c_in * x_t, c_prev * x_prev, 1.0, 1.0)  # the same state in DDPM units
    for kw in ({}, {"normalization": "none", "strength": 0.3}):
        step_e = x_prev - MMDGuidance(refs, eval_point=point, **kw)(euler)
        step_n = normalised.x_prev - MMDGuidance(refs, eval_point=point, **kw)(normalised)
        assert float(step_n.norm()) > 0
        torch.testing.assert_close(c_prev * step_e, step_n, rtol=1e-4, atol=1e-6)


def test_gradient_follows_rff_and_bfloat16_history_records_the_applied_step():
    from mmdg_lite.rff import mmd2_grad_rff

    g = torch.Generator().manual_seed(0)
    refs, z = torch.randn(300, 10, generator=g), torch.randn(16, 10, generator=g)
    guide = MMDGuidance(refs, kernel=GaussianKernel(3.0), rff_features=64)
    torch.testing.assert_close(guide.gradient(z), mmd2_grad_rff(z, guide.rff))  # was the exact gradient
    assert float((guide.gradient(z) - mmd2_grad(z, refs, GaussianKernel(3.0))).norm()) > 0
    with pytest.raises(ValueError, match="and reference_prompts"):
        MMDGuidance(refs, kernel=GaussianKernel(1.0), rff_features=64, reference_prompts=torch.randn(300, 3))
    den, refs2 = _mixture_model()
    hook = MMDGuidance(refs2, eval_point="x0_hat", track=True)
    seen = []

    class Spy:
        def __call__(self, state):
            out = hook(state)
            seen.append(float((state.x_prev.float() - out.float()).norm(dim=1).mean()))
            return out
    sample(den, 4, 2, num_steps=10, dtype=torch.bfloat16, guidance=Spy())
    recorded = [h["step_norm"] for h in hook.history]
    assert recorded == pytest.approx(seen[:len(recorded)], rel=1e-2, abs=1e-6)


def test_x0_hat_backprop_under_inference_mode_says_why(model):
    """Under torch.inference_mode() autograd records nothing (enable_grad does not undo it): the
    backprop eval point failed with torch's 'element 0 of tensors does not require grad'."""
    refs = torch.randn(20, 2, generator=make_generator(0))
    guide = MMDGuidance(refs, eval_point="x0_hat_backprop")
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"eval_point='x0_hat_backprop'.*inference_mode"):
        sample(model, 4, 2, num_steps=3, guidance=guide)
    with torch.no_grad():  # no_grad alone is fine: the hook turns grad on
        sample(model, 4, 2, num_steps=3, guidance=guide)


def test_task_guidance_refuses_references_of_another_dimension():
    """References with 3 features for the 2-D ring task built a hook without complaint; the
    mismatch surfaced only at the first guided step of a run."""
    task = make_task("ring2d_4modes", n_references=20, n_heldout=10)
    for t in (task, "ring2d_4modes"):
        with pytest.raises(ValueError, match=r"references must be points of task 'ring2d_4modes', 2 features "
                                             r"each; got shape \(5, 3\)"):
            task_guidance(t, references=torch.randn(5, 3))


def _duck_state(B=6, D=2, seed=0):
    from types import SimpleNamespace
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, D, generator=g)
    return SimpleNamespace(x_t=x_t, x_prev=0.9 * x_t, eps=torch.randn(B, D, generator=g), t=500, step_index=1,
                           num_steps=10, alpha_bar_t=0.5, alpha_bar_prev=0.55, denoiser=None, cond=None,
                           sample_index=torch.arange(B))


def test_chained_guidance_accepts_the_duck_typed_states_its_hooks_accept(refs):
    # MMDGuidance takes any object with StepState's fields; the chain crashed in dataclasses.replace
    state = _duck_state()
    guide = MMDGuidance(refs, strength=0.5)
    chained = ChainedGuidance(guide, lambda s: s.x_prev + 1.0)(state)
    guide.reset()
    assert torch.allclose(chained, guide(state) + 1.0)
    assert torch.equal(state.x_prev, 0.9 * state.x_t)  # the caller's state is not modified


def test_chained_guidance_names_a_member_that_returns_no_tensor(refs):
    chain = ChainedGuidance(lambda s: None, MMDGuidance(refs))
    with pytest.raises(ValueError, match=r"hook 0 \(function\) returned NoneType.*shape \(6, 2\)"):
        chain(_duck_state())


def test_an_unbiased_member_of_a_chain_is_checked_before_any_step(model, refs):
    # sample() checked guidance.estimator only on the hook itself: a chained unbiased MMDGuidance ran
    # two chunks of denoiser calls before failing on the last chunk of one sample
    calls = []

    def counting(x, t, cond):
        calls.append(1)
        return model(x, t, cond)
    chain = ChainedGuidance(MMDGuidance(refs, estimator="unbiased"), lambda s: s.x_prev)
    with pytest.raises(ValueError, match="n=5 with batch_size=2 leaves a last batch of 1"):
        sample(counting, 5, 2, num_steps=4, batch_size=2, guidance=chain)
    assert calls == []


def test_sample_refuses_a_clipping_scheduler_whose_range_the_references_leave():
    # DDPMScheduler() clips its x_0 prediction to [-1, 1] by default: guided toward references on the
    # radius-2 ring, every sample stayed inside the box (mode rate 0 with and without guidance), silently
    from diffusers import DDPMScheduler

    den, refs = _mixture_model()  # references at radius 2
    clipping = DDPMScheduler(num_train_timesteps=1000)
    out = sample(den, 8, 2, scheduler=clipping, num_steps=5).samples  # unguided: allowed, and pinned inside
    assert float(out.abs().max()) <= 1.0 + 1e-6 < float(refs.abs().max())
    with pytest.raises(ValueError, match=r"clips its x_0 prediction to \[-1, 1\] .*references reach \|x\| = 2, .*"
                                         r"clip_sample=False"):
        sample(den, 8, 2, scheduler=clipping, num_steps=5, guidance=MMDGuidance(refs))
    inside = DDPMScheduler(num_train_timesteps=1000, clip_sample_range=3.0)  # a range that holds them: runs
    assert sample(den, 8, 2, scheduler=inside, num_steps=5, guidance=MMDGuidance(refs)).samples.shape == (8, 2)
