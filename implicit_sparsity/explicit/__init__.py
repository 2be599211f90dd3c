"""Explicit sparsification baselines the paper compares with (section 5.2): Network
Slimming (Liu et al. 2017) and L1-norm filter pruning (Li et al. 2017). Each is a training
modifier and / or a selection rule on top of the project's training and pruning."""

from implicit_sparsity.explicit.methods import (
                                                VGG16_A_FRACTIONS,
                                                l1_norm_selection,
                                                slimming_selection,
)

__all__ = ["VGG16_A_FRACTIONS", "l1_norm_selection", "slimming_selection"]
