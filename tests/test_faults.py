"""Fault injection: raise or kill at every named step of store publication and replacement.

After any fault a complete store exists (the old one, or the new one once published),
and the next run restores or removes what the interrupted one left. Kills run in child
processes with ``NUCDATA_FAULT=<point>=kill`` (``os._exit``: no cleanup runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nucdata
from nucdata._util import atomic, faults
from nucdata.acquire import store_path
from nucdata.store import MANIFEST, Store, StoreWriter, clean_stale, is_complete

STORE_STEPS = [
    "store:columns-written", "store:manifest-written", "store:before-swap",
    "store:old-moved", "store:published", "store:old-removed",
]
PUBLISHED_FROM = STORE_STEPS.index("store:published")  # from here on the new store is live


def build(final: Path, value: int) -> Path:
    """A one-image store whose pixels are all ``value``."""
    rgb = np.full((8, 8, 3), value, np.uint8)
    inst = np.zeros((8, 8), np.int32)
    inst[2:5, 2:5] = 1
    with StoreWriter(final, "toy", "1") as writer:
        writer.add_image("a", "train", rgb, inst)
        return writer.publish({})


def value_of(final: Path) -> int:
    return int(Store(final).rgb(0)[0, 0, 0])


def hidden(dataset_dir: Path) -> list[str]:
    return sorted(p.name for p in dataset_dir.iterdir() if p.name.startswith("."))


def test_publication_passes_every_named_step(tmp_path):
    with faults.record() as seen:
        build(tmp_path / "toy" / "1", 1)
        build(tmp_path / "toy" / "1", 2)
    first = [step for step in STORE_STEPS if step != "store:old-moved"]  # nothing to move aside
    assert seen == first + STORE_STEPS
    assert value_of(tmp_path / "toy" / "1") == 2


@pytest.mark.parametrize("step", STORE_STEPS)
def test_raise_at_each_step_keeps_a_complete_store(tmp_path, step):
    final = tmp_path / "toy" / "1"
    build(final, 1)
    with faults.inject(step), pytest.raises(faults.InjectedFault, match=step):
        build(final, 2)
    # the failed run already restored or kept a complete store
    assert is_complete(final)
    assert value_of(final) == (2 if STORE_STEPS.index(step) >= PUBLISHED_FROM else 1)
    clean_stale(final.parent)
    assert hidden(final.parent) == []
    assert value_of(final) in (1, 2)


def test_raise_on_first_build_publishes_nothing_and_leaves_nothing(tmp_path):
    final = tmp_path / "toy" / "1"
    with faults.inject("store:manifest-written"), pytest.raises(faults.InjectedFault):
        build(final, 1)
    assert not final.exists()
    assert hidden(final.parent) == []


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_faults import build
    build(Path(sys.argv[1]), 2)
    """
)


def test_kill_at_each_step_then_next_run_recovers(tmp_path):
    """A real kill (os._exit) at every step, all children at once; then recover."""
    children = {}
    for step in STORE_STEPS:
        final = tmp_path / step.replace(":", "_") / "toy" / "1"
        build(final, 1)
        env = {**os.environ, faults.ENV_VAR: f"{step}=kill"}
        code = _CHILD.format(tests=str(Path(__file__).parent))
        children[step] = (final, subprocess.Popen([sys.executable, "-c", code, str(final)], env=env))
    for step, (final, proc) in children.items():
        assert proc.wait(timeout=300) == faults.KILL_EXIT_CODE, step
        published = STORE_STEPS.index(step) >= PUBLISHED_FROM
        if step == "store:old-moved":
            assert not final.exists()  # killed between the two renames: only hidden copies
        else:
            assert value_of(final) == (2 if published else 1), step
        lines = clean_stale(final.parent)
        assert is_complete(final), step
        assert value_of(final) == (2 if published else 1), step
        assert hidden(final.parent) == [], (step, lines)
        if step == "store:old-moved":
            assert any(line.startswith("restored the previous copy") for line in lines)


def test_recovery_never_deletes_a_folder_it_did_not_create(tmp_path):
    final = tmp_path / "toy" / "1"
    build(final, 1)
    foreign = final.parent / ".1.old-userfolder"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    result = atomic.recover(final)
    assert (foreign / "precious.txt").read_text() == "mine"
    assert any("not made by nucdata" in k for k in result.kept)


def test_recovery_keeps_folders_of_a_live_process(tmp_path):
    final = tmp_path / "toy" / "1"
    build(final, 1)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp = atomic.staging_dir(final)
        owner = (tmp.parent / (tmp.name + atomic.OWNER_SUFFIX))
        text = owner.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {sleeper.pid}')
        started = atomic._process_start(sleeper.pid)
        if started is not None:
            text = text.replace(f'"started": "{atomic._process_start(os.getpid())}"', f'"started": "{started}"')
        owner.write_text(text)
        assert atomic.read_owner(tmp).pid == sleeper.pid
        kept = atomic.recover(final).kept
        assert tmp.is_dir() and any(f"process {sleeper.pid}" in k for k in kept)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert atomic.recover(final).removed == [tmp.name]  # its owner is gone now
    assert hidden(final.parent) == []


def test_missing_store_is_restored_only_from_a_complete_copy(tmp_path):
    final = tmp_path / "toy" / "1"
    build(final, 1)
    old = final.parent / ".1.old-broken"
    atomic._write_owner(old, "old", final, "broken")  # owner id of no live operation
    os.rename(final, old)
    (old / MANIFEST).unlink()  # an incomplete copy is never promoted
    result = atomic.recover(final, complete=is_complete)
    assert not final.exists()
    assert result.restored == [] and result.removed == [old.name]
    assert hidden(final.parent) == []


@pytest.fixture(scope="module")
def tnbc_manual(tmp_path_factory) -> Path:
    """The demo TNBC archive, generated once for this module."""
    from nucdata.testing import install

    home = tmp_path_factory.mktemp("tnbc-home")
    install("tnbc", home)
    return home


def _home_with_tnbc(tnbc_manual: Path, home: Path) -> None:
    import shutil

    for sub in ("manual", "registry"):
        if (tnbc_manual / sub).is_dir():
            shutil.copytree(tnbc_manual / sub, home / sub, dirs_exist_ok=True)


def _prepare_child(home: Path, point: str, force: bool) -> int:
    env = {**os.environ, "NUCDATA_HOME": str(home), faults.ENV_VAR: f"{point}=kill"}
    code = f"import nucdata; nucdata.prepare('tnbc', force={force})"
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=300, check=False).returncode


def test_prepare_force_killed_between_renames_keeps_the_store(home, tnbc_manual):
    _home_with_tnbc(tnbc_manual, home)
    first = nucdata.prepare("tnbc")
    created = Store(first).manifest["created"]
    assert _prepare_child(home, "store:old-moved", force=True) == faults.KILL_EXIT_CODE
    assert not (first / MANIFEST).exists()
    lines: list[str] = []
    again = nucdata.prepare("tnbc", progress=lines.append)
    assert again == first and Store(again).manifest["created"] == created  # restored, not rebuilt
    assert any("restored the previous copy" in line for line in lines)
    assert hidden(first.parent) == [".lock"]


def test_killed_extraction_scratch_is_removed_by_the_next_run(home, tnbc_manual):
    _home_with_tnbc(tnbc_manual, home)
    assert _prepare_child(home, "prepare:extracted", force=False) == faults.KILL_EXIT_CODE
    work = home / "work"
    assert [p.name for p in work.iterdir() if p.is_dir()]  # the scratch of the killed run
    nucdata.prepare("tnbc")
    assert list(work.iterdir()) == []
    assert is_complete(store_path("tnbc"))
