"""MoNuSAC 2020: per-patient folders of sub-images with ImageScope XML, one layer per class.

Layout (datasets.md §4.3)::

    MoNuSAC_images_and_annotations/<patient>/<stem>.tif | .svs | .xml        (train)
    MoNuSAC Testing Data and Annotations/<patient>/<stem>.tif | .svs | .xml  (test)

Rules (recorded in every manifest under ``rules``):

* **Classes.** The class of a layer is ``Annotation/Attributes/Attribute@Name``
  (``Annotation@Name`` is empty or "Layer N"), matched case-insensitively *by name* to
  the official codes 1 Epithelial, 2 Lymphocyte, 3 Neutrophil, 4 Macrophage. A layer
  with any other name keeps its nuclei with native label -1; the manifest counts them
  per name (``dropped['unknown_class_kept_unlabelled:<name>']`` and
  ``extra['unknown_classes']``) and the per-nucleus ``class_name`` column keeps the name.
* **Ambiguous.** ``Ambiguous`` layers (test set) outline areas to ignore. Their regions
  are not nuclei: they are neither written nor rasterised as nuclei (so they never block
  a nucleus's pixels), they are not in ``regions``; they are counted in the manifest
  (``dropped['ambiguous_regions']``) and per image (image column ``ambiguous_regions``),
  and kept as geometry: image column ``ignore_polygons`` holds each image's Ambiguous
  polygons as JSON (``[[[x, y], ...], ...]``, ImageScope pixel-corner coordinates, ``[]``
  for none); ``NucleusDataset.ignore_mask(i)`` rasterises them under the same rule as the
  nuclei, so the official protocol (ignore predictions inside them) can be applied.
* **Geometry.** The ImageScope rule shared with MoNuSeg and Kumar
  (:mod:`nucdata.datasets`): vertices are pixel corners, first region in file
  order wins overlaps, polygons are clipped at the border, degenerate / outside /
  fully-overlapped regions are dropped and counted.
* **Pairing.** Image and XML pair by identical file stem within a patient folder; the
  sub-image suffixes ``_1``, ``_001`` and ``-1`` are never parsed. An XML without an
  image, or an image without its XML, is a :class:`MissingFilesError`.
* **Images.** The ``.tif`` is read (RGBA or RGB; alpha dropped). A sub-image that has
  only an ``.svs`` is read from it: Pillow first (libtiff decodes the JPEG tiles Aperio
  writes), then ``tifffile`` (page 0, the full-resolution level; JPEG 2000 needs the
  optional ``imagecodecs``). If neither can decode it, the image is skipped, counted
  (``dropped['svs_only_unreadable_skipped']``) and listed in the notes; the card's
  image count check then fails, so nothing is published unless the user accepts the
  gap with ``check_counts=False`` / ``--no-count-check``.
* **Per image.** ``mpp`` = the XML's ``MicronsPerPixel`` (NaN when absent); ``patient``
  = the TCGA patient barcode (first three fields of the folder name); the folder name
  is kept as image column ``slide``.
* **Ids.** ``source_id`` = the ``Region@Id``; ids restart per layer, so the position of
  the enclosing ``Annotation`` (1-based, file order) is kept as nucleus column ``layer``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nucdata._util.images import check_pixels, read_rgb
from nucdata.datasets._base import ConversionReport, Converter, id_number, list_files, walk_dirs
from nucdata.datasets._imagescope import Region, rasterize_regions, read_imagescope
from nucdata.errors import CorruptArchiveError, MissingFilesError
from nucdata.store import StoreWriter

#: Official MoNuSAC codes (ruchikaverma-iitg/MoNuSAC), keyed by lower-case class name.
CLASS_CODES = {"epithelial": 1, "lymphocyte": 2, "neutrophil": 3, "macrophage": 4}
CLASS_NAMES = {1: "Epithelial", 2: "Lymphocyte", 3: "Neutrophil", 4: "Macrophage"}
IGNORE_CLASS = "ambiguous"
IMAGE_SUFFIXES = (".tif", ".tiff")
SPLITS = ("train", "test")

RULES = {
    "classes": "layer class = Annotation/Attributes/Attribute@Name, matched case-insensitively: 1 Epithelial, 2 Lymphocyte, 3 Neutrophil, 4 Macrophage; any other name keeps its nuclei with label -1, counted per name",
    "ambiguous": "Ambiguous layers are areas to ignore, not nuclei: not written or rasterised as nuclei, not in 'regions'; counted (dropped.ambiguous_regions), per image (image column ambiguous_regions) and kept as polygons (image column ignore_polygons, JSON, pixel-corner coordinates; NucleusDataset.ignore_mask rasterises them)",
    "regions": "annotations read = Region elements of every non-Ambiguous layer, before cleaning",
    "coordinates": "ImageScope vertices are pixel corners: a pixel belongs to a region when its centre is inside the polygon",
    "overlap": "first region in file order (layers in file order) keeps overlapping pixels",
    "border": "vertices past the border are kept and the filled polygon is clipped to the image",
    "degenerate": "regions with < 3 distinct vertices, zero area, no pixel inside the image or no free pixel are dropped and counted",
    "pairing": "image and XML pair by identical stem inside a patient folder (suffixes _1, _001, -1 never parsed)",
    "images": ".tif read (alpha dropped); an image with only an .svs is read with Pillow, then tifffile (page 0); undecodable .svs-only images are skipped and counted (svs_only_unreadable_skipped)",
    "mpp": "per image from the XML's MicronsPerPixel (NaN when absent)",
    "source_id": "Region@Id; ids restart per layer, so the layer's 1-based position in the file is kept as nucleus column 'layer'",
}


def split_of(folder: Path) -> str | None:
    """The split a MoNuSAC tree folder holds, from its name (``None``: not a tree name)."""
    name = folder.name.lower()
    if "test" in name:
        return "test"
    if "train" in name or "images_and_annotations" in name:
        return "train"
    return None


def find_split_roots(folder: Path) -> dict[str, Path]:
    """Top folders of the training and test trees (one folder per patient below them).

    Raises
    ------
    MissingFilesError
        When one split is missing, or two folders hold the same split.
    """
    roots: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for d in walk_dirs(folder):
        if d == folder or any(d.is_relative_to(r) for rs in roots.values() for r in rs):
            continue
        split = split_of(d)
        if split is None:
            continue
        patients = [p for p in d.iterdir() if p.is_dir()]
        if any(list_files(p, (".xml",)) for p in patients):
            roots[split].append(d)
    missing = [s for s in SPLITS if not roots[s]]
    if missing:
        raise MissingFilesError(
            f"{folder}: no MoNuSAC {' or '.join(missing)} tree found (a folder named like "
            "'MoNuSAC_images_and_annotations' (train) or 'MoNuSAC Testing Data and Annotations' "
            "(test) holding one folder per patient with .tif/.svs and .xml files). Extract both "
            "archives there, keeping their top folders."
        )
    doubled = {s: r for s, r in roots.items() if len(r) > 1}
    if doubled:
        listing = "; ".join(f"{s}: {', '.join(str(p) for p in r)}" for s, r in doubled.items())
        raise MissingFilesError(
            f"{folder}: more than one MoNuSAC tree for the same split ({listing}). "
            "Keep one copy of each archive's tree."
        )
    return {s: roots[s][0] for s in SPLITS}


def pair_patient(patient_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(stem, image, xml)`` per sub-image of a patient folder, by identical stem.

    The ``.tif`` is preferred; the ``.svs`` stands in when there is no ``.tif``.

    Raises
    ------
    MissingFilesError
        An XML without an image of the same stem, or an image without its XML.
    """
    tifs = {p.stem: p for p in list_files(patient_dir, IMAGE_SUFFIXES)}
    svss = {p.stem: p for p in list_files(patient_dir, (".svs",))}
    xmls = {p.stem: p for p in list_files(patient_dir, (".xml",))}
    lonely_xml = sorted(set(xmls) - set(tifs) - set(svss))
    lonely_img = sorted((set(tifs) | set(svss)) - set(xmls))
    if lonely_xml or lonely_img:
        lines = [f"  XML without image (.tif or .svs): {xmls[s]}" for s in lonely_xml[:20]]
        lines += [f"  image without XML: {(tifs.get(s) or svss[s])}" for s in lonely_img[:20]]
        raise MissingFilesError(
            "MoNuSAC files without their partner (image and XML pair by identical name):\n"
            + "\n".join(lines) + "\nRe-extract the archive or add the missing files."
        )
    return [(stem, tifs.get(stem) or svss[stem], xmls[stem]) for stem in sorted(xmls)]


def read_svs(path: Path) -> np.ndarray:
    """Read an Aperio ``.svs`` crop as ``(H, W, 3)`` uint8 (its full-resolution page).

    Raises
    ------
    CorruptArchiveError
        When neither Pillow nor tifffile (with the codecs installed) can decode it.
    """
    try:
        return read_rgb(path)
    except CorruptArchiveError as exc:
        pillow_error = exc
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            # the one pixel limit of every decoder, from the page's header, before decoding
            check_pixels(path, int(page.imagewidth), int(page.imagelength))
            array = page.asarray()
    except CorruptArchiveError:
        raise
    except Exception as exc:  # tifffile raises many types for missing codecs or bad files
        raise CorruptArchiveError(
            f"{path}: this .svs cannot be decoded (Pillow: {pillow_error.__cause__ or pillow_error}; "
            f"tifffile: {exc}). Install 'imagecodecs' (pip install \"nucdata[codecs]\") so tifffile can "
            "decode it, or save its image as a .tif of the same name beside it."
        ) from exc
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise CorruptArchiveError(
            f"{path}: page 0 is {array.shape} {array.dtype}, not an 8-bit RGB(A) image; "
            "save its image as a .tif of the same name beside it."
        )
    return np.ascontiguousarray(array[..., :3])


def ignore_polygons_json(regions: list[Region]) -> str:
    """The vertices of ``regions`` as compact JSON ``[[[x, y], ...], ...]`` (the image column
    ``ignore_polygons``); coordinates exactly as the XML gives them (pixel corners)."""
    polygons = [[[float(x), float(y)] for x, y in np.asarray(r.vertices, np.float64).reshape(-1, 2)] for r in regions]
    return json.dumps(polygons, separators=(",", ":"))


def patient_barcode(folder_name: str) -> str:
    """``TCGA-5P-A9K0-01Z-00-DX1`` -> ``TCGA-5P-A9K0`` (the patient, not the slide)."""
    parts = folder_name.split("-")
    return "-".join(parts[:3]) if folder_name.startswith("TCGA-") and len(parts) >= 3 else folder_name


class MoNuSAC(Converter):
    """MoNuSAC 2020 from its training and test trees (archives or extracted folders)."""

    name = "monusac"
    version = "3"  # 3: Ambiguous regions kept as polygons (image column ignore_polygons)

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        """Convert both trees under ``folder`` (train first, then test).

        Raises
        ------
        MissingFilesError
            A split's tree is missing, or a file lacks its partner.
        MalformedAnnotationError
            An XML that cannot be parsed (from :func:`read_imagescope`).
        CorruptArchiveError
            A ``.tif`` that cannot be read.
        """
        say = progress or (lambda _msg: None)
        report = ConversionReport(rules=dict(RULES))
        report.extra["native_classes"] = {str(c): n for c, n in CLASS_NAMES.items()}
        unknown: Counter[str] = Counter()
        skipped: list[str] = []
        names: set[str] = set()
        no_mpp = 0
        roots = find_split_roots(folder)
        for split in SPLITS:
            jobs = [
                (patient_dir.name, stem, image, xml)
                for patient_dir in sorted(p for p in roots[split].iterdir() if p.is_dir())
                for stem, image, xml in pair_patient(patient_dir)
            ]
            for i, (slide, stem, image, xml) in enumerate(jobs, 1):
                if image.suffix.lower() == ".svs":
                    try:
                        rgb = read_svs(image)
                    except CorruptArchiveError as exc:
                        skipped.append(str(image.relative_to(roots[split].parent)))
                        report.dropped["svs_only_unreadable_skipped"] += 1
                        say(f"[{split} {i}/{len(jobs)}] SKIPPED {stem}: {exc}")
                        continue
                else:
                    rgb = read_rgb(image)
                name = stem
                if name in names:  # a patient in both splits could repeat a sub-image name
                    name = f"{stem}@{split}"
                    report.dropped["duplicate_names_renamed"] += 1
                    report.notes.append(f"{split}/{slide}/{stem}: name already used; stored as {name!r}")
                names.add(name)
                n, mpp = self._convert_one(writer, report, unknown, name, split, slide, xml, rgb)
                no_mpp += mpp is None
        if unknown:
            report.extra["unknown_classes"] = dict(sorted(unknown.items()))
            report.notes.append(
                "layers with unknown class names (nuclei kept with label -1): "
                + ", ".join(f"{k!r}: {v}" for k, v in sorted(unknown.items()))
            )
        if skipped:
            report.notes.append(
                f"{len(skipped)} sub-images exist only as an .svs that could not be decoded and "
                "were skipped (install 'imagecodecs' to read them): " + ", ".join(skipped)
            )
        if no_mpp:
            report.notes.append(f"{no_mpp} XML files carry no MicronsPerPixel (mpp NaN)")
        return report

    def _convert_one(
        self, writer: StoreWriter, report: ConversionReport, unknown: Counter[str],
        name: str, split: str, slide: str, xml: Path, rgb: np.ndarray,
    ) -> tuple[int, float | None]:
        annotation = read_imagescope(xml)
        ignore = [r for r in annotation.regions if r.layer_class.lower() == IGNORE_CLASS]
        nuclei = [r for r in annotation.regions if r.layer_class.lower() != IGNORE_CLASS]
        report.regions[split] += len(nuclei)
        report.dropped["ambiguous_regions"] += len(ignore)
        inst, kept, dropped = rasterize_regions(nuclei, rgb.shape[:2])
        report.dropped.update(dropped)
        labels, class_names = [], []
        for i in kept:
            region: Region = nuclei[i]
            code = CLASS_CODES.get(region.layer_class.lower(), -1)
            if code == -1:
                shown = region.layer_class or "(none)"
                unknown[shown] += 1
                report.dropped[f"unknown_class_kept_unlabelled:{shown}"] += 1
            labels.append(code)
            class_names.append(region.layer_class)
        ids = [nuclei[i].region_id for i in kept]
        source_ids = [id_number(r, -1) for r in ids]
        n = writer.add_image(
            name, split, rgb, inst, np.asarray(labels, np.int32), np.asarray(source_ids, np.int64),
            mpp=annotation.mpp, patient=patient_barcode(slide),
            nucleus_columns={
                "layer": np.asarray([nuclei[i].layer + 1 for i in kept], np.int32),
                "class_name": np.asarray(class_names, dtype=str) if class_names else np.zeros(0, "<U1"),
            },
            image_columns={"ambiguous_regions": len(ignore), "slide": slide,
                           "ignore_polygons": ignore_polygons_json(ignore)},
        )
        return n, annotation.mpp

