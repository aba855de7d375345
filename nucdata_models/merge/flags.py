"""Patch-level flags as constraints in ``build-merged`` (``--patch-labels FILE``).

A flag 0 says that no nucleus of the patch is of that class: exact negative evidence. For
the datasets and label sets a patch-label table covers, every nucleus in a patch loses
the classes its patch flags 0 (a nucleus in several patches, those any of them flags 0):

========================  ===============================================================
provenance before         with the flags
========================  ===============================================================
none                      ambiguous over the flagged classes (plus "possibly outside" in a
                          set that is not exhaustive); filled as the best allowed class
ambiguous                 its candidates that are flagged (a row's candidates outside the
                          flags are dropped; none left: a conflict, kept as it was)
annotated, mapped         unchanged: the annotation wins (conflicts counted)
outside                   unchanged
========================  ===============================================================

Nuclei whose candidates the flags narrowed train and fill as ``ambiguous`` (partial
labels, resolved within the candidates by :func:`nucdata_models.fill.fill_labels`), so no
published label is a class its patch flags 0; after filling their provenance becomes
:data:`nucdata_models.data.PATCH_FLAGS` (``patch-flags``), so the report counts them as
their own source. The tables are reconciled with the stores first
(:meth:`nucdata.PatchLabels.reconcile`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucdata.errors import PatchLabelError
from nucdata_models.data import AMBIGUOUS, NO_LABEL, PATCH_FLAGS, TrainingData

__all__ = ["apply_patch_flags", "mark_flagged", "render_patch_flags"]


def apply_patch_flags(data: TrainingData, members: Sequence, paths: Sequence[Path | str]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Narrow ``data``'s candidates by the patch-label tables in ``paths`` (in place).

    Parameters
    ----------
    data
        The build's training data, every nucleus of ``members`` in store order.
    members
        The ``nucdata.NucleusDataset`` of each dataset, in ``data``'s order.
    paths
        Patch-label CSVs (:meth:`nucdata.PatchLabels.to_csv`); each names its dataset
        (``dataset`` column) and label set.

    Returns
    -------
    tuple
        Per label set, bool ``(N,)``: the nuclei the flags narrowed; and the report
        (per table: dataset, label set, patches, nuclei in patches, nuclei narrowed,
        conflicts with annotations, classes removed).

    Raises
    ------
    PatchLabelError
        A table naming no dataset or one not in the build, or a label set the build does
        not publish, or whose images none of the dataset's are.
    """
    from nucdata.labels import label_set
    from nucdata.views import read_patch_labels

    names = [m.name for m in members]
    offsets = np.concatenate([[0], np.cumsum([m.store.n_nuclei for m in members])]).astype(np.int64)
    flagged = {s: torch.zeros(len(data), dtype=torch.bool) for s in data.names}
    report: dict[str, Any] = {"tables": []}
    for path in paths:
        table = read_patch_labels(path)
        if table.dataset is None or table.dataset not in names:
            raise PatchLabelError(f"{path}: names dataset {table.dataset!r}, not one of this build's "
                                  f"({', '.join(names)}); fill the 'dataset' column")
        if table.label_set not in data.names:
            raise PatchLabelError(f"{path}: flags under {table.label_set!r}, which this build does not publish "
                                  f"({', '.join(data.names)}); pass it in --label-sets")
        d = names.index(table.dataset)
        member = members[d]
        missing = table.unmatched(member)
        if len(missing) == len(set(table.image.tolist())):
            raise PatchLabelError(f"{path}: none of its images is an image of {member.name} "
                                  f"(e.g. {missing[0]!r}); name images as the store does")
        table = table.reconcile(member)
        vocabulary = label_set(table.label_set)
        size = len(vocabulary)
        every = (1 << size) - 1
        outside_bit = 0 if vocabulary.exhaustive else 1 << size
        allowed = torch.from_numpy(table.allowed(member))
        covered = torch.from_numpy(table.covered(member))
        rows = slice(int(offsets[d]), int(offsets[d + 1]))
        s = table.label_set
        cand, prov = data.candidates[s][rows], data.provenance[s][rows]
        none = covered & (prov == NO_LABEL) & (allowed != 0) & ((allowed & every) != every)
        narrowed_ambiguous = cand & (allowed | outside_bit)
        ambiguous = covered & (prov == AMBIGUOUS)
        keep = ambiguous & ((narrowed_ambiguous & every) != 0)
        changed = keep & (narrowed_ambiguous != cand)
        conflicts_ambiguous = int((ambiguous & ((narrowed_ambiguous & every) == 0)).sum())
        removed = int(_popcount(cand[changed]).sum() - _popcount(narrowed_ambiguous[changed]).sum()) \
            + int((size - _popcount(allowed[none] & every)).sum())
        cand = torch.where(none, allowed | outside_bit, cand)
        cand = torch.where(keep, narrowed_ambiguous, cand)
        prov = torch.where(none, torch.full_like(prov, AMBIGUOUS), prov)
        data.candidates[s][rows] = cand
        data.provenance[s][rows] = prov
        flagged[s][rows] |= none | changed
        report["tables"].append({
            "file": str(path), "dataset": member.name, "label_set": s, "source": table.source,
            "patches": len(table), "images_not_found": len(missing), "nuclei_in_patches": int(covered.sum()),
            "narrowed": int((none | changed).sum()), "unlabelled_narrowed": int(none.sum()),
            "ambiguous_narrowed": int(changed.sum()), "classes_removed": removed,
            "conflicts_with_annotations": int(table.conflicts), "conflicts_with_ambiguous_rows": conflicts_ambiguous,
        })
    return flagged, report


def _popcount(bits: torch.Tensor) -> torch.Tensor:
    count = torch.zeros_like(bits)
    for b in range(63):
        count += (bits >> b) & 1
    return count


def mark_flagged(data: TrainingData, flagged: dict[str, torch.Tensor]) -> None:
    """After filling: the flag-narrowed nuclei's provenance becomes ``PATCH_FLAGS`` (for the report)."""
    for s, mask in flagged.items():
        data.provenance[s][mask] = PATCH_FLAGS


def render_patch_flags(report: dict[str, Any]) -> str:
    """The report section on patch flags (markdown)."""
    lines = ["## Patch-level flags (--patch-labels)", "",
             "A flag 0 removes its class from the candidates of every nucleus in the patch; annotations win "
             "over flags (conflicts counted). Narrowed nuclei are filled within their flagged classes and "
             "counted as `patch-flags` above.", "",
             "| file | dataset | label set | patches | nuclei in patches | narrowed | classes removed | "
             "conflicts (annotations) | conflicts (ambiguous rows) |", "|---|---|---|---|---|---|---|---|---|"]
    for t in report.get("tables", []):
        lines.append(f"| {Path(t['file']).name} | {t['dataset']} | {t['label_set']} | {t['patches']:,} | "
                     f"{t['nuclei_in_patches']:,} | {t['narrowed']:,} | {t['classes_removed']:,} | "
                     f"{t['conflicts_with_annotations']:,} | {t['conflicts_with_ambiguous_rows']:,} |")
    return "\n".join(lines) + "\n"
