"""Typed errors. Every message names the file or element at fault and the fix.

All errors derive from :class:`NucdataError`, so ``except nucdata.NucdataError``
catches everything the package raises on purpose.
"""

from __future__ import annotations

from pathlib import Path


class NucdataError(Exception):
    """Base class of every error nucdata raises on purpose."""


def _did_you_mean(name: object, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class UnknownDatasetError(NucdataError, KeyError):
    """A dataset name that has no registry card."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = sorted(known)
        names = [k for k in self.known if not k.startswith("set:")]
        tables = [k for k in self.known if k.startswith("set:")]
        message = f"unknown dataset {name!r}{_did_you_mean(name, self.known)}; known datasets: {', '.join(names)}"
        if tables:
            message += f"; or a label set's class ids: {', '.join(tables)}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class UnknownLabelSetError(NucdataError, KeyError):
    """A label-set name that is not packaged."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown label set {name!r}{_did_you_mean(name, self.known)}; valid label sets: {', '.join(self.known)}"
        )

    def __str__(self) -> str:
        return self.args[0]


class UnknownClassError(NucdataError, KeyError):
    """A class name that is not part of a vocabulary."""

    def __init__(self, name: str, vocabulary: str, known: list[str]):
        self.name = name
        self.vocabulary = vocabulary
        self.known = list(known)
        super().__init__(
            f"unknown class {name!r} in {vocabulary!r}; valid classes: {', '.join(self.known)}"
        )

    def __str__(self) -> str:
        return self.args[0]


class DatasetNotFoundError(NucdataError, FileNotFoundError):
    """A dataset that is neither prepared nor downloadable without the user's help."""


class DownloadError(NucdataError):
    """A file could not be fetched from any mirror or the manual folder."""


class HashMismatchError(DownloadError):
    """A downloaded or dropped-in file whose SHA-256 differs from the registry's."""

    def __init__(self, path: Path | str, expected: str, got: str, fix: str):
        self.path = Path(path)
        self.expected = expected
        self.got = got
        super().__init__(
            f"{self.path}: SHA-256 mismatch\n  expected {expected}\n  got      {got}\n{fix}"
        )


class SizeMismatchError(DownloadError):
    """A file whose size differs from the registry's (usually a truncated download)."""

    def __init__(self, path: Path | str, expected: int, got: int, fix: str):
        self.path = Path(path)
        self.expected = expected
        self.got = got
        super().__init__(
            f"{self.path}: size mismatch: expected {expected:,} bytes, got {got:,}\n{fix}"
        )


class HTMLInsteadOfArchiveError(DownloadError):
    """A web page (login, virus-scan or error page) served in place of an archive."""


class CorruptArchiveError(NucdataError):
    """An archive or array file that is truncated or not what its name says."""


class MalformedAnnotationError(NucdataError, ValueError):
    """An annotation file that cannot be parsed, or an element inside it that is invalid."""


class MissingFilesError(NucdataError, FileNotFoundError):
    """A native folder that lacks files or subfolders the dataset's layout requires."""


class CountMismatchError(NucdataError):
    """A conversion whose image or nucleus counts disagree with the registry card."""


class StoreLockedError(NucdataError, TimeoutError):
    """Another process held a dataset's preparation lock for longer than the timeout."""


class StoreError(NucdataError):
    """A store on disk that is missing columns or disagrees with its manifest."""


class InvalidArgumentError(NucdataError, ValueError):
    """An argument outside its valid values (an unknown split, for example)."""


class UnsafePickleError(NucdataError):
    """A pickle that names a global outside the data allow-list (it could run code), or asks
    for something a data pickle does not hold (``reason``), or exceeds a budget.

    Nothing the pickle asked for was called or allocated.

    Parameters
    ----------
    path
        The pickle (or ``"<pickle bytes>"``).
    name
        The refused global (``"os.system"``), or what was refused (``"memory budget"``).
    reason
        What was refused, in words; without it the message says that the pickle asks for
        the global ``name``.
    fix
        What to do instead.
    """

    def __init__(self, path: Path | str, name: str, reason: str | None = None, fix: str | None = None):
        self.path = str(path)
        self.name = name
        self.reason = reason
        self.fix = fix
        if reason is None:
            message = (
                f"{self.path}: refused to unpickle: it asks for {name!r}, which is not a plain container, "
                "number or numpy array (a pickle can run code while loading). Only open pickles from a "
                "source you trust with plain pickle.load; nucdata reads data pickles only."
            )
            if fix:
                message += f" Fix: {fix}."
        else:
            message = f"{self.path}: refused to unpickle: {reason}. Nothing of it was built or called."
            if fix:
                message += f" Fix: {fix}."
        super().__init__(message)


class DataHomeError(NucdataError):
    """A data home (``NUCDATA_HOME``) or cache (``NUCDATA_CACHE``) that is not a usable folder."""


class InvalidCardError(NucdataError, ValueError):
    """A dataset card or local card override (``registry/<name>.json``) with invalid content."""


class MissingMppError(InvalidArgumentError):
    """An image without a microns-per-pixel value, asked for at a given ``mpp``."""


class MissingDependencyError(NucdataError, ImportError):
    """An optional package that a feature needs is not installed.

    Parameters
    ----------
    package
        The package's install name.
    feature
        What needs it, and the alternative without it.
    """

    def __init__(self, package: str, feature: str):
        self.package = package
        super().__init__(f"{feature} needs {package}: pip install {package}")


class LabelTableError(NucdataError, ValueError):
    """A packaged label set or mapping table that breaks the table rules."""


class InjectedFault(NucdataError):
    """Raised at a fault point that a test armed; never raised in normal use."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"injected fault at {name!r} (test hook NUCDATA_FAULT)")


class CheckpointError(NucdataError):
    """A checkpoint file that cannot be used (missing, truncated, not ours, unsafe)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint trained for other label sets (names, order, versions or classes)."""


class OutputFolderError(NucdataError):
    """An output folder (of ``build-merged``, an export) that holds files nucdata did not write."""


class SchemaVersionError(StoreError):
    """A store or merged output written by another schema version of nucdata; it must be rebuilt."""


class ModelStateError(NucdataError, RuntimeError):
    """A model used before it exists: a prediction, a save or a stage before ``fit``, ``setup`` or ``load``."""


class DeviceUnavailableError(NucdataError, RuntimeError):
    """A device asked for that torch does not see (``cuda`` on a machine without a CUDA device)."""


class MergedOutputError(StoreError):
    """A merged output (``build-merged``) whose files disagree with its format or with each other.

    Raised when :func:`nucdata.open_merged` or ``nucdata.load(merged=)`` open one; ``nucdata
    verify --merged DIR`` lists every such problem instead. Nothing misaligned is returned.
    """


class UnsafeNameError(NucdataError, ValueError):
    """A name read from a file (an image name, a dataset or split name) that would not stay a
    plain file name inside its folder: absolute, ``..``, separators, NUL, a drive letter or a
    reserved device name."""


class DiskFullError(NucdataError, OSError):
    """The disk (or quota) filled while nucdata wrote; the message says how much space is free
    and, where it is known, how much is needed. Nothing already published was changed."""


class SizeLimitError(InvalidArgumentError):
    """A request above a size limit (an export's patch side, a resampling factor), refused before
    anything of that size was allocated; the message names the environment variable that raises it."""


class UnsupportedArchiveError(CorruptArchiveError):
    """An archive nucdata cannot extract although it may be intact: encrypted members, a
    compression method Python lacks, member names the file system cannot hold, a member that is
    both a file and a folder."""


class UnsupportedFormatError(MalformedAnnotationError):
    """An interchange file (segmenter output, annotation, slide) in a variant nucdata does not
    read: a Cellpose ``_seg.npy`` holding more than arrays, a snappy-compressed CellViT file, a
    slide's codec or vendor format without its package. The message says how to export or
    install what is read instead."""


class UserTableError(LabelTableError):
    """A user's own vocabulary or mapping table (``nucdata prepare --custom``) that breaks the
    table rules or contradicts the packaged tables; the message names the file and the row."""


class DomainShiftWarning(NucdataError, UserWarning):
    """A warning, not an error: images a classifier is asked about lie far from its training
    data (stain, intensity, contrast, nucleus size or µm/px); the message names the gap, the
    input's value and the training range. Its labels are less reliable than the model card's
    metrics; ``Classifier.recalibrate`` refits the probabilities on a few labelled nuclei."""


class PatchLabelError(NucdataError, ValueError):
    """Patch-level class flags that cannot be read: a file name without a flag bracket in the
    LUAD-HistoSeg (``...-[1 0 0 1].png``) or BCSS-WSSS (``...+0[1101].png``) form, a CSV row with
    a missing column or a flag that is not 0/1, or a mapping from tissue classes to nucleus
    classes that names an unknown class; the message names the file, the row or name, and the fix."""
