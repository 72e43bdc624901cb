"""The CLI of the coordinator: ``medtune run | resume | status | report``, added to the
top-level parser by :func:`add_commands` (``orchestrator.cli.COMMAND_MODULES``)."""
from __future__ import annotations

import argparse
import json

from orchestrator.coordinator.core import resume, run
from orchestrator.coordinator.run_status import format_status, run_status
from orchestrator.manifest import read_manifest
from orchestrator.run_report import write_report


def _cmd_run(args) -> int:
    return run(args.spec, args.out, args.address, args.max_parallel, args.job_python)


def _cmd_resume(args) -> int:
    return resume(args.run_dir, args.address, args.max_parallel, args.job_python)


def _cmd_status(args) -> int:
    status = run_status(args.run_dir)
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
    return 0


def _cmd_report(args) -> int:
    read_manifest(args.run_dir)
    print(write_report(args.run_dir))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the searches of a YAML spec (each its own driver), then write the report")
    p.add_argument("spec", help="YAML spec: searches, their configs and `after:` dependencies")
    p.add_argument("--out", help="run folder (default: the spec's `storage:`)")
    p.add_argument("--address", help="a Ray cluster's dashboard address (http://head:8265): each search is a Ray "
                                     "job; the run folder must be on storage the cluster shares. Default: one "
                                     "local Ray node for the run")
    p.add_argument("--max-parallel", type=int, default=0, help="searches at a time (0: every ready search)")
    p.add_argument("--job-python", help="python that runs `orchestrator.cli` on the cluster (default: this one)")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("resume", help="continue a run: searches not done run again (resumed where they stopped)")
    p.add_argument("run_dir")
    p.add_argument("--address", help="default: the run's")
    p.add_argument("--max-parallel", type=int, help="default: the run's")
    p.add_argument("--job-python", help="default: the run's")
    p.set_defaults(handler=_cmd_resume)

    p = sub.add_parser("status", help="state of each search of a run (while it runs or after)")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained; partial runs too)")
    p.add_argument("run_dir")
    p.set_defaults(handler=_cmd_report)
