"""Optimizers with the paper's defaults, L2 / WD as the paper defines them, step schedules."""

from implicit_sparsity.optim.optimizers import (
                                                OPTIMIZERS,
                                                build_optimizer,
                                                decoupled_rates,
                                                default_lr,
                                                is_schedule_free,
                                                own_decoupled_decay,
                                                param_groups,
                                                recompute_bn_statistics,
                                                resolve_hyperparameters,
                                                set_mode,
)
from implicit_sparsity.optim.regularization import (
                                                L1GammaPenalty,
                                                Regularizer,
                                                add_l1_gamma_gradient,
                                                regularized_step,
)
from implicit_sparsity.optim.schedule import StepSchedule, apply_schedule, same_iterations_epochs

__all__ = ["OPTIMIZERS", "build_optimizer", "decoupled_rates", "default_lr",
           "own_decoupled_decay", "set_mode", "param_groups", "is_schedule_free",
           "recompute_bn_statistics",
           "resolve_hyperparameters", "L1GammaPenalty", "Regularizer", "add_l1_gamma_gradient",
           "regularized_step", "StepSchedule",
           "same_iterations_epochs", "apply_schedule"]
