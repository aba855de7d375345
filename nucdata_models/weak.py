"""Nucleus classes from patch-level labels: multi-layer pseudo-supervision (Han et al., MedIA 2022).

Han et al. ("Multi-Layer Pseudo-Supervision for Histopathology Tissue Semantic
Segmentation using Patch-level Classification Labels", arXiv 2110.08048, code
ChuHan89/WSSS-Tissue) train a multi-label patch classifier on class-presence flags,
take class activation maps at three depths restricted to the classes present in the
patch, turn each into a pseudo-mask, and train a segmenter on the three with fixed
weights (0.6 deepest, 0.2, 0.2); at test time classes whose patch probability is below
0.1 are switched off. Here the same chain labels *nuclei*:

1. **Patch classifier** (:func:`fit_patch_classifier`): the shared encoder
   (:func:`nucdata_models.build_encoder`) cut into its blocks, global average pooling
   and one linear head, trained with ``multilabel_soft_margin_loss`` on the flags (the
   paper's loss); flips as augmentation.
2. **CAMs at three depths** (:func:`class_activation_maps`): the outputs of the last
   three blocks. The default is **Grad-CAM** (``WeakConfig.cam = "gradcam"``), as in the
   paper's code: a plain CAM exists only where a linear classifier reads the feature map
   (the last block, through the head), so shallower depths would need heads of their
   own; Grad-CAM weighs any depth's channels by the gradient of the one head's class
   score. ``cam = "cam"`` is the plain-CAM alternative: one 1x1 classifier per depth,
   each trained with the same loss, whose class maps are the CAMs. Maps are upsampled
   to the patch (bilinear), restricted to the classes flagged in the patch (others 0)
   and min-max normalised per class and patch.
3. **Pseudo-labels per nucleus and depth** (:func:`nucleus_pseudo_labels`): the class with
   the most normalised CAM mass inside the nucleus: its mask where the store has one,
   else a disc of the typical nucleus radius (``point_radius_um`` at the data's µm/px,
   or the radius of the dataset's masks). A patch with one flagged class gives that
   class to all its nuclei; a patch with none gives none (the nucleus trains nothing).
4. **Nucleus classifier** (:func:`fit_nucleus_classifier`): the encoder on nucleus crops
   cut from the patches, trained with cross-entropy on the per-depth pseudo-labels
   weighted ``depth_weights`` (0.6 deepest, 0.2, 0.2; renormalised over the depths used).
5. **The gate** (:func:`predict_nuclei`): the nucleus classifier's probabilities of
   classes whose patch probability is below ``gate`` (0.1) are set to 0 (and the rest
   renormalised); a nucleus whose every class is gated off keeps its ungated
   prediction.

Every choice is a field of :class:`WeakConfig`. The data are plain tensors
(:class:`PatchData`); :func:`nucdata_models.weak_patch_data` builds them from a
nucdata dataset and its patch labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nucdata.errors import InvalidArgumentError
from nucdata_models.encoders import ResNet, SmallCNN, build_encoder

__all__ = ["CAM_KINDS", "NucleusClassifier", "PatchClassifier", "PatchData", "WeakConfig", "WeakModel",
           "class_activation_maps", "fit_nucleus_classifier", "fit_patch_classifier", "nucleus_crops",
           "nucleus_pseudo_labels", "predict_nuclei", "train_weak"]

#: the class activation maps :class:`WeakConfig` may choose
CAM_KINDS = ("gradcam", "cam")


@dataclass
class WeakConfig:
    """Every choice of the weakly supervised chain (:mod:`nucdata_models.weak`).

    Attributes
    ----------
    encoder
        Encoder of both classifiers (:data:`nucdata_models.encoders.ENCODERS`).
    patch_epochs, nucleus_epochs
        Epochs of the patch and the nucleus classifier.
    batch_size, nucleus_batch_size
        Patches and nuclei per step.
    lr, weight_decay
        AdamW's learning rate and weight decay (both classifiers).
    cam
        ``"gradcam"`` (the paper's; one head, any depth) or ``"cam"`` (a 1x1 classifier
        per depth; see the module docstring).
    depths
        CAM depths used, deepest first: 1 (the last block) or 3 (the last three).
    depth_weights
        Loss weights of the per-depth pseudo-labels, deepest first (the paper's 0.6,
        0.2, 0.2); the first ``depths`` are used, renormalised to sum to 1.
    restrict_to_present
        Restrict every CAM to the classes flagged in its patch (the paper's rule).
    normalise
        ``"minmax"`` per class and patch (the paper's) or ``"none"``.
    point_radius_um
        Radius in µm of the disc standing for a nucleus known only by its centre.
    gate
        Test-time gate: classes whose patch probability is below it are switched off
        (``None``: no gate).
    crop_size
        Side of the nucleus crops, in patch pixels.
    flips
        Random horizontal and vertical flips in training (both classifiers).
    seed
        Seed of initialisation, shuffling and flips.
    device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    encoder: str = "small"
    patch_epochs: int = 8
    nucleus_epochs: int = 8
    batch_size: int = 16
    nucleus_batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    cam: str = "gradcam"
    depths: int = 3
    depth_weights: tuple[float, ...] = (0.6, 0.2, 0.2)
    restrict_to_present: bool = True
    normalise: str = "minmax"
    point_radius_um: float = 4.0
    gate: float | None = 0.1
    crop_size: int = 32
    flips: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.depth_weights = tuple(float(w) for w in self.depth_weights)
        if self.cam not in CAM_KINDS:
            raise InvalidArgumentError(f"WeakConfig.cam={self.cam!r}; choose one of {', '.join(CAM_KINDS)}")
        if self.depths not in (1, 2, 3):
            raise InvalidArgumentError(f"WeakConfig.depths={self.depths!r}; use 1, 2 or 3 (deepest first)")
        if len(self.depth_weights) < self.depths or min(self.depth_weights[: self.depths]) < 0 \
                or sum(self.depth_weights[: self.depths]) <= 0:
            raise InvalidArgumentError(f"WeakConfig.depth_weights={self.depth_weights}: give {self.depths} "
                                       "non-negative weights, deepest first, not all 0")
        if self.normalise not in ("minmax", "none"):
            raise InvalidArgumentError(f"WeakConfig.normalise={self.normalise!r}; use 'minmax' or 'none'")
        if self.gate is not None and not 0.0 <= self.gate < 1.0:
            raise InvalidArgumentError(f"WeakConfig.gate={self.gate!r}; a probability in [0, 1), or None")
        for name in ("patch_epochs", "nucleus_epochs"):
            if int(getattr(self, name)) < 0:
                raise InvalidArgumentError(f"WeakConfig.{name} must be >= 0")
        if self.crop_size < 8 or self.point_radius_um <= 0:
            raise InvalidArgumentError("WeakConfig: crop_size >= 8 and point_radius_um > 0 are needed")

    @property
    def weights(self) -> tuple[float, ...]:
        """The depth weights in use, deepest first, summing to 1."""
        used = self.depth_weights[: self.depths]
        return tuple(w / sum(used) for w in used)

    def replace(self, **changes: Any) -> WeakConfig:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["depth_weights"] = list(self.depth_weights)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeakConfig:
        """The configuration :meth:`to_dict` wrote (unknown keys refused)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(f"WeakConfig: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class PatchData:
    """Patches with class flags and the nuclei in them, as tensors.

    Attributes
    ----------
    patches
        uint8 ``(P, 3, S, S)``.
    flags
        uint8 ``(P, C)``: class-presence flags (what the weak chain trains on).
    class_names
        The ``C`` class names.
    nucleus_patch
        int64 ``(N,)``: the patch each nucleus lies in.
    nucleus_xy
        float32 ``(N, 2)``: its centroid, x then y, in patch pixels.
    instance_maps
        int32 ``(P, S, S)`` or ``None``: 0 background, k the nucleus ``nucleus_instance == k``.
    nucleus_instance
        int64 ``(N,)``: the nucleus's id in its patch's instance map; 0 for a nucleus
        known only by its centre (a disc stands for it).
    radius_px
        float ``(N,)``: radius of that disc, in patch pixels.
    labels
        int64 ``(N,)``: the nucleus's true class, -1 unknown (the supervised ceiling and
        the scores use them; the weak chain never does).
    patch_image
        int64 ``(P,)``: the image each patch was cut from (bootstrap unit).
    patch_split
        int64 ``(P,)``: 0 train, 2 test (others unused).
    mpp
        µm per patch pixel (``None``: unknown).
    image_names
        The images' names, by ``patch_image``.
    crops
        uint8 ``(N, 3, s, s)`` or ``None``: each nucleus's crop cut from its whole image
        (the bridge cuts them from the store's crop bank); without them
        :func:`nucleus_crops` cuts them from the patches, with zeros beyond the patch.
    """

    patches: torch.Tensor
    flags: torch.Tensor
    class_names: tuple[str, ...]
    nucleus_patch: torch.Tensor
    nucleus_xy: torch.Tensor
    nucleus_instance: torch.Tensor
    radius_px: torch.Tensor
    labels: torch.Tensor
    patch_image: torch.Tensor
    patch_split: torch.Tensor
    instance_maps: torch.Tensor | None = None
    mpp: float | None = None
    image_names: list[str] = field(default_factory=list)
    crops: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        p, n, c = self.patches.shape[0], self.nucleus_patch.shape[0], len(self.class_names)
        if self.patches.dtype != torch.uint8 or self.patches.ndim != 4 or self.patches.shape[1] != 3:
            raise InvalidArgumentError(f"PatchData.patches must be uint8 (P, 3, S, S), got {self.patches.dtype} "
                                       f"{tuple(self.patches.shape)}")
        if tuple(self.flags.shape) != (p, c):
            raise InvalidArgumentError(f"PatchData.flags must be ({p}, {c}), got {tuple(self.flags.shape)}")
        for name in ("nucleus_xy", "nucleus_instance", "radius_px", "labels"):
            if getattr(self, name).shape[0] != n:
                raise InvalidArgumentError(f"PatchData.{name} must have one row per nucleus ({n})")
        for name in ("patch_image", "patch_split"):
            if getattr(self, name).shape[0] != p:
                raise InvalidArgumentError(f"PatchData.{name} must have one entry per patch ({p})")
        if n and (int(self.nucleus_patch.min()) < 0 or int(self.nucleus_patch.max()) >= p):
            raise InvalidArgumentError("PatchData.nucleus_patch must index the patches")

    @property
    def size(self) -> int:
        """Patch side ``S``."""
        return int(self.patches.shape[-1])

    def __len__(self) -> int:
        return int(self.nucleus_patch.shape[0])


# --------------------------------------------------------------------------------------
# The encoder in blocks
# --------------------------------------------------------------------------------------
def encoder_blocks(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's blocks in order, without its global pooling: the depths CAMs can read.

    ``small``: its four conv-BN-ReLU(-pool) blocks; the ResNets: the stem and four stages.
    """
    if isinstance(encoder, SmallCNN):
        blocks, current = [], []
        for layer in encoder.features:
            if isinstance(layer, (nn.AdaptiveAvgPool2d, nn.Flatten)):
                continue
            if isinstance(layer, nn.Conv2d) and current:
                blocks.append(nn.Sequential(*current))
                current = []
            current.append(layer)
        blocks.append(nn.Sequential(*current))
        return nn.ModuleList(blocks)
    if isinstance(encoder, ResNet):
        return nn.ModuleList([encoder.stem, *encoder.stages])
    raise InvalidArgumentError(f"{type(encoder).__name__}: the weak chain knows the blocks of the small and ResNet "
                               "encoders only")


def _block_channels(blocks: nn.ModuleList, size: int = 32) -> list[int]:
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size)
        out = []
        for b in blocks:
            was = b.training
            b.eval()
            x = b(x)
            b.train(was)
            out.append(int(x.shape[1]))
    return out


def _where(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the true entries of a 1-D mask."""
    return torch.nonzero(mask, as_tuple=False).flatten()


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0).sub_(0.5).div_(0.25)


def _flip(x: torch.Tensor, generator: torch.Generator, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = [x, *others]
    if bool(torch.rand((), generator=generator) < 0.5):
        out = [t.flip(-1) for t in out]
    if bool(torch.rand((), generator=generator) < 0.5):
        out = [t.flip(-2) for t in out]
    return tuple(out)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PatchClassifier(nn.Module):
    """Multi-label patch classifier: encoder blocks, global average pooling, a linear head
    (and, for plain CAMs, a 1x1 classifier on each of the last three blocks)."""

    def __init__(self, encoder: str, classes: int, cam: str = "gradcam"):
        super().__init__()
        self.encoder_name, self.classes, self.cam = encoder, int(classes), cam
        self.blocks = encoder_blocks(build_encoder(encoder))
        channels = _block_channels(self.blocks)
        self.head = nn.Linear(channels[-1], self.classes)
        self.depth_heads = nn.ModuleList(
            [nn.Conv2d(c, self.classes, 1) for c in channels[-3:][::-1]]) if cam == "cam" else nn.ModuleList()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the last three blocks, deepest first."""
        maps = []
        for b in self.blocks:
            x = b(x)
            maps.append(x)
        return maps[-3:][::-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(B, C)`` and the deepest-first feature maps."""
        maps = self.features(x)
        return self.head(maps[0].mean((2, 3))), maps

    def depth_logits(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Plain-CAM heads: per depth, the class maps' global average (logits)."""
        return [h(m).mean((2, 3)) for h, m in zip(self.depth_heads, maps, strict=False)]


class NucleusClassifier(nn.Module):
    """The encoder on nucleus crops with one linear head over the classes."""

    def __init__(self, encoder: str, classes: int):
        super().__init__()
        self.encoder_name, self.classes = encoder, int(classes)
        self.encoder = build_encoder(encoder)
        self.head = nn.Linear(self.encoder.out_features, self.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


# --------------------------------------------------------------------------------------
# 1. The patch classifier
# --------------------------------------------------------------------------------------
def fit_patch_classifier(data: PatchData, config: WeakConfig, progress: Callable[[str], None] | None = None
                         ) -> PatchClassifier:
    """Train the multi-label patch classifier on the training patches' flags.

    ``multilabel_soft_margin_loss`` of the head (and, with ``cam="cam"``, of every depth's
    1x1 classifier, equally weighted); AdamW; flips.
    """
    torch.manual_seed(config.seed)
    device = _device(config.device)
    model = PatchClassifier(config.encoder, len(data.class_names), config.cam).to(device)
    train = _where(data.patch_split == 0)
    if train.numel() == 0:
        raise InvalidArgumentError("PatchData: no training patches (patch_split == 0)")
    generator = torch.Generator().manual_seed(config.seed)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        x = _to_float(data.patches[rows]).to(device)
        if config.flips:
            (x,) = _flip(x, generator)
        y = data.flags[rows].float().to(device)
        logits, maps = model(x)
        loss = F.multilabel_soft_margin_loss(logits, y)
        if config.cam == "cam":
            loss = loss + sum(F.multilabel_soft_margin_loss(d, y) for d in model.depth_logits(maps))
        return loss

    return _fit(model, config, train, config.patch_epochs, config.batch_size, generator, loss_of,
                "patch classifier", progress)


def _fit(model: nn.Module, config: WeakConfig, train: torch.Tensor, epochs: int, batch_size: int,
         generator: torch.Generator, loss_of: Callable[[torch.Tensor], torch.Tensor], name: str,
         progress: Callable[[str], None] | None) -> nn.Module:
    """AdamW over shuffled batches of ``train`` (rows) for ``epochs``; ``loss_of(rows)`` is a batch's loss.

    A batch of one row is skipped (BatchNorm needs two). Returns the model in eval mode.
    """
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for epoch in range(epochs):
        model.train()
        order = train[torch.randperm(train.numel(), generator=generator)]
        total = 0.0
        for start in range(0, order.numel(), batch_size):
            rows = order[start : start + batch_size]
            if rows.numel() < 2:
                continue
            loss = loss_of(rows)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * rows.numel()
        if progress is not None:
            progress(f"{name} epoch {epoch + 1}/{epochs}: loss {total / train.numel():.4f}")
    model.eval()
    return model


def patch_probabilities(model: PatchClassifier, data: PatchData, batch_size: int = 64) -> torch.Tensor:
    """Sigmoid class probabilities ``(P, C)`` of every patch."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, data.patches.shape[0], batch_size):
            logits, _ = model(_to_float(data.patches[start : start + batch_size]).to(device))
            out.append(torch.sigmoid(logits).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(data.class_names))


# --------------------------------------------------------------------------------------
# 2. CAMs
# --------------------------------------------------------------------------------------
def class_activation_maps(model: PatchClassifier, patches: torch.Tensor, flags: torch.Tensor | None,
                          config: WeakConfig) -> torch.Tensor:
    """CAMs ``(B, D, C, S, S)`` of a batch of uint8 patches, deepest depth first.

    Grad-CAM (``config.cam == "gradcam"``): per depth and class, the ReLU of the feature
    maps weighted by the spatial mean of the class logit's gradient; plain CAM: the ReLU
    of the depth's 1x1 classifier. Upsampled bilinearly to the patch; with
    ``restrict_to_present`` the classes not flagged in ``flags`` are 0; with
    ``normalise="minmax"`` each remaining map is scaled to [0, 1] in its patch.
    """
    device = next(model.parameters()).device
    model.eval()
    x = _to_float(patches).to(device)
    size = patches.shape[-2:]
    depth = config.depths
    if config.cam == "gradcam":
        with torch.enable_grad():
            logits, maps = model(x)
            maps = maps[:depth]
            cams = []
            for c in range(model.classes):
                grads = torch.autograd.grad(logits[:, c].sum(), maps, retain_graph=c < model.classes - 1)
                cams.append([torch.relu((g.mean((2, 3), keepdim=True) * m).sum(1)) for g, m in
                             zip(grads, maps, strict=True)])
        per_depth = [torch.stack([cams[c][d] for c in range(model.classes)], 1).detach() for d in range(depth)]
    else:
        with torch.no_grad():
            _, maps = model(x)
            per_depth = [torch.relu(h(m)) for h, m in zip(model.depth_heads, maps[:depth], strict=False)]
    up = torch.stack([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in per_depth], 1)
    if config.restrict_to_present and flags is not None:
        up = up * flags.to(device).float()[:, None, :, None, None]
    if config.normalise == "minmax":
        flat = up.flatten(3)
        low, high = flat.min(3).values, flat.max(3).values
        up = (up - low[..., None, None]) / (high - low).clamp_min(1e-8)[..., None, None]
        if config.restrict_to_present and flags is not None:
            up = up * flags.to(device).float()[:, None, :, None, None]
    return up.cpu()


def _nucleus_regions(data: PatchData, rows: torch.Tensor, patch: int) -> torch.Tensor:
    """bool ``(K, S, S)``: the mask (or disc) of nuclei ``rows`` of one patch."""
    s = data.size
    inst = data.nucleus_instance[rows]
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                            indexing="ij")
    xy = data.nucleus_xy[rows]
    r = data.radius_px[rows].float()
    disc = ((xx[None] - xy[:, 0, None, None]) ** 2 + (yy[None] - xy[:, 1, None, None]) ** 2) <= r[:, None, None] ** 2
    if data.instance_maps is None:
        return disc
    masks = data.instance_maps[patch][None] == inst[:, None, None]
    has = (inst > 0) & masks.flatten(1).any(1)
    disc[has] = masks[has]
    # a disc that misses every pixel (a point at the border): at least its own pixel
    empty = ~disc.flatten(1).any(1)
    if bool(empty.any()):
        px = xy[empty].round().long().clamp(0, s - 1)
        disc[_where(empty), px[:, 1], px[:, 0]] = True
    return disc


def nucleus_pseudo_labels(model: PatchClassifier, data: PatchData, config: WeakConfig,
                          patches: torch.Tensor | None = None, batch_size: int = 16) -> torch.Tensor:
    """Per nucleus and depth, the class with the most CAM mass inside it: int64 ``(N, D)``.

    Deepest depth first; -1 for nuclei of patches with no flagged class (and, with
    ``patches``, of patches not listed). Uses the flags only, never ``data.labels``.
    """
    n, depth = len(data), config.depths
    out = torch.full((n, depth), -1, dtype=torch.int64)
    chosen = torch.arange(data.patches.shape[0]) if patches is None else patches
    by_patch: dict[int, torch.Tensor] = {}
    order = torch.argsort(data.nucleus_patch, stable=True)
    counts = torch.bincount(data.nucleus_patch, minlength=data.patches.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    for p in chosen.tolist():
        if counts[p] > 0:
            by_patch[p] = order[starts[p] : starts[p] + counts[p]]
    work = [p for p in chosen.tolist() if p in by_patch and int(data.flags[p].sum()) > 0]
    for start in range(0, len(work), batch_size):
        batch = work[start : start + batch_size]
        idx = torch.as_tensor(batch)
        flags = data.flags[idx]
        cams = class_activation_maps(model, data.patches[idx], flags, config)
        for b, p in enumerate(batch):
            rows = by_patch[p]
            present = flags[b].bool()
            if int(present.sum()) == 1:
                out[rows] = int(_where(present)[0])
                continue
            regions = _nucleus_regions(data, rows, p).float()  # (K, S, S)
            mass = torch.einsum("khw,dchw->kdc", regions, cams[b])  # (K, D, C)
            mass = mass.masked_fill(~present[None, None, :], -1.0)
            out[rows] = mass.argmax(2)
    return out


# --------------------------------------------------------------------------------------
# 3. The nucleus classifier
# --------------------------------------------------------------------------------------
def nucleus_crops(data: PatchData, rows: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(K, 3, size, size)`` crops centred on nuclei ``rows``: ``data.crops`` where
    given (and of this size), else cut from their patches (zeros beyond the patch)."""
    if data.crops is not None and data.crops.shape[-1] == size:
        return data.crops[rows]
    half = size // 2
    padded = F.pad(data.patches, (half, half, half, half))
    out = torch.empty((rows.numel(), 3, size, size), dtype=torch.uint8)
    xy = data.nucleus_xy[rows].round().long()
    for i, (r, (x, y)) in enumerate(zip(rows.tolist(), xy.tolist(), strict=True)):
        p = int(data.nucleus_patch[r])
        x = min(max(x, 0), data.size - 1)
        y = min(max(y, 0), data.size - 1)
        out[i] = padded[p, :, y : y + size, x : x + size]
    return out


def fit_nucleus_classifier(data: PatchData, targets: torch.Tensor, weights: tuple[float, ...], config: WeakConfig,
                           progress: Callable[[str], None] | None = None, crops: torch.Tensor | None = None
                           ) -> NucleusClassifier:
    """Train the nucleus classifier on per-depth targets.

    Parameters
    ----------
    targets
        int64 ``(N, D)``: a class per nucleus and depth (-1: none); the loss is
        ``sum_d weights[d] * CE(logits, targets[:, d])`` over the nuclei of training
        patches that have a target at some depth.
    weights
        One weight per column of ``targets``.
    crops
        The nuclei's crops (:func:`nucleus_crops`); cut here when not given.
    """
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.shape[1] != len(weights):
        raise InvalidArgumentError(f"{targets.shape[1]} target columns but {len(weights)} weights")
    torch.manual_seed(config.seed)
    device = _device(config.device)
    model = NucleusClassifier(config.encoder, len(data.class_names)).to(device)
    train = _where((data.patch_split[data.nucleus_patch] == 0) & (targets >= 0).any(1))
    if train.numel() < 2:
        raise InvalidArgumentError("no training nucleus has a target: check the flags and the split")
    if crops is None:
        crops = nucleus_crops(data, torch.arange(len(data)), config.crop_size)
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)
    generator = torch.Generator().manual_seed(config.seed + 1)

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        x = _to_float(crops[rows]).to(device)
        if config.flips:
            (x,) = _flip(x, generator)
        logits = model(x)
        t = targets[rows].to(device)
        return sum(w[d] * F.cross_entropy(logits, t[:, d], ignore_index=-1)
                   for d in range(t.shape[1]) if bool((t[:, d] >= 0).any()))

    return _fit(model, config, train, config.nucleus_epochs, config.nucleus_batch_size, generator, loss_of,
                "nucleus classifier", progress)


def predict_nuclei(model: NucleusClassifier, data: PatchData, patch_probs: torch.Tensor | None = None,
                   gate: float | None = None, rows: torch.Tensor | None = None, crops: torch.Tensor | None = None,
                   batch_size: int = 256) -> torch.Tensor:
    """Class probabilities ``(K, C)`` of nuclei ``rows`` (default: every nucleus).

    With ``gate`` and ``patch_probs`` (:func:`patch_probabilities`), the classes whose
    patch probability is below ``gate`` are set to 0 and the rest renormalised; a
    nucleus whose every class is gated off keeps its ungated probabilities.
    """
    rows = torch.arange(len(data)) if rows is None else rows
    device = next(model.parameters()).device
    if crops is None:
        crops = nucleus_crops(data, rows, model_crop_size(model, data))
    else:
        crops = crops[rows]
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, rows.numel(), batch_size):
            out.append(torch.softmax(model(_to_float(crops[start : start + batch_size]).to(device)), 1).cpu())
    probs = torch.cat(out) if out else torch.zeros(0, len(data.class_names))
    if gate is not None and patch_probs is not None:
        keep = (patch_probs[data.nucleus_patch[rows]] >= gate).float()
        gated = probs * keep
        mass = gated.sum(1, keepdim=True)
        probs = torch.where(mass > 0, gated / mass.clamp_min(1e-12), probs)
    return probs


def model_crop_size(model: NucleusClassifier, data: PatchData) -> int:
    """The crop size a nucleus classifier was trained with (stored on it by :func:`train_weak`)."""
    return int(getattr(model, "crop_size", 32))


# --------------------------------------------------------------------------------------
# The whole chain
# --------------------------------------------------------------------------------------
@dataclass
class WeakModel:
    """A trained weak chain: the patch classifier, the nucleus classifier, the pseudo-labels.

    Attributes
    ----------
    config
        The configuration it was trained with.
    class_names
        The classes, in id order.
    patch_classifier, nucleus_classifier
        The two networks.
    pseudo_labels
        int64 ``(N, D)`` of the training data, deepest depth first.
    history
        Progress lines of training.
    """

    config: WeakConfig
    class_names: tuple[str, ...]
    patch_classifier: PatchClassifier
    nucleus_classifier: NucleusClassifier
    pseudo_labels: torch.Tensor
    history: list[str] = field(default_factory=list)

    def predict(self, data: PatchData, gate: float | None | str = "config") -> torch.Tensor:
        """Class probabilities ``(N, C)`` of every nucleus of ``data``, gated by ``gate``
        (default: the configuration's; ``None``: ungated)."""
        gate = self.config.gate if gate == "config" else gate
        patch_probs = patch_probabilities(self.patch_classifier, data) if gate is not None else None
        return predict_nuclei(self.nucleus_classifier, data, patch_probs, gate)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``weak.json`` (configuration, classes) and the two state dicts
        (``patch_classifier.pt``, ``nucleus_classifier.pt``; read with ``weights_only=True``)."""
        from nucdata._util.atomic import atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.patch_classifier.state_dict(), folder / "patch_classifier.pt")
        torch.save(self.nucleus_classifier.state_dict(), folder / "nucleus_classifier.pt")
        atomic_write_json(folder / "weak.json", {"config": self.config.to_dict(),
                                                 "class_names": list(self.class_names)})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> WeakModel:
        """Read what :meth:`save` wrote (weights only: no code runs)."""
        folder = Path(folder)
        meta = json.loads((folder / "weak.json").read_text(encoding="utf-8"))
        config = WeakConfig.from_dict(meta["config"])
        names = tuple(meta["class_names"])
        patch = PatchClassifier(config.encoder, len(names), config.cam)
        patch.load_state_dict(torch.load(folder / "patch_classifier.pt", map_location="cpu", weights_only=True))
        nucleus = NucleusClassifier(config.encoder, len(names))
        nucleus.load_state_dict(torch.load(folder / "nucleus_classifier.pt", map_location="cpu", weights_only=True))
        nucleus.crop_size = config.crop_size  # type: ignore[attr-defined]
        return cls(config, names, patch.eval(), nucleus.eval(), torch.zeros(0, config.depths, dtype=torch.int64))


def train_weak(data: PatchData, config: WeakConfig | None = None,
               progress: Callable[[str], None] | None = None) -> WeakModel:
    """Train the whole weak chain on the training patches' flags (never on nucleus labels).

    Patch classifier (:func:`fit_patch_classifier`), CAM pseudo-labels at
    ``config.depths`` depths (:func:`nucleus_pseudo_labels`), nucleus classifier on them
    weighted ``config.weights`` (:func:`fit_nucleus_classifier`).

    Parameters
    ----------
    data
        Patches, flags and nuclei (:func:`nucdata_models.weak_patch_data` builds
        them from a dataset); ``patch_split == 0`` marks the training patches.
    config
        The choices (:class:`WeakConfig`; default: the paper's).
    progress
        Called with one line per epoch and stage.

    Returns
    -------
    WeakModel
        Both networks and the training pseudo-labels; :meth:`WeakModel.predict` applies
        the gate.
    """
    config = config or WeakConfig()
    history: list[str] = []

    def say(line: str) -> None:
        history.append(line)
        if progress is not None:
            progress(line)

    patch = fit_patch_classifier(data, config, say)
    train_patches = _where(data.patch_split == 0)
    pseudo = nucleus_pseudo_labels(patch, data, config, train_patches)
    say(f"pseudo-labels: {int((pseudo[:, 0] >= 0).sum())} of {len(data)} nuclei at the deepest depth")
    nucleus = fit_nucleus_classifier(data, pseudo, config.weights, config, say)
    nucleus.crop_size = config.crop_size  # type: ignore[attr-defined]
    return WeakModel(config, data.class_names, patch, nucleus, pseudo, history)
