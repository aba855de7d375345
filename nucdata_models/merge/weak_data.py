"""The weak chain's bridge: a nucdata dataset and its patch labels to :class:`nucdata_models.weak.PatchData`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nucdata.errors import InvalidArgumentError
from nucdata_models.weak import PatchData

__all__ = ["typical_radius", "weak_patch_data"]


def typical_radius(ds, point_radius_um: float = 4.0, assume_mpp: float | None = None) -> tuple[float, str]:
    """The radius, in native pixels, of the disc standing for a nucleus known only by its centre.

    The median ``sqrt(area / pi)`` of the dataset's masked nuclei where it has any;
    else ``point_radius_um`` at the images' median µm/px (``assume_mpp`` where they
    have none). Returns the radius and a line saying where it came from.
    """
    has_mask = np.asarray(ds.store.column("nuclei", "has_mask"), bool)
    if has_mask.any():
        area = np.asarray(ds.store.column("nuclei", "area"), np.float64)[has_mask]
        return float(np.median(np.sqrt(area / np.pi))), "median radius of the dataset's masks"
    mpp = np.asarray(ds.store.column("images", "mpp"), np.float64)[np.asarray(ds.indices)]
    mpp = mpp[np.isfinite(mpp) & (mpp > 0)]
    if mpp.size == 0:
        if assume_mpp is None:
            raise InvalidArgumentError(f"{ds.name}: nuclei are points and the images have no µm/px, so the disc of a "
                                       "nucleus has no size; pass assume_mpp=")
        value = float(assume_mpp)
    else:
        value = float(np.median(mpp))
    return point_radius_um / value, f"{point_radius_um} µm at {value:.3g} µm/px"


def weak_patch_data(ds, size: int, mpp: float | None = None, labels=None, split: Sequence[int] | None = None,
                    point_radius_um: float = 4.0, assume_mpp: float | None = None,
                    crop_size: int | None = 32) -> PatchData:
    """The grid patches of ``ds`` with their flags and every nucleus in them, as tensors.

    Parameters
    ----------
    ds
        A ``nucdata.NucleusDataset`` under a label set (its labels fill
        :attr:`PatchData.labels`, for the supervised ceiling and the scores).
    size, mpp
        Patch side in pixels at ``mpp`` (``ds.patches(size, mpp)``).
    labels
        A ``nucdata.PatchLabels`` table; ``None`` derives the flags from the dataset's
        own nucleus labels (``nucdata.derive_patch_labels``). Imported tables are
        reconciled first: an annotation wins over its patch's flag.
    split
        Per image of ``ds`` (in ``ds.indices`` order): 0 train, 2 test; default all 0.
    point_radius_um, assume_mpp
        The disc of a nucleus without a mask (:func:`typical_radius`).
    crop_size
        Side of the nucleus crops cut from the whole images (the store's crop bank, at
        ``mpp``) for :attr:`PatchData.crops`; ``None``: none (cut from the patches).
    """
    if ds.label_set is None:
        raise InvalidArgumentError(f"{ds.name}: the weak chain needs a label set; load it with label_set=...")
    if labels is not None and labels.source != "derived":
        labels = labels.reconcile(ds)
    patches = ds.patches(size, mpp, labels=labels)
    radius_native, _ = typical_radius(ds, point_radius_um, assume_mpp)
    split_of = np.zeros(len(ds), np.int64) if split is None else np.asarray(split, np.int64)
    if split_of.shape != (len(ds),):
        raise InvalidArgumentError(f"split needs one entry per image of {ds.name} ({len(ds)}), got {split_of.shape}")
    position = {int(index): j for j, index in enumerate(np.asarray(ds.indices))}
    truth = np.asarray(ds.labels, np.int64)
    images, instance_maps, flags, patch_image, patch_split = [], [], [], [], []
    nucleus_patch, xy, instance, radius, nucleus_labels, point_rows = [], [], [], [], [], []
    for i in range(len(patches)):
        s = patches[i]
        images.append(s["image"])
        instance_maps.append(s["instance_map"])
        flags.append(s["flags"])
        j = position[int(s["image_index"])]
        patch_image.append(j)
        patch_split.append(int(split_of[j]))
        rows = s["point_index"].numpy()
        point_rows.append(rows)
        masked = {int(r): k + 1 for k, r in enumerate(s["nucleus_index"].tolist())}
        nucleus_patch.append(np.full(rows.size, i, np.int64))
        xy.append(s["point_centroids"].numpy())
        instance.append(np.asarray([masked.get(int(r), 0) for r in rows], np.int64))
        radius.append(np.full(rows.size, radius_native / float(s["scale"]), np.float32))
        nucleus_labels.append(np.where(truth[rows] >= 0, truth[rows], -1))
    crops = None
    rows_all = np.concatenate(point_rows) if point_rows else np.zeros(0, np.int64)
    if crop_size is not None:
        from nucdata.views import crops_of

        bank = crops_of([ds], crop_size, mpp=mpp, assume_mpp=assume_mpp)
        position_of = np.full(ds.store.n_nuclei, -1, np.int64)
        position_of[np.arange(ds.store.n_nuclei)[ds.nucleus_selector()]] = np.arange(len(bank))
        crops = bank.tensor()[torch.from_numpy(position_of[rows_all])][:, :3].contiguous()
    def cat(parts: list[np.ndarray], dtype: type) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(dtype)) if parts else torch.from_numpy(np.zeros(0, dtype))

    return PatchData(
        patches=torch.stack(images), flags=torch.stack(flags).to(torch.uint8),
        class_names=tuple(patches.labels.classes), nucleus_patch=cat(nucleus_patch, np.int64),
        nucleus_xy=torch.from_numpy(np.concatenate(xy).reshape(-1, 2).astype(np.float32)),
        nucleus_instance=cat(instance, np.int64), radius_px=cat(radius, np.float32),
        labels=cat(nucleus_labels, np.int64), patch_image=torch.as_tensor(patch_image, dtype=torch.int64),
        patch_split=torch.as_tensor(patch_split, dtype=torch.int64), instance_maps=torch.stack(instance_maps),
        mpp=mpp, crops=crops, image_names=[str(n) for n in np.asarray(ds.store.column("images", "name"))[np.asarray(ds.indices)]],
    )
