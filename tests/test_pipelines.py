"""MMD guidance inside diffusers pipelines: the callback, the scheduler-step wrapper, reference
and prompt encoding, on tiny SD / SDXL pipelines built from configs (random weights, offline)."""
from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

pytest.importorskip("transformers")

from diffusers import (EulerDiscreteScheduler, StableDiffusionPipeline,  # noqa: E402
                       StableDiffusionXLPipeline)

from mmdg_lite import MMDGuidance  # noqa: E402
from mmdg_lite.pipelines import (GuidedSchedulerStep, MMDGuidanceCallback, encode_images,  # noqa: E402
                                 pipeline_guidance, prompt_features, sample_prompt_features,
                                 tiny_sd_pipeline, tiny_sdxl_pipeline)
from mmdg_lite.pipelines.tiny import tiny_components  # noqa: E402

PROMPT = "a red circle"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny SD and SDXL pipelines, built once and saved (diffusers format) for round trips."""
    root = tmp_path_factory.mktemp("pipes")
    sd, sdxl = tiny_sd_pipeline(), tiny_sdxl_pipeline()
    sd.save_pretrained(root / "sd")
    sdxl.save_pretrained(root / "sdxl")
    return {"sd": (sd, root / "sd"), "sdxl": (sdxl, root / "sdxl")}


def _load(saved, name, **kw):
    cls = StableDiffusionPipeline if name == "sd" else StableDiffusionXLPipeline
    pipe = cls.from_pretrained(saved[name][1], local_files_only=True, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd(saved):
    return _load(saved, "sd")


def red_images(n=8):
    x = -torch.ones(n, 3, 32, 32)
    x[:, 0, 8:24, 8:24] = 0.9  # a red square on black
    return x


def run(pipe, cb=None, *, cfg=3.0, n=4, steps=6, seed=0, prompt=PROMPT, **kw):
    return pipe([prompt] * n if isinstance(prompt, str) else prompt, num_inference_steps=steps,
                guidance_scale=cfg, generator=torch.Generator().manual_seed(seed), output_type="latent",
                callback_on_step_end=cb, height=32, width=32, **kw).images


def dist_to(z, refs):
    """Mean distance of the samples to the references' mean (the random-weight UNets leave the
    samples far from any reference, where a kernel MMD saturates)."""
    z, refs = z.float().reshape(len(z), -1), refs.float().reshape(len(refs), -1)
    return float((z - refs.mean(0)).norm(dim=1).mean())


class Spy:
    """A guidance hook that records each state and delegates to an inner hook (or returns x_prev)."""

    def __init__(self, inner=None, eval_point="x_t"):
        self.inner, self.eval_point, self.states, self.resets = inner, eval_point, [], 0
        self.sequential = False

    def reset(self):
        self.resets += 1
        self.states.clear()
        if self.inner is not None:
            self.inner.reset()

    def __call__(self, state):
        self.states.append(state)
        return state.x_prev if self.inner is None else self.inner(state)


# --- round trip, encoding ---------------------------------------------------------------------

def test_saved_pipelines_round_trip(saved, sd):
    built = saved["sd"][0]
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(built, name).state_dict(), getattr(sd, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sd.tokenizer(PROMPT).input_ids == built.tokenizer(PROMPT).input_ids
    assert type(_load(saved, "sdxl").scheduler) is EulerDiscreteScheduler


def test_scaling_factor_is_applied_exactly_once(sd):
    images = red_images(3)
    z = encode_images(sd, images)
    with torch.no_grad():  # oracle: the VAE's posterior mean, times the factor once
        mean = sd.vae.encode(images).latent_dist.mean
    factor = sd.vae.config.scaling_factor
    assert factor != 1.0
    assert torch.allclose(z, mean * factor, atol=1e-6)
    assert not torch.allclose(z, mean * factor**2, atol=1e-3)
    # decoding as the pipeline does (latents / factor) gives back the VAE's reconstruction
    with torch.no_grad():
        assert torch.allclose(sd.vae.decode(z / factor).sample, sd.vae.decode(mean).sample, atol=1e-5)


def test_prompt_features_pooled_and_normalised(sd, saved):
    f = prompt_features(sd, [PROMPT, "a blue square", PROMPT])
    assert f.shape == (3, 32) and f.dtype == torch.float32
    assert torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(f[0], f[2]) and not torch.allclose(f[0], f[1], atol=1e-3)
    with torch.no_grad():  # oracle: the text encoder's pooled output, normalised
        ids = sd.tokenizer([PROMPT], padding="max_length", max_length=sd.tokenizer.model_max_length,
                           return_tensors="pt").input_ids
        pooled = sd.text_encoder(ids).pooler_output
    assert torch.allclose(f[0], torch.nn.functional.normalize(pooled, dim=-1)[0], atol=1e-5)
    s = sample_prompt_features(sd, [PROMPT, "a blue square"], num_images_per_prompt=2)
    assert torch.equal(s, f[[0, 0, 1, 1]])
    xl = prompt_features(saved["sdxl"][0], [PROMPT, "a blue square"])  # two encoders, 32 + 32
    assert xl.shape == (2, 64) and torch.allclose(xl.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(xl[:, :32].norm(dim=1), torch.full((2,), 2 ** -0.5), atol=1e-5)


# --- the callback -------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [1.0, 3.0], ids=["no_cfg", "cfg"])
def test_callback_pulls_latents_toward_references(sd, cfg):
    refs = encode_images(sd, red_images())
    base = run(sd, cfg=cfg)
    g = MMDGuidance(refs, strength=1.0, stop=1.0)
    guided = run(sd, MMDGuidanceCallback(g).watch(sd), cfg=cfg)
    assert guided.shape == base.shape and torch.isfinite(guided).all()
    assert dist_to(guided, refs) < 0.9 * dist_to(base, refs)


@pytest.fixture(scope="module")
def embedded():
    from mmdg_lite.pipelines.adapt import EMBEDDED_PIPELINE

    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_PIPELINE, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("cfg", [1.0, 3.0], ids=["no_cfg", "cfg"])
def test_embedded_pipeline_callback_moves_the_style(embedded, cfg):
    """The shipped text-to-image pipeline, guided through the callback with its untuned defaults
    toward outlined red circles: the detector finds more outlined images than unguided."""
    from mmdg_lite.images import detect_shapes, make_shapes
    from mmdg_lite.pipelines.adapt import generate

    refs = make_shapes(40, {"shape": {"circle": 1.0}, "fill": {"outlined": 1.0}, "colour": {"red": 1.0}},
                       seed=11).images
    g = MMDGuidance(encode_images(embedded, refs))
    kw = dict(steps=20, guidance_scale=cfg, seed=0, progress=False)
    base, _ = generate(embedded, ["a red circle"], 12, **kw)
    guided, _ = generate(embedded, ["a red circle"], 12, guidance=g, **kw)
    rate = lambda im: float((detect_shapes(im).attributes["fill"] == 1).float().mean())  # noqa: E731
    assert torch.isfinite(guided).all() and rate(guided) >= rate(base) + 0.25, (rate(base), rate(guided))


def test_callback_x_t_is_the_previous_latents(sd):
    """x_t at step 0 is the pipeline's initial latents, then the latents the callback returned."""
    spy = Spy(MMDGuidance(encode_images(sd, red_images()), strength=0.5))
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    cb = MMDGuidanceCallback(spy).watch(sd)
    outs = []
    orig = cb.callback_fn

    def record(*a):
        out = orig(*a)
        outs.append(out["latents"])
        return out

    cb.callback_fn = record
    run(sd, cb, n=2, steps=4, latents=latents)
    assert spy.resets == 1 and len(spy.states) == 4
    assert torch.equal(spy.states[0].x_t, latents * sd.scheduler.init_noise_sigma)
    for k in range(1, 4):
        assert torch.equal(spy.states[k].x_t, outs[k - 1])
    assert [s.step_index for s in spy.states] == [0, 1, 2, 3]
    # without watch(), the latents= given to the pipeline serve as x_t at step 0
    spy2 = Spy()
    run(sd, MMDGuidanceCallback(spy2, initial_latents=latents), n=2, steps=2, latents=latents)
    assert torch.equal(spy2.states[0].x_t, latents * sd.scheduler.init_noise_sigma)


def test_strength_zero_reproduces_unguided_images_exactly(sd):
    refs = encode_images(sd, red_images())
    kw = dict(n=2, steps=4)
    base = sd([PROMPT] * 2, num_inference_steps=4, generator=torch.Generator().manual_seed(1),
              output_type="np", height=32, width=32).images
    for point in ("x_t", "x_prev"):
        cb = MMDGuidanceCallback(MMDGuidance(refs, strength=0.0, eval_point=point)).watch(sd)
        same = sd([PROMPT] * 2, num_inference_steps=4, generator=torch.Generator().manual_seed(1),
                  output_type="np", height=32, width=32, callback_on_step_end=cb).images
        assert (same == base).all()
    with GuidedSchedulerStep(sd, MMDGuidance(refs, strength=0.0, eval_point="x0_hat")):
        assert torch.equal(run(sd, seed=1, **kw), run(sd, seed=1, **kw))
    assert torch.equal(run(sd, seed=1, **kw), run(sd, seed=1, **kw))
    assert not torch.equal(run(sd, seed=1, **kw), run(sd, seed=2, **kw))  # the check can fail


def test_callback_refuses_what_it_cannot_do(sd):
    refs = encode_images(sd, red_images(2))
    with pytest.raises(ValueError, match="GuidedSchedulerStep"):
        MMDGuidanceCallback(MMDGuidance(refs, eval_point="x0_hat"))
    with pytest.raises(ValueError, match="generated_set='batch'"):
        MMDGuidanceCallback(MMDGuidance(refs, generated_set="memory"))
    with pytest.raises(RuntimeError, match="watch"):  # x_t at step 0 unknown
        run(sd, MMDGuidanceCallback(MMDGuidance(refs)), n=1, steps=2)


def test_references_in_another_scale_or_with_the_wrong_channels_are_refused(sd):
    """0-255 float images were encoded silently; latents with channels the UNet does not take
    failed only at sampling."""
    pixels = (red_images(2) + 1) * 127.5
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\].*got values in \[0, 242.2\]"):
        encode_images(sd, pixels)
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\]"):
        encode_images(sd, pixels.to(torch.uint8))
    with pytest.raises(ValueError, match=r"references must be in \[-1, 1\].*got values in \[0, 242.2\]"):
        pipeline_guidance(sd, pixels)
    refs = encode_images(sd, red_images(2))  # (2, 4, 16, 16)
    assert torch.equal(pipeline_guidance(sd, refs).references, refs)
    assert encode_images(sd, red_images(2) * 1.2).shape == refs.shape  # overshoot is still encoded
    with pytest.raises(ValueError, match=r"references has 8 channel\(s\) \(shape \(2, 8, 16, 16\)\) but the "
                                         r"pipeline's latents have 4"):
        pipeline_guidance(sd, refs.repeat(1, 2, 1, 1))


def test_generate_takes_one_prompt_as_a_str_and_checks_the_count(sd):
    from mmdg_lite.pipelines.adapt import generate

    images, _ = generate(sd, PROMPT, 1, steps=2, progress=False, size=32)
    assert images.shape == (1, 3, 32, 32)  # was 12 images, one per character
    listed, _ = generate(sd, [PROMPT], 1, steps=2, progress=False, size=32)
    assert torch.equal(images, listed)
    with pytest.raises(ValueError, match="num_images_per_prompt must be an integer >= 1; got 0"):
        generate(sd, [PROMPT], 0, steps=2, progress=False, size=32)
    with pytest.raises(ValueError, match="prompts must be a non-empty list of strings"):
        generate(sd, [], 1, steps=2, progress=False, size=32)


# --- the scheduler-step wrapper --------------------------------------------------------------

def test_step_wrapper_keeps_signature_and_sees_x_t_and_cfg_noise(sd):
    sig = inspect.signature(sd.scheduler.step)
    spy = Spy(eval_point="x0_hat")
    unet_calls = []  # oracle: the UNet's own inputs and outputs (2B rows under CFG)
    hook = sd.unet.register_forward_hook(
        lambda mod, args, out: unet_calls.append((args[0].clone(), out[0].clone())))
    try:
        with GuidedSchedulerStep(sd, spy) as wrapper:
            assert inspect.signature(sd.scheduler.step) == sig
            assert set(sd.prepare_extra_step_kwargs(None, 0.0)) == {"eta", "generator"}
            run(sd, n=2, steps=3, cfg=4.0)
    finally:
        hook.remove()
    assert wrapper.scheduler is sd.scheduler and "step" not in sd.scheduler.__dict__
    assert len(spy.states) == 3 and len(unet_calls) == 3 and spy.resets == 1
    for s, (model_in, out) in zip(spy.states, unet_calls):
        uncond, text = out.chunk(2)
        assert torch.allclose(s.eps, uncond + 4.0 * (text - uncond), atol=1e-6)  # B rows, combined
        assert torch.equal(s.x_t, model_in[:2])  # DDIM: scale_model_input is the identity
        # Tweedie from the state equals the scheduler's own x0 prediction (DDIM, eta 0)
        ab = s.alpha_bar_t
        x0 = (s.x_t - math.sqrt(1 - ab) * s.eps) / math.sqrt(ab)
        assert torch.allclose(x0, sd.scheduler.step(s.eps, s.t, s.x_t).pred_original_sample, atol=1e-4)


def test_step_wrapper_x0_hat_guides_and_resets_per_run(sd):
    refs = encode_images(sd, red_images())
    g = MMDGuidance(refs, strength=1.0, eval_point="x0_hat", stop=1.0)
    base = run(sd)
    with GuidedSchedulerStep(sd, Spy(g, "x0_hat")) as w:
        first = run(sd)
        second = run(sd)  # a second run resets the guidance (same result)
        assert w.guidance.resets == 2
    assert torch.equal(first, second) and not torch.equal(first, base)
    assert "step" not in sd.scheduler.__dict__


# --- Euler-type (sigma-scaled) schedulers ------------------------------------------------------

def test_euler_state_uses_sigma_scaling(saved):
    pipe = _load(saved, "sd")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    spy = Spy(eval_point="x0_hat")
    with GuidedSchedulerStep(pipe, spy):
        run(pipe, n=2, steps=3)
    sched = pipe.scheduler
    for k, s in enumerate(spy.states):
        sigma = float(sched.sigmas[k])
        assert math.isclose(s.input_scale, 1 / math.sqrt(sigma**2 + 1), rel_tol=1e-6)
        assert math.isclose(s.alpha_bar_t, 1 / (1 + sigma**2), rel_tol=1e-6)
        sched._step_index = k  # oracle: scale_model_input's own factor at this step
        x = torch.ones(1, 4, 2, 2)
        assert torch.allclose(sched.scale_model_input(x, s.t), x * s.input_scale)
        # Tweedie in sigma-scaled space: x0 = x_t - sigma eps equals the guidance's point
        a = s.input_scale / math.sqrt(s.alpha_bar_t)
        z = a * s.x_t - math.sqrt((1 - s.alpha_bar_t) / s.alpha_bar_t) * s.eps
        assert torch.allclose(z, s.x_t - sigma * s.eps, atol=1e-4)
    refs = encode_images(pipe, red_images())
    base = run(pipe)
    guided = run(pipe, MMDGuidanceCallback(MMDGuidance(refs, strength=1.0, stop=1.0)).watch(pipe))
    assert dist_to(guided, refs) < 0.9 * dist_to(base, refs)


# --- SDXL, prompt-aware --------------------------------------------------------------------------

def test_sdxl_prompt_aware_callback(saved):
    pipe = saved["sdxl"][0]
    prompts = [PROMPT, "a blue square"]
    blue = -torch.ones(4, 3, 32, 32)
    blue[:, 2, 8:24, 8:24] = 0.9
    images = torch.cat([red_images(4), blue])
    g = pipeline_guidance(pipe, images, reference_prompts=[PROMPT] * 4 + ["a blue square"] * 4,
                          prompts=prompts, num_images_per_prompt=2, strength=1.0, stop=1.0)
    base = pipe(prompts, num_images_per_prompt=2, num_inference_steps=6, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(0), output_type="latent").images
    guided = pipe(prompts, num_images_per_prompt=2, num_inference_steps=6, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0), output_type="latent",
                  callback_on_step_end=MMDGuidanceCallback(g).watch(pipe)).images
    assert guided.shape == (4, 4, 16, 16) and torch.isfinite(guided).all()
    refs = g.references
    for rows, ref_rows in (([0, 1], slice(0, 4)), ([2, 3], slice(4, 8))):  # each prompt its own refs
        assert dist_to(guided[rows], refs[ref_rows]) < dist_to(base[rows], refs[ref_rows])


def test_sdxl_step_wrapper_x0_hat_sees_the_cfg_noise_and_guides(saved):
    """SDXL (Euler, sigma-scaled latents, two text encoders, added time ids): the scheduler-step
    wrapper keeps the step signature, sees B rows of CFG-combined noise (oracle: the UNet's own
    outputs) and x0_hat guidance moves each prompt toward its references."""
    pipe = _load(saved, "sdxl")
    prompts = [PROMPT, "a blue square"]
    blue = -torch.ones(4, 3, 32, 32)
    blue[:, 2, 8:24, 8:24] = 0.9
    images = torch.cat([red_images(4), blue])
    kw = dict(num_images_per_prompt=2, num_inference_steps=6, guidance_scale=5.0, output_type="latent")
    sig = inspect.signature(pipe.scheduler.step)
    spy = Spy(eval_point="x0_hat")
    unet_out = []
    hook = pipe.unet.register_forward_hook(lambda mod, args, out: unet_out.append(out[0].clone()))
    try:
        with GuidedSchedulerStep(pipe, spy):
            assert inspect.signature(pipe.scheduler.step) == sig
            pipe(prompts, generator=torch.Generator().manual_seed(0), **kw)
    finally:
        hook.remove()
    assert len(spy.states) == 6 == len(unet_out)
    for s, out in zip(spy.states, unet_out):
        uncond, text = out.chunk(2)
        assert torch.allclose(s.eps, uncond + 5.0 * (text - uncond), atol=1e-5)
        assert s.input_scale < 1.0  # sigma-scaled: 1 / sqrt(sigma^2 + 1)
    g = pipeline_guidance(pipe, images, reference_prompts=[PROMPT] * 4 + ["a blue square"] * 4,
                          prompts=prompts, num_images_per_prompt=2, strength=1.0, stop=1.0,
                          eval_point="x0_hat")
    base = pipe(prompts, generator=torch.Generator().manual_seed(0), **kw).images
    with GuidedSchedulerStep(pipe, g):
        guided = pipe(prompts, generator=torch.Generator().manual_seed(0), **kw).images
    assert "step" not in pipe.scheduler.__dict__ and torch.isfinite(guided).all()
    refs = g.references
    for rows, ref_rows in (([0, 1], slice(0, 4)), ([2, 3], slice(4, 8))):
        assert dist_to(guided[rows], refs[ref_rows]) < dist_to(base[rows], refs[ref_rows])


# --- half precision --------------------------------------------------------------------------------

def test_float16_pipeline_guides_in_float32_without_nan(saved):
    pipe = _load(saved, "sd", torch_dtype=torch.float16)
    # trailing spacing starts at t = 999: sigma_max = 14.6, the largest sigma-scaled latents
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    images = red_images(4)
    refs = encode_images(pipe, images)  # float16 VAE
    assert refs.dtype == torch.float32 and torch.isfinite(refs).all()
    assert torch.allclose(refs, encode_images(_load(saved, "sd"), images), atol=0.05)
    # the hazard is real: squared distances of sigma-scaled latents overflow in float16
    x_T = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    pipe.scheduler.set_timesteps(3)
    x_T = (x_T * pipe.scheduler.init_noise_sigma).half()
    assert not torch.isfinite(((x_T[:, None] - x_T[None]) ** 2).sum(dim=(2, 3, 4))).all()
    g = MMDGuidance(refs, strength=1.0, stop=1.0, track=True)
    out = run(pipe, MMDGuidanceCallback(g).watch(pipe), n=2, steps=3, cfg=1.0)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert len(g.history) == 3 and all(math.isfinite(h["grad_norm"]) for h in g.history)
    assert not torch.equal(out, run(pipe, n=2, steps=3, cfg=1.0))


# --- the embedded pipeline's build script and the pairing experiment ---------------------------

def test_train_script_tiny_builds_a_loadable_pipeline(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_sd_pipeline.py"
    spec = importlib.util.spec_from_file_location("train_sd_pipeline", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    info = script.build(tmp_path / "pipe", tiny=True)
    assert json.loads((tmp_path / "pipe" / "training.json").read_text())["recipe"]["steps"] == info["recipe"]["steps"]
    from mmdg_lite.cli import _check_sha256

    assert _check_sha256(tmp_path / "pipe") == ("sha256 ok", False)  # mmdg info checks each weights file
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.sample_size == 8 and pipe.vae.config.scaling_factor != 1.0

    from mmdg_lite.pipelines.pairing import METHODS, pairing_task, run_pairing

    task = pairing_task(pipe, n_refs=4)
    assert task.reference_latents.shape == (8, 4, 8, 8) and len(task.reference_captions) == 8
    for method in METHODS:
        r = run_pairing(pipe, task, method, per_prompt=1, steps=2)
        assert r["images"].shape == (4, 3, 32, 32) and 0 <= r["circle->outlined"] <= 1


def test_embedded_pipeline_pooled_prompts_separate_shape_and_colour():
    """The prompt-aware kernel of notebook 07 reads the pooled text features; the build's pooled
    caption loss makes them name both words. Without it a build kept colour and lost shape
    ("a red circle" 0.17 from "a red square", 1.50 from "a blue circle")."""
    from mmdg_lite.images.shapes import CAPTIONS, caption_labels
    from mmdg_lite.pipelines.adapt import EMBEDDED_PIPELINE

    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_PIPELINE, local_files_only=True)
    f = prompt_features(pipe, list(CAPTIONS))  # (12, 32), unit rows
    d = torch.cdist(f, f)
    labels = caption_labels(CAPTIONS)
    same_shape = labels["shape"][:, None] == labels["shape"][None]
    same_colour = labels["colour"][:, None] == labels["colour"][None]
    assert d[same_shape & ~same_colour].min() > 0.8  # colour alone moves a prompt
    assert d[same_colour & ~same_shape].min() > 0.8  # shape alone moves a prompt
    # nearest-centroid read-out of each word from the pooled features alone
    for attr in ("shape", "colour"):
        centroids = torch.stack([f[labels[attr] == k].mean(0) for k in labels[attr].unique()])
        assert torch.equal(torch.cdist(f, centroids).argmin(1), labels[attr])


# --- schedulers guidance cannot run through; hooks that undo exactly what they did ------------

@pytest.mark.parametrize("name,point,why", [
    ("PNDMScheduler", "x_prev", "repeats timesteps"),
    ("HeunDiscreteScheduler", "x_t", "repeats timesteps"),
    ("UniPCMultistepScheduler", "x_prev", "corrector rebuilds"),
    ("LMSDiscreteScheduler", "x_t", "fourth-order history"),
    ("KDPM2AncestralDiscreteScheduler", "x_prev", "second stage rebuilds"),
    ("DPMSolverSinglestepScheduler", "x0_hat", "stored at the first step of each pair"),
])
def test_schedulers_guidance_cannot_run_through_are_refused(saved, name, point, why):
    """PNDM / Heun reset the guidance mid-run (a repeated timestep looks like a new run), UniPC's
    corrector undoes the correction, LMS diverges with x_t; each ran without an error."""
    import diffusers

    pipe = _load(saved, "sd")
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    refs = encode_images(pipe, red_images(4))
    g = MMDGuidance(refs, eval_point=point)
    with pytest.raises(ValueError, match=rf"MMD guidance cannot run through {name}: .*{why}.*DDIMScheduler"):
        if point == "x0_hat" or (point == "x_t" and name == "LMSDiscreteScheduler"):
            GuidedSchedulerStep(pipe, g)  # refused when it is built
        else:
            with MMDGuidanceCallback(g).watch(pipe) as cb:
                run(pipe, cb, n=2, steps=4)
    assert "step" not in pipe.scheduler.__dict__


def test_lms_with_x_prev_still_runs(saved):
    from diffusers import LMSDiscreteScheduler

    pipe = _load(saved, "sd")
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    refs = encode_images(pipe, red_images(4))
    with MMDGuidanceCallback(MMDGuidance(refs, eval_point="x_prev")).watch(pipe) as cb:
        out = run(pipe, cb, n=2, steps=4)
    assert torch.isfinite(out).all() and "prepare_latents" not in pipe.__dict__


def test_a_chained_x0_hat_hook_goes_through_the_step_wrapper(sd):
    """generate() read only the outer hook's eval_point: a ChainedGuidance of x0_hat hooks ran
    through the callback, where eps is unknown (zeros), so its x0_hat was x_t / sqrt(abar)."""
    from mmdg_lite.guidance import ChainedGuidance
    from mmdg_lite.pipelines.adapt import generate

    refs = encode_images(sd, red_images(4))
    spy = Spy(MMDGuidance(refs, eval_point="x0_hat"), eval_point="x0_hat")
    generate(sd, PROMPT, 2, steps=3, guidance=ChainedGuidance(spy), progress=False, size=32)
    assert len(spy.states) == 3 and all(float(s.eps.abs().max()) > 0 for s in spy.states)
    with pytest.raises(ValueError, match="GuidedSchedulerStep"):
        MMDGuidanceCallback(ChainedGuidance(MMDGuidance(refs, eval_point="x0_hat")))


def test_sample_prompts_must_match_the_pipeline_batch(sd):
    refs = encode_images(sd, red_images(4))
    g = pipeline_guidance(sd, refs, reference_prompts=[PROMPT, "a blue square"] * 2,
                          prompts=[PROMPT, "a blue square"], num_images_per_prompt=2)  # 4 sample prompts
    before = sd.__dict__.get("prepare_latents")  # (earlier tests' callbacks may still watch sd)
    with MMDGuidanceCallback(g).watch(sd) as cb:
        with pytest.raises(ValueError, match="sample_prompts has 4 rows but the pipeline's batch has 2 latents"):
            run(sd, cb, n=2, steps=2)  # 2 x 1 images
        run(sd, cb, prompt=[PROMPT, "a blue square"], num_images_per_prompt=2, steps=2)  # these 4 rows: fine
    assert sd.__dict__.get("prepare_latents") is before


def test_hooks_undo_exactly_their_own_patch(sd):
    refs = encode_images(sd, red_images(2))
    sched = sd.scheduler
    outer = GuidedSchedulerStep(sd, Spy(eval_point="x0_hat"))
    inner_spy = Spy(eval_point="x0_hat")
    inner = GuidedSchedulerStep(sd, inner_spy)
    outer.restore()  # out of order: the inner wrapper stays installed and working
    run(sd, n=2, steps=2)
    assert len(inner_spy.states) == 2
    inner.restore()
    assert "step" not in sched.__dict__

    def mine(*args, **kwargs):
        return type(sched).step(sched, *args, **kwargs)

    sched.step = mine  # a user's own patch survives a wrapper built and removed on top of it
    GuidedSchedulerStep(sd, Spy(eval_point="x0_hat")).restore()
    assert sched.__dict__["step"] is mine
    del sched.step

    before = sd.__dict__.get("prepare_latents")  # (earlier tests' callbacks may still watch sd)
    cb1 = MMDGuidanceCallback(MMDGuidance(refs)).watch(sd)
    cb2 = MMDGuidanceCallback(MMDGuidance(refs)).watch(sd)
    cb1.unwatch()
    run(sd, n=2, steps=1)
    assert cb1._prepared is None and cb2._prepared is not None  # cb1 no longer records
    cb2.unwatch()  # out of order: nothing of either is left on the pipeline
    assert sd.__dict__.get("prepare_latents") is before


def test_generate_checks_steps_seed_and_cfg_scale_by_name(sd):
    """steps=0 raised ZeroDivisionError, steps=2.5 IndexError, seed='a' int()'s message."""
    from mmdg_lite.pipelines.adapt import generate

    for kw, error, msg in ((dict(steps=0), ValueError, "steps must be an integer >= 1; got 0"),
                           (dict(steps=2.5), TypeError, "steps must be an integer >= 1"),
                           (dict(seed="a"), ValueError, "seed must be an integer in [0, 2**63); got 'a'"),
                           (dict(guidance_scale=-1.0), ValueError, "guidance_scale must be a finite number >= 0")):
        with pytest.raises(error, match=re.escape(msg)):
            generate(sd, PROMPT, 1, progress=False, size=32, **{"steps": 2, **kw})
    with pytest.raises(TypeError, match="initial_latents must be the latents tensor"):
        MMDGuidanceCallback(MMDGuidance(encode_images(sd, red_images(2))), initial_latents=[1, 2])


def test_load_references_passes_fit_and_recursive(sd, tmp_path):
    from PIL import Image

    from mmdg_lite.pipelines import load_references

    (tmp_path / "sub").mkdir()
    Image.new("RGB", (64, 32), (255, 255, 255)).save(tmp_path / "wide.png")
    Image.new("RGB", (32, 32), (255, 255, 255)).save(tmp_path / "sub" / "square.png")
    assert load_references(sd, tmp_path).shape == (1, 3, 32, 32)
    both = load_references(sd, tmp_path, recursive=True, fit="pad")
    assert both.shape == (2, 3, 32, 32)
    padded = both[1]  # "wide.png" sorts after "sub/square.png"
    assert float(padded[:, :8].max()) == -1.0 and float(padded[:, 8:24].min()) == 1.0  # black bands


def test_generate_keeps_the_users_progress_bar_settings_and_features_take_one_str(sd):
    from mmdg_lite.pipelines import prompt_features
    from mmdg_lite.pipelines.adapt import generate
    from mmdg_lite.pipelines.hooks import scheduler_noise_level

    sd.set_progress_bar_config(desc="mine", disable=True)
    generate(sd, PROMPT, 1, steps=2, progress=False, size=32)
    assert sd._progress_bar_config == {"desc": "mine", "disable": True}  # was replaced by {"disable": ...}
    assert torch.equal(prompt_features(sd, PROMPT), prompt_features(sd, [PROMPT]))
    sd.scheduler.set_timesteps(5)
    assert scheduler_noise_level(sd.scheduler, 5)[0] > scheduler_noise_level(sd.scheduler, 4)[0]  # the end
    for bad in (6, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"index must be an integer from 0 to 5 .*got {bad!r}"):
            scheduler_noise_level(sd.scheduler, bad)


@pytest.mark.parametrize("dtype,expected", [("float16", torch.float16), ("bf16", torch.bfloat16),
                                            ("torch.float32", torch.float32), (torch.float64, torch.float64)])
def test_load_pipeline_takes_a_dtype_or_its_name(saved, dtype, expected):
    from mmdg_lite.pipelines.adapt import load_pipeline
    # a str used to reach diffusers, which ignored it and loaded float32 without a word
    pipe = load_pipeline(saved["sd"][1], device="cpu", dtype=dtype)
    assert pipe.unet.dtype == expected and pipe.vae.dtype == expected


@pytest.mark.parametrize("kw,match", [(dict(dtype="float8"), r"dtype must be .*got 'float8'"),
                                      (dict(dtype=torch.int8), r"dtype must be .*got torch.int8"),
                                      (dict(device="gpu"), r"device must be .*got 'gpu'")])
def test_load_pipeline_names_a_bad_dtype_or_device(saved, kw, match):
    from mmdg_lite.pipelines.adapt import load_pipeline
    with pytest.raises(ValueError, match=match):
        load_pipeline(saved["sd"][1], **kw)


# ---------------------------------------------------------------- found by an outside probe

def test_encoding_follows_a_vae_with_latents_mean_and_std_as_the_sdxl_pipeline_decodes():
    # Playground-v2.5-style VAEs: the SDXL pipeline decodes latents * std / f + mean, so the UNet's
    # space is (E(x) - mean) * f / std; references were f * E(x), off by up to 4 per coordinate
    from mmdg_lite.images import decode_latents, make_shapes

    pipe = tiny_sdxl_pipeline()
    mean, std = [0.5, -0.3, 0.2, 0.1], [0.8, 1.2, 0.9, 1.1]
    pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
    x = make_shapes(2, seed=0).images
    m, s, f = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1), pipe.vae.config.scaling_factor
    with torch.no_grad():
        e = pipe.vae.encode(x).latent_dist.mean
    z = encode_images(pipe, x)
    torch.testing.assert_close(z, (e - m) * f / s)
    seen = {}
    decode = pipe.vae.decode

    def spy(latents, *a, **k):  # what the pipeline itself hands the decoder
        seen["in"] = latents.clone()
        return decode(latents, *a, **k)
    pipe.vae.decode = spy
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    pipe("a red circle", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen["in"], out * s / f + m)  # the oracle's formula is the pipeline's
    pipe.vae.decode = decode
    with torch.no_grad():
        torch.testing.assert_close(decode_latents(pipe.vae, z), pipe.vae.decode(e).sample.clamp(-1, 1))


def test_generate_refuses_guidance_built_for_other_prompts_or_sizes(sd):
    from mmdg_lite.images import make_shapes
    from mmdg_lite.pipelines import pipeline_guidance
    from mmdg_lite.pipelines.adapt import generate

    refs = make_shapes(4, seed=0).images
    g = pipeline_guidance(sd, refs, reference_prompts=["a red circle", "a blue square"] * 2,
                          prompts=["a red circle", "a blue square"], num_images_per_prompt=2)
    for prompts, n in ((["a blue square", "a red circle"], 2), (["a red circle", "a blue square"] * 2, 1)):
        with pytest.raises(ValueError, match="built for other sample prompts"):  # they ran, pulled the wrong way
            generate(sd, prompts, n, guidance=g, steps=2, progress=False)
    assert generate(sd, ["a red circle", "a blue square"], 2, guidance=g, steps=2, progress=False)[0].shape[0] == 4
    with pytest.raises(ValueError, match=r"references are 16x16 latents \(32 px images\) but the pipeline samples 24x24"):
        generate(sd, "a red circle", 2, guidance=MMDGuidance(encode_images(sd, refs)), steps=2, size=48, progress=False)
    for size, exc, match in ((0, ValueError, "size must be an integer >= 1; got 0"),
                             (True, TypeError, "size must be an integer"),
                             ("32", TypeError, "size must be an integer"),
                             (30, ValueError, "size must be a multiple of 8")):
        with pytest.raises(exc, match=match):
            generate(sd, "a red circle", 1, steps=1, size=size, progress=False)


def _mmd2_by_hand(z, r, bandwidth_from):
    """Biased Gaussian MMD^2 of latents z against r in float64, the bandwidth the median positive
    pairwise distance (the lower middle one) among ``bandwidth_from``: the oracle of latent_mmd2."""
    z, r, p = z.flatten(1).double(), r.flatten(1).double(), bandwidth_from.flatten(1).double()
    i, j = torch.triu_indices(len(p), len(p), 1)
    d = torch.cdist(p, p)[i, j]
    d = d[d > 0].sort().values
    s = float(d[(len(d) - 1) // 2])
    k = lambda u, v: torch.exp(-torch.cdist(u, v) ** 2 / (2 * s * s))  # noqa: E731
    return float(k(z, z).mean() + k(r, r).mean() - 2 * k(z, r).mean())


def test_latent_mmd2_measures_every_image_set_with_the_references_kernel(sd):
    # the bandwidth was read off each image set pooled with the references, so mmdg adapt's guided
    # and unguided numbers came from two kernels (median 13.7 against 17.1 on the embedded pipeline)
    from mmdg_lite.images import make_shapes
    from mmdg_lite.pipelines.adapt import latent_mmd2

    refs = encode_images(sd, make_shapes(12, seed=2).images)
    for seed in (1, 3):  # two image sets, one kernel: the references' own median distance
        images = make_shapes(6, seed=seed).images
        assert latent_mmd2(sd, images, refs) == pytest.approx(_mmd2_by_hand(encode_images(sd, images), refs, refs),
                                                              rel=1e-4)
    one = refs[:1]  # one reference has no distance of its own: the pooled median, as before
    z = encode_images(sd, images)
    assert latent_mmd2(sd, images, one) == pytest.approx(_mmd2_by_hand(z, one, torch.cat([z, one])), rel=1e-4)


def test_latent_mmd2_uses_every_reference_for_its_bandwidth(sd):
    # the median heuristic thinned 300 references to 100: shuffling them changed the value
    from mmdg_lite.images import make_shapes
    from mmdg_lite.pipelines.adapt import latent_mmd2

    images, refs = make_shapes(8, seed=1).images, encode_images(sd, make_shapes(300, seed=2).images)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    a, b = latent_mmd2(sd, images, refs), latent_mmd2(sd, images, refs[perm])
    assert a == pytest.approx(b, rel=1e-5)  # float32 summation order only (it moved 3 % before)
    assert a == pytest.approx(_mmd2_by_hand(encode_images(sd, images), refs, refs), rel=1e-4)
    with pytest.raises(ValueError, match="reference_latents must be latents"):
        latent_mmd2(sd, images, [1, 2])
    with pytest.raises(ValueError, match=r"with N >= 1 from encode_images; got \(0, 4, 16, 16\)"):
        latent_mmd2(sd, images, refs[:0])  # a bare 'cannot reshape tensor of 0 elements' before
    with pytest.raises(ValueError, match="pass latents from encode_images"):
        latent_mmd2(sd, images, make_shapes(4, seed=0).images)


def test_pairing_and_image_size_helpers_check_their_arguments(sd):
    from mmdg_lite.pipelines import pipeline_image_size
    from mmdg_lite.pipelines.pairing import pairing_task, run_pairing

    with pytest.raises(ValueError, match="colours must be a non-empty list of colours"):
        pairing_task(sd, colours="red", n_refs=2)  # prompts "a r circle", "a e circle", ...
    with pytest.raises(ValueError, match="n_refs must be an integer >= 1; got 0"):
        pairing_task(sd, n_refs=0)
    task = pairing_task(sd, n_refs=2)
    with pytest.raises(ValueError, match=r"guidance options \['foo'\] are for the guided methods"):
        run_pairing(sd, task, "unguided", foo=1)
    comps = tiny_components()
    comps["unet"].register_to_config(sample_size=(16, 16))  # diffusers accepts (h, w)
    square = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None, image_encoder=None,
                                     requires_safety_checker=False)
    assert pipeline_image_size(square) == 32
    comps["unet"].register_to_config(sample_size=(16, 24))
    wide = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    with pytest.raises(ValueError, match=r"samples \(16, 24\) latents"):
        pipeline_image_size(wide)


def test_tiny_builders_leave_the_callers_global_rng_alone():
    """tiny_components / tiny_sdxl_pipeline called torch.manual_seed(seed): building a pipeline
    reseeded the caller's global stream. Now their weights are seeded and the stream untouched."""
    from mmdg_lite.pipelines import tiny_sdxl_pipeline

    for build in (lambda: tiny_components(seed=1)["unet"], lambda: tiny_sdxl_pipeline(seed=1).unet):
        torch.manual_seed(123)
        want = torch.randn(8)  # the caller's next draws
        torch.manual_seed(123)
        first = build()
        assert torch.equal(torch.randn(8), want)
        torch.manual_seed(7)  # another global state: the same seeded weights
        second = build()
        assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


# --- diffusers usage (an outside probe): callbacks chained with the user's, swapped schedulers --

def test_callback_hands_on_the_other_callbacks_tensors(sd):
    """The callback returned {"latents": ...} only: chained with SDCFGCutoffCallback in
    MultiPipelineCallbacks the cut prompt_embeds were dropped (a batch-size crash) or missing
    (KeyError). With strength 0 the chain must give exactly what the cutoff callback alone gives."""
    from diffusers.callbacks import MultiPipelineCallbacks, SDCFGCutoffCallback

    refs = encode_images(sd, red_images(2))
    cut = lambda: SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)  # noqa: E731
    # (one image: diffusers' cutoff keeps prompt_embeds[-1:], one row whatever the batch)
    alone = run(sd, MultiPipelineCallbacks([cut()]), n=1, steps=3)
    for first in (True, False):
        with MMDGuidanceCallback(MMDGuidance(refs, strength=0.0)).watch(sd) as cb:
            chain = MultiPipelineCallbacks([cut(), cb] if first else [cb, cut()])
            assert torch.equal(run(sd, chain, n=1, steps=3), alone)
    seen = {}

    def user(pipe, i, t, kwargs):  # the user's own function calling the callback
        out = cb(pipe, i, t, kwargs)
        seen[i] = sorted(out)
        return out

    with MMDGuidanceCallback(MMDGuidance(refs)).watch(sd) as cb:
        run(sd, user, n=2, steps=2, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
        assert seen == {0: ["latents", "prompt_embeds"], 1: ["latents", "prompt_embeds"]}
        with pytest.raises(ValueError, match="add 'latents' to callback_on_step_end_tensor_inputs"):
            run(sd, user, n=2, steps=2, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_step_wrapper_refuses_a_swapped_scheduler_and_a_second_copy_of_itself(sd):
    """pipe.scheduler = X.from_config(...) under the wrapper ran silently unguided (the wrapper
    stays on the old scheduler); the same guidance wrapped twice (a cell run again) applied it
    twice per step, resetting it in between."""
    from diffusers import DDPMScheduler

    g = MMDGuidance(encode_images(sd, red_images(2)), eval_point="x0_hat")
    old, before = sd.scheduler, sd.__dict__.get("check_inputs")  # (earlier tests' callbacks may watch sd)
    base = run(sd, n=2, steps=2)
    try:
        with GuidedSchedulerStep(sd, g):
            guided = run(sd, n=2, steps=2)
            sd.scheduler = DDPMScheduler.from_config(old.config)
            with pytest.raises(ValueError, match=r"pipe.scheduler was replaced \(DDIMScheduler -> DDPMScheduler\)"):
                run(sd, n=2, steps=2)
            sd.scheduler = old
            assert torch.equal(run(sd, n=2, steps=2), guided) and not torch.equal(guided, base)
            with pytest.raises(ValueError, match=r"this guidance already wraps DDIMScheduler.step"):
                GuidedSchedulerStep(sd, g)
            other = GuidedSchedulerStep(sd, Spy(eval_point="x0_hat"))  # other hooks may stack
            other.restore()
    finally:
        sd.scheduler = old
    assert sd.__dict__.get("check_inputs") is before and "step" not in old.__dict__
    with GuidedSchedulerStep(sd, g):  # restored: it may wrap again
        assert torch.equal(run(sd, n=2, steps=2), guided)


def test_pipeline_guidance_refuses_num_images_per_prompt_it_would_ignore(sd):
    """num_images_per_prompt=3 without prompts was silently ignored (nothing to repeat)."""
    refs = encode_images(sd, red_images(2))
    with pytest.raises(ValueError, match="num_images_per_prompt=3 is for prompt-aware guidance"):
        pipeline_guidance(sd, refs, num_images_per_prompt=3)
    assert pipeline_guidance(sd, refs, num_images_per_prompt=1).sample_prompts is None
    g = pipeline_guidance(sd, refs, reference_prompts=[PROMPT] * 2, prompts=[PROMPT, "a blue square"],
                          num_images_per_prompt=3)
    assert torch.equal(g.sample_prompts, prompt_features(sd, [PROMPT, "a blue square"])[[0, 0, 0, 1, 1, 1]])


def test_watch_names_what_it_needs(sd):
    """watch(pipe.scheduler) raised AttributeError: 'DDIMScheduler' object has no attribute
    'prepare_latents'; a failed watch keeps the pipeline it was watching."""
    with MMDGuidanceCallback(MMDGuidance(encode_images(sd, red_images(2)))).watch(sd) as cb:
        for bad, name in ((sd.scheduler, "DDIMScheduler"), ("pipe", "str")):
            with pytest.raises(TypeError, match=f"watch\\(pipe\\) needs a diffusers pipeline .*got {name}"):
                cb.watch(bad)
        assert cb._watched is not None and cb._watched[0] is sd


def test_encode_images_points_other_inputs_to_the_converters(sd):
    """A PIL image, a numpy array or a grey tensor got only "images must be a tensor (N, 3, H, W)";
    the error now names the converter, and what it names does produce encodable images."""
    import numpy as np
    from PIL import Image

    from mmdg_lite.images import references_from_tensors

    grey = np.full((2, 1, 32, 32), 200, dtype=np.uint8)
    for bad in (Image.new("RGB", (32, 32)), grey, torch.zeros(2, 1, 32, 32)):
        with pytest.raises(ValueError, match=r"references_from_tensors\(images, size, 3, value_range=\.\.\.\)"):
            encode_images(sd, bad)
    z = encode_images(sd, references_from_tensors(grey, 32, 3, value_range=(0, 255)))
    assert torch.allclose(z, encode_images(sd, torch.full((2, 3, 32, 32), 200 / 127.5 - 1)), atol=1e-5)


def test_hooks_refuse_prompt_aware_guidance_built_for_other_prompts(sd):
    """generate() checked this, the hooks only the row count: guidance built for [circle, square]
    x 2 ran on [square, circle] x 2 (or [circle, square] x 2 listed twice), each sample pulled
    toward the other prompt's references. Unguided calls while the callback watches stay free."""
    refs = encode_images(sd, red_images(4))
    built = ["a red circle", "a blue square"]
    kw = dict(reference_prompts=["a red circle", "a blue square"] * 2, prompts=built, num_images_per_prompt=2)
    wrong = ((["a blue square", "a red circle"], 2), (built * 2, 1))
    g = pipeline_guidance(sd, refs, **kw)
    before = sd.__dict__.get("check_inputs")  # (earlier tests' callbacks may still watch sd)
    with MMDGuidanceCallback(g).watch(sd) as cb:
        for prompts, n in wrong:
            run(sd, n=1, prompt=prompts, num_images_per_prompt=n)  # not guided: not checked
            with pytest.raises(ValueError, match=r"built for other sample prompts .* 2 prompt\(s\) x 2|"
                                                 r"built for other sample prompts .* 4 prompt\(s\) x 1"):
                run(sd, cb, prompt=prompts, num_images_per_prompt=n, steps=2)
        assert run(sd, cb, prompt=built, num_images_per_prompt=2, steps=2).shape[0] == 4
    assert sd.__dict__.get("check_inputs") is before
    with GuidedSchedulerStep(sd, pipeline_guidance(sd, refs, eval_point="x0_hat", **kw)):
        calls = []
        hook = sd.unet.register_forward_hook(lambda *a: calls.append(1))
        try:
            for prompts, n in wrong:
                with pytest.raises(ValueError, match="built for other sample prompts"):
                    run(sd, prompt=prompts, num_images_per_prompt=n, steps=2)
        finally:
            hook.remove()
        assert calls == []  # refused before the first UNet call
        assert run(sd, prompt=built, num_images_per_prompt=2, steps=2).shape[0] == 4
    assert sd.__dict__.get("check_inputs") is before


def test_callback_uses_initial_latents_only_from_the_pipeline_it_watches(sd):
    """x_t at step 0 came from whatever prepare_latents call watch() saw last: after unwatch(), or
    on another pipeline (from the same components), a guided run silently took the latents of an
    earlier unguided call as its x_t. Without a record for this call, x_t is unknown: an error."""
    other = StableDiffusionPipeline(**sd.components)
    other.set_progress_bar_config(disable=True)
    spy = Spy()
    cb = MMDGuidanceCallback(spy).watch(sd)
    try:
        run(sd, n=2, steps=2, seed=5)  # unguided, recorded
        with pytest.raises(RuntimeError, match="needs x_t at step 0"):
            run(other, cb, n=2, steps=2)
        run(sd, n=2, steps=2, seed=5)
    finally:
        cb.unwatch()
    with pytest.raises(RuntimeError, match="needs x_t at step 0"):
        run(sd, cb, n=2, steps=2)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cb = MMDGuidanceCallback(spy, initial_latents=latents).watch(sd)
    with cb:
        run(other, cb, n=2, steps=1, latents=latents)  # not watched: the given latents serve
    assert torch.equal(spy.states[0].x_t, latents * other.scheduler.init_noise_sigma)


def test_callback_listed_twice_is_refused(sd):
    """MultiPipelineCallbacks([cb, cb]) applied the guidance twice per step, the second call
    resetting it and taking the first's output as x_t (at step 0: a misleading 'call watch')."""
    from diffusers.callbacks import MultiPipelineCallbacks

    spy = Spy(eval_point="x_prev")
    cb = MMDGuidanceCallback(spy)
    with pytest.raises(ValueError, match="called twice in one step"):
        run(sd, MultiPipelineCallbacks([cb, cb]), n=2, steps=2)
    assert len(spy.states) == 1
    run(sd, cb, n=2, steps=3)  # listed once, run after run: fine
    run(sd, cb, n=2, steps=3)
    assert len(spy.states) == 3 and spy.resets == 3


def test_step_wrapper_refuses_references_of_another_size_before_the_unet(sd):
    """height/width other than the references' ran one UNet step before MMDGuidance refused the
    shapes; the wrapper now refuses at check_inputs (no UNet call), naming both sizes."""
    g = MMDGuidance(encode_images(sd, red_images(2)), eval_point="x0_hat")  # 32 px -> 16x16 latents
    calls = []
    hook = sd.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with GuidedSchedulerStep(sd, g):
            with pytest.raises(ValueError, match=r"references are 16x16 latents \(32x32 px images\) but this call "
                                                 r"samples 16x24 latents \(height=32, width=48\)"):
                sd([PROMPT], num_inference_steps=2, height=32, width=48, output_type="latent")
            assert calls == []
            assert sd([PROMPT], num_inference_steps=2, height=32, width=32, output_type="latent").images.shape == \
                (1, 4, 16, 16)
    finally:
        hook.remove()
    with GuidedSchedulerStep(sd, g):  # the pipeline's own checks come first
        with pytest.raises(ValueError, match="divisible by 8"):
            sd([PROMPT], num_inference_steps=2, height=36, width=32, output_type="latent")


def test_a_run_cut_by_denoising_end_must_hold_a_guided_step(saved):
    """SDXL's denoising_end runs the first part of the schedule only; the guided window is in
    fractions of the whole schedule, so schedule='last' with denoising_end=0.5 guided nothing,
    silently (history empty). It is refused, by the callback and the step wrapper alike."""
    pipe = saved["sdxl"][0]
    refs = encode_images(pipe, red_images(4))
    kw = dict(num_inference_steps=4, guidance_scale=3.0, output_type="latent", denoising_end=0.5)
    late = dict(strength=1.0, stop=1.0, schedule="last", track=True)
    with pytest.raises(ValueError, match=r"steps 0 to 1 of the scheduler's 4.*window is \[0.7, 1\)"):
        pipe([PROMPT] * 2, callback_on_step_end=MMDGuidanceCallback(MMDGuidance(refs, **late)).watch(pipe),
             generator=torch.Generator().manual_seed(0), **kw)
    with pytest.raises(ValueError, match="denoising_end"), GuidedSchedulerStep(pipe, MMDGuidance(refs, **late)):
        pipe([PROMPT] * 2, generator=torch.Generator().manual_seed(0), **kw)
    g = MMDGuidance(refs, strength=1.0, stop=1.0, track=True)  # a window inside the run still guides
    pipe([PROMPT] * 2, callback_on_step_end=MMDGuidanceCallback(g).watch(pipe),
         generator=torch.Generator().manual_seed(0), **kw)
    assert [h["step"] for h in g.history] == [0, 1]
    g = MMDGuidance(refs, **late)  # a loop of the user's own after that call: its whole schedule counts
    pipe([PROMPT] * 2, generator=torch.Generator().manual_seed(0), **kw)  # leaves num_timesteps = 2
    with GuidedSchedulerStep(pipe, g):
        sched, x = pipe.scheduler, torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        sched.set_timesteps(4)
        for t in sched.timesteps:
            x = sched.step(torch.zeros_like(x), t, x).prev_sample
    assert [h["step"] for h in g.history] == [3]
    g = MMDGuidance(refs, **late)  # the whole schedule: 'last' guides its last step, as before
    pipe([PROMPT] * 2, callback_on_step_end=MMDGuidanceCallback(g).watch(pipe),
         generator=torch.Generator().manual_seed(0), **{**kw, "denoising_end": None})
    assert [h["step"] for h in g.history] == [3]


def test_sdxl_prompt_2_feeds_the_second_encoders_features(saved):
    """SDXL's prompt_2 goes to text_encoder_2, whose pooled text_embeds the UNet gets; the prompt
    features used the prompt for both encoders, and a guidance built for prompt alone passed
    the hooks' check for a call with another prompt_2. Oracle: the pipeline's own encode_prompt."""
    pipe = saved["sdxl"][0]
    prompts, prompts_2 = [PROMPT, "a blue square"], ["a blue square", PROMPT]
    *_, pooled, _ = pipe.encode_prompt(prompts, prompt_2=prompts_2, do_classifier_free_guidance=False)
    f = prompt_features(pipe, prompts, prompts_2)
    p2 = pooled.shape[1]
    torch.testing.assert_close(f[:, :p2] * math.sqrt(2), torch.nn.functional.normalize(pooled.float(), dim=-1))
    torch.testing.assert_close(f[:, p2:], prompt_features(pipe, prompts)[:, p2:])  # encoder 1 reads prompt
    torch.testing.assert_close(sample_prompt_features(pipe, prompts, 2, prompts_2), f.repeat_interleave(2, dim=0))
    torch.testing.assert_close(prompt_features(pipe, prompts, ""), prompt_features(pipe, prompts))  # `prompt_2 or prompt`
    with pytest.raises(ValueError, match="prompts_2 has 1 prompt.*prompts has 2"):
        prompt_features(pipe, prompts, [PROMPT])
    with pytest.raises(ValueError, match="no text_encoder_2"):
        prompt_features(saved["sd"][0], prompts, prompts_2)
    refs = dict(reference_prompts=[PROMPT] * 4, prompts=prompts, num_images_per_prompt=2, strength=1.0, stop=1.0)
    kw = dict(num_images_per_prompt=2, num_inference_steps=2, guidance_scale=3.0, output_type="latent",
              prompt_2=prompts_2)
    stale = pipeline_guidance(pipe, red_images(4), **refs)  # built without prompt_2
    with pytest.raises(ValueError, match="prompts_2=<its prompt_2>"):
        pipe(prompts, callback_on_step_end=MMDGuidanceCallback(stale).watch(pipe), **kw)
    with pytest.raises(ValueError, match="prompts_2=<its prompt_2>"), GuidedSchedulerStep(pipe, stale):
        pipe(prompts, **kw)
    g = pipeline_guidance(pipe, red_images(4), prompts_2=prompts_2, **refs)
    torch.testing.assert_close(g.sample_prompts, f.repeat_interleave(2, dim=0))
    out = pipe(prompts, callback_on_step_end=MMDGuidanceCallback(g).watch(pipe), **kw).images
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_edm_scheduler_x0_hat_is_the_schedulers_own_denoised_sample(saved, prediction_type):
    """EDM schedulers (CosXL's EDMEuler, Playground v2.5's EDMDPMSolver) precondition the model
    output with sigma_data: it is neither eps nor v, and to_epsilon read it as one, so x0_hat
    was off by hundreds at the first step. Oracle: the scheduler's own pred_original_sample."""
    import functools

    from diffusers import EDMEulerScheduler

    from mmdg_lite.guidance.eval_point import EvalPoint

    pipe = _load(saved, "sdxl")
    sched = pipe.scheduler = EDMEulerScheduler(prediction_type=prediction_type)
    original, denoised = sched.step, []

    @functools.wraps(original)
    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        denoised.append(out[1] if isinstance(out, tuple) else out.pred_original_sample)
        return out
    sched.step = record
    spy = Spy(eval_point="x0_hat")
    with GuidedSchedulerStep(pipe, spy):
        run(pipe, n=2, steps=3)
    del sched.step
    assert len(spy.states) == 3 == len(denoised)
    for s, want in zip(spy.states, denoised):
        z = EvalPoint("x0_hat").locate(s, torch.float32).z.reshape(want.shape)
        torch.testing.assert_close(z, want.float(), atol=1e-4, rtol=1e-4)
    refs = encode_images(pipe, red_images(4))
    base = run(pipe, n=2, steps=3)
    with GuidedSchedulerStep(pipe, MMDGuidance(refs, strength=1.0, stop=1.0, eval_point="x0_hat")):
        guided = run(pipe, n=2, steps=3)
    assert torch.isfinite(guided).all() and dist_to(guided, refs) < dist_to(base, refs)


def test_sample_prompts_of_a_chained_hook_must_match_the_pipeline_batch(sd):
    """Only the outer hook's sample_prompts were counted: a ChainedGuidance member built for
    2 prompts x 2 images, run with 2 x 1, passed the check (and the prompt comparison, which
    reads 4 rows as 2 images per prompt) and guided both latents with the first prompt's row."""
    from mmdg_lite.guidance import ChainedGuidance

    refs = encode_images(sd, red_images(4))
    g = pipeline_guidance(sd, refs, reference_prompts=[PROMPT, "a blue square"] * 2,
                          prompts=[PROMPT, "a blue square"], num_images_per_prompt=2)  # 4 sample prompts
    with MMDGuidanceCallback(ChainedGuidance(g)).watch(sd) as cb:
        with pytest.raises(ValueError, match="sample_prompts has 4 rows but the pipeline's batch has 2 latents"):
            run(sd, cb, prompt=[PROMPT, "a blue square"], num_images_per_prompt=1, steps=2)
        run(sd, cb, prompt=[PROMPT, "a blue square"], num_images_per_prompt=2, steps=2)  # these 4 rows: fine


@pytest.mark.parametrize("spacing", ["use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas"])
def test_dpm_solver_x0_hat_with_its_own_sigma_spacing_is_the_schedulers_x0(sd, spacing):
    """DPM-Solver with Karras (exponential, Lu lambda) sigmas rounds its timesteps from them, so
    alphas_cumprod[t] is not the noise level its step uses: the hooks' x0_hat was off the
    scheduler's own x0 prediction (convert_model_output) by ~1e-2. An img2img run (strength 0.5,
    steps from the middle of the schedule) through the step wrapper."""
    import copy

    from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline

    from mmdg_lite.guidance.eval_point import EvalPoint

    pipe = StableDiffusionImg2ImgPipeline(**{**sd.components, "scheduler": DPMSolverMultistepScheduler.from_config(
        sd.scheduler.config, **{spacing: True})})
    pipe.set_progress_bar_config(disable=True)
    sched, x0s = pipe.scheduler, []
    original = sched.step

    def step(model_output, timestep, sample, *args, **kwargs):  # oracle: the scheduler's own x0
        trial = copy.deepcopy(sched)
        if trial.step_index is None:
            trial._init_step_index(timestep)
        x0s.append(trial.convert_model_output(model_output, sample=sample))
        return original(model_output, timestep, sample, *args, **kwargs)

    step.__signature__ = inspect.signature(original)
    sched.step = step
    spy = Spy(eval_point="x0_hat")
    with GuidedSchedulerStep(pipe, spy):
        pipe([PROMPT] * 2, image=(red_images(2) + 1) / 2, strength=0.5, num_inference_steps=8, guidance_scale=3.0,
             generator=torch.Generator().manual_seed(0), output_type="latent")
    assert [s.step_index for s in spy.states] == [4, 5, 6, 7] and len(x0s) == 4
    for state, x0 in zip(spy.states, x0s):
        z = EvalPoint("x0_hat").locate(state, torch.float64).z
        assert torch.allclose(z, x0.reshape(2, -1).double(), atol=1e-4)


def _inpaint_pipeline(sd, channels):
    """An inpainting pipeline of the tiny SD's components: its 4-channel UNet (the pipeline blends
    the kept region back in after each step) or a 9-channel inpainting UNet (latents, mask and
    masked-image latents in; nothing blended)."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    parts = dict(sd.components)
    if channels == 9:
        torch.manual_seed(0)
        parts["unet"] = UNet2DConditionModel.from_config({**sd.unet.config, "in_channels": 9}).eval()
    pipe = StableDiffusionInpaintPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _Shift(Spy):
    """A hook that adds 1 to every latent (and records the states)."""

    def __call__(self, state):
        self.states.append(state)
        return state.x_prev + 1


@pytest.mark.parametrize("hook, channels", [("callback", 4), ("callback", 9), ("wrapper", 9)])
def test_inpainting_guidance_stays_inside_the_mask(sd, hook, channels):
    """Inpainting: the correction changed the region the mask keeps. With a 4-channel UNet the
    callback runs after the pipeline blends the image back in, so the last step's correction
    stayed in the output; with a 9-channel UNet nothing is blended and both hooks moved the
    kept region at every step. Each step's correction is now the hook's inside the mask and 0
    outside it, and the 4-channel pipeline's kept region is the unguided call's, bit for bit.
    (The wrapper in a 4-channel pipeline was right already: the pipeline blends after its step.)"""
    pipe = _inpaint_pipeline(sd, channels)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1.0  # white: repaint; black: keep
    inside = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    inside[..., 4:12, 4:12] = True  # the mask at the latents' resolution (VAE factor 2)
    kw = dict(image=(red_images(2) + 1) / 2, mask_image=mask, num_inference_steps=3, guidance_scale=3.0,
              output_type="latent", height=32, width=32)

    def call(g):
        gen = torch.Generator().manual_seed(0)
        if g is None:
            return pipe([PROMPT] * 2, generator=gen, **kw).images
        if hook == "callback":
            with MMDGuidanceCallback(g).watch(pipe) as cb:
                return pipe([PROMPT] * 2, generator=gen, callback_on_step_end=cb, **kw).images
        with GuidedSchedulerStep(pipe, g):
            return pipe([PROMPT] * 2, generator=gen, **kw).images

    shift = _Shift(eval_point="x_prev")
    call(shift)
    for before, after in zip(shift.states, shift.states[1:]):  # the latents the next step starts from
        if channels == 9 or hook == "callback":  # (4 channels, wrapper: the pipeline blends after the step)
            delta = after.x_t - before.x_prev
            assert torch.equal(torch.where(inside, 0.0, delta), torch.zeros_like(delta))
            assert torch.allclose(torch.where(inside, delta, 1.0), torch.ones_like(delta))
    base = call(None)
    guided = call(MMDGuidance(encode_images(pipe, red_images()), strength=1.0, stop=1.0))
    if channels == 4:
        assert torch.equal(torch.where(inside, 0.0, guided), torch.where(inside, 0.0, base))
    assert not torch.allclose(torch.where(inside, guided, 0.0), torch.where(inside, base, 0.0))
    if hook == "callback":  # the mask is read through watch(pipe)
        with pytest.raises(ValueError, match=r"StableDiffusionInpaintPipeline inpaints.*watch\(pipe\)"):
            pipe([PROMPT] * 2, callback_on_step_end=MMDGuidanceCallback(_Shift(eval_point="x_prev")), **kw)


@pytest.mark.parametrize("name, lost, kind", [("KDPM2AncestralDiscreteScheduler", 0, "epsilon"),
                                              ("DPMSolverSinglestepScheduler", 2, "sample")])
def test_a_correction_after_a_stored_stage_is_dropped_by_these_schedulers(sd, name, lost, kind):
    """Why KDPM2-ancestral and singlestep DPM-Solver are refused (they ran, silently): in a plain
    scheduler loop whose model predicts 0 (eps, or x0 where the scheduler takes it), a shift of the
    sample after step ``lost`` (KDPM2-ancestral's first stage; DPM-Solver's order-1 step before
    an order-2 one) leaves the next step's result as it was, where DDIM carries it on: that
    step starts from the sample the scheduler stored before the shift."""
    import diffusers

    def next_sample(cls, shift):
        sched = getattr(diffusers, cls).from_config(sd.scheduler.config, prediction_type=kind)
        sched.set_timesteps(6)
        x = torch.ones(1, 4, 2, 2) * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps[: lost + 2]):
            x = sched.step(torch.zeros_like(x), t, x, generator=torch.Generator().manual_seed(0)).prev_sample
            if i == lost:
                x = x + shift
        return x

    assert (next_sample("DDIMScheduler", 0.0) != next_sample("DDIMScheduler", 1.0)).all()
    assert torch.equal(next_sample(name, 0.0), next_sample(name, 1.0))
    g = MMDGuidance(encode_images(sd, red_images(2)))
    with pytest.raises(ValueError, match=f"cannot run through {name}: its "):  # (not: it repeats timesteps)
        GuidedSchedulerStep(getattr(diffusers, name).from_config(sd.scheduler.config), g)


def test_generate_refuses_before_the_unet_and_leaves_the_progress_bar_as_it_was(saved):
    """generate() set the pipeline's progress-bar config before its checks, so a refused call
    (a bad size, guidance that does not fit) left the user's settings overwritten; and a
    scheduler guidance cannot run through (PNDM, Stable Diffusion 1.x's default) was refused
    by the hooks only at the first step, after a UNet call."""
    from diffusers import PNDMScheduler

    from mmdg_lite.pipelines.adapt import generate

    pipe = _load(saved, "sd")
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    calls = []
    handle = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    pipe.set_progress_bar_config(desc="mine")
    g = MMDGuidance(encode_images(pipe, red_images(4)))
    with pytest.raises(ValueError, match="cannot run through PNDMScheduler"):
        generate(pipe, PROMPT, 2, guidance=g, steps=3, progress=False)
    with pytest.raises(ValueError, match="size must be a multiple of 8"):
        generate(pipe, PROMPT, 2, steps=3, progress=False, size=30)
    handle.remove()
    assert calls == [] and pipe._progress_bar_config == {"desc": "mine"}
    assert not {"prepare_latents", "check_inputs"} & set(pipe.__dict__) and "step" not in pipe.scheduler.__dict__


def test_generate_refuses_a_cfg_scale_below_one_which_the_pipeline_runs_as_one(sd):
    """diffusers turns classifier-free guidance off for every scale <= 1, so 0 (mmdg_lite's
    CFGDenoiser: unconditional) or 0.5 gave exactly the images of scale 1 without a word."""
    from mmdg_lite.pipelines.adapt import generate

    def raw(scale: float) -> torch.Tensor:  # the pipeline itself, the oracle for why
        gen = torch.Generator().manual_seed(0)
        return sd(PROMPT, num_inference_steps=2, guidance_scale=scale, generator=gen, output_type="pt",
                  height=32, width=32).images

    assert torch.equal(raw(0.0), raw(1.0)) and torch.equal(raw(0.5), raw(1.0))
    assert not torch.equal(raw(1.5), raw(1.0))
    for scale in (0.0, 0.5, 0.999):
        with pytest.raises(ValueError, match=rf"guidance_scale must be >= 1 .*; got {scale}"):
            generate(sd, PROMPT, 1, steps=2, guidance_scale=scale, progress=False, size=32)
    images, _ = generate(sd, PROMPT, 1, steps=2, guidance_scale=1.0, progress=False, size=32)
    assert images.shape == (1, 3, 32, 32)


def test_generate_refuses_one_step_at_the_lowest_noise_level(sd):
    """SD's 'leading' DDIM with steps_offset 1 gives steps=1 only t=1, where a step moves x_T by
    under 2 % (the oracle below): generate returned the initial noise as images, silently."""
    import copy

    from mmdg_lite.pipelines.adapt import generate
    sched = copy.deepcopy(sd.scheduler)
    sched.set_timesteps(1)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert (sched.step(eps, sched.timesteps[0], x).prev_sample - x).norm() < 0.02 * x.norm()
    with pytest.raises(ValueError, match=r"steps=1 gives DDIMScheduler only the timestep t=1.*steps >= 2"):
        generate(sd, PROMPT, 1, progress=False, size=32, steps=1)
    assert generate(sd, PROMPT, 1, progress=False, size=32, steps=2)[0].shape == (1, 3, 32, 32)


def _unet_calls(pipe):
    """A list that grows by one at every UNet forward (and the handle that removes the hook)."""
    calls = []
    return calls, pipe.unet.register_forward_hook(lambda *_: calls.append(1))


def test_generate_refuses_a_progress_that_is_not_a_bool_before_the_unet(sd):
    """progress='no' (a truthy str) showed the progress bar, silently; now a TypeError naming
    progress, before any UNet call and with the pipeline's bar settings untouched."""
    from mmdg_lite.pipelines.adapt import generate

    before = dict(getattr(sd, "_progress_bar_config", {}))
    calls, hook = _unet_calls(sd)
    try:
        for bad in ("no", 0, None):
            with pytest.raises(TypeError, match=rf"progress must be True or False; got {re.escape(repr(bad))}"):
                generate(sd, PROMPT, 1, steps=2, progress=bad, size=32)
    finally:
        hook.remove()
    assert calls == [] and dict(getattr(sd, "_progress_bar_config", {})) == before


def test_sample_prompt_features_take_a_numpy_int_as_generate_does(sd):
    """num_images_per_prompt=np.int64(2) (generate's check_int takes it) was refused by
    sample_prompt_features / pipeline_guidance with 'must be an int'; the rows are each prompt's
    features repeated, as the pipeline orders its batch."""
    import numpy as np

    prompts = [PROMPT, "a blue square"]
    feats = prompt_features(sd, prompts)
    got = sample_prompt_features(sd, prompts, np.int64(2))
    assert torch.equal(got, feats[[0, 0, 1, 1]])
    g = pipeline_guidance(sd, red_images(4), reference_prompts=[PROMPT] * 4, prompts=prompts,
                          num_images_per_prompt=np.int64(2))
    assert torch.equal(g.sample_prompts.cpu(), got)
    with pytest.raises(TypeError, match="num_images_per_prompt must be an integer >= 1; got float 2.0"):
        sample_prompt_features(sd, prompts, 2.0)


def test_callback_names_the_calls_height_and_width_for_references_of_another_size(sd):
    """A 64 px call with 32 px references: the callback failed with MMDGuidance's 'the sampler's
    samples have per-sample shape ... use the same channel order'; it now names the call's
    height and width and the references' size, as the step wrapper does."""
    refs = encode_images(sd, red_images(4))
    for point in ("x_prev", "x_t"):
        with MMDGuidanceCallback(MMDGuidance(refs, eval_point=point)).watch(sd) as cb:
            with pytest.raises(ValueError, match=r"references are 16x16 latents \(32x32 px images\) but this call "
                                                 r"samples 32x32 latents \(height=64, width=64\)"):
                sd([PROMPT], num_inference_steps=2, height=64, width=64, output_type="latent",
                   callback_on_step_end=cb)


def test_step_wrapper_refuses_a_sharing_pipelines_run_that_starts_past_the_window(sd):
    """GuidedSchedulerStep(sd, g) also steps a pipeline built from sd's components (the usual
    Img2ImgPipeline(**pipe.components)); its strength=0.3 run (steps 7-9 of 10) with the window
    [0, 0.5) guided no step, silently. Refused as the callback and the wrapped pipeline refuse it;
    a window that reaches the run guides its steps."""
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline(**sd.components)
    i2i.set_progress_bar_config(disable=True)
    refs = encode_images(sd, red_images(4))

    def call():
        return i2i([PROMPT] * 2, image=torch.zeros(2, 3, 32, 32), strength=0.3, num_inference_steps=10,
                   generator=torch.Generator().manual_seed(0), output_type="latent").images

    with GuidedSchedulerStep(sd, MMDGuidance(refs, eval_point="x0_hat", stop=0.5)):
        with pytest.raises(ValueError, match=r"runs steps 7 to 9 of the scheduler's 10.*no step would be guided"):
            call()
    g = MMDGuidance(refs, eval_point="x0_hat", stop=0.9, track=True)
    with GuidedSchedulerStep(sd, g):
        call()
    assert [h["step"] for h in g.history] == [7, 8]  # fractions 0.7 and 0.8 of the window [0, 0.9)


def test_a_scheduler_without_a_readable_noise_level_is_refused_by_name(sd):
    """IPNDMScheduler (from_config of an SD config; it has neither alphas_cumprod nor sigmas) ran
    the UNet and failed at the hooks' first step with a bare AttributeError on alphas_cumprod;
    both hooks and generate now refuse it by name, generate before any UNet call."""
    import copy

    from diffusers import IPNDMScheduler

    from mmdg_lite.pipelines.adapt import generate

    pipe = StableDiffusionPipeline(**{**sd.components, "scheduler": IPNDMScheduler.from_config(sd.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    assert getattr(pipe.scheduler, "alphas_cumprod", None) is None and getattr(pipe.scheduler, "sigmas", None) is None
    refs = encode_images(sd, red_images(4))
    match = "cannot run through IPNDMScheduler: it has neither alphas_cumprod nor sigmas"
    with pytest.raises(ValueError, match=match):
        GuidedSchedulerStep(pipe, MMDGuidance(refs, eval_point="x0_hat"))
    with pytest.raises(ValueError, match=match):
        run(pipe, MMDGuidanceCallback(MMDGuidance(refs, eval_point="x_prev")), n=2, steps=2)
    calls, hook = _unet_calls(pipe)
    try:
        with pytest.raises(ValueError, match=match):
            generate(pipe, PROMPT, 1, guidance=MMDGuidance(copy.deepcopy(refs)), steps=2, progress=False, size=32)
    finally:
        hook.remove()
    assert calls == []


def test_tiny_builders_check_the_size_and_scaling_factor_before_building():
    """tiny_sd_pipeline(scaling_factor=0) built a pipeline whose latents are all 0 and whose decoder
    divides by 0 (NaN images); image_size=0 failed only at the first call inside a convolution and
    36 with diffusers' 'divisible by 8'. Refused by name at build time."""
    for build in (tiny_components, tiny_sdxl_pipeline):
        for kw, error, msg in ((dict(scaling_factor=0.0), ValueError, "scaling_factor must be a finite number > 0"),
                               (dict(image_size=0), ValueError, "image_size must be an integer >= 8; got 0"),
                               (dict(image_size=36), ValueError, "image_size must be a multiple of 8"),
                               (dict(image_size=32.0), TypeError, "image_size must be an integer")):
            with pytest.raises(error, match=re.escape(msg)):
                build(**kw)
    pipe = tiny_sd_pipeline(scaling_factor=1.0)
    z = encode_images(pipe, red_images(1))
    assert pipe.vae.config.scaling_factor == 1.0 and bool(z.abs().sum() > 0)


@pytest.mark.parametrize("bare", [False, True])
def test_step_wrapper_resets_the_guidance_at_every_pipeline_call(sd, bare):
    """The wrapper took a new run to be one whose timestep index does not increase: an img2img call
    starting past the previous call's last index (strength 0.5 of 12 steps, from index 6, after a
    4-step call) kept that call's data scale, bandwidth and history, so its images depended on
    what ran before. Every call of the wrapped pipeline is now a new run; a wrapper of the bare
    scheduler (no check_inputs to see a call) starts one at each set_timesteps (data scale 44.6
    against 65.7 before, samples up to 2.8 apart)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**sd.components)
    pipe.set_progress_bar_config(disable=True)
    refs, init = encode_images(pipe, red_images(4)), (red_images(2) + 1) / 2

    def call(steps, strength):
        return pipe([PROMPT] * 2, image=init, strength=strength, num_inference_steps=steps, guidance_scale=3.0,
                    generator=torch.Generator().manual_seed(0), output_type="latent").images

    out, scales = [], []
    for first in (False, True):
        g = MMDGuidance(refs, eval_point="x0_hat", strength=2.0, stop=1.0, track=True)
        with GuidedSchedulerStep(pipe.scheduler if bare else pipe, g):
            if first:
                call(4, 1.0)  # steps 0..3
            out.append(call(12, 0.5))  # steps 6..11
        scales.append(g.data_scale)
        assert [h["step"] for h in g.history] == list(range(6, 12))  # this call's steps only
    assert scales[0] == scales[1] and torch.equal(out[0], out[1])


def test_pairing_task_checks_its_seed_before_drawing_or_encoding():
    """pairing_task draws category k's references with seed + 101 (k + 1): seed=-1 (or True) was
    accepted and drew from seeds 100, 201, ... (other seeds' sets), silently."""
    from mmdg_lite.pipelines.pairing import pairing_task

    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, 2\*\*63\); got {bad!r}"):
            pairing_task(None, seed=bad)  # refused before the pipeline is touched


def test_load_pipeline_names_a_missing_folder_or_one_without_model_index(tmp_path, monkeypatch):
    """load_pipeline (notebook 07's MMDG_SD_MODEL cell) took a mistyped local path for a hub id:
    './models/sd15' failed in huggingface_hub's 'Repo id must use alphanumeric chars', and a folder
    without model_index.json in diffusers' bare OSError; mmdg adapt checks --model so, by name."""
    from mmdg_lite.pipelines.adapt import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for missing in (str(tmp_path / "nope"), "./no_such_pipeline_folder", "~/no_such_pipeline_folder"):
        with pytest.raises(FileNotFoundError, match=rf"model: '{re.escape(missing)}' is not a folder"):
            load_pipeline(missing, device="cpu")
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no model_index.json; it is not a diffusers pipeline folder"):
        load_pipeline(tmp_path / "unet", device="cpu")


def test_unwatched_callback_refuses_prompt_aware_guidance(sd):
    """The callback checks a prompt-aware guidance against the call's prompts only through
    watch(pipe): unwatched, guidance built for [circle, square] x 2 ran on [square, circle] x 2,
    each sample pulled toward the other prompt's references, without a word."""
    refs = encode_images(sd, red_images(4))
    built = ["a red circle", "a blue square"]
    g = pipeline_guidance(sd, refs, reference_prompts=built * 2, prompts=built, num_images_per_prompt=2,
                          eval_point="x_prev")
    with pytest.raises(ValueError, match=r"prompt-aware: .* reads through watch\(pipe\); pass "
                                         r"callback_on_step_end=MMDGuidanceCallback\(guidance\)\.watch\(pipe\)"):
        run(sd, MMDGuidanceCallback(g), prompt=built[::-1], n=1, num_images_per_prompt=2, steps=2)
    with MMDGuidanceCallback(g).watch(sd) as cb:  # watched: the right prompts run
        assert run(sd, cb, prompt=built, n=1, num_images_per_prompt=2, steps=2).shape[0] == 4
    plain = MMDGuidance(refs, eval_point="x_prev")  # guidance without prompts needs no watch
    assert run(sd, MMDGuidanceCallback(plain), n=2, steps=2).shape[0] == 2


def test_pairing_task_names_a_malformed_pairing_before_drawing():
    """pairing_task({}) failed in a bare 'torch.cat(): expected a non-empty list', a style given
    without its attribute ({"circle": "outlined"}) in 'too many values to unpack', a list of pairs
    in an AttributeError, and {"circle": ("shape", "square")} drew squares as the circle references."""
    from mmdg_lite.pipelines.pairing import pairing_task

    for bad in ({}, {"circle": "outlined"}, [("circle", ("fill", "outlined"))], {"circle": ("shape", "square")},
                {"circle": ("fill",)}):
        with pytest.raises(ValueError, match=r"pairing must be a non-empty mapping category -> \(attribute, value\)"):
            pairing_task(None, bad)  # refused before the pipeline is touched


def test_repeated_custom_timesteps_are_named_as_given(saved):
    """A pipeline call with timesteps=[999, 999, 500] of one's own was refused with 'its spacing
    runs out of distinct timesteps ... use fewer steps': advice that cannot help 3 steps."""
    pipe = _load(saved, "sdxl")  # Euler: its set_timesteps takes timesteps= and sigmas=
    g = pipeline_guidance(pipe, torch.randn(2, 4, 16, 16), eval_point="x_prev")
    for custom in (dict(timesteps=[999, 999, 500]), dict(sigmas=[14.0, 14.0, 1.0])):
        with pytest.raises(ValueError, match=r"timesteps repeat at num_steps=\d .*timesteps= / sigmas= given to the "
                                             r"pipeline repeat one.* or distinct timesteps= / sigmas="):
            pipe("a red circle", height=32, width=32, output_type="latent", guidance_scale=1.0,
                 callback_on_step_end=MMDGuidanceCallback(g), **custom)


def test_tiny_components_name_empty_or_non_integer_blocks():
    """tiny_components(vae_blocks=()) failed in a bare "'float' object cannot be interpreted as an
    integer" (its downsampling 2 ** -1), before any weight was built."""
    for kw, error, msg in ((dict(vae_blocks=()), ValueError, "vae_blocks must be a non-empty list of channel counts"),
                           (dict(unet_blocks=[]), ValueError, "unet_blocks must be a non-empty list of channel counts"),
                           (dict(vae_blocks=32), ValueError, "vae_blocks must be a non-empty list"),
                           (dict(unet_blocks=(32, 64.0)), TypeError, "unet_blocks must be an integer >= 1")):
        with pytest.raises(error, match=re.escape(msg)):
            tiny_components(**kw)


def test_load_pipeline_names_a_damaged_model_index(saved, tmp_path):
    """A truncated model_index.json failed in load_pipeline's own json.loads, a bare JSONDecodeError
    ('Expecting property name enclosed in double quotes: line 2 column 1') naming no file."""
    import shutil

    from mmdg_lite._io import ArtifactError
    from mmdg_lite.pipelines.adapt import load_pipeline

    folder = tmp_path / "sd"
    shutil.copytree(saved["sd"][1], folder)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline",\n')
    with pytest.raises(ArtifactError, match=re.escape(str(folder / "model_index.json")) + ": invalid JSON at line 2"):
        load_pipeline(folder, device="cpu")
