"""Build data/sd/shapes_pipeline: an embedded text-to-image StableDiffusionPipeline (diffusers format).

    .venv/bin/python scripts/train_sd_pipeline.py          # train (its own 4-channel VAE first)
    .venv/bin/python scripts/train_sd_pipeline.py --tiny   # 3 steps into a temp dir (tests)

Components: a CLIP text encoder (hidden 32, 2 layers) and a UNet2DConditionModel (blocks 32/64,
cross-attention 32) trained jointly on captioned procedural shapes; a tokenizer trained offline
(``mmdg_lite.pipelines.build_tokenizer``); its own shapes VAE, trained first by the recipe of
data/images/shapes_vae with 4 latent channels (4x8x8 latents, as shapes_vae had before it moved to 8
channels), scaling_factor applied once; a DDIM scheduler (SD's scaled-linear betas).
Captions name shape and colour only ("a red circle"); size and fill are minorities (25 % large,
25 % outlined) that no caption names. 10 % of captions are dropped to "" (classifier-free guidance).
Loads with ``StableDiffusionPipeline.from_pretrained(path)``, no network.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import torch

from mmdg_lite._resources import data_path
from mmdg_lite.images import detect_shapes, make_shapes
from mmdg_lite.images.models import SHAPES_VAE_RECIPE, TINY as TINY_MODELS, build_cli, sample_grid, train_shapes_vae
from mmdg_lite.images.references import encode_references
from mmdg_lite.images.shapes import CAPTIONS, caption_labels
from mmdg_lite.pipelines.tiny import _text_config, build_tokenizer
from mmdg_lite.seeding import seed_everything

OUT = data_path("sd", "shapes_pipeline")
RECIPE = {
    "seed": 0, "n_data": 6000, "data_seed": 3, "steps": 2500, "batch_size": 32, "lr": 2e-3,
    "caption_dropout": 0.1, "betas": [0.00085, 0.012], "beta_schedule": "scaled_linear", "pooled_loss": 0.1,
    "text": {"hidden": 32, "layers": 2},
    "unet": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64],
                 layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=32,
                 attention_head_dim=8, norm_num_groups=8),
}
TINY = {"steps": 3, "n_data": 64, "batch_size": 8}
# The pipeline's VAE: shapes_vae's recipe with 4 latent channels (its 8-channel latents would need a
# larger text-conditioned UNet than this recipe's to follow captions as well).
VAE_OVERRIDES = {"vae": {**SHAPES_VAE_RECIPE["vae"], "latent_channels": 4}}


def build(out: Path, tiny: bool) -> dict:
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    recipe = {**RECIPE, **(TINY if tiny else {})}
    vae, _, vae_secs, vae_mse = train_shapes_vae(progress=False, **VAE_OVERRIDES, **(TINY_MODELS if tiny else {}))
    vae.requires_grad_(False)  # train_shapes_vae returns it in eval mode
    seed_everything(recipe["seed"])
    data = make_shapes(recipe["n_data"], seed=recipe["data_seed"])
    latents = encode_references(vae, data.images)  # (N, 4, 8, 8), scaling factor once
    prompts = ["", *CAPTIONS]
    index = torch.tensor([prompts.index(c) for c in data.captions])  # (N,)
    tokenizer = build_tokenizer(prompts[1:] + ["a shape"])
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids  # (P, L)
    text_encoder = CLIPTextModel(_text_config(tokenizer, recipe["text"]["hidden"], recipe["text"]["layers"]))
    # CLIP's pooled output is trained (contrastively) to stand for the whole caption; here the UNet
    # reads only the token states, so without this the pooled output (what prompt features and the
    # prompt-aware kernel use) may keep one word: linear heads, dropped after training, must read
    # shape and colour from it.
    caption_targets = caption_labels(CAPTIONS)  # {attribute: (P - 1,)}
    caption_heads = torch.nn.ModuleDict({a: torch.nn.Linear(recipe["text"]["hidden"], len(v.unique()))
                                         for a, v in caption_targets.items()})
    unet = UNet2DConditionModel(**recipe["unet"])
    betas = dict(beta_start=recipe["betas"][0], beta_end=recipe["betas"][1], beta_schedule=recipe["beta_schedule"])
    train_sched = DDPMScheduler(num_train_timesteps=1000, **betas)
    params = list(unet.parameters()) + list(text_encoder.parameters()) + list(caption_heads.parameters())
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.0)
    lr_at = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=recipe["steps"], pct_start=0.05)
    gen = torch.Generator().manual_seed(recipe["seed"])
    losses, start = [], time.process_time()
    unet.train(), text_encoder.train()
    for step in range(recipe["steps"]):
        batch = torch.randint(len(latents), (recipe["batch_size"],), generator=gen)
        z0 = latents[batch]
        p = index[batch].clone()
        p[torch.rand(len(p), generator=gen) < recipe["caption_dropout"]] = 0  # "" for CFG
        text = text_encoder(ids)
        emb = text.last_hidden_state[p]  # (b, L, 32)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(z0),), generator=gen)
        loss = torch.nn.functional.mse_loss(unet(train_sched.add_noise(z0, noise, t), t, emb).sample, noise)
        pooled = text.pooler_output[1:]  # (P - 1, 32), the captions without ""
        caption_loss = sum(torch.nn.functional.cross_entropy(head(pooled), caption_targets[a])
                           for a, head in caption_heads.items())
        opt.zero_grad()
        (loss + recipe["pooled_loss"] * caption_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_at.step()
        losses.append(loss.item())  # the denoising loss alone
        if not tiny and step % 100 == 0:
            print(f"step {step} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                  f"cpu {time.process_time() - start:.0f} s", flush=True)
    secs = time.process_time() - start
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False,
                                   scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False,
                                                           steps_offset=1, **betas))
    pipe.set_progress_bar_config(disable=True)
    # samples: each caption, DDIM 30 steps, CFG 3; drawn before anything is written (a failed or interrupted
    # sampling left the new weights beside the old training.json), by a copy: the call sets the tokenizer's
    # truncation, which save_pretrained would write into tokenizer.json
    n_per, steps = (2, 2) if tiny else (16, 30)
    with torch.no_grad():
        images = copy.deepcopy(pipe)(list(CAPTIONS), num_images_per_prompt=n_per, num_inference_steps=steps,
                                     guidance_scale=3.0, generator=torch.Generator().manual_seed(1),
                                     output_type="pt").images * 2 - 1
    det = detect_shapes(images)
    want = {a: v.repeat_interleave(n_per) for a, v in caption_labels(CAPTIONS).items()}
    pipe.save_pretrained(out, safe_serialization=True)
    weights_sha256 = {}
    for weights in sorted(Path(out).rglob("*.safetensors")):  # safetensors writes 0600; the files are shared
        weights.chmod(0o644)
        weights_sha256[weights.relative_to(out).as_posix()] = hashlib.sha256(weights.read_bytes()).hexdigest()
    last = losses[-min(250, len(losses)):]
    info = {"recipe": recipe, "vae": {"recipe": "SHAPES_VAE_RECIPE with latent_channels 4",
                                      "train_cpu_seconds": round(vae_secs, 1), "test_mse": round(vae_mse, 5)},
            "train_cpu_seconds": round(secs, 1),
            "threads": torch.get_num_threads(), "final_loss_mean_last_250": round(sum(last) / len(last), 4),
            "final_pooled_caption_loss": round(caption_loss.item(), 4),
            "torch": torch.__version__, "sha256": weights_sha256,
            "samples": {"per_caption": n_per, "scheduler": "ddim", "num_steps": steps, "guidance_scale": 3.0,
                        "seed": 1, "valid": round(float(det.valid.float().mean()), 4),
                        "shape_follows_caption": round(float((det.attributes["shape"] == want["shape"]).float().mean()), 4),
                        "colour_follows_caption": round(float((det.attributes["colour"] == want["colour"]).float().mean()), 4),
                        "outlined_rate": round(det.rate("fill", "outlined"), 4),
                        "large_rate": round(det.rate("size", "large"), 4)}}
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    sample_grid(images[: 8 * n_per] if tiny else images, out / "samples.png", nrow=n_per)
    return info


if __name__ == "__main__":
    build_cli(__doc__, build, OUT)
