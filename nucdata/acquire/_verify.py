"""``nucdata verify``: re-check a dataset's downloaded files and its store, listing every problem."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util.home import manual_dir, raw_dir
from nucdata._util.npy import data_sha256, npy_header
from nucdata._util.paths import name_problem
from nucdata.acquire._fetch import verify as verify_file
from nucdata.acquire._prepare import store_path
from nucdata.catalog import RemoteFile, get_card, list_datasets
from nucdata.errors import NucdataError, StoreError
from nucdata.store import MANIFEST, Store, image_pixels, read_manifest, rebuild_hint

__all__ = ["Check", "checked_text", "verify", "verify_merged", "verify_store"]


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
                out.append(Check(name, True, f"{found[0]} OK: {checked_text(spec)}"))
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


def checked_text(spec: RemoteFile) -> str:
    """What verifying ``spec``'s file checks, in words: never more than was checked.

    A card whose hash is a third party's (``hash_source``), or that has none (a
    third-party MD5 is not checked), says so; only a hash its ``hash_source`` gives as the
    publisher's is called that.
    """
    size = "size" if spec.size is not None else ""
    fmt = {"zip": "zip format", "tar": "tar format"}.get(spec.format, "")
    shape = ", ".join(p for p in (size, fmt) if p) or "presence"
    if spec.sha256:
        if spec.hash_source.strip().lower().startswith("publisher"):
            return f"{shape} and SHA-256 checked against the publisher's hash"
        return (f"{shape} and SHA-256 checked against a hash that is not the publisher's "
                f"({spec.hash_source}); no publisher hash")
    only = "size only" if spec.size is not None else f"{shape} only (no size published)"
    return f"{only}; no publisher hash, so the content is not verified ({spec.hash_source})"


def verify_store(path: str | os.PathLike[str], deep: bool = False) -> list[str]:
    """Check a store on disk; return every problem found (empty when it is sound).

    Checked: the manifest's structure; every listed column and both pixel files
    exist, have complete data and the shape and dtype the manifest recorded; column
    lengths agree with the image and nucleus counts (and the manifest's counts);
    ``nucleus_start``/``nucleus_count`` tile the nucleus table and agree with
    ``nuclei/image``; centroids are finite and inside their image, boxes inside it;
    pixel files hold exactly the pixels the image sizes call for; image and split names
    are plain file names (exports write files named after them) and image names are
    unique. With ``deep``, each file's SHA-256 is compared with the manifest's and each
    instance map's largest label with its number of masked nuclei.

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


def _check_names(folder: Path, names: np.ndarray, splits: np.ndarray | None, hint: str) -> list[str]:
    """Image and split names that exports turn into file and folder names must stay inside them."""
    problems = []
    for rel, column, suffix in (("images/name.npy", names, ".png"), ("images/split.npy", splits, "")):
        if column is None:
            continue
        if column.dtype.kind not in "US":
            problems.append(f"{folder / rel}: dtype {column.dtype}, not text. {hint}")
            continue
        values = [str(v) for v in np.asarray(column).tolist()] if column.dtype.kind == "U" else \
            [v.decode("latin-1") for v in np.asarray(column).tolist()]
        unsafe = [(i, v, why) for i, v in enumerate(values)
                  if (why := name_problem(v + suffix) if v or not suffix else "it is empty")]
        if unsafe:
            i, v, why = unsafe[0]
            problems.append(f"{folder / rel}: {len(unsafe)} name(s) that cannot be file names inside an export "
                            f"folder (exports would write outside it); row {i} is {v[:80]!r}: {why}. {hint}")
        if suffix and len(set(values)) != len(values):
            seen: set[str] = set()
            twice = sorted({v for v in values if v in seen or seen.add(v)})
            problems.append(f"{folder / rel}: {len(twice)} image name(s) occur more than once (e.g. "
                            f"{twice[0][:80]!r}); exports would overwrite one image's files with another's. {hint}")
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
    problems += _check_names(folder, names, col("images/split.npy"), hint)

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
        # rgb is planar (N, 3, H, W) since store schema 2; instances are (N, H, W)
        for rel, array, channels in (("pixels/rgb.npy", pixels[0], (3,)), ("pixels/instances.npy", pixels[1], ())):
            if array is None:
                continue
            if n_images and (len(set(height.tolist())) > 1 or len(set(width.tolist())) > 1):
                problems.append(f"{folder / rel}: stacked layout, but the images have different sizes. {hint}")
            elif array.shape != (n_images, *channels,
                                 *((int(height[0]), int(width[0])) if n_images else array.shape[-2:])):
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


# -- merged outputs ---------------------------------------------------------------------
def verify_merged(folder: str | os.PathLike[str], deep: bool = False) -> list[Check]:
    """Check a ``build-merged`` output folder; one line per problem, and one per sound part.

    Checked: the marker (``.nucdata-merged``) and every ``merged/<dataset>/merged.json``
    against their schemas; for every dataset and label set of the marker, each merged
    column's dtype, shape, size and length against the output's copy of the store, its
    codes (labels -2..K-1 for the label set's K classes, provenance codes, ``outside``
    with -2) and probabilities (finite in [0, 1], NaN only beside -2); the published
    pickle ``<label_set>/<dataset>.pkl`` (read with the allow-list unpickler) row by
    row, and against the columns and the store: the same images, the same nuclei in the
    same order, centroids, fields 2-4. The output's copy of each store is checked as
    :func:`verify_store` checks a store (``deep``: hashes and instance maps too).

    Parameters
    ----------
    folder
        The output folder.
    deep
        Also hash the stores' files and read their instance maps.

    Returns
    -------
    list of Check
        ``Check.dataset`` is ``"merged"`` for the output's own files, else the dataset;
        a damaged output is failed lines, never an exception.
    """
    from nucdata.labels import label_set as get_label_set
    from nucdata.store import check_marker

    root = Path(folder)
    if not root.is_dir():
        return [Check("merged", False, f"{root}: not a folder; pass a build-merged output folder to --merged.")]
    info, problems = check_marker(root)
    out = [Check("merged", False, p) for p in problems]
    if not info:
        return out
    classes: dict[str, int] = {}
    for name in info["label_sets"]:
        try:
            classes[name] = len(get_label_set(name))
        except NucdataError:
            out.append(Check("merged", False, f"{root}: label set {name!r} is not one nucdata knows; the output "
                                              "was made by another version or edited. Rebuild it with "
                                              "`nucdata build-merged`."))
    for dataset in info["datasets"]:
        try:
            out += _verify_merged_dataset(root, dataset, classes, deep)
        except Exception as exc:  # noqa: BLE001 - a damaged output must be reported, never raise
            out.append(Check(dataset, False, f"{root}: the checks of {dataset} stopped at an unexpected state "
                                             f"({type(exc).__name__}: {exc}); rebuild the output with "
                                             "`nucdata build-merged`."))
    return out


def _verify_merged_dataset(root: Path, dataset: str, classes: dict[str, int], deep: bool) -> list[Check]:
    from nucdata._util.safe_pickle import load as safe_load
    from nucdata.store import merged_label_problems, published_table, read_merged_info

    lines: list[Check] = []
    try:
        info = read_merged_info(root, dataset)
    except NucdataError as exc:
        return [Check(dataset, False, str(exc))]
    store_dir = root / "stores" / dataset
    if not (store_dir / MANIFEST).is_file():
        return [Check(dataset, False, f"{store_dir}: the output's copy of the store is missing or incomplete; "
                                      "rebuild the output with `nucdata build-merged`.")]
    store_problems = verify_store(store_dir, deep=deep)
    lines += [Check(dataset, False, f"the output's store: {p}") for p in store_problems]
    if store_problems:
        return lines
    store = Store(store_dir)
    if info["nuclei"] != store.n_nuclei:
        lines.append(Check(dataset, False, f"{root / 'merged' / dataset / 'merged.json'}: 'nuclei' is "
                                           f"{info['nuclei']:,}, the output's store has {store.n_nuclei:,}."))
    for label_set in info["label_sets"]:
        if label_set not in classes:
            continue
        columns, problems = merged_label_problems(root, dataset, label_set, classes[label_set])
        lines += [Check(dataset, False, p) for p in problems]
        pkl = root / label_set / f"{dataset}.pkl"
        if not pkl.is_file():
            lines.append(Check(dataset, False, f"{pkl}: missing; the output is incomplete. Rebuild it with "
                                               "`nucdata build-merged`."))
            continue
        try:
            table, row_problems = published_table(safe_load(pkl), pkl, classes[label_set])
        except NucdataError as exc:
            lines.append(Check(dataset, False, str(exc)))
            continue
        lines += [Check(dataset, False, p) for p in row_problems]
        if problems or row_problems:
            continue
        cross = _pickle_against_columns(pkl, table, columns, store)
        lines += [Check(dataset, False, p) for p in cross]
        if not cross:
            lines.append(Check(dataset, True, f"{label_set}: {store.n_nuclei:,} nuclei; merged columns, codes, "
                                              f"probabilities and {pkl.name} agree with the store"))
    return lines


def _pickle_against_columns(pkl: Path, table: dict[str, dict[str, np.ndarray]], columns: dict[str, np.ndarray],
                            store: Store) -> list[str]:
    """The published pickle holds the store's images and nuclei, in order, with the columns' fields."""
    from nucdata.store import PROVENANCE

    fix = "rebuild the output with `nucdata build-merged`"
    names = [f"{n}.png" for n in np.asarray(store.column("images", "name")).tolist()]
    if sorted(table) != sorted(names):
        missing, extra = sorted(set(names) - set(table)), sorted(set(table) - set(names))
        return [f"{pkl}: its images differ from the store's ({len(missing)} missing, e.g. {missing[:3]}; "
                f"{len(extra)} not in the store, e.g. {extra[:3]}). Fix: {fix}."]
    count = np.asarray(store.column("images", "nucleus_count"), np.int64)
    start = np.asarray(store.column("images", "nucleus_start"), np.int64)
    wrong = [n for i, n in enumerate(names) if table[n]["predicted"].size != count[i]]
    if wrong:
        return [f"{pkl}: {len(wrong)} image(s) hold another number of nuclei than the store (e.g. {wrong[0]!r}). "
                f"Fix: {fix}."]
    order = np.concatenate([np.arange(start[i], start[i] + count[i]) for i in range(len(names))]) if names else \
        np.zeros(0, np.int64)
    field = {k: np.concatenate([table[n][k] for n in names]) if names else np.zeros(0)
             for k in ("centroid", "predicted", "probability", "ground_truth")}
    problems = []
    centroid = np.asarray(store.column("nuclei", "centroid"), np.float64)[order]
    if field["centroid"].size and not np.allclose(field["centroid"].reshape(-1, 2), centroid, atol=1e-3):
        problems.append(f"{pkl}: centroids differ from the store's (the rows belong to other nuclei). Fix: {fix}.")
    source = np.asarray(columns["source"], np.int64)[order]
    decided = (source == PROVENANCE.index("ambiguous-resolved")) | (source == PROVENANCE.index("outside"))
    label = np.where(decided, np.asarray(columns["label"])[order], np.asarray(columns["predicted"])[order])
    prob = np.where(decided, np.asarray(columns["probability"])[order],
                    np.asarray(columns["predicted_probability"])[order]).astype(np.float32)
    for what, got, want in (("field 2 (label)", field["predicted"], label),
                            ("field 4 (ground truth)", field["ground_truth"], np.asarray(columns["annotation"])[order])):
        if not np.array_equal(got, want):
            problems.append(f"{pkl}: {what} differs from the merged columns in {int((got != want).sum()):,} "
                            f"nuclei. Fix: {fix}.")
    if not np.array_equal(field["probability"].astype(np.float32), prob, equal_nan=True):
        problems.append(f"{pkl}: field 3 (probability) differs from the merged columns. Fix: {fix}.")
    return problems
