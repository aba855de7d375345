"""``nucdata verify``: re-check a dataset's downloaded files and its store, listing every problem."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util.home import manual_dir, raw_dir
from nucdata._util.npy import data_sha256, npy_header
from nucdata.acquire._fetch import verify as verify_file
from nucdata.acquire._prepare import store_path
from nucdata.catalog import get_card, list_datasets
from nucdata.errors import NucdataError, StoreError
from nucdata.store import MANIFEST, image_pixels, read_manifest, rebuild_hint

__all__ = ["Check", "verify", "verify_store"]


@dataclass(frozen=True)
class Check:
    """One line of :func:`verify`'s result: a dataset, whether the check passed, and what it found."""

    dataset: str
    ok: bool
    message: str
    #: ``False`` for lines that only say what is absent (not downloaded, not prepared)
    checked: bool = True


def verify(names: str | list[str] | tuple[str, ...] | None = None, deep: bool = False,
           root: str | os.PathLike[str] | None = None) -> list[Check]:
    """Re-check downloaded archives (size, format, SHA-256) and prepared stores.

    Parameters
    ----------
    names
        A dataset name or several; ``None`` checks every dataset of the catalog.
    deep
        Also hash every store file against its manifest and read every instance map.
    root
        The data home (default: ``NUCDATA_HOME`` or the platform cache folder).

    Returns
    -------
    list of Check
        One line per file and per store; a damaged input is a failed line, never an
        exception.
    """
    if isinstance(names, str):
        names = [names]
    out: list[Check] = []
    for name in names or list_datasets():
        card = get_card(name, root)
        for spec in card.files:
            found = [q for q in (manual_dir(root) / spec.name, raw_dir(root) / spec.name) if q.is_file()]
            if not found:
                out.append(Check(name, True, f"{spec.name} not downloaded", checked=False))
                continue
            try:
                verify_file(found[0], spec, fix="Download it again.")
                out.append(Check(name, True, f"{found[0]} OK"))
            except NucdataError as exc:
                out.append(Check(name, False, str(exc)))
            except OSError as exc:
                out.append(Check(name, False, f"{found[0]}: cannot be read ({exc.strerror or exc})"))
        folder = store_path(name, root)
        if not folder.exists():
            out.append(Check(name, True, "not prepared", checked=False))
            continue
        if not (folder / MANIFEST).is_file():
            out.append(Check(name, False, f"{folder} has no {MANIFEST}: not a finished store. "
                                          f"Rebuild it with `nucdata prepare {name} --force`."))
            continue
        problems = verify_store(folder, deep=deep)
        if problems:
            out += [Check(name, False, problem) for problem in problems]
            continue
        n_images = int(np.load(folder / "images" / "name.npy", mmap_mode="r").shape[0])
        n_nuclei = int(np.load(folder / "nuclei" / "image.npy", mmap_mode="r").shape[0])
        out.append(Check(name, True, f"store complete ({n_images} images, {n_nuclei} nuclei; "
                                     f"{'files, values and hashes' if deep else 'files and values'} checked)"))
    return out


def verify_store(path: str | os.PathLike[str], deep: bool = False) -> list[str]:
    """Check a store on disk; return every problem found (empty when it is sound).

    Checked: the manifest's structure; every listed column and both pixel files
    exist, have complete data and the shape and dtype the manifest recorded; column
    lengths agree with the image and nucleus counts (and the manifest's counts);
    ``nucleus_start``/``nucleus_count`` tile the nucleus table and agree with
    ``nuclei/image``; centroids are finite and inside their image, boxes inside it;
    pixel files hold exactly the pixels the image sizes call for. With ``deep``, each
    file's SHA-256 is compared with the manifest's and each instance map's largest
    label with its number of masked nuclei.

    Never raises for a damaged store: every failure is one line of the result.

    Parameters
    ----------
    path
        The store folder (``stores/<dataset>/<version>``).
    deep
        Also hash every file and read every instance map (reads the whole store).
    """
    folder = Path(path)
    try:
        manifest = read_manifest(folder)
    except StoreError as exc:
        return [str(exc)]
    dataset = manifest["dataset"]
    hint = rebuild_hint(dataset)
    problems: list[str] = []
    records = manifest.get("files")
    if not isinstance(records, dict):
        problems.append(f"{folder / MANIFEST}: written by an older nucdata, without file shapes and hashes; "
                        f"only a structural check is possible. {hint}")
        records = {}
    arrays: dict[str, np.ndarray] = {}
    names = [f"{t}/{k}.npy" for t in ("images", "nuclei") for k in manifest["columns"][t]]
    for rel in [*names, "pixels/rgb.npy", "pixels/instances.npy"]:
        file = folder / rel
        if not file.is_file():
            problems.append(f"{file}: missing. {hint}")
            continue
        try:
            shape, dtype, header = npy_header(file)
            expected_bytes = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = file.stat().st_size
            if size != expected_bytes:
                problems.append(f"{file}: {size:,} bytes, but its header {shape} {dtype} needs "
                                f"{expected_bytes:,} (truncated or damaged). {hint}")
                continue
            record = records.get(rel)
            if records and not isinstance(record, dict):
                problems.append(f"{file}: not listed in the manifest's files. {hint}")
            elif record:
                if [int(x) for x in shape] != list(record.get("shape", [])):
                    problems.append(f"{file}: shape {list(shape)}, the manifest recorded {record.get('shape')}. {hint}")
                if np.lib.format.dtype_to_descr(dtype) != record.get("dtype"):
                    problems.append(f"{file}: dtype {np.lib.format.dtype_to_descr(dtype)}, the manifest recorded "
                                    f"{record.get('dtype')}. {hint}")
                if deep and data_sha256(file) != record.get("sha256"):
                    problems.append(f"{file}: SHA-256 of its data differs from the manifest's (the file was "
                                    f"modified after it was written). {hint}")
            arrays[rel] = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, TypeError, SyntaxError) as exc:
            problems.append(f"{file}: not a readable .npy file ({type(exc).__name__}: {exc}). {hint}")
    for rel in records:
        if rel not in arrays and not (folder / rel).is_file():
            problems.append(f"{folder / rel}: listed in the manifest but missing. {hint}")
    try:
        problems += _check_values(folder, manifest, arrays, deep, hint)
    except Exception as exc:  # noqa: BLE001 - a damaged store must be reported, never raise
        problems.append(f"{folder}: the value checks stopped at an unexpected state "
                        f"({type(exc).__name__}: {exc}). {hint}")
    return problems


def _check_values(folder: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], deep: bool,
                  hint: str) -> list[str]:
    """Cross-checks of lengths and values (see :func:`verify_store`)."""
    problems: list[str] = []

    def col(rel: str) -> np.ndarray | None:
        return arrays.get(rel)

    names = col("images/name.npy")
    image_ = col("nuclei/image.npy")
    if names is None or image_ is None:
        return problems
    n_images, n_nuclei = int(names.shape[0]), int(image_.shape[0])
    for rel, array in arrays.items():
        table = rel.split("/", 1)[0]
        want = {"images": n_images, "nuclei": n_nuclei}.get(table)
        if want is not None and (array.ndim == 0 or array.shape[0] != want):
            problems.append(f"{folder / rel}: {array.shape[0] if array.ndim else 0} rows, but the store has "
                            f"{want} {'images' if table == 'images' else 'nuclei'}. {hint}")
    counts = manifest.get("counts", {})
    for key, n in (("images", n_images), ("nuclei", n_nuclei)):
        total = counts.get(key, {}).get("total") if isinstance(counts.get(key), dict) else None
        if total is not None and total != n:
            problems.append(f"{folder / MANIFEST}: counts.{key}.total is {total}, the columns hold {n}. {hint}")
    if problems:
        return problems  # lengths disagree: the value checks below would index out of range

    start, count = col("images/nucleus_start.npy"), col("images/nucleus_count.npy")
    if start is not None and count is not None:
        start, count = np.asarray(start, np.int64), np.asarray(count, np.int64)
        expected_start = np.concatenate([[0], np.cumsum(count)[:-1]]) if n_images else np.zeros(0, np.int64)
        if (count < 0).any():
            problems.append(f"{folder}/images/nucleus_count.npy: negative counts at images "
                            f"{np.flatnonzero(count < 0)[:5].tolist()}. {hint}")
        elif int(count.sum()) != n_nuclei:
            problems.append(f"{folder}/images/nucleus_count.npy: sums to {int(count.sum())}, but the nucleus "
                            f"table has {n_nuclei} rows. {hint}")
        elif not np.array_equal(start, expected_start):
            bad = np.flatnonzero(start != expected_start)[:5].tolist()
            problems.append(f"{folder}/images/nucleus_start.npy: does not follow nucleus_count at images {bad}. {hint}")
        elif not np.array_equal(np.asarray(image_), np.repeat(np.arange(n_images), count)):
            problems.append(f"{folder}/nuclei/image.npy: disagrees with images/nucleus_count. {hint}")

    height, width = col("images/height.npy"), col("images/width.npy")
    if height is None or width is None:
        return problems
    height, width = np.asarray(height, np.int64), np.asarray(width, np.int64)
    if (height <= 0).any() or (width <= 0).any():
        problems.append(f"{folder}/images: non-positive height or width. {hint}")
        return problems
    image_idx = np.asarray(image_, np.int64)
    if n_nuclei and (image_idx.min() < 0 or image_idx.max() >= n_images):
        problems.append(f"{folder}/nuclei/image.npy: image indices outside 0..{n_images - 1}. {hint}")
        return problems
    w_of, h_of = width[image_idx], height[image_idx]
    centroid = col("nuclei/centroid.npy")
    if centroid is not None and n_nuclei:
        c = np.asarray(centroid, np.float64).reshape(n_nuclei, -1)
        bad = ~np.isfinite(c).all(1)
        if c.shape[1] == 2:
            bad |= (c[:, 0] < -0.5) | (c[:, 0] > w_of - 0.5) | (c[:, 1] < -0.5) | (c[:, 1] > h_of - 0.5)
        if bad.any():
            rows = np.flatnonzero(bad)
            problems.append(f"{folder}/nuclei/centroid.npy: {rows.size} centroid(s) not finite or outside their "
                            f"image, first at rows {rows[:5].tolist()} (e.g. {c[rows[0]].tolist()}). {hint}")
    bbox = col("nuclei/bbox.npy")
    if bbox is not None and n_nuclei:
        b = np.asarray(bbox, np.int64).reshape(n_nuclei, -1)
        if b.shape[1] == 4:
            bad = ((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w_of) | (b[:, 3] > h_of)
                   | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))
            if bad.any():
                rows = np.flatnonzero(bad)
                problems.append(f"{folder}/nuclei/bbox.npy: {rows.size} box(es) outside their image or inverted, "
                                f"first at rows {rows[:5].tolist()}. {hint}")
    area, has_mask = col("nuclei/area.npy"), col("nuclei/has_mask.npy")
    if area is not None and has_mask is not None and n_nuclei:
        a, m = np.asarray(area, np.int64), np.asarray(has_mask, bool)
        bad = (a < 0) | (m & (a == 0)) | (a > w_of * h_of)
        if bad.any():
            problems.append(f"{folder}/nuclei/area.npy: {int(bad.sum())} impossible area(s), first at rows "
                            f"{np.flatnonzero(bad)[:5].tolist()}. {hint}")

    pixels = (col("pixels/rgb.npy"), col("pixels/instances.npy"))
    layout = manifest["pixels"]["layout"]
    if layout == "stacked":
        for rel, array, channels in (("pixels/rgb.npy", pixels[0], (3,)), ("pixels/instances.npy", pixels[1], ())):
            if array is None:
                continue
            if n_images and (len(set(height.tolist())) > 1 or len(set(width.tolist())) > 1):
                problems.append(f"{folder / rel}: stacked layout, but the images have different sizes. {hint}")
            elif array.shape != (n_images, *((int(height[0]), int(width[0])) if n_images else array.shape[1:3]),
                                 *channels):
                problems.append(f"{folder / rel}: shape {array.shape} does not hold {n_images} images of "
                                f"{int(height[0]) if n_images else '?'}x{int(width[0]) if n_images else '?'}. {hint}")
    else:
        offset = col("images/pixel_offset.npy")
        area_px = height * width
        if offset is not None:
            expected = np.concatenate([[0], np.cumsum(area_px)[:-1]]) if n_images else np.zeros(0, np.int64)
            if not np.array_equal(np.asarray(offset, np.int64), expected):
                problems.append(f"{folder}/images/pixel_offset.npy: does not follow the image sizes. {hint}")
        for rel, array, channels in (("pixels/rgb.npy", pixels[0], 3), ("pixels/instances.npy", pixels[1], 1)):
            if array is not None and array.size != int(area_px.sum()) * channels:
                problems.append(f"{folder / rel}: {array.size:,} values, the image sizes call for "
                                f"{int(area_px.sum()) * channels:,}. {hint}")
    if deep and not problems and pixels[1] is not None and has_mask is not None and count is not None:
        running = np.concatenate([[0], np.cumsum(np.asarray(has_mask, np.int64))])
        masked = running[start + count] - running[start]
        columns = {k[:-4]: v for k, v in arrays.items()}
        for i in range(n_images):
            instances = image_pixels(pixels[1], manifest["pixels"]["layout"], i, 1, columns["images/height"],
                                     columns["images/width"], columns.get("images/pixel_offset"))
            k = int(np.asarray(instances).max(initial=0))
            want = int(masked[i])
            if k != want:
                problems.append(f"{folder}/pixels/instances.npy: image {i} ({names[i]}) has {k} instance labels "
                                f"but {want} masked nuclei. {hint}")
                break
    return problems
