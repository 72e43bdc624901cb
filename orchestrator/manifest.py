"""The run manifest: ``RUN_DIR/run.json``, the coordinator's record of a run.

Per search it records a state (pending, running, done, failed, skipped, interrupted), pid or job
id, exit code, reason and folder; the coordinator (:mod:`orchestrator.coordinator`) writes it on
every change, ``medtune status`` and ``medtune report`` (:mod:`orchestrator.run_report`) only read
it. It lives apart from both so that neither imports the other.

Each search's folder holds a file of the same name, the driver's manifest
(:mod:`orchestrator.driver`: which search, its run id and config). The coordinator's names its
schema, :data:`SCHEMA`, so the two cannot be taken for each other; a run.json written before the
schema was recorded (a run with ``searches`` and no ``schema``) is read as this schema.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from medcore.errors import RunError
from orchestrator import atomic

MANIFEST = "run.json"
SEARCH_MANIFEST = "run.json"  # the driver's manifest in each search's folder (orchestrator.driver.MANIFEST)
SPEC_COPY = "spec.yaml"
SCHEMA = "medtune.coordinator-run/1"
PENDING, RUNNING, DONE, FAILED, SKIPPED, INTERRUPTED = "pending", "running", "done", "failed", "skipped", "interrupted"


def read_manifest(run_dir: str | Path) -> dict:
    """The run's manifest; a folder without one, or with another kind of run.json, is refused in
    one line that says what it holds."""
    manifest = atomic.read_json(Path(run_dir) / MANIFEST)
    if isinstance(manifest, dict) and "searches" not in manifest and "search" in manifest:
        raise RunError(f"{run_dir} holds one '{manifest['search']}' search (its driver's {MANIFEST}), not a "
                       f"medtune run; a run folder holds {MANIFEST} and {SPEC_COPY}")
    if not isinstance(manifest, dict) or "searches" not in manifest:
        raise RunError(f"{run_dir} holds no medtune run (no {MANIFEST}); start one with `medtune run SPEC --out DIR`")
    if manifest.get("schema", SCHEMA) != SCHEMA:
        raise RunError(f"{run_dir / MANIFEST} has schema {manifest['schema']!r}, not {SCHEMA!r}: it was written by "
                       f"another medtune version")
    return manifest


def _run_id(run_dir: Path) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", run_dir.name).strip("-") or "run"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


class Manifest:
    """``RUN_DIR/run.json``, rewritten atomically on every change (with :data:`SCHEMA`, which a
    run started before the schema was recorded gains on its first save)."""

    def __init__(self, run_dir: Path, data: dict):
        self.run_dir, self.data = run_dir, data

    @classmethod
    def create(cls, run_dir: Path, **fields) -> "Manifest":
        """A new run's manifest (not saved yet): its schema, a run id from the folder's name, no searches."""
        return cls(run_dir, {"schema": SCHEMA, "run": _run_id(run_dir), "created": time.time(), **fields,
                             "searches": {}})

    @property
    def searches(self) -> dict:
        return self.data["searches"]

    def update(self, name: str, **fields) -> None:
        self.searches[name].update(fields)
        self.save()

    def save(self) -> None:
        self.data.setdefault("schema", SCHEMA)
        self.data["updated"] = time.time()
        atomic.write_json(self.run_dir / MANIFEST, self.data)


def last_error_line(text: str) -> str:
    """The reason a log gives for a failure, as a record's ``reason``: its last ``medtune: error:``
    line, else its last line naming an error, else its last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("====")]
    for ln in reversed(lines):
        if ln.startswith("medtune: error:"):
            return ln[len("medtune: error:"):].strip()[:500]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:500]
    return lines[-1][:500] if lines else ""
