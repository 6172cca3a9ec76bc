"""Shipped image models: build scripts run end to end (--tiny), load offline and deterministically,
the feature network separates the styles, and data/ stays within its size budget."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmdg_lite._resources import DATA_DIR
from mmdg_lite.images.adapters import UNetDenoiser
from mmdg_lite.images.features import FEATURE_NET_DIR, image_features, load_feature_net
from mmdg_lite.images.models import (DIGITS_UNET_DIR, SHAPES_UNET_DIR, SHAPES_VAE_DIR, load_digits_unet,
                                     load_shapes_unet, load_shapes_vae)
from mmdg_lite.images.references import decode_latents, encode_references

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["train_digits_unet.py", "train_shapes_vae.py", "train_shapes_unet.py", "train_feature_net.py"]
# Floors for the feature network on held-out real images (measured values: data/README.md).
FEATURE_BOUNDS = {"digit": 0.9, "thick": 0.95, "shape": 0.95, "colour": 0.98, "size": 0.95, "fill": 0.95}


@pytest.mark.parametrize("script", SCRIPTS)
def test_build_script_runs_end_to_end_tiny(script, tmp_path):
    out = tmp_path / "model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "training.json").read_text())
    weights = next(out.glob("*.safetensors"))
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["recipe"]["steps"] == 3


@pytest.mark.parametrize("loader, folder, shape", [(load_digits_unet, DIGITS_UNET_DIR, (1, 16, 16)),
                                                   (load_shapes_unet, SHAPES_UNET_DIR, (8, 8, 8))])
def test_shipped_unets_load_offline_and_deterministically(loader, folder, shape):
    info = json.loads((folder / "training.json").read_text())
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == info["sha256"]
    a, b = loader(), loader()
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500, 100, 0])
    with torch.no_grad():
        assert torch.equal(a(x, t).sample, b(x, t).sample)
        assert torch.equal(UNetDenoiser(a)(x, t), a(x, t).sample)
    from mmdg_lite import sample

    s1 = sample(UNetDenoiser(a), 4, shape, scheduler="ddim", num_steps=5, seed=3).samples
    s2 = sample(UNetDenoiser(b), 4, shape, scheduler="ddim", num_steps=5, seed=3).samples
    assert torch.equal(s1, s2) and bool(torch.isfinite(s1).all())
    assert UNetDenoiser(a).sample_shape == shape == tuple(s1.shape[1:])


def test_unet_denoiser_names_the_shape_its_unet_needs():
    den = UNetDenoiser(load_shapes_unet())  # 8 latent channels
    from mmdg_lite import sample

    with pytest.raises(ValueError, match=r"x_t must be \(B, 8, H, W\).*got shape \(2, 4, 8, 8\).*\(8, 8, 8\)"):
        sample(den, 2, (4, 8, 8), scheduler="ddim", num_steps=2, seed=0)
    with pytest.raises(ValueError, match=r"got shape \(8, 8, 8\)"):
        den(torch.zeros(8, 8, 8), 10)
    # H, W the UNet cannot halve (two blocks: downsamples by 2) were a raw torch.cat error
    with pytest.raises(ValueError, match=r"x_t has H x W = 9 x 9 \(shape \(2, 8, 9, 9\)\).*multiples of 2"):
        sample(den, 2, (8, 9, 9), num_steps=3)
    assert den(torch.zeros(1, 8, 10, 6), 10).shape == (1, 8, 10, 6)  # any even size runs


def test_a_unet_without_sample_size_gets_named_errors_not_a_type_error():
    from diffusers import UNet2DModel

    from mmdg_lite.images.models import sample_shape

    unet = UNet2DModel(in_channels=1, out_channels=1, block_out_channels=[8, 16], layers_per_block=1,
                       down_block_types=["DownBlock2D"] * 2, up_block_types=["UpBlock2D"] * 2, norm_num_groups=4)
    assert unet.config.sample_size is None  # diffusers' default
    den = UNetDenoiser(unet)
    with pytest.raises(ValueError, match=r"no sample_size.*\(1, H, W\)"):  # 'NoneType' object is not iterable
        sample_shape(unet)
    with pytest.raises(ValueError, match=r"no sample_size"):
        den.sample_shape
    # the shape errors of forward built their message from sample_shape and raised that TypeError instead
    with pytest.raises(ValueError, match=r"x_t must be \(B, 1, H, W\).*shape=\(1, H, W\)"):
        den(torch.zeros(2, 3, 8, 8), 5)
    with pytest.raises(ValueError, match=r"multiples of 2.*shape=\(1, H, W\)"):
        den(torch.zeros(2, 1, 7, 8), 5)
    assert den(torch.zeros(2, 1, 8, 8), 5).shape == (2, 1, 8, 8)


def test_unet_denoiser_takes_an_integer_timestep_and_refuses_a_fractional_one():
    import numpy as np

    den = UNetDenoiser(load_digits_unet())
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = den(x, torch.full((2,), 500, dtype=torch.long))
        assert torch.equal(den(x, 500), ref) and torch.equal(den(x, np.int64(500)), ref)
        with pytest.raises(TypeError, match="t must be an integer >= 0; got float 500.7"):
            den(x, 500.7)  # int() made it 500, where torch.tensor(500.7) reaches the UNet as 500.7
        with pytest.raises(ValueError, match="t must be an integer >= 0"):
            den(x, -1)


def test_shipped_vae_loads_and_reconstructs_every_style():
    from mmdg_lite.images.shapes import make_shapes

    info = json.loads((SHAPES_VAE_DIR / "training.json").read_text())
    vae, again = load_shapes_vae(), load_shapes_vae()
    assert hashlib.sha256((SHAPES_VAE_DIR / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest() \
        == info["sha256"]
    s = make_shapes(64, {"size": [0.5, 0.5], "fill": [0.5, 0.5]}, seed=55)  # unseen seed
    z = encode_references(vae, s.images)
    assert z.shape == (64, 8, 8, 8)
    assert torch.equal(z, encode_references(again, s.images))
    assert 0.5 < float(z.std()) < 2.0  # the stored scaling factor makes latents ~unit scale
    err = (decode_latents(vae, z) - s.images).pow(2).mean((1, 2, 3))  # (64,)
    for value in ("filled", "outlined"):  # the minority style is representable
        assert float(err[s.mask("fill", value)].mean()) < 0.03, value


def test_loader_error_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_digits_unet(tmp_path)
    with pytest.raises(FileNotFoundError, match="feature network"):
        load_feature_net(tmp_path)


def test_feature_net_accuracy_and_style_separation():
    from mmdg_lite.images.evaluation import feature_net_report

    net = load_feature_net()
    report = feature_net_report(net, n_shapes=400)
    for head, bound in FEATURE_BOUNDS.items():
        assert report["accuracy"][head] >= bound, (head, report["accuracy"][head])
    for key in ("digits_thick_vs_thin", "shapes_outlined_vs_filled"):
        sep = report[key]
        assert sep["fd_between_styles"] > 5 * sep["fd_within_style"], (key, sep)
        assert sep["probe_accuracy"] > 0.95, (key, sep)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert torch.equal(image_features(x, net), image_features(x, load_feature_net()))
    assert image_features(x, net).shape == (3, 64)


def test_feature_net_refuses_images_on_another_scale():
    from mmdg_lite.images.features import predict

    x = torch.rand(3, 1, 16, 16) * 2 - 1
    for bad, msg in (((x + 1) * 127.5, r"images must be in \[-1, 1\].*x / 127.5 - 1"),
                     (x.masked_fill(x > 0.9, float("nan")), "NaN"),
                     (x[:, 0], r"\(N, 1 or 3, H, W\)")):
        with pytest.raises(ValueError, match=msg):
            image_features(bad)
        with pytest.raises(ValueError, match=msg):
            predict(bad, "digit")
    # a kernel on Tweedie estimates goes through FeatureNet.features, which takes any values
    assert torch.isfinite(load_feature_net().features(x * 10)).all()


def test_features_move_the_images_to_the_networks_device():
    """Samples on a GPU met the CPU network in a bare conv2d device error (run_method's measures on a
    model moved to CUDA); the images now go to the network's device. A network on the meta device
    stands in for the GPU here: without the move this raised 'Tensor on device meta is not on the
    expected device cpu'."""
    from mmdg_lite.images.features import predict
    from mmdg_lite.images.shapes import make_shapes

    x = make_shapes(4, seed=0).images  # on the CPU
    meta = load_feature_net().to("meta")
    f, p = image_features(x, meta), predict(x, "shape", meta)
    assert f.device.type == "meta" and f.shape == (4, 64) and p.device.type == "meta" and p.shape == (4, 3)
    net = load_feature_net()
    assert torch.equal(image_features(x, net), net.features(x))  # on one device: as before


def test_features_name_a_net_that_is_not_a_feature_net():
    from mmdg_lite.images.features import predict
    from mmdg_lite.images.shapes import make_shapes

    x = make_shapes(2, seed=0).images
    for bad in (str(FEATURE_NET_DIR), load_shapes_vae()):  # AttributeError: no 'features' / 'heads' / 'parameters'
        with pytest.raises(TypeError, match=r"net must be a FeatureNet \(e.g. load_feature_net\(folder\)\)"):
            image_features(x, bad)
        with pytest.raises(TypeError, match="net must be a FeatureNet"):
            predict(x, "shape", bad)
    assert torch.equal(image_features(x, None), image_features(x, load_feature_net()))


def test_data_folder_within_budget():
    total = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
    assert total <= 30 * 10**6, f"data/ holds {total / 10**6:.1f} MB; the budget is 30 MB (10^6 bytes)"
    for folder in (DIGITS_UNET_DIR, SHAPES_VAE_DIR, SHAPES_UNET_DIR, FEATURE_NET_DIR):
        assert (folder / "training.json").is_file() and not list(folder.glob("*.bin")) \
            and not list(folder.glob("*.pt")), folder


def test_vae_reconstructions_are_read_as_the_shapes_they_were():
    """The detector reads the decoder's output, not only drawn shapes: VAE reconstructions of
    unseen real shapes keep their shape, fill and validity (measured on 1,000: valid 0.996-0.998,
    shape 0.999-1.000; before the soft-mask square reading 0.96 / 0.92, data/README.md), the
    originals' attributes being the oracle."""
    from mmdg_lite.images.detectors import detect_shapes
    from mmdg_lite.images.shapes import make_shapes

    s = make_shapes(200, seed=77)  # the pretraining mix, unseen seed
    assert bool(detect_shapes(s.images).valid.all())
    vae = load_shapes_vae()
    rec = detect_shapes(decode_latents(vae, encode_references(vae, s.images)))
    assert float(rec.valid.float().mean()) >= 0.98
    for attribute in ("shape", "fill", "colour"):
        assert float((rec.attributes[attribute] == s.attributes[attribute]).float().mean()) >= 0.98, attribute


def test_a_model_folder_of_another_class_raises_instead_of_random_weights():
    """diffusers alone only warns and initialises the missing tensors at random."""
    from mmdg_lite._io import ArtifactError
    from mmdg_lite.images.models import SHAPES_UNET_DIR

    with pytest.raises(ArtifactError, match=r"shapes_unet: the weights .* do not match its config.json for "
                                            r"AutoencoderKL: missing keys"):
        load_shapes_vae(SHAPES_UNET_DIR)


def test_feature_batch_size_is_checked():
    from mmdg_lite.images.features import predict

    x = -torch.ones(2, 1, 16, 16)  # blank images on the dark background
    for bad, error in ((0, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(error, match="batch_size must be an integer >= 1"):
            image_features(x, batch_size=bad)
        with pytest.raises(error, match="batch_size must be an integer >= 1"):
            predict(x, "digit", batch_size=bad)


def test_loading_the_feature_net_leaves_the_global_rng_alone():
    """load_feature_net (lazily, on the first image_features / run_method) built the network with
    torch's default init, advancing the caller's global stream once: code after it drew numbers that
    depended on whether the network was already cached."""
    torch.manual_seed(0)
    want = torch.randn(8)
    torch.manual_seed(0)
    load_feature_net()
    assert torch.equal(torch.randn(8), want)


def test_feature_net_report_checks_its_arguments_before_any_work(monkeypatch):
    # net=None raised 'NoneType' object is not callable after the held-out digits were loaded, and
    # n_shapes=3 surfaced as style_separation's 'features must be a tensor (N, F) with N >= 4'
    import mmdg_lite.images.evaluation as ev

    def no_work():
        raise AssertionError("held-out data loaded before the arguments were checked")

    monkeypatch.setattr(ev, "held_out_digits", no_work)
    with pytest.raises(TypeError, match=r"net must be a FeatureNet.*got None"):
        ev.feature_net_report(None)
    net = load_feature_net()
    for bad, err in ((3, ValueError), (10.0, TypeError)):
        with pytest.raises(err, match=rf"n_shapes must be an integer >= 8; got .*{bad}"):
            ev.feature_net_report(net, n_shapes=bad)


@pytest.mark.parametrize("train, extra", [("train_digits_unet", {}), ("train_shapes_vae", {}),
                                          ("train_shapes_unet", {"vae": None}), ("train_feature_net", {})])
def test_image_trainers_refuse_an_unknown_recipe_key_before_training(train, extra):
    # a typo such as stpes=3 was silently ignored, and the full recipe trained for minutes
    from mmdg_lite.images import features, models

    fn = getattr(models, train, None) or getattr(features, train)
    with pytest.raises(TypeError, match=rf"{train}\(\) got unknown recipe key\(s\) \['stpes'\]; valid: .*'steps'"):
        fn(progress=False, stpes=3, **extra)


def test_unet_denoiser_refuses_conditional_unets_and_vaes_up_front():
    # SD's UNet2DConditionModel, a class-conditional UNet2DModel and a VAE were wrapped without a
    # word and failed inside diffusers at the first denoising step (missing encoder_hidden_states, ...)
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

    small = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    cond = UNet2DConditionModel(in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, **small)
    classes = UNet2DModel(in_channels=1, out_channels=1, down_block_types=("DownBlock2D",) * 2,
                          up_block_types=("UpBlock2D",) * 2, num_class_embeds=10, **small)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4)
    for model, why in ((cond, r"its forward needs \['encoder_hidden_states'\]"), (classes, "it is class-conditional"),
                       (vae, "its forward takes no timestep")):
        with pytest.raises(TypeError, match=rf"unconditional diffusers UNet2DModel.*got a {type(model).__name__} "
                                            rf"\({why}\).*mmdg_lite.pipelines"):
            UNetDenoiser(model)
    plain = UNet2DModel(in_channels=1, out_channels=1, down_block_types=("DownBlock2D",) * 2,
                        up_block_types=("UpBlock2D",) * 2, **small)
    x = torch.zeros(1, 1, 8, 8)
    assert torch.equal(UNetDenoiser(plain)(x, 3), plain(x, torch.tensor([3])).sample)

    class Wrapped(torch.nn.Module):  # a forward of (*args, **kwargs), as torch.compile's: taken as it is
        config = plain.config

        def forward(self, *args, **kwargs):
            return plain(*args, **kwargs)
    assert torch.equal(UNetDenoiser(Wrapped())(x, 3), plain(x, torch.tensor([3])).sample)


def test_shipped_image_models_load_in_float32_under_a_float64_default_dtype():
    """Under torch.set_default_dtype(torch.float64) the loaders built float64 models, so
    run_method / sample (dtype float32) refused them: 'the denoiser's parameters are torch.float64'."""
    from mmdg_lite.images.models import load_shapes_unet, load_shapes_vae

    loaders = (load_digits_unet, load_shapes_vae, load_shapes_unet, load_feature_net)
    want = [next(f().parameters()) for f in loaders]
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = [next(f().parameters()) for f in loaders]
    finally:
        torch.set_default_dtype(before)
    assert all(g.dtype == torch.float32 and torch.equal(g, w) for g, w in zip(got, want))
