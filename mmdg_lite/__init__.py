"""mmdg_lite: MMD Guidance for diffusion models, small and readable.

Kernels and MMD (``kernels``, ``mmd``), the diffusion engine (``denoisers``, ``sampling``,
``training``, ``data``), ``guidance``, ``prompts`` (+ the toy ``prompt_world``), ``metrics``,
``experiments`` and ``rff``.
"""
from .kernels import (CallableKernel, GaussianKernel, InverseMultiquadricKernel, Kernel,
                      MultiGaussianKernel, PolynomialKernel, ProductKernel, median_bandwidth,
                      pairwise_sq_dists)
from .mmd import (PermutationTestResult, mmd2, mmd2_grad, mmd2_grad_autograd,
                  permutation_test, witness)
from .seeding import make_generator, seed_everything

__version__ = "0.1.0"
from .baselines import (ClassifierGuidance, NoisyClassifier, ResidualDenoiser, classifier_accuracy,
                        classifier_free_guidance, finetune_denoiser, train_classifier)
from .data import (GaussianMixture, circle_mixture, dirichlet_mixture, draw_references,
                   random_mixture, subset_mixture)
from .denoisers import (CFGDenoiser, Denoiser, ExactDenoiser, GaussianMixtureDenoiser,
                        MLPDenoiser, load_denoiser, save_denoiser)
from .guidance import ChainedGuidance, MMDGuidance, schedule_weight
from .metrics import (density_coverage, frechet_distance, kernel_distance, mode_assignment,
                      mode_proportions,
                      off_mode_fraction, rke, rrke, total_variation, vendi_score)
from .notebook import setup_notebook
from .experiments import SyntheticTask, evaluate, make_task, task_guidance
from .rff import RFFReferenceEmbedding, mmd2_grad_rff
from .sampling import SampleResult, StepState, make_scheduler, sample
from .training import load_or_train_toy_2d, train_denoiser
from .prompt_world import PromptWorld, load_or_train_cond_2d, toy_world
from .prompts import (CallableEncoder, CoverageGate, PromptEncoder, TableEncoder,
                      prompt_aware_guidance, sample_with_prompts)
