"""Archive and disk errors are typed with the right fix; verify says what it checked (issue 21, 7-8).

A full disk is simulated two ways: ``/dev/full`` (every write fails with ``ENOSPC``) and
writers whose ``write`` fails with ``ENOSPC`` after some bytes, patched in where the
module opens its files.
"""

from __future__ import annotations

import errno
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nucdata
from nucdata.acquire import extract
from nucdata.cli import main
from nucdata.errors import CorruptArchiveError, NucdataError


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


# -- archives ------------------------------------------------------------------------------
def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("members", [
    [("a", b"file"), ("a/b", b"inside")],  # before: raw FileExistsError / NotADirectoryError
    [("a/b", b"inside"), ("a", b"file")],  # before: raw IsADirectoryError
])
def test_a_member_that_is_a_file_and_a_folder_is_typed(tmp_path, members):
    archive = _zip(tmp_path / "x.zip", members)
    with pytest.raises(NucdataError, match="both a file and a folder") as info:
        extract(archive, tmp_path / "out")
    assert _kind(info.value) == "UnsupportedArchiveError" and "download it again" in str(info.value)


def test_an_encrypted_member_is_typed(tmp_path):
    """Before: zipfile's RuntimeError ('password required for extraction') came out raw."""
    archive = _zip(tmp_path / "x.zip", [("secret.txt", b"not really encrypted")])
    raw = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # general-purpose flags
        at = raw.find(signature)
        raw[at + offset] |= 0x1  # the encryption bit, as a password-protected member has
    archive.write_bytes(bytes(raw))
    with pytest.raises(NucdataError, match="encrypted") as info:
        extract(archive, tmp_path / "out")
    assert _kind(info.value) == "UnsupportedArchiveError" and "--from" in str(info.value)


def test_an_unknown_compression_method_is_typed(tmp_path):
    """Before: NotImplementedError ('That compression method is not supported') came out raw."""
    archive = _zip(tmp_path / "x.zip", [("data.bin", b"0123456789")])
    raw = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local header, central directory
        at = raw.find(signature)
        raw[at + offset : at + offset + 2] = (99).to_bytes(2, "little")  # AES / unknown
    archive.write_bytes(bytes(raw))
    with pytest.raises(NucdataError, match="compression method 99") as info:
        extract(archive, tmp_path / "out")
    assert _kind(info.value) == "UnsupportedArchiveError"


def test_a_300_character_tar_name_is_typed(tmp_path):
    """Before: the OSError (File name too long) of creating the member came out raw."""
    archive = tmp_path / "x.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("folder/" + "n" * 300)
        info.size = 4
        tf.addfile(info, io.BytesIO(b"data"))
    with pytest.raises(NucdataError, match="300 characters") as info:
        extract(archive, tmp_path / "out")
    assert _kind(info.value) == "UnsupportedArchiveError"


class _FillingFile(io.RawIOBase):
    """A writable file whose disk fills after ``room`` bytes."""

    def __init__(self, room: int):
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


def _fill_after(monkeypatch, module, room: int) -> None:
    real = open

    def fake_open(path, mode="r", *args, **kwargs):
        return _FillingFile(room) if set(mode) & set("wxa") else real(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake_open, raising=False)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_disk_full_while_extracting_says_so_and_never_to_delete_the_archive(tmp_path, monkeypatch, kind):
    """Before: a zip member's ENOSPC became 'damaged or truncated ... Delete or move away <archive>'."""
    import nucdata.acquire._archive as archive_module

    payload = np.random.default_rng(0).bytes(3 << 20)
    if kind == "zip":
        archive = _zip(tmp_path / "x.zip", [("one.bin", payload), ("two.bin", payload)])
    else:
        archive = tmp_path / "x.tar"
        with tarfile.open(archive, "w") as tf:
            for name in ("one.bin", "two.bin"):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    _fill_after(monkeypatch, archive_module, 1 << 20)
    with pytest.raises(NucdataError, match="disk is full") as info:
        extract(archive, tmp_path / "out")
    message = str(info.value)
    assert _kind(info.value) == "DiskFullError" and isinstance(info.value, OSError)
    assert "Delete" not in message and "download it again" not in message
    assert "free on that file system" in message
    assert f"({2 * len(payload) - (1 << 20):,} bytes) more are needed" in message  # the rest of both members
    assert "1,048,576 bytes written so far" in message
    assert archive.is_file()


def test_disk_full_while_streaming_a_column(tmp_path):
    """Before: the raw OSError ENOSPC of the stream writer."""
    from nucdata._util.npy import NpyStreamWriter

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    writer = NpyStreamWriter(Path("/dev/full"), np.uint8)
    with pytest.raises(NucdataError, match="disk is full") as info:
        writer.append(np.zeros(1 << 20, np.uint8))
        writer.close((1 << 20,))
    assert _kind(info.value) == "DiskFullError" and "1,048,576 bytes" in str(info.value)
    writer.abort()


def test_disk_full_while_writing_a_file_atomically(tmp_path, monkeypatch):
    import nucdata._util.atomic as atomic

    _fill_after(monkeypatch, atomic, 10)
    with pytest.raises(NucdataError, match="disk is full while writing owner.json") as info:
        atomic.atomic_write_bytes(tmp_path / "owner.json", b"x" * 1000)
    assert _kind(info.value) == "DiskFullError" and "1,000 bytes" in str(info.value)
    assert not list(tmp_path.iterdir())  # the temporary file is gone


def test_disk_full_while_creating_a_lock_file(tmp_path, monkeypatch):
    """Before: said the data home was read-only."""
    import nucdata._util.locks as locks

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks, "open", full, raising=False)
    with pytest.raises(NucdataError, match="disk is full while creating the lock file") as info, \
            locks.dataset_lock(tmp_path):
        pass
    assert "read-only" not in str(info.value)


def test_disk_full_while_prepare_writes_columns(tmp_path, monkeypatch):
    """Before: a raw OSError out of np.save, through prepare."""
    from nucdata.testing import install

    install("tnbc", tmp_path)
    real_save = np.save

    def save(file, arr, *args, **kwargs):
        if "nuclei" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    with pytest.raises(NucdataError, match="disk is full while building the tnbc store") as info:
        nucdata.prepare("tnbc", root=tmp_path)
    assert _kind(info.value) == "DiskFullError"
    # the room it needs, estimated from the card (50 images of 512 x 512, 7 bytes a pixel)
    assert "more are needed (from the card's image size and count" in str(info.value)
    assert "about " in str(info.value)
    assert not nucdata.acquire.is_prepared("tnbc", tmp_path)
    assert [p.name for p in (tmp_path / "manual").iterdir()]  # the archive is intact


# -- size and hash messages name a flag that works -----------------------------------------------
def _override_with_size(home: Path, name: str, size: int, sha256: str | None) -> None:
    from nucdata.catalog import get_card, write_override

    card = get_card(name, home)
    files = [{"name": f.name, "role": f.role, "format": f.format, "size": size, "sha256": sha256,
              "hash_source": "test", "mirrors": []} for f in card.files]
    write_override(name, {"files": files}, home)


def test_a_manual_file_of_the_wrong_size_is_not_told_to_pass_no_hash_check(tmp_path):
    """Before: with --no-hash-check given, the size mismatch still said 'pass --no-hash-check'."""
    from nucdata.testing import install

    install("tnbc", tmp_path)
    archive = next((tmp_path / "manual").iterdir())
    _override_with_size(tmp_path, "tnbc", archive.stat().st_size + 1, None)
    result = CliRunner().invoke(main, ["download", "tnbc", "--no-hash-check", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "size mismatch" in result.output
    assert "pass --no-hash-check" not in result.output
    assert "nucdata prepare tnbc --from" in result.output


def test_a_hash_mismatch_still_names_no_hash_check_which_works(tmp_path):
    from nucdata.testing import install

    install("tnbc", tmp_path)
    archive = next((tmp_path / "manual").iterdir())
    _override_with_size(tmp_path, "tnbc", archive.stat().st_size, "0" * 64)
    result = CliRunner().invoke(main, ["download", "tnbc", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "SHA-256 mismatch" in result.output and "--no-hash-check" in result.output
    again = CliRunner().invoke(main, ["download", "tnbc", "--no-hash-check", "--root", str(tmp_path)])
    assert again.exit_code == 0, again.output  # the flag it names works


# -- empty paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["list", "--root", ""], ["verify", "tnbc", "--root", ""],
                                  ["overlay", "tnbc", "--out", ""], ["export", "tnbc", "--format", "coco", "--out", " "]])
def test_empty_paths_are_refused_on_the_command_line(tmp_path, monkeypatch, args):
    """Before: --out "" and --root "" silently meant the current folder."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "empty" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_empty_paths_are_refused_by_the_functions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (lambda: nucdata.data_home(""), lambda: nucdata.prepare("tnbc", root=""),
                 lambda: nucdata.verify("tnbc", root=" ")):
        with pytest.raises(NucdataError, match="empty"):
            call()
    assert list(tmp_path.iterdir()) == []


# -- verify says exactly what it checked (point 8) --------------------------------------------------
@pytest.mark.parametrize(("sha", "says"), [
    (None, "size only; no publisher hash"),
    ("demo", "SHA-256 checked against a hash that is not the publisher's"),
])
def test_verify_says_what_it_checked(tmp_path, sha, says):
    """Before: 'OK', though no hash (or only a third party's) had been checked."""
    from nucdata.acquire import sha256sum
    from nucdata.testing import install

    install("tnbc", tmp_path)
    archive = next((tmp_path / "manual").iterdir())
    _override_with_size(tmp_path, "tnbc", archive.stat().st_size, sha256sum(archive) if sha else None)
    result = CliRunner().invoke(main, ["verify", "tnbc", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if archive.name in line)
    assert says in line and "no publisher hash" in line, line


def test_verify_of_the_real_consep_card_says_no_hash_was_checked(tmp_path):
    """The real CoNSeP card gives no SHA-256 and no size, only a third-party MD5 in hash_source."""
    from nucdata.acquire._verify import checked_text  # what verify's archive lines say
    from nucdata.catalog import get_card

    line = checked_text(get_card("consep", packaged=True).files[0])
    assert "no publisher hash" in line and "SHA-256" not in line.split(";")[0] and "MD5" in line


def test_a_corrupt_archive_still_says_download_again(tmp_path):
    archive = tmp_path / "x.zip"
    archive.write_bytes(_zip(tmp_path / "y.zip", [("a.bin", b"x" * 5000)]).read_bytes()[:-60])
    with pytest.raises(CorruptArchiveError, match="download it again"):
        extract(archive, tmp_path / "out")


def test_json_marker_types_are_unchanged(tmp_path):
    """The typed errors still derive from the built-ins callers catch."""
    assert issubclass(nucdata.DiskFullError, OSError) and issubclass(nucdata.UnsupportedArchiveError,
                                                                    CorruptArchiveError)
    assert json.loads(json.dumps({"ok": True}))["ok"]
