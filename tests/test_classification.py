"""Top-1 and top-5 errors against hand counts, in training metrics and in the pruning proof."""

import torch
from torch import nn

from implicit_sparsity.measure.classification import TOP_K, count_wrong
from implicit_sparsity.prune.proof import compare_outputs
from implicit_sparsity.train.loop import evaluate

# 7 classes; the label's rank among the logits: 1st, 3rd, 6th, 5th
LOGITS = torch.tensor([[9., 1, 2, 3, 4, 5, 6],
                       [1., 9, 2, 3, 8, 7, 0],
                       [6., 5, 4, 3, 2, 1, 0],
                       [0., 1, 2, 3, 4, 5, 6]])
LABELS = torch.tensor([0, 5, 5, 2])


def test_counts_by_hand():
    assert TOP_K == 5
    assert int(count_wrong(LOGITS, LABELS)) == 3          # only sample 0 is right
    assert int(count_wrong(LOGITS, LABELS, 5)) == 1       # only the 6th-ranked label misses
    assert int(count_wrong(LOGITS, LABELS, 3)) == 2
    assert int(count_wrong(LOGITS[:, :4], torch.tensor([0, 1, 2, 3]), 5)) == 0  # k >= classes


class Fixed(nn.Module):
    """Returns the stored logits of the samples whose index it is given."""

    def forward(self, index):
        return LOGITS[index]


def test_evaluation_and_proof_report_both_errors():
    batches = [(torch.tensor([0, 1]), LABELS[:2]), (torch.tensor([2, 3]), LABELS[2:])]
    loss, top1, top5 = evaluate(Fixed(), batches)
    assert (top1, top5) == (75.0, 25.0)
    expected = torch.nn.functional.cross_entropy(LOGITS, LABELS).item()
    assert abs(loss - expected) < 1e-6
    proof = compare_outputs(Fixed(), Fixed(), batches)
    assert (proof.error_before, proof.error_top5_before) == (75.0, 25.0)
    assert (proof.error_after, proof.error_top5_after) == (75.0, 25.0)
