"""Losses: partial-label cross-entropy and confident pseudo-labels.

Both are written without host synchronisation (no ``.item()``, no boolean indexing),
so a CUDA training step queues its kernels without waiting on the device.
"""

from __future__ import annotations

import torch

from .data import MISSING, candidate_mask

__all__ = ["partial_label_loss", "pseudo_labels"]


def partial_label_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``-log P(candidate set)`` over the nuclei with a target.

    Parameters
    ----------
    logits
        ``(N, K)`` logits of one label set.
    targets
        ``(N,)`` int64 bitmasks over the K classes (see :func:`.data.target_bits`):
        one bit is the usual cross-entropy; several bits (an ambiguous mapping such as
        MoNuSAC epithelial -> PanNuke neoplastic or epithelial) leave the model free to
        split the mass among them while pushing it away from every other class; 0 (no
        information, or outside the set) contributes nothing, not even a gradient.

    Returns
    -------
    loss, count
        The mean over nuclei with a target (0, still attached to ``logits``, when none)
        and how many there were, as a 0-d tensor on the logits' device.
    """
    known = targets != 0
    count = known.sum()
    log_p = torch.log_softmax(logits.float(), dim=1)
    # Rows without a target get every class as candidate (a finite 0 instead of -inf,
    # whose backward would be NaN), then are zeroed.
    mask = candidate_mask(targets, logits.shape[1]) | ~known[:, None]
    nll = -torch.logsumexp(log_p.masked_fill(~mask, float("-inf")), dim=1)
    nll = torch.where(known, nll, torch.zeros_like(nll))
    return nll.sum() / count.clamp_min(1), count


def pseudo_labels(probabilities: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor,
                  threshold: float) -> torch.Tensor:
    """One-bit pseudo-label bitmasks (0 = none) from confident predictions.

    Only nuclei whose label is missing (-1) get one: never a nucleus outside the set
    (-2) nor an annotated one. Where ``candidates != 0`` the prediction is restricted to
    the candidates (renormalised over them, since the other classes are known to be
    wrong) before the threshold is applied, so a pseudo label is always a candidate.

    Parameters
    ----------
    probabilities
        ``(N, K)`` class probabilities of the teacher module (detached here).
    candidates, labels
        ``(N,)`` bitmasks and labels of the set.
    threshold
        A pseudo label needs a (restricted) probability strictly above it.
    """
    p = probabilities.detach().float()
    restricted = candidates != 0
    mask = candidate_mask(candidates, p.shape[1])
    q = p * mask
    q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-12)
    p = torch.where(restricted[:, None], q, p)
    confidence, choice = p.max(dim=1)
    take = (labels == MISSING) & (confidence > threshold)
    return torch.where(take, torch.ones_like(choice) << choice, torch.zeros_like(choice))
