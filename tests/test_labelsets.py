"""Label sets and mapping tables: composition and consistency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nucdata
from nucdata.labelsets import (
    MERGED_LABEL_SETS,
    OUTSIDE,
    OWN_LABEL_SET,
    label_set,
    list_label_sets,
    mapping,
    native_vocabulary,
    render_markdown,
    translate,
)

DATASETS = ["consep", "kumar", "monusac", "monuseg", "nucls", "pannuke", "tnbc"]
FINER = {"consep4": ("consep", "consep"), "nucls_main": ("nucls", "nucls"), "nucls_super": ("nucls", "nucls")}


def test_vocabularies():
    assert set(list_label_sets()) >= {"pannuke", "consep", "consep4", "monusac", "nucls", "nucls_main", "nucls_super"}
    sizes = {"pannuke": 5, "consep": 7, "consep4": 4, "monusac": 4, "nucls": 12, "nucls_main": 7, "nucls_super": 4}
    for name, n in sizes.items():
        ls = label_set(name)
        assert len(ls) == n
        assert [c.id for c in ls] == list(range(n))
        assert len(set(ls.names)) == n
        assert ls.colours.shape == (n, 3)
        assert all(c.description for c in ls)
        assert ls.name in str(ls)
    assert label_set("PanNuke").index("Neoplastic") == 0


def test_every_native_class_has_a_row_for_every_merged_set():
    for ds in DATASETS:
        codes = [code for code, _, _ in native_vocabulary(ds)]
        for target in MERGED_LABEL_SETS:
            rows = mapping(ds, target)
            assert sorted(r.native for r in rows) == sorted(codes), (ds, target)


@pytest.mark.parametrize("ds", DATASETS)
def test_rows_are_well_formed(ds):
    for target in list_label_sets():
        try:
            rows = mapping(ds, target)
        except nucdata.UnknownLabelSetError:
            continue
        names = label_set(target).names
        for r in rows:
            assert r.reason.strip(), (ds, target, r)
            assert all(c in names for c in r.classes), (ds, target, r)
            if r.kind == "exact":
                assert len(r.classes) == 1
            elif r.kind == "ambiguous":
                assert len(set(r.classes)) >= 2
            else:
                assert r.kind in ("outside", "unknown") and not r.classes


def test_translate_agrees_with_rows():
    for ds in DATASETS:
        codes = np.array([code for code, _, _ in native_vocabulary(ds)] + [-1], np.int64)
        for target in MERGED_LABEL_SETS:
            labels, candidates = translate(ds, codes, target)
            assert labels[-1] == -1 and candidates[-1] == 0
            ls = label_set(target)
            for code, label, bits in zip(codes[:-1], labels[:-1], candidates[:-1], strict=True):
                row = mapping(ds, target).row(int(code))
                assert sorted(ls.decode_candidates(bits)) == sorted(row.classes)
                if row.kind == "exact":
                    assert label == ls.index(row.classes[0]) and bits == 1 << label
                elif row.kind == "outside":
                    assert label == OUTSIDE and bits == 0
                else:
                    assert label == -1
                assert 0 <= bits < (1 << len(ls))


def test_own_label_set_is_exact():
    for ds, own in OWN_LABEL_SET.items():
        for code, name, _ in native_vocabulary(ds):
            row = mapping(ds, own).row(code)
            if name == "unlabeled":
                assert row.kind == "unknown"
                continue
            assert row.kind == "exact", (ds, name)


def test_domain_rows():
    assert set(mapping("monusac", "pannuke").row(1).classes) == {"neoplastic", "epithelial"}
    assert set(mapping("pannuke", "monusac").row(1).classes) == {"lymphocyte", "neutrophil", "macrophage"}
    assert mapping("consep", "monusac").row(5).kind == "outside"  # fibroblast
    assert mapping("nucls", "pannuke").row(6).classes == ("neoplastic",)  # mitotic figure
    assert mapping("consep", "pannuke").row(1).kind == "ambiguous"  # other
    assert mapping("consep", "nucls").row(1).kind == "ambiguous"


def _group(source_ds: str, fine: str, coarse: str) -> dict[str, set[str]]:
    """fine class name -> coarse class names, from the source dataset's own tables."""
    result = {}
    own = mapping(source_ds, fine)
    for r in own:
        if r.kind != "exact":
            continue
        result[r.classes[0]] = set(mapping(source_ds, coarse).row(r.native).classes)
    return result


@pytest.mark.parametrize("coarse", ["consep4", "nucls_main", "nucls_super"])
def test_finer_sets_never_contradict_coarser(coarse):
    source_ds, fine = FINER[coarse]
    group = _group(source_ds, fine, coarse)
    for ds in DATASETS:
        for r in mapping(ds, fine):
            coarse_row = mapping(ds, coarse).row(r.native)
            if r.kind == "outside":
                assert coarse_row.kind == "outside", (ds, r)
            if r.kind in ("exact", "ambiguous") and coarse_row.kind in ("exact", "ambiguous"):
                via_fine = set().union(*(group[c] for c in r.classes))
                assert set(coarse_row.classes) == via_fine, (ds, r, coarse_row)


def test_unknown_names_are_typed():
    with pytest.raises(nucdata.UnknownLabelSetError, match="valid label sets: .*pannuke"):
        label_set("pannukee")
    with pytest.raises(nucdata.UnknownClassError, match="valid classes: neoplastic"):
        label_set("pannuke").index("tumour")
    with pytest.raises(nucdata.UnknownClassError):
        translate("pannuke", np.array([0, 9]), "monusac")


def test_docs_are_generated_from_the_data():
    doc = Path(__file__).resolve().parents[1] / "docs" / "label-sets.md"
    assert doc.read_text() == render_markdown(), "run: python -c \"import nucdata.labelsets as L; open('docs/label-sets.md','w').write(L.render_markdown())\""


def test_load_with_label_set(home):
    from nucdata.demo import install

    install("tnbc", home)
    nucdata.prepare("tnbc")
    ds = nucdata.load("tnbc", label_set="pannuke")
    assert (ds.nuclei.label == -1).all() and (ds.nuclei.candidates == 0).all()
    assert "native_label" in ds.nuclei
    assert ds[0]["labels"].dtype.is_floating_point is False
    with pytest.raises(nucdata.UnknownLabelSetError):
        nucdata.load("tnbc", label_set="nope")
