"""How each explicit method fine-tunes after pruning, as its own paper does it, scaled to the
training the comparison gives (a share of its epochs, a factor on its learning rate).

Fine-tuning a converged pruned network at the base rate with a fresh optimizer knocks it out
of its minimum (the quick findings once showed Network Slimming at 10.8% error after
pruning and 18.1% after 2 such epochs). Each method's protocol:

- Network Slimming (Liu et al., ICCV 2017): the pruned network is fine-tuned "with the same
  optimization setting as training". Their code (Eric-mingjie/network-slimming, `main.py
  --refine ... --epochs 160`) runs the training schedule again: 160 epochs, SGD at lr 0.1,
  /10 at 50% and 75% of the epochs. Here: as many epochs as the run trained, in stages of
  50% / 25% / 25%, at the run's base rate with the /10 steps.
- L1-norm filter pruning (Li et al., ICLR 2017): VGG-16 on CIFAR-10 retrained for 40 epochs
  at a constant lr of 0.001, after training at 0.1. Here: a quarter of the run's epochs
  (40 of the 160-epoch CIFAR schedule of both papers' baselines; the share is our reading,
  Li et al. do not state it as one) at 1/100 of its base rate, constant.
- selectivity (ours, removes filters that compute something): Li et al.'s protocol.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FineTuneProtocol:
    name: str
    source: str                       # where the numbers come from
    stage_shares: tuple[float, ...]   # stage lengths as shares of the training epochs
    lr_factor: float                  # the fine-tuning base rate over the training's

    def epochs(self, training_epochs: int) -> list[int]:
        """Stage lengths for a run that trained `training_epochs` (each at least 1)."""
        return [max(1, round(share * training_epochs)) for share in self.stage_shares]

    def describe(self, training_epochs: int, lr: float) -> str:
        stages = self.epochs(training_epochs)
        bounds = [str(sum(stages[:i + 1])) for i in range(len(stages) - 1)]
        steps = f", /10 after epochs {', '.join(bounds)}" if bounds else ", constant"
        return (f"{sum(stages)} epochs at lr {self.lr_factor * lr:g}{steps} ({self.source})")


PROTOCOLS = {
    "slimming": FineTuneProtocol(
        "slimming", "Liu et al. 2017: the training schedule again", (0.5, 0.25, 0.25), 1.0),
    "l1norm": FineTuneProtocol(
        "l1norm", "Li et al. 2017: 40 of 160 epochs at 1/100 of the rate", (0.25,), 0.01),
}
PROTOCOLS["selectivity"] = PROTOCOLS["l1norm"]
