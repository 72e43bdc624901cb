"""What a new user's mistakes, a second driver and a failing search do: every case is refused
or reported in one line with a non-zero exit, and nothing already computed is lost."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medcore.errors import DataError, ResourceError, SearchFailed
from orchestrator import registry
from orchestrator.cli import main
from orchestrator.data import SAMPLE_ROOT, load_medmnist, make_synthetic, md5sum
from orchestrator.driver import run_search
from tests.orchestrator.toy_search import ToyConfig

SAMPLE = ["--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT)]


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setenv(registry.ENV, "toy=tests.orchestrator.toy_search:ToySearch")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: ") and "\n" not in err, err
    return err


# ---- 1. unusable --out / --data-root: refused before anything starts ------------------------
def test_out_and_data_root_that_are_files_or_unwritable(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, message in ((a_file, "--out: "), (a_file / "sub", "which is a file")):
        assert main(["search", "ode", *SAMPLE, "--out", str(out)]) == 2
        assert message in _one_line_error(capsys)
    assert main(["search", "ode", "--dataset", "adrenalmnist3d", "--data-root", str(a_file),
                 "--out", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys)
    assert "--data-root: " in err and "is a file" in err
    # a folder nobody can create (root included): under /proc
    assert main(["search", "ode", *SAMPLE, "--out", "/proc/medtune-test/out"]) == 2
    assert "--out: " in _one_line_error(capsys)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert main(["search", "ode", *SAMPLE, "--out", str(ro / "run")]) == 2
    assert "is not writable" in _one_line_error(capsys)


# ---- 3. labels that do not fit the task ------------------------------------------------------
def _rewrite_labels(path: Path, change) -> None:
    arrays = dict(np.load(path))
    for split in ("train", "val", "test"):
        arrays[f"{split}_labels"] = change(arrays[f"{split}_labels"])
    np.savez_compressed(path, **arrays)
    marker = path.with_name(path.name[:-4] + ".synthetic.json")
    meta = json.loads(marker.read_text())
    meta["md5"] = md5sum(path)
    marker.write_text(json.dumps(meta))


@pytest.mark.parametrize("change,message", [
    (lambda y: np.concatenate([y, y], axis=1), "has 2 columns; a binary-class task with 2 classes needs 1"),
    (lambda y: (y * 4).astype(np.uint8), "holds values 0..4; the binary-class task of breastmnist allows 0..1"),
])
def test_labels_that_do_not_fit_the_task(tmp_path, change, message):
    path = make_synthetic("breastmnist", tmp_path, n_samples=(12, 6, 6))
    _rewrite_labels(path, change)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_medmnist("breastmnist", 28, tmp_path)


# ---- 4, 5. the run folder must hold this search's run, or nothing ---------------------------
def _manifest(out: Path, search: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"search": search, "run": f"{search}-x"}))


def test_another_searchs_run_and_resume_without_a_run_are_refused(tmp_path, capsys):
    _manifest(tmp_path / "ode_run", "ode")
    assert main(["search", "compress", *SAMPLE, "--out", str(tmp_path / "ode_run"), "--resume"]) == 2
    assert "holds a 'ode' run, not a 'compress' run" in _one_line_error(capsys)
    assert main(["search", "ode", *SAMPLE, "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "nothing to resume in" in _one_line_error(capsys)
    assert main(["search", "ode", *SAMPLE, "--out", str(tmp_path / "ode_run")]) == 2
    assert "already holds a ode run; pass --resume" in _one_line_error(capsys)
    # Tune state without a manifest (not medtune's, or from an older medtune): refused, never overwritten
    (tmp_path / "foreign" / "tune" / "something").mkdir(parents=True)
    assert main(["search", "ode", *SAMPLE, "--out", str(tmp_path / "foreign")]) == 2
    assert "cannot identify" in _one_line_error(capsys)


# ---- 2. requests the cluster cannot satisfy; 11. every candidate failed; 8. unexpected errors --
def test_requests_above_the_cluster_are_refused_and_leave_nothing(ray_local, tmp_path, toy):
    cfg = ToyConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(tmp_path / "cpu"))
    cfg.resources.cpus_per_trial = 64
    with pytest.raises(ResourceError, match="--cpus-per-trial 64 is more than any node of the cluster has"):
        run_search("toy", cfg)
    assert not (tmp_path / "cpu" / "run.json").exists() and not (tmp_path / "cpu" / "tune").exists()
    cfg.resources.cpus_per_trial, cfg.resources.gpus_per_trial = 1, 1
    with pytest.raises(ResourceError, match="--gpus-per-trial 1 but the cluster has 0 GPUs"):
        run_search("toy", cfg)
    # a plain rerun with a request that fits is not blocked by the refused attempt
    cfg.resources.gpus_per_trial = 0
    assert run_search("toy", cfg)["n_ok"] == 3


def test_every_candidate_failed_is_an_error_with_reasons_and_outputs_kept(ray_local, tmp_path, toy):
    cfg = ToyConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(tmp_path), fail="all")
    with pytest.raises(SearchFailed, match=r"every candidate failed \(3 of 3: 1 x RuntimeError: toy failure \d, 1 x"):
        run_search("toy", cfg)
    assert json.loads((tmp_path / "summary.json").read_text())["n_ok"] == 0
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "done"


def test_an_errored_trial_is_not_retrained_on_resume(ray_local, tmp_path, toy):
    cfg = ToyConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(tmp_path), n_trials=3, fail="1")
    s = run_search("toy", cfg)
    assert s["n_ok"] == 2 and list(s["failure_reasons"].values()) == [1]
    runs = (tmp_path / "runs.log").read_text().split()
    assert runs.count("1") == 3  # the first attempt and TRIAL_RETRIES (2) retries
    # the stage's output, as the driver wrote it when the stage finished
    rows = json.loads((tmp_path / "stages" / "search.json").read_text())["rows"]
    assert sorted(r["status"] for r in rows) == ["failed", "ok", "ok"]
    cfg.resume = True
    assert run_search("toy", cfg)["n_ok"] == 2
    assert (tmp_path / "runs.log").read_text().split() == runs  # nothing ran again
    # rewritten by the resumed stage: the same rows, in any order (a restored errored trial's
    # Result has no config, so its index is not compared)
    def row(r):
        return r["status"], r["reason"], r["i"] if r["status"] == "ok" else None

    again = json.loads((tmp_path / "stages" / "search.json").read_text())["rows"]
    assert sorted(map(row, again)) == sorted(map(row, rows))


def test_an_unexpected_error_is_one_line_with_the_resume_hint(tmp_path, capsys, toy, monkeypatch):
    from tests.orchestrator import toy_search

    def boom(self, ctx):
        raise KeyError("something inside a stage")

    monkeypatch.setattr(toy_search.ToySearch, "stages", boom)
    out = tmp_path / "run"
    code = main(["search", "toy", *SAMPLE, "--out", str(out)])
    err = _one_line_error(capsys)
    assert code == 1 and "KeyError: 'something inside a stage'" in err and "rerun with --resume" in err
    assert "Traceback" in (out / "medtune-error.log").read_text()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


# ---- 7. one driver per run folder, whatever the timing ---------------------------------------
def _driver(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.cli", "search", "toy", "--out", str(out),
           "--cpus-per-trial", "64", *extra]  # the winner stops at the resource check, after the lock
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
           registry.ENV: "toy=tests.orchestrator.toy_search:ToySearch"}  # no torch to import: the race is tighter
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.ray
def test_two_drivers_on_one_out_folder_one_is_refused(tmp_path):
    """Started within milliseconds of each other, fresh or both --resume (the lock is an flock:
    one race of each kind shows it)."""
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        extra = []
        if attempt % 2:
            _manifest(out, "toy")
            extra = ["--resume"]
        first, second = _driver(out, *extra), _driver(out, *extra)
        errors = [p.communicate(timeout=180)[1] for p in (first, second)]
        locked = [e for e in errors if "is in use by another toy driver" in e]
        passed = [e for e in errors if "--cpus-per-trial 64 is more than any node" in e]
        assert len(locked) == 1 and len(passed) == 1, errors
        assert first.returncode == second.returncode == 2


# ---- memory: trials sized by their estimated memory; what cannot fit is never trained ---------
def test_memory_requests_fall_in_few_buckets_and_never_below_the_estimate_or_above_the_node():
    import math

    from orchestrator.search import memory_bucket

    gib = 2**30
    estimates = [0.3, 0.9, 1.1, 1.7, 2.0, 2.6, 3.9, 4.1, 7.5]
    buckets = [memory_bucket(e * gib) for e in estimates]
    assert buckets == [g * gib for g in (1, 1, 2, 2, 2, 4, 4, 8, 8)]
    assert all(b >= e * gib for b, e in zip(buckets, estimates))
    # the 8 GiB bucket does not fit a 6.5 GiB node: the node's whole GiB, or the estimate where that is more
    assert memory_bucket(4.1 * gib, limit=6.5 * gib) == 6 * gib
    assert memory_bucket(6.2 * gib, limit=6.5 * gib) == math.ceil(6.2 * gib)
    assert memory_bucket(1.5 * gib, limit=6.5 * gib) == 2 * gib
    # a trial that fits in its share of the node asks for that share: one request, one reused worker
    share = 11.3 * gib  # a 22.6 GiB node, 2 CPUs, 1 CPU per trial
    assert {memory_bucket(e * gib, 22.6 * gib, share) for e in (0.3, 1.7, 3.9, 7.5)} == {11 * gib}
    assert memory_bucket(11.2 * gib, 22.6 * gib, share) == 16 * gib > share  # above it: memory limits packing


def test_a_trials_memory_share_fits_every_node_that_can_run_it():
    from orchestrator.runtime import SHARE_MARGIN, memory_share

    gib = 2**30
    head = {"CPU": 0.0, "memory": 30 * gib}  # a 0-CPU head runs no trial: its memory is no share
    workers = [{"CPU": 2.0, "memory": 20 * gib}, {"CPU": 4.0, "memory": 24 * gib}]
    keep = 1 - SHARE_MARGIN  # a node may offer a little less than estimated before it started
    assert memory_share(1, [head, *workers]) == 6 * gib * keep  # 24 GiB / 4 CPUs: fits both workers by CPUs
    assert memory_share(2, [head, *workers]) == 12 * gib * keep
    assert memory_share(3, [head, *workers]) == 24 * gib * 3 / 4 * keep  # the 2-CPU node cannot run it
    assert memory_share(1, [head]) is None and memory_share(8, workers) is None


def test_trial_resources_carry_the_memory_estimate(tmp_path):
    from orchestrator.config import Resources
    from orchestrator.search import RunContext

    ctx = RunContext(search=registry.get("ode"), cfg=ToyConfig(out=str(tmp_path)), data=None, run_id="r")
    per_trial = ctx.trial_resources(lambda config: int(2.2 * 2**30) if config["big"] else 2**29)
    # requests are rounded up to 1, 2, 4, ... GiB, so most trials share a bucket and reuse a worker
    assert per_trial({"big": True}).required_resources == {"CPU": 1.0, "memory": 4 * 2**30}
    assert per_trial({"big": False}).required_resources["memory"] == 2**30
    ctx.cfg.resources = Resources(memory_per_trial_gb=2)  # a fixed request overrides the estimate
    assert ctx.trial_resources(lambda config: 1).required_resources["memory"] == 2 * 2**30
