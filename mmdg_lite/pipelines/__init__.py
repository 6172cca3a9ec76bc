"""MMD guidance for diffusers Stable Diffusion / SDXL pipelines, without forking them.

Imported on demand (``import mmdg_lite.pipelines``), never by ``import mmdg_lite``; the text
encoders need the ``sd`` extra (transformers).

- ``hooks``: ``MMDGuidanceCallback`` (``callback_on_step_end``; eval points x_t, x_prev) and
  ``GuidedSchedulerStep`` (a ``scheduler.step`` wrapper; also x0_hat with no second UNet call)
- ``encoding``: ``encode_images`` (the pipeline's VAE, scaling factor once), ``prompt_features``
  (pooled, L2-normalised; SDXL's two encoders), ``pipeline_guidance`` (an MMDGuidance, prompt-aware
  with reference prompts), ``load_references``
- ``tiny``: ``build_tokenizer`` (offline BPE), ``tiny_sd_pipeline``, ``tiny_sdxl_pipeline``
- ``adapt``: ``EMBEDDED_PIPELINE`` (data/sd/shapes_pipeline), ``load_pipeline``, ``generate``,
  ``latent_mmd2`` (``mmdg adapt`` and notebook 07)
- ``pairing``: the category -> style pairing experiment (notebook 07, benchmarks/sd.py)
"""
from .encoding import (encode_images, load_references, pipeline_guidance, pipeline_image_size,
                       prompt_features, sample_prompt_features)
from .hooks import (GuidedSchedulerStep, MMDGuidanceCallback, scheduler_noise_level, timestep_index,
                    to_epsilon)
from .tiny import build_tokenizer, tiny_components, tiny_sd_pipeline, tiny_sdxl_pipeline

__all__ = ["MMDGuidanceCallback", "GuidedSchedulerStep", "scheduler_noise_level", "timestep_index",
           "to_epsilon", "encode_images", "load_references", "pipeline_guidance", "pipeline_image_size",
           "prompt_features", "sample_prompt_features", "build_tokenizer", "tiny_components",
           "tiny_sd_pipeline", "tiny_sdxl_pipeline"]
