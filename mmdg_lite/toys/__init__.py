"""Toy worlds for teaching and testing: Gaussian mixtures, the paper's synthetic tasks, the 2-D
prompt world and the shipped toy models."""
from .mixtures import (GaussianMixture, circle_mixture, dirichlet_mixture, draw_references,
                       random_mixture, subset_mixture)
from .models import (COND_2D_DIR, COND_2D_RECIPE, TOY_2D_DIR, TOY_2D_RECIPE, load_or_train_cond_2d,
                     load_or_train_toy_2d, train_cond_2d, train_toy_2d)
from .prompt_world import CATEGORIES, PAIRED_STYLES, STYLES, PromptWorld, toy_world
from .tasks import GUIDANCE_PRESETS, TASKS, SyntheticTask, evaluate, make_task, task_guidance
