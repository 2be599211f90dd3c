"""The low-gradient simulation of the paper's Fig. 4 (and supplement Fig. 3).

A scalar starts at 1 and sees simulated zero-mean gradients: std 1e-3 for the first 100
iterations, then std 1e-5, the regime of a selective feature that rarely gets a gradient
from the main objective. Each optimizer (at the paper's learning rate) updates it with L2
or with WD for a range of lambdas. With the same lambda, Adam + L2 drives it to zero far
faster than Adam + WD or SGD + L2: the coupling of L2 with the adaptive update is one
source of the emergent sparsity.

All lambdas of one optimizer and regularizer run side by side as one tensor (elementwise
updates, the same gradient noise for all), through the same optimizer and `Regularizer`
code as training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.io.outputs import save_figure
from implicit_sparsity.measure.plots import pyplot
from implicit_sparsity.optim import (
    OPTIMIZERS,
    Regularizer,
    build_optimizer,
    decoupled_rates,
    default_lr,
    param_groups,
    regularized_step,
    resolve_hyperparameters,
    set_mode,
)
from implicit_sparsity.optim.optimizers import SCHEDULE_FREE


@dataclass
class SimulationResult:
    steps: list[int]                                  # iterations at which values were kept
    curves: dict = field(default_factory=dict)        # optimizer -> reg -> lambda -> values
    settings: dict = field(default_factory=dict)

    def final(self, optimizer: str, regularizer: str, lam: float) -> float:
        return self.curves[optimizer][regularizer][lam][-1]

    def steps_to(self, optimizer: str, regularizer: str, lam: float, level: float) -> int | None:
        """First recorded iteration at which |value| < level (None: never)."""
        for step, value in zip(self.steps, self.curves[optimizer][regularizer][lam]):
            if abs(value) < level:
                return step
        return None

    def to_dict(self) -> dict:
        return {"steps": self.steps, "settings": self.settings,
                "curves": {o: {r: {f"{lam:g}": v for lam, v in by_lam.items()}
                               for r, by_lam in by_reg.items()}
                           for o, by_reg in self.curves.items()}}


def simulate(optimizers=defaults.SIMULATION["optimizers"], regularizers=("l2", "wd"),
             lambdas=defaults.SIMULATION["lambdas"], steps: int = defaults.SIMULATION["steps"],
             seed: int = 0, record_every: int | None = None,
             progress: bool = True) -> SimulationResult:
    sim = defaults.SIMULATION
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {name!r}; valid optimizers: "
                              f"{', '.join(OPTIMIZERS)}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    lambdas = tuple(float(lam) for lam in lambdas)
    record_every = record_every or max(1, steps // 500)
    recorded = [0] + [t for t in range(1, steps + 1) if t % record_every == 0 or t == steps]
    result = SimulationResult(recorded, settings={
        **{k: v for k, v in sim.items() if k not in ("optimizers", "lambdas")},
        "steps": steps, "seed": seed, "lambdas": list(lambdas),
        "learning_rates": {o: default_lr(o) for o in optimizers}})
    jobs = [(o, r) for o in optimizers for r in regularizers
            if not (o in SCHEDULE_FREE and r == "wd")]  # not defined for it (TrainConfig)
    result.settings["not_defined"] = [f"{o} + {r}" for o in optimizers for r in regularizers
                                      if (o, r) not in jobs]
    for name, reg in tqdm(jobs, desc="simulating", disable=None if progress else True):
        values = _simulate_one(name, reg, lambdas, steps, seed, recorded)  # [lambda, recorded]
        result.curves.setdefault(name, {})[reg] = {
            lam: values[i].tolist() for i, lam in enumerate(lambdas)}
    return result


def _simulate_one(name: str, reg: str, lambdas: tuple[float, ...], steps: int, seed: int,
                  recorded: list[int]) -> torch.Tensor:
    """One scalar per lambda under optimizer `name` and regularizer `reg`, side by side
    (one tensor; or one parameter group per lambda where the optimizer applies the decay
    itself, as schedule-free AdamW does), on the same noisy gradients."""
    sim = defaults.SIMULATION
    lr = default_lr(name)
    hyper = resolve_hyperparameters(name)
    if name in SCHEDULE_FREE and reg == "decoupled":
        thetas = [nn.Parameter(torch.full((1,), sim["initial"], dtype=torch.float64))
                  for _ in lambdas]
        groups = [{"params": [t], "lr": lr, "weight_decay": lam}
                  for t, lam in zip(thetas, lambdas)]
        optimizer = build_optimizer(name, groups, hyper, own_decay=max(lambdas))
        regularizer = Regularizer("none", 0.0, thetas)
    else:
        thetas = [nn.Parameter(torch.full((len(lambdas),), sim["initial"],
                                          dtype=torch.float64))]
        optimizer = build_optimizer(name, param_groups(nn.ParameterList(thetas), lr), hyper)
        regularizer = Regularizer(reg, torch.tensor(lambdas, dtype=torch.float64), thetas,
                                  lr=decoupled_rates(optimizer, lr))

    def current() -> torch.Tensor:
        set_mode(optimizer, training=False)  # schedule-free: the point it is evaluated at
        value = torch.cat([t.detach().clone() for t in thetas])
        set_mode(optimizer, training=True)
        return value

    set_mode(optimizer, training=True)
    noise = torch.Generator().manual_seed(seed)  # the same gradients for every run
    history = [current()]
    for t in range(1, steps + 1):
        std = sim["high_std"] if t <= sim["high_steps"] else sim["low_std"]
        g = torch.randn((), generator=noise, dtype=torch.float64) * std
        for theta in thetas:
            theta.grad = g.expand(theta.shape).clone()
        regularized_step(optimizer, regularizer, 1.0)
        if t in recorded:  # recorded is short; membership in a list is cheap enough
            history.append(current())
    return torch.stack(history, dim=1)


def plot_simulation(result: SimulationResult, path) -> None:

    plt = pyplot()
    names = list(result.curves)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for reg, style in (("l2", "-"), ("wd", "--"), ("decoupled", ":")):
            for i, (lam, values) in enumerate(result.curves[name].get(reg, {}).items()):
                ax.plot(result.steps, values, style, color=f"C{i}",
                        label=f"{reg.upper()} {lam:g}")
        ax.set_title(f"{name} (lr {result.settings['learning_rates'][name]:g})", fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("value of the scalar", fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=5, ncol=2)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
