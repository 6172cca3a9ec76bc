"""Small Stable-Diffusion-shaped pipelines built from configs, offline (random weights).

``build_tokenizer`` trains a byte-level BPE on a prompt corpus (its own deterministic merge
loop, on the words of CLIP's normaliser and pre-tokeniser from ``tokenizers``, with CLIP's
``</w>`` suffix) and hands vocab and merges to ``CLIPTokenizer`` (no download).
``tiny_sd_pipeline`` / ``tiny_sdxl_pipeline`` assemble a ``StableDiffusionPipeline`` /
``StableDiffusionXLPipeline`` from small configs: the components the embedded pipeline
(scripts/train_sd_pipeline.py) trains and the tests exercise.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import torch

from .._validation import check_int, check_positive
from ..seeding import own_rng

__all__ = ["build_tokenizer", "tiny_components", "tiny_sd_pipeline", "tiny_sdxl_pipeline",
           "DEFAULT_CORPUS", "BOS", "EOS"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Captions of mmdg_lite.images.make_shapes plus a few style words users may type.
DEFAULT_CORPUS: tuple[str, ...] = tuple(
    f"a {c} {s}" for s in ("circle", "square", "triangle") for c in ("red", "green", "blue", "yellow")
) + ("a shape", "an outlined filled small large shape", "a photo of a dog")


def build_tokenizer(corpus: Sequence[str] = DEFAULT_CORPUS, vocab_size: int = 600,
                    model_max_length: int = 16) -> Any:
    """A ``CLIPTokenizer`` whose byte-level BPE is trained offline on ``corpus``. Any text encodes
    without unknown tokens: as in CLIP, the vocabulary holds all 256 byte symbols, alone and as
    word ends (``"a</w>"``), before the merges; ``vocab_size`` (>= 514) caps the total;
    ``model_max_length`` (>= 3: BOS, EOS and a token) is the prompt length in tokens.

    The merges are learned by ``_train_bpe``, not by ``tokenizers``' ``BpeTrainer``: that trainer
    breaks ties between equally frequent pairs, and numbers the word-final symbols, in the order
    of a Rust hash map seeded afresh in every process, so two processes built different
    vocabularies from one corpus (and the text encoder's embedding rows meant different tokens).
    Same corpus, same tokenizer, in any process."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    if isinstance(corpus, str) or not corpus or not all(isinstance(c, str) for c in corpus):
        raise ValueError(f"corpus must be a non-empty list of strings; got {corpus!r}")
    vocab_size = check_int(vocab_size, "vocab_size", 2 + 2 * 256)
    # BOS, EOS and at least one token of the prompt: at 2 every prompt read [BOS, EOS], the same
    # for all; at 0 or 1 the tokenizer did not truncate at all
    model_max_length = check_int(model_max_length, "model_max_length", 3)
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                       normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                                   r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    words: Counter[str] = Counter(w for text in corpus
                                  for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab, merges = _train_bpe(words, sorted(pre_tokenizers.ByteLevel.alphabet()), vocab_size)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _train_bpe(words: Counter[str], alphabet: list[str], vocab_size: int) -> tuple[dict[str, int],
                                                                                   list[tuple[str, str]]]:
    """Byte-level BPE with CLIP's ``</w>`` word ends: repeatedly merge the most frequent adjacent
    pair (ties: the lexicographically smallest) until ``vocab_size`` tokens or nothing to merge.
    Vocabulary order: BOS, EOS, the alphabet, the alphabet as word ends, then the merges."""
    seqs = {w: [*w[:-1], w[-1] + "</w>"] for w in words}  # word -> its current symbols
    tokens = [BOS, EOS, *alphabet, *(c + "</w>" for c in alphabet)]
    known, merges = set(tokens), []
    while len(tokens) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        if joined not in known:
            known.add(joined)
            tokens.append(joined)
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _text_config(tokenizer: Any, hidden: int = 32, layers: int = 2, projection_dim: int = 32) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4,
                          max_position_embeddings=tokenizer.model_max_length, projection_dim=projection_dim,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, hidden_act="quick_gelu")


def _check_build(image_size: int, scaling_factor: float, downsampling: int) -> None:
    """Before any weight is built: a size the pipeline can sample at its default height and width,
    and a VAE scaling factor > 0 (0 made every latent 0 and the decoder divide by it: NaN images)."""
    check_positive(scaling_factor, "scaling_factor")
    multiple = math.lcm(8, downsampling)  # diffusers' 8, and the VAE's and UNet's downsampling
    if check_int(image_size, "image_size", multiple) % multiple:
        raise ValueError(f"image_size must be a multiple of {multiple} (diffusers' 8 and the VAE's and UNet's "
                         f"downsampling, x{downsampling}); got {image_size}")


def tiny_components(*, image_size: int = 32, vae_blocks: Sequence[int] = (32, 64),
                    unet_blocks: Sequence[int] = (32, 64), text_hidden: int = 32, text_layers: int = 2,
                    scaling_factor: float = 3.0, corpus: Sequence[str] = DEFAULT_CORPUS,
                    seed: int = 0) -> dict[str, Any]:
    """Text encoder, tokenizer, VAE, text-conditioned UNet and DDIM scheduler of a small SD pipeline.
    ``scaling_factor`` 3.0: about 1 / the RMS of the random VAE's latents (0.33), so scaled latents
    have unit scale, as a real VAE's factor makes them (at 0.5 they had RMS 0.16)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    for name, blocks in (("vae_blocks", vae_blocks), ("unet_blocks", unet_blocks)):
        # () failed in a bare "'float' object cannot be interpreted as an integer" (2 ** -1 downsampling)
        if isinstance(blocks, str) or not isinstance(blocks, Sequence) or not blocks:
            raise ValueError(f"{name} must be a non-empty list of channel counts, e.g. (32, 64); got {blocks!r}")
        for b in blocks:
            check_int(b, name, 1)
    _check_build(image_size, scaling_factor, 2 ** (len(vae_blocks) - 1) * 2 ** (len(unet_blocks) - 1))
    with own_rng(seed):  # seeded weights; the caller's global RNG is left as it was
        tokenizer = build_tokenizer(corpus)
        text_encoder = CLIPTextModel(_text_config(tokenizer, text_hidden, text_layers)).eval()
        n = len(vae_blocks)
        groups = min(32, min(vae_blocks))
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=list(vae_blocks),
                            down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                            latent_channels=4, layers_per_block=1, norm_num_groups=groups,
                            sample_size=image_size, scaling_factor=scaling_factor).eval()
        latent = image_size // 2 ** (n - 1)
        m = len(unet_blocks)
        unet = UNet2DConditionModel(
            sample_size=latent, in_channels=4, out_channels=4, block_out_channels=list(unet_blocks),
            layers_per_block=1, down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (m - 1),
            up_block_types=["CrossAttnUpBlock2D"] * (m - 1) + ["UpBlock2D"], cross_attention_dim=text_hidden,
            attention_head_dim=8, norm_num_groups=min(32, min(unet_blocks))).eval()
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        return dict(text_encoder=text_encoder, tokenizer=tokenizer, vae=vae, unet=unet, scheduler=scheduler)


def tiny_sd_pipeline(**kwargs: Any) -> Any:
    """A ``StableDiffusionPipeline`` of ``tiny_components(**kwargs)`` (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_components(**kwargs), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(*, image_size: int = 32, scaling_factor: float = 5.0, seed: int = 0,
                       corpus: Sequence[str] = DEFAULT_CORPUS) -> Any:
    """A ``StableDiffusionXLPipeline`` from small configs: two CLIP text encoders (the second
    with a projection), a UNet with SDXL's text-time embedding, Euler scheduler.
    ``scaling_factor`` 5.0: about 1 / the RMS of the random VAE's latents (0.19)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _check_build(image_size, scaling_factor, 2 * 2)  # the VAE's and the UNet's one downsampling each
    with own_rng(seed):  # seeded weights; the caller's global RNG is left as it was
        tokenizer = build_tokenizer(corpus)
        tokenizer_2 = build_tokenizer(corpus)
        text_encoder = CLIPTextModel(_text_config(tokenizer)).eval()
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection_dim=32)).eval()
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=[32, 64],
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            latent_channels=4, layers_per_block=1, sample_size=image_size,
                            scaling_factor=scaling_factor, force_upcast=True).eval()
        unet = UNet2DConditionModel(
            sample_size=image_size // 2, in_channels=4, out_channels=4, block_out_channels=[32, 64],
            layers_per_block=1, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64).eval()
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           steps_offset=1, timestep_spacing="leading")
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                         scheduler=scheduler, force_zeros_for_empty_prompt=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe
