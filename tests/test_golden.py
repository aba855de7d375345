"""The demo's stores are byte-identical to the committed golden digests, its merged output equal to them.

The golden file ``tests/golden/demo.json`` was written at commit 1c8f5a1, before the
package was re-laid out (issue 19): moving code must not change a single stored byte. A
change of format on purpose regenerates it (``python tests/golden/digest.py
tests/golden/demo.json``) together with a schema-version bump and a CHANGELOG line.

The stores are bytes from integer code and match exactly. A merged pickle holds trained
probabilities, whose last bits depend on the CPU's float kernels (the same commit gave
three different pickles on three machines of this project, whatever the thread count), so
``digest.py`` summarises each one: what integer code writes (names, centroids, field 4)
must match exactly, the count of each published label within :data:`LABEL_FLIPS` (a
near-tie may fall the other way on another CPU), and the mean and mean square of the
probabilities within :data:`PROBABILITY_TOLERANCE` (last-bit differences move them by
about 1e-7; a change of rule, by 1e-2 or more).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "golden"
#: Published labels (field 2) of one pickle that may differ from the golden counts, in all.
LABEL_FLIPS = 2
#: How far a pickle's mean (and mean square) probability may move.
PROBABILITY_TOLERANCE = 1e-4


def _pickle_differences(want: dict, got: dict) -> list[str]:
    problems = []
    if want["records"] != got["records"]:
        problems.append("names, centroids or field 4 changed")
    classes = set(want["labels"]) | set(got["labels"])
    flips = sum(abs(want["labels"].get(c, 0) - got["labels"].get(c, 0)) for c in classes)
    if flips > 2 * LABEL_FLIPS:  # one flipped label moves two counts
        problems.append(f"label counts {want['labels']} -> {got['labels']}")
    w, g = want["probability"], got["probability"]
    if w["nan"] != g["nan"] or any(abs(w[k] - g[k]) > PROBABILITY_TOLERANCE for k in ("mean", "mean_square")):
        problems.append(f"probabilities {w} -> {g}")
    return problems


def test_demo_store_and_merged_output_match_the_golden_digests(tmp_path):
    out = tmp_path / "digests.json"
    subprocess.run([sys.executable, str(HERE / "digest.py"), str(out)], check=True, timeout=600)
    got = json.loads(out.read_text())
    want = json.loads((HERE / "demo.json").read_text())
    for part in ("stores", "merged"):
        missing = sorted(set(want[part]) - set(got[part]))
        extra = sorted(set(got[part]) - set(want[part]))
        changed = sorted(k for k in set(want[part]) & set(got[part])
                         if (_pickle_differences(want[part][k], got[part][k]) if k.endswith(".pkl")
                             else want[part][k] != got[part][k]))
        detail = {k: _pickle_differences(want[part][k], got[part][k]) for k in changed[:3] if k.endswith(".pkl")}
        assert not (missing or extra or changed), (
            f"{part}: missing {missing[:5]}, new {extra[:5]}, changed {changed[:5]} {detail}")
