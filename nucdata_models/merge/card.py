"""The shippable classifier ``build-merged`` writes: weights as safetensors, a JSON sidecar, a model card.

``build-merged`` publishes, beside ``model.pt`` (the torch form that ``--checkpoint``
reads), ``classifier.safetensors`` and ``classifier.json``
(:func:`nucdata_models.checkpoint.save_safetensors`): everything
:class:`nucdata_models.Classifier` needs to classify a lab's own nuclei, and nothing
that runs code. The sidecar's keys (:data:`SIDECAR_KEYS`):

==================  ====================================================================
key                 value
==================  ====================================================================
``format``          ``"nucdata-classifier"``, ``format_version`` 1
``weights``         the weights file's name (``classifier.safetensors``)
``encoder``         the encoder's name (:func:`nucdata_models.build_encoder`)
``in_channels``     3 (RGB) or 4 (RGB and the nucleus mask)
``crop_size``       the crop side in pixels, as ``build-merged`` cut them
``mpp``             the model's µm/px: the one µm/px of its training images, or their
                    nucleus-weighted median when they differ
``mpp_range``       ``[lowest, highest]`` µm/px of the training images (a lab's image in
                    this range is cut at its own resolution, as each training dataset was;
                    outside it, resampled to ``mpp``)
``mpp_by_dataset``  per training dataset, its ``[lowest, highest]`` µm/px
``label_sets``      per set, in head order: ``name``, ``version``, ``class_names``,
                    ``colors`` (``#rrggbb``), ``exhaustive``
``table_version``   the mapping tables' version (:func:`nucdata.labels.table_version`)
``calibration``     :meth:`nucdata_models.calibration.Calibration.to_dict`
``input_statistics``  the training crops' stain and intensity statistics
                    (:func:`crop_statistics`, quantiles) and µm/px, to name an input's gap
``config``          the training configuration (:class:`nucdata_models.TrainConfig`)
``training``        datasets, nuclei per dataset, recipe, seed, demo or not
``held_out``        per set, held-out metrics with 95 % intervals (:func:`held_out_metrics`)
``transition_rows`` the transition estimate ambiguous rows are resolved by, per set
                    (:meth:`nucdata_models.CrossTrainer.transition_rows`; ``{}`` without one):
                    a training dataset's labelled nuclei are published as ``build-merged``
                    published them
``model_card``      training data and their licences, terms inherited, metrics, intended
                    use, limitations (:func:`render_model_card` prints it)
``nucdata_version``, ``torch``  the versions that wrote it
==================  ====================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CARD_STATISTICS", "SIDECAR_KEYS", "WEIGHTS_NAME", "SIDECAR_NAME", "classifier_meta", "crop_statistics",
           "held_out_metrics", "input_statistics", "module_state", "render_model_card", "write_classifier"]

#: The weights file ``build-merged`` writes into its output.
WEIGHTS_NAME = "classifier.safetensors"
#: Its JSON sidecar.
SIDECAR_NAME = "classifier.json"
#: The keys of the sidecar (the module docstring says what each holds).
SIDECAR_KEYS = ("format", "format_version", "weights", "encoder", "in_channels", "crop_size", "mpp", "mpp_range",
                "mpp_by_dataset", "label_sets", "table_version", "calibration", "input_statistics", "config",
                "training", "held_out", "transition_rows", "model_card", "nucdata_version", "torch")
#: Per-crop statistics recorded at build time and compared at classification time.
CARD_STATISTICS = ("mean_red", "mean_green", "mean_blue", "contrast", "od_red", "od_green", "od_blue",
                   "mask_fraction")
#: Quantiles of each statistic recorded in the sidecar.
QUANTILES = (0.005, 0.05, 0.25, 0.5, 0.75, 0.95, 0.995)
#: Training crops sampled for the statistics.
STATISTICS_SAMPLE = 20_000


def crop_statistics(crops: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Per-crop statistics of uint8 ``(N, C, S, S)`` crops: float64 ``(N,)`` each.

    ``mean_red/green/blue``: mean intensity (0-255) of the crop; ``contrast``: standard
    deviation of its grey level; ``od_red/green/blue``: mean optical density
    ``-log10((I + 1) / 256)`` over the nucleus mask (the stain: haematoxylin raises red's
    OD most), over the whole crop without a mask channel; ``mask_fraction``: the mask's
    share of the crop (nucleus size at the crop's scale; NaN without a mask channel).
    """
    x = torch.as_tensor(crops)
    if x.ndim != 4 or x.shape[1] not in (3, 4):
        from nucdata.errors import InvalidArgumentError

        raise InvalidArgumentError(f"crop_statistics: crops must be (N, 3 or 4, S, S), got {tuple(x.shape)}")
    rgb = x[:, :3].double()
    out = {f"mean_{c}": rgb[:, i].mean((1, 2)).numpy() for i, c in enumerate(("red", "green", "blue"))}
    out["contrast"] = rgb.mean(1).flatten(1).std(1).numpy()
    od = -torch.log10((rgb + 1.0) / 256.0)
    if x.shape[1] == 4:
        mask = (x[:, 3] > 0).double()
        area = mask.sum((1, 2))
        weight = torch.where(area[:, None, None] > 0, mask, torch.ones_like(mask))
        denominator = weight.sum((1, 2))
        for i, c in enumerate(("red", "green", "blue")):
            out[f"od_{c}"] = ((od[:, i] * weight).sum((1, 2)) / denominator).numpy()
        out["mask_fraction"] = (area / mask[0].numel()).numpy() if len(mask) else np.zeros(0)
    else:
        for i, c in enumerate(("red", "green", "blue")):
            out[f"od_{c}"] = od[:, i].mean((1, 2)).numpy()
        out["mask_fraction"] = np.full(x.shape[0], np.nan)
    return out


def input_statistics(crops: torch.Tensor, rows: np.ndarray | None = None, sample: int = STATISTICS_SAMPLE,
                     seed: int = 0) -> dict[str, Any]:
    """Quantiles (:data:`QUANTILES`) of each :func:`crop_statistics` over training crops.

    Parameters
    ----------
    crops
        uint8 ``(N, C, S, S)``: the build's crop bank.
    rows
        The crops to describe (the training split); default all.
    sample
        At most this many, drawn with ``seed``.
    """
    rows = np.arange(crops.shape[0]) if rows is None else np.asarray(rows, np.int64)
    if rows.size > sample:
        rows = np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    stats = crop_statistics(crops[torch.from_numpy(rows)]) if rows.size else {k: np.zeros(0) for k in CARD_STATISTICS}
    out: dict[str, Any] = {"crops": int(rows.size), "quantiles": list(QUANTILES), "statistics": {}}
    for name in CARD_STATISTICS:
        values = stats[name][np.isfinite(stats[name])]
        out["statistics"][name] = ([round(float(q), 5) for q in np.quantile(values, QUANTILES)]
                                   if values.size else None)
    return out


def _mpp_summary(members: Sequence) -> tuple[float | None, list[float] | None, dict[str, list[float]]]:
    """The model's µm/px, the training images' range and each dataset's range."""
    values, weights, by_dataset = [], [], {}
    for member in members:
        store = member.store
        mpp = np.asarray(store.column("images", "mpp"), np.float64)
        counts = np.asarray(store.column("images", "nucleus_count"), np.int64)
        known = np.isfinite(mpp) & (mpp > 0)
        if known.any():
            by_dataset[member.name] = [round(float(mpp[known].min()), 6), round(float(mpp[known].max()), 6)]
            values.append(mpp[known])
            weights.append(counts[known])
    if not values:
        return None, None, by_dataset
    v, w = np.concatenate(values), np.concatenate(weights).astype(np.float64)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    if w.sum() <= 0:
        w = np.ones_like(v)
    median = float(v[np.searchsorted(np.cumsum(w), w.sum() / 2)])
    return round(median, 6), [round(float(v.min()), 6), round(float(v.max()), 6)], by_dataset


def _bootstrap(truth: np.ndarray, guess: np.ndarray, cluster: np.ndarray, n_classes: int, size: int,
               resamples: int, seed: int) -> dict[str, Any]:
    """Accuracy and macro F1 with 95 % percentile intervals, resampling whole clusters (images)."""
    from nucdata_models.metrics import accuracy_from_confusion, macro_f1_from_confusion

    _, cluster = np.unique(cluster, return_inverse=True)
    k = int(cluster.max()) + 1
    flat = (cluster * n_classes + truth) * n_classes + guess
    per_cluster = np.bincount(flat, minlength=k * n_classes * n_classes).reshape(k, n_classes, n_classes)
    whole = per_cluster.sum(0)
    draws = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=resamples).astype(np.float64)
    stack = np.einsum("bk,kij->bij", draws, per_cluster)
    out: dict[str, Any] = {"count": int(truth.size), "images": k}
    for name, value, reps in (("accuracy", accuracy_from_confusion(whole), accuracy_from_confusion(stack)),
                              ("macro_f1", macro_f1_from_confusion(whole, size),
                               macro_f1_from_confusion(stack, size))):
        reps = reps[np.isfinite(reps)]
        interval = [round(float(q), 4) for q in np.quantile(reps, (0.025, 0.975))] if reps.size else None
        out[name] = round(float(value), 4) if np.isfinite(value) else None
        out[f"{name}_95"] = interval
    return out


def held_out_metrics(data, predicted: dict[str, torch.Tensor], image_index: np.ndarray, split: int = 2,
                     resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per label set, the model's own prediction scored on held-out nuclei whose class is known.

    Two groups per set: ``annotated`` (the nucleus's own dataset annotated it in this
    vocabulary) and ``mapped`` (an exact mapping row gives its class: the cross-domain
    case a lab's images are). The prediction is unrestricted (no candidate set), outside
    (-2) scores as a miss. Intervals: 95 % percentile bootstrap over held-out images
    (each resample draws whole images), ``resamples`` draws.

    Parameters
    ----------
    data
        The build's :class:`nucdata_models.TrainingData`.
    predicted
        Per set, int64 ``(N,)``: the model's label (-2 outside).
    image_index
        Per nucleus, its image's row in its dataset's store (``CropDataset.image_index``).
    """
    from nucdata_models.data import ANNOTATED, MAPPED
    from nucdata_models.fill import scored_class

    held = (data.split.cpu() == split).numpy()
    cluster = data.dataset_index.cpu().numpy().astype(np.int64) * (int(np.max(image_index, initial=0)) + 1) \
        + np.asarray(image_index, np.int64)
    out: dict[str, Any] = {}
    for spec in data.label_sets:
        s = spec.name
        labels = data.labels[s].cpu()
        prov = data.provenance[s].cpu()
        guess = scored_class(predicted[s].cpu(), spec.size).numpy()
        per_set = {}
        for group, code in (("annotated", ANNOTATED), ("mapped", MAPPED)):
            sel = held & (prov == code).numpy() & (labels >= 0).numpy()
            if sel.any():
                per_set[group] = _bootstrap(labels.numpy()[sel], guess[sel], cluster[sel], spec.size + 1, spec.size,
                                            resamples, seed)
        out[s] = per_set
    return out


def _training_data(members: Sequence, nuclei: dict[str, int], demo: bool) -> list[dict[str, Any]]:
    from nucdata.catalog import get_card

    rows = []
    for member in members:
        manifest = member.store.manifest
        try:
            card = get_card(member.name, packaged=True)
            title, note = card.title, str(card.extra.get("licence_note", ""))
        except Exception:  # noqa: BLE001 - a lab's own dataset has no packaged card; its store says enough
            title, note = member.name, ""
        rows.append({"dataset": member.name, "title": title, "licence": str(manifest.get("licence", "NOASSERTION")),
                     "licence_note": note, "homepage": str(manifest.get("homepage", "")),
                     "nuclei": int(nuclei.get(member.name, member.store.n_nuclei)),
                     "images": int(member.store.n_images), "generated": bool(demo)})
    return rows


def _terms(rows: list[dict[str, Any]], demo: bool) -> list[str]:
    """What the training data's licences mean for the model."""
    licences = sorted({r["licence"] for r in rows})
    lines = []
    nc = [r["dataset"] for r in rows if "NC" in r["licence"].upper()]
    sa = [r["dataset"] for r in rows if "SA" in r["licence"].upper().split("-")]
    unknown = [r["dataset"] for r in rows if r["licence"].upper() in ("NOASSERTION", "NONE", "")]
    if demo:
        lines.append("Trained on the generated demo world (files written in each dataset's native format, no real "
                     "image): the licences below are those of the datasets the world imitates, listed for a real "
                     "build's card; this model is a demonstration, not a classifier of real tissue.")
    if nc:
        lines.append(f"Trained on data under a non-commercial licence ({', '.join(nc)}): the model inherits its "
                     "terms. CC BY-NC-SA data: no commercial use, attribution of every dataset, and a model or "
                     "output shared under the same licence (share-alike).")
    elif sa:
        lines.append(f"Trained on share-alike data ({', '.join(sa)}): share the model under the same licence.")
    if unknown:
        lines.append(f"No licence is stated for {', '.join(unknown)} (NOASSERTION): research use as their "
                     "publishers ask (see each dataset's licence note); do not redistribute without their leave.")
    lines.append(f"Licences of the training data: {', '.join(licences)}. Cite every dataset (`nucdata cite "
                 f"{' '.join(r['dataset'] for r in rows)}`).")
    return lines


INTENDED_USE = (
    "Classifying the nuclei another tool segmented (StarDist, Cellpose, HoVer-Net, CellViT, InstanSeg, QuPath) in "
    "H&E-stained histology, under every label set at once, with calibrated probabilities, for research. nucdata "
    "does not segment. Not a medical device; not for diagnosis.")


def _limitations(meta: dict[str, Any]) -> list[str]:
    lo_hi = meta.get("mpp_range")
    lines = [
        "It classifies the nuclei it is given: missed or merged nuclei of the segmenter stay missed or merged.",
        f"Crops are {meta['crop_size']} px at the image's own µm/px within "
        + (f"{lo_hi[0]:g}-{lo_hi[1]:g} µm/px (the training images' range); others are resampled to "
           f"{meta['mpp']:g} µm/px" if lo_hi else "the training images' µm/px (unknown for this build)")
        + "; a wrong µm/px changes every label. Without an image's µm/px, classify refuses to guess.",
        "Probabilities are calibrated per (dataset, label set) on the build's validation split, from nuclei whose "
        "class is exactly known; a lab's images get the pooled temperature, never sharpened. Refit it on a few "
        "labelled nuclei of your own (Classifier.recalibrate) before trusting them on a new stain or scanner.",
        "Inputs far from the training crops (stain, intensity, contrast, nucleus size, µm/px) raise a "
        "DomainShiftWarning naming the gap; the labels of such inputs are less reliable than the metrics below.",
        "Held-out metrics are on held-out images of the training datasets (grouped by patient, slide or "
        "hospital), not on other laboratories; labels mapped through the tables are the tables' claim.",
    ]
    return lines


def classifier_meta(trainer, members: Sequence, data, image_index: np.ndarray, predicted: dict[str, torch.Tensor],
                    calibration: dict[str, Any], report: dict[str, Any], demo: bool) -> dict[str, Any]:
    """The sidecar of the build's classifier (:data:`SIDECAR_KEYS`)."""
    from nucdata._util.version import VERSION
    from nucdata.labels import label_set, table_version
    from nucdata_models.merge.splits import TRAIN

    mpp, mpp_range, by_dataset = _mpp_summary(members)
    sets = []
    for spec in data.label_sets:
        ls = label_set(spec.name)
        sets.append({**spec.to_dict(), "colors": [c.colour for c in ls.classes], "exhaustive": bool(ls.exhaustive)})
    train_rows = np.flatnonzero((data.split.cpu() == TRAIN).numpy())
    held = held_out_metrics(data, predicted, image_index)
    nuclei = {str(k): int(v) for k, v in report.get("nuclei_per_dataset", {}).items()}
    training_rows = _training_data(members, nuclei, demo)
    meta: dict[str, Any] = {
        "weights": WEIGHTS_NAME, "encoder": trainer.config.encoder, "in_channels": int(trainer.in_channels),
        "crop_size": int(trainer.crop_size), "mpp": mpp, "mpp_range": mpp_range, "mpp_by_dataset": by_dataset,
        "label_sets": sets, "table_version": table_version(), "calibration": calibration,
        "input_statistics": input_statistics(data.crops, train_rows), "config": trainer.config.to_dict(),
        "training": {"datasets": [m.name for m in members], "nuclei_per_dataset": nuclei,
                     "recipe": report.get("recipe"), "seed": trainer.config.seed, "demo": bool(demo),
                     "splits": report.get("splits", {}).get("nuclei", {})},
        "held_out": held, "transition_rows": trainer.transition_rows(), "nucdata_version": VERSION,
        "torch": torch.__version__,
    }
    ece = {s: {g: {"ece": v.get("ece"), "ece_uncalibrated": v.get("ece_uncalibrated"), "count": v.get("count")}
               for g, v in per_set.get("groups", {}).items()}
           for s, per_set in (report.get("calibration", {}).get("scores") or {}).items()}
    demo_scores = {}
    if "demo_truth" in report:
        held_demo = report["demo_truth"].get("held_out", {}).get("merged", {})
        demo_scores = {s: {"macro_f1": m.get("macro_f1"), "count": m.get("count")} for s, m in held_demo.items()}
    meta["model_card"] = {
        "name": "nucdata merged nucleus classifier" + (" (demo world)" if demo else ""),
        "description": ("One shared encoder with a head per label set and correlation heads (Zhang et al. 2023, "
                        "correlation-based cross-training), trained by nucdata build-merged; it labels a nucleus "
                        f"under {', '.join(s['name'] for s in sets)} at once, with 'outside' where a set has no "
                        "class for it."),
        "training_data": training_rows, "terms": _terms(training_rows, demo),
        "metrics": {"held_out": held, "calibration_ece": ece, "demo_filled_labels": demo_scores},
        "intended_use": INTENDED_USE, "limitations": _limitations(meta),
    }
    return meta


def write_classifier(folder: Path, trainer, members: Sequence, data, image_index: np.ndarray,
                     predicted: dict[str, torch.Tensor], calibration: dict[str, Any], report: dict[str, Any],
                     demo: bool) -> Path:
    """Write ``classifier.safetensors`` and ``classifier.json`` into a build's staging ``folder``.

    Returns the weights' path. The held-out metrics are also added to ``report`` under
    ``held_out`` (report.json carries them).
    """
    from nucdata_models.checkpoint import save_safetensors

    meta = classifier_meta(trainer, members, data, image_index, predicted, calibration, report, demo)
    report["held_out"] = meta["held_out"]
    return save_safetensors(Path(folder) / WEIGHTS_NAME, module_state(trainer), meta)


def module_state(trainer) -> dict[str, dict[str, torch.Tensor]]:
    """The inference weights of a trainer: its base and correlation modules' state dicts, on the CPU."""
    return {name: {k: v.detach().cpu() for k, v in getattr(trainer, name).state_dict().items()}
            for name in ("base", "heads")}


def _interval(entry: dict[str, Any], name: str) -> str:
    value, ci = entry.get(name), entry.get(f"{name}_95")
    if value is None:
        return "–"
    return f"{value:.3f} ({ci[0]:.3f}–{ci[1]:.3f})" if ci else f"{value:.3f}"


def render_model_card(meta: dict[str, Any]) -> str:
    """The model card of a classifier's sidecar as Markdown (what ``nucdata model-card`` prints)."""
    card = meta.get("model_card") or {}
    sets = meta.get("label_sets", [])
    lines = [f"# {card.get('name', 'nucdata classifier')}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    mpp, lo_hi = meta.get("mpp"), meta.get("mpp_range")
    lines += ["## Model", "",
              f"- encoder `{meta.get('encoder')}`, {meta.get('in_channels')} input channels "
              f"({'RGB and the nucleus mask' if meta.get('in_channels') == 4 else 'RGB'}), "
              f"{meta.get('crop_size')} px crops",
              f"- µm/px: {mpp if mpp is not None else 'unknown'}"
              + (f" (training images {lo_hi[0]:g}–{lo_hi[1]:g})" if lo_hi else ""),
              f"- label tables version {meta.get('table_version')}; calibration "
              f"{(meta.get('calibration') or {}).get('method', 'none')}",
              f"- written by nucdata {meta.get('nucdata_version')}, torch {meta.get('torch')}", "",
              "| label set | version | classes |", "|---|---|---|"]
    for s in sets:
        lines.append(f"| {s['name']} | {s['version']} | {', '.join(s['class_names'])} |")
    lines += ["", "## Training data", "", "| dataset | licence | nuclei | images |", "|---|---|---|---|"]
    for row in card.get("training_data", []):
        lines.append(f"| {row['title']} (`{row['dataset']}`) | {row['licence']} | {row['nuclei']:,} | "
                     f"{row['images']:,} |")
    notes = [f"- `{r['dataset']}`: {r['licence_note']}" for r in card.get("training_data", []) if r.get("licence_note")]
    if notes:
        lines += ["", *notes]
    lines += ["", "## Terms", ""] + [f"- {t}" for t in card.get("terms", [])]
    metrics = card.get("metrics", {})
    lines += ["", "## Held-out metrics", "",
              "The model's own label (no candidate restriction) on held-out images, with 95 % intervals from a "
              "bootstrap over images.", "",
              "| label set | nuclei | scored against | accuracy | macro F1 | ECE (calibrated) |", "|---|---|---|---|---|---|"]
    for s in sets:
        per_set = metrics.get("held_out", {}).get(s["name"], {})
        ece = metrics.get("calibration_ece", {}).get(s["name"], {})
        if not per_set:
            lines.append(f"| {s['name']} | 0 | – | – | – | – |")
        for group, entry in per_set.items():
            e = (ece.get(group) or {}).get("ece")
            against = "own annotations" if group == "annotated" else "exact mapping rows"
            lines.append(f"| {s['name']} | {entry['count']:,} ({entry['images']} images) | {against} | "
                         f"{_interval(entry, 'accuracy')} | {_interval(entry, 'macro_f1')} | "
                         f"{'–' if e is None else f'{e:.3f}'} |")
    demo = metrics.get("demo_filled_labels") or {}
    if demo:
        lines += ["", "Demo world, filled labels against the known truth (held out; one world, one seed): "
                  + ", ".join(f"{s} macro F1 {m['macro_f1']:.3f} (n={m['count']})" for s, m in demo.items()
                              if m.get("macro_f1") is not None)]
    lines += ["", "## Intended use", "", card.get("intended_use", INTENDED_USE), "", "## Limitations", ""]
    lines += [f"- {t}" for t in card.get("limitations", [])]
    return "\n".join(lines) + "\n"
