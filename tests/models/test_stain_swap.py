"""The outside output does not learn the stain (issue 20 point 2): a guard on worlds never used for tuning.

Outside-only MoNuSAC targets come only from other datasets' images, so an outside output
can learn "this stain is not MoNuSAC's". With the default augmentation (HED stain jitter
0.3, chosen on hard world seeds 1-3), MoNuSAC's own held-out
in-set nuclei recoloured with CoNSeP's stain must not go to outside more than 15 % of the
time (before the jitter: 0.5 on world seed 1). The worlds here (hard, seeds 41 and 42)
never chose a default (``background_balance``, ``table_error`` and ``table_error_rows`` were
measured on them after the tuning worlds, the real-data study and, for the last, fresh worlds
51-52 had decided them); the threshold is the issue's, fixed before this test ran.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucdata.labels import MERGED_LABEL_SETS, OWN_LABEL_SET
from nucdata_models import TrainConfig
from nucdata_models.merge import TEST, make_world
from nucdata_models.study import DATA_VIEWS, arm_plan, prepare_world
from nucdata_models.train import CrossTrainer, stain_swap_outside_rate

#: acceptance worlds (hard preset), never used to choose a default
WORLDS = (41, 42)
LIMIT = 0.15


@pytest.fixture(scope="module")
def rates():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for seed in WORLDS:
            world = prepare_world(seed, "hard", 1.0, 24, 0.1, 0.3, None, MERGED_LABEL_SETS, say=lambda _m: None,
                                  bayes_samples=200)
            stains = make_world(seed, "hard")
            base = TrainConfig.recipe("nucdata", epochs={"A": 4, "B": 2, "C": 2}, batch_size=64, device="cpu",
                                      seed=1, score_truth=False)
            plan = arm_plan("nucdata", base)
            trainer = CrossTrainer(plan.config)
            trainer.fit(DATA_VIEWS[plan.data](world.data))
            own, other = "monusac", "consep"
            shift = np.asarray(stains.stain(other)) - np.asarray(stains.stain(own))
            out[seed] = {
                "swapped": stain_swap_outside_rate(trainer, world.data, own, OWN_LABEL_SET[own], shift, split=TEST,
                                                   modules=plan.modules),
                "unswapped": stain_swap_outside_rate(trainer, world.data, own, OWN_LABEL_SET[own], np.zeros(3),
                                                     split=TEST, modules=plan.modules),
            }
        return out
    finally:
        torch.set_num_threads(before)


def test_the_default_stain_jitter_is_on():
    assert TrainConfig().stain_jitter > 0 and TrainConfig.recipe("paper").stain_jitter == 0


@pytest.mark.xfail(strict=True, reason=(
    "not yet met (issue 20): on hard worlds 41 and 42 MoNuSAC's recoloured in-set nuclei go to outside "
    "11 % and 35 % of the time (45 % and 54 % before table_error on exact-outside rows became the default): "
    "both worlds' tables send a PanNuke type MoNuSAC annotates in-set to outside (mapping_error: world 41 "
    "writes lymphocytes 'Dead', world 42 tumour 'Dead' and macrophages 'Connective'), so the largest dataset "
    "teaches 'outside' for an in-set type. source_balance='foreign' as well brings both worlds under 2 % but "
    "cost PanNuke and NuCLS on the acceptance worlds 31-32 (docs/method-study.md, 'Ablation: source balance "
    "and table errors'). At the study's full budget the same measure is 0.013-0.085 on both worlds (training seeds "
    "1-2, docs/method-study.md, 'Results at the full budget'): the guard fails at the quick budget the issue set. "
    "strict: the day it passes, drop this mark"))
def test_recoloured_in_set_nuclei_rarely_go_to_outside(rates):
    swapped = [r["swapped"] for r in rates.values()]
    assert all(np.isfinite(swapped)), rates
    assert float(np.mean(swapped)) <= LIMIT, rates
    # the guard could fail: the unrecoloured rate is what the model does on its own stain
    assert all(r["unswapped"] <= LIMIT for r in rates.values()), rates
