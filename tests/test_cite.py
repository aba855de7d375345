"""nucdata.cite() and `nucdata cite`: BibTeX for datasets and for the method."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import nucdata
from nucdata.catalog import write_override
from nucdata.catalog._cite import METHOD_BIBTEX, METHOD_UNVERIFIED, split_entries
from nucdata.cli import main

ENTRY = re.compile(r"^@(article|inproceedings|misc)\{(\w+),$", re.MULTILINE)


def _keys(text: str) -> list[str]:
    return [m.group(2) for m in ENTRY.finditer(text)]


def _balanced(entry: str) -> bool:
    depth = 0
    for ch in entry:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_one_dataset_is_its_card_citation(home):
    text = nucdata.cite("tnbc")
    assert _keys(text) == ["naylor2019segmentation"]
    assert text.strip() == nucdata.get_card("tnbc").citation.strip()


def test_everything_by_default_each_entry_once(home):
    text = nucdata.cite()
    keys = _keys(text)
    assert len(keys) == len(set(keys))  # Kumar and MoNuSeg share kumar2017dataset
    assert "kumar2017dataset" in keys and "kumar2020monuseg" in keys
    assert {"gamper2019pannuke", "graham2019hovernet", "verma2021monusac", "amgad2022nucls",
            "naylor2019segmentation", "zhang2023merging"} <= set(keys)
    for _, entry in split_entries(text):
        assert _balanced(entry), entry
    # Every dataset's card entries are all there.
    for name in nucdata.list_datasets():
        for key, _ in split_entries(nucdata.get_card(name).citation):
            assert key in keys


def test_method_entry_names_paper_and_marks_unverified_details(home):
    text = nucdata.cite("method")
    assert _keys(text) == ["zhang2023merging"]
    assert "Merging nucleus datasets by correlation-based cross-training" in text
    assert "Zhang, Wenhua" in text and "Han, Xiao" in text and "Medical Image Analysis" in text
    # Unverified details sit in a comment above the entry, never as fields of it.
    comment, entry = text.split("\n", 1)
    assert comment.startswith("%") and METHOD_UNVERIFIED in comment
    assert "doi" not in METHOD_BIBTEX.lower() and "volume" not in entry


def test_unknown_name_lists_valid_ones(home):
    with pytest.raises(nucdata.UnknownDatasetError, match="method") as info:
        nucdata.cite("tnbc", "nonsense")
    assert "tnbc" in str(info.value) and "nonsense" in str(info.value)


def test_local_card_override_applies(home):
    write_override("tnbc", {"citation": "@misc{mycopy,\n  title = {Local copy}\n}"})
    assert _keys(nucdata.cite("tnbc")) == ["mycopy"]


def test_cli(home):
    runner = CliRunner()
    result = runner.invoke(main, ["cite", "tnbc"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("@article{naylor2019segmentation,")
    result = runner.invoke(main, ["cite"])
    assert result.exit_code == 0 and "zhang2023merging" in result.output
    assert len(_keys(result.output)) == len(_keys(nucdata.cite()))
    result = runner.invoke(main, ["cite", "nope"])
    assert result.exit_code == 2 and "unknown dataset 'nope'" in result.output
