"""Views of a dataset for models: per-nucleus crops, fixed-size tiles, segmentation targets, loaders.

Each view reads the store's memory-mapped columns and pixels; resampling to another
µm/px (``mpp=``) has one implementation (``_resample``) shared by crops, tiles and exports.
:func:`crop_loader` and :func:`tile_loader` share one loader path (``_loaders``: whole
batches per worker, reusable shared-memory slots allocated with public torch API);
:func:`collate` batches image samples in any ``DataLoader``.
"""

from nucdata.views._crops import (
    CropBank,
    CropDataset,
    build_bank,
    crop_loader,
    crops_of,
    cut_image,
    place_windows,
)
from nucdata.views._lightning import NucleusDataModule, NucleusLoaders
from nucdata.views._loaders import collate
from nucdata.views._overlay import PALETTE, outline_mask, palette_colour, plot_sample
from nucdata.views._overlay import render as render_overlay
from nucdata.views._patches import (
    PatchDataset,
    PatchLabels,
    derive_patch_labels,
    parse_flag_name,
    patch_labels_from_names,
    read_patch_csv,
    read_patch_labels,
    tissue_mapping,
)
from nucdata.views._resample import (
    axis_weights,
    image_scales,
    output_length,
    resample_image,
    store_scales,
)
from nucdata.views._targets import (
    BoundaryTargets,
    DistanceTargets,
    HoVerNetTargets,
    boundary_map,
    compose,
    distance_map,
    hv_maps,
)
from nucdata.views._tiles import TileDataset, tile_loader, tiles_of

__all__ = [
    "PatchDataset", "PatchLabels", "derive_patch_labels", "parse_flag_name", "patch_labels_from_names",
    "read_patch_csv", "read_patch_labels", "tissue_mapping",
    "BoundaryTargets", "CropBank", "CropDataset", "DistanceTargets", "HoVerNetTargets",
    "NucleusDataModule", "NucleusLoaders", "TileDataset", "axis_weights", "boundary_map", "build_bank", "collate", "compose", "crop_loader", "crops_of",
    "cut_image", "output_length", "place_windows",
    "PALETTE", "palette_colour", "distance_map", "hv_maps", "outline_mask", "plot_sample", "render_overlay", "image_scales", "resample_image", "store_scales", "tile_loader", "tiles_of",
]
