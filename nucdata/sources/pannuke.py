"""PanNuke: three folds of float64 npy stacks, streamed patch by patch.

Rules (recorded in every manifest):

* ``images.npy`` values are 0-255 held in float64; they are rounded and clipped to uint8.
* ``masks.npy`` channels 0-4 are per-class instance maps (native code = channel
  index); channel 5 (background) is not used. Ids repeat across channels, so every
  (channel, id) pair is its own nucleus; nuclei are numbered by channel, then id.
* A pixel claimed by two channels goes to the lower channel; a nucleus left with no
  pixel is dropped. Both are counted.
* Patches without nuclei are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CorruptArchiveError, MalformedAnnotationError, MissingFilesError
from ..store import StoreWriter, relabel_sequential
from .base import ConversionReport, Source, walk_dirs

CHANNELS = 5
CHUNK = 16  # patches read per memory-map slice: ~25 MB of images, 50 MB of masks
_FOLD = re.compile(r"(?:fold|part)[ _]?(\d)", re.IGNORECASE)


def open_npy(path: Path) -> np.ndarray:
    """Memory-map an .npy file, turning truncation into a typed error."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptArchiveError(
            f"{path}: cannot be memory-mapped ({exc}); the file is truncated or not an .npy "
            "array. Extract or download the fold again."
        ) from exc


def find_folds(folder: Path) -> dict[int, dict[str, Path]]:
    """``{fold: {"images": path, "masks": path, "types": path}}`` found under ``folder``."""
    folds: dict[int, dict[str, Path]] = {}
    for d in walk_dirs(folder):
        for name in ("images", "masks", "types"):
            path = d / f"{name}.npy"
            if path.is_file():
                match = _FOLD.search(str(path.relative_to(folder)))
                if match:
                    folds.setdefault(int(match.group(1)), {}).setdefault(name, path)
    return folds


def merge_channels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Instance map, native codes, per-channel ids and counts for one patch.

    ``masks`` is ``(H, W, >=5)`` with integral ids. Returns the sequential int32 map,
    the channel and the in-channel id of each nucleus (numbered by channel, then id),
    the number of (channel, id) pairs present before overlaps were resolved, and the
    number of pixels claimed by more than one channel. Everything is counting with
    ``bincount`` (no sorting): this runs once per patch on ~190,000 patches.
    """
    channels = masks[..., :CHANNELS].astype(np.int32)  # int32 halves memory traffic
    top = int(channels.max(initial=0))
    if channels.min(initial=0) < 0:
        raise ValueError("negative instance id")
    bits = max(16, top.bit_length())
    before = sum(int(np.count_nonzero(np.bincount(channels[..., c].ravel())[1:])) for c in range(CHANNELS))
    present = channels > 0
    claimed = present.sum(axis=-1)
    overlap = int((claimed > 1).sum())
    first = np.argmax(present, axis=-1)  # lowest channel wins
    ids = np.take_along_axis(channels, first[..., None], axis=-1)[..., 0]
    key = np.where(claimed > 0, (first.astype(np.int64) << bits) + ids, 0)
    inst, original = relabel_sequential(key)
    return inst, (original >> bits).astype(np.int32), original & ((1 << bits) - 1), before, overlap


class PanNuke(Source):
    """PanNuke folds from ``images.npy``, ``masks.npy`` and ``types.npy``."""

    name = "pannuke"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        report = ConversionReport(rules={
            "pixels": "float64 0-255 values rounded and clipped to uint8",
            "classes": "native code = mask channel 0 Neoplastic, 1 Inflammatory, 2 Connective, 3 Dead, 4 Epithelial; channel 5 (background) unused",
            "instances": "every (channel, id) pair is one nucleus; ids repeat across channels",
            "overlap": "a pixel in two channels goes to the lower channel; nuclei left without pixels are dropped and counted",
            "empty_patches": "patches without nuclei are kept",
        })
        folds = find_folds(folder)
        if not folds:
            raise MissingFilesError(
                f"{folder}: no PanNuke fold found (images.npy, masks.npy, types.npy under a "
                "'Fold 1'/'fold1' folder). Extract fold_1.zip ... fold_3.zip there."
            )
        for fold in sorted(folds):
            files = folds[fold]
            missing = [n for n in ("images", "masks", "types") if n not in files]
            if missing:
                raise MissingFilesError(
                    f"{folder}: fold {fold} lacks {', '.join(m + '.npy' for m in missing)}; "
                    "re-extract that fold's archive."
                )
            self._convert_fold(fold, files, writer, report, progress)
        return report

    def _convert_fold(self, fold: int, files: dict[str, Path], writer: StoreWriter,
                      report: ConversionReport, progress: Callable[[str], None] | None) -> None:
        images, masks, types = (open_npy(files[n]) for n in ("images", "masks", "types"))
        n = images.shape[0]
        if masks.shape[0] != n or types.shape[0] != n:
            raise MalformedAnnotationError(
                f"fold {fold}: arrays disagree in length: {files['images']} has {n} patches, "
                f"{files['masks']} {masks.shape[0]}, {files['types']} {types.shape[0]}. "
                "The fold is incomplete or mixed from two releases; extract it again."
            )
        if images.ndim != 4 or images.shape[-1] != 3 or masks.ndim != 4 or masks.shape[-1] < CHANNELS:
            raise MalformedAnnotationError(
                f"fold {fold}: unexpected shapes images {images.shape} ({files['images']}), "
                f"masks {masks.shape} ({files['masks']}); expected (N,H,W,3) and (N,H,W,6)."
            )
        split = f"fold{fold}"
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            image_chunk = np.array(images[start:stop])  # one small slice in memory at a time
            mask_chunk = np.asarray(masks[start:stop])
            if image_chunk.min(initial=0) < 0 or image_chunk.max(initial=0) > 255.5:
                report.dropped["pixel_values_clipped_patches"] += 1
            np.rint(image_chunk, out=image_chunk)
            rgb_chunk = np.clip(image_chunk, 0, 255, out=image_chunk).astype(np.uint8)
            for j in range(stop - start):
                i = start + j
                try:
                    inst, codes, ids, before, overlap = merge_channels(mask_chunk[j])
                except ValueError:
                    raise MalformedAnnotationError(
                        f"{files['masks']}: patch {i} holds a negative instance id; the fold is damaged."
                    ) from None
                report.regions[split] += before
                report.dropped["cross_channel_overlap_pixels"] += overlap
                report.dropped["fully_overlapped"] += before - codes.size
                if codes.size == 0:
                    report.dropped["empty_patches_kept"] += 1
                writer.add_image(
                    f"fold{fold}_{i:04d}", split, rgb_chunk[j], inst, codes, ids,
                    mpp=self.card.mpp, tissue=str(types[i]),
                )
            if progress:
                progress(f"fold {fold}: {stop}/{n} patches")
