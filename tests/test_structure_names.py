"""Dataset name lists are derived from the registry; each dataset's world knowledge lives in its fake writer.

(a) No module of ``nucdata`` or ``nucdata_models`` writes a list of datasets by hand: no
tuple, list, set or dict literal names three or more datasets of the registry (a fake
writer ``nucdata/testing/<converter>.py`` may name its own dataset). (b) Every dataset of
the registry has a world entry in its fake writer, consistent with its card and its
packaged vocabulary. (c) The training-data generator (``make_synthetic_data``) and the
demo world are one simulator: the same latent types, drawn with the world's mixes.
"""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from nucdata.catalog import datasets_in_order, get_card, list_datasets
from nucdata.labels import OWN_LABEL_SET, native_vocabulary

ROOT = Path(__file__).resolve().parents[1]
NAMES = set(list_datasets())

#: Literals that hold registry names and are not dataset lists, each with its reason.
ALLOWED = {
    ("nucdata/labels/_tables.py", "MERGED_LABEL_SETS"):
        "label-set names: the merged dataset's four sets, as its authors published them",
    ("nucdata/labels/_tables.py", "OWN_LABEL_SET"):
        "the label set each labelled dataset's vocabulary is; the label tables sit beside the catalog "
        "(one layer) and cannot read it; test_demo_world checks it against the world's entries",
}


def _fake_writers() -> dict[str, str]:
    """``nucdata/testing/<converter>.py`` -> the dataset it writes."""
    return {f"nucdata/testing/{get_card(n, packaged=True).converter}.py": n for n in NAMES}


def _named(node: ast.AST) -> list[ast.AST]:
    """The elements of a container literal (a dict's keys and values; dict(...)'s keywords)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return list(node.elts)
    if isinstance(node, ast.Dict):
        return [k for k in node.keys if k is not None] + list(node.values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return [ast.Constant(k.arg) for k in node.keywords if k.arg]
    return []


def _assigned_names(tree: ast.AST) -> dict[int, str]:
    """id(value node) -> the name it is assigned to (module or class level and below)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[id(node.value)] = target.id
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[id(node.value)] = node.target.id
    return out


def _dataset_lists(path: Path, rel: str, own: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assigned = _assigned_names(tree)
    bad = []
    for node in ast.walk(tree):
        found = {e.value for e in _named(node)
                 if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in NAMES} - own
        if len(found) >= 3 and (rel, assigned.get(id(node))) not in ALLOWED:
            bad.append(f"{rel}:{node.lineno} {assigned.get(id(node), '<literal>')} names {sorted(found)}")
    return bad


def test_no_module_lists_datasets_by_hand():
    fakes = _fake_writers()
    bad = []
    for package in ("nucdata", "nucdata_models"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            bad += _dataset_lists(path, rel, {fakes[rel]} if rel in fakes else set())
    assert not bad, ("dataset names written by hand; derive the list from the registry "
                     "(nucdata.catalog.datasets_in_order, the cards' fields) instead:\n" + "\n".join(bad))


def test_the_scanner_catches_a_hand_written_list(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('A = ("pannuke", "consep", "tnbc")\nB = {"kumar": 1, "nucls": 2, "x": dict(tnbc=1)}\n'
                      'C = dict(pannuke=1, consep=2, monusac=3)\nD = ("pannuke", "consep")\n')
    found = _dataset_lists(module, "m.py", set())
    assert [f.split()[1] for f in found] == ["A", "C"]  # B names two at each level, D two
    assert _dataset_lists(module, "m.py", {"pannuke"}) == []  # a fake writer's own name does not count


def test_the_cards_order_the_datasets():
    orders = [get_card(n, packaged=True).order for n in NAMES]
    assert len(set(orders)) == len(orders) and all(isinstance(o, int) and o > 0 for o in orders)
    order = datasets_in_order()
    labelled = [n for n in order if native_vocabulary(n)]
    assert order[: len(labelled)] == labelled, "labelled datasets come first (the cards' order)"
    for name in order:  # numbered by kind, so a new dataset renumbers none (see nucdata.catalog._registry)
        assert (get_card(name, packaged=True).order < 101) == (name in labelled), name
    for name in order:
        original = get_card(name, packaged=True).duplicates_of
        assert original is None or (original in NAMES and original != name)


def test_the_lists_of_the_models_are_derived_from_the_registry():
    from nucdata_models.merge.defaults import ALL_DATASETS
    from nucdata_models.merge.splits import PRIORITY
    from nucdata_models.study.synthetic import default_datasets

    assert list(ALL_DATASETS) == datasets_in_order()
    assert sorted(PRIORITY) == sorted(NAMES)
    for name in NAMES:  # a copy of another dataset's images comes after it
        original = get_card(name).duplicates_of
        if original:
            assert PRIORITY.index(original) < PRIORITY.index(name)
            assert name not in default_datasets()
    assert [n for n in PRIORITY if not get_card(n).duplicates_of] == [
        n for n in ALL_DATASETS if not get_card(n).duplicates_of]
    import nucdata_models.merge.defaults as defaults
    from nucdata.labels import MERGED_LABEL_SETS

    assert "MERGED_SETS" not in vars(defaults)  # one definition: nucdata.labels.MERGED_LABEL_SETS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert defaults.MERGED_SETS is MERGED_LABEL_SETS
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


# -- (b) every dataset has its world entry in its fake writer ------------------------------
@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_dataset_has_its_world_entry_in_its_fake_writer(name):
    from nucdata.testing.world import TYPE_NAMES, DatasetWorld, entries

    module = importlib.import_module(f"nucdata.testing.{get_card(name).converter}")
    entry = getattr(module, "WORLD", None)
    assert isinstance(entry, DatasetWorld), f"nucdata.testing.{get_card(name).converter} defines no WORLD"
    assert entries()[name] is entry
    codes = {code for code, _, _ in native_vocabulary(name)}
    assert entry.labelled == bool(codes) == (name in OWN_LABEL_SET)
    if entry.labelled:
        assert set(entry.native) == set(TYPE_NAMES)
        drawn = {c for c in entry.native.values() if c is not None}
        assert drawn <= codes, f"{name}: codes {sorted(drawn - codes)} are not in its packaged vocabulary"
        assert all(entry.native[t] is not None for t, w in (entry.frequencies or {}).items() if w > 0)
        assert set(entry.habit) <= {t for t, c in entry.native.items() if c is not None}
        assert set(entry.habit.values()) <= codes
    for mix in (entry.frequencies, entry.real_frequencies, entry.unlabelled_mix):
        assert mix is None or set(mix) <= set(TYPE_NAMES)
    assert entry.demo_nuclei and entry.demo_nuclei > 0
    assert get_card(name, packaged=True).nuclei, f"{name}: its card gives no nucleus count ('nuclei')"


# -- (c) one simulator ------------------------------------------------------------------------
def test_the_generator_and_the_demo_world_share_their_latent_types():
    from nucdata.testing import world
    from nucdata_models.study import synthetic

    assert synthetic.TYPE_NAMES is world.TYPE_NAMES and list(world.World().types) == world.TYPE_NAMES
    # no appearance or vocabulary table of its own: no latent type named in its code
    tree = ast.parse((ROOT / "nucdata_models" / "study" / "synthetic.py").read_text(encoding="utf-8"))
    named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in world.TYPE_NAMES}
    assert not named, f"synthetic.py names latent types {sorted(named)}: take them from nucdata.testing.world"


def test_the_generator_draws_each_dataset_with_the_worlds_type_mix():
    from nucdata.testing.world import TYPE_NAMES, World, entries
    from nucdata_models.study.synthetic import make_synthetic_data

    labelled = [d for d, e in entries().items() if e.labelled]
    n = 3000
    data = make_synthetic_data(per_dataset=n, datasets=labelled, label_sets=[OWN_LABEL_SET[d] for d in labelled],
                               size=8, seed=7)
    world = World()
    for d, name in enumerate(labelled):
        own = OWN_LABEL_SET[name]
        mix = world.type_mix(name)
        classes = world.truth_labels(np.arange(len(TYPE_NAMES)), own)
        truth = data.truth[own][data.dataset_index == d].numpy()
        for c in sorted(set(classes[classes >= 0].tolist())):
            p = sum(mix.get(t, 0.0) for t, k in zip(TYPE_NAMES, classes.tolist(), strict=True) if k == c)
            share = float((truth == c).mean())
            assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (name, c, share, p)
