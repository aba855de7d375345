"""Shared by the study benchmarks (method_study.py, real_study.py): the training arguments and their defaults.

Both studies train every arm with the same knobs: device, encoder, epochs per stage,
batch size, bootstrap draws, torch threads and ``--set FIELD=VALUE`` ablations of the
base configuration. :func:`add_training_arguments` declares them once;
:func:`resolve` fills what the user left unset from the study's quick or full sizes and
checks them, with argparse's error (usage, exit status 2) for a bad value.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from nucdata.errors import InvalidArgumentError
from nucdata_models.study import config_overrides


def add_training_arguments(parser: argparse.ArgumentParser, set_example: str) -> None:
    """``--device --encoder --epochs --batch-size --bootstrap --threads --set`` (``set_example``: its help's example)."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--encoder", default="small", choices=("small", "resnet18", "resnet50"))
    parser.add_argument("--epochs", type=int, nargs=3, metavar=("A", "B", "C"),
                        help="the nucdata arm's epochs per stage (default: quick 4 2 2, full 10 10 10)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--bootstrap", type=int, help="hierarchical bootstrap draws (default 2000)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: quick 1, full torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field for every arm's base configuration (an ablation; repeatable), "
                             f"VALUE as JSON or a bare string, e.g. --set {set_example}")


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace, quick: Mapping[str, Any],
            full: Mapping[str, Any]) -> argparse.Namespace:
    """Fill unset sizes from ``quick`` (``--quick``) or ``full``, check the epochs, parse the ``--set`` overrides."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None and value is not None:
            setattr(args, name, value)
    if min(args.epochs) < 0 or sum(args.epochs) == 0:
        parser.error("--epochs must be non-negative and not all 0")
    try:
        args.overrides = config_overrides(args.overrides)
    except InvalidArgumentError as err:
        parser.error(str(err))
    return args
