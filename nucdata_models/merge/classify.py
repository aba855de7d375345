"""Classify a lab's own nuclei under every label set: :class:`Classifier`.

nucdata does not segment: it classifies the nuclei a segmenter found (StarDist,
Cellpose, HoVer-Net, CellViT, InstanSeg, QuPath). A :class:`Classifier` is the model
``build-merged`` trained, read from the shippable checkpoint it writes
(``classifier.safetensors`` and ``classifier.json``, :mod:`.card`); reading it runs no
code from the file.

For each nucleus and label set, :meth:`Classifier.predict` gives what ``build-merged``
publishes for the nuclei of its datasets (:func:`nucdata_models.fill.fill_labels`):

* ``label``: the published label. Where the nucleus's own annotation decides it (the
  lab's labels, given with ``labels=`` and ``vocabulary=``, through the mapping tables
  like ``build-merged``): the annotation, the exact row's class, the model's best
  candidate of an ambiguous row, or -2 (outside) where the row says so; otherwise, as for
  every nucleus without annotations, the model's own label (-2 where its outside output
  wins);
* ``probability``: its calibrated probability (renormalised over the candidates for an
  ambiguous row), with the checkpoint's calibration for the lab's images (the set's
  pooled temperature, never sharpening; :mod:`nucdata_models.calibration`), or the one
  :meth:`Classifier.recalibrate` fitted on the lab's own labelled nuclei;
* ``candidates`` (the tables' candidate bitmask, 0 when nothing is known), ``outside``
  and the outside output's probability, ``source`` (the provenance), the model's own
  ``predicted`` label, and every class's calibrated probability;
* optionally the shared encoder's embedding (:meth:`Classifier.embed`): the multitask
  encoder as a nucleus feature extractor.

Crops are cut exactly as ``build-merged`` cut its training crops (:mod:`.engine`). The
image's µm/px comes from ``mpp=`` or the file's metadata; without either the classifier
refuses to guess (:class:`nucdata.errors.MissingMppError`). An image whose µm/px lies in
the model's training range (``mpp_range``, 5 % slack) is cut at its own resolution, as
each training dataset was; any other is resampled to the model's ``mpp``. Inputs far from
the training crops raise a :class:`nucdata.errors.DomainShiftWarning` naming the gap.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucdata.errors import (
    CheckpointError,
    DomainShiftWarning,
    InvalidArgumentError,
    MissingMppError,
)
from nucdata_models.merge.engine import (
    ArraySource,
    InstanceMasks,
    NoMasks,
    Nuclei,
    PolygonMasks,
    cut_tile,
)

__all__ = ["LAB", "MPP_SLACK", "Classification", "Classifier", "SetResult", "annotation_columns"]

#: The calibration domain of a lab's own images (a name no dataset has).
LAB = "(own images)"
#: Relative slack around the training µm/px range within which images are not resampled.
MPP_SLACK = 0.05
#: Fewest nuclei whose statistics are compared with the training crops'.
CHECK_MINIMUM = 20


def _hex_rgb(colour: str) -> list[int]:
    colour = colour.lstrip("#")
    return [int(colour[i : i + 2], 16) for i in (0, 2, 4)]


@dataclass
class SetResult:
    """What a classifier says of every nucleus under one label set.

    Attributes
    ----------
    name, class_names, colors
        The label set, its classes in id order and their ``#rrggbb`` colours.
    label
        int64 ``(N,)``: the published label (class id; -2 outside the set).
    probability
        float32 ``(N,)``: its calibrated probability (1 for a -2 the annotation's exact outside row
        decides; NaN for -2 without an outside output).
    source
        int8 ``(N,)``: where the label came from, an index into :data:`nucdata.PROVENANCE`
        (``predicted`` for every nucleus without annotations).
    candidates
        int64 ``(N,)``: the tables' candidate bitmask for the nucleus's annotation (bit
        ``K``: possibly outside; 0 when nothing is known).
    predicted, predicted_probability
        The model's own label over the whole set and its calibrated probability.
    probs
        float32 ``(N, K)`` or ``(N, K + 1)``: calibrated probabilities of every class (the
        outside output last).
    """

    name: str
    class_names: tuple[str, ...]
    colors: tuple[str, ...]
    label: np.ndarray
    probability: np.ndarray
    source: np.ndarray
    candidates: np.ndarray
    predicted: np.ndarray
    predicted_probability: np.ndarray
    probs: np.ndarray

    @property
    def outside(self) -> np.ndarray:
        """bool ``(N,)``: the published label is -2, no class of this set."""
        return self.label == -2

    @property
    def outside_probability(self) -> np.ndarray:
        """float32 ``(N,)``: the calibrated probability of the outside output (NaN without one)."""
        if self.probs.shape[1] == len(self.class_names) + 1:
            return self.probs[:, -1]
        return np.full(self.probs.shape[0], np.nan, np.float32)

    def names(self) -> list[str]:
        """The published label's class name per nucleus (``"outside"`` for -2)."""
        table = np.asarray([*self.class_names, "outside"], dtype=object)
        return table[np.where(self.label < 0, len(self.class_names), self.label)].tolist()

    def sources(self) -> list[str]:
        """The provenance name per nucleus."""
        from nucdata._util.codes import PROVENANCE

        return [PROVENANCE[int(s)] for s in self.source]

    def take(self, rows: np.ndarray) -> SetResult:
        """The same for nuclei ``rows``."""
        return SetResult(self.name, self.class_names, self.colors, *(a[rows] for a in (
            self.label, self.probability, self.source, self.candidates, self.predicted, self.predicted_probability,
            self.probs)))


@dataclass
class Classification:
    """Every nucleus of one image under every label set (:meth:`Classifier.predict`).

    Attributes
    ----------
    ids
        int64 ``(N,)``: the nuclei's stable ids, in the input's order.
    centroid
        float64 ``(N, 2)``: x, y in the image's pixels (origin at the top-left pixel's centre).
    area
        float64 ``(N,)``: mask pixels (NaN for points).
    mpp
        The image's µm/px.
    scale
        Native pixels per model pixel (1: cut at the image's own resolution).
    sets
        Label set -> :class:`SetResult`, in the classifier's head order.
    embedding
        float32 ``(N, F)`` encoder features, when asked for.
    uncalibrated
        Label set -> float32 ``(N, K[+1])``: the model's probabilities before calibration
        (what :meth:`Classifier.recalibrate` fits on).
    domain
        The calibration domain used (:data:`LAB` for a lab's images).
    warnings
        The gaps to the training data found (the :class:`DomainShiftWarning` messages).
    """

    ids: np.ndarray
    centroid: np.ndarray
    area: np.ndarray
    mpp: float
    scale: float
    sets: dict[str, SetResult]
    embedding: np.ndarray | None = None
    uncalibrated: dict[str, np.ndarray] = field(default_factory=dict)
    domain: str = LAB
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, label_set: str) -> SetResult:
        try:
            return self.sets[label_set]
        except KeyError:
            raise InvalidArgumentError(f"label set {label_set!r} is not one of this classifier's: "
                                       f"{', '.join(self.sets)}") from None

    @property
    def area_um2(self) -> np.ndarray:
        """float64 ``(N,)``: mask area in µm² (NaN for points)."""
        return self.area * self.mpp**2

    @property
    def centroid_um(self) -> np.ndarray:
        """float64 ``(N, 2)``: centroid x, y in µm from the top-left pixel's centre."""
        return self.centroid * self.mpp

    def columns(self) -> dict[str, np.ndarray]:
        """One column per field: ``id``, ``x``, ``y`` (px), ``x_um``, ``y_um``, ``area_um2``, then per
        set ``<set>_label``, ``<set>_class``, ``<set>_probability``, ``<set>_outside``,
        ``<set>_outside_probability``, ``<set>_candidates``, ``<set>_source``,
        ``<set>_predicted`` (the Parquet table's columns)."""
        from nucdata._util.codes import PROVENANCE

        out: dict[str, np.ndarray] = {"id": self.ids, "x": self.centroid[:, 0], "y": self.centroid[:, 1],
                                      "x_um": self.centroid_um[:, 0], "y_um": self.centroid_um[:, 1],
                                      "area_um2": self.area_um2}
        for name, r in self.sets.items():
            out[f"{name}_label"] = r.label
            out[f"{name}_class"] = np.asarray(r.names(), dtype=object)
            out[f"{name}_probability"] = r.probability
            out[f"{name}_outside"] = r.outside
            out[f"{name}_outside_probability"] = r.outside_probability
            out[f"{name}_candidates"] = r.candidates
            out[f"{name}_source"] = np.asarray([PROVENANCE[int(s)] for s in r.source], dtype=object)
            out[f"{name}_predicted"] = r.predicted
        return out

    def take(self, rows: np.ndarray) -> Classification:
        """The nuclei ``rows`` only."""
        rows = np.asarray(rows, np.int64)
        return Classification(self.ids[rows], self.centroid[rows], self.area[rows], self.mpp, self.scale,
                              {k: v.take(rows) for k, v in self.sets.items()},
                              None if self.embedding is None else self.embedding[rows],
                              {k: v[rows] for k, v in self.uncalibrated.items()}, self.domain, list(self.warnings))

    @staticmethod
    def concat(parts: Sequence[Classification]) -> Classification:
        """The nuclei of several parts of one image, in order."""
        if not parts:
            raise InvalidArgumentError("Classification.concat: no parts")
        first = parts[0]

        def cat(arrays):
            return np.concatenate(list(arrays))

        sets = {}
        for name, r in first.sets.items():
            rs = [p.sets[name] for p in parts]
            sets[name] = SetResult(name, r.class_names, r.colors, *(cat(getattr(x, a) for x in rs) for a in (
                "label", "probability", "source", "candidates", "predicted", "predicted_probability", "probs")))
        embedding = None if first.embedding is None else cat(p.embedding for p in parts)
        return Classification(cat(p.ids for p in parts), cat(p.centroid for p in parts), cat(p.area for p in parts),
                              first.mpp, first.scale, sets, embedding,
                              {k: cat(p.uncalibrated[k] for p in parts) for k in first.uncalibrated}, first.domain,
                              sorted({w for p in parts for w in p.warnings}))


def annotation_columns(annotation: np.ndarray, vocabulary: str | Mapping[str, Any], label_sets: Sequence[str],
                       tissue: str | np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A lab's labels through the mapping tables: per set ``(labels, candidates, provenance)``.

    As :func:`nucdata_models.merge.label_columns` does for a store: *annotated* where the
    set is the vocabulary's own, *mapped* (an exact row), *ambiguous* (a candidate set),
    *outside*, or none.

    Parameters
    ----------
    annotation
        Per nucleus, a code of ``vocabulary`` (int; -1 or missing for none) or a class
        name (str; ``""`` or ``None`` for none).
    vocabulary
        What the labels are: a dataset's name (its native codes, e.g. ``"consep"``), a
        label set (its class ids: ``"set:pannuke"``, or a label set that is no dataset's
        name), or per label set a :class:`nucdata.labels.LabelMapping` (a lab's own table,
        ``nucdata prepare --custom``).
    tissue
        The image's tissue (or one per nucleus), for tissue-conditional rows.
    """
    from nucdata.labels import OWN_LABEL_SET, mapping, translate_annotations
    from nucdata_models.data import AMBIGUOUS, ANNOTATED, MAPPED, NO_LABEL, OUTSIDE_LABEL

    out = {}
    for s in label_sets:
        table = vocabulary[s] if isinstance(vocabulary, Mapping) else mapping(vocabulary, s)
        labels, candidates = translate_annotations(table, annotation, tissue)
        source = str(table.source).removeprefix("set:")
        own = s == source or OWN_LABEL_SET.get(source) == s
        prov = np.full(labels.shape, NO_LABEL, np.int8)
        prov[candidates != 0] = AMBIGUOUS
        prov[labels >= 0] = ANNOTATED if own else MAPPED
        prov[labels == -2] = OUTSIDE_LABEL
        out[s] = (labels.astype(np.int64), candidates.astype(np.int64), prov)
    return out


def _read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """An image file (PNG, JPEG, TIFF through :func:`nucdata.formats.read_image`; ``.npy`` without
    pickle) and the µm/px its metadata states."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise InvalidArgumentError(f"{path}: no such image file; correct the path")
        try:
            return np.load(path, allow_pickle=False), None  # arrays only: a pickle is refused
        except ValueError as exc:
            raise InvalidArgumentError(f"{path}: not a plain .npy array ({exc}); save the image with "
                                       "numpy.save (numbers, not objects)") from None
    from nucdata.formats import read_image

    return read_image(path)


class Classifier:
    """A trained merged classifier, ready to label a lab's own nuclei under every label set.

    Make one with :meth:`from_pretrained`. Attributes: ``label_sets`` (name, version and
    classes, in head order), ``crop_size``, ``mpp`` and ``mpp_range`` (µm/px),
    ``calibration`` (:class:`nucdata_models.calibration.Calibration`), ``meta`` (the
    sidecar), ``device``.

    Examples
    --------
    >>> clf = Classifier.from_pretrained("merged/")                               # doctest: +SKIP
    >>> result = clf.predict(rgb, instances=labels, mpp=0.25)                     # doctest: +SKIP
    >>> result["pannuke"].names()[:3], result["pannuke"].probability[:3]          # doctest: +SKIP
    """

    def __init__(self, trainer, meta: dict[str, Any], path: Path | None = None):
        from nucdata_models.calibration import Calibration

        self.trainer = trainer
        self.meta = meta
        self.path = path
        self.label_sets = list(trainer.label_sets)
        self.crop_size = int(meta["crop_size"])
        self.in_channels = int(meta["in_channels"])
        self.mpp = None if meta.get("mpp") is None else float(meta["mpp"])
        rng = meta.get("mpp_range")
        self.mpp_range = None if not rng else (float(rng[0]), float(rng[1]))
        stored = meta.get("calibration")
        where = f"{path}: calibration" if path else "calibration"
        self.calibration = Calibration.from_dict(stored, where=where) if stored else Calibration()
        self.device = trainer.device
        colours = {s["name"]: tuple(s.get("colors") or ()) for s in meta.get("label_sets", [])}
        self._colours = {s.name: colours.get(s.name) or _default_colours(s.name, s.size) for s in self.label_sets}

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], device: str = "auto") -> Classifier:
        """Read a classifier: a ``build-merged`` output folder, or its checkpoint file.

        Parameters
        ----------
        path
            A folder holding ``classifier.safetensors`` (a ``build-merged`` output), a
            ``.safetensors`` file (its description beside it as ``.json``, or in its
            header), or its ``.json`` sidecar. A ``.pt`` file is read only when it is
            nucdata's own weights-only checkpoint (``model.pt``: tensors and JSON,
            loaded with ``torch.load(weights_only=True)``, which refuses any pickled
            object); without the sidecar's statistics its inputs are not checked.
        device
            ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

        Raises
        ------
        CheckpointError
            A missing file, a foreign or tampered checkpoint, a pickle that is not our
            weights-only format; naming the file and the fix.
        """
        from nucdata_models.checkpoint import load_checkpoint, load_safetensors
        from nucdata_models.data import LabelSetSpec
        from nucdata_models.merge.card import SIDECAR_NAME, WEIGHTS_NAME

        path = Path(path)
        if path.is_dir():
            if (path / WEIGHTS_NAME).is_file():
                path = path / WEIGHTS_NAME
            elif (path / "model.pt").is_file():
                path = path / "model.pt"
            else:
                raise CheckpointError(f"{path}: holds no {WEIGHTS_NAME} (nor model.pt); pass a build-merged output "
                                      "folder or the checkpoint file")
        elif path.suffix == ".json":
            meta = _sidecar_weights(path)
            path = path.with_name(meta)
        if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
            state, meta = load_checkpoint(path)  # weights_only: tensors and JSON, never a pickled object
            meta = {**meta, "format": "nucdata-torch"}
        elif path.suffix == ".safetensors":
            state, meta = load_safetensors(path)
        else:
            raise CheckpointError(f"{path}: not a classifier file (.safetensors, or nucdata's model.pt); pass the "
                                  f"build-merged output folder, its {WEIGHTS_NAME} or its {SIDECAR_NAME}")
        try:
            specs = [LabelSetSpec(s["name"], str(s["version"]), tuple(s["class_names"])) for s in meta["label_sets"]]
            trainer = _trainer(state, meta, specs, device)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - weights that do not fit their description
            raise CheckpointError(f"{path}: the weights do not match their description ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:300]}); the file or its .json was changed. Use the "
                                  "files build-merged wrote, together") from None
        return cls(trainer, meta, path)

    # -- what it says about itself ------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The label sets, in head order."""
        return [s.name for s in self.label_sets]

    @property
    def model_card(self) -> str:
        """The model card (Markdown; what ``nucdata model-card`` prints)."""
        from nucdata_models.merge.card import render_model_card

        return render_model_card(self.meta)

    def colours(self, label_set: str) -> tuple[str, ...]:
        """The ``#rrggbb`` colour of each class of ``label_set``."""
        return self._colours[label_set]

    def __repr__(self) -> str:
        return (f"Classifier({', '.join(self.names)}; encoder {self.meta.get('encoder')}, {self.crop_size} px crops, "
                f"{self.mpp} µm/px, device {self.device})")

    # -- µm/px ---------------------------------------------------------------------------
    def resolve_mpp(self, mpp: float | None, stated: float | None = None, where: str = "the image") -> float:
        """The image's µm/px: ``mpp`` if given, else what the file states; never a guess.

        Raises
        ------
        MissingMppError
            When neither is known, naming both routes.
        """
        value = mpp if mpp is not None else stated
        if value is None:
            raise MissingMppError(
                f"{where}: its µm/px is unknown, and classifying at a guessed scale changes every label. Give it "
                f"(--mpp X on the command line, mpp= in Python), or use a file whose metadata states it (a TIFF "
                f"with its resolution tags or an Aperio/OME description). The model was trained at "
                f"{self._trained_at()}.")
        value = float(value)
        if not np.isfinite(value) or value <= 0:
            raise InvalidArgumentError(f"{where}: µm/px must be a positive number, got {mpp!r}")
        return value

    def _trained_at(self) -> str:
        if self.mpp_range:
            return f"{self.mpp_range[0]:g}-{self.mpp_range[1]:g} µm/px"
        return f"{self.mpp:g} µm/px" if self.mpp else "an unrecorded µm/px"

    def scale_for(self, mpp: float) -> float:
        """Native pixels per model pixel for an image at ``mpp``: 1 inside the training range
        (:data:`MPP_SLACK` either side), else ``model mpp / mpp``."""
        if self.mpp is None:
            return 1.0
        lo, hi = self.mpp_range or (self.mpp, self.mpp)
        if lo / (1 + MPP_SLACK) <= mpp <= hi * (1 + MPP_SLACK):
            return 1.0
        from nucdata._util.limits import check_scales

        return float(check_scales(np.array([self.mpp / mpp]), self.mpp)[0])

    # -- the model -------------------------------------------------------------------------
    def probabilities(self, crops: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """The model's uncalibrated probabilities of uint8 crops ``(N, 4, S, S)``: per set ``(N, K[+1])``.

        The mean of the two modules' softmaxes (``CrossTrainer.predict``, the path
        ``build-merged`` predicts with): batched on the classifier's device, bf16 autocast
        on CUDA.
        """
        crops = torch.as_tensor(crops)
        predictions = self.trainer.predict(crops)
        return {s: predictions[s].probs.numpy() for s in self.names}

    @torch.inference_mode()
    def features(self, crops: np.ndarray | torch.Tensor) -> np.ndarray:
        """The shared encoder's features of uint8 crops: float32 ``(N, F)``."""
        t = self.trainer
        crops = torch.as_tensor(crops)
        if not t.config.mask_channel and crops.shape[1] == 4 and t.in_channels == 3:
            crops = crops[:, :3]
        t.base.eval()
        out = []
        b = t.config.eval_batch_size
        for start in range(0, crops.shape[0], b):
            x = t.inputs(crops[start : start + b].to(t.device, non_blocking=True), False)
            with t.autocast():
                out.append(t.base.encoder(x).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, t.base.encoder.out_features), np.float32)

    def publish(self, probs: Mapping[str, np.ndarray], annotation: np.ndarray | None = None,
                vocabulary: str | Mapping[str, Any] | None = None, tissue: str | np.ndarray | None = None,
                domain: str | None = None) -> dict[str, SetResult]:
        """Published labels from the model's probabilities: calibrated, through the tables where labelled.

        Parameters
        ----------
        probs
            Per set, uncalibrated ``(N, K[+1])`` (:meth:`probabilities`).
        annotation, vocabulary, tissue
            The nuclei's own labels and their vocabulary (:func:`annotation_columns`).
        domain
            The calibration domain: a training dataset's name (its nuclei are published as
            ``build-merged`` published them), or ``None`` for a lab's images (:data:`LAB`).
        """
        from nucdata_models.data import NO_LABEL
        from nucdata_models.fill import fill_labels

        domain = domain or LAB
        n = next(iter(probs.values())).shape[0] if probs else 0
        columns = None
        if annotation is not None:
            if vocabulary is None:
                raise InvalidArgumentError("labels given without their vocabulary: pass vocabulary= (a dataset "
                                           "name for its native codes, or 'set:<label set>' for class ids or names)")
            columns = annotation_columns(annotation, vocabulary, self.names, tissue)
        out = {}
        for spec in self.label_sets:
            s = spec.name
            p = torch.from_numpy(np.ascontiguousarray(probs[s], np.float32))
            if columns is not None:
                labels, candidates, prov = (torch.from_numpy(c) for c in columns[s])
            else:
                labels = torch.full((n,), -1, dtype=torch.int64)
                candidates = torch.zeros(n, dtype=torch.int64)
                prov = torch.full((n,), NO_LABEL, dtype=torch.int8)
            temperature = self.calibration.temperature(domain, s)
            weights = self._transition_weights(spec, domain, annotation, vocabulary, labels, candidates, prov)
            f = fill_labels(p, labels, candidates, prov, spec.size, temperature, weights)
            from nucdata_models.fill import temperature_scale

            calibrated = temperature_scale(p, temperature) if temperature != 1.0 else p
            out[s] = SetResult(s, spec.class_names, self._colours[s], f.label.numpy(), f.probability.numpy(),
                               f.source.numpy(), candidates.numpy(), f.predicted.numpy(),
                               f.predicted_probability.numpy(), calibrated.numpy().astype(np.float32))
        return out

    def _transition_weights(self, spec, domain: str, annotation, vocabulary, labels: torch.Tensor,
                            candidates: torch.Tensor, provenance: torch.Tensor) -> torch.Tensor | None:
        """The transition weights of a training dataset's own labelled nuclei (``None`` elsewhere).

        Where ``domain`` is a training dataset and the labels are its native codes, an
        ambiguous row is resolved as ``build-merged`` resolved it: by ``p(c | x) T[s, c]``
        with the estimate the model was trained with (``transition_rows``). A lab's labels
        were written by annotators the estimate never saw: ``p(c | x)`` alone.
        """
        from nucdata_models.data import training_targets
        from nucdata_models.train import stored_weights

        table = self.trainer.stored_transitions.get(spec.name)
        if table is None or annotation is None or vocabulary != domain or domain not in table["dataset"]:
            return None
        codes = np.asarray(annotation)
        if codes.dtype.kind not in "iu":
            return None
        c = self.trainer.config
        targets, _ = training_targets(labels, candidates, provenance, spec.size, c.mapped_labels, c.outside_head,
                                      c.pseudo_outside)
        rows = torch.arange(len(labels))
        keys = [(domain, int(code), int(t)) for code, t in zip(codes.tolist(), targets.tolist(), strict=True)]
        return stored_weights(table, keys, rows)

    # -- inputs ----------------------------------------------------------------------------
    def nuclei_of(self, instances: np.ndarray | str | os.PathLike[str] | None = None,
                  centroids: np.ndarray | None = None, polygons: Sequence[np.ndarray] | None = None,
                  ids: np.ndarray | None = None, bboxes: np.ndarray | None = None,
                  shape: tuple[int, int] | None = None):
        """The :class:`.engine.Nuclei` table and its mask source from exactly one kind of input
        (``shape``: the image's ``(height, width)``, which outlines are clipped to)."""
        given = [name for name, v in (("instances", instances), ("centroids", centroids), ("polygons", polygons))
                 if v is not None]
        if len(given) != 1:
            raise InvalidArgumentError(f"give the nuclei exactly one way: instances= (a label image), centroids= "
                                       f"(x, y points) or polygons= (outlines); got {given or 'none'}")
        if instances is not None:
            if isinstance(instances, (str, os.PathLike)):
                from nucdata.formats import read_instances

                instances = read_instances(instances)
            nuclei, seq = Nuclei.from_instances(instances)
            return nuclei, InstanceMasks(seq, np.arange(1, len(nuclei) + 1))
        if centroids is not None:
            return Nuclei.from_centroids(centroids, ids, bboxes), NoMasks()
        nuclei = Nuclei.from_polygons(polygons, ids, shape=shape)
        return nuclei, PolygonMasks(nuclei)

    def crops(self, image, instances=None, centroids=None, *, polygons=None, mpp: float | None = None,
              ids: np.ndarray | None = None, bboxes: np.ndarray | None = None):
        """The crops the model sees: ``(crops (N, 4, S, S) uint8, nuclei, scale, mpp)``."""
        stated, rgb = None, image
        if isinstance(image, (str, os.PathLike)):
            rgb, stated = _read_image(image)
        where = str(image) if isinstance(image, (str, os.PathLike)) else "the image"
        mpp = self.resolve_mpp(mpp, stated, where)
        source = ArraySource(rgb)
        nuclei, masks = self.nuclei_of(instances, centroids, polygons, ids, bboxes, (source.height, source.width))
        if isinstance(masks, InstanceMasks) and masks.map.shape != (source.height, source.width):
            raise InvalidArgumentError(f"{where}: the instance map is {masks.map.shape[1]}x{masks.map.shape[0]} px, "
                                       f"the image {source.width}x{source.height}; pass the segmenter's labels of "
                                       "this image")
        scale = self.scale_for(mpp)
        crops = cut_tile(source, masks, nuclei, np.arange(len(nuclei)), self.crop_size, scale, whole=True)
        return crops, nuclei, scale, mpp

    # -- classifying ------------------------------------------------------------------------
    def predict(self, image, instances=None, centroids=None, *, polygons: Sequence[np.ndarray] | None = None,
                mpp: float | None = None, ids: np.ndarray | None = None, bboxes: np.ndarray | None = None,
                labels: np.ndarray | None = None, vocabulary: str | Mapping[str, Any] | None = None,
                tissue: str | np.ndarray | None = None, dataset: str | None = None, embed: bool = False,
                check: bool = True) -> Classification:
        """Classify the nuclei of one image under every label set.

        Parameters
        ----------
        image
            ``(H, W, 3)`` uint8 RGB (grey, RGBA and float in [0, 1] are converted), or a
            file (PNG, JPEG, TIFF, ``.npy``; its µm/px read from its metadata).
        instances, centroids, polygons
            The nuclei, exactly one of: an instance label image (0 background, one id
            per nucleus; array or file), ``(N, 2)`` x, y points (pixel centres), or
            outlines (each ``(m, 2)`` x, y at pixel centres).
        mpp
            The image's µm/px (default: from the file's metadata; required otherwise).
        ids, bboxes
            Stable ids of points or outlines (default: row + 1; an instance map's ids are
            its values), boxes of points (default: the one-pixel box at each point).
        labels, vocabulary, tissue
            The nuclei's own labels (codes or class names of ``vocabulary``), in the
            order of ``ids`` (an instance map: increasing id): published through the
            tables like ``build-merged`` (:func:`annotation_columns`).
        dataset
            A training dataset's name to publish its nuclei as ``build-merged`` did (its
            calibration); default a lab's images (:data:`LAB`).
        embed
            Also return the encoder's features (``Classification.embedding``).
        check
            Compare the crops with the training data and warn about gaps
            (:class:`nucdata.errors.DomainShiftWarning`).

        Raises
        ------
        MissingMppError
            Without ``mpp`` and without one in the file's metadata.
        """
        crops, nuclei, scale, mpp = self.crops(image, instances, centroids, polygons=polygons, mpp=mpp, ids=ids,
                                               bboxes=bboxes)
        gaps = self.check_inputs(crops, mpp, str(image) if isinstance(image, (str, os.PathLike)) else "the image") \
            if check else []
        probs = self.probabilities(crops)
        if labels is not None and len(labels) != len(nuclei):
            raise InvalidArgumentError(f"{len(labels)} labels for {len(nuclei)} nuclei; give one per nucleus "
                                       "(-1 or '' for none), in the order of the nuclei")
        sets = self.publish(probs, labels, vocabulary, tissue, dataset)
        return Classification(nuclei.ids, nuclei.centroid, nuclei.area, mpp, scale, sets,
                              self.features(crops) if embed else None, probs, dataset or LAB, gaps)

    def embed(self, image, instances=None, centroids=None, *, polygons=None, mpp: float | None = None,
              ids: np.ndarray | None = None, bboxes: np.ndarray | None = None) -> np.ndarray:
        """The shared multitask encoder's features of each nucleus: float32 ``(N, F)``, in the nuclei's order.

        A nucleus feature extractor trained under every label set at once (after Tellez
        et al.'s multitask encoder idea); the crops are cut as :meth:`predict` cuts them.
        """
        crops, _, _, _ = self.crops(image, instances, centroids, polygons=polygons, mpp=mpp, ids=ids, bboxes=bboxes)
        return self.features(crops)

    # -- far from the training data? ---------------------------------------------------------------
    def gaps(self, statistics: Mapping[str, np.ndarray], mpp: float | None) -> list[str]:
        """The ways inputs differ from the training crops: one sentence per gap.

        A statistic is a gap when the inputs' median lies outside the central 90 % of the
        training crops' (their 5th and 95th percentiles, recorded in the sidecar); µm/px,
        when it lies outside the training images' range.
        """
        from nucdata_models.merge.card import QUANTILES

        out = []
        if mpp is not None and self.mpp_range:
            lo, hi = self.mpp_range
            if not lo / (1 + MPP_SLACK) <= mpp <= hi * (1 + MPP_SLACK):
                out.append(f"µm/px {mpp:g} is outside the training images' {lo:g}-{hi:g}; the image is resampled "
                           f"to {self.mpp:g} µm/px (factor {self.mpp / mpp:.2f})")
        recorded = (self.meta.get("input_statistics") or {}).get("statistics") or {}
        q = list((self.meta.get("input_statistics") or {}).get("quantiles") or QUANTILES)
        if 0.05 not in q or 0.95 not in q:
            return out
        i05, i95 = q.index(0.05), q.index(0.95)
        described = {"mean_red": "mean red intensity", "mean_green": "mean green intensity",
                     "mean_blue": "mean blue intensity", "contrast": "contrast (grey-level spread)",
                     "od_red": "stain (red optical density of the nucleus)",
                     "od_green": "stain (green optical density of the nucleus)",
                     "od_blue": "stain (blue optical density of the nucleus)",
                     "mask_fraction": "nucleus size in the crop (wrong µm/px?)"}
        for name, values in statistics.items():
            table = recorded.get(name)
            values = np.asarray(values, np.float64)
            values = values[np.isfinite(values)]
            if table is None or values.size < CHECK_MINIMUM:
                continue
            median = float(np.median(values))
            lo, hi = table[i05], table[i95]
            if median < lo or median > hi:
                out.append(f"{described.get(name, name)}: median {median:.3g} is outside the training crops' "
                           f"central 90 % ({lo:.3g}-{hi:.3g})")
        return out

    def check_inputs(self, crops: np.ndarray, mpp: float | None, where: str = "the image") -> list[str]:
        """Warn (:class:`nucdata.errors.DomainShiftWarning`) about each gap of ``crops`` to the training data."""
        from nucdata_models.merge.card import crop_statistics

        found = self.gaps(crop_statistics(crops) if len(crops) else {}, mpp)
        for gap in found:
            warnings.warn(f"{where}: far from the training data: {gap}", DomainShiftWarning, stacklevel=3)
        return found

    # -- a lab's calibration ----------------------------------------------------------------------
    def recalibrate(self, nuclei: Classification | Sequence[Classification],
                    labels: np.ndarray | Mapping[str, np.ndarray], label_set: str | None = None,
                    domain: str | None = None):
        """Refit the calibration on a lab's own labelled nuclei: one temperature per label set.

        Parameters
        ----------
        nuclei
            What :meth:`predict` returned for the labelled images (one, or a list).
        labels
            The nuclei's true classes under ``label_set`` (class ids or names; -2 or
            ``"outside"`` for none of the set's classes where the model has an outside
            output; -1 or ``""`` unknown, skipped), in the nuclei's order; or per label
            set such an array.
        label_set
            The set of ``labels`` when it is one array.
        domain
            The calibration domain to fit (default: a lab's images, :data:`LAB`).

        Returns
        -------
        nucdata_models.calibration.Calibration
            The classifier's calibration, with these sets' temperatures replaced (it
            applies to every later :meth:`predict`; :meth:`save` keeps it).

        Notes
        -----
        One parameter per set (temperature scaling), so a few dozen labelled nuclei fit
        it; a temperature never changes a label, only the probabilities. Fewer than
        :data:`nucdata_models.calibration.MIN_NUCLEI` nuclei warn that the fit is noisy.
        """
        from nucdata_models.calibration import MIN_NUCLEI, fit_temperature, pair_key

        parts = [nuclei] if isinstance(nuclei, Classification) else list(nuclei)
        if not parts:
            raise InvalidArgumentError("recalibrate: no classified nuclei given")
        joined = Classification.concat(parts)
        if not isinstance(labels, Mapping):
            if label_set is None:
                raise InvalidArgumentError("recalibrate: one array of labels needs label_set= (the set they are in)")
            labels = {label_set: labels}
        domain = domain or LAB
        for s, given in labels.items():
            spec = next((x for x in self.label_sets if x.name == s), None)
            if spec is None:
                raise InvalidArgumentError(f"recalibrate: {s!r} is not a label set of this classifier "
                                           f"({', '.join(self.names)})")
            target = _class_ids(given, spec.class_names, len(joined))
            probs = joined.uncalibrated[s]
            has_outside = probs.shape[1] == spec.size + 1
            usable = (target >= 0) | ((target == -2) & has_outside)
            if not usable.any():
                raise InvalidArgumentError(f"recalibrate: no nucleus has a known class under {s}; give class ids "
                                           "or names (-1 for unknown)")
            if usable.sum() < MIN_NUCLEI:
                warnings.warn(f"recalibrate: {int(usable.sum())} labelled nuclei under {s} (fewer than {MIN_NUCLEI}): "
                              "the temperature is a noisy estimate", DomainShiftWarning, stacklevel=2)
            column = np.where(target == -2, spec.size, target)[usable]
            t = fit_temperature(torch.from_numpy(probs[usable]), torch.from_numpy(column))
            key = pair_key(domain, s)
            self.calibration.pairs[key] = t
            self.calibration.fitted_on[key] = int(usable.sum())
            self.calibration.uses[key] = "pair"
        self.meta["calibration"] = self.calibration.to_dict()
        return self.calibration

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this classifier (with its current calibration) as ``classifier.safetensors`` + ``.json``.

        ``path`` is a folder (the files go into it) or the ``.safetensors`` file.
        """
        from nucdata_models.checkpoint import save_safetensors
        from nucdata_models.merge.card import WEIGHTS_NAME, module_state

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / WEIGHTS_NAME
        meta = {k: v for k, v in self.meta.items() if k not in ("format", "format_version")}
        meta["weights"] = path.name
        meta["calibration"] = self.calibration.to_dict()
        return save_safetensors(path, module_state(self.trainer), meta)


def _class_ids(values, class_names: Sequence[str], n: int) -> np.ndarray:
    """Class ids from ids or names (-2 outside, -1 unknown)."""
    values = np.asarray(values, dtype=object).reshape(-1)
    if len(values) != n:
        raise InvalidArgumentError(f"recalibrate: {len(values)} labels for {n} nuclei; give one per nucleus")
    index = {c.lower(): i for i, c in enumerate(class_names)}
    out = np.full(n, -1, np.int64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v):
            continue
        if isinstance(v, str):
            key = v.strip().lower()
            if not key:
                continue
            if key == "outside":
                out[i] = -2
            elif key.lstrip("-").isdigit():
                out[i] = int(key)
            elif key in index:
                out[i] = index[key]
            else:
                raise InvalidArgumentError(f"recalibrate: {v!r} is no class of this set ({', '.join(class_names)})")
        else:
            out[i] = int(v)
    if (out >= len(class_names)).any():
        raise InvalidArgumentError(f"recalibrate: class ids must be below {len(class_names)}, got {int(out.max())}")
    return out


def _default_colours(name: str, size: int) -> tuple[str, ...]:
    try:
        from nucdata.labels import label_set

        return tuple(c.colour for c in label_set(name).classes)
    except Exception:  # noqa: BLE001 - a label set this nucdata does not package
        return tuple("#808080" for _ in range(size))


def _sidecar_weights(path: Path) -> str:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable classifier description ({exc}); pass the build-merged "
                              "output folder or its classifier.safetensors") from None
    weights = meta.get("weights") if isinstance(meta, dict) else None
    if not isinstance(weights, str) or Path(weights).name != weights or not weights.endswith(".safetensors"):
        raise CheckpointError(f"{path}: 'weights' ({weights!r}) must name a .safetensors file beside it; pass the "
                              "weights file instead")
    return weights


def _trainer(state: dict[str, Any], meta: dict[str, Any], specs, device: str):
    """A :class:`nucdata_models.CrossTrainer` holding these weights (as ``CrossTrainer.load`` builds one)."""
    from nucdata_models.config import TrainConfig
    from nucdata_models.train import CrossTrainer, checked_transition_rows

    config = TrainConfig.from_saved(meta["config"])
    config.device = device
    config.weights = None
    trainer = CrossTrainer(config)
    trainer.build(list(specs), int(meta["in_channels"]), int(meta["crop_size"]))
    trainer.base.load_state_dict(state["base"])
    trainer.heads.load_state_dict(state["heads"])
    trainer.base.eval()
    trainer.heads.eval()
    trainer.mpp = meta.get("mpp")
    trainer.meta = meta
    trainer.stored_transitions = checked_transition_rows(meta.get("transition_rows"), trainer.label_sets,
                                                         config.outside_head, "classifier.json")
    return trainer
