"""The coordinator: scheduling with a fake launcher (fast), then ``medtune run | status | report |
resume`` end to end on the shipped sample, and a SIGKILLed coordinator resumed (slow)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator import coordinator as co
from orchestrator.data import SAMPLE_ROOT
from orchestrator.spec import parse_spec

TINY = {"dataset": "adrenalmnist3d", "data_root": str(SAMPLE_ROOT), "budget": 4, "pop_size": 4, "fraction": 0.1,
        "max_gflops": 0.05, "top_k": 0, "fit": {"max_epochs": 1},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1}}
ENV = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")}


# ---- scheduling, with a fake launcher ------------------------------------------------------

class FakeProc:
    def __init__(self, pid):
        self.pid = pid


class FakeLauncher:
    """Each search 'runs' for ``polls`` polls and ends with ``results[name]`` (default success)."""

    def __init__(self, results=None, polls=2):
        self.results, self.polls = results or {}, polls
        self.started, self.running, self.max_running, self.stopped = [], {}, 0, []

    def start(self, name, kind, config, log_path, attempt, job_id=None):
        assert config["out"] == str(log_path.parent) and config["resume"] is False
        self.started.append(name)
        self.running[name] = self.polls
        self.max_running = max(self.max_running, len(self.running))
        return co.Launch(name, proc=FakeProc(1000 + len(self.started)))

    def poll(self, launch, log_path):
        if launch.stopping:
            self.running.pop(launch.name)
            return 143, "terminated"
        self.running[launch.name] -= 1
        if self.running[launch.name] > 0:
            return None
        self.running.pop(launch.name)
        return self.results.get(launch.name, (0, ""))

    def stop(self, launch):
        self.stopped.append(launch.name)
        launch.stopping = True

    def kill(self, launch):
        raise AssertionError("a search that stops in time is never killed")


def plan(tmp_path, searches):
    spec = parse_spec({"searches": [{"name": n, "type": "ode", **TINY, "after": after} for n, after in searches]}, ".")
    manifest = co.Manifest(tmp_path, {"run": "r", "zoo": str(tmp_path / "zoo"), "searches": {}})
    co._plan(manifest, spec)
    return spec, manifest


def execute(tmp_path, monkeypatch, searches, launcher, max_parallel=0):
    monkeypatch.setattr(co, "POLL_S", 0)
    spec, manifest = plan(tmp_path, searches)
    co.Coordinator(tmp_path, spec, manifest, launcher, max_parallel).execute([e.name for e in spec.searches])
    return json.loads((tmp_path / "run.json").read_text())["searches"]


def test_dependencies_first_and_independent_searches_together(tmp_path, monkeypatch):
    launcher = FakeLauncher()
    states = execute(tmp_path, monkeypatch, [("a", []), ("b", ["a"]), ("c", []), ("d", ["b", "c"])], launcher)
    assert launcher.started == ["a", "c", "b", "d"] and launcher.max_running == 2
    assert all(s["state"] == "done" and s["exit_code"] == 0 and s["attempts"] == 1 for s in states.values())


def test_max_parallel_limits_searches_at_a_time(tmp_path, monkeypatch):
    launcher = FakeLauncher()
    states = execute(tmp_path, monkeypatch, [(n, []) for n in "abcd"], launcher, max_parallel=1)
    assert launcher.max_running == 1 and launcher.started == list("abcd")
    assert {s["state"] for s in states.values()} == {"done"}


def test_a_failure_skips_its_dependents_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    launcher = FakeLauncher({"b": (1, "training the base network failed")})
    states = execute(tmp_path, monkeypatch, [("a", []), ("b", []), ("c", ["b"]), ("d", ["c"]), ("e", ["a"])],
                     launcher)
    assert states["b"]["state"] == "failed" and states["b"]["reason"] == "training the base network failed"
    assert states["b"]["exit_code"] == 1
    assert (states["c"]["state"], states["c"]["reason"]) == ("skipped", "dependency b failed")
    assert (states["d"]["state"], states["d"]["reason"]) == ("skipped", "dependency c skipped")
    assert states["a"]["state"] == states["e"]["state"] == "done" and "c" not in launcher.started
    err = capsys.readouterr().err
    assert "b: failed (exit 1: training the base network failed)" in err and "c: skipped (dependency b failed)" in err


def test_interrupt_stops_every_running_search_and_keeps_the_rest_pending(tmp_path, monkeypatch):
    class Interrupting(FakeLauncher):
        def poll(self, launch, log_path):
            if len(self.started) == 2 and not launch.stopping:
                raise KeyboardInterrupt
            return super().poll(launch, log_path)

    launcher = Interrupting(polls=10)
    with pytest.raises(KeyboardInterrupt):
        execute(tmp_path, monkeypatch, [("a", []), ("b", []), ("c", ["a"])], launcher)
    states = json.loads((tmp_path / "run.json").read_text())["searches"]
    assert sorted(launcher.stopped) == ["a", "b"]
    assert states["a"]["state"] == states["b"]["state"] == "interrupted" and states["c"]["state"] == "pending"


def test_last_error_line():
    assert co.last_error_line("x\nTraceback\nValueError: bad\nmedtune: error: --budget: too small\nbye\n") == \
        "--budget: too small"
    assert co.last_error_line("a\nRuntimeError: boom\ntrailing\n") == "RuntimeError: boom"
    assert co.last_error_line("==== header\nonly line\n") == "only line"


# ---- end to end ----------------------------------------------------------------------------

def medtune(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout, **kw)


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)


def wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


def write_spec(path: Path, searches: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"searches": searches}, sort_keys=False))
    return path


def test_run_status_report_failure_and_resume(tmp_path):
    """Two tiny ODE searches at once, one that the driver refuses at start (a trial asks for more
    CPUs than the node has: valid in the spec, refused by the cluster) and one waiting for it."""
    run_dir = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.yaml", [
        {"name": "a", "type": "ode", **TINY},
        {"name": "b", "type": "ode", **TINY, "seed": 1},
        {"name": "bad", "type": "ode", **TINY, "resources": {"cpus_per_trial": 64}},
        {"name": "c", "type": "ode", "after": ["bad"], **TINY, "seed": 2}])
    proc = start("run", spec, "--out", run_dir)
    wait_for(lambda: (run_dir / "a" / "status.json").exists(), proc)
    # while it runs: status reads (the coordinator holds the lock), a second coordinator is refused
    status = medtune("status", run_dir)
    assert status.returncode == 0 and "coordinator running" in status.stdout, status.stderr
    assert all(name in status.stdout for name in ("a", "b", "bad", "c"))
    second = medtune("run", spec, "--out", run_dir)
    assert second.returncode == 2 and "in use by another coordinator" in second.stderr
    assert second.stderr.count("\n") == 1
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]

    manifest = json.loads((run_dir / "run.json").read_text())["searches"]
    assert manifest["a"]["state"] == manifest["b"]["state"] == "done"
    assert manifest["bad"]["state"] == "failed" and manifest["bad"]["exit_code"] == 2
    assert "--cpus-per-trial 64 is more than any node of the cluster has" in manifest["bad"]["reason"]
    assert (manifest["c"]["state"], manifest["c"]["reason"]) == ("skipped", "dependency bad failed")
    assert "bad: failed (exit 2: --cpus-per-trial 64" in err and "c: skipped (dependency bad failed)" in err
    assert (run_dir / "spec.yaml").read_text() == spec.read_text()
    for name in ("a", "b"):
        assert (run_dir / name / "summary.json").exists() and (run_dir / name / "driver.log").stat().st_size > 0
        assert manifest[name]["resume"] is False

    report = (run_dir / "report.html").read_text()
    for needle in ('id="a"', 'id="b"', 'id="bad"', "candidates.csv", "data:image/png;base64,", "Model zoo",
                   "--cpus-per-trial 64"):
        assert needle in report
    from orchestrator.zoo import read_zoo

    zoo = read_zoo(run_dir / "zoo")
    runs = {json.loads((run_dir / n / "run.json").read_text())["run"] for n in ("a", "b")}
    assert set(zoo["run"]) == runs and len(zoo) == sum(
        json.loads((run_dir / n / "summary.json").read_text())["n_evaluated"] for n in ("a", "b"))

    status = json.loads(medtune("status", run_dir, "--json").stdout)
    by_name = {s["name"]: s for s in status["searches"]}
    assert status["coordinator"]["state"] == "failed"
    assert by_name["a"]["trials"]["done"] >= 1 and by_name["a"]["best"]["metric"] == "best_val_acc"

    # fix the failed search in the run's spec copy; resume runs only it and its dependent
    copy = yaml.safe_load((run_dir / "spec.yaml").read_text())
    copy["searches"][2]["resources"]["cpus_per_trial"] = 1
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(copy, sort_keys=False))
    before = {n: (run_dir / n / "summary.json").stat().st_mtime for n in ("a", "b")}
    resumed = medtune("resume", run_dir, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = json.loads((run_dir / "run.json").read_text())["searches"]
    assert all(s["state"] == "done" for s in manifest.values())
    # refused before its driver wrote a run: started fresh again
    assert manifest["bad"]["attempts"] == 2 and manifest["bad"]["resume"] is False
    assert manifest["c"]["attempts"] == 1
    assert before == {n: (run_dir / n / "summary.json").stat().st_mtime for n in ("a", "b")}
    assert (run_dir / "c" / "summary.json").exists() and "--cpus-per-trial 64" not in (
        run_dir / "report.html").read_text()
    # a finished run: nothing to do
    again = medtune("resume", run_dir)
    assert again.returncode == 0 and "nothing to resume" in again.stdout


def _finished_trials(out: Path) -> dict:
    """Trial folder -> architecture of every trial that finished."""
    done = {}
    for d in sorted((out / "tune" / "ode_search").glob("cand*")):
        result = d / "result.json"
        if result.exists() and "done_training" in result.read_text():
            done[d.name] = json.dumps(json.loads((d / "params.json").read_text())["architecture"], sort_keys=True)
    return done


@pytest.mark.slow
def test_sigkilled_coordinator_resumes_without_losing_or_repeating_trials(tmp_path):
    search = {"name": "s", "type": "ode", **TINY, "budget": 8, "seed": 3}
    spec = write_spec(tmp_path / "spec.yaml", [search])
    reference = medtune("run", spec, "--out", tmp_path / "reference", timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir = tmp_path / "run"
    proc = start("run", spec, "--out", run_dir)
    wait_for(lambda: len(_finished_trials(run_dir / "s")) >= 2, proc, timeout=600)
    time.sleep(3)  # Tune saves experiment + searcher state every 2 s
    driver_pid = json.loads((run_dir / "run.json").read_text())["searches"]["s"]["pid"]
    os.kill(proc.pid, signal.SIGKILL)  # the coordinator alone: its children must follow
    proc.communicate()
    deadline = time.time() + 120
    while co._alive(driver_pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not co._alive(driver_pid), "the search's driver outlived its SIGKILLed coordinator"
    before = _finished_trials(run_dir / "s")
    status = medtune("status", run_dir)
    assert "coordinator not running" in status.stdout and "medtune resume" in status.stdout

    resumed = medtune("resume", run_dir, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _finished_trials(run_dir / "s")
    assert before.items() <= after.items()  # nothing evaluated before the kill was lost
    assert len(set(after.values())) == len(after)  # and no architecture was trained twice
    table = pd.read_csv(run_dir / "s" / "candidates.csv")
    assert (table.status == "ok").sum() == len(after)
    expected = pd.read_csv(tmp_path / "reference" / "s" / "candidates.csv")
    columns = ["candidate", "architecture", "status"]
    pd.testing.assert_frame_equal(table[columns], expected[columns])
