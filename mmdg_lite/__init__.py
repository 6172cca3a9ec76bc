"""mmdg_lite: MMD Guidance for diffusion models, small and readable.

Kernels and MMD (``kernels``, ``mmd``), the diffusion engine (``denoisers``, ``sampling``,
``training``), ``guidance``, ``prompts``, ``metrics``, ``rff``, and ``toys`` (mixtures, the
paper's synthetic tasks, the prompt world and the shipped toy models).
"""
from .kernels import (CallableKernel, FeatureKernel, GaussianKernel, InverseMultiquadricKernel,
                      Kernel, MultiGaussianKernel, PolynomialKernel, ProductKernel, median_bandwidth,
                      pairwise_sq_dists)
from .mmd import (PermutationTestResult, mmd2, mmd2_grad, mmd2_grad_autograd,
                  permutation_test, witness)
from .seeding import make_generator, seed_everything

__version__ = "0.1.0"
from .baselines import (ClassifierGuidance, NoisyClassifier, ResidualDenoiser, classifier_accuracy,
                        classifier_free_guidance, finetune_denoiser, train_classifier)
from .denoisers import (CFGDenoiser, Denoiser, ExactDenoiser, GaussianMixtureDenoiser,
                        MLPDenoiser, load_denoiser, save_denoiser)
from .guidance import ChainedGuidance, MMDGuidance, schedule_weight
from .metrics import (density_coverage, frechet_distance, kernel_distance, mode_assignment,
                      mode_proportions,
                      off_mode_fraction, rke, rrke, total_variation, vendi_score)
from .notebook import setup_notebook
from .rff import RFFReferenceEmbedding, mmd2_grad_rff
from .sampling import SampleResult, StepState, make_scheduler, sample
from .training import train_denoiser
from .prompts import (CallableEncoder, CoverageGate, PromptEncoder, TableEncoder,
                      prompt_aware_guidance, sample_with_prompts)
from .toys import (GaussianMixture, PromptWorld, SyntheticTask, circle_mixture, dirichlet_mixture,
                   draw_references, evaluate, load_or_train_cond_2d, load_or_train_toy_2d, make_task,
                   random_mixture, subset_mixture, task_guidance, toy_world)
from .distributed import distributed_guidance, init_distributed, sample_distributed


# the public API (``from mmdg_lite import *``), every name above; tests/test_docs.py keeps it complete
__all__ = ["CFGDenoiser", "CallableEncoder", "CallableKernel", "ChainedGuidance", "ClassifierGuidance",
           "CoverageGate", "Denoiser", "ExactDenoiser", "FeatureKernel", "GaussianKernel", "GaussianMixture",
           "GaussianMixtureDenoiser", "InverseMultiquadricKernel", "Kernel", "MLPDenoiser", "MMDGuidance",
           "MultiGaussianKernel", "NoisyClassifier", "PermutationTestResult", "PolynomialKernel",
           "ProductKernel", "PromptEncoder", "PromptWorld", "RFFReferenceEmbedding", "ResidualDenoiser",
           "SampleResult", "StepState", "SyntheticTask", "TableEncoder", "circle_mixture",
           "classifier_accuracy", "classifier_free_guidance", "density_coverage", "dirichlet_mixture",
           "distributed_guidance", "draw_references", "evaluate", "finetune_denoiser", "frechet_distance",
           "init_distributed", "kernel_distance", "load_denoiser", "load_or_train_cond_2d",
           "load_or_train_toy_2d", "make_generator", "make_scheduler", "make_task", "median_bandwidth",
           "mmd2", "mmd2_grad", "mmd2_grad_autograd", "mmd2_grad_rff", "mode_assignment", "mode_proportions",
           "off_mode_fraction", "pairwise_sq_dists", "permutation_test", "prompt_aware_guidance",
           "random_mixture", "rke", "rrke", "sample", "sample_distributed", "sample_with_prompts",
           "save_denoiser", "schedule_weight", "seed_everything", "setup_notebook", "subset_mixture",
           "task_guidance", "total_variation", "toy_world", "train_classifier", "train_denoiser",
           "vendi_score", "witness"]
