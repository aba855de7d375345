"""Label sets and mapping tables: composition and consistency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nucdata
from nucdata.errors import LabelTableError
from nucdata.labels import (
    MERGED_LABEL_SETS,
    OUTSIDE,
    OUTSIDE_NAME,
    OWN_LABEL_SET,
    check_tables,
    find_inconsistencies,
    label_set,
    list_label_sets,
    mapping,
    native_vocabulary,
    parse_rows,
    render_markdown,
    table_sources,
    table_version,
    translate,
    translate_store_labels,
)

DATASETS = ["consep", "crchisto", "kumar", "monusac", "monuseg", "nucls", "pannuke", "tnbc"]
EXHAUSTIVE = {"pannuke": True, "consep": True, "consep4": True, "nucls_main": True, "nucls_super": True,
              "crchisto": True, "monusac": False, "nucls": False}
#: PanNuke's 19 tissue names as types.npy spells them (datasets.md §2.4)
PANNUKE_TISSUES = {"Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus", "HeadNeck",
                   "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin", "Stomach", "Testis",
                   "Thyroid", "Uterus"}


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
            assert sorted(r.native for r in rows if r.tissues is None) == sorted(codes), (ds, target)


@pytest.mark.parametrize("ds", DATASETS)
def test_rows_are_well_formed(ds):
    for target in list_label_sets():
        try:
            rows = mapping(ds, target)
        except nucdata.UnknownLabelSetError:
            continue
        names = label_set(target).names + ([] if label_set(target).exhaustive else [OUTSIDE_NAME])
        for r in rows:
            assert r.reason.strip(), (ds, target, r)
            assert r.sources and set(r.sources) <= set(table_sources()), (ds, target, r)
            assert all(c in names for c in r.classes), (ds, target, r)
            if r.kind == "exact":
                assert len(r.classes) == 1 and r.classes[0] != OUTSIDE_NAME
            elif r.kind == "ambiguous":
                assert len(set(r.classes)) >= 2
            else:
                assert r.kind in ("outside", "unknown") and not r.classes
            if r.tissues is not None:
                assert set(r.tissues) <= PANNUKE_TISSUES, (ds, target, r)


def test_translate_agrees_with_rows():
    for ds in DATASETS:
        codes = np.array([code for code, _, _ in native_vocabulary(ds)] + [-1], np.int64)
        for target in MERGED_LABEL_SETS:
            labels, candidates = translate(ds, codes, target)
            assert labels[-1] == -1 and candidates[-1] == 0
            ls = label_set(target)
            for code, label, bits in zip(codes[:-1], labels[:-1], candidates[:-1], strict=True):
                row = mapping(ds, target).row(int(code))
                assert row.tissues is None
                if row.kind == "exact":
                    assert label == ls.index(row.classes[0]) and bits == 1 << label
                elif row.kind == "outside":
                    assert label == OUTSIDE and bits == ls.outside_bit
                    assert ls.decode_candidates(bits) == [OUTSIDE_NAME]
                else:
                    assert label == -1
                    assert sorted(ls.decode_candidates(bits)) == sorted(row.classes)
                assert 0 <= bits <= (ls.outside_bit | ls.class_bits if not ls.exhaustive else ls.class_bits)


def test_own_label_set_is_exact():
    for ds, own in OWN_LABEL_SET.items():
        for code, name, _ in native_vocabulary(ds):
            row = mapping(ds, own).row(code)
            if name == "unlabeled":
                assert row.kind == "unknown"
                continue
            assert row.kind == "exact", (ds, name)


def test_label_set_flags_and_version():
    for name, exhaustive in EXHAUSTIVE.items():
        ls = label_set(name)
        assert ls.exhaustive is exhaustive, name
        assert ls.outside_bit == 1 << len(ls) and ls.class_bits == (1 << len(ls)) - 1
        assert ls.version == table_version() and ls.source in table_sources()
    for ds in DATASETS:
        assert mapping(ds, "pannuke").version == table_version()
    monusac = label_set("monusac")
    assert monusac.decode_candidates(monusac.encode_candidates(["lymphocyte", "outside"])) == ["lymphocyte", "outside"]
    with pytest.raises(LabelTableError, match="exhaustive"):
        label_set("pannuke").encode_candidates(["outside"])


def test_domain_rows():
    """The rows the review asked to fix (issue 15), each as the datasets' definitions say."""
    def row(src, tgt, code):
        r = mapping(src, tgt).row(code)
        return r.kind, set(r.classes)

    # CoNSeP miscellaneous holds uncategorisable cells: no information anywhere.
    for tgt in ("pannuke", "nucls", "nucls_main", "nucls_super", "monusac"):
        assert row("consep", tgt, 1) == ("unknown", set()), tgt
    # PanNuke connective includes adipocytes, nerve, pericytes: CoNSeP files them as other.
    assert row("pannuke", "consep", 2) == ("ambiguous", {"fibroblast", "muscle", "endothelial", "other"})
    assert row("pannuke", "nucls_main", 2) == ("ambiguous", {"nonTILnonMQ_stromal", "other_nucleus"})
    assert row("pannuke", "nucls_super", 2) == ("ambiguous", {"nonTIL_stromal", "other_nucleus"})
    # Mitoses are CoNSeP miscellaneous, in both directions.
    assert row("nucls", "consep", 6) == ("exact", {"other"})
    assert row("nucls", "consep4", 6) == ("exact", {"other"})
    assert row("consep", "nucls", 4) == ("exact", {"tumor"})
    assert row("consep", "nucls_main", 4) == ("exact", {"tumor_nonMitotic"})
    # Plasma cells and eosinophils have no MoNuSAC type.
    lymph_etc = {"lymphocyte", "neutrophil", "macrophage", OUTSIDE_NAME}
    assert row("pannuke", "monusac", 1) == ("ambiguous", lymph_etc)
    assert row("consep", "monusac", 2) == ("ambiguous", lymph_etc)
    # PanNuke neoplastic: epithelial or outside, exact epithelial only in carcinoma tissues.
    assert row("pannuke", "monusac", 0) == ("ambiguous", {"epithelial", OUTSIDE_NAME})
    assert mapping("pannuke", "monusac").row(0, "Breast").kind == "exact"
    assert mapping("pannuke", "monusac").row(0, "Skin").kind == "ambiguous"
    # Muscle has a place in the exhaustive NuCLS sets; outside only raw NuCLS and MoNuSAC.
    assert row("consep", "nucls_main", 6) == ("ambiguous", {"nonTILnonMQ_stromal", "other_nucleus"})
    assert row("consep", "nucls", 6) == ("outside", set())
    # Dead includes necrosis, which NuCLS has no class for.
    assert row("pannuke", "nucls", 3) == ("ambiguous", {"apoptotic_body", OUTSIDE_NAME})
    for src in DATASETS:
        for tgt in list_label_sets():
            try:
                m = mapping(src, tgt)
            except nucdata.UnknownLabelSetError:
                continue
            for r in m:
                assert "As under" not in r.reason and "candidates include a class" not in r.reason, (src, tgt, r)


def test_exhaustive_sets_reject_outside_rows():
    names = {1: "x", 2: "y"}
    ok = {"reason": "r", "sources": ["pannuke"]}
    for target in ("pannuke", "consep", "consep4", "nucls_main", "nucls_super"):
        ls = label_set(target)
        with pytest.raises(LabelTableError, match="exhaustive"):
            parse_rows("test", ls, names, [{"native": 1, "kind": "outside", "classes": [], **ok},
                                            {"native": 2, "kind": "unknown", "classes": [], **ok}])
        with pytest.raises(LabelTableError, match="exhaustive"):
            parse_rows("test", ls, names, [{"native": 1, "kind": "ambiguous", "classes": [ls.names[0], "outside"], **ok},
                                            {"native": 2, "kind": "unknown", "classes": [], **ok}])
    rows = parse_rows("test", label_set("monusac"), names, [
        {"native": 1, "kind": "outside", "classes": [], **ok},
        {"native": 2, "kind": "ambiguous", "classes": ["lymphocyte", "outside"], **ok}])
    assert [r.may_be_outside for r in rows] == [True, True]
    # Every packaged table obeys the rule (mapping() validates on load): the build fails otherwise.
    for src in [*DATASETS, *(f"set:{s}" for s in list_label_sets())]:
        for tgt in list_label_sets():
            try:
                m = mapping(src, tgt)
            except nucdata.UnknownLabelSetError:
                continue
            if m.target.exhaustive:
                assert not any(r.may_be_outside for r in m), (src, tgt)


def test_table_rules_are_enforced():
    ls = label_set("monusac")
    ok = {"reason": "r", "sources": ["monusac"]}
    bad = [
        ([{"native": 1, "kind": "exact", "classes": ["epithelial"], "reason": "r", "sources": ["nope"]}], "sources"),
        ([{"native": 1, "kind": "exact", "classes": ["epithelial"], "reason": " ", "sources": ["monusac"]}], "reason"),
        ([{"native": 1, "kind": "exact", "classes": ["outside"], **ok}], "exact"),
        ([], "unconditional"),
        ([{"native": 1, "kind": "exact", "classes": ["epithelial"], **ok},
          {"native": 1, "kind": "exact", "classes": ["lymphocyte"], "when": {"tissue": ["Skin"]}, **ok}], "narrowing"),
        ([{"native": 1, "kind": "ambiguous", "classes": ["epithelial", "outside"], **ok},
          {"native": 1, "kind": "exact", "classes": ["epithelial"], "when": {"organ": ["Skin"]}, **ok}], "when"),
    ]
    for rows, match in bad:
        with pytest.raises(LabelTableError, match=match):
            parse_rows("test", ls, {1: "x"}, rows)


def test_tissue_conditional_row_applies_only_to_its_tissue():
    codes = np.array([0, 0, 0, 0, 1])
    tissue = np.array(["Breast", "Skin", "", "Colon", "Breast"])
    ls = label_set("monusac")
    labels, candidates = translate("pannuke", codes, "monusac", tissue=tissue)
    epithelial = 1 << ls.index("epithelial")
    assert labels.tolist() == [0, -1, -1, 0, -1]
    assert candidates[:4].tolist() == [epithelial, epithelial | ls.outside_bit, epithelial | ls.outside_bit, epithelial]
    # Without a tissue the unconditional row applies; one name applies to every nucleus.
    assert translate("pannuke", codes, "monusac")[0].tolist() == [-1, -1, -1, -1, -1]
    assert translate("pannuke", codes[:2], "monusac", tissue="Lung")[0].tolist() == [0, 0]
    # A synthetic table: the conditional row only for its tissue.
    ok = {"reason": "r", "sources": ["pannuke"]}
    rows = parse_rows("test", ls, {7: "x"}, [
        {"native": 7, "kind": "ambiguous", "classes": ["lymphocyte", "macrophage"], **ok},
        {"native": 7, "kind": "exact", "classes": ["macrophage"], "when": {"tissue": ["Liver"]}, **ok}])
    m = nucdata.labels.LabelMapping("test", ls, rows)
    assert m.translate(np.array([7, 7, -1]), np.array(["Liver", "Lung", "Liver"]))[0].tolist() == [3, -1, -1]
    with pytest.raises(nucdata.InvalidArgumentError, match="shape"):
        m.translate(np.array([7, 7]), np.array(["Liver"] * 3))


class _Columns:
    """A store as translate_store_labels reads it: dataset, columns, image columns."""

    def __init__(self, dataset: str, tables: dict[str, dict[str, np.ndarray]]):
        self.dataset, self.tables = dataset, tables

    def column(self, table: str, key: str) -> np.ndarray:
        return self.tables[table][key]

    def image_columns(self) -> list[str]:
        return list(self.tables["images"])


def test_translate_store_labels_reads_each_nucleus_tissue_from_its_image():
    images = {"tissue": np.array(["Breast", "Skin", "Lung"]), "name": np.array(["a", "b", "c"])}
    nuclei = {"label": np.array([0, 0, 0, 1, -1], np.int16), "image": np.array([0, 1, 2, 0, 2])}
    store = _Columns("pannuke", {"images": images, "nuclei": nuclei})
    labels, candidates = translate_store_labels(store, "monusac")
    expected = translate("pannuke", nuclei["label"], "monusac", tissue=images["tissue"][nuclei["image"]])
    assert labels.tolist() == expected[0].tolist() == [0, -1, 0, -1, -1]
    assert candidates.tolist() == expected[1].tolist()
    assert labels.dtype == candidates.dtype == np.int64
    rows = np.array([4, 1])  # a selection, in its order
    assert translate_store_labels(store, "monusac", nuclei=rows)[0].tolist() == [-1, -1]
    assert translate_store_labels(store, "monusac", nuclei=slice(2, 4))[0].tolist() == [0, -1]
    native, zero = translate_store_labels(store, None)
    assert native.tolist() == [0, 0, 0, 1, -1] and native.dtype == np.int64 and not zero.any()
    # A store without a tissue column: the unconditional rows, as translate without a tissue.
    bare = _Columns("pannuke", {"images": {"name": images["name"]}, "nuclei": nuclei})
    assert translate_store_labels(bare, "monusac")[0].tolist() == translate("pannuke", nuclei["label"], "monusac")[0].tolist()
    # A dataset whose tables have no conditional row does not need a tissue column at all.
    consep = _Columns("consep", {"images": {}, "nuclei": {"label": np.array([1, 2]), "image": np.array([0, 0])}})
    assert translate_store_labels(consep, "pannuke")[0].tolist() == translate("consep", np.array([1, 2]), "pannuke")[0].tolist()


def test_vocabulary_tables_translate_predictions():
    for src in list_label_sets():
        ls = label_set(src)
        ids = np.arange(len(ls))
        for tgt in list_label_sets():
            labels, _ = translate(f"set:{src}", ids, tgt)
            if tgt == src:
                assert labels.tolist() == ids.tolist()
    # Bare names of vocabularies that are not datasets; set: for those that are.
    assert mapping("consep4", "pannuke").source == "consep4"
    consep_ids = np.arange(7)
    np.testing.assert_array_equal(translate("set:consep", consep_ids, "pannuke")[1],
                                  translate("consep", consep_ids + 1, "pannuke")[1])
    assert mapping(label_set("nucls"), "monusac").row(2).classes == ("lymphocyte",)
    labels, candidates = translate("consep4", np.array([1, 3]), "monusac")
    assert labels.tolist() == [-1, OUTSIDE] and candidates[1] == label_set("monusac").outside_bit
    with pytest.raises(nucdata.UnknownDatasetError, match="set:consep4"):
        mapping("consep5", "pannuke")


def test_consistency_checker_passes_and_catches():
    report = check_tables()
    assert report.ok, report.format()
    from click.testing import CliRunner

    from nucdata.cli import main

    result = CliRunner().invoke(main, ["label-sets", "--check"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and f"v{table_version()}" in result.output
    # The checker is not vacuous: the v1 muscle rows (outside NuCLS while PanNuke
    # connective -> fibroblast/endothelium) are a contradiction, a one-sided pairing an asymmetry.
    sets = {n: label_set(n) for n in ("consep", "pannuke", "nucls")}
    muscle, connective = sets["consep"].index("muscle"), sets["pannuke"].index("connective")
    fib, endo = sets["nucls"].index("fibroblast"), sets["nucls"].index("vascular_endothelium")
    claims = {
        "consep": {"pannuke": {muscle: frozenset({connective})}, "nucls": {muscle: frozenset({-1})}},
        "pannuke": {"nucls": {connective: frozenset({fib, endo})}, "consep": {connective: frozenset({5})}},
        "nucls": {},
    }
    found = find_inconsistencies(sets, claims)
    assert sorted(f.key for f in found if f.kind == "contradiction") == [
        "consep>pannuke>nucls:muscle", "pannuke>consep>nucls:connective"]
    claims["pannuke"]["consep"] = {connective: frozenset({sets["consep"].index("fibroblast")})}
    keys = {f.key for f in find_inconsistencies(sets, claims) if f.kind == "asymmetry"}
    assert "consep>pannuke:muscle|connective" in keys
    # A finding accepted in the data passes; a stale acceptance fails.
    report = nucdata.labels._tables.CheckReport(found, {f.key: "because" for f in found})
    assert report.ok and "because" in report.format()
    assert not nucdata.labels._tables.CheckReport([], {"gone": "x"}).ok


def test_unknown_names_are_typed():
    with pytest.raises(nucdata.UnknownLabelSetError, match="valid label sets: .*pannuke"):
        label_set("pannukee")
    with pytest.raises(nucdata.UnknownClassError, match="valid classes: neoplastic"):
        label_set("pannuke").index("tumour")
    with pytest.raises(nucdata.UnknownClassError):
        translate("pannuke", np.array([0, 9]), "monusac")


def test_docs_are_generated_from_the_data():
    doc = Path(__file__).resolve().parents[1] / "docs" / "label-sets.md"
    assert doc.read_text() == render_markdown(), "run: python -c \"import nucdata.labels._tables as L; open('docs/label-sets.md','w').write(L.render_markdown())\""


def test_load_with_label_set(home):
    from nucdata.testing import install

    install("tnbc", home)
    nucdata.prepare("tnbc")
    ds = nucdata.load("tnbc", label_set="pannuke")
    assert (ds.nuclei.label == -1).all() and (ds.nuclei.candidates == 0).all()
    assert "native_label" in ds.nuclei
    assert ds[0]["labels"].dtype.is_floating_point is False
    with pytest.raises(nucdata.UnknownLabelSetError):
        nucdata.load("tnbc", label_set="nope")


def test_outside_candidate_survives_load(home):
    from nucdata.testing import install

    install("consep", home)
    nucdata.prepare("consep")
    ds = nucdata.load("consep", label_set="monusac")
    assert ds.store.manifest["label_tables"] == table_version()
    ls = label_set("monusac")
    native = ds.nuclei.native_label.values
    labels, candidates = ds.nuclei.label.values, ds.nuclei.candidates.values
    inflammatory, fibroblast = native == 2, native == 5
    assert inflammatory.any() and fibroblast.any()
    assert (labels[inflammatory] == -1).all()
    assert (candidates[inflammatory] == ls.encode_candidates(["lymphocyte", "neutrophil", "macrophage", "outside"])).all()
    assert (labels[fibroblast] == OUTSIDE).all() and (candidates[fibroblast] == ls.outside_bit).all()
    sample = ds[0]
    rows = ds.store.nucleus_slice(int(ds.indices[0]))
    assert sample["candidates"].tolist() == candidates[rows].tolist()
    # Exhaustive target: no outside bit anywhere.
    under = nucdata.load("consep", label_set="nucls_main")
    assert not (under.nuclei.candidates.values & label_set("nucls_main").outside_bit).any()


def test_load_applies_tissue_rows(home):
    from nucdata.testing import install

    install("pannuke", home)
    nucdata.prepare("pannuke")
    ds = nucdata.load("pannuke", label_set="monusac")
    tissue = ds.images.tissue.values[ds.nuclei.image.values]
    neoplastic = ds.nuclei.native_label.values == 0
    carcinoma = np.isin(tissue, ["Breast", "Colon", "Bile-duct", "Kidney"])
    assert (neoplastic & carcinoma).any() and (neoplastic & ~carcinoma).any()
    assert (ds.nuclei.label.values[neoplastic & carcinoma] == 0).all()
    assert (ds.nuclei.label.values[neoplastic & ~carcinoma] == -1).all()
