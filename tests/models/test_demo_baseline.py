"""The demo's timing (issue 24): the baseline beside the method, every nucleus predicted once per model,
every phase and the total in report.json, and report.md's verdict, glossary and how-to-open section."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nucdata
from nucdata_models import CrossTrainer
from nucdata_models.merge.build import BuildOptions, build_merged
from nucdata_models.merge.demo_eval import BaselineRun, baseline_config, spare_core
from nucdata_models.study.synthetic import make_synthetic_data


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic_data(per_dataset=40, size=16, seed=1)


def test_the_baseline_in_a_child_process_is_the_baseline_trained_here(tiny, config_factory):
    config = config_factory(epochs={"A": 1, "B": 1, "C": 1})
    here = BaselineRun(tiny, config, parallel=False).start()
    there = BaselineRun(tiny, config, parallel=True).start()
    assert there._process is not None and here._process is None
    messages = []
    theirs, ours = there.result(messages.append), here.result(messages.append)
    assert there.where.startswith("a parallel process") and here.where.startswith("this process")
    assert there.seconds > 0 and here.seconds > 0
    assert there.config == here.config == baseline_config(config)
    assert there.config.epochs == {"A": 3, "B": 0, "C": 0}  # equal steps: A for A+B+C epochs
    for s in tiny.names:  # the same seed, data, configuration and thread count: the same model
        assert torch.equal(theirs[s].label, ours[s].label)
        assert torch.allclose(theirs[s].probs, ours[s].probs, atol=1e-6)
    assert not any("failed" in m for m in messages)


def test_a_parallel_baseline_is_stopped_with_its_build(tiny, config_factory):
    run = BaselineRun(tiny, config_factory(epochs={"A": 50, "B": 0, "C": 0}), parallel=True).start()
    process = run._process
    assert process.is_alive()
    run.close()
    assert not process.is_alive() and run._process is None


def test_a_spare_core_only_on_the_cpu_with_threads_to_spare(config_factory):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert spare_core(config_factory(device="cpu"), cores=2)
        assert not spare_core(config_factory(device="cpu"), cores=1)
        torch.set_num_threads(2)
        assert not spare_core(config_factory(device="cpu"), cores=2)
        assert spare_core(config_factory(device="cpu"), cores=4)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """A small demo build, with every call of CrossTrainer.predict recorded (rows predicted)."""
    calls = []
    original = CrossTrainer.predict

    def predict(self, crops, candidates=None, modules="both"):
        calls.append((int(crops.shape[0]), modules))
        return original(self, crops, candidates, modules)

    out = tmp_path_factory.mktemp("merged") / "out"
    options = BuildOptions(out=out, datasets=["pannuke", "consep", "tnbc"], demo=True, demo_scale=1, crop_size=16,
                           overlays=1, parallel_baseline=False,
                           config={"epochs": {"A": 1, "B": 1, "C": 1}, "batch_size": 64, "device": "cpu"})
    CrossTrainer.predict = predict
    try:
        report = build_merged(options, say=lambda _m: None)
    finally:
        CrossTrainer.predict = original
    return out, report, calls


def test_every_nucleus_is_predicted_once_per_model(counted):
    _, report, calls = counted
    n = report["nuclei"]
    full = [modules for rows, modules in calls if rows == n]
    # the method's prediction (published, calibrated, scored) and the baseline's: nothing again
    assert sorted(full) == ["base", "both"], calls
    assert report["config"]["score_truth"] is False


def test_report_times_every_phase_and_the_baseline(counted):
    out, report, _ = counted
    timings = json.loads((out / "report.json").read_text())["timings_s"]
    for phase in ("generate demo archives", "prepare", "crop banks and splits",
                  "train (stages A, B, C and their validation)", "predict", "calibrate",
                  "baseline (own annotations, equal steps)", "score the demo",
                  "write pickles, merged columns and overlays", "write the model, classifier and diagrams", "total"):
        assert phase in timings and timings[phase] >= 0, phase
    assert timings["total"] >= sum(v for k, v in timings.items() if k != "total") - 0.5
    assert report["demo_truth"]["baseline_seconds"] == pytest.approx(timings["baseline (own annotations, equal steps)"],
                                                                     abs=0.01)
    assert report["demo_truth"]["baseline_ran_in"] == "this process, after the method"


def test_report_opens_with_a_verdict_a_glossary_and_the_time_and_ends_with_how_to_open(counted):
    out, report, _ = counted
    text = (out / "report.md").read_text()
    head = text.split("## Splits")[0]
    assert head.startswith("# Merged dataset report\n\n**Verdict:** on held-out images, the filled labels")
    assert re.search(r"beats the own-dataset baseline on \d of 4 label sets", head)
    assert f"Total time: {report['timings_s']['total']:,.0f} s" in head
    for term in ("annotated", "mapped", "ambiguous", "outside", "ECE", "macro F1", "held out", "baseline"):
        assert f"- **{term}**" in head, term
    assert "{'" not in head and "': " not in head  # no Python dict reprs in prose
    assert "| total |" in text
    tail = text.split("## How to open this output")[1]
    code = tail.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "report.md", "exec"), namespace)  # the lines run as written
    assert isinstance(namespace["ds"], nucdata.NucleusDataset) and len(namespace["ds"]) > 0
    assert namespace["merged"].label_sets == sorted(report["label_sets"])


_PARENT = """
import multiprocessing, os, sys, time
from nucdata_models.merge.demo_eval import exit_with_parent

def child(parent):
    exit_with_parent(parent, every=0.1)
    time.sleep(120)

if __name__ == "__main__":
    process = multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(),))
    process.start()
    print(process.pid, flush=True)
    time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_exits_when_its_parent_is_killed(tmp_path):
    # what a SIGKILLed build-merged --demo left behind: its baseline process, training on
    script = tmp_path / "parent.py"
    script.write_text(_PARENT, encoding="utf-8")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)
        assert _running(child)  # the watch does not end a child whose parent lives
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(child), "the child outlived its killed parent"
    finally:
        parent.kill()


def test_report_says_how_many_pseudo_labels_passed_and_how_precise(counted):
    out, report, _ = counted
    precision = json.loads((out / "report.json").read_text())["pseudo_label_precision"]
    epochs = report["pseudo_labels"]
    assert set(precision) == {k for k in epochs[0] if k != "epoch"}
    for s, entry in precision.items():
        assert entry["passed"] == sum(r[s] for r in epochs) and entry["offered"] >= entry["passed"]
        if entry["passed"]:  # the demo world's truth is known: both are measured, on the passed nuclei
            assert 0 <= entry["precision"] <= 1 and 0 <= entry["accuracy_before"] <= 1
    text = (out / "report.md").read_text()
    assert "How precise they were" in text and "before stage C" in text
