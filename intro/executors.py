"""The `--executor` options of `intro run` and `intro plan`, and what they do.

Only the standard library at import: Ray is imported when `--executor ray` runs (ray_executor.py), so
`intro plan` stays fast and a machine without Ray gets one line saying how to install it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FAILED, BAD_INPUT = 1, 2


def add_executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where in-process models compute: in this process (local, the default) or on Ray actors (ray)",
    )
    p.add_argument(
        "--address",
        metavar="auto|ray://HOST:PORT",
        help="with --executor ray: the cluster to use (auto: the one `ray start` runs here); "
        "default: a new local cluster",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="with --executor ray: actors per in-process model (default: the cluster's GPUs, else its CPUs, "
        "shared out over the models)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def misused(args: argparse.Namespace) -> bool:
    """Report (one line) Ray options given without `--executor ray`."""
    if args.executor == "ray" or (args.address is None and args.workers is None):
        return False
    option = "--address" if args.address is not None else "--workers"
    print(f"intro: error: {option} needs --executor ray", file=sys.stderr)
    return True


def run(args: argparse.Namespace, plans: Sequence[Any], **options: Any) -> int:
    """`intro run` on the executor the flags chose."""
    if args.executor != "ray":
        from intro.runtime.engine.run import run_plans

        return run_plans(plans, **options)
    from intro.runtime.engine.ray_executor import ClusterError, run_on_ray

    try:
        return run_on_ray(plans, address=args.address, workers=args.workers, **options)
    except ClusterError as error:
        print(f"intro: error: {error}", file=sys.stderr)
        return FAILED


def add_placement(args: argparse.Namespace, plan: Any, summary: dict[str, Any]) -> int:
    """Put the plan's Ray placement in its summary (`intro plan --executor ray`); a status on failure."""
    from intro.runtime.engine.ray_placement import Cluster, plan_placement

    if args.address is None:
        cluster = Cluster(os.cpu_count() or 1, _local_gpus(), "a new local cluster on this machine")
    else:
        from intro.runtime.engine.ray_executor import ClusterError, connected

        try:
            with connected(args.address) as cluster:
                pass
        except ClusterError as error:
            print(f"intro: error: {error}", file=sys.stderr)
            return FAILED
    summary["placement"] = plan_placement(plan, summary, cluster, cache_dir=args.cache, workers=args.workers)
    return 0


def _local_gpus() -> int:
    """NVIDIA GPUs a local cluster would see, without importing torch (`intro plan` stays fast)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return sum(1 for _ in gpus.iterdir()) if gpus.is_dir() else 0


def rendered(summary: dict[str, Any]) -> str:
    """The placement's lines after the plan summary's, when there is one."""
    if "placement" not in summary:
        return ""
    from intro.runtime.engine.ray_placement import render_placement

    return "\n" + render_placement(summary["placement"])
