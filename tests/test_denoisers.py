"""Denoisers (MLP, exact finite-set, exact Gaussian mixture), save/load and training."""
import math

import pytest
import torch

from mmdg_lite.toys.mixtures import circle_mixture
from mmdg_lite.denoisers import (CFGDenoiser, Denoiser, ExactDenoiser, GaussianMixtureDenoiser,
                                 MLPDenoiser, load_denoiser, save_denoiser)
from mmdg_lite.sampling import make_scheduler
from mmdg_lite.toys import TOY_2D_DIR, load_or_train_toy_2d
from mmdg_lite.training import train_denoiser

AC = make_scheduler("ddpm").alphas_cumprod


@pytest.mark.parametrize("shape", [(2,), (100,), (1, 4, 4)])
def test_mlp_shapes_any_dim(shape):
    torch.manual_seed(0)
    dim = math.prod(shape)
    model = MLPDenoiser(dim, hidden=32, layers=2)
    x = torch.randn(5, *shape)
    out = model(x, torch.arange(5) * 100)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert isinstance(model, Denoiser)
    assert torch.equal(model(x, 300), model(x, torch.full((5,), 300)))  # scalar t broadcasts
    with pytest.raises(ValueError, match="dim=%d" % dim):
        model(torch.randn(5, dim + 1), torch.zeros(5, dtype=torch.long))


def test_mlp_condition_and_null_embedding():
    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=32, layers=2, cond_dim=3)
    with torch.no_grad():
        model.null_cond.normal_()
    x, t = torch.randn(4, 2), torch.full((4,), 500)
    c = torch.randn(4, 3)
    uncond, cond = model(x, t, None), model(x, t, c)
    assert not torch.allclose(uncond, cond)
    dropped = model(x, t, c, drop_cond=torch.tensor([True, False, True, False]))
    assert torch.allclose(dropped[0::2], uncond[0::2]) and torch.allclose(dropped[1::2], cond[1::2])
    cfg = CFGDenoiser(model, guidance_scale=2.0)
    assert torch.allclose(cfg(x, t, c), uncond + 2.0 * (cond - uncond), atol=1e-6)
    with pytest.raises(ValueError, match=r"cond must have shape \(4, 3\)"):
        model(x, t, torch.randn(4, 2))
    with pytest.raises(ValueError, match="cond_dim=0"):
        MLPDenoiser(2, hidden=8, layers=1)(x, t, c)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = MLPDenoiser(3, hidden=16, layers=2, time_embed_dim=8, cond_dim=2)
    save_denoiser(model, tmp_path / "m")
    loaded = load_denoiser(tmp_path / "m")
    assert loaded.config == model.config
    x, t, c = torch.randn(6, 3), torch.randint(0, 1000, (6,)), torch.randn(6, 2)
    assert torch.equal(loaded(x, t, c), model(x, t, c))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_denoiser(tmp_path / "missing")


def _brute_force_exact(x, t, data, ac):
    """Independent float64 loop over data points: eps = (x - sqrt(abar) E[y|x]) / sqrt(1-abar)."""
    out = torch.empty(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        abar = float(ac[int(t[b])])
        logs = [-float(((x[b].double() - math.sqrt(abar) * y.double()) ** 2).sum()) / (2 * (1 - abar)) for y in data]
        m = max(logs)
        w = [math.exp(v - m) for v in logs]
        mean = sum(wk * y.double() for wk, y in zip(w, data)) / sum(w)
        out[b] = (x[b].double() - math.sqrt(abar) * mean) / math.sqrt(1 - abar)
    return out


def test_exact_denoiser_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(7, 3, generator=g)
    x = torch.randn(6, 3, generator=g) * 2
    t = torch.tensor([0, 5, 100, 400, 800, 999])
    den = ExactDenoiser(data, make_scheduler("ddpm"))
    got = den(x, t)
    assert got.dtype == torch.float32
    assert torch.allclose(den(x.double(), t), _brute_force_exact(x, t, data, AC), atol=1e-10, rtol=1e-9)
    post = den.posterior(x, t)
    assert post.shape == (6, 7) and torch.allclose(post.sum(1), torch.ones(6, dtype=torch.float64))
    far = den(torch.full((2, 3), 1e4), torch.tensor([0, 999]))  # log-sum-exp keeps this finite
    assert torch.isfinite(far).all()


def _tweedie_oracle(x, t, means, weights, std, ac):
    """eps = -sqrt(1-abar) grad log p_t(x), with p_t built by torch.distributions and autograd."""
    out = []
    for b in range(x.shape[0]):
        abar = ac[int(t[b])].double()
        comp = torch.distributions.Independent(torch.distributions.Normal(
            abar.sqrt() * means.double(), (abar * std**2 + 1 - abar).sqrt().expand(means.shape)), 1)
        mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=weights.double()), comp)
        xb = x[b].double().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.log_prob(xb), xb)
        out.append(-(1 - abar).sqrt() * grad)
    return torch.stack(out)


def test_gaussian_mixture_denoiser_matches_autograd_oracle():
    g = torch.Generator().manual_seed(1)
    means, weights, std = torch.randn(4, 5, generator=g) * 3, torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.3
    x = torch.randn(8, 5, generator=g) * 2
    t = torch.tensor([0, 1, 10, 100, 300, 600, 900, 999])
    den = GaussianMixtureDenoiser(means, weights, std, AC)
    expected = _tweedie_oracle(x, t, means, weights, std, AC)
    assert torch.allclose(den(x.double(), t), expected, atol=1e-9, rtol=1e-7)
    assert den(x, t).dtype == torch.float32
    # zero-weight components are allowed (a user's subset target)
    den0 = GaussianMixtureDenoiser(means, torch.tensor([0.0, 0.0, 0.5, 0.5]), std, AC)
    assert torch.isfinite(den0(x, t)).all()


def test_gaussian_mixture_denoiser_tends_to_exact_denoiser():
    mix = circle_mixture()
    x, t = torch.randn(16, 2) * 2, torch.randint(50, 1000, (16,))
    gmm = GaussianMixtureDenoiser(mix.means, mix.weights, 1e-6, AC)
    exact = ExactDenoiser(mix.means, AC, weights=mix.weights)
    assert torch.allclose(gmm(x.double(), t), exact(x.double(), t), atol=1e-6)
    assert torch.allclose(GaussianMixtureDenoiser.from_mixture(mix, AC).posterior(x, t).sum(1),
                          torch.ones(16, dtype=torch.float64))


@pytest.mark.parametrize("make, match", [
    (lambda: ExactDenoiser(torch.randn(5), AC), "data"),
    (lambda: ExactDenoiser(torch.randn(5, 2), torch.ones(10)), "alphas_cumprod"),
    (lambda: ExactDenoiser(torch.randn(5, 2), AC, weights=torch.ones(4)), "weights"),
    (lambda: GaussianMixtureDenoiser(torch.randn(3, 2), torch.ones(2), 0.1, AC), "weights"),
    (lambda: GaussianMixtureDenoiser(torch.randn(3, 2), torch.ones(3), -1.0, AC), "std"),
    (lambda: ExactDenoiser(torch.randn(5, 2), AC)(torch.randn(2, 2), torch.zeros(2, dtype=torch.long),
                                                  torch.ones(2, 1)), "unconditional"),
    (lambda: ExactDenoiser(torch.randn(5, 2), AC)(torch.randn(2, 2), torch.zeros(3, dtype=torch.long)), r"shape \(2,\)"),
])
def test_closed_form_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_train_denoiser_deterministic_and_learning():
    data = circle_mixture().sample(2000, 0)[0]

    def run():
        torch.manual_seed(0)
        model = MLPDenoiser(2, hidden=32, layers=2)
        return model, train_denoiser(model, data, make_scheduler("ddpm"), steps=150, batch_size=64,
                                     lr=3e-3, seed=0, progress=False)


    (m1, l1), (m2, l2) = run(), run()
    assert l1 == l2 and len(l1) == 150
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert sum(l1[-30:]) / 30 < sum(l1[:30]) / 30
    with pytest.raises(ValueError, match="cond_dropout"):
        train_denoiser(m1, data, steps=1, cond_dropout=1.5, progress=False)


def test_train_conditional_with_dropout():
    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=16, layers=1, cond_dim=2)
    data, cond = torch.randn(100, 2), torch.randn(100, 2)
    losses = train_denoiser(model, data, steps=5, batch_size=8, cond=cond, cond_dropout=0.5, progress=False)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert model.null_cond.abs().sum() > 0  # the null embedding is trained
    with pytest.raises(ValueError, match="one row per data point"):
        train_denoiser(model, data, steps=1, cond=cond[:5], progress=False)


@pytest.mark.skipif(not (TOY_2D_DIR / "model.safetensors").is_file(), reason="shipped toy model missing")
def test_shipped_toy_model_loads():
    model, mix = load_or_train_toy_2d()
    assert isinstance(model, MLPDenoiser) and model.dim == 2 and mix.n_modes == 8


def test_train_denoiser_checks_cond_and_converts_data_dtype():
    model = MLPDenoiser(2, hidden=8, layers=1, cond_dim=4)
    data = torch.randn(32, 2)
    with pytest.raises(ValueError, match=r"cond contains 128 NaN or Inf"):
        train_denoiser(model, data, steps=3, cond=torch.full((32, 4), float("nan")), progress=False)
    with pytest.raises(TypeError, match="cond has dtype torch.int64"):
        train_denoiser(model, data, steps=1, cond=torch.ones(32, 4, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match=r"shape \(32, 4\); got tensor of shape \(32, 3\)"):
        train_denoiser(model, data, steps=1, cond=torch.ones(32, 3), progress=False)
    # float64 / numpy data (and cond) are run in the model's dtype; same losses as float32 input
    torch.manual_seed(0)
    m32, m64 = MLPDenoiser(2, hidden=8, layers=1, cond_dim=4), MLPDenoiser(2, hidden=8, layers=1, cond_dim=4)
    m64.load_state_dict(m32.state_dict())
    cond = torch.randn(32, 4)
    l32 = train_denoiser(m32, data, steps=2, cond=cond, progress=False)
    l64 = train_denoiser(m64, data.double().numpy(), steps=2, cond=cond.double().numpy(), progress=False)
    assert l64 == l32


def test_cfg_denoiser_checks_its_arguments():
    model = MLPDenoiser(2, hidden=8, layers=1, cond_dim=3)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"guidance_scale must be a finite number; got (nan|inf)"):
            CFGDenoiser(model, bad)
    with pytest.raises(TypeError, match="guidance_scale must be a finite number; got bool True"):
        CFGDenoiser(model, True)
    with pytest.raises(TypeError, match="model must be a conditional denoiser callable.*got str 'model'"):
        CFGDenoiser("model")


def test_closed_form_denoisers_name_their_dimension():
    sch = make_scheduler("ddpm")
    mix = circle_mixture()
    refs = mix.sample(16, 0)[0]
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"x_t has 3 features.*ExactDenoiser expects dim=2 \(.*its data\)"):
        ExactDenoiser(refs, sch)(x, 10)
    with pytest.raises(ValueError, match=r"x_t has 3 features.*GaussianMixtureDenoiser expects dim=2 \(.*its means\)"):
        GaussianMixtureDenoiser.from_mixture(mix, sch)(x, 10)
    nan_w = torch.ones(16)
    nan_w[0] = float("nan")
    with pytest.raises(ValueError, match="weights contains 1 NaN"):
        ExactDenoiser(refs, sch, weights=nan_w)
    with pytest.raises(ValueError, match="weights contains 1 NaN"):
        GaussianMixtureDenoiser(mix.means, nan_w[:8], 0.1, sch)


# ---------------------------------------------------------------- found by an outside probe

def test_train_denoiser_refuses_half_precision_and_stops_on_a_non_finite_loss():
    from mmdg_lite.denoisers import MLPDenoiser

    data = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="model parameters are torch.float16; train in float32"):
        train_denoiser(MLPDenoiser(2, hidden=8, layers=1).half(), data, steps=5, progress=False)  # NaN weights
    with pytest.raises(FloatingPointError, match=r"the training loss is (inf|nan) at step \d+ of 5 \(lr 1000\)"):
        train_denoiser(MLPDenoiser(2, hidden=8, layers=1), data * 1e30, steps=5, lr=1e3, progress=False)
    with pytest.raises(TypeError, match="progress must be True or False; got 'no'"):
        train_denoiser(MLPDenoiser(2, hidden=8, layers=1), data, steps=5, progress="no")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        train_denoiser(lambda x, t: x, data, steps=5, progress=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_save_load_round_trip_keeps_the_weights_dtype(tmp_path, dtype):
    from mmdg_lite.denoisers import MLPDenoiser, load_denoiser, save_denoiser

    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=8, layers=1).to(dtype)
    back = load_denoiser(save_denoiser(model, tmp_path / "m"))  # came back float32, rounded
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    assert next(back.parameters()).dtype == dtype


def test_mlp_takes_points_of_another_dtype_and_checks_drop_cond():
    from mmdg_lite.denoisers import MLPDenoiser

    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=8, layers=1, cond_dim=3).eval()
    x = torch.randn(4, 2)
    out64 = model(x.double(), 5)  # a raw "mat1 and mat2 must have the same dtype" before
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), model(x, 5))
    with pytest.raises(ValueError, match="drop_cond must be a tensor of 4 flags"):
        model(x, 5, torch.randn(4, 3), drop_cond=torch.zeros(2, dtype=torch.bool))


@pytest.mark.parametrize("t", [-1, 1000, torch.tensor([0, 1000])])
def test_closed_form_denoisers_refuse_timesteps_outside_their_schedule(t):
    sched = make_scheduler("ddpm")
    ring = circle_mixture()
    for den in (GaussianMixtureDenoiser(ring.means, ring.weights, ring.std, sched),
                ExactDenoiser(torch.randn(10, 2), sched)):
        with pytest.raises(ValueError, match=r"t must be timesteps from 0 to 999"):
            den(torch.randn(2, 2), t)  # -1 silently meant 999


def test_toy_loaders_refuse_the_other_model_and_name_folder():
    from mmdg_lite._io import ArtifactError
    from mmdg_lite.toys import COND_2D_DIR, load_or_train_cond_2d

    with pytest.raises(ArtifactError, match="cond_dim=8; load_or_train_toy_2d needs dim=2, cond_dim=0"):
        load_or_train_toy_2d(folder=COND_2D_DIR)
    with pytest.raises(ArtifactError, match="cond_dim=0; load_or_train_cond_2d needs dim=2, cond_dim=8"):
        load_or_train_cond_2d(folder=TOY_2D_DIR)
    with pytest.raises(TypeError, match="folder must be a path"):
        load_or_train_toy_2d(folder=3)


def test_loading_a_model_leaves_the_global_rng_alone(tmp_path):
    """load_denoiser (and the toy loaders on it) built the MLP with torch's default init before
    loading the weights, advancing the caller's global stream: code after a load drew other numbers."""
    from mmdg_lite.toys import load_or_train_cond_2d

    save_denoiser(MLPDenoiser(3, hidden=16, layers=1), tmp_path / "m")
    for load in (lambda: load_denoiser(tmp_path / "m"), load_or_train_toy_2d, load_or_train_cond_2d):
        torch.manual_seed(0)
        want = torch.randn(8)
        torch.manual_seed(0)
        load()
        assert torch.equal(torch.randn(8), want)


def test_training_inside_no_grad_trains_the_same_and_refuses_what_cannot_train():
    """train_denoiser / train_classifier inside a caller's torch.no_grad() block raised torch's bare
    'element 0 of tensors does not require grad'; so did a frozen model and inference_mode."""
    from mmdg_lite.baselines import train_classifier

    data = circle_mixture().sample(64, 0)[0]
    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=8, layers=1)
    twin = MLPDenoiser(2, hidden=8, layers=1)
    twin.load_state_dict(model.state_dict())
    want = train_denoiser(model, data, steps=3, batch_size=8, progress=False)
    with torch.no_grad():
        assert train_denoiser(twin, data, steps=3, batch_size=8, progress=False) == want
        train_classifier(data, data + 1, steps=2, batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    with pytest.raises(ValueError, match="requires_grad=False.*nothing to train"):
        train_denoiser(model.requires_grad_(False), data, steps=1, progress=False)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="training loop.*inference_mode"):
        train_denoiser(twin, data, steps=1, progress=False)


def test_cfg_limits_are_the_two_models_exactly():
    # scale 1 gave eps_u + (eps_c - eps_u), off eps_c by rounding, after a wasted unconditional call (and
    # scale 0 a wasted conditional one)
    torch.manual_seed(0)
    model = MLPDenoiser(2, hidden=16, layers=1, cond_dim=3)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[2] if len(args) > 2 else None))
    x, t, c = torch.randn(64, 2), torch.randint(0, 1000, (64,)), torch.randn(64, 3)
    eps_u, eps_c = model(x, t, None), model(x, t, c)
    for scale, want in ((1.0, eps_c), (0.0, eps_u)):
        calls.clear()
        assert torch.equal(CFGDenoiser(model, scale)(x, t, c), want) and len(calls) == 1
    calls.clear()
    assert torch.allclose(CFGDenoiser(model, 2.5)(x, t, c), eps_u + 2.5 * (eps_c - eps_u)) and len(calls) == 2


def test_train_denoiser_refuses_a_scheduler_that_does_not_noise_at_train_timesteps():
    # EulerDiscreteScheduler.add_noise gives x_0 + sigma eps (sigma-scaled), not the DDPM-normalised x_t the
    # samplers feed the model: trained through it the model learnt other inputs than it sees, silently
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    euler = EulerDiscreteScheduler(num_train_timesteps=1000)
    with pytest.raises(ValueError, match="scheduler EulerDiscreteScheduler does not noise as training needs"):
        train_denoiser(MLPDenoiser(2, hidden=8, layers=1), torch.randn(8, 2), euler, steps=1, progress=False)
    ddpm = DDPMScheduler.from_config(euler.config)
    a, b = MLPDenoiser(2, hidden=8, layers=1), MLPDenoiser(2, hidden=8, layers=1)
    b.load_state_dict(a.state_dict())
    data = torch.randn(8, 2)
    assert train_denoiser(a, data, ddpm, steps=2, progress=False) == train_denoiser(b, data, steps=2, progress=False)


@pytest.mark.parametrize("make, match", [
    (lambda: make_scheduler("ddpm").__class__(prediction_type="v_prediction"), r"prediction_type='v_prediction'"),
    (lambda: make_scheduler("ddpm").__class__(prediction_type="sample"), r"prediction_type='sample'"),
    (lambda: make_scheduler("dpm"), r"DPMSolverMultistepScheduler does not noise as training needs.*add_noise gives"),
    (lambda: __import__("diffusers").EulerDiscreteScheduler(), r"EulerDiscreteScheduler does not noise as training needs"),
])
def test_train_denoiser_refuses_schedulers_whose_noising_is_not_eps_prediction(make, match):
    """The loss fits the noise of x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps. A v- or x_0-prediction
    scheduler was trained as eps-prediction without a word; DPM-Solver's add_noise maps t=0 to
    the noisiest level (diffusers looks t up in its reversed schedule) and Euler's adds x_0 + sigma eps,
    so both trained the model at other noise levels than sample() feeds it."""
    sched = make()
    model = MLPDenoiser(2, hidden=8, layers=1)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        train_denoiser(model, torch.randn(16, 2), sched, steps=2, batch_size=4, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any step
    # the oracle the check applies: DDPM and DDIM noise by alphas_cumprod and train as before
    for ok in (make_scheduler("ddpm"), make_scheduler("ddim"), make_scheduler("ddpm", 100, "squaredcos_cap_v2")):
        x0, eps, t = torch.randn(5, 2), torch.randn(5, 2), torch.tensor([0, 3, 40, 70, 99])
        ab = ok.alphas_cumprod[t][:, None]
        assert torch.allclose(ok.add_noise(x0, eps, t), ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-6)
        assert len(train_denoiser(MLPDenoiser(2, hidden=8, layers=1), torch.randn(16, 2), ok, steps=2,
                                  batch_size=4, progress=False)) == 2


def test_train_denoiser_names_data_whose_points_do_not_fit_the_model():
    """Points of another size failed inside the first step as 'x_t has 3 features per sample (shape
    (256, 3))': the minibatch's shape, not the data's, and no word of data."""
    model = MLPDenoiser(2, hidden=8, layers=1)
    for data, shape in ((torch.randn(4, 3), r"\(4, 3\)"), (torch.randn(4), r"\(4,\)")):
        with pytest.raises(ValueError, match=rf"data has \d features per point \(shape {shape}\).*dim=2"):
            train_denoiser(model, data, steps=1, batch_size=256, progress=False)
    assert len(train_denoiser(MLPDenoiser(4, hidden=8, layers=1), torch.randn(5, 2, 2), steps=1,
                              progress=False)) == 1  # (N, 2, 2) points are 4 features, as the model flattens them


def test_train_denoiser_names_a_model_output_that_is_not_the_noise():
    """A model returning (B, 1) trained against (B, 2) noise by broadcasting (torch's warning only,
    losses that look fine); a bare diffusers UNet failed in mse_loss with "'UNet2DOutput' object
    has no attribute 'size'"."""
    class Narrow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x, t):
            return self.lin(x)  # (B, 1)

    class Boxed(Narrow):
        def forward(self, x, t):
            return {"sample": x * self.lin.weight.sum()}  # not a tensor, as UNet2DModel's output

    with pytest.raises(ValueError, match=r"x_t's shape \(4, 2\); Narrow returned shape \(4, 1\)"):
        train_denoiser(Narrow(), torch.randn(10, 2), steps=1, batch_size=4, progress=False)
    with pytest.raises(TypeError, match=r"Boxed returned dict .*UNetDenoiser\(unet\)"):
        train_denoiser(Boxed(), torch.randn(10, 2), steps=1, batch_size=4, progress=False)


def test_train_denoiser_with_cond_needs_a_model_that_takes_drop_cond():
    """A conditional model of one's own, forward(x, t, cond), failed at the first step with the bare
    'forward() got an unexpected keyword argument drop_cond'; now refused up front, saying what
    drop_cond is. A forward with drop_cond (or **kwargs) trains, and gets the dropout rows."""
    class Own(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(5, 2)
            self.dropped: list[torch.Tensor] = []

        def forward(self, x, t, cond=None):
            return self.lin(torch.cat([x, cond], 1))

    class WithDrop(Own):
        def forward(self, x, t, cond=None, **kwargs):
            self.dropped.append(kwargs["drop_cond"])
            return super().forward(x, t, cond)

    data, cond = torch.randn(10, 2), torch.randn(10, 3)
    model = Own()
    before = model.lin.weight.clone()
    with pytest.raises(TypeError, match=r"drop_cond=.*Own.forward takes no drop_cond"):
        train_denoiser(model, data, cond=cond, steps=2, progress=False)
    assert torch.equal(model.lin.weight, before)
    model = WithDrop()
    assert len(train_denoiser(model, data, cond=cond, steps=3, batch_size=4, cond_dropout=1.0, progress=False)) == 3
    assert [d.tolist() for d in model.dropped] == [[True] * 4] * 3


def test_exact_denoiser_checks_chunk_elems_and_chunking_keeps_the_values():
    """chunk_elems=2.5 was accepted and failed at the first call, inside sampling, as "'float' object
    cannot be interpreted as an integer" (no argument named); any chunking gives the same eps."""
    data, sched = torch.randn(6, 2, dtype=torch.float64), make_scheduler("ddpm")
    for bad, err in ((2.5, TypeError), (True, TypeError), (0, ValueError)):
        with pytest.raises(err, match=rf"chunk_elems must be an integer >= 1; got .*{bad}"):
            ExactDenoiser(data, sched, chunk_elems=bad)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0, 10, 200, 600, 999])
    whole = ExactDenoiser(data, sched)(x, t)
    for rows in (1, 2, 3):  # one, two, three rows per chunk
        assert torch.allclose(ExactDenoiser(data, sched, chunk_elems=6 * rows)(x, t), whole, rtol=1e-12, atol=1e-12)


def test_save_denoiser_names_a_folder_it_cannot_write_into(tmp_path):
    """A path that is a file failed in mkdir with '[Errno 17] File exists', None with pathlib's
    'expected str, bytes or os.PathLike object'; neither named folder. Nothing is written."""
    model = MLPDenoiser(2, hidden=8, layers=1)
    taken = tmp_path / "model"
    taken.write_text("notes")
    with pytest.raises(ValueError, match=r"folder=.*model' is a file; save_denoiser writes config.json"):
        save_denoiser(model, taken)
    assert taken.read_text() == "notes"
    with pytest.raises(TypeError, match=r"folder must be a path .*got NoneType"):
        save_denoiser(model, None)
    folder = save_denoiser(model, str(tmp_path / "a" / "b"))  # new nested folders are made
    assert torch.equal(load_denoiser(folder).out_proj.weight, model.out_proj.weight)


def test_load_denoiser_checks_device_before_reading(tmp_path):
    """device='gpu' failed in torch after both files were read ('Expected one of cpu, cuda, ...
    device type at start of device string: gpu'); on a machine without CUDA, 'cuda' raised torch's
    bare AssertionError. Both now name device before any file is opened."""
    folder = save_denoiser(MLPDenoiser(2, hidden=8, layers=1), tmp_path / "m")
    with pytest.raises(ValueError, match=r"device must be a torch device or its name.*got 'gpu'"):
        load_denoiser(tmp_path / "missing", device="gpu")
    with pytest.raises(TypeError, match=r"folder must be a path .*got NoneType"):  # pathlib's bare TypeError
        load_denoiser(None)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' is not available"):
            load_denoiser(folder, device="cuda")
    for dev in ("cpu", torch.device("cpu")):
        assert load_denoiser(folder, device=dev).out_proj.weight.device.type == "cpu"


def test_fit_checks_its_arguments_and_the_loss_it_is_given():
    """fit is the public optimisation loop (a VAE or classifier of one's own): steps=0 returned []
    untrained and lr=0 ran without moving a weight, both silently; progress='no' showed the bar;
    a per-sample (B,) loss failed with 'Boolean value of Tensor ... ambiguous'."""
    from mmdg_lite.training import fit

    lin = torch.nn.Linear(2, 1)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    mean_loss = lambda: lin(x).pow(2).mean()  # noqa: E731
    for kwargs, err, match in ((dict(steps=0), ValueError, "steps must be an integer >= 1; got 0"),
                               (dict(steps=2.5), TypeError, "steps must be an integer"),
                               (dict(lr=0), ValueError, "lr must be a finite number > 0; got 0"),
                               (dict(progress="no"), TypeError, "progress must be True or False"),
                               (dict(loss_step=None), TypeError, "loss_step must be a function"),
                               (dict(loss_step=lambda: lin(x).pow(2)), TypeError, r"one-element tensor.*shape \(8, 1\)"),
                               (dict(loss_step=lambda: 1.0), TypeError, "one-element tensor.*float 1.0")):
        before = lin.weight.clone()
        with pytest.raises(err, match=match):
            fit(lin, **{"loss_step": mean_loss, "steps": 2, "lr": 1e-2, **kwargs})
        assert torch.equal(lin.weight, before)
    with torch.no_grad():
        first = float(mean_loss())  # the loss at the initial weights: the first value fit returns
    losses = fit(lin, mean_loss, 3, 1e-2)
    assert len(losses) == 3 and losses[0] == first and float(mean_loss().detach()) < first


def test_fit_refuses_a_loss_that_cannot_train_the_model():
    """fit(model, loss of another model) returned constant losses (0.1068 three times) with the model
    untouched; a detached loss failed in torch's bare 'element 0 of tensors does not require grad'."""
    from mmdg_lite.training import fit

    model, other = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    before = model.weight.clone()
    with pytest.raises(ValueError, match=r"does not depend on any trainable parameter .*\(Linear\)"):
        fit(model, lambda: other(x).pow(2).mean(), 3, 1e-2)
    with pytest.raises(ValueError, match="no autograd graph"):
        fit(model, lambda: model(x).pow(2).mean().detach(), 3, 1e-2)
    assert torch.equal(model.weight, before)
    assert len(fit(model, lambda: model(x).pow(2).mean(), 2, 1e-2)) == 2 and not torch.equal(model.weight, before)


def test_fit_names_a_model_that_is_not_a_module():
    # None, a list of modules or a bare Parameter failed in "'list' object has no attribute 'parameters'"
    from mmdg_lite.training import fit

    lin = torch.nn.Linear(2, 1)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    for model, got in ((None, "NoneType None"), ([lin], "list"), (lin.weight, r"tensor of shape \(1, 2\)")):
        with pytest.raises(TypeError, match=f"model must be the nn.Module whose parameters fit trains; got {got}"):
            fit(model, lambda: lin(x).pow(2).mean(), 2, 1e-2)


def test_exact_denoiser_cast_to_float32_still_runs_in_float64():
    """ExactDenoiser(...).to(device, torch.float32), as scripts/distributed_example.py casts its
    GaussianMixtureDenoiser, failed at the first call with 'expected m1 and m2 to have the same dtype,
    but got: double != float' (x @ data.T). Its math stays float64 on the cast buffers."""
    g = torch.Generator().manual_seed(0)
    data, x = torch.randn(6, 2, generator=g), torch.randn(3, 2, generator=g)  # float32 values: the cast is exact
    sched = make_scheduler("ddpm")
    exact = ExactDenoiser(data, sched, weights=torch.rand(6, generator=g))
    t = torch.tensor([3, 300, 900])
    want = exact(x.double(), t)
    for cast in (exact.float(), ExactDenoiser(data, sched).to("cpu", torch.float32)):
        got = cast(x, t)
        assert got.dtype == torch.float32 and cast.data.dtype == torch.float32
    got = exact.float()(x.double(), t)
    assert got.dtype == torch.float64 and torch.allclose(got, want, rtol=1e-6, atol=0)


def test_train_denoiser_treats_data_and_cond_with_a_graph_as_plain_values():
    """Latents encoded outside no_grad carry a graph: step 0 backpropagated into the encoder (its
    .grad filled) and step 1 failed with torch's 'Trying to backward through the graph a second
    time'. Training now reads their values only: the same losses as for the detached tensors."""
    g = torch.Generator().manual_seed(0)
    encoder = torch.nn.Linear(2, 2)
    data = encoder(torch.randn(30, 2, generator=g))  # requires grad, non-leaf
    cond = torch.randn(30, 3, generator=g).requires_grad_(True) * 2
    from mmdg_lite.seeding import own_rng

    losses = []
    for d, c in ((data, cond), (data.detach(), cond.detach())):
        with own_rng(0):  # the same initial weights for both runs
            model = MLPDenoiser(2, hidden=8, layers=1, cond_dim=3)
        losses.append(train_denoiser(model, d, cond=c, steps=3, batch_size=8, progress=False))
    assert losses[0] == losses[1] and len(losses[0]) == 3
    assert encoder.weight.grad is None


class _DropoutDenoiser(torch.nn.Module):
    """An eps-predictor with dropout: in train mode it draws from torch's RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.drop, self.out = torch.nn.Linear(3, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2)

    def forward(self, x, t, cond=None):
        return self.out(self.drop(torch.relu(self.inner(torch.cat([x, t[:, None].float() / 1000], 1)))))


def test_train_denoiser_with_dropout_same_seed_same_losses_and_global_rng_untouched():
    """A model with dropout trained by the same seed from the same weights gave other losses after
    another torch.manual_seed (dropout drew from the global RNG), and training moved that RNG."""
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    from mmdg_lite.seeding import own_rng

    runs = []
    for global_seed in (1, 2):
        with own_rng(0):
            model = _DropoutDenoiser()
        torch.manual_seed(global_seed)
        before = torch.random.get_rng_state()
        losses = train_denoiser(model, data, steps=4, batch_size=8, seed=3, progress=False)
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream did not move
        runs.append(losses)
    assert runs[0] == runs[1]


def test_train_denoiser_same_losses_under_a_float64_default_dtype():
    """Training noise and condition dropout were drawn (and MLPDenoiser's time embedding computed)
    in torch's default dtype: after torch.set_default_dtype(torch.float64) a float32 model trained
    by the same seed saw other noise."""
    from mmdg_lite.seeding import own_rng

    g = torch.Generator().manual_seed(0)
    data, cond = torch.randn(40, 2, generator=g), torch.randn(40, 3, generator=g)
    with own_rng(0):
        init = MLPDenoiser(2, hidden=8, layers=1, cond_dim=3).state_dict()
    runs, before = [], torch.get_default_dtype()
    for dtype in (before, torch.float64):
        model = MLPDenoiser(2, hidden=8, layers=1, cond_dim=3).float()
        model.load_state_dict(init)
        torch.set_default_dtype(dtype)
        try:
            runs.append(train_denoiser(model, data, steps=3, batch_size=8, cond=cond, cond_dropout=0.5,
                                       progress=False))
        finally:
            torch.set_default_dtype(before)
    assert runs[0] == runs[1]
