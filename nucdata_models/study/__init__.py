"""The method study: its arms, its statistics and the generated data it runs on.

``benchmarks/method_study.py`` runs it; ``docs/method-study.md`` reports it.
"""

from __future__ import annotations

from nucdata._util.lazy import attach

_STUDY = ("ARMS", "REFERENCES", "VIEWS", "ArmPlan", "PreparedWorld", "RunScores", "accuracy_from_confusion",
          "arm_plan", "bootstrap_p", "cluster_confusions", "holm", "macro_f1_from_confusion", "oracle_check",
          "oracle_data", "percentile_ci", "prepare_world", "render_markdown", "resample_weights", "run_arms",
          "summarise")
_LAZY = {name: "nucdata_models.study._study" for name in _STUDY}
_LAZY["make_synthetic_data"] = "nucdata_models.study.synthetic"

__getattr__, __dir__, __all__ = attach(__name__, _LAZY, globals())
