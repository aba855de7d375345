"""Files from elsewhere are data, never code: the allow-list unpickler and weights-only checkpoints."""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import nucdata
from nucdata._util import safe_pickle
from nucdata.errors import CorruptArchiveError, NucdataError, UnsafePickleError


class _Payload:
    """Unpickling this calls ``os.system``, which creates ``marker`` (plain pickle.load runs it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    """A payload through ``builtins.exec``: another global a hostile pickle may use."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _published_table() -> dict:
    return {"img_1.png": [[[10.5, 3.25], 2, 0.875, -1], [[1.0, 2.0], -2, float("nan"), 3]], "img_2.png": []}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_containers_and_numpy_load_under_every_protocol(protocol):
    obj = {
        "table": _published_table(), "array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "scalar": np.int64(7), "dtype": np.dtype("<U5"), "set": {1, 2}, "frozen": frozenset("ab"),
        "ordered": collections.OrderedDict(a=1), "complex": 1 + 2j, "bytes": b"\x00\xff",
        "records": np.zeros(2, dtype=[("x", "f4"), ("y", "i8")]), "objects": np.array([1, "a"], dtype=object),
    }
    got = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
    assert got["table"]["img_1.png"][0] == [[10.5, 3.25], 2, 0.875, -1]
    np.testing.assert_array_equal(got["array"], obj["array"])
    assert got["array"].dtype == np.float32 and got["scalar"] == 7 and got["dtype"] == np.dtype("<U5")
    assert got["set"] == {1, 2} and got["frozen"] == frozenset("ab") and got["bytes"] == b"\x00\xff"
    assert got["records"].dtype == obj["records"].dtype and list(got["objects"]) == [1, "a"]


def test_numpy1_module_names_are_accepted():
    """The authors' files were written with numpy 1 (``numpy.core.multiarray``)."""
    blob = pickle.dumps(np.arange(4, dtype=np.int16), protocol=2)
    legacy = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    np.testing.assert_array_equal(safe_pickle.loads(legacy), np.arange(4, dtype=np.int16))


@pytest.mark.parametrize("payload", [_Payload, _Exec])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"img.png": [payload(marker)]}))
    with pytest.raises(UnsafePickleError) as info:
        safe_pickle.load(path)
    assert str(path) in str(info.value)
    assert info.value.name in ("posix.system", "nt.system", "builtins.exec")
    assert not marker.exists()
    assert isinstance(info.value, NucdataError)


def test_array_subclass_hooks_are_refused():
    blob = pickle.dumps(np.ma.masked_array([1, 2], mask=[0, 1]))
    with pytest.raises(UnsafePickleError, match="numpy.ma"):
        safe_pickle.loads(blob, "masked.pkl")


def test_truncated_pickle_is_a_typed_error(tmp_path):
    path = tmp_path / "short.pkl"
    path.write_bytes(pickle.dumps(_published_table())[:-5])
    with pytest.raises(CorruptArchiveError, match="short.pkl"):
        safe_pickle.load(path)


def test_open_merged_refuses_a_crafted_pickle(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "merged"
    (folder / "pannuke").mkdir(parents=True)
    (folder / "pannuke" / "consep.pkl").write_bytes(pickle.dumps({"img.png": [[[1, 2], _Payload(marker), 0.5, -1]]}))
    (folder / "pannuke" / "monuseg.pkl").write_bytes(pickle.dumps(_published_table(), protocol=2))
    merged = nucdata.open_merged(folder)
    with pytest.raises(UnsafePickleError, match="consep.pkl"):
        merged.table("pannuke", "consep")
    assert not marker.exists()
    table = merged.table("pannuke", "monuseg")  # an honest file beside it still reads
    assert table.sizes["nucleus"] == 2 and int(table["predicted"][0]) == 2


def test_crafted_checkpoint_is_refused_and_never_runs(tmp_path):
    from nucdata.errors import CheckpointError
    from nucdata_models.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"state": {"w": torch.zeros(2)}, "meta_json": "{}", "hook": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="system") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and isinstance(info.value, NucdataError)
    assert not marker.exists()


def test_checkpoint_errors_are_nucdata_errors(tmp_path):
    from nucdata_models.checkpoint import (
        CheckpointError,
        CheckpointMismatchError,
        load_checkpoint,
        save_checkpoint,
    )

    assert issubclass(CheckpointMismatchError, NucdataError) and issubclass(CheckpointError, NucdataError)
    path = save_checkpoint(tmp_path / "m.pt", {"w": {"x": torch.ones(1)}}, {"label_sets": []})
    state, meta = load_checkpoint(path)
    assert torch.equal(state["w"]["x"], torch.ones(1)) and meta["label_sets"] == []
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="m.pt"):
        load_checkpoint(path)
