"""Tissue-aware translation of a store's labels has one definition, and every view agrees with it.

PanNuke's mapping has tissue-conditional rows (``"when": {"tissue": [...]}``): a
Neoplastic nucleus is ``epithelial`` in MoNuSAC's set only in the tissues listed. The
image dataset, its crops (whose banks live in the cache for a read-only data home) and
the models' bridge must all apply them, and they must agree nucleus by nucleus.
"""

from __future__ import annotations

import ast
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

import nucdata
from nucdata._util import home as home_module
from nucdata.store import _layout as layout_module

ROOT = Path(__file__).resolve().parents[1]
LABEL_SET = "monusac"  # PanNuke's Neoplastic row into it is tissue-conditional


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from nucdata.testing import install

    root = tmp_path_factory.mktemp("pannuke-home")
    install("pannuke", root)
    nucdata.prepare("pannuke", root=root)
    return root


@pytest.fixture
def read_only_home(prepared, tmp_path, monkeypatch) -> Path:
    """A copy of the prepared home with every write bit removed (and, as root, seen as read-only)."""
    root = tmp_path / "shared"
    shutil.copytree(prepared, root)
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    real, inside = home_module.is_writable, str(root)

    def is_writable(folder) -> bool:  # root ignores permission bits; model what a user sees
        return not str(Path(folder)).startswith(inside) and real(folder)

    monkeypatch.setattr(layout_module, "is_writable", is_writable)
    monkeypatch.setenv("NUCDATA_HOME", str(root))
    monkeypatch.setenv("NUCDATA_CACHE", str(tmp_path / "cache"))
    yield root
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_tissue_conditional_rows_reach_crops_on_a_read_only_home(read_only_home, tmp_path):
    ds = nucdata.load("pannuke", label_set=LABEL_SET)
    # The rows matter here: without the tissue, PanNuke's Neoplastic nuclei would differ.
    unconditional = nucdata.translate("pannuke", np.asarray(ds.store.column("nuclei", "label")), LABEL_SET)
    assert (unconditional[0] != ds.labels).any()

    crops = ds.crops(size=16)
    assert crops.banks[0].path.is_relative_to(tmp_path / "cache")  # the banks live in the cache
    rows = crops.nucleus_index
    np.testing.assert_array_equal(crops.labels, ds.labels[rows])
    np.testing.assert_array_equal(crops.candidates, ds.candidates[rows])
    # One bank, every label set: the same labels again, and those of crops of the native labels.
    for source in (crops, nucdata.load("pannuke").crops(size=16)):
        labels, candidates = source.labels_under(LABEL_SET)
        np.testing.assert_array_equal(labels, ds.labels[rows])
        np.testing.assert_array_equal(candidates, ds.candidates[rows])


def test_the_models_bridge_agrees_with_the_dataset(read_only_home):
    from nucdata_models.merge import training_data

    member = nucdata.load("pannuke")
    under = nucdata.load("pannuke", label_set=LABEL_SET)
    data = training_data([member], nucdata.load_many(["pannuke"]).crops(size=16), [LABEL_SET])
    np.testing.assert_array_equal(data.labels[LABEL_SET].numpy(), under.labels)
    np.testing.assert_array_equal(data.candidates[LABEL_SET].numpy(), under.candidates)


def test_translate_store_labels_is_the_one_translation_of_a_store(read_only_home):
    from nucdata.labels import translate_store_labels

    ds = nucdata.load("pannuke", label_set=LABEL_SET)
    labels, candidates = translate_store_labels(ds.store, LABEL_SET)
    np.testing.assert_array_equal(labels, ds.labels)
    np.testing.assert_array_equal(candidates, ds.candidates)
    rows = np.array([3, 0, 7])
    picked = translate_store_labels(ds.store, LABEL_SET, nuclei=rows)
    np.testing.assert_array_equal(picked[0], ds.labels[rows])
    np.testing.assert_array_equal(picked[1], ds.candidates[rows])
    native = translate_store_labels(ds.store, None)
    np.testing.assert_array_equal(native[0], ds.store.column("nuclei", "label"))
    assert not native[1].any()


# -- structure: one definition ----------------------------------------------------------

#: the callers that translate a store's labels; each must use the one definition
CALLERS = ("nucdata/dataset.py", "nucdata/views/_crops.py", "nucdata_models/merge/bridge.py")
#: names of the mapping's per-tissue machinery
TISSUE_MACHINERY = {"tissues", "conditional"}


def _python_files() -> list[Path]:
    files = [*sorted((ROOT / "nucdata").rglob("*.py")), *sorted((ROOT / "nucdata_models").rglob("*.py"))]
    return [p for p in files if not p.relative_to(ROOT).as_posix().startswith("nucdata/labels/")]


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_outside_labels_uses_the_per_tissue_machinery(path):
    """Outside ``nucdata.labels`` no call passes a tissue to a translation, nor reads a row's tissues."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            translating = "translate" in name or name == "label_columns"
            if translating and any(k.arg == "tissue" for k in node.keywords):
                bad.append(f"line {node.lineno}: {name}(..., tissue=...)")
            elif name == "translate" and len(node.args) > (1 if isinstance(func, ast.Attribute) else 3):
                bad.append(f"line {node.lineno}: {name} with a positional tissue")
            elif name == "row" and isinstance(func, ast.Attribute) and len(node.args) > 1:
                bad.append(f"line {node.lineno}: .row(native, tissue)")
        elif isinstance(node, ast.Attribute) and node.attr in TISSUE_MACHINERY:
            bad.append(f"line {node.lineno}: .{node.attr}")
    assert not bad, (f"{path.relative_to(ROOT)} translates per tissue itself: {bad}; use "
                     "nucdata.labels.translate_store_labels")


@pytest.mark.parametrize("relative", CALLERS)
def test_the_store_translating_callers_use_the_one_definition(relative):
    source = (ROOT / relative).read_text(encoding="utf-8")
    tree = ast.parse(source)
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
              for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "translate_store_labels" in called, f"{relative} does not use nucdata.labels.translate_store_labels"
    assert "translate" not in called, f"{relative} calls translate itself"


def _modules_under(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


@pytest.mark.parametrize("path", _modules_under("nucdata/exports", "nucdata/views"),
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_exports_and_views_name_classes_only_through_the_dataset(path):
    """Class names and colours come from ``NucleusDataset.classes``/``.vocabulary`` alone."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = [f"line {n.lineno}: {getattr(n.func, 'id', getattr(n.func, 'attr', ''))}(...)"
           for n in ast.walk(tree) if isinstance(n, ast.Call)
           and getattr(n.func, "id", getattr(n.func, "attr", "")) in ("label_set", "native_vocabulary")]
    assert not bad, f"{path.relative_to(ROOT)} computes class names itself: {bad}; use ds.classes / ds.vocabulary"
