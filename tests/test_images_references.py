"""Reference sets: folder loading (modes, sizes, error cases) and the VAE scaling factor applied once."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmdg_lite.images.references import (decode_latents, encode_references, load_reference_folder,
                                         references_from_tensors)


def _write_images(folder):
    Image.new("RGB", (40, 30), (255, 255, 255)).save(folder / "a_white.png")
    Image.new("L", (8, 8), 0).save(folder / "b_black.png")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(folder / "c_transparent.png")  # alpha 0 -> black
    Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / "d_red.jpg", quality=95)
    Image.new("P", (20, 20), 0).save(folder / "e_palette.png")
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(folder / "f_16bit.png")


def test_folder_any_mode_and_size(tmp_path):
    _write_images(tmp_path)
    (tmp_path / ".DS_Store").write_bytes(b"\0junk")  # hidden files are skipped
    rgb = load_reference_folder(tmp_path, 32, 3)
    assert rgb.shape == (6, 3, 32, 32) and rgb.dtype == torch.float32
    assert torch.allclose(rgb[0], torch.ones(3, 32, 32))        # white
    assert torch.allclose(rgb[1], -torch.ones(3, 32, 32))       # black grey
    assert torch.allclose(rgb[2], -torch.ones(3, 32, 32))       # transparent on black
    assert rgb[3, 0].mean() > 0.95 and rgb[3, 1:].mean() < -0.9  # red JPEG (lossy)
    assert torch.allclose(rgb[5], torch.ones(3, 32, 32))        # 16-bit white
    grey = load_reference_folder(tmp_path, 16, 1)
    assert grey.shape == (6, 1, 16, 16)
    assert abs(float(grey[3].mean()) - (0.299 * 2 - 1)) < 0.03  # red -> luma 0.299


def test_folder_lists_every_bad_file(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError) as err:
        load_reference_folder(tmp_path, 16, 1)
    msg = str(err.value)
    assert "broken.png" in msg and "notes.txt" in msg and "2 of 8" in msg
    assert "a_white.png" not in msg


def test_folder_empty_and_missing(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_reference_folder(tmp_path, 16, 1)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_reference_folder(tmp_path / "nope", 16, 1)
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="channels"):
        load_reference_folder(tmp_path, 16, 2)
    with pytest.raises(ValueError, match="size"):
        load_reference_folder(tmp_path, 0, 1)


def test_from_tensors_matches_folder(tmp_path):
    rng = np.random.default_rng(0)
    arr = (rng.random((3, 16, 16, 3)) * 255).astype(np.uint8)
    for i, a in enumerate(arr):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    from_folder = load_reference_folder(tmp_path, 16, 3)
    from_tensor = references_from_tensors(torch.from_numpy(arr).permute(0, 3, 1, 2).float(), 16, 3,
                                          value_range=(0, 255))
    assert torch.allclose(from_folder, from_tensor, atol=1e-6)
    grey = references_from_tensors(torch.zeros(2, 8, 8), 16, 3, value_range=(0, 1))
    assert grey.shape == (2, 3, 16, 16) and torch.allclose(grey, -torch.ones_like(grey))
    with pytest.raises(ValueError, match="value_range"):
        references_from_tensors(torch.zeros(2, 8, 8), 16, 3, value_range=(1, 0))


def _tiny_vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=[8, 8],
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=16,
                         scaling_factor=scaling_factor).eval()


def test_scaling_factor_applied_exactly_once():
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vae = _tiny_vae(0.18215)
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean  # the oracle: diffusers' own encoder, unscaled
        z = encode_references(vae, x)
        assert torch.allclose(z, mean * 0.18215, atol=1e-6)          # once
        assert not torch.allclose(z, mean * 0.18215 ** 2, atol=1e-3)  # not twice (reference code)
        # decode_latents inverts exactly that: same image as decoding the unscaled mean
        assert torch.allclose(decode_latents(vae, z), vae.decode(mean).sample.clamp(-1, 1), atol=1e-5)
    # changing the factor scales the latents linearly and leaves the round trip unchanged
    vae2 = _tiny_vae(2.0)
    z2 = encode_references(vae2, x)
    assert torch.allclose(z2, z / 0.18215 * 2.0, atol=1e-5)
    assert torch.allclose(decode_latents(vae2, z2), decode_latents(vae, z), atol=1e-5)


def test_folder_limit_and_channels_are_validated(tmp_path):
    _write_images(tmp_path)
    assert load_reference_folder(tmp_path, 8, 1, limit=2).shape == (2, 1, 8, 8)
    assert load_reference_folder(tmp_path, 8, 1, limit=100).shape == (6, 1, 8, 8)
    for bad in (-1, 0):
        with pytest.raises(ValueError, match=f"limit must be an integer >= 1; got {bad}"):
            load_reference_folder(tmp_path, 8, 1, limit=bad)
    for bad in (True, 2.5):
        with pytest.raises(TypeError, match="limit"):
            load_reference_folder(tmp_path, 8, 1, limit=bad)
    with pytest.raises(TypeError, match=r"channels must be 1 \(grey\) or 3 \(RGB\); got bool True"):
        load_reference_folder(tmp_path, 8, True)
    with pytest.raises(TypeError, match="channels"):
        references_from_tensors(torch.zeros(2, 8, 8), 16, 3.0)
    with pytest.raises(TypeError, match="size"):
        load_reference_folder(tmp_path, 16.0, 1)


def test_from_tensors_refuses_values_outside_value_range():
    pixels = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"images have dtype torch.uint8: name their range, e.g. value_range=\(0, 255\)"):
        references_from_tensors(pixels, 8, 3)  # 0-255 with the default (-1, 1): was all 1.0
    with pytest.raises(ValueError, match=r"images hold values in \[200, 200\], outside value_range.*\(0, 255\)"):
        references_from_tensors(pixels.float(), 8, 3)
    assert torch.allclose(references_from_tensors(pixels, 8, 3, value_range=(0, 255)),
                          torch.full((2, 3, 8, 8), 200 / 255 * 2 - 1))
    with pytest.raises(ValueError, match=r"value_range=\(0, 1\).*value_range=\(-1, 1\)"):
        references_from_tensors(torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8), 8, 1, value_range=(0, 1))
    nan = torch.zeros(2, 1, 8, 8)
    nan[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="images contains 1 NaN"):
        references_from_tensors(nan, 8, 1)
    with pytest.raises(TypeError, match="value_range must be a pair"):
        references_from_tensors(torch.zeros(2, 8, 8), 8, 1, value_range=1)
    with pytest.raises(TypeError, match="value_range"):
        references_from_tensors(torch.zeros(2, 8, 8), 8, 1, value_range=(0, 1, 2))
    with pytest.raises(ValueError, match="value_range must be .* finite"):
        references_from_tensors(torch.zeros(2, 8, 8), 8, 1, value_range=(0, float("inf")))
    # a little overshoot (generated samples) is still clamped as before
    over = torch.linspace(-1.1, 1.1, 64).reshape(1, 1, 8, 8)
    assert torch.allclose(references_from_tensors(over, 8, 1), over.clamp(-1, 1), atol=1e-6)


def test_encode_decode_check_their_inputs():
    vae = _tiny_vae(0.5)  # 3 -> 4 latent channels, downsamples by 2
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    z = encode_references(vae, x)
    # other floating dtypes are cast to the VAE's: float64 gives the float32 result exactly
    assert torch.equal(encode_references(vae, x.double()), z)
    assert torch.allclose(encode_references(vae, x.half()), z, atol=1e-2)
    assert torch.equal(decode_latents(vae, z.double()), decode_latents(vae, z))
    assert torch.allclose(encode_references(vae, x, batch_size=1), z, atol=1e-5)
    with pytest.raises(ValueError, match=r"images has 1 channel\(s\).*VAE takes 3.*channels=3"):
        encode_references(vae, x[:, :1])
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\) with N >= 1; got shape \(0, 3"):
        encode_references(vae, x[:0])
    with pytest.raises(ValueError, match="images must have shape"):
        encode_references(vae, x[0])
    with pytest.raises(TypeError, match="images has dtype torch.uint8"):
        encode_references(vae, ((x + 1) * 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match="H x W = 16 x 15.*multiples of 2"):
        encode_references(vae, x[..., :15])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images contains 1 NaN"):
        encode_references(vae, bad)
    for size in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            encode_references(vae, x, batch_size=size)
        with pytest.raises(ValueError, match="batch_size"):
            decode_latents(vae, z, batch_size=size)
    with pytest.raises(TypeError, match="batch_size"):
        decode_latents(vae, z, batch_size=2.0)
    with pytest.raises(TypeError, match="latents must be a torch.Tensor.*torch.from_numpy"):
        decode_latents(vae, z.numpy())
    with pytest.raises(ValueError, match=r"latents has 3 channel\(s\).*VAE takes 4"):
        decode_latents(vae, z[:, :3])
    with pytest.raises(ValueError, match="latents must have shape"):
        decode_latents(vae, z[0])
    with pytest.raises(ValueError, match="latents must have shape"):
        decode_latents(vae, z[:0])
    with pytest.raises(ValueError, match="latents contains"):
        decode_latents(vae, z.clone().fill_(float("inf")))


def test_encode_references_refuses_another_scale():
    """Float images in 0-255 were encoded without complaint; overshoot up to +-3 (generated
    samples) is still encoded as it is."""
    vae = _tiny_vae(0.5)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\].*got values in \[.*\].*x / 127.5 - 1"):
        encode_references(vae, (x + 1) * 127.5)
    with pytest.raises(ValueError, match=r"images must be in \[-1, 1\]"):
        encode_references(vae, x - 4)
    over = x * 1.2
    with torch.no_grad():
        assert torch.equal(encode_references(vae, over), vae.encode(over).latent_dist.mean * 0.5)
    z = encode_references(vae, x)
    assert decode_latents(vae, z * 10).shape == (2, 3, 16, 16)  # latents are not range-checked


def test_from_tensors_takes_unit_range_data_as_given_under_the_default_range():
    """[0, 1] data lies inside the default (-1, 1): documented, returned as given, not rescaled."""
    doc = " ".join(references_from_tensors.__doc__.split())
    assert "Data in [0, 1] lies inside the default (-1, 1)" in doc and "value_range=(0, 1)" in doc
    unit = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(references_from_tensors(unit, 8, 1), unit)
    assert torch.allclose(references_from_tensors(unit, 8, 1, value_range=(0, 1)), unit * 2 - 1)


def _three_blocks(folder):
    """A 30 x 10 RGB image: red, green and blue 10 x 10 blocks from left to right."""
    a = np.zeros((10, 30, 3), dtype=np.uint8)
    for i in range(3):
        a[:, 10 * i:10 * (i + 1), i] = 255
    Image.fromarray(a).save(folder / "blocks.png")
    return a


def test_folder_fit_crop_pad_squash(tmp_path):
    a = _three_blocks(tmp_path)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)
    crop = load_reference_folder(tmp_path, 10, 3, fit="crop")[0]   # the centred 10 x 10: green only
    assert torch.allclose(crop, green.expand(3, 10, 10), atol=1e-6)
    pad = load_reference_folder(tmp_path, 30, 3, fit="pad")[0]     # 30 x 30: black bands above and below
    assert torch.allclose(pad[:, :10], -torch.ones(3, 10, 30)) and torch.allclose(pad[:, 20:], -torch.ones(3, 10, 30))
    assert torch.allclose(pad[:, 10:20], torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    squash = load_reference_folder(tmp_path, 30, 3)[0]            # default: stretched to 30 tall, 3 blocks kept
    assert squash[0, :, 2].mean() > 0.9 and squash[1, :, 15].mean() > 0.9 and squash[2, :, 27].mean() > 0.9
    # the tensor path makes the same squares (no resampling at these sizes, so exactly)
    t = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    assert torch.allclose(references_from_tensors(t, 10, 3, value_range=(0, 255), fit="crop")[0], crop, atol=1e-6)
    assert torch.allclose(references_from_tensors(t, 30, 3, value_range=(0, 255), fit="pad")[0], pad, atol=1e-6)
    for fn in (lambda: load_reference_folder(tmp_path, 10, 3, fit="center"),
               lambda: references_from_tensors(t, 10, 3, value_range=(0, 255), fit="stretch")):
        with pytest.raises(ValueError, match=r"fit must be one of 'squash', 'crop', 'pad'"):
            fn()


def test_folder_turns_photos_upright_by_exif(tmp_path):
    stored = np.zeros((10, 20), dtype=np.uint8)
    stored[:, :10] = 255  # as stored: left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation 6: the viewer turns the stored image 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
    x = load_reference_folder(tmp_path, 20, 1, fit="pad")[0, 0]  # upright: 10 wide, 20 tall, bands left/right
    assert torch.allclose(x[:10, 5:15], torch.ones(10, 10)) and torch.allclose(x[10:, 5:15], -torch.ones(10, 10))
    assert torch.allclose(x[:, :5], -torch.ones(20, 5)) and torch.allclose(x[:, 15:], -torch.ones(20, 5))


def test_large_jpeg_decoded_at_reduced_scale_matches_full_decode(tmp_path):
    # a large photo is decoded at a reduced DCT scale (draft) before the resize; the oracle is
    # Pillow's full decode followed by the same Lanczos resize
    yy, xx = np.mgrid[0:1200, 0:1600]
    a = np.stack([xx * 255 // 1599, yy * 255 // 1199, ((xx // 100 + yy // 100) % 2) * 255], -1).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "photo.jpg", quality=95)
    x = load_reference_folder(tmp_path, 64, 3)[0]
    with Image.open(tmp_path / "photo.jpg") as im:
        full = np.asarray(im.convert("RGB").resize((64, 64), Image.LANCZOS), dtype=np.float32) / 127.5 - 1
    diff = (x - torch.from_numpy(full).permute(2, 0, 1)).abs()
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1


def test_recursive_folder_skips_hidden_folders_and_names_nested_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "sub" / "b.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / ".ipynb_checkpoints" / "c.png")  # a notebook's copy
    x = load_reference_folder(tmp_path, 8, 3, recursive=True)
    assert x.shape == (2, 3, 8, 8) and float(x[:, 2].max()) == -1.0  # no blue image
    (tmp_path / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"sub/broken.png \("):
        load_reference_folder(tmp_path, 8, 3, recursive=True)
    with pytest.raises(TypeError, match="recursive must be True or False; got 1"):
        load_reference_folder(tmp_path, 8, 3, recursive=1)


def test_images_over_the_decompression_bomb_limit_are_listed_not_raised_raw(tmp_path):
    Image.new("1", (14_000, 14_000), 1).save(tmp_path / "big.png")  # 196 megapixels, 24 kB on disk
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match=r"(?s)1 of 2 file\(s\).*big.png \(DecompressionBombError"):
        load_reference_folder(tmp_path, 8, 3)


def test_pad_keeps_a_thin_image(tmp_path):
    """A 1 x 100 white line padded to 8 x 8 keeps a 1-px line in the middle column (it rounded to
    0 px and vanished), as the tensor path keeps it there."""
    Image.fromarray(np.full((100, 1, 3), 255, np.uint8)).save(tmp_path / "line.png")
    x = load_reference_folder(tmp_path, 8, 3, fit="pad")[0]
    lit = (x > -1).any(0).any(0)  # (W,) columns with any ink
    assert lit.tolist() == [False] * 3 + [True] + [False] * 4 and float(x.max()) > 0.9
    t = references_from_tensors(torch.ones(1, 3, 100, 1), 8, 3, value_range=(0, 1), fit="pad")[0]
    assert int((t > -1).any(0).any(0).float().argmax()) == 3  # the same column


def test_grey_16_bit_data_reads_the_same_in_every_container(tmp_path):
    """1000 / 65535 of white is near black whether Pillow opens it as I;16 (PNG) or I (TIFF);
    float data in [0, 1] ('F') reads as its value."""
    a = np.full((8, 8), 1000, np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a.astype(np.int32), mode="I").save(tmp_path / "b.tif")
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(tmp_path / "c.tif")
    x = load_reference_folder(tmp_path, 8, 1)
    want = 2 * np.floor(1000 / 65535 * 255) / 255 - 1
    assert abs(float(x[0].mean()) - want) < 1e-6 and abs(float(x[1].mean()) - want) < 1e-6
    assert abs(float(x[2].mean()) - (2 * np.floor(0.5 * 255) / 255 - 1)) < 1e-6


def test_encode_options_are_checked():
    from mmdg_lite.images import load_shapes_vae

    vae, x = load_shapes_vae(), torch.zeros(2, 3, 32, 32)
    with pytest.raises(TypeError, match="sample must be True or False; got 'no'"):
        encode_references(vae, x, sample="no")
    with pytest.raises(TypeError, match="generator must be a torch.Generator.*got int"):
        encode_references(vae, x, sample=True, generator=0)


def test_from_tensors_integer_masks_complex_and_empty_sides():
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    mask[:, :, 2:6, 2:6] = 1
    for m in (mask, mask.bool()):  # 0/1 data lie inside (-1, 1): black would silently become mid-grey
        with pytest.raises(ValueError, match=r"images have dtype torch\.(uint8|bool): name their range"):
            references_from_tensors(m, 8, 1)
    x = references_from_tensors(mask, 8, 1, value_range=(0, 1))
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    with pytest.raises(TypeError, match="images must hold real values; got dtype torch.complex64"):
        references_from_tensors(torch.zeros(2, 1, 8, 8, dtype=torch.complex64), 8, 1)
    with pytest.raises(ValueError, match=r"N, H, W >= 1 .* got \(2, 1, 0, 8\)"):
        references_from_tensors(torch.zeros(2, 1, 0, 8), 8, 1)
    with pytest.raises(ValueError, match=r"channels last\? use images.permute\(0, 3, 1, 2\)"):
        references_from_tensors(torch.zeros(2, 8, 8, 3), 8, 3)


def test_from_tensors_composites_rgba_on_black_as_the_folder_does(tmp_path):
    """An RGBA array (np.asarray of a transparent PNG) kept the colour stored under alpha 0: a
    transparent background saved as white came back white from references_from_tensors and black
    from load_reference_folder. Both composite on black now; Pillow's alpha_composite is the oracle."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 8, 8, 4), dtype=np.uint8)
    a[:, :4, :, 3] = 0      # fully transparent rows over random colours
    a[:, 4:6, :, 3] = 255   # opaque rows
    for i, im in enumerate(a):
        Image.fromarray(im, "RGBA").save(tmp_path / f"{i}.png")
    t = torch.from_numpy(a).permute(0, 3, 1, 2)
    for channels in (3, 1):
        folder = load_reference_folder(tmp_path, 8, channels)
        tensor = references_from_tensors(t, 8, channels, value_range=(0, 255))
        # Pillow rounds the composite to 8 bits; the tensor path keeps the exact product
        assert torch.allclose(tensor, folder, atol=2 / 255 + 1e-6), channels
    assert torch.equal(tensor[:, :, :4], -torch.ones(2, 1, 4, 8))  # transparent: black, whatever lay under it


def test_sampled_latents_keep_the_vae_dtype():
    """sample=True added float32 noise to a bfloat16 VAE's posterior and returned float32 latents,
    while the posterior mean (sample=False) came back in bfloat16; both are in the VAE's dtype."""
    vae = _tiny_vae(0.5).to(torch.bfloat16)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean = encode_references(vae, x)
    drawn = encode_references(vae, x, sample=True, generator=torch.Generator().manual_seed(0))
    assert mean.dtype == drawn.dtype == torch.bfloat16
    # the draw is the float32 one rounded: the same generator gives the same latents as in float32
    vae32 = _tiny_vae(0.5)
    drawn32 = encode_references(vae32, x, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(drawn.float(), drawn32, atol=0.1)


def test_png_colour_key_transparency_is_composited_on_black_in_every_mode(tmp_path):
    """A grey, RGB, 1-bit or 16-bit PNG marks one colour transparent with a tRNS key (no alpha
    band): those pixels are composited on black, as alpha 0 is; the opaque half keeps its value.
    Only palette images honoured the key (a white 'transparent' background came back white)."""
    half = np.zeros((8, 8), bool)
    half[:, :4] = True  # left half: the transparent key colour
    Image.fromarray(np.where(half, 255, 128).astype(np.uint8)).save(tmp_path / "a_grey.png", transparency=255)
    rgb = np.where(half[..., None], [255, 255, 255], [0, 200, 0]).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "b_rgb.png", transparency=(255, 255, 255))
    Image.fromarray(np.where(half, 65535, 32896).astype(np.uint16)).save(tmp_path / "c_16bit.png", transparency=65535)
    Image.fromarray(half).save(tmp_path / "d_1bit.png", transparency=1)  # white (1) transparent, black opaque
    x = (load_reference_folder(tmp_path, 8, 3) + 1) * 127.5  # back to 0-255 levels
    expected = np.zeros((4, 8, 8, 3))  # the key pixels: black
    expected[0, ~half], expected[1, ~half], expected[2, ~half] = 128, (0, 200, 0), 128
    assert np.allclose(x.permute(0, 2, 3, 1).numpy(), expected, atol=1e-3)


def test_folder_order_is_the_same_for_composed_and_decomposed_names(tmp_path):
    """macOS stores 'é' decomposed (e + U+0301), Linux as typed (U+00E9): the same folder copied
    across must load in one order, code points of the NFC names (sorting the stored names put the
    decomposed 'é' before 'f', the composed one after it)."""
    import unicodedata

    names = {"B.png": 0, "a.png": 60, "f.png": 120, "\u00e9.png": 180, "z\u00e9/x.png": 240}  # grey levels
    loaded = []
    for form in ("NFC", "NFD"):
        folder = tmp_path / form
        for name, level in names.items():
            path = folder / unicodedata.normalize(form, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 4), level).save(path)
        loaded.append(load_reference_folder(folder, 4, 1, recursive=True)[:, 0, 0, 0])
    expected = torch.tensor([names[n] for n in sorted(names)]) / 127.5 - 1  # Python's str order is code points
    assert torch.equal(loaded[0], loaded[1]) and torch.allclose(loaded[0], expected)


def test_folder_lists_a_link_whose_target_is_missing(tmp_path):
    """A symlinked reference whose target was moved is named among the unreadable files (it was
    skipped without a word: one reference fewer, and prompts paired with the wrong files); a link
    to an existing image is read as that image."""
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    assert torch.equal(*load_reference_folder(tmp_path, 8, 3))
    (tmp_path / "c.png").symlink_to(tmp_path / "moved.png")
    with pytest.raises(ValueError,
                       match=r"(?s)1 of 3 file\(s\).*c.png \(a link to '.*moved.png', which does not exist\)"):
        load_reference_folder(tmp_path, 8, 3)


def test_from_tensors_takes_flipped_numpy_views_and_names_unusable_dtypes():
    """A BGR array turned RGB by a flipped view (bgr[:, ::-1], as OpenCV users write) has negative
    strides, which torch.from_numpy refuses with its own error: it is read as its copy. Arrays of
    objects or long doubles name images and their dtype instead of torch's message."""
    bgr = np.random.default_rng(0).integers(0, 256, (2, 3, 6, 6), dtype=np.uint8)
    flipped = bgr[:, ::-1]
    assert any(s < 0 for s in flipped.strides)
    got = references_from_tensors(flipped, 6, 3, value_range=(0, 255))
    assert torch.equal(got, references_from_tensors(np.ascontiguousarray(flipped), 6, 3, value_range=(0, 255)))
    assert torch.allclose(got[:, 0], torch.from_numpy(bgr[:, 2] / 127.5 - 1).float())  # red was the last plane
    for dtype in (object, np.longdouble):
        with pytest.raises(TypeError, match=rf"images must hold real numbers .*dtype {np.dtype(dtype)}"):
            references_from_tensors(bgr.astype(dtype), 6, 3, value_range=(0, 255))


def test_recursive_folder_follows_a_linked_folder_and_stops_at_a_loop(tmp_path):
    """recursive=True reads the images of a linked subfolder (Path.rglob skipped it, so those
    references were left out without a word); a link back to an ancestor is not walked twice."""
    refs, elsewhere = tmp_path / "refs", tmp_path / "elsewhere"
    refs.mkdir()
    elsewhere.mkdir()
    Image.new("L", (4, 4), 0).save(refs / "a.png")
    Image.new("L", (4, 4), 255).save(elsewhere / "b.png")
    (refs / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(refs, target_is_directory=True)  # refs/linked/back -> refs: a loop
    x = load_reference_folder(refs, 4, 1, recursive=True)
    assert x.shape == (2, 1, 4, 4) and x[:, 0, 0, 0].tolist() == [-1.0, 1.0]  # a.png, then linked/b.png
    assert load_reference_folder(refs, 4, 1).shape == (1, 1, 4, 4)  # not recursive: subfolders are skipped


def test_recursive_folder_reads_a_folder_linked_twice_under_both_names(tmp_path):
    """Two names for one folder (a subfolder and a link to it) give its images under both, in
    name order, whatever order the filesystem lists them in (not once, under whichever came first)."""
    (tmp_path / "sub").mkdir()
    Image.new("L", (4, 4), 255).save(tmp_path / "sub" / "b.png")
    Image.new("L", (4, 4), 0).save(tmp_path / "m.png")
    (tmp_path / "alias").symlink_to(tmp_path / "sub", target_is_directory=True)
    x = load_reference_folder(tmp_path, 4, 1, recursive=True)  # alias/b.png, m.png, sub/b.png
    assert x[:, 0, 0, 0].tolist() == [1.0, -1.0, 1.0]


def test_float_images_with_nan_or_inf_pixels_are_listed_as_unreadable(tmp_path):
    """A 32-bit float TIFF holding one NaN or inf pixel came back all black without a word (the
    image's maximum is its white, and x / inf or NaN is 0 or NaN cast to 0); it is listed."""
    for name, bad in (("inf.tif", np.inf), ("nan.tif", np.nan)):
        a = np.full((4, 4), 0.5, np.float32)
        a[0, 0] = bad
        Image.fromarray(a, "F").save(tmp_path / name)
    Image.fromarray(np.full((4, 4), 0.5, np.float32), "F").save(tmp_path / "ok.tif")
    with pytest.raises(ValueError, match=r"(?s)2 of 3 file\(s\).*inf.tif \(ValueError: 1 pixel\(s\) are NaN or "
                                         r"infinite \(mode F\)\).*nan.tif"):
        load_reference_folder(tmp_path, 4, 1)
    (tmp_path / "inf.tif").unlink()
    (tmp_path / "nan.tif").unlink()
    assert torch.allclose(load_reference_folder(tmp_path, 4, 1), torch.zeros(1, 1, 4, 4), atol=1 / 255)  # 0.5: grey


def test_empty_folder_names_the_subfolders_it_did_not_read(tmp_path):
    # images sorted into class subfolders: "is empty" alone did not say why none was found
    (tmp_path / "cats").mkdir()
    (tmp_path / ".git").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "cats" / "a.png")
    with pytest.raises(ValueError, match=r"is empty: .*; its subfolder\(s\) \['cats'\] are read only with "
                                         r"recursive=True$"):
        load_reference_folder(tmp_path, 4, 1)
    assert load_reference_folder(tmp_path, 4, 1, recursive=True).shape == (1, 1, 4, 4)


def test_from_tensors_refuses_one_channels_last_photo(tmp_path):
    """np.asarray(Image.open(f)) of one RGB photo is (H, W, 3): it was read as H grey images
    W x 3 px wide (40 references of stripes, no error); it is refused with the permute, and
    the permuted array reads as the folder loader reads the file (bilinear vs Lanczos aside)."""
    photo = np.zeros((40, 50, 3), np.uint8)
    photo[:, :25] = (255, 0, 0)
    with pytest.raises(ValueError, match=r"look like one colour image \(H, W, C\).*read as 40 grey images 50 x 3 px: "
                                         r"pass images.permute\(2, 0, 1\)\[None\]"):
        references_from_tensors(photo, 16, 3, value_range=(0, 255))
    with pytest.raises(ValueError, match="one colour image"):
        references_from_tensors(np.zeros((40, 50, 4), np.uint8), 16, 3, value_range=(0, 255))
    x = references_from_tensors(photo.transpose(2, 0, 1)[None], 16, 3, value_range=(0, 255))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert x.shape == (1, 3, 16, 16) and float((x - load_reference_folder(tmp_path, 16, 3)).abs().max()) < 0.2
    assert references_from_tensors(torch.zeros(2, 4, 4), 4, 1).shape == (2, 1, 4, 4)  # small grey images still pass


def test_from_tensors_refuses_one_channels_last_grey_image():
    """(H, W, 1), one grey image as Keras and TensorFlow keep it, was read as H grey images W x 1 px
    (28 references of stripes, no error), as (H, W, 3) was before it was refused."""
    digit = np.zeros((28, 28, 1), np.uint8)
    digit[4:24, 12:16] = 255
    with pytest.raises(ValueError, match=r"look like one grey image \(H, W, C\).*read as 28 grey images 28 x 1 px"):
        references_from_tensors(digit, 16, 1, value_range=(0, 255))
    x = references_from_tensors(digit.transpose(2, 0, 1)[None], 16, 1, value_range=(0, 255))
    assert x.shape == (1, 1, 16, 16) and float(x[0, 0, 8, 8]) > 0.9 and float(x[0, 0, 8, 0]) == -1


def test_from_tensors_names_the_reshape_for_one_2d_grey_image():
    grey = np.zeros((20, 30), np.uint8)  # np.asarray(Image.open(an L image))
    with pytest.raises(ValueError, match=r"got \(20, 30\) \(one grey image H x W.*pass images\[None, None\]\)"):
        references_from_tensors(grey, 16, 1, value_range=(0, 255))
    assert references_from_tensors(grey[None, None], 16, 1, value_range=(0, 255)).shape == (1, 1, 16, 16)


def test_encode_refuses_a_generator_it_would_ignore():
    """encode_references(vae, x, generator=g) without sample=True returned the posterior means,
    the same with any generator, as if it had drawn with g."""
    from mmdg_lite.images import load_shapes_vae
    from mmdg_lite.images.shapes import make_shapes

    vae, x = load_shapes_vae(), make_shapes(2, seed=0).images
    with pytest.raises(ValueError, match="generator draws from the posterior only with sample=True"):
        encode_references(vae, x, generator=torch.Generator().manual_seed(0))
    means = encode_references(vae, x)
    drawn = encode_references(vae, x, sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(means, drawn) and torch.equal(
        drawn, encode_references(vae, x, sample=True, generator=torch.Generator().manual_seed(0)))


def test_images_that_need_grad_are_read_without_torchs_scalar_warning():
    """Images decoded outside no_grad (requires_grad=True) made references_from_tensors and
    encode_references warn 'Converting a tensor with requires_grad=True to a scalar may lead to
    unexpected behavior' from their range checks; the checks now read detached values."""
    import warnings

    from mmdg_lite.images import load_shapes_vae

    x = (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = references_from_tensors(x, 32, 3)
        z = encode_references(load_shapes_vae(), y)
    assert torch.equal(y, references_from_tensors(x.detach(), 32, 3)) and y.requires_grad  # as before
    assert z.shape == (2, 8, 8, 8)
