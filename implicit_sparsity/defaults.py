"""The paper's numbers, in one place.

Every threshold, learning rate, hyper-parameter and schedule that the paper states is a
named default here; the rest of the package reads them from this module. Section
references are to Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in
Convolutional Neural Networks", CVPR 2019 (main text and supplement).
"""

from __future__ import annotations

# --- Sparsity and selectivity (section 2.1, section 3) ------------------------------------
#: A conv feature is inactive by scale when its BatchNorm |gamma| is below this.
GAMMA_THRESHOLD = 1e-3
#: A conv feature is inactive by activation when its max-pooled |activation| never
#: exceeds this on any sample of the training corpus.
ACTIVATION_THRESHOLD = 1e-12
#: Universality counts the samples whose normalized pooled activation exceeds this.
UNIVERSALITY_THRESHOLD = 1e-3
#: The thresholds of the sensitivity table (`analyze --sensitivity`): |gamma|, max-pooled
#: |activation|, and ReDo's dormancy tau (Sokar et al., ICML 2023: a unit's mean |activation|
#: over samples and positions, divided by the layer's mean of that; dormant when <= tau).
SENSITIVITY_GAMMA = (1e-4, 1e-3, 1e-2)
SENSITIVITY_ACTIVATION = (0.0, 1e-12, 1e-8, 1e-4)
SENSITIVITY_TAU = (0.0, 0.025, 0.05, 0.1)
#: ReDo's tau for counting dormant units (analyze, the monitor) and for recycling them while
#: training (train.recycle): 0.025 is a value of ReDo's released configurations (0 to 0.1).
DORMANCY_TAU = 0.025
RECYCLE_TAU = DORMANCY_TAU
#: Harvesting dead filters while training (train.harvest, not the paper's): a removal is
#: proven on this many unaugmented training images (the first ones, in order): their
#: train-mode output must be exactly zero, the outputs unchanged in both modes.
HARVEST_CHECK_SAMPLES = 256
#: ... and each of the surgery's steps on the first this many of them (a forward pass per
#: layer that loses filters: the whole harvest's proof is on all of them, in both modes).
HARVEST_STEP_SAMPLES = 32
#: Tables 4, 5, 8 and 9 also report the top-5 error: a sample counts as wrong when its label
#: is not among the TOP_K highest logits.
TOP_K = 5

# --- Optimizers (section 2.1; supplement Fig. 3 for AMSGrad, RMSProp, Adamax) -------------
#: Base learning rate and hyper-parameters of each optimizer, as the paper gives them.
#: Hyper-parameters the paper does not state are PyTorch's defaults, written out here.
OPTIMIZER_DEFAULTS: dict[str, dict] = {
    "sgd": {"lr": 0.1, "momentum": 0.9},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8},
    "amsgrad": {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8},  # Adam's stated β, ε
    "adamax": {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8},
    "rmsprop": {"lr": 1e-3, "alpha": 0.99, "eps": 1e-8},
    "adagrad": {"lr": 1e-2, "eps": 1e-10},
    "adadelta": {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
}
#: Today's optimizers (beyond the paper), with their authors' defaults as PyTorch (or the
#: package named) writes them: AdamW (Loshchilov & Hutter), NAdam (Dozat; torch's momentum
#: decay schedule), RAdam (Liu et al.), Adafactor (Shazeer & Stern; torch's relative step:
#: lr is the largest step relative to the parameters' RMS), Lion (Chen et al. 2023, package
#: lion-pytorch: lr 3-10x below AdamW's, betas 0.9 / 0.99).
MODERN_OPTIMIZER_DEFAULTS: dict[str, dict] = {
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
    "nadam": {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "momentum_decay": 4e-3},
    "radam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
    "adafactor": {"lr": 1e-2, "beta2_decay": -0.8, "d": 1.0},
    "lion": {"lr": 1e-4, "betas": (0.9, 0.99)},
    # Muon (Jordan et al. 2024; torch.optim.Muon): lr 0.02, Nesterov momentum 0.95, 5
    # Newton-Schulz steps (in bfloat16, as torch and the authors run them) on the hidden
    # matrices at the rate lr sqrt(max(1, rows / cols)); AdamW at 3e-4, betas 0.9 / 0.95 on
    # the rest
    "muon": {"lr": 0.02, "momentum": 0.95, "nesterov": True, "ns_steps": 5,
             "ns_dtype": "bfloat16", "adjust_lr_fn": "original",
             "adamw_lr": 3e-4, "adamw_betas": (0.9, 0.95)},
    # schedule-free AdamW (Defazio et al. 2024; package schedulefree): lr 0.0025, no warm-up
    "adamw-schedulefree": {"lr": 2.5e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                           "warmup_steps": 0, "r": 0.0, "weight_lr_power": 2.0},
}
OPTIMIZER_DEFAULTS.update(MODERN_OPTIMIZER_DEFAULTS)
#: Batches of training images over which a schedule-free run's BatchNorm statistics are
#: recomputed at its evaluation point before every evaluation (its authors' README: "right
#: before eval", 50 batches in train mode): the running statistics gathered in training
#: belong to the gradient point, not to the average the model is evaluated and saved at.
SCHEDULE_FREE_BN_BATCHES = 50
#: Base learning rate of Adam on ImageNet (supplement section 4).
IMAGENET_ADAM_LR = 1e-4

# --- Regularization (section 2.1) ----------------------------------------------------------
#: "decoupled" is beyond the paper: AdamW's decoupled weight decay (see optim.regularization).
REGULARIZERS = ("none", "l2", "wd", "decoupled")
#: Adam with L2 1e-4 is the paper's default setting from section 5 on.
DEFAULT_REGULARIZER = "l2"
DEFAULT_LAMBDA = 1e-4

# --- Schedules (section 2.1; supplement section 4) -----------------------------------------
#: The learning rate is divided by this at each stage boundary.
LR_DECAY_FACTOR = 10.0
#: Epochs at the base rate, then at base/10, (then base/100), per data set family.
PAPER_SCHEDULES: dict[str, dict] = {
    "cifar": {"batch_size": 40, "epochs": (250, 75)},
    "tinyimagenet": {"batch_size": 40, "epochs": (250, 75, 75)},
    "imagenet-basicnet": {"batch_size": 64, "epochs": (15, 15, 10)},
    "imagenet-vgg11": {"batch_size": 60, "epochs": (30, 20, 10)},
    "imagenet-vgg16": {"batch_size": 40, "epochs": (20, 20, 10)},
}
DEFAULT_EPOCHS = PAPER_SCHEDULES["cifar"]["epochs"]

# --- Networks (section 2.1, Fig. 1; section 5) ---------------------------------------------
#: Filters of BasicNet's seven conv layers C1..C7 (the "64-1x" net).
BASICNET_WIDTHS = (64, 128, 128, 256, 256, 512, 512)
#: Kernel sizes: a 5x5 C1 and 3x3 C2..C7 give the paper's 4,649,664 conv parameters.
BASICNET_KERNELS = (5, 3, 3, 3, 3, 3, 3)
BASICNET_CONV_PARAMS = 4_649_664
#: The paper's figure placing BasicNet's max-pools is not in its text: we place a 2x2
#: max-pool after C1, C3 and C5 (VGG-like). One constant, so it can be changed.
BASICNET_POOL_AFTER = (1, 3, 5)
#: Width variants of section 5.1 / Table 6: (filters of C1, multiplier of C2..C7).
BASICNET_WIDTH_VARIANTS = {"64-1x": (64, 1.0), "64-0.5x": (64, 0.5), "32-0.25x": (32, 0.25)}

# --- The low-gradient simulation (Fig. 4, supplement Fig. 3) -------------------------------
#: A scalar starting at 1 sees zero-mean gradients of std 1e-3 for 100 iterations, then 1e-5.
SIMULATION = {"initial": 1.0, "high_std": 1e-3, "high_steps": 100, "low_std": 1e-5,
              "steps": 10_000,
              "optimizers": ("sgd", "adam", "amsgrad", "adagrad", "adadelta", "rmsprop",
                             "adamax"),
              "lambdas": (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)}

#: BatchNorm initialization (supplement section 4).
GAMMA_INIT = 1.0
BETA_INIT = 0.0

# --- Bounds on input sizes (checked before any work; not the paper's) -----------------------
#: A seed is used by torch, numpy and Python alike: at most 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Runs one spec may plan (grid points x variants x seeds); `sweep --max-runs` lifts it.
MAX_SWEEP_RUNS = 2_000
#: Iterations of the low-gradient simulation (the paper's Fig. 4 uses 10,000).
MAX_SIMULATION_STEPS = 1_000_000
#: Largest width multiplier (the paper's widest network is 1x): 4x is 16x its compute.
MAX_WIDTH_MULTIPLIER = 4.0
#: Largest C1 of a width variant like 64-0.5x (the paper's is 64).
MAX_C1_FILTERS = 4096
#: Total training epochs of one run.
MAX_EPOCHS = 100_000
#: The removal's analysis (torch-pruning's dependency groups and the per-group proof) of one
#: model may take this long (seconds) and grow the process by this share of the memory
#: available when it starts, then it is refused in one line (a transformer's patch
#: embedding made torch-pruning run for minutes and grow past 14 GB); `prune
#: --analysis-seconds` lifts the first.
ANALYSIS_SECONDS = 300.0
ANALYSIS_MEMORY_SHARE = 0.5
