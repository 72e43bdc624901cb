"""The coordinator: ``medtune run | status | report | resume`` over a YAML spec (:mod:`orchestrator.spec`).

Ray supports one Tune driver per process, and concurrent drivers on one cluster (what its
multi-tenancy test covers), so every search runs as its own driver process, ``medtune search
TYPE --config-json ...``, and the coordinator only starts, watches and records them:

- locally, it starts one Ray node for the whole run (``ray start --head --block`` with free
  ports and its own temp dir) and each search is a subprocess joined to it through
  ``RAY_ADDRESS``, so all searches share the machine's CPUs through one scheduler. The node runs
  under ``ray start --block`` rather than ``ray.init`` in this process because a SIGTERM to that
  one process drains and stops exactly this node, agents included (a killed ``ray.init`` driver
  leaves its dashboard and runtime-env agents behind), and ``ray stop`` would stop every Ray on
  the machine. The node and every search get ``PR_SET_PDEATHSIG``: a SIGKILLed coordinator takes
  them down. A search is stopped with SIGINT, the signal its driver turns into "save and exit
  130" (``ray.init`` replaces a driver's own SIGTERM handler with one that exits at once; Tune
  saves the experiment and searcher every 2 s either way, which is what resume relies on);
- inside ``ray job submit`` (Ray sets ``RAY_ADDRESS`` to the job's cluster; likewise a
  ``RAY_ADDRESS=host:port`` set by hand) no node is started: each search is a subprocess joined
  to that cluster, inheriting the job's runtime environment (its ``--working-dir`` package
  lives in that cluster's GCS, which a private node would not have), so trials spread over
  the cluster's nodes;
- with ``--address http://head:8265`` each search is a Ray job (Jobs SDK). Submission ids are
  ``medtune-<run>-<search>-<attempt>`` and recorded before submitting, so a resumed coordinator
  finds a job that is still running and waits for it instead of submitting it again. The run
  folder must be on storage that this machine and the cluster's head node share (NFS, a shared
  home), at the same path: the jobs write their results there and the coordinator reads them.

``RUN_DIR/run.json`` records the run (:mod:`orchestrator.manifest`): per search its state, pid
or job id, exit code, reason and folder. One coordinator per run folder (``RunLock``);
``medtune status`` and ``medtune report`` only read.

The modules: :mod:`.core` (``Coordinator``, ``run``, ``resume``), :mod:`.launchers` (the
``Launcher`` interface: a search as a local process or as a Ray job), :mod:`.local_node` (the
run's own Ray node), :mod:`.run_status` (``medtune status``) and :mod:`.commands` (the CLI).
"""
from __future__ import annotations

import sys
import time


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"medtune run [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
