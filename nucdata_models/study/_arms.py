"""The method study's arms: a registry of decorated functions, one per arm (or family of arms).

An arm is a function decorated with :func:`arm` that takes the ``nucdata`` arm's
configuration ``base`` and returns its :class:`ArmPlan`: the training configuration,
the data view it trains on (:data:`DATA_VIEWS`), the modules that predict and the
label it publishes. Its docstring's first paragraph is its description: the harness's
``--help``, :data:`ARMS` and the arm table of ``docs/method-study.md``
(:func:`render_arm_table`, kept in sync by a test) are generated from it.

All arms use the same encoder, crops and batch size, and **equal optimisation steps**:
every arm runs ``E = A + B + C`` epochs of the ``nucdata`` arm over the same training
pool (an arm without stages B and C runs stage A for ``E`` epochs; an arm without B runs
A for ``A + B``; an arm without C runs A for ``A + C``); :func:`arm_plan` refuses a plan
that breaks the rule. The paper arms take the paper recipe and inherit from ``base``
every field the published method does not fix (:data:`nucdata_models.config.PAPER_KEYS`,
from the fields' metadata), so a new :class:`~nucdata_models.TrainConfig` field is
inherited without touching this module.

A new arm::

    @arm("my-arm")
    def my_arm(base: TrainConfig) -> ArmPlan:
        \"\"\"The nucdata recipe with ... (what it trains on and for how many epochs).\"\"\"
        return ArmPlan(base.replace(...))

then regenerate the table in ``docs/method-study.md`` (``render_arm_table()``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nucdata.errors import InvalidArgumentError
from nucdata_models.config import PAPER_KEYS, STAGES, TrainConfig
from nucdata_models.data import ANNOTATED, NO_LABEL, OUTSIDE_LABEL, TrainingData

__all__ = ["ARMS", "DATA_VIEWS", "FAMILY", "PUBLISH", "Arm", "ArmPlan", "arm", "arm_plan", "oracle_data",
           "render_arm_table"]

#: What an arm may publish: the merged label (mapping tables where they decide, the
#: model elsewhere; :func:`.fill.fill_labels`) or its model's prediction.
PUBLISH = {"merged": "merged label", "model": "model prediction"}


@dataclass(frozen=True)
class ArmPlan:
    """How one arm is trained and what it publishes.

    Attributes
    ----------
    config
        Its training configuration.
    modules
        Which modules predict (``"base"`` for arms whose correlation modules never trained).
    publish
        ``"merged"`` (the arm trains with the mapping tables and publishes
        :func:`.fill.fill_labels`) or ``"model"`` (the model's prediction); see :data:`PUBLISH`.
    data
        The data view it trains on, a key of :data:`DATA_VIEWS` (``"given"``: the world's
        data; ``"oracle"``: :func:`oracle_data`).
    name
        The arm (set by :func:`arm_plan`).
    """

    config: TrainConfig
    modules: str = "both"
    publish: str = "merged"
    data: str = "given"
    name: str = ""

    def __post_init__(self) -> None:
        if self.modules not in ("both", "base", "heads"):
            raise InvalidArgumentError(f"arm {self.name or '?'}: modules={self.modules!r}; pass 'both', 'base' "
                                       "or 'heads'")
        if self.publish not in PUBLISH:
            raise InvalidArgumentError(f"arm {self.name or '?'}: publish={self.publish!r}; pass one of "
                                       f"{', '.join(PUBLISH)}")
        if self.data not in DATA_VIEWS:
            raise InvalidArgumentError(f"arm {self.name or '?'}: data={self.data!r}; pass one of "
                                       f"{', '.join(DATA_VIEWS)} (or add a view to DATA_VIEWS)")

    @property
    def oracle(self) -> bool:
        """Whether it trains on :func:`oracle_data`."""
        return self.data == "oracle"

    def key(self) -> str:
        """Identity of the trained model: arms with the same key share one training."""
        return json.dumps({"config": self.config.to_dict(), "data": self.data}, sort_keys=True)


@dataclass(frozen=True)
class Arm:
    """One registered arm.

    Attributes
    ----------
    name
        The arm's name (``nucdata-t0.9``).
    plan
        ``base -> ArmPlan`` (the decorated function, its parameters bound).
    description
        The first paragraph of the function's docstring, parameters filled in.
    template
        That paragraph as written (``{threshold}`` unfilled).
    family, params
        The name pattern it was registered under (``nucdata-t{threshold}``) and the
        values of its parameters.
    """

    name: str
    plan: Callable[[TrainConfig], ArmPlan]
    description: str
    template: str
    family: str
    params: dict[str, Any]


#: Every registered arm, in registration order (the order the harness runs them).
REGISTRY: dict[str, Arm] = {}
#: Every arm and its description, in the same order (the harness's ``--arms`` choices).
ARMS: dict[str, str] = {}


def _description(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn)
    if not doc:
        raise InvalidArgumentError(f"arm function {fn.__name__} has no docstring; its first paragraph is the "
                                   "arm's description (docs/method-study.md, --help)")
    return " ".join(doc.split("\n\n")[0].split())


def arm(name: str, **params: Sequence[Any]) -> Callable[[Callable[..., ArmPlan]], Callable[..., ArmPlan]]:
    """Register an arm: ``@arm("no-c")`` above ``def no_c(base) -> ArmPlan``.

    Parameters
    ----------
    name
        The arm's name; with ``params``, a pattern (``"nucdata-t{threshold}"``) that
        registers one arm per combination of their values.
    **params
        Parameter name -> values; the function receives them as keywords, and its
        docstring may name them (``{threshold}``).
    """

    def register(fn: Callable[..., ArmPlan]) -> Callable[..., ArmPlan]:
        text = _description(fn)
        for combo in itertools.product(*params.values()):
            values = dict(zip(params, combo, strict=True))
            full = name.format(**values)
            if full in REGISTRY:
                raise InvalidArgumentError(f"arm {full!r} is registered twice ({fn.__name__}); give it another name")

            REGISTRY[full] = Arm(full, functools.partial(fn, **values), text.format(**values), text, name, values)
            ARMS[full] = REGISTRY[full].description
        return fn

    return register


def arm_plan(arm: str, base: TrainConfig) -> ArmPlan:
    """The plan of ``arm`` given the ``nucdata`` arm's configuration ``base``.

    Raises
    ------
    InvalidArgumentError
        For an unknown arm, or a plan that does not run ``E = sum(base.epochs)``
        epochs in all (the study's equal-steps rule).
    """
    if arm not in REGISTRY:
        raise InvalidArgumentError(f"unknown arm {arm!r}; arms are {', '.join(REGISTRY)}")
    plan = dataclasses.replace(REGISTRY[arm].plan(base), name=arm)
    budget, spent = sum(base.epochs[s] for s in STAGES), sum(plan.config.epochs[s] for s in STAGES)
    if spent != budget:
        raise InvalidArgumentError(f"arm {arm!r} runs {spent} epochs in all, but every arm runs E = A + B + C = "
                                   f"{budget} (equal optimisation steps); change its epochs per stage")
    return plan


def paper_recipe(base: TrainConfig, epochs: dict[str, int]) -> TrainConfig:
    """The paper recipe with ``base``'s encoder, at the crops' own size, for ``epochs``.

    Every field the published method does not fix (:data:`.config.PAPER_KEYS`) is
    ``base``'s: batch size, learning rates, augmentation, device, seed... The encoder
    and ``input_size=None`` (no resize to 224) keep the arms comparable on a CPU.
    """
    inherited = {f.name: copy.deepcopy(getattr(base, f.name)) for f in dataclasses.fields(TrainConfig)
                 if f.name not in PAPER_KEYS}
    return TrainConfig.recipe("paper", **inherited, encoder=base.encoder, input_size=None, epochs=epochs)


def _total(base: TrainConfig) -> int:
    return sum(base.epochs[s] for s in STAGES)


# -- the arms, in the order the harness runs them ----------------------------------------
@arm("own-only")
def own_only(base: TrainConfig) -> ArmPlan:
    """Each label set learns from its own dataset's annotations only (`mapped_labels="none"`,
    no outside output); one model with a shared encoder whose heads are each trained only
    on their own dataset's nuclei (not one model per set); stage A for E epochs.

    The ``build-merged --demo`` baseline (:func:`nucdata_models.merge.baseline_config`).
    """
    from nucdata_models.merge import baseline_config
    from nucdata_models.train import CrossTrainer

    return ArmPlan(baseline_config(CrossTrainer(base)), "base", "model")


@arm("tables-only")
def tables_only(base: TrainConfig) -> ArmPlan:
    """The `own-only` model (trained without the tables), published through them: exact and
    outside rows decide, the model resolves ambiguous rows among their candidates and
    predicts the rest.

    The same training as ``own-only`` (one model, trained once); it isolates what the
    tables add at publication from what training with them adds.
    """
    from nucdata_models.merge import baseline_config
    from nucdata_models.train import CrossTrainer

    return ArmPlan(baseline_config(CrossTrainer(base)), "base", "merged")


@arm("paper-a")
def paper_a(base: TrainConfig) -> ArmPlan:
    """The paper recipe's stage A only (own labels, RGB only, logits) for E epochs."""
    return ArmPlan(paper_recipe(base, {"A": _total(base), "B": 0, "C": 0}), "base", "model")


@arm("paper")
def paper(base: TrainConfig) -> ArmPlan:
    """The paper recipe A → B → C (own labels only), the nucdata arm's epochs per stage."""
    return ArmPlan(paper_recipe(base, dict(base.epochs)), "both", "model")


@arm("self-training")
def self_training(base: TrainConfig) -> ArmPlan:
    """The nucdata recipe, but stage C is plain self-training: the base module learns from
    its own confident predictions and the correlation module takes no part
    (`pseudo_teacher="self"`, no stage B); A for A + B epochs, then C.

    It trains with the tables (it is the nucdata recipe with another stage C), so it
    publishes the merged label.
    """
    ep = base.epochs
    return ArmPlan(base.replace(pseudo_teacher="self", epochs={"A": ep["A"] + ep["B"], "B": 0, "C": ep["C"]}),
                   "base", "merged")


@arm("no-c")
def no_c(base: TrainConfig) -> ArmPlan:
    """The nucdata recipe, stages A → B, no cross-training; A for A + C epochs."""
    ep = base.epochs
    return ArmPlan(base.replace(epochs={"A": ep["A"] + ep["C"], "B": ep["B"], "C": 0}))


@arm("exact-only")
def exact_only(base: TrainConfig) -> ArmPlan:
    """The nucdata recipe, mapped labels from exact table rows only."""
    return ArmPlan(base.replace(mapped_labels="exact"))


@arm("nucdata")
def nucdata(base: TrainConfig) -> ArmPlan:
    """The nucdata recipe (exact rows and candidate sets), the default."""
    return ArmPlan(base)


@arm("nucdata-uniform")
def nucdata_uniform(base: TrainConfig) -> ArmPlan:
    """The nucdata recipe with the old candidate-set loss: an ambiguous row trains on minus
    the log of its candidates' summed probability (`candidate_likelihood="uniform"`), not on
    the transition likelihood.
    """
    return ArmPlan(base.replace(candidate_likelihood="uniform"))


@arm("soft")
def soft(base: TrainConfig) -> ArmPlan:
    """The nucdata recipe, ambiguous rows as uniform soft targets."""
    return ArmPlan(base.replace(mapped_labels="soft"))


@arm("oracle")
def oracle(base: TrainConfig) -> ArmPlan:
    """The nucdata recipe trained on the true class of every training nucleus in every set
    (the ceiling); it publishes like nucdata.

    Its merged label uses the real data's tables: its training labels are not an output.
    """
    return ArmPlan(base, data="oracle")


@arm("nucdata-t{threshold}", threshold=(0.9, 0.95, 0.99))
def nucdata_threshold(base: TrainConfig, threshold: float) -> ArmPlan:
    """The nucdata arm with stage C's threshold rule at {threshold} (`pseudo_select="threshold"`;
    an arm whose configuration equals `nucdata`'s is its model, trained once).
    """
    return ArmPlan(base.replace(pseudo_select="threshold", threshold=threshold))


# -- data views --------------------------------------------------------------------------
def oracle_data(data: TrainingData) -> TrainingData:
    """The data with every nucleus labelled in every set by its truth (the oracle's training data).

    Where ``data.truth`` is a class, it becomes an annotation (candidates: that class);
    where it is -2, the nucleus is outside the set (candidates: the outside bit); where
    the truth is unknown (-3, a stored nucleus not matched to a drawn one), no label.
    Splits, crops and truth are unchanged, so held-out nuclei still train nothing.
    """
    if set(data.truth) != set(data.names):
        missing = sorted(set(data.names) - set(data.truth))
        raise InvalidArgumentError(f"oracle_data needs data.truth for every label set, missing {missing}; "
                                   "train the oracle on generated data with known truth")
    labels, candidates, provenance = {}, {}, {}
    for spec in data.label_sets:
        truth = data.truth[spec.name].to(torch.int64)
        known = truth >= 0
        outside = truth == -2
        labels[spec.name] = torch.where(known | outside, truth, torch.full_like(truth, -1))
        bit = torch.ones_like(truth) << truth.clamp_min(0)
        candidates[spec.name] = torch.where(known, bit, torch.where(outside, torch.full_like(truth, 1 << spec.size),
                                                                    torch.zeros_like(truth)))
        prov = torch.full(truth.shape, NO_LABEL, dtype=torch.int8)
        prov[known] = ANNOTATED
        prov[outside] = OUTSIDE_LABEL
        provenance[spec.name] = prov
    return dataclasses.replace(data, labels=labels, candidates=candidates, provenance=provenance)


def _given(data: TrainingData) -> TrainingData:
    return data


#: The data an arm may train on (:attr:`ArmPlan.data`): view name -> function of the world's data.
DATA_VIEWS: dict[str, Callable[[TrainingData], TrainingData]] = {"given": _given, "oracle": oracle_data}

#: The declared family of paired comparisons ``(arm, reference)``: ``arm - reference`` in the
#: endpoint, on every label set, on the same worlds, seeds and resamples. Holm's correction
#: (and the equivalence tests' correction) runs over every comparison here that was run,
#: times every label set; no other difference is tested or reported as one.
FAMILY: tuple[tuple[str, str], ...] = (
    ("nucdata", "no-c"),         # does stage C add anything?
    ("nucdata", "own-only"),     # training and publishing with the tables vs neither
    ("nucdata", "tables-only"),  # training with the tables vs publishing through them only
    ("nucdata", "paper"),        # the method vs the paper recipe
    ("nucdata", "nucdata-uniform"),  # the transition likelihood vs the old uniform candidate-set loss
)


def render_arm_table() -> str:
    """The markdown table of the arms (``docs/method-study.md`` holds it): one row per arm family.

    Generated from the arm functions' docstrings and what their plans publish.
    """
    lines = ["| arm | training | published label |", "|---|---|---|"]
    families: dict[str, list[Arm]] = {}
    for a in REGISTRY.values():
        families.setdefault(a.family, []).append(a)
    base = TrainConfig(device="cpu")
    for members in families.values():
        first = members[0]
        if len(members) == 1:
            text = first.description
        else:  # a family: its docstring with every value of each parameter
            text = first.template.format(**{k: ", ".join(str(m.params[k]) for m in members) for k in first.params})
        names = ", ".join(f"`{m.name}`" for m in members)
        published = {PUBLISH[arm_plan(m.name, base).publish] for m in members}
        lines.append(f"| {names} | {text} | {', '.join(sorted(published))} |")
    return "\n".join(lines)

