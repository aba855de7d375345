"""The method study: its arms, its statistics and the generated data it runs on.

``benchmarks/method_study.py`` runs it; ``docs/method-study.md`` reports it. Three
private modules hold it: ``_arms`` (the arm registry: one :func:`arm`-decorated
function per arm, its docstring the description; the data views; the declared family
of comparisons), ``_stats`` (the metrics and the endpoint, the hierarchical bootstrap
over worlds, seeds and image groups, intervals, p-values, equivalence tests and Holm's
correction), ``_run`` (worlds, runs, scoring, the summary and its markdown) and ``_real``
(the real-data study on CRCHisto: pseudo-slide groups, derived coarse label sets, the
real world and the multitask-transfer study; ``benchmarks/real_study.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nucdata._util.lazy import attach

_MODULES = {
    "nucdata_models.study._arms": ("ARMS", "DATA_VIEWS", "FAMILY", "PUBLISH", "REGISTRY", "Arm", "ArmPlan", "arm",
                                   "arm_plan", "oracle_data", "paper_recipe", "render_arm_table"),
    "nucdata_models.study._stats": ("ALPHA", "CALIBRATION_BINS", "ENDPOINT", "EQUIVALENCE_MARGIN", "LEVELS",
                                    "METRICS", "METRIC_FUNCTIONS", "METRIC_SPECS", "N_PROVENANCE", "MetricSpec",
                                    "Resamples", "bootstrap_p", "cluster_confusions",
                                    "hierarchical_resamples", "holm", "percentile_ci", "resample_weights",
                                    "resampled_mean", "tost_p", "verdict"),
    "nucdata_models.study._real": ("DERIVED_SETS", "FINE_SET", "STUDY_SETS", "TRANSFER_TASKS", "DerivedSet",
                                   "RealWorld", "derived_table", "image_groups", "partition", "points_only",
                                   "prepare_real_world", "render_transfer_markdown", "study_classifier",
                                   "transfer_study"),
    "nucdata_models.study._run": ("VIEWS", "PreparedWorld", "RunScores", "config_overrides", "endpoint_count",
                                  "family_sentences", "oracle_check", "prepare_world", "render_markdown", "run_arms", "run_records",
                                  "score_views", "study_config", "summarise"),
    # the one definition of each metric lives with the others (nucdata_models.metrics)
    "nucdata_models.metrics": ("accuracy_from_confusion", "macro_f1_from_confusion"),
    "nucdata_models.study.synthetic": ("make_synthetic_data",),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY, globals())

if TYPE_CHECKING:
    from nucdata_models.metrics import accuracy_from_confusion, macro_f1_from_confusion
    from nucdata_models.study._arms import (
        ARMS,
        DATA_VIEWS,
        FAMILY,
        PUBLISH,
        REGISTRY,
        Arm,
        ArmPlan,
        arm,
        arm_plan,
        oracle_data,
        paper_recipe,
        render_arm_table,
    )
    from nucdata_models.study._real import (
        DERIVED_SETS,
        FINE_SET,
        STUDY_SETS,
        TRANSFER_TASKS,
        DerivedSet,
        RealWorld,
        derived_table,
        image_groups,
        partition,
        points_only,
        prepare_real_world,
        render_transfer_markdown,
        study_classifier,
        transfer_study,
    )
    from nucdata_models.study._run import (
        VIEWS,
        PreparedWorld,
        RunScores,
        config_overrides,
        endpoint_count,
        family_sentences,
        oracle_check,
        prepare_world,
        render_markdown,
        run_arms,
        run_records,
        score_views,
        study_config,
        summarise,
    )
    from nucdata_models.study._stats import (
        ALPHA,
        CALIBRATION_BINS,
        ENDPOINT,
        EQUIVALENCE_MARGIN,
        LEVELS,
        METRIC_FUNCTIONS,
        METRIC_SPECS,
        METRICS,
        N_PROVENANCE,
        MetricSpec,
        Resamples,
        bootstrap_p,
        cluster_confusions,
        hierarchical_resamples,
        holm,
        percentile_ci,
        resample_weights,
        resampled_mean,
        tost_p,
        verdict,
    )
    from nucdata_models.study.synthetic import make_synthetic_data
