"""The coordinator: scheduling with a fake launcher (fast), then ``medtune run | status | report |
resume`` end to end on the shipped sample, and a SIGKILLed coordinator resumed (slow)."""
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medcore.errors import RunError
from orchestrator.coordinator import core
from orchestrator.coordinator.launchers import JobLauncher, Launch, Launcher, LocalLauncher
from orchestrator.coordinator.run_status import _alive, format_status, run_status
from orchestrator.data import SAMPLE_ROOT
from orchestrator.manifest import SCHEMA, SEARCH_MANIFEST, Manifest, last_error_line
from orchestrator.spec import parse_spec
from tests.orchestrator.toy_search import finished_trials

TINY = {"dataset": "adrenalmnist3d", "data_root": str(SAMPLE_ROOT), "budget": 4, "pop_size": 4, "fraction": 0.1,
        "max_gflops": 0.05, "top_k": 0, "fit": {"max_epochs": 1},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1}}
ENV = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")},
       "MEDTUNE_SEARCHES": "toy=tests.orchestrator.toy_search:ToySearch"}


# ---- scheduling, with a fake launcher ------------------------------------------------------

class FakeProc:
    def __init__(self, pid):
        self.pid = pid


class FakeLauncher:
    """Each search 'runs' for ``polls`` polls and ends with ``results[name]`` (default success)."""

    def __init__(self, results=None, polls=2):
        self.results, self.polls = results or {}, polls
        self.started, self.running, self.max_running, self.stopped = [], {}, 0, []

    def submission_id(self, name, attempt):
        return None

    def start(self, name, kind, config, log_path, attempt, job_id=None):
        assert config["out"] == str(log_path.parent) and config["resume"] is False
        self.started.append(name)
        self.running[name] = self.polls
        self.max_running = max(self.max_running, len(self.running))
        return Launch(name, proc=FakeProc(1000 + len(self.started)))

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


def test_each_launcher_has_the_interface_the_coordinator_uses():
    """The coordinator calls a launcher only through ``Launcher``: the local one, the job one and
    this file's fake all have its methods, with its parameters."""
    methods = [n for n, f in vars(Launcher).items() if inspect.isfunction(f) and not n.startswith("_")]
    assert sorted(methods) == ["kill", "poll", "start", "stop", "submission_id"]
    for cls in (LocalLauncher, JobLauncher, FakeLauncher):
        for name in methods:
            expected = list(inspect.signature(getattr(Launcher, name)).parameters)
            assert list(inspect.signature(getattr(cls, name)).parameters) == expected, (cls.__name__, name)


def plan(tmp_path, searches):
    spec = parse_spec({"searches": [{"name": n, "type": "ode", **TINY, "after": after} for n, after in searches]}, ".")
    manifest = Manifest(tmp_path, {"run": "r", "zoo": str(tmp_path / "zoo"), "searches": {}})
    core._plan(manifest, spec)
    return spec, manifest


def execute(tmp_path, monkeypatch, searches, launcher, max_parallel=0):
    monkeypatch.setattr(core, "POLL_S", 0)
    spec, manifest = plan(tmp_path, searches)
    core.Coordinator(tmp_path, spec, manifest, launcher, max_parallel).execute([e.name for e in spec.searches])
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
    assert last_error_line("x\nTraceback\nValueError: bad\nmedtune: error: --budget: too small\nbye\n") == \
        "--budget: too small"
    assert last_error_line("a\nRuntimeError: boom\ntrailing\n") == "RuntimeError: boom"
    assert last_error_line("==== header\nonly line\n") == "only line"


def fake_run(run_dir: Path, states: dict, coordinator_pid=None) -> Path:
    """A run folder as a coordinator leaves it: run.json and, for started searches, status.json.
    Its run.json is as medtune wrote it before it recorded the manifest's schema (no ``schema``)."""
    import socket

    run_dir.mkdir(parents=True, exist_ok=True)
    searches = {}
    for name, state in states.items():
        out = run_dir / name
        searches[name] = {"type": "ode", "after": [], "dataset": "adrenalmnist3d", "out": str(out), "state": state,
                          "reason": "", "exit_code": None, "attempts": 1, "pid": None, "job_id": None}
        if state != "pending":
            out.mkdir()
            (out / "status.json").write_text(json.dumps({"state": state, "stage": "search", "experiments": {
                "ode_search": {"done": 3, "running": 1, "pending": 0, "failed": 1, "best": 0.75,
                               "metric": "best_val_auc"}}}))
    coordinator = {"pid": coordinator_pid or os.getpid(), "host": socket.gethostname(), "state": "running"}
    (run_dir / "run.json").write_text(json.dumps({"run": "r1", "zoo": str(run_dir / "zoo"), "spec": "spec.yaml",
                                                  "searches": searches, "coordinator": coordinator}))
    return run_dir


def test_status_and_report_of_a_run_whose_coordinator_is_gone(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run_dir = fake_run(tmp_path / "run", {"a": "running", "b": "pending"}, coordinator_pid=gone.pid)
    (run_dir / "a" / "candidates.csv").write_text("candidate,status\n" + "".join(f"{i},ok\n" for i in range(40)))
    (run_dir / "a" / "plot.png").write_bytes(b"\x89PNG fake")
    text = format_status(run_status(run_dir))
    assert f"coordinator not running (pid {gone.pid} is gone); `medtune resume {run_dir}` continues" in text
    assert [ln.split()[:7] for ln in text.splitlines()[2:4]] == [
        ["a", "ode", "running", "search", "3", "1", "1"], ["b", "ode", "pending", "-", "0", "0", "0"]]
    assert "best_val_auc 0.75 (ode_search)" in text

    from orchestrator.run_report import write_report

    report = write_report(run_dir).read_text()
    assert "no summary yet; live status" in report and "first 15 of 40 rows" in report
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in report and 'id="b"' in report and "no models yet" in report


def test_run_refusals_leave_no_run_behind(tmp_path):
    from medcore.errors import ConfigError

    spec = write_spec(tmp_path / "spec.yaml", [{"name": "a", "type": "ode", **TINY}])
    with pytest.raises(ConfigError, match="--out is required"):
        core.run(str(spec))
    with pytest.raises(ConfigError, match="--address must be the cluster's dashboard"):
        core.run(str(spec), str(tmp_path / "r"), address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="--max-parallel must be >= 0"):
        core.run(str(spec), str(tmp_path / "r"), max_parallel=-1)
    assert not (tmp_path / "r" / "run.json").exists()
    fake_run(tmp_path / "done", {"a": "done"})
    with pytest.raises(RunError, match="already holds a run; continue it with `medtune resume"):
        core.run(str(spec), str(tmp_path / "done"))


def test_resume_of_a_finished_run_does_nothing(tmp_path, capsys):
    run_dir = fake_run(tmp_path / "run", {"a": "done", "b": "done"})
    manifest = (run_dir / "run.json").read_text()
    assert core.resume(str(run_dir)) == 0
    assert "nothing to resume: all 2 searches" in capsys.readouterr().out
    assert (run_dir / "report.html").exists()  # written if the finished run had none
    assert json.loads((run_dir / "run.json").read_text())["searches"] == json.loads(manifest)["searches"]


def test_a_new_run_names_its_schema_and_a_schemaless_one_still_resumes(tmp_path, monkeypatch):
    """run.json with and without ``schema``: a new run writes it; a run written before it was
    recorded loads, reports and resumes (resume's first save adds it)."""
    driven = []
    monkeypatch.setattr(core, "_drive", lambda run_dir, spec, manifest, names, *rest: driven.append(names) or 0)
    spec = write_spec(tmp_path / "spec.yaml", [{"name": "a", "type": "ode", **TINY},
                                               {"name": "b", "type": "ode", **TINY, "seed": 1}])
    assert core.run(str(spec), str(tmp_path / "new")) == 0
    assert next(iter(json.loads((tmp_path / "new" / "run.json").read_text()).items())) == ("schema", SCHEMA)

    run_dir = fake_run(tmp_path / "old", {"a": "done", "b": "failed"})
    shutil.copy(spec, run_dir / "spec.yaml")
    assert "schema" not in json.loads((run_dir / "run.json").read_text())
    assert [s["state"] for s in run_status(run_dir)["searches"]] == ["done", "failed"]
    from orchestrator.run_report import write_report

    assert 'id="b"' in write_report(run_dir).read_text()
    assert core.resume(str(run_dir)) == 0 and driven == [["a", "b"], ["b"]]
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["schema"] == SCHEMA and saved["run"] == "r1" and saved["searches"]["a"]["state"] == "done"


def test_another_kind_of_run_json_is_refused_in_one_line(tmp_path):
    """A search's folder (its driver's run.json) and a manifest of another schema are not runs."""
    from orchestrator import driver

    assert driver.MANIFEST == SEARCH_MANIFEST  # the name the coordinator looks for in a search's folder
    search = tmp_path / "search"
    search.mkdir()
    (search / "run.json").write_text(json.dumps({"search": "ode", "run": "ode-1", "config": {}}))
    with pytest.raises(RunError, match=r"holds one 'ode' search \(its driver's run.json\), not a medtune run"):
        run_status(search)
    run_dir = fake_run(tmp_path / "run", {"a": "done"})
    manifest = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**manifest, "schema": "medtune.coordinator-run/99"}))
    with pytest.raises(RunError, match="has schema 'medtune.coordinator-run/99'.*another medtune version"):
        core.resume(str(run_dir))


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


# the demo's ODE search is multi-fidelity (rungs of 1 epoch, then 2 here): max_epochs must exceed min_epochs
DEMO_TINY = {"ode": {"budget": 4, "pop_size": 4, "fraction": 0.05, "min_gflops": 0.0, "max_gflops": 0.05, "retrain_epochs": 1,
                     "fit": {"max_epochs": 2, "metric": "val_auc", "head_bias": "prior"}},
             "compress": {"model": "resnet10", "fit": {"max_epochs": 1}, "budget": 2, "initial": 2, "ctaea_gens": 2}}


@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_the_demo_spec_runs_on_a_machine_where_ray_never_ran(tmp_path):
    """``make demo`` on a new machine: HOME is an empty folder (no ~/.ray/auth_token; token auth
    is Ray 2.60's default), the shipped demo spec with tiny budgets. `ray start` makes no token
    (ray.init does), so the coordinator makes one, private to its owner."""
    demo = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "demo.yaml").read_text())
    for entry in demo["searches"]:
        entry.update(DEMO_TINY[entry["type"]], data_root=str(SAMPLE_ROOT))
    spec = write_spec(tmp_path / "demo.yaml", demo["searches"])
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in ENV.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    token = home / ".ray" / "auth_token"
    assert token.is_file() and len(token.read_text().strip()) == 64
    assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o077 == 0
    assert f"made Ray's auth token {token}" in proc.stderr
    run_dir = tmp_path / "run"
    manifest = json.loads((run_dir / "run.json").read_text())["searches"]
    assert {n: r["state"] for n, r in manifest.items()} == {"ode_adrenal": "done", "compress_adrenal": "done"}
    report = (run_dir / "report.html").read_text()
    for needle in ('id="ode_adrenal"', 'id="compress_adrenal"', "candidates.csv", "data:image/png;base64,",
                   "Model zoo"):
        assert needle in report
    from orchestrator.zoo import read_zoo

    runs = {json.loads((run_dir / n / "run.json").read_text())["run"] for n in manifest}
    assert set(read_zoo(run_dir / "zoo")["run"]) == runs  # both searches added to the run's one zoo
    status = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", str(run_dir), "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    by_name = {s["name"]: s for s in json.loads(status.stdout)["searches"]}
    assert by_name["ode_adrenal"]["trials"]["done"] >= 1 and by_name["ode_adrenal"]["best"]["metric"] == "best_val_auc"


def _toy(name: str, **kw) -> dict:
    """A spec entry of the test-only toy search (registered through ``MEDTUNE_SEARCHES`` in
    ``ENV``): instant trials, so these tests time the coordinator, not training."""
    return {"name": name, "type": "toy", "n_trials": 3, "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
            **kw}


@pytest.mark.ray
@pytest.mark.timeout(900)  # Ray nodes and driver processes: minutes on a busy 2-core machine
def test_run_status_report_failure_and_resume(tmp_path):
    """Two toy searches at once and one that the driver refuses at start (a trial asks for more
    CPUs than the node has: valid in the spec, refused by the cluster). Skipping the dependents
    of a failed search is covered with the fake launcher above; a real search's report and zoo
    under the coordinator by the demo test."""
    run_dir = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.yaml", [
        _toy("a", sleep=1.0), _toy("b", seed=1, sleep=1.0), _toy("bad", seed=2, resources={"cpus_per_trial": 64})])
    proc = start("run", spec, "--out", run_dir)
    wait_for(lambda: (run_dir / "a" / "status.json").exists(), proc)
    # while it runs: status reads (the coordinator holds the lock), a second coordinator is refused
    status = medtune("status", run_dir)
    assert status.returncode == 0 and "coordinator running" in status.stdout, status.stderr
    assert all(name in status.stdout for name in ("a", "b", "bad"))
    second = medtune("run", spec, "--out", run_dir)
    assert second.returncode == 2 and "in use by another coordinator" in second.stderr
    assert second.stderr.count("\n") == 1
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]

    manifest = json.loads((run_dir / "run.json").read_text())["searches"]
    assert manifest["a"]["state"] == manifest["b"]["state"] == "done"
    assert manifest["bad"]["state"] == "failed" and manifest["bad"]["exit_code"] == 2
    assert "--cpus-per-trial 64 is more than any node of the cluster has" in manifest["bad"]["reason"]
    assert "bad: failed (exit 2: --cpus-per-trial 64" in err
    assert (run_dir / "spec.yaml").read_text() == spec.read_text()
    for name in ("a", "b"):
        assert (run_dir / name / "summary.json").exists() and (run_dir / name / "driver.log").stat().st_size > 0
        assert manifest[name]["resume"] is False
        assert sorted((run_dir / name / "runs.log").read_text().split()) == ["0", "1", "2"]
    report = (run_dir / "report.html").read_text()
    assert all(needle in report for needle in ('id="a"', 'id="b"', 'id="bad"', "--cpus-per-trial 64"))

    status = json.loads(medtune("status", run_dir, "--json").stdout)
    by_name = {s["name"]: s for s in status["searches"]}
    assert status["coordinator"]["state"] == "failed"
    assert by_name["a"]["trials"]["done"] == 3 and by_name["bad"]["state"] == "failed"

    # fix the failed search in the run's spec copy; resume runs only it
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
    assert before == {n: (run_dir / n / "summary.json").stat().st_mtime for n in ("a", "b")}
    assert (run_dir / "bad" / "summary.json").exists() and "--cpus-per-trial 64" not in (
        run_dir / "report.html").read_text()
    # a finished run: nothing to do
    again = medtune("resume", run_dir)
    assert again.returncode == 0 and "nothing to resume" in again.stdout


@pytest.mark.ray
@pytest.mark.timeout(900)  # Ray nodes and driver processes: minutes on a busy 2-core machine
def test_sigkilled_coordinator_resumes_without_losing_or_repeating_trials(tmp_path):
    """SIGKILL the coordinator alone: its search driver follows (stopped, so it saves Tune's
    state), the Ray node's temp dir is cleaned on resume, and the resumed run trains each
    remaining trial once. The driver-level kill-and-resume of a real ODE search (searcher state
    + Tune restore) is tests/orchestrator/test_cli.py's."""
    n = 8
    spec = write_spec(tmp_path / "spec.yaml", [_toy("s", n_trials=n, sleep=1.5)])
    run_dir = tmp_path / "run"
    proc = start("run", spec, "--out", run_dir)
    wait_for(lambda: len(finished_trials(run_dir / "s")) >= 2, proc, timeout=600)
    time.sleep(3)  # Tune saves the experiment state every 2 s
    driver_pid = json.loads((run_dir / "run.json").read_text())["searches"]["s"]["pid"]
    os.kill(proc.pid, signal.SIGKILL)  # the coordinator alone: its children must follow
    proc.communicate()
    deadline = time.time() + 120
    while _alive(driver_pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(driver_pid), "the search's driver outlived its SIGKILLed coordinator"
    assert json.loads((run_dir / "s" / "status.json").read_text())["state"] == "interrupted"  # stopped, not killed
    before = finished_trials(run_dir / "s")
    assert 2 <= len(before) < n
    status = medtune("status", run_dir)
    assert "coordinator not running" in status.stdout and "medtune resume" in status.stdout

    killed_node = json.loads((run_dir / "run.json").read_text())["coordinator"]["ray_temp_dir"]
    resumed = medtune("resume", run_dir, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not Path(killed_node).exists()  # the killed run's Ray temp dir is cleaned up
    assert finished_trials(run_dir / "s") == set(range(n))  # nothing evaluated before the kill was lost
    started = [int(i) for i in (run_dir / "s" / "runs.log").read_text().split()]
    assert all(started.count(i) == 1 for i in before)  # and no finished trial was trained again
    assert json.loads((run_dir / "s" / "summary.json").read_text())["n_ok"] == n


def test_a_search_job_carries_the_plugin_searches_of_its_coordinator(monkeypatch, tmp_path):
    """A job's driver must resolve the same search names as the coordinator that submitted it."""
    submitted = []

    class Client:
        def get_job_status(self, job_id):
            raise RuntimeError("no such job")

        def submit_job(self, **kw):
            submitted.append(kw)

    launcher = JobLauncher.__new__(JobLauncher)
    launcher.address, launcher.run_id, launcher.python, launcher.client = "http://h:8265", "r1", "python", Client()
    monkeypatch.delenv("MEDTUNE_SEARCHES", raising=False)
    launcher.start("a", "ode", {"out": str(tmp_path)}, tmp_path / "driver.log", 1)
    assert submitted[-1]["runtime_env"] is None
    monkeypatch.setenv("MEDTUNE_SEARCHES", "toy=tests.orchestrator.toy_search:ToySearch")
    launcher.start("t", "toy", {"out": str(tmp_path)}, tmp_path / "driver.log", 1)
    assert submitted[-1]["runtime_env"] == {"env_vars": {"MEDTUNE_SEARCHES": "toy=tests.orchestrator.toy_search:ToySearch"}}
    assert submitted[-1]["submission_id"] == "medtune-r1-t-1"
