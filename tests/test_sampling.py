"""The sampling loop: agreement with diffusers step by step, seeding, hooks, errors."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from mmdg_lite.toys.mixtures import circle_mixture, dirichlet_mixture
from mmdg_lite.metrics import mode_assignment as assign_modes
from mmdg_lite.metrics import mode_proportions, off_mode_fraction
from mmdg_lite.denoisers import ExactDenoiser, GaussianMixtureDenoiser, MLPDenoiser
from mmdg_lite.sampling import StepState, make_scheduler, sample
from mmdg_lite.seeding import make_generator


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MLPDenoiser(2, hidden=32, layers=2).float().eval()


def _hand_loop(model, scheduler, n, num_steps, seed, **step_kwargs):
    """A plain diffusers loop written independently of mmdg_lite.sampling."""
    scheduler.set_timesteps(num_steps)
    gen = make_generator(seed)
    x = torch.randn((n, 2), generator=gen)
    traj = [x]
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(x, torch.full((n,), int(t), dtype=torch.long))
            x = scheduler.step(eps, t, x, generator=gen, **step_kwargs).prev_sample
            traj.append(x)
    return traj


@pytest.mark.parametrize("name, beta, eta", [("ddpm", "linear", 0.0), ("ddpm", "squaredcos_cap_v2", 0.0),
                                             ("ddim", "linear", 0.0), ("ddim", "linear", 0.7)])
def test_matches_diffusers_step_by_step(model, name, beta, eta):
    if name == "ddpm":
        ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta, variance_type="fixed_small", clip_sample=False)
        expected = _hand_loop(model, ref, 16, 25, seed=3)
    else:
        ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=beta, clip_sample=False, set_alpha_to_one=True)
        expected = _hand_loop(model, ref, 16, 25, seed=3, eta=eta)
    res = sample(model, 16, (2,), scheduler=name, num_steps=25, seed=3, beta_schedule=beta, eta=eta,
                 return_trajectory=True)
    assert len(res.trajectory) == 26 and torch.equal(res.timesteps, ref.timesteps)
    for k, (a, b) in enumerate(zip(res.trajectory, expected)):
        assert torch.equal(a, b), f"step {k} differs"
    assert torch.equal(res.samples, res.trajectory[-1])


def test_dpm_solver_matches_diffusers_step_by_step(model):
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2)
    expected = _hand_loop(model, ref, 16, 20, seed=3)
    res = sample(model, 16, (2,), scheduler="dpm", num_steps=20, seed=3, return_trajectory=True)
    assert torch.equal(res.timesteps, ref.timesteps)
    for k, (a, b) in enumerate(zip(res.trajectory, expected)):
        assert torch.equal(a, b), f"step {k} differs"


def test_dpm_solver_is_more_accurate_than_ddim_in_few_steps():
    """Second order: at 10 steps fewer samples fall between the modes than with DDIM; at 25 the
    modes and their weights are hit as DDIM hits them in 50 (exact mixture denoiser)."""
    mix = dirichlet_mixture(circle_mixture(), n_active=3, alpha=(1.0, 1.0, 1.0), seed=2)
    den = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler("ddpm"))
    off = {name: off_mode_fraction(sample(den, 3000, (2,), scheduler=name, num_steps=10, seed=0).samples,
                                   mix.means, mix.std) for name in ("ddim", "dpm")}
    assert off["dpm"] < 0.75 * off["ddim"]
    x = sample(den, 3000, (2,), scheduler="dpm", num_steps=25, seed=0).samples
    assert off_mode_fraction(x, mix.means, mix.std) < 0.01
    assert 0.5 * float((mode_proportions(x, mix.means) - mix.weights.double()).abs().sum()) < 0.04


def test_scheduler_instance_is_copied(model):
    ref = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    res = sample(model, 4, (2,), scheduler=ref, num_steps=10)
    assert ref.num_inference_steps is None  # caller's scheduler untouched
    assert torch.equal(res.samples, sample(model, 4, (2,), scheduler="ddim", num_steps=10).samples)


def test_seeding(model):
    a = sample(model, 8, (2,), num_steps=20, seed=1).samples
    b = sample(model, 8, (2,), num_steps=20, seed=1).samples
    c = sample(model, 8, (2,), num_steps=20, seed=2).samples
    d = sample(model, 8, (2,), num_steps=20, generator=make_generator(1)).samples
    assert torch.equal(a, b) and torch.equal(a, d) and not torch.equal(a, c)


def test_seed_everything_gives_seeds_2_to_the_32_apart_their_own_numpy_stream():
    # numpy's global RNG took seed % 2**32, so seed_everything(2**32) replayed seed 0's numpy draws
    # (while torch's differed); seeds below 2**32 keep numpy's own stream for them (the oracle)
    import random

    import numpy as np

    from mmdg_lite.seeding import seed_everything
    state = np.random.get_state(), random.getstate(), torch.random.get_rng_state()
    try:
        draws = {}
        for seed in (0, 1, 2**32, 2**32 + 1, 2**33, 2**62 + 5):
            seed_everything(seed)
            draws[seed] = tuple(np.random.rand(3))
        assert len(set(draws.values())) == len(draws)
        for seed in (0, 1):
            np.random.seed(seed)
            assert draws[seed] == tuple(np.random.rand(3))
        seed_everything(2**32)
        assert tuple(np.random.rand(3)) == draws[2**32]  # the same seed, the same numbers
    finally:
        np.random.set_state(state[0])
        random.setstate(state[1])
        torch.random.set_rng_state(state[2])


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm"])
def test_chunking_does_not_change_per_sample_seeded_samples(model, name):
    # DPM-Solver is multistep (a step index and past model outputs live in the scheduler): a
    # second chunk must start from a fresh state, not run off the end of the first one's
    whole = sample(model, 6, (2,), scheduler=name, num_steps=10, seed=5, per_sample_seed=True).samples
    for batch_size in (1, 4):
        chunked = sample(model, 6, (2,), scheduler=name, num_steps=10, seed=5, per_sample_seed=True,
                         batch_size=batch_size).samples
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


class Recorder:
    """Identity hook that records what it sees."""

    def __init__(self, sequential=False):
        self.sequential, self.states, self.remembered, self.resets = sequential, [], [], 0

    def reset(self):
        self.resets += 1

    def remember(self, x0):
        self.remembered.append(x0.clone())

    def __call__(self, state: StepState):
        self.states.append(state)
        return state.x_prev


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm"])
def test_identity_hook_is_bit_exact(model, name):
    eta = 0.3 if name == "ddim" else 0.0  # only DDIM takes eta (the others now refuse one)
    plain = sample(model, 12, (2,), scheduler=name, num_steps=15, seed=4, eta=eta)
    hook = Recorder()
    hooked = sample(model, 12, (2,), scheduler=name, num_steps=15, seed=4, eta=eta, guidance=hook)
    assert torch.equal(plain.samples, hooked.samples)
    assert hook.resets == 1 and hook.remembered == []  # reset once before the run
    sched = make_scheduler(name)
    sched.set_timesteps(15)
    for i, s in enumerate(hook.states):
        assert s.step_index == i and s.num_steps == 15 and s.t == int(sched.timesteps[i])
        assert s.alpha_bar_t == float(sched.alphas_cumprod[s.t])
        nxt = float(sched.alphas_cumprod[int(sched.timesteps[i + 1])]) if i < 14 else 1.0
        assert s.alpha_bar_prev == nxt
        assert s.x_t.shape == s.x_prev.shape == s.eps.shape == (12, 2)
        assert torch.equal(s.sample_index, torch.arange(12)) and s.denoiser is model and s.cond is None


def test_sequential_mode_chunks_and_memory(model):
    hook = Recorder(sequential=True)
    res = sample(model, 5, (2,), num_steps=6, seed=0, guidance=hook)
    assert hook.resets == 1 and len(hook.remembered) == 5
    assert all(r.shape == (1, 2) for r in hook.remembered)
    assert torch.equal(torch.cat(hook.remembered), res.samples)
    assert [int(s.sample_index) for s in hook.states[::6]] == [0, 1, 2, 3, 4]
    plain = sample(model, 5, (2,), num_steps=6, seed=0, batch_size=1)  # same chunking, no hook
    assert torch.equal(plain.samples, res.samples)
    hook2 = Recorder(sequential=True)
    sample(model, 5, (2,), num_steps=6, seed=0, guidance=hook2, batch_size=2, return_trajectory=True)
    assert [r.shape[0] for r in hook2.remembered] == [2, 2, 1]


def test_chunked_trajectory_and_cond():
    torch.manual_seed(0)
    cmodel = MLPDenoiser(2, hidden=16, layers=1, cond_dim=3)
    cond = torch.randn(7, 3)
    hook = Recorder()
    res = sample(cmodel, 7, (2,), num_steps=5, cond=cond, batch_size=3, return_trajectory=True, guidance=hook)
    assert len(res.trajectory) == 6 and all(x.shape == (7, 2) for x in res.trajectory)
    assert torch.equal(hook.states[5].cond, cond[3:6])
    assert torch.equal(hook.states[10].sample_index, torch.tensor([6]))


def test_non_finite_is_reported_with_step(model):
    def bad(state):
        return state.x_prev * (float("nan") if state.step_index == 3 else 1.0)

    with pytest.raises(FloatingPointError, match=r"step 3 \(t=\d+\) in the guidance hook"):
        sample(model, 4, (2,), num_steps=10, guidance=bad)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(scheduler="euler"), ValueError, "scheduler must be one of"),
    (dict(scheduler=object()), TypeError, "scheduler must be"),
    (dict(num_steps=0), ValueError, "num_steps must be an integer >= 1"),
    (dict(num_steps=2000), ValueError, "num_train_timesteps"),
    (dict(n=0), ValueError, "n must be an integer >= 1"),
    (dict(shape=(0,)), ValueError, "shape must be"),
    (dict(cond=torch.zeros(3, 1)), ValueError, r"cond must be .* shape \(4, C\)"),
    (dict(beta_schedule="cosine"), ValueError, "beta_schedule must be one of"),
    (dict(eta=-1.0), ValueError, "eta"),
    (dict(guidance=lambda s: s.x_prev[:1]), ValueError, "guidance hook returned"),
    (dict(batch_size=0), ValueError, "batch_size"),
])

def test_bad_arguments(model, kwargs, err, match):
    args = dict(n=4, shape=(2,), num_steps=5)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        sample(model, args.pop("n"), args.pop("shape"), **args)


def test_exact_mixture_denoiser_hits_modes_and_proportions():
    mix = dirichlet_mixture(circle_mixture(), n_active=3, alpha=(1.0, 1.0, 1.0), seed=2)
    den = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler("ddpm"))
    x = sample(den, 3000, (2,), num_steps=100, seed=0).samples
    assert off_mode_fraction(x, mix.means, mix.std) < 0.01
    tv = 0.5 * float((mode_proportions(x, mix.means) - mix.weights.double()).abs().sum())
    assert tv < 0.04


def test_exact_finite_set_denoiser_reproduces_the_data():
    data = circle_mixture(16, radius=2.0).means  # 16 points 0.78 apart
    den = ExactDenoiser(data, make_scheduler("ddim"))
    x = sample(den, 200, (2,), scheduler="ddim", num_steps=50, seed=0).samples
    nearest = torch.cdist(x, data).min(dim=1).values
    assert float(nearest.max()) < 1e-3
    assert len(set(assign_modes(x, data).tolist())) >= 12  # many distinct points, not collapse


@pytest.mark.parametrize("kwargs,error,match", [
    ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch.dtype"),
    ({"dtype": "float32"}, TypeError, "dtype must be a floating torch.dtype"),
    ({"dtype": torch.float64}, ValueError, r"dtype=torch.float64 but the denoiser's parameters are torch.float32"),
    ({"device": "cpux"}, ValueError, "device must be a torch device"),
    ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
    ({"seed": 2**70}, ValueError, r"seed must be an integer in \[0, 2\*\*63\)"),
    ({"seed": -1}, ValueError, "seed must be an integer"),
    ({"return_trajectory": "yes"}, TypeError, "return_trajectory must be True or False"),
    ({"progress": 1}, TypeError, "progress must be True or False"),
])
def test_bad_sampling_options_name_the_argument(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        sample(model, 4, 2, num_steps=3, **kwargs)


@pytest.mark.parametrize("shape", [True, (2, False), (), (0,), "2", 2.0])
def test_bad_shapes_are_refused(model, shape):
    with pytest.raises(ValueError, match="shape must be a positive int or a tuple of positive ints"):
        sample(model, 4, shape, num_steps=3)


def test_numpy_integer_shapes_and_a_matching_dtype_work(model):
    import numpy as np
    a = sample(model, 4, np.int64(2), num_steps=3, seed=0).samples
    assert torch.equal(a, sample(model, 4, (2,), num_steps=3, seed=0).samples)
    m64 = MLPDenoiser(2, hidden=8, layers=1).double().eval()
    assert sample(m64, 4, 2, num_steps=3, dtype=torch.float64).samples.dtype == torch.float64


def test_memory_mode_in_one_chunk_is_refused_not_silently_unguided():
    from mmdg_lite.guidance import MMDGuidance

    ring = circle_mixture()
    den = GaussianMixtureDenoiser(ring.means, ring.weights, ring.std, make_scheduler("ddpm"))
    refs = ring.means[:4].repeat(5, 1)  # (20, 2) on modes 0-3
    g = MMDGuidance(refs, strength=1.0, generated_set="memory", track=True)
    with pytest.raises(ValueError, match="batch_size=8 with n=8 is one chunk, so nothing would be guided"):
        sample(den, 8, 2, guidance=g, num_steps=10, seed=1, batch_size=8)  # returned the unguided run
    a = sample(den, 8, 2, guidance=g, num_steps=10, seed=1, batch_size=4).samples
    assert not torch.equal(a, sample(den, 8, 2, num_steps=10, seed=1, batch_size=4).samples)
    zero = MMDGuidance(refs, strength=0.0, generated_set="memory")  # strength 0 guides nothing on purpose
    assert sample(den, 8, 2, guidance=zero, num_steps=10, seed=1, batch_size=8).samples.shape == (8, 2)


def test_float64_run_starts_from_the_float32_noise(model):
    """x_T was drawn with dtype=float64, which torch fills with other numbers than float32 (from
    16 values on): the same seed in float64 gave other samples (max difference 3.5), not the
    float32 ones more precisely. A deterministic scheduler now agrees up to float32 rounding,
    as per_sample_seed (which drew in float32 and cast) already did."""
    import copy

    m64 = copy.deepcopy(model).double()
    for name in ("ddim", "dpm"):
        for per_sample in (False, True):
            a = sample(model, 16, (2,), scheduler=name, num_steps=5, seed=3, per_sample_seed=per_sample).samples
            b = sample(m64, 16, (2,), scheduler=name, num_steps=5, seed=3, per_sample_seed=per_sample,
                       dtype=torch.float64).samples
            assert b.dtype == torch.float64
            torch.testing.assert_close(b.float(), a, rtol=1e-4, atol=1e-5)


def test_the_meta_device_is_refused_by_name(model):
    """device='meta' passed the device check and failed in torch.Generator ('META device type not
    an accelerator'), naming no argument."""
    with pytest.raises(ValueError, match=r"device 'meta' holds shapes without values and cannot sample"):
        sample(model, 4, 2, num_steps=3, device="meta")


def test_prompt_aware_guidance_without_a_prompt_for_every_sample_is_refused_before_any_step():
    """The hook found out at its first guided step: with start=0.5 and batch_size=4, 31 denoiser
    calls ran before 'sample_prompts has 6 rows', and a missing or mis-sized cond was refused
    only there (or by the model). Now sample() refuses before the denoiser runs; a shard whose
    global indices fit the prompts (first_index) and a matching cond still run."""
    from mmdg_lite.guidance import ChainedGuidance, MMDGuidance
    from mmdg_lite.prompts import CoverageGate

    calls = []
    den = lambda x, t, c=None: (calls.append(1), torch.zeros_like(x))[1]  # noqa: E731
    refs, rp = torch.randn(6, 2, generator=make_generator(0)), torch.eye(3)[[0, 0, 1, 1, 2, 2]]
    short = MMDGuidance(refs, reference_prompts=rp, sample_prompts=torch.eye(3)[[0, 1, 2, 0, 1, 2]], start=0.5)
    with pytest.raises(ValueError, match=r"sample_prompts has 6 rows but the sampler draws n=12 samples"):
        sample(den, 12, 2, num_steps=20, guidance=short, batch_size=4)
    with pytest.raises(ValueError, match=r"sample_prompts has 6 rows.*n=4 samples from index first_index=3"):
        sample(den, 4, 2, num_steps=20, guidance=ChainedGuidance(short), first_index=3)
    by_cond = MMDGuidance(refs, reference_prompts=rp, start=0.5)
    with pytest.raises(ValueError, match=r"needs each sample's prompt features: build it with sample_prompts=, or pass"):
        sample(den, 12, 2, num_steps=20, guidance=CoverageGate(by_cond))
    with pytest.raises(ValueError, match=r"cond has 5 features per sample \(shape \(12, 5\)\) but reference_prompts has"):
        sample(den, 12, 2, num_steps=20, guidance=by_cond, cond=torch.ones(12, 5))
    assert not calls
    sample(den, 3, 2, num_steps=4, guidance=short, first_index=3)
    sample(den, 2, 2, num_steps=4, guidance=by_cond, cond=torch.eye(3)[:2])
    assert len(calls) == 8


def test_train_timesteps_and_beta_schedule_that_a_scheduler_instance_would_ignore_are_refused(model):
    """They build a named scheduler; with a scheduler instance they were silently ignored (a
    cosine beta_schedule, or an invalid one, sampled with the instance's linear betas). Values
    that agree with the instance, and the defaults, still run."""
    ddim = make_scheduler("ddim")
    with pytest.raises(ValueError, match=r"beta_schedule='squaredcos_cap_v2' builds a named scheduler.*"
                                         r"DDIMScheduler instance .* has its own \('linear'\)"):
        sample(model, 2, 2, scheduler=ddim, num_steps=3, beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError, match=r"train_timesteps=500 builds a named scheduler.*has its own \(1000\)"):
        sample(model, 2, 2, scheduler=ddim, num_steps=3, train_timesteps=500)
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        sample(model, 2, 2, scheduler=ddim, num_steps=3, beta_schedule="cosine")
    cosine = make_scheduler("ddim", 500, "squaredcos_cap_v2")
    a = sample(model, 2, 2, scheduler=cosine, num_steps=3, train_timesteps=500, beta_schedule="squaredcos_cap_v2")
    b = sample(model, 2, 2, scheduler="ddim", num_steps=3, train_timesteps=500, beta_schedule="squaredcos_cap_v2")
    assert torch.equal(a.samples, b.samples)


def test_a_run_whose_only_timestep_is_zero_is_refused_before_the_denoiser_runs(model):
    """DDPM / DDIM space their steps 'leading': at num_steps=1 the only timestep is t=0, so the run
    took one step at the lowest noise level and returned x_T (pure noise) nearly unchanged, with
    no error. One step from t=999 (DPM-Solver, 'trailing' spacing) still runs and denoises."""
    from diffusers import DDIMScheduler

    for name in ("ddpm", "ddim"):
        sched = make_scheduler(name)
        sched.set_timesteps(1)
        assert sched.timesteps.tolist() == [0]  # the premise, from diffusers itself
    calls = []
    den = lambda x, t, c=None: (calls.append(1), model(x, t, c))[1]  # noqa: E731
    for name in ("ddpm", "ddim"):
        with pytest.raises(ValueError, match=r"num_steps=1 gives DD[IP]MScheduler \(timestep_spacing='leading'\) only "
                                             r"the timestep t=0.*use num_steps >= 2"):
            sample(den, 4, 2, scheduler=name, num_steps=1)
    assert not calls
    x_T = torch.randn(4, 2, generator=make_generator(0))  # sample's x_T for seed 0 on the CPU
    trailing = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    for scheduler in ("dpm", trailing):
        res = sample(model, 4, 2, scheduler=scheduler, num_steps=1)
        assert res.timesteps.tolist() == [999]
        assert (res.samples - x_T).norm(dim=1).min() > 0.5  # denoised, not the noise handed back
    assert sample(model, 4, 2, scheduler="ddpm", num_steps=2).timesteps.tolist() == [500, 0]


def test_a_closed_form_denoiser_built_for_another_noise_schedule_is_refused():
    """GaussianMixtureDenoiser / ExactDenoiser compute eps at their own alphas_cumprod[t]; sampled
    with another beta_schedule or train_timesteps they got every step's noise level wrong (the
    100-D task's exact model at train_timesteps=500: 8.7 % of samples off the modes, none at 1000)
    without an error. A scheduler with the same schedule, by any name, still samples."""
    mix = circle_mixture()
    linear, cosine = make_scheduler("ddpm"), make_scheduler("ddpm", beta_schedule="squaredcos_cap_v2")
    assert not torch.allclose(linear.alphas_cumprod, cosine.alphas_cumprod)  # the premise
    calls = []

    class Counted(GaussianMixtureDenoiser):
        def forward(self, x_t, t, cond=None):
            calls.append(1)
            return super().forward(x_t, t, cond)

    den = Counted(mix.means, mix.weights, mix.std, linear)
    for kwargs, got in ((dict(beta_schedule="squaredcos_cap_v2"), r"\(1000, last 2.4\d*e-09\)"),
                        (dict(train_timesteps=500), r"\(500, last 0.00635\)"),
                        (dict(scheduler=cosine), r"\(1000, last 2.4\d*e-09\)")):
        with pytest.raises(ValueError, match=r"the Counted computes eps with its own noise schedule \(1000 train "
                                             rf"timesteps, alpha_bar at the last 4.04e-05\), but .* another {got}"):
            sample(den, 4, 2, num_steps=10, **kwargs)
    with pytest.raises(ValueError, match="ExactDenoiser computes eps with its own noise schedule"):
        sample(ExactDenoiser(mix.means, cosine), 4, 2, num_steps=10)
    assert not calls
    for scheduler in ("ddpm", "ddim", "dpm"):  # the same linear betas under every name
        sample(den, 4, 2, scheduler=scheduler, num_steps=10)
    x = sample(GaussianMixtureDenoiser.from_mixture(mix, cosine), 500, 2, num_steps=50,
               beta_schedule="squaredcos_cap_v2").samples
    assert off_mode_fraction(x, mix.means, mix.std) < 0.02  # built and sampled with one schedule


def test_guided_chunks_are_separate_generated_sets_and_micro_batching_keeps_one():
    # sample()'s docstring said per_sample_seed samples 'do not depend on the chunking': with a
    # batch-joint guidance each chunk of batch_size is its own generated set (Eq. 6 over the chunk).
    # The documented relation: chunk k of a run equals a run of that chunk alone (fixed bandwidth
    # and cap, so nothing run-level carries over), and MicroBatched keeps the whole batch joint.
    from mmdg_lite.distributed import MicroBatched
    from mmdg_lite.guidance import MMDGuidance
    from mmdg_lite.kernels import GaussianKernel
    mix = circle_mixture()
    den = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler().alphas_cumprod)
    refs = dirichlet_mixture(mix, seed=1).sample(200, 0)[0]
    hook = MMDGuidance(refs, kernel=GaussianKernel(1.0), clip_norm=0.5)
    kw = dict(num_steps=12, seed=2, per_sample_seed=True, guidance=hook)
    whole = sample(den, 8, 2, **kw).samples
    chunked = sample(den, 8, 2, batch_size=4, **kw).samples
    second = sample(den, 4, 2, first_index=4, **kw).samples
    assert torch.allclose(chunked[4:], second, atol=1e-5, rtol=0)
    assert float((chunked - whole).abs().max()) > 1e-2  # guided as two batches of 4, not one of 8
    micro = sample(MicroBatched(den, 3), 8, 2, **kw).samples
    assert torch.allclose(micro, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_sample_refuses_a_scheduler_that_does_not_read_eps(kind):
    """The denoiser returns eps; a v- or x_0-prediction scheduler instance read it as its own kind
    without a word (the exact ring denoiser's samples came out at radius 1.90 instead of 2.00)."""
    calls = []

    def denoiser(x, t, cond=None):
        calls.append(1)
        return torch.zeros_like(x)

    for cls in (DDPMScheduler, DDIMScheduler):
        with pytest.raises(ValueError, match=rf"prediction_type='{kind}'.*eps.*prediction_type='epsilon'"):
            sample(denoiser, 4, (2,), scheduler=cls(prediction_type=kind), num_steps=5)
    assert not calls  # refused before the first denoiser call
    # what such a scheduler wants instead: v = sqrt(abar) eps - sqrt(1 - abar) x0 (DDPM, one step)
    sched_v, sched_e = DDPMScheduler(prediction_type="v_prediction"), DDPMScheduler()
    x, eps, t = torch.randn(3, 2), torch.randn(3, 2), 500
    ab = sched_e.alphas_cumprod[t]
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    assert torch.allclose(sched_v.step(v, t, x).pred_original_sample, sched_e.step(eps, t, x).pred_original_sample,
                          atol=1e-5)
    assert not torch.allclose(sched_v.step(eps, t, x).pred_original_sample, x0, atol=1e-2)


def _under_default_dtype(dtype, fn):
    """fn() with torch's default dtype set to ``dtype`` (put back afterwards)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return fn()
    finally:
        torch.set_default_dtype(before)


def test_same_seed_same_samples_under_a_float64_default_dtype():
    """x_T was drawn in torch's default dtype, not float32 as README says: after
    torch.set_default_dtype(torch.float64) the same seed gave other noise and samples 3-5 apart
    (with and without per_sample_seed)."""
    from mmdg_lite.toys.mixtures import random_mixture

    mix = random_mixture(3, 16, seed=0)  # torch draws the same numbers in both dtypes below 16 values
    den = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler("ddim"))
    for pss in (False, True):
        def run():
            return sample(den, 4, 16, scheduler="ddim", num_steps=4, seed=3, per_sample_seed=pss).samples
        assert torch.equal(_under_default_dtype(torch.float64, run), run())


def test_noise_level_refuses_a_step_index_outside_the_run():
    # a hand loop's noise_level(sched, timesteps, i) with i = -1 read the last step's level (DDPM) or the end's
    # (Euler), and i = len + 1 the end's (DDPM) or a bare IndexError (Euler); None / a float / a bool failed in
    # bare TypeError / IndexError. The valid range 0..len agrees with noise_levels
    from diffusers import DDPMScheduler, EulerDiscreteScheduler
    from mmdg_lite.sampling import noise_level, noise_levels
    for cls in (DDPMScheduler, EulerDiscreteScheduler):
        sched = cls(num_train_timesteps=1000)
        sched.set_timesteps(6)
        ts = sched.timesteps
        assert [noise_level(sched, ts, i) for i in range(7)] == noise_levels(sched, ts)
        for bad, err, message in ((-1, ValueError, "integer >= 0; got -1"),
                                  (7, ValueError, r"from 0 to len\(timesteps\) = 6 .*got 7"),
                                  (None, TypeError, "got NoneType"), (2.0, TypeError, "got float"),
                                  (True, TypeError, "got bool")):
            with pytest.raises(err, match=message):
                noise_level(sched, ts, bad)


def test_a_sigma_scaled_state_with_only_input_scale_left_at_1_is_refused():
    # an Euler hand loop that passed input_scale_prev but left input_scale at 1 was guided in the wrong units
    # whenever its first guided step was past alpha_bar 1/9 (start=0.5: 0.37 off the right samples), silently;
    # the other way round (input_scale given, input_scale_prev left at 1) was already refused
    from types import SimpleNamespace
    from diffusers import EulerDiscreteScheduler
    from mmdg_lite.guidance import MMDGuidance
    from mmdg_lite.sampling import check_input_scales, noise_level
    sched = EulerDiscreteScheduler(num_train_timesteps=1000)
    sched.set_timesteps(8)
    (ab, c_in), (ab_prev, c_prev) = noise_level(sched, sched.timesteps, 4), noise_level(sched, sched.timesteps, 5)
    assert ab > 1 / 9  # past the first-step RMS test's reach
    x_t = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)) / c_in  # sigma-scaled: RMS ~1/c_in
    state = SimpleNamespace(x_t=x_t, x_prev=0.9 * x_t, eps=torch.zeros_like(x_t), t=int(sched.timesteps[4]),
                            step_index=4, num_steps=8, alpha_bar_t=ab, alpha_bar_prev=ab_prev, input_scale=1.0,
                            input_scale_prev=c_prev)
    with pytest.raises(ValueError, match=r"input_scale_prev=.*\(sigma-scaled latents\) but input_scale is 1 at step 4"):
        check_input_scales(state)
    with pytest.raises(ValueError, match="but input_scale is 1"):
        MMDGuidance(torch.randn(9, 2), start=0.5)(state)
    state.input_scale = c_in  # both given: accepted
    check_input_scales(state)
    state.input_scale, state.input_scale_prev = 1.0, 1.0  # DDPM-normalised (or both left at 1 here): accepted
    check_input_scales(state)


def test_cond_gives_the_same_samples_whatever_its_layout_or_container():
    # the same cond values transposed in memory (or expanded, as the cond error advises) gave samples 7e-8
    # apart: the model's Linear summed in another order. A numpy cond was refused as 'cond must be a tensor'
    import numpy as np
    from mmdg_lite.toys import load_or_train_cond_2d

    model, world = load_or_train_cond_2d()
    c = world.encoder().encode(["cat"] * 4)  # (4, 8), contiguous
    want = sample(model, 4, 2, num_steps=5, cond=c).samples
    for other in (c.T.contiguous().T, c[:1].expand(4, -1), c.numpy()):
        assert torch.equal(sample(model, 4, 2, num_steps=5, cond=other).samples, want)
