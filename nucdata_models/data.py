"""The training data contract: crops plus, per label set, labels and candidate bitmasks.

Plain tensors only; nothing here knows about nucdata's store (see :mod:`.bridge`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from nucdata._util.codes import OUTSIDE
from nucdata.errors import InvalidArgumentError
from nucdata_models.config import MAPPED_LABELS

__all__ = ["ANNOTATED", "AMBIGUOUS", "MAPPED", "NO_LABEL", "OUTSIDE_LABEL", "PATCH_FLAGS", "PROVENANCE_NAMES", "LabelSetSpec",
           "SourceRows", "TrainingData", "candidate_mask", "derive_provenance", "source_rows", "target_bits",
           "training_targets", "without_dataset"]

# Where a nucleus's label under one set comes from (``TrainingData.provenance``).
NO_LABEL = 0  # unlabelled, or the mapping gives no information
ANNOTATED = 1  # its own dataset annotated it in this set's vocabulary
MAPPED = 2  # one class of this set, through an exact mapping row
AMBIGUOUS = 3  # a candidate set, through an ambiguous mapping row
OUTSIDE_LABEL = 4  # the mapping says no class of this set describes it
# Candidates narrowed by patch-level flags (build-merged --patch-labels; a flag 0 removes a class).
# Set only after filling, for the report: training and filling see these nuclei as AMBIGUOUS.
PATCH_FLAGS = 5
PROVENANCE_NAMES = ("none", "annotated", "mapped", "ambiguous", "outside", "patch-flags")


@dataclass(frozen=True)
class LabelSetSpec:
    """A label set as the models see it.

    Attributes
    ----------
    name
        Label-set name, e.g. ``"pannuke"``.
    version
        Version of the vocabulary; a checkpoint is refused under another version.
    class_names
        Class names in class-id order.
    """

    name: str
    version: str
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if not self.class_names:
            raise InvalidArgumentError(f"label set {self.name!r} has no classes; give its class names in id order")
        if len(self.class_names) > 62:
            raise InvalidArgumentError(f"label set {self.name!r} has {len(self.class_names)} classes; at most 62 fit "
                                       "an int64 candidate bitmask: merge classes or split the set")

    @property
    def size(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def to_dict(self) -> dict:
        """JSON-ready form (as written into checkpoints)."""
        return {"name": self.name, "version": self.version, "class_names": list(self.class_names)}


@dataclass
class TrainingData:
    """Everything the three stages train on, as tensors.

    Attributes
    ----------
    crops
        uint8 ``(N, C, S, S)``; C = 3 (RGB) or 4 (RGB + nucleus mask, 0/255).
    label_sets
        The label sets, in head order.
    labels
        Per set, int64 ``(N,)``: class id >= 0, -1 missing, -2 outside the set.
    candidates
        Per set, int64 ``(N,)`` bitmask over the set's classes; 0 = no information,
        one bit = exact, several = ambiguous (a partial label). Bit ``K`` (one past the
        last class) is the *outside* candidate: "possibly none of these classes".
    dataset_index, dataset_names
        Converter dataset of each nucleus (index into ``dataset_names``).
    split
        ``(N,)``: 0 train, 1 validation, anything else neither (only predicted).
    truth
        Optional known truth per set (generated data only), same coding as ``labels``.
    mpp
        Optional microns per pixel of the crops, recorded in checkpoints.
    provenance
        Optional per set int8 ``(N,)``: :data:`ANNOTATED`, :data:`MAPPED`,
        :data:`AMBIGUOUS`, :data:`OUTSIDE_LABEL` or :data:`NO_LABEL`. Without it, every
        known label counts as annotated (see :func:`derive_provenance`).
    source_class
        Optional int64 ``(N,)``: the native class code each nucleus carries in its own
        dataset's vocabulary (what its annotators wrote), -1 for none (a dataset
        without classes, or a nucleus without a label). The mapping tables turned it
        into the labels and candidates above; the candidate-set likelihood
        (``TrainConfig.candidate_likelihood="transition"``) estimates, per dataset and
        label set, how each source row spreads over its candidates (:func:`source_rows`).
        Default: all -1 (then the rows are told apart by dataset and candidate set only).
    source_names
        Optional ``{dataset: {code: native class name}}`` for reports.
    """

    crops: torch.Tensor
    label_sets: list[LabelSetSpec]
    labels: dict[str, torch.Tensor]
    candidates: dict[str, torch.Tensor]
    dataset_index: torch.Tensor
    dataset_names: list[str]
    split: torch.Tensor
    truth: dict[str, torch.Tensor] = field(default_factory=dict)
    mpp: float | None = None
    provenance: dict[str, torch.Tensor] = field(default_factory=dict)
    source_class: torch.Tensor | None = None
    source_names: dict[str, dict[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = int(self.crops.shape[0]) if self.crops.ndim else 0
        if self.crops.dtype != torch.uint8 or self.crops.ndim != 4 or self.crops.shape[1] not in (3, 4):
            raise InvalidArgumentError(f"TrainingData.crops must be uint8 (N, 3 or 4, S, S), got "
                                       f"{tuple(self.crops.shape)} {self.crops.dtype}; cut them with "
                                       "nucdata.views.crops_of (RGB, optionally the mask)")
        if self.crops.shape[2] != self.crops.shape[3]:
            raise InvalidArgumentError(f"TrainingData.crops must be square, got {tuple(self.crops.shape[2:])}; "
                                       "cut square crops")
        names = [s.name for s in self.label_sets]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"TrainingData.label_sets: names repeat in {names}; give each set once")
        for spec in self.label_sets:
            for what, table in (("labels", self.labels), ("candidates", self.candidates)):
                t = table.get(spec.name)
                if t is None or tuple(t.shape) != (n,) or t.dtype != torch.int64:
                    raise InvalidArgumentError(f"TrainingData.{what}[{spec.name!r}] must be an int64 ({n},) tensor, one "
                                               "entry per crop")
            lab, cand = self.labels[spec.name], self.candidates[spec.name]
            if n and (int(lab.min()) < OUTSIDE or int(lab.max()) >= spec.size):
                raise InvalidArgumentError(f"TrainingData.labels[{spec.name!r}] must lie in [-2, {spec.size - 1}] "
                                           "(-1 missing, -2 outside); translate the labels into the set first")
            if n and (int(cand.min()) < 0 or int(cand.max()) >= (1 << (spec.size + 1))):
                raise InvalidArgumentError(f"TrainingData.candidates[{spec.name!r}] has bits beyond the set's "
                                           f"{spec.size} classes and its outside bit; build it with target_bits")
            if spec.name not in self.provenance:
                self.provenance[spec.name] = derive_provenance(lab, cand)
            elif tuple(self.provenance[spec.name].shape) != (n,):
                raise InvalidArgumentError(f"TrainingData.provenance[{spec.name!r}] must have one entry per crop "
                                           f"({n}); leave it out to derive it from the labels")
        if tuple(self.dataset_index.shape) != (n,) or tuple(self.split.shape) != (n,):
            raise InvalidArgumentError(f"TrainingData.dataset_index and .split must have one entry per crop ({n}), "
                                       f"got {tuple(self.dataset_index.shape)} and {tuple(self.split.shape)}")
        if n and (int(self.dataset_index.min()) < 0 or int(self.dataset_index.max()) >= len(self.dataset_names)):
            raise InvalidArgumentError(f"TrainingData.dataset_index must index dataset_names "
                                       f"({len(self.dataset_names)} names); give every dataset a name")
        if self.source_class is None:
            self.source_class = torch.full((n,), -1, dtype=torch.int64)
        elif tuple(self.source_class.shape) != (n,) or self.source_class.dtype != torch.int64:
            raise InvalidArgumentError(f"TrainingData.source_class must be an int64 ({n},) tensor, one native code "
                                       "(or -1) per crop; leave it out when the codes are unknown")

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def names(self) -> list[str]:
        """Label-set names in head order."""
        return [s.name for s in self.label_sets]

    def targets(self, name: str) -> torch.Tensor:
        """The training target bitmask of set ``name`` (see :func:`target_bits`)."""
        return target_bits(self.labels[name], self.candidates[name])


def without_dataset(data: TrainingData, dataset: str) -> TrainingData:
    """The data with every label of one dataset removed: its nuclei as an unlabelled dataset's.

    In every set, the nuclei of ``dataset`` get no label, no candidates, provenance
    :data:`NO_LABEL` and no native class; crops, splits and truth are unchanged. A model
    trained on it has seen that dataset's images but none of its annotations, so its
    predictions there are like a model's on an unlabelled dataset's nuclei, with the
    annotations to score them (the held-out-dataset calibration,
    :func:`.calibration.fit_calibration`'s ``unseen``).
    """
    if dataset not in data.dataset_names:
        raise InvalidArgumentError(f"without_dataset: no dataset {dataset!r} in the data; pick one of "
                                   f"{', '.join(data.dataset_names)}")
    mine = data.dataset_index == data.dataset_names.index(dataset)
    labels = {s: torch.where(mine, torch.full_like(t, -1), t) for s, t in data.labels.items()}
    candidates = {s: torch.where(mine, torch.zeros_like(t), t) for s, t in data.candidates.items()}
    provenance = {s: torch.where(mine, torch.full_like(t, NO_LABEL), t) for s, t in data.provenance.items()}
    source = torch.where(mine, torch.full_like(data.source_class, -1), data.source_class)
    return dataclasses.replace(data, labels=labels, candidates=candidates, provenance=provenance, source_class=source)


def target_bits(labels: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """What a nucleus is trained towards under one set, as a bitmask (0 = nothing).

    A known label (>= 0) gives its own bit whatever ``candidates`` says; an outside
    nucleus (-2) gives 0, so the set is never trained on it; a missing label (-1)
    gives its candidates (0 = no information, several bits = a partial label).
    """
    known = labels >= 0
    own = torch.ones_like(labels) << labels.clamp_min(0)
    return torch.where(known, own, torch.where(labels == OUTSIDE, torch.zeros_like(candidates), candidates))


def derive_provenance(labels: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Provenance when the data do not say: known labels count as annotated."""
    prov = torch.full_like(labels, NO_LABEL, dtype=torch.int8)
    prov = torch.where(candidates != 0, torch.full_like(prov, AMBIGUOUS), prov)
    prov = torch.where(labels >= 0, torch.full_like(prov, ANNOTATED), prov)
    return torch.where(labels == OUTSIDE, torch.full_like(prov, OUTSIDE_LABEL), prov)


def training_targets(labels: torch.Tensor, candidates: torch.Tensor, provenance: torch.Tensor, size: int,
                     mapped_labels: str = "candidates", outside_head: bool = True, pseudo_outside: str = "withhold"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """What one set trains on under a configuration: target bitmasks and pseudo-label eligibility.

    Parameters
    ----------
    labels, candidates, provenance
        One set's columns of :class:`TrainingData`.
    size
        The set's number of classes K; bit K of a target is the outside output.
    mapped_labels
        ``"none"``: annotations only (the paper); ``"exact"``: also exact mapping rows;
        ``"candidates"`` and ``"soft"``: also ambiguous rows as candidate sets (how
        the loss treats a set is the loss's business).
    outside_head
        Whether the set's head has an outside output: without one, nuclei outside the
        set and candidate sets that include outside train nothing.
    pseudo_outside
        Without an outside output, whether nuclei the tables call outside the set may
        get a pseudo label in it: ``"withhold"`` (no) or ``"pseudo"`` (yes, as the
        reference, which knows no tables).

    Returns
    -------
    targets
        int64 bitmasks over ``size + 1`` outputs (0 = no target).
    pseudo
        int64 bitmasks of the classes a pseudo label may take, 0 where the nucleus may
        not get one (it has a target, or is known to be outside without an outside
        output). All in-set classes (and outside, with an outside head) for nuclei
        without information.
    """
    if mapped_labels not in MAPPED_LABELS:
        raise InvalidArgumentError(f"mapped_labels={mapped_labels!r}; pass one of {', '.join(MAPPED_LABELS)}")
    outside_bit = 1 << size
    in_set = outside_bit - 1
    every = in_set | (outside_bit if outside_head else 0)
    own = torch.ones_like(labels) << labels.clamp_min(0)
    zero = torch.zeros_like(candidates)
    use = provenance == ANNOTATED
    targets = torch.where(use, own, zero)
    if mapped_labels != "none":
        targets = torch.where(provenance == MAPPED, own, targets)
        if outside_head:
            targets = torch.where(provenance == OUTSIDE_LABEL, torch.full_like(zero, outside_bit), targets)
    if mapped_labels in ("candidates", "soft"):
        cand = candidates if outside_head else torch.where((candidates & outside_bit) != 0, zero, candidates)
        targets = torch.where(provenance == AMBIGUOUS, cand & every, targets)
    # A pseudo label goes to a nucleus without a target, or resolves an ambiguous one
    # within its candidates.
    free = (targets == 0) | (provenance == AMBIGUOUS)
    if not outside_head and pseudo_outside != "pseudo":
        free &= provenance != OUTSIDE_LABEL
    bound = torch.where((provenance == AMBIGUOUS) & (mapped_labels != "none"), candidates & every,
                        torch.full_like(zero, every))
    bound = torch.where(bound == 0, torch.full_like(zero, every), bound)
    return targets, torch.where(free, bound, zero)


@dataclass
class SourceRows:
    """The source rows of one label set: what the candidate-set likelihood estimates over.

    A *source row* is a (dataset, native code, candidate set) that the mapping tables
    turned into training targets of the set: an exact row (one class), an outside row
    (the outside output) or an ambiguous row (several candidates). The candidate set is
    part of the key because one native code can take two rows: PanNuke's
    tissue-conditional rows (``Neoplastic`` is MoNuSAC ``epithelial`` in carcinoma
    tissues, a candidate set elsewhere) have different supports and different cells
    behind them, so each is a source of its own.

    Attributes
    ----------
    row
        int64 ``(N,)``: each nucleus's source row, -1 where the set's target does not
        come from a table row (annotated, no information, or no target at all).
    dataset, code, support
        int64 ``(G,)``: each row's dataset index, native code (-1 unknown) and candidate
        bitmask over the set's outputs (bit ``K`` is outside).
    """

    row: torch.Tensor
    dataset: torch.Tensor
    code: torch.Tensor
    support: torch.Tensor

    def __len__(self) -> int:
        return int(self.support.shape[0])


def source_rows(targets: torch.Tensor, provenance: torch.Tensor, dataset_index: torch.Tensor,
                source_class: torch.Tensor) -> SourceRows:
    """The source rows of one set (:class:`SourceRows`) from its training targets.

    Parameters
    ----------
    targets
        The set's training target bitmasks (:func:`training_targets`).
    provenance
        The set's provenance codes; rows come from :data:`MAPPED`, :data:`AMBIGUOUS` and
        :data:`OUTSIDE_LABEL` nuclei with a target.
    dataset_index, source_class
        :attr:`TrainingData.dataset_index` and :attr:`TrainingData.source_class`.
    """
    tabled = (provenance == MAPPED) | (provenance == AMBIGUOUS) | (provenance == OUTSIDE_LABEL)
    tabled &= targets != 0
    row = torch.full_like(targets, -1)
    if not bool(tabled.any()):
        empty = torch.zeros(0, dtype=torch.int64, device=targets.device)
        return SourceRows(row, empty, empty.clone(), empty.clone())
    keys = torch.stack([dataset_index[tabled].to(targets.device), source_class[tabled].to(targets.device),
                        targets[tabled]], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    row[tabled] = inverse
    return SourceRows(row, unique[:, 0].contiguous(), unique[:, 1].contiguous(), unique[:, 2].contiguous())


def candidate_mask(bits: torch.Tensor, size: int) -> torch.Tensor:
    """Bitmasks ``(N,)`` to a boolean ``(N, size)`` table of candidate classes."""
    shifts = torch.arange(size, device=bits.device)
    return ((bits.unsqueeze(1) >> shifts) & 1).bool()
