"""The image adaptation experiment (notebooks 05/06, benchmarks/images.py) on a tiny budget."""
from __future__ import annotations

import math
import re

import pytest
import torch

from mmdg_lite import MMDGuidance
from mmdg_lite.images.adaptation import PRESETS, digits_task, run_method


@pytest.fixture(scope="module")
def task():
    return digits_task(n_refs=20, seed=0)


def test_references_and_targets_are_disjoint_held_out_thick_digits(task):
    assert task.references.shape == (20, 1, 16, 16)
    assert len(task.target_images) == 480  # the other held-out digits
    flat = lambda x: {tuple(v) for v in x.reshape(len(x), -1).numpy().round(4).tolist()}  # noqa: E731
    assert len(flat(task.references) & flat(task.target_images)) <= 2  # only duplicate scans
    assert task.has_style(task.references).float().mean() > 0.95


@pytest.mark.parametrize("n_refs,seed", [(50, 0), (23, 3)])
def test_stratified_references_cover_the_classes_evenly(n_refs, seed):
    """Read each reference's class from the held-out split itself (exact pixel match), not from a
    model: stratified draws have class counts that differ by at most one; a plain draw does not."""
    from mmdg_lite.images.digits import load_digit_set

    test = load_digit_set("test", style_fraction=1.0)
    label_of = {tuple(v): int(c) for v, c in zip(test.images.reshape(len(test), -1).numpy().round(4).tolist(),
                                                 test.labels)}

    def counts(t):
        flat = t.references.reshape(len(t.references), -1).numpy().round(4).tolist()
        return torch.bincount(torch.tensor([label_of[tuple(v)] for v in flat]), minlength=10)

    strat = digits_task(n_refs=n_refs, seed=seed)
    c = counts(strat)
    assert int(c.sum()) == n_refs and int(c.max() - c.min()) <= 1, c.tolist()
    plain = digits_task(n_refs=50, seed=0, stratified=False)
    assert int(counts(plain).max() - counts(plain).min()) > 5  # seed 0's random 50 are lopsided
    assert len(strat.references) + len(strat.target_images) == len(plain.references) + len(plain.target_images)
    assert not torch.equal(digits_task(n_refs=n_refs, seed=seed + 1).references, strat.references)
    assert torch.equal(digits_task(n_refs=n_refs, seed=seed).references, strat.references)


@pytest.mark.parametrize("method", ["unguided", "mmd", "classifier", "finetune"])
def test_every_method_runs_and_is_measured(task, method):
    before = {k: v.clone() for k, v in task.denoiser.unet.state_dict().items()}
    guidance = MMDGuidance(task.references, **PRESETS["digits"]["mmd x_t"]["guidance"]) if method == "mmd" else None
    r = run_method(task, method, n=6, num_steps=3, seed=0, guidance=guidance, classifier_steps=5,
                   finetune_steps=2)
    assert r.images.shape == (6, 1, 16, 16)
    assert 0 <= r.style_rate <= 1 and 0 <= r.valid_rate <= 1 and 0 <= r.class_tv <= 1
    assert math.isfinite(r.fd) and r.fd >= 0 and math.isfinite(r.kd)
    assert (r.setup_seconds > 0) == (method in ("classifier", "finetune"))
    after = task.denoiser.unet.state_dict()  # fine-tuning trains a copy: the shipped UNet is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in task.denoiser.unet.parameters())


def test_same_seed_same_samples_and_bad_method(task):
    a = run_method(task, "unguided", n=4, num_steps=3, seed=2)
    b = run_method(task, "unguided", n=4, num_steps=3, seed=2)
    assert torch.equal(a.images, b.images)
    with pytest.raises(ValueError, match="method"):
        run_method(task, "dreambooth", n=4)
    with pytest.raises(ValueError, match="guidance"):
        run_method(task, "mmd", n=4)
    # the baselines' knobs are named as the caller wrote them, before any sampling or training
    for kw, msg in ((dict(classifier_scale=-1.0), "classifier_scale must be a finite number >= 0; got -1.0"),
                    (dict(classifier_steps=0), "classifier_steps must be an integer >= 1; got 0"),
                    (dict(finetune_steps=0), "finetune_steps must be an integer >= 1; got 0"),
                    (dict(finetune_lr=0.0), "finetune_lr must be a finite number > 0; got 0.0")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            run_method(task, "classifier" if "classifier" in next(iter(kw)) else "finetune", n=4, **kw)


def test_eta_reaches_the_sampler(task):
    """run_method(eta=...) samples with DDIM's eta: the same samples as sample(eta=...) itself."""
    from mmdg_lite import sample

    r = run_method(task, "unguided", n=4, num_steps=3, seed=2, eta=1.0)
    direct = sample(task.denoiser, 4, task.shape, scheduler="ddim", num_steps=3, seed=2, eta=1.0).samples
    assert torch.equal(r.samples, direct)
    assert not torch.equal(r.samples, run_method(task, "unguided", n=4, num_steps=3, seed=2).samples)


def test_result_keeps_the_model_space_samples_its_images_decode_from():
    """Shapes: the latents come back beside the decoded images; decoding them again with the
    task's VAE gives exactly those images (so a study can re-decode them with another decoder)."""
    from mmdg_lite.images.adaptation import shapes_task
    from mmdg_lite.images.references import decode_latents

    shapes = shapes_task(n_refs=8, seed=0)
    r = run_method(shapes, "unguided", n=4, num_steps=3, seed=1)
    assert r.samples is not None and r.samples.shape == (4, 8, 8, 8)
    assert torch.equal(decode_latents(shapes.extra["vae"], r.samples), r.images)


def test_n_refs_is_validated():
    """n_refs must leave held-out targets (FD needs two): 1..498 of the 500 test digits."""
    from mmdg_lite.images.adaptation import shapes_task

    for bad in (-5, 0, 499, 10**6):
        with pytest.raises(ValueError, match=rf"n_refs must be an integer from 1 to 498.*got {bad}"):
            digits_task(n_refs=bad)
    for bad in (True, 2.5, "50"):
        with pytest.raises(TypeError, match="n_refs must be an integer from 1 to 498"):
            digits_task(n_refs=bad)
    t = digits_task(n_refs=498)
    assert len(t.references) == 498 and len(t.target_images) == 2
    for bad, err in ((0, ValueError), (-3, ValueError), (True, TypeError)):
        with pytest.raises(err, match="n_refs"):
            shapes_task(n_refs=bad)


def test_run_method_checks_n_seed_and_guidance_before_sampling(task, monkeypatch):
    import mmdg_lite.sampling as sampling

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the arguments were checked")

    monkeypatch.setattr(sampling, "sample", no_sampling)
    for kw, error, msg in ((dict(n=1), ValueError, "n must be an integer >= 2 (FD and KD"),
                           (dict(n=True), TypeError, "n must be an integer >= 2"),
                           (dict(n=4, seed=-1), ValueError, "seed must be an integer in [0, 2**63); got -1")):
        with pytest.raises(error, match=re.escape(msg)):
            run_method(task, "unguided", **kw)
    with pytest.raises(ValueError, match="guidance is used only by method='mmd'; got method='unguided'"):
        run_method(task, "unguided", n=4, guidance=MMDGuidance(task.references))
    one = digits_task(n_refs=1, seed=0)
    with pytest.raises(ValueError, match="method='classifier' .* needs at least 2; the task has 1"):
        run_method(one, "classifier", n=4)


def test_a_preset_dict_runs_as_its_guidance(task):
    """run_method(task, **PRESETS[...]) builds MMDGuidance(task.references, **preset['guidance'])."""
    preset = PRESETS["digits"]["mmd x0_hat"]
    a = run_method(task, n=4, num_steps=3, seed=1, **preset)
    b = run_method(task, "mmd", n=4, num_steps=3, seed=1, eta=preset["eta"],
                   guidance=MMDGuidance(task.references, **preset["guidance"]))
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, run_method(task, "unguided", n=4, num_steps=3, seed=1, eta=preset["eta"]).samples)


def test_task_seeds_and_flags_are_checked():
    from mmdg_lite.images.adaptation import shapes_task

    for bad in (True, -1, 2**70, 1.5):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            digits_task(n_refs=10, seed=bad)
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            shapes_task(n_refs=4, seed=bad)
    with pytest.raises(TypeError, match="stratified must be True or False; got 'no'"):
        digits_task(n_refs=10, stratified="no")


def test_shapes_task_never_draws_its_references_as_its_targets():
    # seed 1000 drew the references with the targets' own make_shapes seed (1000 + 1000 = 2000):
    # with n_refs=500 the references were the 500 held-out targets themselves
    from mmdg_lite.images import make_shapes
    from mmdg_lite.images.adaptation import shapes_task

    outlined = {"fill": {"outlined": 1.0}}
    assert torch.equal(make_shapes(500, outlined, seed=1000 + 1000).images, make_shapes(500, outlined, seed=2000).images)
    with pytest.raises(ValueError, match="seed 1000 draws the references with the held-out targets' own seed"):
        shapes_task(n_refs=500, seed=1000)
    task = shapes_task(n_refs=20, seed=999)  # its neighbours are untouched and hold none of the targets
    flat = task.target_images.flatten(1)
    assert not any(bool((flat == r.flatten()).all(1).any()) for r in task.reference_images)


@pytest.mark.parametrize("kw,match", [(dict(batch_size=0), "batch_size must be an integer >= 1"),
                                      (dict(scheduler="DDIM"), "scheduler must be one of"),
                                      (dict(eta=-1.0), "eta must be"),
                                      (dict(num_steps=0), "num_steps must be an integer >= 1"),
                                      (dict(scheduler="ddpm", eta=0.2), "DDPMScheduler.step takes no eta")])
def test_run_method_checks_the_sampler_arguments_before_training(monkeypatch, kw, match):
    # they were checked by the final sample(), after seconds of fine-tuning or classifier training
    import mmdg_lite.baselines as baselines
    from mmdg_lite.images.adaptation import digits_task, run_method

    def no_training(*args, **kwargs):
        raise AssertionError("nothing may train before the arguments are checked")
    monkeypatch.setattr(baselines, "finetune_denoiser", no_training)
    monkeypatch.setattr(baselines, "train_classifier", no_training)
    task = digits_task(20, 0)
    for method in ("finetune", "classifier"):
        with pytest.raises(ValueError, match=match):
            run_method(task, method, n=4, **kw)


def test_reference_size_takes_numpy_integers_like_channels():
    import numpy as np

    from mmdg_lite.images import references_from_tensors

    x = torch.rand(2, 3, 20, 20) * 2 - 1
    torch.testing.assert_close(references_from_tensors(x, np.int64(16), 3), references_from_tensors(x, 16, 3))


def test_finetune_puts_back_the_callers_requires_grad_flags(task):
    """run_method('finetune') unfroze the task's UNet for the copy and then froze every weight:
    a UNet the caller kept trainable (or partly frozen) came back fully frozen."""
    unet = task.denoiser.unet
    params = list(unet.parameters())
    before = [p.requires_grad for p in params]
    try:
        for i, p in enumerate(params):
            p.requires_grad_(i % 2 == 0)  # a partly frozen UNet
        want = [p.requires_grad for p in params]
        run_method(task, "finetune", n=2, num_steps=2, finetune_steps=1)
        assert [p.requires_grad for p in params] == want
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def test_density_and_coverage_are_reported_in_the_feature_space(task):
    """data/README.md and features.py said density and coverage of generated images are computed
    on the feature net's features, but run_method reported FD and KD only. The oracle: Naeem et
    al.'s definitions with scikit-learn's nearest neighbours on the same features."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    from mmdg_lite.images.features import image_features

    r = run_method(task, "unguided", n=8, num_steps=2, seed=0)
    real = image_features(task.target_images).double().numpy()
    fake = image_features(r.images).double().numpy()
    radii = NearestNeighbors(n_neighbors=6).fit(real).kneighbors(real)[0][:, -1]  # 5th other neighbour
    d = np.linalg.norm(fake[:, None] - real[None], axis=-1)  # (8, M)
    inside = d < radii[None]
    assert r.density == pytest.approx(inside.sum() / (5 * len(fake)), rel=1e-9)
    assert r.coverage == pytest.approx(inside.any(0).mean(), rel=1e-9)
    assert 0 < r.coverage <= 1


def test_run_method_refuses_references_outside_the_model_space_before_any_work(task, monkeypatch):
    """References of another size (28 px silhouettes for the 16 px digits UNet), channel count or
    layout are refused up front: fine-tuning the convolutional UNet on 28 px images ran without
    a word, and the classifier sampled its base set before failing on a flat reference set."""
    import dataclasses

    import mmdg_lite.baselines as baselines
    import mmdg_lite.sampling as sampling

    def no_work(*args, **kwargs):
        raise AssertionError("nothing may sample or train before the references are checked")
    for module, name in ((baselines, "finetune_denoiser"), (baselines, "train_classifier"), (sampling, "sample")):
        monkeypatch.setattr(module, name, no_work)
    refs = task.references  # (20, 1, 16, 16)
    for bad in (torch.nn.functional.interpolate(refs, size=28), refs.expand(-1, 3, -1, -1), refs.flatten(1),
                refs[:0]):
        bad_task = dataclasses.replace(task, references=bad)
        for method, kw in (("finetune", {}), ("classifier", {}), ("mmd", PRESETS["digits"]["mmd x0_hat"])):
            kw = {k: v for k, v in kw.items() if k != "method"}
            with pytest.raises(ValueError, match=re.escape("task.references must be a tensor (N, 1, 16, 16)")
                               + f".*got shape {re.escape(str(tuple(bad.shape)))}"):
                run_method(bad_task, method, n=4, **kw)


def test_finetune_runs_on_a_task_whose_denoiser_is_not_a_unet():
    """AdaptationTask takes any denoiser(x_t, t, cond), but run_method('finetune') read
    task.denoiser.unet: a task built on an MLPDenoiser failed with an AttributeError."""
    from mmdg_lite import MLPDenoiser
    from mmdg_lite.images.adaptation import AdaptationTask
    from mmdg_lite.images.shapes import make_shapes

    imgs = make_shapes(14, seed=3).images  # (14, 3, 32, 32)
    torch.manual_seed(0)
    den = MLPDenoiser(4, hidden=8, layers=1)
    den.in_proj.weight.requires_grad_(False)  # the caller's flags come back as they were
    before = {k: v.clone() for k, v in den.state_dict().items()}
    task = AdaptationTask("stub", den, (4,), torch.randn(6, 4) + 3, imgs[:6], imgs[6:],
                          decode=lambda z: imgs[:len(z)], has_style=lambda x: torch.ones(len(x), dtype=torch.bool),
                          is_valid=lambda x: torch.ones(len(x), dtype=torch.bool), style="any")
    plain = run_method(task, "unguided", n=4, num_steps=3)
    tuned = run_method(task, "finetune", n=4, num_steps=3, finetune_steps=3, finetune_lr=1e-2)
    assert tuned.setup_seconds > 0 and not torch.equal(tuned.samples, plain.samples)
    assert all(torch.equal(v, before[k]) for k, v in den.state_dict().items())  # a copy was trained
    assert [p.requires_grad for p in den.parameters()] == [n != "in_proj.weight" for n, _ in den.named_parameters()]


def test_classifier_run_names_a_seed_too_large_for_its_negatives():
    """The classifier's negatives are drawn with seed + 10_000: seed=2**63 - 1 passed run_method's
    check and sample() then refused 'seed ... got 9223372036854785807', a value never given."""
    from mmdg_lite.images.adaptation import AdaptationTask

    task = AdaptationTask("stub", lambda x, t, c=None: x, (4,), torch.randn(6, 4), torch.zeros(6, 3, 8, 8),
                          torch.zeros(6, 3, 8, 8), decode=lambda z: z, has_style=lambda x: x, is_valid=lambda x: x,
                          style="any")
    top = 2**63 - 1 - 10_000
    with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, {top}\] for method='classifier'.*"
                                         rf"got {2**63 - 1}$"):
        run_method(task, "classifier", n=4, seed=2**63 - 1)
