"""Training configuration: :class:`TrainConfig`, its recipes and the differences between them.

Torch-free, so the command line can list choices and recipes without importing torch.

Every field is declared with :func:`setting`, whose metadata (a :class:`Setting`) says
which stages read it, whether it changes a stage's checkpoint key and what the paper
fixes it to. Everything else is derived from that metadata, in one place:

* :data:`RUNTIME_KEYS` (settings that change how a run is computed, not its result)
  and :data:`STAGE_C_KEYS` (settings only stage C reads), and so the checkpoint-reuse
  key of every stage (:func:`stage_key_config`);
* :data:`PAPER_KEYS` (what the published method fixes; the method study's paper arms
  take every other field from the ``nucdata`` arm) and :meth:`TrainConfig.recipe`;
* :data:`RECIPE_DIFFERENCES` (and so the recipe table of ``docs/build-merged.md``);
* the choices :meth:`TrainConfig.__post_init__` checks.

A new field: declare it with ``setting(default, stages=..., key=...)`` (and ``paper=``,
``code=``, ``why=`` when the published method fixes it to another value); a field
without it is refused at import (``tests/models/test_config_metadata.py``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any

from nucdata.errors import InvalidArgumentError

__all__ = ["CANDIDATE_LIKELIHOODS", "ENCODER_NAMES", "MAPPED_LABELS", "NOT_FIXED", "PAPER_KEYS", "PSEUDO_POSTERIORS",
           "PSEUDO_RULES", "PSEUDO_SELECTS", "RECIPES",
           "RECIPE_DIFFERENCES", "RUNTIME", "RUNTIME_KEYS", "SAVED_BEFORE", "STAGES", "STAGE_C_KEYS", "Setting", "TrainConfig",
           "setting", "settings_of", "stage_key_config"]

#: The encoders :func:`nucdata_models.build_encoder` builds (``encoders.ENCODERS`` keys).
ENCODER_NAMES = ("small", "resnet18", "resnet50")
#: How stage C turns a confident prediction into a pseudo label (:func:`.losses.pseudo_labels`).
PSEUDO_RULES = ("candidates", "unrestricted", "renormalised")
#: Which labels from other datasets' annotations train a set (:func:`.data.training_targets`).
MAPPED_LABELS = ("none", "exact", "candidates", "soft")
#: How an ambiguous row's candidates share its likelihood (:func:`.losses.partial_label_loss`).
CANDIDATE_LIKELIHOODS = ("transition", "uniform")
#: How stage C decides which pseudo labels pass (:meth:`TrainConfig.pseudo_select`).
PSEUDO_SELECTS = ("threshold", "quantile")
#: What a stage-C teacher's pseudo label is chosen from (:attr:`TrainConfig.pseudo_posterior`).
PSEUDO_POSTERIORS = ("model", "source")
#: The method's three stages.
STAGES = ("A", "B", "C")
MODULES_OF_STAGE = {"A": "base", "B": "heads", "C": "both"}
RECIPES = ("nucdata", "paper")
#: ``Setting.stages`` of a field that no stage's training reads (device, compilation, scoring).
RUNTIME = "runtime"
#: :attr:`TrainConfig.unseen_calibration`'s choices.
UNSEEN_CALIBRATIONS = ("pooled", "held-out-dataset")


class _NotFixed:
    """The paper value of a field the published method does not fix."""

    def __repr__(self) -> str:
        return "NOT_FIXED"


#: ``Setting.paper`` of a field the published method leaves open: both recipes use the
#: default, and the method study's paper arms take it from the ``nucdata`` arm.
NOT_FIXED: Any = _NotFixed()


@dataclass(frozen=True)
class Setting:
    """What a :class:`TrainConfig` field is to the method (its ``dataclasses.field`` metadata).

    Attributes
    ----------
    stages
        The stages that read it, a string of ``"A"``, ``"B"``, ``"C"`` (``"ABC"``,
        ``"C"``) or :data:`RUNTIME` (read only around the stages: device placement,
        compilation, evaluation batches, scoring).
    key
        Whether it changes a stage's result, and so its checkpoint key: a keyed field
        is in the key of the first stage that reads it and of every later one, so a
        checkpoint is reused only under the same value. ``False`` for runtime fields.
    per_stage
        A dict with one value per stage (``epochs``, ``lr``): a stage's key holds the
        values of the stages up to it only.
    paper
        The published method's value, or :data:`NOT_FIXED` where it leaves the field
        open. A field the paper fixes is not inherited by the study's paper arms.
    code, why
        Where ``paper`` differs from the default (the ``nucdata`` recipe): what the
        authors' code does, and why nucdata differs (:data:`RECIPE_DIFFERENCES`).
    choices
        The values it may take, checked when a configuration is made; empty: any.
    """

    stages: str
    key: bool
    per_stage: bool = False
    paper: Any = NOT_FIXED
    code: str = ""
    why: str = ""
    choices: tuple[Any, ...] = ()

    @property
    def first_stage(self) -> str | None:
        """The first stage that reads the field (``None`` for a runtime field)."""
        return None if self.stages == RUNTIME else min(self.stages, key=STAGES.index)


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, stages: str, key: bool,
            per_stage: bool = False, paper: Any = NOT_FIXED, code: str = "", why: str = "",
            choices: tuple[Any, ...] = ()) -> Any:
    """A :class:`TrainConfig` field with its :class:`Setting` metadata (see its attributes).

    >>> threshold: float = setting(0.99, stages="C", key=True, paper=0.99)  # doctest: +SKIP
    """
    meta = Setting(stages, key, per_stage, paper, code, why, tuple(choices))
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"setting": meta})


#: What a stored configuration without these fields did (:meth:`TrainConfig.from_saved`):
#: checkpoints written before each switch existed.
SAVED_BEFORE: dict[str, Any] = {"outside_head": False, "pseudo_rule": "renormalised", "background_balance": False,
                                "source_balance": "nucleus", "table_error_prior": "count",
                                "table_error_loss": "widened", "table_error_rows": "all"}


@dataclass
class TrainConfig:
    """Hyperparameters, the method's switches, and run settings.

    Two recipes fill it (:meth:`recipe`): ``"paper"``, the authors' method as published,
    and ``"nucdata"`` (the default values here), which adds our extensions. Every field
    on which they differ is listed, with the authors' code and the reason, in
    :data:`RECIPE_DIFFERENCES` and in ``docs/build-merged.md``.

    Attributes
    ----------
    encoder
        ``small``, ``resnet18`` or ``resnet50``.
    weights
        Optional local file with encoder weights (e.g. ImageNet); never downloaded.
    epochs, lr
        Per stage ``"A"``, ``"B"``, ``"C"``; 0 epochs skips a stage's training.
    threshold
        Pseudo labels need a probability strictly above it.
    pseudo_rule
        ``"candidates"``, ``"unrestricted"`` or ``"renormalised"`` (see
        :func:`.losses.pseudo_labels`).
    mapped_labels
        Which labels from other datasets' annotations, through the mapping tables, train
        a set: ``"none"`` (own annotations only, the paper), ``"exact"``, ``"candidates"``
        (exact rows and ambiguous rows as partial labels) or ``"soft"`` (ambiguous rows
        as uniform soft targets).
    outside_head
        Each set's head gets an output for "none of these classes", trained on nuclei
        whose mapping says outside; such nuclei can then be predicted as outside (-2).
    mask_channel
        Feed the nucleus mask as a fourth input channel when the crops carry one.
    input_size
        Resize crops to this side before the encoder (the paper: 64 px crops to 224);
        ``None`` keeps the crop size.
    correlation_input
        ``"probs"`` (probabilities) or ``"logits"`` (raw logits, the reference).
    correlation_grad
        In stage C, let the correlation heads' loss flow back into the base module
        through their input (the reference does).
    loss_mean
        Stage C's mean over (set, module) loss terms: ``"present"`` over the terms that
        had nuclei in the batch, ``"all"`` over every term, absent ones as zeros (the
        reference, which dilutes the loss when a set is absent).
    pseudo_teacher
        Stage C: ``"cross"`` (the method: each module learns from the other's confident
        predictions) or ``"self"`` (plain self-training: the base module learns from
        its own, the correlation heads take no part; predict with ``modules="base"``).
        A baseline for the method study, not a recipe.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
    bf16, channels_last, compile
        CUDA speed settings (bf16 autocast and channels-last apply on CUDA only).
    drop_last
        Drop each epoch's incomplete last batch (static shapes for ``compile``).
    eval_batch_size
        Crops per forward pass when predicting and scoring: 128, measured on a two-core
        CPU (``benchmarks/predict_defaults.py``: about twice the rate of 1024, quiet or
        beside a busy process; docs/build-merged.md, CPU defaults); on a GPU a larger
        batch may be faster.
    score_truth
        When the data carry ``truth``, score the filled labels after every stage.
    unseen_calibration
        The temperature of a (dataset, label set) pair whose dataset has no label
        information in the set (an unlabelled dataset, a lab's own images):
        ``"pooled"`` (the set's pooled cross-domain temperature, softening only) or
        ``"held-out-dataset"`` (fitted on each labelled dataset's validation nuclei as
        predicted by a model trained without that dataset's labels,
        :func:`.train.held_out_dataset_probs`; one more training per labelled dataset).
        Read by ``build-merged`` and the method study when they calibrate, not by
        training.
    stain_jitter, scale_jitter, blur_sigma
        Augmentation against dataset shifts (:mod:`.augment`; 0 off): HED-space stain
        jitter of this strength (Tellez et al. 2018; 0.05 is their "HED-light"), a
        random rescale by up to this fraction, a random Gaussian blur of sigma up to
        this many pixels. The paper has neither (its colour jitter is RGB brightness,
        contrast and saturation, and a blur on a tenth of the images).
    candidate_likelihood
        How an ambiguous row trains (``mapped_labels="candidates"``): ``"transition"``
        (``-log sum_c p(c|x) T[s, c]``, with ``T[s, c] = P(source row s | class c)``
        estimated by EM from the model's own posteriors, re-estimated every epoch of
        stages A and C; see :mod:`.losses`) or ``"uniform"`` (``-log sum_{c in C} p_c``,
        which collapses onto catch-all classes such as CoNSeP ``other``). With
        ``"transition"`` the published label of an ambiguous row is resolved by the same
        estimate, ``p(c|x) T[s, c]`` renormalised over the candidates
        (:meth:`.train.CrossTrainer.candidate_weights`); with ``"uniform"`` by ``p(c|x)``.
        The paper has no ambiguous rows (own labels only), so it fixes neither.
    transition_prior
        Dirichlet pseudo-counts per (source row, candidate class) of the transition
        estimate: a symmetric prior on each column of ``T`` over the rows that may
        name the class (1: the uniform Dirichlet).
    table_error
        Dirichlet pseudo-counts per (source row, class) *off* the table's support, in
        the columns some row of the same dataset names: how far a row may hold a class
        its table entry does not name (a wrong table entry, as the hard world's
        ``mapping_error`` draws). 0 keeps the table's support hard; above
        0 the likelihood of every tabled nucleus sums over that wider support, so EM can
        learn, e.g., that a dataset's ``dead`` row holds lymphocytes. Which rows:
        ``table_error_rows``. The default, 1 on the exact-outside rows only, lowered the
        stain-swap outside rate on the tuning worlds with wrong tables (docs/method-study.md,
        "Ablation: source balance and table errors"); on every row (``"all"``) it cost
        real ``crc-epithelial`` 0.14.
    table_error_prior
        How ``table_error`` sizes the off-support prior: ``"count"`` (that many
        pseudo-counts per cell, whatever the column's size) or ``"share"`` (that share of
        each column's table-view mass, split over the cells off the support). Neither
        is a default (docs/method-study.md, "Ablation: source balance and table errors").
    table_error_loss
        With ``table_error``: ``"widened"`` (the likelihood of a tabled nucleus sums over
        the wider support, weighted by the estimate) or ``"table"`` (it keeps the table's
        support; only the estimate goes off it). An ablation: with ``"table"`` both
        ``table_error``'s lower stain-swap rate on the demo world and its loss on real
        ``crc-epithelial`` disappear, so both come from the widened likelihood.
    table_error_rows
        With ``table_error``: which rows go off the support. ``"all"``, or
        ``"outside"``: only rows whose table entry is outside and nothing else (with
        ``outside_head``), the rows that teach the outside output from other datasets'
        images and where a wrong entry hides an in-set type; a set without such rows
        keeps the table's support. The default is ``"outside"``: chosen by a rule declared
        before its runs (docs/method-study.md, "Ablation: source balance and table
        errors"); real CRCHisto's derived sets have no exact-outside row.
    table_error_min_nuclei
        With ``table_error``: the training nuclei a row needs before it may go off its
        table's support; a smaller row keeps the table's support (0: every row chosen
        by ``table_error_rows``).
    background_balance
        Divide each crop's colour channels by their background (the median of the
        crop's outer ring; :func:`.augment.background_balance`) before the network, in
        training and prediction alike. Off by default: on the hard demo world it halved
        the stain-swap outside rate (tuning worlds 1-14: 0.188 to 0.092), but on real
        CRCHisto pixels it lowered every arm's endpoint (the quick real study: ``nucdata``
        0.421 to 0.330, the oracle 0.471 to 0.411 on ``crchisto``; see
        ``docs/method-study.md``): a real crop's ring is cytoplasm and stroma whose eosin
        tells classes apart, not a blank background.
    source_balance
        How the nuclei of one set's supervised loss weigh: ``"nucleus"`` (each the same;
        the default, and the paper's), ``"dataset"`` (each source dataset, its own
        annotations or the targets the tables give its nuclei, the same total weight,
        :func:`.train.source_balance_weights`) or ``"foreign"`` (the set's own
        annotations weigh 1 each; the other datasets' table-derived targets are balanced
        among those datasets). Neither is the default (docs/method-study.md, "Ablation:
        source balance and table errors"). ``"dataset"`` lowered ``nucdata``'s PanNuke
        endpoint on every demo evaluation (hard 1-2 0.388 to 0.319, easy 1-2 0.449 to
        0.415, acceptance worlds 0.479 to 0.340). ``"foreign"`` with ``table_error`` on
        the exact-outside rows lowered the stain-swap outside rate on the tuning worlds
        whose tables send an in-set type to outside to 0.137 (0.198 without it, 0.354
        before) but cost PanNuke 0.033 and NuCLS 0.025 on the acceptance worlds.
    pseudo_select
        Stage C's pass rule: ``"threshold"`` (the paper: confidence above
        ``threshold``) or ``"quantile"`` (before each epoch, per label set, teacher and
        predicted class, the top ``pseudo_quantile`` of the eligible training nuclei
        by confidence pass; the thresholds are fixed for the epoch). The confidence is
        the teacher's softmax, or what ``CrossTrainer.pseudo_confidence`` (a
        calibration hook) makes of it.
    pseudo_quantile
        The share of each predicted class that passes under ``"quantile"``, in (0, 1].
    pseudo_posterior
        What a stage-C teacher's pseudo label and its confidence are read from:
        ``"model"`` (the teacher's softmax, restricted to the nucleus's candidates) or
        ``"source"`` (with ``candidate_likelihood="transition"``, the source-class
        posterior ``p(c | x) T[s, c]`` of a nucleus with a source row, the rule the
        published label of an ambiguous row follows; other nuclei keep the softmax).
        Under ``"model"`` a catch-all candidate (CoNSeP ``other``) is chosen whenever the
        image favours it, whatever the source class says; at the study's full budget
        that drift lowered the model's CoNSeP accuracy during stage C, and ``"source"``
        removed most of it on four hard worlds; it is not the default because the demo's
        stage-C criterion failed with it on two sets, by its declared rule
        (docs/method-study.md, "Stage C's drift").
    jitter_rule
        ``"nucdata"`` or ``"reference"`` (the authors' colour jitter; see
        :func:`.augment.colour_jitter`).
    supervised_weighting
        Stage A's loss: ``"set"`` (the mean over the label sets of each set's mean,
        as ``loss_mean`` says) or ``"nucleus"`` (the reference: every nucleus's
        cross-entropy summed and divided by the batch size).
    pseudo_outside
        Without an outside output, nuclei the tables call outside a set: ``"withhold"``
        (no pseudo label there) or ``"pseudo"`` (the reference, which has no tables:
        every nucleus not annotated in the set is eligible).
    drop_unclassified
        Leave out of training the nuclei of labelled datasets that carry no class in
        any set (NuCLS ``unlabeled``), as the reference's conversion drops them.
    stage_nuclei
        ``"all"`` (every training nucleus in every stage) or ``"paper"`` (stage A on
        nuclei annotated in some set, stage B per set on the nuclei annotated in it,
        stage C on all).
    heads_training
        Stage B: ``"joint"`` (one optimiser over every head, shared batches, clipped)
        or ``"separate"`` (the reference: per set its own Adam and its own batches of
        the nuclei with a target in it, plain mean loss, no clipping).
    logit_clamp
        ``"everywhere"`` (both modules' outputs clamped to +-10) or ``"stage_a_loss"``
        (the reference: raw logits, clamped inside stage A's loss only).
    """

    encoder: str = setting(
        "small", stages="ABC", key=True, paper="resnet50", code="torchvision resnet50, random initialisation",
        why="the small CNN trains on a CPU in minutes; ResNet-50 stays available")
    weights: str | None = setting(None, stages="ABC", key=True)
    epochs: dict[str, int] = setting(
        default_factory=lambda: {"A": 10, "B": 10, "C": 10}, stages="ABC", key=True, per_stage=True,
        paper={"A": 50, "B": 50, "C": 50}, code="50 per stage",
        why="a CPU budget (50 epochs per stage is hours on a CPU); --epochs sets it")
    batch_size: int = setting(128, stages="ABC", key=True)
    lr: dict[str, float] = setting(default_factory=lambda: {"A": 1e-3, "B": 1e-3, "C": 1e-4}, stages="ABC",
                                   key=True, per_stage=True)
    weight_decay: float = setting(1e-4, stages="ABC", key=True)
    grad_clip: float = setting(10.0, stages="ABC", key=True)
    threshold: float = setting(0.99, stages="C", key=True, paper=0.99)
    pseudo_rule: str = setting(
        "candidates", stages="C", key=True, choices=PSEUDO_RULES, paper="unrestricted",
        code="argmax of the full softmax above 0.99",
        why="same strictness, but a pseudo label never contradicts the nucleus's candidate set")
    mapped_labels: str = setting(
        "candidates", stages="ABC", key=True, choices=MAPPED_LABELS, paper="none",
        code="own-dataset labels only",
        why="the mapping tables give exact or candidate labels in other sets for free; "
            "ambiguous rows train as partial labels, never as a guessed class")
    outside_head: bool = setting(
        True, stages="ABC", key=True, paper=False, code="no outside output: every nucleus gets a class of every set",
        why="a fibroblast has no MoNuSAC class; forcing one is necessarily wrong")
    mask_channel: bool = setting(
        True, stages="ABC", key=True, paper=False, code="RGB only (the mask is not an input)",
        why="tells the encoder which nucleus of a crowded crop is meant (not yet measured)")
    input_size: int | None = setting(
        None, stages="ABC", key=True, paper=224, code="64 px crop resized to 224",
        why="native-resolution 32 px crops cost ~49x fewer pixels than 224 px inputs")
    # Stage A evaluates through the (untrained) correlation heads too and checkpoints them.
    correlation_input: str = setting(
        "probs", stages="ABC", key=True, choices=("probs", "logits"), paper="logits",
        code="raw logits of the other sets", why="probabilities are bounded and comparable across sets")
    correlation_grad: bool = setting(
        False, stages="C", key=True, paper=True,
        code="gradients flow from the correlation heads into the backbone in stage C",
        why="the base features are trained by the base loss only; its effect is a measured switch, not a claim")
    loss_mean: str = setting(
        "present", stages="ABC", key=True, choices=("present", "all"), paper="all",
        code="mean over a (set x module) table with zeros for absent sets",
        why="absent sets should not dilute the loss of the present ones")
    pseudo_teacher: str = setting("cross", stages="C", key=True, choices=("cross", "self"), paper="cross")
    # Stage A builds and checkpoints the correlation heads, of this width.
    hidden: int = setting(128, stages="ABC", key=True)
    augment: bool = setting(True, stages="ABC", key=True)
    jitter: float = setting(0.2, stages="ABC", key=True)
    jitter_rule: str = setting(
        "nucdata", stages="ABC", key=True, choices=("nucdata", "reference"), paper="reference",
        code="dataset/dataset.py:459-494 MyRandomColorJitter: brightness, contrast and saturation in a random "
             "order (l.476), brightness applied twice (l.481-482), a clamp after each op, contrast around the "
             "grey mean; applied to the whole image before cropping (l.150-156)",
        why="each factor once in a fixed order; the bank holds crops, so the crop is jittered (the whole-image "
            "scope of contrast is not reproduced); ours: nucdata_models/augment.py colour_jitter")
    blur_p: float = setting(0.1, stages="ABC", key=True)
    stain_jitter: float = setting(
        0.3, stages="ABC", key=True, paper=0.0,
        code="no stain augmentation: RGB brightness, contrast and saturation jitter and a blur on a tenth of the "
             "images only (dataset/dataset.py:150-156)",
        why="a dataset's stain must not tell the outside output which dataset a nucleus came from (issue 20 "
            "point 2; 0.3 chosen on hard world seeds 1-3: MoNuSAC-to-CoNSeP stain-swap outside rate 0.12 "
            "against 0.22 without, 0.17 at 0.2, macro F1 unchanged); HED jitter of Tellez et al. 2018; "
            "ours: nucdata_models/augment.py hed_jitter")
    scale_jitter: float = setting(
        0.0, stages="ABC", key=True, paper=0.0, code="no rescaling (dataset/dataset.py:150-163)",
        why="datasets differ in pixel size; ours: nucdata_models/augment.py rescale")
    blur_sigma: float = setting(
        0.0, stages="ABC", key=True, paper=0.0,
        code="a fixed 3x3 Gaussian blur (sigma 1.5) on a tenth of the images only (dataset/dataset.py:153-154)",
        why="datasets differ in focus; ours: nucdata_models/augment.py random_blur")
    drop_last: bool = setting(
        True, stages="ABC", key=True, paper=False,
        code="torch DataLoader without drop_last (training/modules/sparse_training.py:50-51, "
             "label_correlation.py:60-61, label_completion.py:65-66): the short last batch trains",
        why="static batch shapes for torch.compile (a batch of one row is skipped in both recipes: batch "
            "normalisation); ours: nucdata_models/train.py CrossTrainer.batches")
    device: str = setting("auto", stages=RUNTIME, key=False)
    seed: int = setting(0, stages="ABC", key=True)
    bf16: bool = setting(
        True, stages="ABC", key=True, paper=False,
        code="float32 throughout: inputs cast with .float() and the forward pass without autocast "
             "(training/modules/sparse_training.py:79-83, label_completion.py:118-124)",
        why="bf16 autocast on CUDA for speed, logits cast to float32 before every loss and softmax (CPU "
            "runs are float32 in both recipes); ours: nucdata_models/train.py CrossTrainer.autocast")
    channels_last: bool = setting(True, stages="ABC", key=True)
    compile: bool = setting(False, stages=RUNTIME, key=False)
    eval_batch_size: int = setting(128, stages=RUNTIME, key=False)
    score_truth: bool = setting(True, stages=RUNTIME, key=False)
    unseen_calibration: str = setting("pooled", stages=RUNTIME, key=False, choices=UNSEEN_CALIBRATIONS)
    # Stage B's heads train on the same candidate-set likelihood, with stage A's estimate.
    candidate_likelihood: str = setting("transition", stages="ABC", key=True, choices=CANDIDATE_LIKELIHOODS)
    transition_prior: float = setting(1.0, stages="ABC", key=True)
    table_error: float = setting(1.0, stages="ABC", key=True)
    table_error_prior: str = setting("count", stages="ABC", key=True, choices=("count", "share"))
    table_error_loss: str = setting("widened", stages="ABC", key=True, choices=("widened", "table"))
    table_error_rows: str = setting("outside", stages="ABC", key=True, choices=("all", "outside"))
    table_error_min_nuclei: int = setting(0, stages="ABC", key=True)
    background_balance: bool = setting(False, stages="ABC", key=True, paper=False)
    source_balance: str = setting("nucleus", stages="ABC", key=True, choices=("nucleus", "dataset", "foreign"), paper="nucleus")
    pseudo_select: str = setting(
        "quantile", stages="C", key=True, choices=PSEUDO_SELECTS, paper="threshold",
        code="a pseudo label passes when the teacher's softmax is above 0.99 (model/utils.py:368-371)",
        why="at 0.99 no pseudo label passed in any quick run (median top probability 0.12-0.25): stage C "
            "never ran; the top fraction of each predicted class passes instead; ours: "
            "nucdata_models/train.py CrossTrainer._before_c_epoch")
    pseudo_quantile: float = setting(0.2, stages="C", key=True)
    pseudo_posterior: str = setting("model", stages="C", key=True, choices=PSEUDO_POSTERIORS, paper="model")
    supervised_weighting: str = setting(
        "set", stages="A", key=True, choices=("set", "nucleus"), paper="nucleus",
        code="model/utils.py:72-94 loss_fn: per-nucleus cross-entropy over its own set (logits clamped, l.81), "
             "summed over the batch (l.92) and divided by the batch size (l.94): a set weighs its share of "
             "the batch",
        why="each label set's mean weighs the same in stage A, so PanNuke (about half the nuclei) does not "
            "drown the small sets; ours: nucdata_models/train.py CrossTrainer.stage (loss_a)")
    pseudo_outside: str = setting(
        "withhold", stages="C", key=True, choices=("withhold", "pseudo"), paper="pseudo",
        code="model/utils.py:352-357: every nucleus not of dataset k (other datasets and unlabelled ones) is a "
             "pseudo-label candidate for set k; the code has no mapping tables",
        why="without an outside output, a nucleus the tables call outside a set has no right class there; "
            "ours: nucdata_models/data.py training_targets")
    drop_unclassified: bool = setting(
        False, stages="ABC", key=True, paper=True,
        code="dataset/preparation/NuCLS.py:52-56, 74-76: NuCLS 'unlabeled' and FOV instances (and those whose "
             "majority class covers < 50 %) are removed at conversion",
        why="they are real nuclei: they stay in the pool (in the paper arm they would get pseudo labels in "
            "their own set, which the authors' code never gives); ours: nucdata_models/train.py "
            "CrossTrainer.setup")
    stage_nuclei: str = setting(
        "all", stages="ABC", key=True, choices=("all", "paper"), paper="paper",
        code="stage A on the labelled datasets only (training/modules/sparse_training.py:43-45), stage B head k "
             "on dataset k only (label_correlation.py:48-54), stage C also on the unlabelled datasets "
             "(label_completion.py:50-57)",
        why="one pool for every stage (the method study's equal-steps budget is epochs over one pool); "
            "unlabelled nuclei train nothing in A and B but share batch normalisation; ours: "
            "nucdata_models/train.py CrossTrainer.stage_index")
    heads_training: str = setting(
        "joint", stages="B", key=True, choices=("joint", "separate"), paper="separate",
        code="training/modules/label_correlation.py:80-113, 252-257: per set k its own MLP and Adam, trained "
             "one after the other on dataset k's nuclei with plain cross-entropy (model/utils.py:181-189), no "
             "gradient clipping",
        why="one optimiser over every head on the shared batches, clipped like stages A and C; ours: "
            "nucdata_models/train.py CrossTrainer.stage (loss_b)")
    logit_clamp: str = setting(
        "everywhere", stages="ABC", key=True, choices=("everywhere", "stage_a_loss"), paper="stage_a_loss",
        code="model/utils.py:81: logits clamped to +-10 inside the stage-A loss only; stage B and C losses, the "
             "0.99 test and inference read raw logits (model/model.py:52-58, model/utils.py:359-371, 407-410)",
        why="bounded logits in every stage keep one confident set from dominating a sum of losses; ours: "
            "nucdata_models/model.py BaseModel.forward, CorrelationHeads.forward_one")

    def __post_init__(self) -> None:
        for stage in STAGES:
            self.epochs.setdefault(stage, 0)
            self.lr.setdefault(stage, 1e-4 if stage == "C" else 1e-3)
        for name, meta in SETTINGS.items():
            if meta.choices and getattr(self, name) not in meta.choices:
                raise InvalidArgumentError(f"TrainConfig.{name} must be one of {', '.join(meta.choices)}, "
                                           f"got {getattr(self, name)!r}; pass one of those")
        if not 0.0 <= self.threshold < 1.0:
            raise InvalidArgumentError(f"TrainConfig.threshold must lie in [0, 1), got {self.threshold}; "
                                       "pass a probability such as 0.99")
        if self.batch_size < 2:
            raise InvalidArgumentError(f"TrainConfig.batch_size must be at least 2 (batch normalisation), "
                                       f"got {self.batch_size}; pass 2 or more")
        if not 0.0 < self.pseudo_quantile <= 1.0:
            raise InvalidArgumentError(f"TrainConfig.pseudo_quantile must lie in (0, 1], got {self.pseudo_quantile}; "
                                       "pass a share such as 0.2")
        if self.transition_prior < 0:
            raise InvalidArgumentError(f"TrainConfig.transition_prior must not be negative, got "
                                       f"{self.transition_prior}; pass pseudo-counts such as 1.0")
        if self.table_error < 0:
            raise InvalidArgumentError(f"TrainConfig.table_error must not be negative, got {self.table_error}; "
                                       "pass 0 (the table's support) or pseudo-counts such as 1.0")
        if self.table_error_min_nuclei < 0:
            raise InvalidArgumentError(f"TrainConfig.table_error_min_nuclei must not be negative, got "
                                       f"{self.table_error_min_nuclei}; pass 0 (every row) or a count such as 50")
        if self.input_size is not None and self.input_size < 8:
            raise InvalidArgumentError(f"TrainConfig.input_size must be at least 8 pixels, got {self.input_size}; "
                                       "pass 8 or more, or None to keep the crop size")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in changes.items()})

    @classmethod
    def from_saved(cls, stored: Any) -> TrainConfig:
        """The configuration a checkpoint or classifier sidecar stored (its ``config``), read back.

        A field the stored mapping lacks was written before the field existed and takes
        the value that behaviour had then (:data:`SAVED_BEFORE`: no outside output,
        renormalised pseudo labels, unbalanced crops), not today's default, so an old
        model is fed what it was trained on; keys this version does not know are ignored.
        """
        saved = {**SAVED_BEFORE, **dict(stored)}
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """The configuration of a named recipe, with ``overrides`` applied.

        ``"nucdata"`` is this class's defaults; ``"paper"`` sets every field the
        published method fixes (:data:`PAPER_KEYS`) to its value.
        """
        if name not in RECIPES:
            raise InvalidArgumentError(f"unknown recipe {name!r}; recipes are {', '.join(RECIPES)}")
        values = {k: SETTINGS[k].paper for k in PAPER_KEYS} if name == "paper" else {}
        values.update(overrides)
        return cls(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()})


def settings_of(cls: type) -> dict[str, Setting]:
    """Every field's :class:`Setting`, in field order, checked.

    Raises
    ------
    InvalidArgumentError
        For a field declared without :func:`setting`, or with inconsistent metadata.
    """
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        where = f"{cls.__name__}.{f.name}"
        if not isinstance(meta, Setting):
            raise InvalidArgumentError(
                f"{where} has no Setting metadata: declare it as {f.name} = setting(default, stages=..., key=...) "
                "(nucdata_models/config.py says what each argument means)")
        if meta.stages != RUNTIME and (not meta.stages or set(meta.stages) - set(STAGES)):
            raise InvalidArgumentError(f"{where}: stages={meta.stages!r}; give stage letters (\"ABC\", \"C\") "
                                       "or RUNTIME")
        if meta.stages == RUNTIME and meta.key:
            raise InvalidArgumentError(f"{where}: a runtime field cannot change a checkpoint key; pass key=False "
                                       "or the stages that read it")
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if meta.per_stage and not isinstance(default, dict):
            raise InvalidArgumentError(f"{where}: per_stage needs a dict default with one value per stage")
        if meta.paper is not NOT_FIXED and meta.paper != default and not (meta.code and meta.why):
            raise InvalidArgumentError(f"{where}: the paper's value {meta.paper!r} differs from the default "
                                       f"{default!r}; say what the authors' code does (code=) and why nucdata "
                                       "differs (why=)")
        out[f.name] = meta
    return out


def stage_key_config(config: TrainConfig, stage: str) -> dict[str, Any]:
    """The settings a stage's result depends on: its part of the stage's checkpoint key.

    Every keyed field (:attr:`Setting.key`) that a stage up to ``stage`` reads; of a
    per-stage field, the values of the stages up to ``stage``.
    """
    upto = STAGES[: STAGES.index(stage) + 1]
    out: dict[str, Any] = {}
    for name, meta in SETTINGS.items():
        if not meta.key or meta.first_stage not in upto:
            continue
        value = copy.deepcopy(getattr(config, name))
        out[name] = {s: value[s] for s in upto} if meta.per_stage else value
    return out


#: Every field's :class:`Setting`, in field order.
SETTINGS: dict[str, Setting] = settings_of(TrainConfig)
#: Settings that change how a run is computed on the machine, not its result (in no checkpoint key).
RUNTIME_KEYS: tuple[str, ...] = tuple(k for k, m in SETTINGS.items() if not m.key)
#: Settings read by stage C only: changing them keeps the checkpoints of stages A and B.
STAGE_C_KEYS: tuple[str, ...] = tuple(k for k, m in SETTINGS.items() if m.key and m.first_stage == "C")
#: The fields the published method fixes (``Setting.paper``); the method study's paper
#: arms take every other field from the ``nucdata`` arm.
PAPER_KEYS: tuple[str, ...] = tuple(k for k, m in SETTINGS.items() if m.paper is not NOT_FIXED)


def _default(name: str) -> Any:
    f = TrainConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not MISSING else f.default


#: Every field on which the two recipes differ: the paper's value, nucdata's, what the
#: authors' code does, and why nucdata differs (from the fields' :class:`Setting`, in
#: field order). ``docs/build-merged.md`` renders it.
RECIPE_DIFFERENCES: dict[str, dict[str, Any]] = {
    name: {"paper": meta.paper, "nucdata": _default(name), "code": meta.code, "why": meta.why}
    for name, meta in SETTINGS.items() if name in PAPER_KEYS and meta.paper != _default(name)
}
