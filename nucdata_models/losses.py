"""Losses: the candidate-set likelihood, its transition estimate, and confident pseudo-labels.

All are written without host synchronisation (no ``.item()``, no boolean indexing),
so a CUDA training step queues its kernels without waiting on the device.

**The candidate-set likelihood.** A nucleus whose row in the mapping tables is
ambiguous (PanNuke ``Connective`` -> CoNSeP ``other``, ``fibroblast``, ``muscle`` or
``endothelial``) was labelled ``s`` by its own dataset's annotators; under the target
set its class ``c`` is unknown. Its likelihood is

    P(s | x) = sum_c p(c | x) T[s, c],   T[s, c] = P(source row s | class c),

the annotator model of Dawid and Skene (1979), with the dataset as the annotator and
its source rows (:func:`.data.source_rows`) as the labels it writes.
``-log sum_{c in C} p_c`` (``candidate_likelihood="uniform"``) is the special case
``T[s, c] = 1`` on the candidates: it claims that *every* ``other`` nucleus would be
written ``Connective`` and also ``Neoplastic`` and ``Epithelial``, so predicting the
catch-all satisfies every row at once and the training collapses onto it (issue 20).
With ``T`` estimated, a catch-all receives only the mass that really maps to it:
``T[Neoplastic, malignant_epithelial] = 1`` (no other source names it) while
``T[Neoplastic, other]`` is the share of ``other`` nuclei written ``Neoplastic``.

**The estimate** (:class:`TransitionEstimate`): EM. E-step, during each epoch: every
training nucleus with a table row gets the posterior ``q_i(c) ∝ p(c | x_i) T[s_i, c]``
on its row's support (an exact or outside row: ``q`` one-hot), from the module being
trained (the mean of both modules in stage C), detached, and adds it to the soft counts
``n[s, c]``. M-step, at the epoch's end:

    T[s, c] = (n[s, c] + a[s, c]) / sum_{s' of the same dataset} (n[s', c] + a[s', c]),

so each column sums to 1 over the dataset's rows. The prior is a symmetric Dirichlet
on each column over the rows whose support holds the class: ``a[s, c] = prior`` on
the support, 0 off it (``prior = 1``, the default ``TrainConfig.transition_prior``, is
the uniform Dirichlet, "add one"): a class named by ``m`` rows gets ``m * prior``
pseudo-counts spread uniformly over them, pulling ``T`` towards "every row that may
name ``c`` names it equally often" where the counts are few, and never putting mass
off the table's support. Before the first
epoch, ``n`` is the table's own view: each row's nuclei spread uniformly over its
candidates. Exact rows enter the column totals (their ``q`` is one-hot), which is what
makes a catch-all column absorb the mass of the rows that name it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nucdata.errors import InvalidArgumentError
from nucdata_models.config import PSEUDO_RULES
from nucdata_models.data import candidate_mask

__all__ = ["PSEUDO_RULES", "TableErrorSettings", "TransitionEstimate", "partial_label_loss", "pseudo_choice",
           "pseudo_labels", "soft_label_loss"]


def partial_label_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                       sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``-log sum_{c in C} w_c p_c`` over the nuclei with a target (``w = 1``: ``-log P(C)``).

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
    weights
        Optional ``(N, K)`` non-negative weights of the candidates, e.g. a row of the
        transition estimate ``T[s, :]`` (:meth:`TransitionEstimate.weights`): the
        likelihood ``sum_c p_c T[s, c]``. Only their ratios within a row matter to the
        gradient; a row's weights are divided by their maximum over its candidates, so
        the loss is 0 when the model is certain of the best-weighted candidate.
    sample_weight
        Optional ``(N,)`` non-negative weight of each nucleus: the loss is then the
        weighted mean over the nuclei with a target (``TrainConfig.source_balance``).

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
    if weights is not None:
        w = torch.where(mask, weights.float(), torch.zeros_like(log_p))
        w = w / w.amax(dim=1, keepdim=True).clamp_min(1e-30)
        mask = mask & (w > 0)
        mask = mask | ~mask.any(dim=1, keepdim=True)  # a row whose weights are all 0 keeps its candidates
        log_p = log_p + torch.where(w > 0, w.clamp_min(1e-30).log(), torch.zeros_like(w))
    nll = -torch.logsumexp(log_p.masked_fill(~mask, float("-inf")), dim=1)
    nll = torch.where(known, nll, torch.zeros_like(nll))
    if sample_weight is not None:
        w = torch.where(known, sample_weight.float(), torch.zeros_like(nll))
        return (nll * w).sum() / w.sum().clamp_min(1e-12), count
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




def pseudo_choice(probabilities: torch.Tensor, allowed: torch.Tensor, rule: str = "candidates"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A teacher's pseudo-label candidate per nucleus under ``rule``: (confidence, output, allowed?).

    See :func:`pseudo_labels` for the rules; ``allowed?`` is whether the chosen output
    may be a pseudo label at all (before any threshold).
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
    return confidence, choice, ok


def pseudo_labels(probabilities: torch.Tensor, allowed: torch.Tensor, threshold: float | torch.Tensor,
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
        A float: the pseudo label's probability must be strictly above it (the paper's
        rule, ``TrainConfig.pseudo_select="threshold"``). A ``(K,)`` tensor: one
        threshold per chosen output, which the probability must reach (``>=``; the
        per-class quantiles of ``pseudo_select="quantile"``).
    rule
        ``"unrestricted"`` (the paper): the argmax over every output, kept only when it is
        allowed and its probability passes; ``"candidates"`` (nucdata): the most
        probable allowed output, kept when its *unrestricted* probability passes — as
        strict as the paper's test, never outside the candidates; ``"renormalised"``:
        the most probable allowed output with its probability renormalised over the
        allowed ones (looser: 0.6 vs 0.004 passes 0.99).
    """
    confidence, choice, ok = pseudo_choice(probabilities, allowed, rule)
    if isinstance(threshold, torch.Tensor):
        passes = confidence >= threshold.to(confidence.device)[choice]
    else:
        passes = confidence > threshold
    take = ok & passes
    return torch.where(take, torch.ones_like(choice) << choice, torch.zeros_like(choice))


@dataclass(frozen=True)
class TableErrorSettings:
    """How far a :class:`TransitionEstimate` may go off the tables' support: ``TrainConfig.table_error*``.

    Attributes
    ----------
    pseudo_counts
        ``table_error``: Dirichlet pseudo-counts per cell off the support (0: the
        table's support stays hard, and nothing below applies).
    prior
        ``table_error_prior``: ``"count"`` (that many per cell) or ``"share"`` (that
        share of each column's table-view mass, split over the cells off the support).
    loss
        ``table_error_loss``: ``"widened"`` (the likelihood sums over the wider
        support) or ``"table"`` (only the estimate goes off it).
    rows
        ``table_error_rows``: ``"all"``, or ``"outside"`` (only rows whose table says
        outside and nothing else; needs the set's outside output).
    min_nuclei
        ``table_error_min_nuclei``: the training nuclei a row needs to go off its
        support.
    """

    pseudo_counts: float = 0.0
    prior: str = "count"
    loss: str = "widened"
    rows: str = "all"
    min_nuclei: int = 0

    @classmethod
    def from_config(cls, config) -> TableErrorSettings:
        """The :class:`~nucdata_models.config.TrainConfig` fields of this name (``table_error*``)."""
        return cls(float(config.table_error), config.table_error_prior, config.table_error_loss,
                   config.table_error_rows, int(config.table_error_min_nuclei))


class TransitionEstimate:
    """EM estimate of ``T[s, c] = P(source row s | class c)`` for one label set (see the module docstring).

    Parameters
    ----------
    rows
        The set's source rows (:class:`.data.SourceRows`), their tensors on the
        training device.
    outputs
        The set's outputs ``K`` (+ 1 with an outside output).
    prior
        Dirichlet pseudo-counts per (row, candidate class) pair of the support
        (``TrainConfig.transition_prior``; 1 is the uniform Dirichlet).
    train_rows
        Bank rows (a 1-d index) whose nuclei count: the training split.
    table_error
        How far the estimate may go off the table's support (:class:`TableErrorSettings`;
        ``None``: not at all).
    outside_output
        Whether the set's last output is the outside class.

    Attributes
    ----------
    matrix
        float ``(G, outputs)``: ``T``, 0 off each row's support; each column sums to 1
        over the rows of one dataset (where any row names the class).
    counts
        float ``(G, outputs)``: the soft counts of the last completed E-step.
    """

    def __init__(self, rows, outputs: int, prior: float, train_rows: torch.Tensor,
                 table_error: TableErrorSettings | None = None, outside_output: bool = False):
        spec = table_error or TableErrorSettings()
        self.rows = rows
        self.outputs = int(outputs)
        self.prior_strength = float(prior)
        self.table_error = float(spec.pseudo_counts)
        self.widened_loss = spec.loss == "widened"
        device = rows.row.device
        g = len(rows)
        self.support = candidate_mask(rows.support, self.outputs).float() if g else torch.zeros(0, outputs,
                                                                                                  device=device)
        self.n_datasets = int(rows.dataset.max()) + 1 if g else 0
        self.prior = self.prior_strength * self.support
        table = self.support
        # the training nuclei of each row
        member = rows.row[train_rows]
        member = member[member >= 0]
        per_row = torch.zeros(g, device=device).index_add_(0, member, torch.ones_like(member, dtype=torch.float32))
        free = None
        if self.table_error > 0 and g:
            # off the table's support, but only in the columns some row of the same dataset
            # names: a wrong table entry moves a class between a dataset's rows, it does
            # not make a dataset write a class none of its rows maps to
            free = (self._per_dataset(self.support)[rows.dataset] > 0).float() * (1 - self.support)
            if spec.rows == "outside":
                # only a row the table sends to outside alone: the row that teaches the outside
                # output from other datasets' images, where a wrong entry hides an in-set type
                alone = rows.support == (1 << (self.outputs - 1)) if outside_output else torch.zeros_like(
                    rows.support, dtype=torch.bool)
                free = free * alone[:, None].float()
            if spec.min_nuclei > 0:
                # a row of few nuclei has too little evidence to outweigh its table entry: off-support
                # cells there are the prior's, and EM drifts into them (the easy world's 10-nucleus rows)
                free = free * (per_row >= spec.min_nuclei)[:, None].float()
            self.support = self.support + free
        # each row's support as target bits (what the likelihood sums over with table_error)
        self._row_bits = (self.support.long() << torch.arange(self.outputs, device=device)).sum(1)
        self._pending = torch.zeros(g, self.outputs, device=device)
        # the table's view: each training nucleus of a row spread uniformly over its candidates
        self.counts = per_row[:, None] * table / table.sum(1, keepdim=True).clamp_min(1)
        if free is not None:
            # off the support: ``table_error`` pseudo-counts per cell ("count"), or ``table_error``
            # times the column's table-view mass, shared by the free rows ("share"), so a rare
            # class's column is not swamped
            off = torch.full_like(free, self.table_error)
            if spec.prior == "share":
                off = (self.table_error * self._per_dataset(self.counts)
                       / self._per_dataset(free).clamp_min(1))[rows.dataset]
            self.prior = self.prior + off * free
        self.matrix = self._normalise(self.counts)

    def __len__(self) -> int:
        return len(self.rows)

    def _per_dataset(self, x: torch.Tensor) -> torch.Tensor:
        """``(datasets, outputs)``: the sum of ``(G, outputs)`` row values over each dataset's rows."""
        return torch.zeros(self.n_datasets, self.outputs, device=x.device).index_add_(0, self.rows.dataset, x)

    def _normalise(self, counts: torch.Tensor) -> torch.Tensor:
        if not len(self):
            return counts
        mass = counts + self.prior
        return mass / self._per_dataset(mass)[self.rows.dataset].clamp_min(1e-12)

    def loss_targets(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The target bits the likelihood sums over: the table's, or with ``table_error`` every class of the row's support.

        With ``table_error_loss="table"`` the table's, even with ``table_error``: only the
        estimate goes off the support.
        """
        if not len(self) or self.table_error <= 0 or not self.widened_loss:
            return targets
        row = self.rows.row[idx]
        return torch.where(row >= 0, self._row_bits[row.clamp_min(0)].to(targets.dtype), targets)

    def loss(self, logits: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor,
             sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`partial_label_loss` of bank rows ``idx`` under this estimate: ``-log sum_c p_c T[s, c]``."""
        return partial_label_loss(logits, self.loss_targets(idx, targets), self.weights(idx, targets), sample_weight)

    def weights(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(B, outputs)`` candidate weights of bank rows ``idx`` for :func:`partial_label_loss`.

        ``T[s, :]`` for a nucleus with a source row; its target's bits (weight 1) otherwise.
        """
        plain = candidate_mask(targets, self.outputs).float()
        if not len(self):
            return plain
        row = self.rows.row[idx]
        table = self.matrix[row.clamp_min(0)]
        return torch.where((row >= 0)[:, None], table, plain)

    def posterior(self, idx: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """The source-class posterior ``p(c | x) T[s, c]`` (renormalised) of bank rows ``idx``.

        A nucleus without a source row keeps ``probabilities`` (``(B, outputs)``, detached).
        """
        p = probabilities.detach().float()
        if not len(self):
            return p
        row = self.rows.row[idx]
        q = p * self.matrix[row.clamp_min(0)]
        q = q / q.sum(1, keepdim=True).clamp_min(1e-30)
        return torch.where((row >= 0)[:, None], q, p)

    def accumulate(self, idx: torch.Tensor, probabilities: torch.Tensor) -> None:
        """E-step on a batch: add the posteriors of bank rows ``idx`` (``(B, outputs)`` probabilities)."""
        if not len(self):
            return
        row = self.rows.row[idx]
        q = self.posterior(idx, probabilities)
        q = torch.where((row >= 0)[:, None], q, torch.zeros_like(q))
        self._pending.index_add_(0, row.clamp_min(0), q)

    def update(self, reduce=None) -> None:
        """M-step: the counts of the E-steps since the last update become ``counts`` and ``T``.

        ``reduce`` (e.g. an all-reduce over ranks) is applied to the counts first. An
        epoch without any counted nucleus keeps the previous estimate.
        """
        if not len(self):
            return
        pending = self._pending
        if reduce is not None:
            reduce(pending)
        if float(pending.sum()) > 0:  # once per epoch
            self.counts = pending.clone()
            self.matrix = self._normalise(self.counts)
        self._pending = torch.zeros_like(pending)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint (a resumed stage continues from them)."""
        return {"counts": self.counts.detach().cpu(), "matrix": self.matrix.detach().cpu()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state` (refused when the rows differ)."""
        if tuple(state["matrix"].shape) != tuple(self.matrix.shape):
            raise InvalidArgumentError(f"transition estimate of shape {tuple(state['matrix'].shape)} does not fit "
                                       f"{tuple(self.matrix.shape)} source rows; retrain the stage")
        self.counts = state["counts"].to(self.matrix.device)
        self.matrix = state["matrix"].to(self.matrix.device)
