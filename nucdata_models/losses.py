"""Losses: partial-label cross-entropy and confident pseudo-labels."""

from __future__ import annotations

import torch

from .data import candidate_mask


def partial_label_loss(logits: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean of ``-log P(candidate set)`` over nuclei with information (candidates != 0).

    With one candidate this is the usual cross-entropy; with several (an ambiguous
    mapping such as MoNuSAC epithelial -> PanNuke neoplastic or epithelial) the model
    is free to split the mass among them but is pushed away from every other class.
    Nuclei outside the set or without information carry candidates 0 and no loss.
    Returns the loss and how many nuclei contributed.
    """
    known = candidates != 0
    count = int(known.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    log_p = torch.log_softmax(logits[known].float(), dim=1)
    mask = candidate_mask(candidates[known], logits.shape[1])
    return -(torch.logsumexp(log_p.masked_fill(~mask, float("-inf")), dim=1)).mean(), count


def pseudo_labels(
    probabilities: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Bitmask pseudo-labels (0 = none) from confident predictions on missing labels.

    Only nuclei whose label is missing (-1) get one: never a nucleus outside the set
    (-2) nor one already labelled. For ambiguous nuclei the prediction is restricted to
    their candidates (renormalised) before the threshold is applied.
    """
    p = probabilities.detach().float()
    restricted = candidates != 0
    if restricted.any():
        mask = candidate_mask(candidates, p.shape[1])
        p = torch.where(restricted[:, None], p * mask, p)
        p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-12)
    confidence, choice = p.max(dim=1)
    take = (labels == -1) & (confidence > threshold)
    return torch.where(take, torch.ones_like(choice) << choice, torch.zeros_like(choice))
