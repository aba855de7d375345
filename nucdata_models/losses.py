"""Losses: partial-label cross-entropy and confident pseudo-labels.

Both are written without host synchronisation (no ``.item()``, no boolean indexing),
so a CUDA training step queues its kernels without waiting on the device.
"""

from __future__ import annotations

import torch

from nucdata.errors import InvalidArgumentError
from nucdata_models.config import PSEUDO_RULES
from nucdata_models.data import candidate_mask

__all__ = ["PSEUDO_RULES", "partial_label_loss", "pseudo_labels", "soft_label_loss"]


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


def soft_label_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``-sum_c (1/|C|) log p_c`` over the nuclei with a target: ambiguous rows as uniform soft targets.

    With one bit it is the usual cross-entropy (as :func:`partial_label_loss`); with
    several it asks for equal mass on every candidate instead of leaving the split free
    (the ``soft`` arm of the method study). Same arguments and returns as
    :func:`partial_label_loss`.
    """
    known = targets != 0
    count = known.sum()
    log_p = torch.log_softmax(logits.float(), dim=1)
    mask = candidate_mask(targets, logits.shape[1]).float()
    nll = -(log_p * mask).sum(1) / mask.sum(1).clamp_min(1)
    nll = torch.where(known, nll, torch.zeros_like(nll))
    return nll.sum() / count.clamp_min(1), count




def pseudo_labels(probabilities: torch.Tensor, allowed: torch.Tensor, threshold: float,
                  rule: str = "candidates") -> torch.Tensor:
    """One-bit pseudo-label bitmasks (0 = none) from a teacher's confident predictions.

    Parameters
    ----------
    probabilities
        ``(N, K)`` softmax of the teacher module over every output (detached here).
    allowed
        ``(N,)`` bitmasks of the outputs a nucleus's pseudo label may take; 0 = the
        nucleus gets none (annotated, or known to be outside without an outside output).
        See :func:`.data.training_targets`.
    threshold
        The pseudo label's probability must be strictly above it.
    rule
        ``"unrestricted"`` (the paper): the argmax over every output, kept only when it is
        allowed and its probability passes; ``"candidates"`` (nucdata): the most
        probable allowed output, kept when its *unrestricted* probability passes — as
        strict as the paper's test, never outside the candidates; ``"renormalised"``:
        the most probable allowed output with its probability renormalised over the
        allowed ones (looser: 0.6 vs 0.004 passes 0.99).
    """
    if rule not in PSEUDO_RULES:
        raise InvalidArgumentError(f"pseudo_labels(rule={rule!r}): pass one of {', '.join(PSEUDO_RULES)}")
    p = probabilities.detach().float()
    mask = candidate_mask(allowed, p.shape[1])
    if rule == "unrestricted":
        confidence, choice = p.max(dim=1)
        ok = ((allowed >> choice) & 1).bool()
    else:
        q = p * mask
        confidence, choice = q.max(dim=1)
        if rule == "renormalised":
            confidence = confidence / q.sum(dim=1).clamp_min(1e-12)
        ok = allowed != 0
    take = ok & (confidence > threshold)
    return torch.where(take, torch.ones_like(choice) << choice, torch.zeros_like(choice))
