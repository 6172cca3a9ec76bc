"""Toy mixtures, reference-set helpers and the minimal mode metrics."""
import math

import pytest
import torch

from mmdg_lite.toys.mixtures import (GaussianMixture, circle_mixture, dirichlet_mixture, draw_references,
                            random_mixture, subset_mixture)
from mmdg_lite.metrics import mode_assignment as assign_modes
from mmdg_lite.seeding import make_generator


def test_circle_mixture_geometry_and_sampling():
    mix = circle_mixture(8, radius=2.0, std=0.1)
    assert mix.means.shape == (8, 2) and mix.dim == 2 and mix.n_modes == 8
    assert torch.allclose(mix.means.norm(dim=1), torch.full((8,), 2.0))
    x, labels = mix.sample(4000, make_generator(0))
    assert x.shape == (4000, 2) and labels.shape == (4000,) and labels.dtype == torch.long
    assert torch.allclose((x - mix.means[labels]).std(), torch.tensor(0.1), atol=0.01)
    assert torch.equal(assign_modes(x, mix.means), labels)
    x2, _ = mix.sample(4000, 0)  # an int seed works too and gives the same draw
    assert torch.equal(x, x2)
    assert not torch.equal(x, mix.sample(4000, 1)[0])


def test_random_mixture_separated_and_deterministic():
    a, b = random_mixture(8, 100, seed=3), random_mixture(8, 100, seed=3)
    assert torch.equal(a.means, b.means) and a.means.shape == (8, 100)
    d = torch.cdist(a.means, a.means) + torch.eye(8) * 1e9
    assert float(d.min()) >= 10 * a.std
    assert not torch.equal(a.means, random_mixture(8, 100, seed=4).means)
    with pytest.raises(ValueError, match="min_separation"):
        random_mixture(8, 2, mean_scale=0.1, std=0.5, min_separation=100.0)


def test_subset_and_dirichlet_mixtures():
    mix = circle_mixture()
    sub = subset_mixture(mix, [0, 2, 4, 6])
    assert torch.allclose(sub.weights, torch.tensor([0.25, 0, 0.25, 0, 0.25, 0, 0.25, 0]))
    assert torch.equal(sub.means, mix.means)
    dm = dirichlet_mixture(mix, n_active=2, alpha=(1, 10), seed=5)
    assert int((dm.weights > 0).sum()) == 2 and math.isclose(float(dm.weights.sum()), 1, rel_tol=1e-6)
    assert torch.equal(dm.weights, dirichlet_mixture(mix, 2, (1, 10), seed=5).weights)
    refs = draw_references(sub, n=200, seed=0)
    assert refs.shape == (200, 2)
    assert set(assign_modes(refs, mix.means).tolist()) <= {0, 2, 4, 6}
    with pytest.raises(ValueError, match="modes must be distinct"):
        subset_mixture(mix, [0, 8])
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_mixture(mix, n_active=2, alpha=(1, 2, 3))


def test_mode_radius_and_on_mode_proportions():
    from mmdg_lite.metrics import mode_proportions
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    x = torch.tensor([[0.1, 0.0], [9.9, 0.0], [10.0, 0.2], [5.0, 0.0]])
    assert assign_modes(x, means, max_dist=1.0).tolist() == [0, 1, 1, -1]
    assert torch.allclose(mode_proportions(x, means, max_dist=1.0),
                          torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    mix = circle_mixture()
    assert mix.mode_radius(0.999) == pytest.approx(0.1 * math.sqrt(-2 * math.log(0.001)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(means=torch.zeros(3), weights=torch.ones(3), std=1.0), "means"),
    (dict(means=torch.zeros(3, 2), weights=torch.ones(2), std=1.0), "weights must have shape"),
    (dict(means=torch.zeros(3, 2), weights=-torch.ones(3), std=1.0), "weights must be >= 0"),
    (dict(means=torch.zeros(3, 2), weights=torch.ones(3), std=0.0), "std"),
])

def test_mixture_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


@pytest.mark.parametrize("modes, exc, match", [
    ([0.7, 3.2], TypeError, r"non-integer entries \[0.7, 3.2\]"),
    ("03", TypeError, "got str '03'"),
    ([True, False], TypeError, r"non-integer entries \[True, False\]"),
    (3, TypeError, "got int 3"),
    ([0, 8], ValueError, r"distinct indices in \[0, 7\]"),
])
def test_subset_mixture_needs_a_sequence_of_int_indices(modes, exc, match):
    with pytest.raises(exc, match=match):
        subset_mixture(circle_mixture(), modes)


def test_subset_mixture_accepts_integer_arrays_and_dirichlet_checks_its_seed():
    import numpy as np
    mix = circle_mixture()
    assert torch.equal(subset_mixture(mix, np.array([0, 3])).weights, subset_mixture(mix, [0, 3]).weights)
    assert torch.equal(subset_mixture(mix, torch.tensor([0, 3])).weights, subset_mixture(mix, [0, 3]).weights)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, 2\*\*63\); got {bad}"):
            dirichlet_mixture(mix, seed=bad)


def test_dirichlet_alpha_errors_name_alpha():
    mix = circle_mixture()
    for bad in ("x", None, [1.0, "a"], True, float("nan"), (1.0, float("inf"))):
        with pytest.raises(ValueError, match=r"alpha must be a positive number or 2 positive numbers"):
            dirichlet_mixture(mix, n_active=2, alpha=bad)


def test_float64_means_draw_the_float32_points():
    """The noise was drawn with the means' dtype, and torch draws other numbers in float64: a
    mixture built from numpy's float64 means gave other points (0.5 apart) than the same mixture
    in float32 for the same seed, so its reference set was another draw."""
    m = circle_mixture()
    m64 = GaussianMixture(m.means.double().numpy(), m.weights.double().numpy(), m.std)
    x, labels = m.sample(100, 0)
    x64, labels64 = m64.sample(100, 0)
    assert x64.dtype == torch.float64 and torch.equal(labels64, labels)
    torch.testing.assert_close(x64.float(), x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(draw_references(m64, 50, seed=3).float(), draw_references(m, 50, seed=3),
                               rtol=1e-6, atol=1e-6)


def test_mixture_helpers_name_their_bad_arguments():
    """mode_radius('0.5') raised "'<' not supported between instances of 'int' and 'str'",
    with_weights('x') torch's "new(): invalid data type 'str'", and meta-device means
    "Tensor.item() cannot be called on meta tensors": none named the argument."""
    mix = circle_mixture()
    with pytest.raises(TypeError, match=r"quantile must be a number in \(0, 1\); got str '0.5'"):
        mix.mode_radius("0.5")
    with pytest.raises(TypeError, match=r"weights must be 8 non-negative numbers .*; got str 'x'"):
        mix.with_weights("x")
    with pytest.raises(ValueError, match=r"means is on device meta \(shape \(8, 2\)"):
        GaussianMixture(mix.means.to("meta"), torch.ones(8, device="meta"), 0.1)


def _ring_task(**kwargs):
    from mmdg_lite.denoisers import GaussianMixtureDenoiser
    from mmdg_lite.sampling import make_scheduler
    from mmdg_lite.toys import make_task

    den = GaussianMixtureDenoiser.from_mixture(circle_mixture(), make_scheduler("ddpm"))  # no model load
    return make_task("ring2d_4modes", denoiser=den, **kwargs)


def test_make_task_needs_six_heldout_points_for_evaluate():
    # n_heldout=2..5 was accepted, then evaluate raised density_coverage's "k must be smaller than ... got k=5"
    from mmdg_lite.toys import evaluate

    with pytest.raises(ValueError, match="n_heldout"):
        _ring_task(n_heldout=5)
    task = _ring_task(n_heldout=6)
    assert set(evaluate(task.heldout, task)) == {"tv", "off_mode", "fd", "kd", "density", "coverage"}
    task.heldout = task.heldout[:5]  # a task built by hand
    with pytest.raises(ValueError, match="held-out points, which needs at least 6"):
        evaluate(task.heldout, task)
    assert set(evaluate(task.heldout, task, full=False)) == {"tv", "off_mode"}


def test_make_task_checks_seed_range_and_denoiser():
    from mmdg_lite.denoisers import MLPDenoiser
    from mmdg_lite.toys import make_task

    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 9223372036854772807\]"):
        _ring_task(seed=2**63 - 1000)  # its held-out seed (seed + 3000) overflowed with a message naming that seed
    with pytest.raises(TypeError, match="denoiser must be callable"):
        make_task("gmm100d_4modes", denoiser="model")
    with pytest.raises(ValueError, match="denoiser has dim=2 but task 'gmm100d_4modes' has 100-D points"):
        make_task("gmm100d_4modes", denoiser=MLPDenoiser(2, hidden=4, layers=1))


def test_task_guidance_refuses_median_scale_with_a_kernel():
    # the kernel won and median_scale was silently dropped
    from mmdg_lite.kernels import GaussianKernel
    from mmdg_lite.toys import task_guidance

    task = _ring_task(n_references=10, n_heldout=6)
    with pytest.raises(ValueError, match="median_scale= .* or kernel=, not both"):
        task_guidance(task, median_scale=2.0, kernel=GaussianKernel(1.0))
    assert task_guidance(task, kernel=GaussianKernel(1.0)).kernel.bandwidth == 1.0
    assert task_guidance(task, median_scale=2.0).kernel.median_scale == 2.0


def test_mixture_weights_normalise_without_overflow():
    # float32 weights [3e38, 3e38, 1.5e38] summed to inf and normalised to all zeros, silently
    w = torch.tensor([3e38, 3e38, 1.5e38])
    mix = GaussianMixture(torch.zeros(3, 2), w, 1.0)
    assert torch.allclose(mix.weights, torch.tensor([0.4, 0.4, 0.2]))
    assert torch.allclose(circle_mixture(3).with_weights(w.double()).weights, torch.tensor([0.4, 0.4, 0.2]))


def test_dirichlet_default_alpha_says_it_fits_two_modes():
    # dirichlet_mixture(mix, 3) blamed an alpha the caller never passed
    with pytest.raises(ValueError, match=r"the default \(1.0, 10.0\) is the paper's 2-mode user"):
        dirichlet_mixture(circle_mixture(), n_active=3)
    assert int((dirichlet_mixture(circle_mixture(), n_active=3, alpha=1.0).weights > 0).sum()) == 3


@pytest.mark.parametrize("loader", ["load_or_train_toy_2d", "load_or_train_cond_2d"])
def test_retrain_with_a_folder_is_refused_before_training(loader, tmp_path, monkeypatch):
    # the folder was silently ignored: retrain=True trained in memory and wrote nothing there
    from mmdg_lite.toys import models

    def no_training(**_):
        raise AssertionError("trained, ignoring folder=")
    for name in ("train_toy_2d", "train_cond_2d"):
        monkeypatch.setattr(models, name, no_training)

    with pytest.raises(ValueError, match="retrain=True trains one in memory and writes nothing"):
        getattr(models, loader)(retrain=True, folder=tmp_path / "mine", progress=False)
    assert not (tmp_path / "mine").exists()


@pytest.mark.parametrize("trainer", ["train_toy_2d", "train_cond_2d"])
def test_train_recipes_refuse_unknown_overrides(trainer, monkeypatch):
    # train_toy_2d(step=100) ignored the typo and trained the full 6000 steps
    from mmdg_lite.toys import models

    def no_training(*_, **__):
        raise AssertionError("trained with an unknown override")
    monkeypatch.setattr(models, "train_denoiser", no_training)
    with pytest.raises(TypeError, match=r"unknown recipe key\(s\) \['step'\]; valid: .*'steps'"):
        getattr(models, trainer)(progress=False, step=100)


def test_seeded_draws_do_not_depend_on_the_default_dtype():
    """GaussianMixture.sample, random_mixture and PromptWorld.sample drew their noise in torch's
    default dtype: after torch.set_default_dtype(torch.float64) the same seeds gave other points
    (references 0.45 apart) and other random means."""
    from mmdg_lite.toys import toy_world

    world = toy_world()  # built in the default dtype: only the draws are compared

    def draws():
        return (draw_references(circle_mixture(), 20, seed=1), random_mixture(3, 50, seed=0).means,
                world.sample(["cat", "dog", "car"] * 2, 4)[0])

    before = torch.get_default_dtype()
    want = draws()
    torch.set_default_dtype(torch.float64)
    try:
        got = draws()
    finally:
        torch.set_default_dtype(before)
    for a, b in zip(want, got):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


def test_dirichlet_mixture_under_a_float64_default_dtype():
    """dirichlet_mixture filled float32 Dirichlet weights into torch.zeros(K) of the default dtype:
    after torch.set_default_dtype(torch.float64) it (and make_task('ring2d_dirichlet')) raised
    torch's 'Index put requires the source and destination dtypes match'."""
    want = dirichlet_mixture(circle_mixture(), seed=3).weights
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = dirichlet_mixture(circle_mixture(), seed=3).weights
    finally:
        torch.set_default_dtype(before)
    assert torch.equal(got.float(), want) and (want > 0).sum() == 2


@pytest.mark.parametrize("bad", [-1, True, 1.5, "0"])
def test_mixture_sample_names_a_bad_generator_as_generator(bad):
    # GaussianMixture.sample(n, generator=-1) was refused as 'seed must be an integer ... got -1', an argument
    # sample() does not have; the same seed given as an int or a seeded Generator still draws the same points
    ring = circle_mixture()
    assert torch.equal(ring.sample(5, 3)[0], ring.sample(5, make_generator(3))[0])
    with pytest.raises(ValueError, match=r"^generator must be a torch.Generator, a seed \(an integer in "
                                         r"\[0, 2\*\*63\)\) or None; got"):
        ring.sample(5, bad)
