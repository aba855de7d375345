"""The download path: mirrors, manual route, size/hash/HTML checks, over a loopback server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nucdata
from nucdata._util.home import manual_dir, raw_dir, registry_dir
from nucdata.testing import install


def _override(home: Path, name: str) -> dict:
    return json.loads((registry_dir(home) / f"{name}.json").read_text())


def _write_override(home: Path, name: str, data: dict) -> None:
    (registry_dir(home) / f"{name}.json").write_text(json.dumps(data))


def _no_partials(home: Path) -> None:
    assert not [p for p in raw_dir(home).glob("*") if p.name.endswith(".part")]


def test_download_over_http_verifies_and_renames(home, http_server):
    url, served = http_server
    install("tnbc", home, into=served, base_url=url)
    files = nucdata.fetch("tnbc")
    assert len(files) == 1
    got = files[0]
    assert got.path == raw_dir(home) / "TNBC_NucleiSegmentation.zip"
    assert got.origin.startswith("http://127.0.0.1")
    assert got.verified
    assert got.sha256 == _override(home, "tnbc")["files"][0]["sha256"]
    _no_partials(home)
    # A second fetch uses the cache, not the network.
    assert nucdata.fetch("tnbc")[0].origin == "cache"


def test_mirrors_are_tried_in_order(home, http_server):
    url, served = http_server
    install("tnbc", home, into=served, base_url=url)
    data = _override(home, "tnbc")
    data["files"][0]["mirrors"] = [f"{url}/missing.zip", "http://127.0.0.1:9/refused.zip",
                                   f"{url}/TNBC_NucleiSegmentation.zip"]
    _write_override(home, "tnbc", data)
    assert nucdata.fetch("tnbc")[0].origin.endswith("/TNBC_NucleiSegmentation.zip")


def test_hash_mismatch_names_expected_and_got(home, http_server):
    url, served = http_server
    install("tnbc", home, into=served, base_url=url)
    data = _override(home, "tnbc")
    real = data["files"][0]["sha256"]
    data["files"][0]["sha256"] = "0" * 64
    _write_override(home, "tnbc", data)
    with pytest.raises(nucdata.HashMismatchError) as info:
        nucdata.fetch("tnbc")
    assert info.value.expected == "0" * 64
    assert info.value.got == real
    assert "0" * 64 in str(info.value) and real in str(info.value)
    assert not (raw_dir(home) / "TNBC_NucleiSegmentation.zip").exists()
    _no_partials(home)


def test_size_checked_before_hash(home, http_server):
    url, served = http_server
    install("tnbc", home, into=served, base_url=url)
    data = _override(home, "tnbc")
    data["files"][0]["size"] += 1
    _write_override(home, "tnbc", data)
    with pytest.raises(nucdata.SizeMismatchError):
        nucdata.fetch("tnbc")
    _no_partials(home)


def test_html_page_instead_of_archive(home, http_server):
    url, served = http_server
    install("tnbc", home, into=served, base_url=url)
    (served / "TNBC_NucleiSegmentation.zip").write_text(
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"
    )
    data = _override(home, "tnbc")
    data["files"][0]["size"] = None
    _write_override(home, "tnbc", data)
    with pytest.raises(nucdata.HTMLInsteadOfArchiveError, match="HTML page") as info:
        nucdata.fetch("tnbc")
    assert "`nucdata info tnbc`" in str(info.value) and "<dataset>" not in str(info.value)
    assert not (raw_dir(home) / "TNBC_NucleiSegmentation.zip").exists()


def test_manual_folder_is_used_before_network(home):
    install("tnbc", home)  # into manual/, no mirrors
    data = _override(home, "tnbc")
    data["files"][0]["mirrors"] = ["http://127.0.0.1:9/never-contacted.zip"]
    _write_override(home, "tnbc", data)
    got = nucdata.fetch("tnbc")[0]
    assert got.origin == "manual"
    assert got.path == manual_dir(home) / "TNBC_NucleiSegmentation.zip"


def test_bad_manual_file_is_reported_and_kept(home):
    install("tnbc", home)
    manual = manual_dir(home) / "TNBC_NucleiSegmentation.zip"
    data = _override(home, "tnbc")
    data["files"][0]["sha256"] = "f" * 64
    _write_override(home, "tnbc", data)
    before = manual.read_bytes()
    with pytest.raises(nucdata.HashMismatchError, match="manual folder"):
        nucdata.fetch("tnbc")
    assert manual.read_bytes() == before
    # The user can accept it explicitly.
    assert not nucdata.fetch("tnbc", check_hash=False)[0].verified


def test_offline_without_files_gives_instructions(home):
    with pytest.raises(nucdata.DownloadError, match="zenodo.org/records/1175282"):
        nucdata.fetch("tnbc", allow_network=False)


def test_unreachable_mirrors_fall_back_to_manual_instructions(home):
    install("tnbc", home, into=home / "elsewhere", base_url="http://127.0.0.1:9")
    with pytest.raises(nucdata.DownloadError, match="Manual route"):
        nucdata.fetch("tnbc")


def test_unknown_dataset_lists_known_names():
    with pytest.raises(nucdata.UnknownDatasetError) as info:
        nucdata.get_card("monusegg")
    assert "monuseg" in str(info.value) and "tnbc" in str(info.value)


def test_truncated_archive_is_typed_and_raw_file_kept(home, http_server):
    url, served = http_server
    install("tnbc", home, into=served, base_url=url)
    archive = served / "TNBC_NucleiSegmentation.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    data = _override(home, "tnbc")
    from nucdata.acquire import sha256sum

    data["files"][0]["size"] = archive.stat().st_size
    data["files"][0]["sha256"] = sha256sum(archive)
    _write_override(home, "tnbc", data)
    with pytest.raises(nucdata.CorruptArchiveError, match="download it again"):
        nucdata.prepare("tnbc")
    assert (raw_dir(home) / "TNBC_NucleiSegmentation.zip").stat().st_size == archive.stat().st_size
    from nucdata.acquire import is_prepared

    assert not is_prepared("tnbc")
