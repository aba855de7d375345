"""Stores and merged outputs written by another schema version are refused with a typed error that says to rebuild."""

from __future__ import annotations

import json

import pytest

import nucdata
from nucdata.store import FORMAT_VERSION, MARKER, SCHEMA_VERSION, check_format
from nucdata.testing import install


def test_a_store_of_another_schema_is_refused_with_the_rebuild_command(home):
    install("tnbc", home)
    path = nucdata.prepare("tnbc")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(nucdata.SchemaVersionError, match="nucdata prepare tnbc --force"):
        nucdata.load("tnbc")
    assert issubclass(nucdata.SchemaVersionError, nucdata.StoreError)


def test_a_merged_output_of_another_format_is_refused(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION - 1}))
    with pytest.raises(nucdata.SchemaVersionError, match="build-merged"):
        nucdata.load("tnbc", label_set="pannuke", merged=tmp_path)
    with pytest.raises(nucdata.SchemaVersionError):
        check_format(tmp_path)


def test_a_folder_without_our_marker_is_not_a_merged_output(tmp_path):
    with pytest.raises(nucdata.MissingFilesError, match="not a nucdata build-merged output"):
        nucdata.load("tnbc", label_set="pannuke", merged=tmp_path)
    assert check_format(tmp_path, required=False) == {}
