"""The driver end to end: bad input, a tiny real search, a clean stop on Ctrl+C or SIGTERM, and resume
after a killed driver."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from medcore.errors import MedtuneError
from orchestrator.cli import main
from orchestrator.config import FitOptions, ODESearchConfig
from orchestrator.data import SAMPLE_ROOT
from orchestrator.driver import run_search
from tests.figures import assert_same_points, capture, series
from tests.orchestrator.toy_search import finished_trials

SAMPLE = ["--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT)]


@pytest.mark.parametrize("args,message", [
    (["search", "ode", "--dataset", "nosuchmnist"], "unknown MedMNIST flag 'nosuchmnist'"),
    (["search", "ode", *SAMPLE, "--budget", "5", "--pop-size", "10"],
     "--budget: must be at least --pop-size (10), got 5"),
    (["search", "ode", *SAMPLE, "--fraction", "1.5"], "--fraction: must be in (0, 1]"),
    (["search", "ode", *SAMPLE, "--fraction", "0"], "--fraction: must be in (0, 1]"),
    (["search", "ode", *SAMPLE, "--val-fraction", "0"], "--val-fraction: must be in (0, 1]"),
    (["search", "ode", *SAMPLE, "--size", "30"], "--size: must be 28, 64, 128 or 224"),
    (["search", "ode", *SAMPLE, "--max-epochs", "0"], "--max-epochs: must be >= 1"),
    (["search", "ode", *SAMPLE, "--cpus-per-trial", "0"], "--cpus-per-trial: must be > 0"),
    (["search", "ode", "--config-json", '{"budget": "many"}'], "budget: expected int, got 'many'"),
    (["search", "ode", "--config-json", '{"fit": {"epochs": 3}}'], "fit.epochs: unknown field"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    assert main(args + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: ") and message in err and "\n" not in err


def test_missing_and_corrupt_files(capsys, tmp_path):
    assert main(["search", "ode", "--dataset", "nodulemnist3d", "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nodulemnist3d.npz not found in" in err and "expected MD5 8755a7e9e05a4d9ce80a24c3e7a256f3" in err
    (tmp_path / "vesselmnist3d.npz").write_bytes(b"garbage")
    assert main(["search", "ode", "--dataset", "vesselmnist3d", "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "corrupt or not the official file" in capsys.readouterr().err


def test_console_script_exits_non_zero():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "search", "ode", "--dataset", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("medtune: error: unknown MedMNIST flag")


def test_data_synth_and_check(capsys, tmp_path):
    assert main(["data", "synth", "organmnist3d", "--root", str(tmp_path), "--n", "11", "11", "11"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert main(["data", "check", "organmnist3d", "--root", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["synthetic"] is True and info["splits"] == {"train": 11, "val": 11, "test": 11}


def test_tiny_search_on_the_shipped_sample(ray_local, tmp_path, monkeypatch):
    figures = capture(monkeypatch)
    cfg = ODESearchConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(tmp_path), budget=6,
                          pop_size=4, fraction=0.1, max_gflops=0.05, top_k=2, retrain_epochs=1, seed=0,
                          fit=FitOptions(max_epochs=2))
    summary = run_search("ode", cfg)
    assert summary["search"] == "ode" and summary["dataset"] == "adrenalmnist3d" and summary["synthetic"] is False
    table = pd.read_csv(tmp_path / "candidates.csv")
    trained = table[table.status == "ok"]
    assert summary["n_evaluated"] == len(table[table.status.isin(["ok", "failed"])]) > 0
    assert trained.architecture.is_unique and (trained.flops <= 0.05e9).all()
    assert trained.val_auc.between(0, 1).all() and trained.test_auc.between(0, 1).all()
    best = summary["best"]
    assert best and 0 <= best["test_acc"] <= 1 and best["params"] > 0 and best["flops"] > 0
    top = pd.read_csv(tmp_path / "top_models.csv")
    assert len(top) == min(2, len(trained)) and (top.status == "ok").all()
    for png in ("best_fitness_per_generation.png", "test_auc_vs_params.png"):
        assert (tmp_path / png).is_file() and png in figures, png
    # the plots draw the table: best fitness so far after each generation, every trained candidate
    best_so_far, expected = float("-inf"), []
    for gen in sorted(table.generation.unique()):
        best_so_far = max([best_so_far, *table[table.generation == gen].fitness.dropna()])
        expected.append((gen, best_so_far))
    [progress] = figures["best_fitness_per_generation.png"]
    [(_, line)] = progress["lines"]
    assert_same_points(line, [p for p in expected if p[1] > float("-inf")])
    assert len(line) >= 2 and line[-1, 1] == trained.fitness.max()
    [auc] = figures["test_auc_vs_params.png"]
    measured = table[table.test_auc.notna() & (table.params > 0)]
    assert len(measured) >= len(trained)
    assert_same_points(series(auc, "points", "search (low fidelity)"), zip(measured.params, measured.test_auc))
    assert_same_points(series(auc, "points", "top-k retrained"), zip(top.params, top.test_auc))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["best"]["architecture"] == best["architecture"]
    # every trained candidate and the retrained top models (with weights) are in the zoo
    from orchestrator.zoo import read_zoo

    zoo = read_zoo(tmp_path / "zoo", dataset="adrenalmnist3d")
    assert saved["zoo"]["rows"] == len(zoo) == summary["n_evaluated"] + len(top)
    retrained = zoo[zoo.stage == "retrain"]
    assert len(retrained) == len(top) and retrained.weights.notna().all()
    assert (zoo[zoo.stage == "search"].encoding.map(len) == 99).all()
    # trials log to TensorBoard in their storage folders
    assert list((tmp_path / "tune" / "ode_search").glob("*/events.out.tfevents.*"))
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "done" and status["experiments"]["ode_search"]["done"] == summary["n_evaluated"]
    # the same --out without --resume never overwrites a finished run
    with pytest.raises(MedtuneError, match="already holds a ode run; pass --resume"):
        run_search("ode", cfg)


def _trial_dirs(out: Path):
    """Trial folders Tune recorded (a SIGKILL can leave the folder of a trial started after the
    last state save; Tune never knew it, and the restored searcher suggests that candidate again)."""
    return sorted(d for d in (out / "tune" / "ode_search").glob("cand*") if (d / "params.json").exists())


def _finished_dir(d: Path) -> bool:
    r = d / "result.json"
    return r.exists() and "done_training" in r.read_text()


def _sigint_default():
    # A test run from a background job without job control (CI) inherits SIGINT ignored, and a
    # Python started that way ignores Ctrl+C too; give the driver what a terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cmd, env, **kw):
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_sigint_default, **kw)


def _wait_for_trials(proc, out: Path, n: int) -> None:
    deadline = time.time() + 300
    while len(_trial_dirs(out)) < n and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "search ended before it could be interrupted"
    time.sleep(3)  # Tune saves experiment + searcher state every 2 s (TUNE_GLOBAL_CHECKPOINT_S)


TOY_ENV = {"MEDTUNE_SEARCHES": "toy=tests.orchestrator.toy_search:ToySearch"}
# Tune saves the experiment state every 2 s (TUNE_GLOBAL_CHECKPOINT_S); a trial that finished
# this long before a stop is in the saved state.
SAVED_S = 4.0



def _wait_for_toy(proc, out: Path, n: int) -> None:
    deadline = time.time() + 300
    while len(finished_trials(out)) < n and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
    assert proc.poll() is None, "search ended before it could be interrupted"
    time.sleep(SAVED_S + 1)  # so the trials counted are in Tune's saved state at the stop


@pytest.mark.ray
def test_ctrl_c_and_sigterm_stop_the_driver_cleanly_and_it_resumes(tmp_path):
    """Ctrl+C (SIGINT to the foreground group) and SIGTERM (what `ray job stop` and schedulers
    send) stop the driver on the same clean path: it says how to resume, exits 130 / 143, and
    does not summarise the half-done search (Tune alone would end it as finished); the resumed
    search finishes, and no trial that had finished before Tune's last state save (every 2 s,
    ``TUNE_GLOBAL_CHECKPOINT_S``) runs again: a stop costs at most the last seconds of work.
    Driven by the toy plugin search (its trials only sleep): the real ODE search's
    kill-and-resume is the next test."""
    out = tmp_path / "run"
    n = 48
    cmd = [sys.executable, "-m", "orchestrator.cli", "search", "toy", "--n-trials", str(n), "--sleep", "0.5",
           "--max-concurrent", "1", "--out", str(out)]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")},
           **TOY_ENV}
    saved = set()  # trials finished more than SAVED_S before a stop: in Tune's saved state

    proc = _start(cmd, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_toy(proc, out, 2)
    stopped = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted;" in err and "rerun with --resume" in err, err[-2000:]
    assert not (out / "summary.json").exists()
    interrupted = finished_trials(out)
    assert 2 <= len(interrupted) < n
    saved |= finished_trials(out, before=stopped - SAVED_S)

    proc = _start(cmd + ["--resume"], env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_toy(proc, out, len(interrupted) + 1)
    stopped = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated;" in err and "rerun with --resume" in err, err[-2000:]
    assert "Traceback" not in err and not (out / "summary.json").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "interrupted"
    assert interrupted < finished_trials(out)
    saved |= finished_trials(out, before=stopped - SAVED_S)
    assert saved  # the check below is not vacuous

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert finished_trials(out) == set(range(n))
    started = [int(i) for i in (out / "runs.log").read_text().split()]
    assert all(started.count(i) == 1 for i in saved), started  # no saved trial ran again
    assert json.loads((out / "summary.json").read_text())["n_ok"] == n


@pytest.mark.ray
def test_a_sigkilled_driver_resumes_without_losing_or_repeating_candidates(tmp_path):
    """The real risk of resume: the ODE searcher's own state and Tune's experiment restored after
    a SIGKILL, when nothing could be saved at the kill itself."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "orchestrator.cli", "search", "ode", *SAMPLE, "--budget", "8", "--pop-size", "4",
           "--max-epochs", "1", "--fraction", "0.1", "--max-gflops", "0.1", "--top-k", "0", "--seed", "1",
           "--max-concurrent", "1", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")}

    # killed in the first generation: the resumed searcher finishes it and runs the second
    proc = _start(cmd, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_trials(proc, out, 4)  # one trial at a time: a 4th folder means 3 were evaluated
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {d.name for d in _trial_dirs(out) if _finished_dir(d)}
    assert len(before) >= 2, [(d.name, sorted(p.name for p in d.iterdir())) for d in _trial_dirs(out)]
    assert not (out / "summary.json").exists()

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    dirs = _trial_dirs(out)
    assert before <= {d.name for d in dirs}  # nothing evaluated before the kill was lost
    archs = [json.dumps(json.loads((d / "params.json").read_text())["architecture"], sort_keys=True) for d in dirs]
    assert len(archs) == len(set(archs))  # and no architecture was trained twice
    table = pd.read_csv(out / "candidates.csv")
    assert len(table[table.status == "ok"]) == len(dirs)
    assert json.loads((out / "summary.json").read_text())["n_evaluated"] == len(dirs)


def test_a_search_that_stopped_early_is_refused_not_summarised(tmp_path):
    from orchestrator.registry import get
    from orchestrator.search import RunContext
    from searchers.ode import ODESearcher

    ctx = RunContext(search=get("ode"), cfg=ODESearchConfig(dataset="adrenalmnist3d", out=str(tmp_path)), data=None,
                     run_id="r")
    searcher = ODESearcher(pop_size=4, budget=8, seed=0)
    with pytest.raises(MedtuneError, match=r"ode_search experiment stopped before its searcher finished.*--resume"):
        ctx.require_finished(searcher, "ode_search")
    searcher.finished = True
    ctx.require_finished(searcher, "ode_search")


# ---- flags are never abbreviated; one schema for flags, --config-json and specs ----------------

@pytest.mark.parametrize("args,flag", [
    (["search", "ode", *SAMPLE, "--max-gflop", "1"], "--max-gflop"),
    (["run", "spec.yaml", "--ou", "x"], "--ou"),
    (["zoo", "list", "--zoo", "z", "--lim", "3"], "--lim"),
])
def test_flags_are_not_abbreviated(args, flag, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2 and f"unrecognized arguments: {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], "--seed: must be in [0, 4294967295], got -1"),
    (["--seed", str(2**32)], "--seed: must be in [0, 4294967295], got 4294967296"),
    (["--max-gflops", "nan"], "--max-gflops: must be a finite number, got nan"),
    (["--weight-decay", "inf"], "--weight-decay: must be a finite number, got inf"),
    (["--cpus-per-trial", "nan"], "--cpus-per-trial: must be a finite number, got nan"),
    (["--config-json", '{"fit": {"weight_decay": NaN}}'], "fit.weight_decay: must be a finite number, got nan"),
    (["--config-json", '{"seed": -1}'], "seed: must be in [0, 4294967295], got -1"),
    (["--config-json", "[" * 100_000], "--config-json is nested too deeply"),
])
def test_the_spec_checks_serve_the_flags(args, message, capsys, tmp_path):
    assert main(["search", "ode", *SAMPLE, *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_gpus_this_machine_lacks_are_refused_before_the_search_starts(capsys, tmp_path, monkeypatch):
    from orchestrator import config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(config, "local_gpu_count", lambda: 0)
    assert main(["search", "ode", *SAMPLE, "--gpus-per-trial", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "--gpus-per-trial: this machine has no GPU, got 0.5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_seed_without_a_config_class_is_checked_too(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["data", "synth", "breastmnist", "--root", str(tmp_path), "--seed", "-1"])
    assert info.value.code == 2 and "argument --seed: must be in [0, 4294967295], got -1" in capsys.readouterr().err


# ---- an unexpected error: its traceback with the run, and the command that continues it ------

@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _spec(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps({"searches": [{"name": "a", "type": "ode", "dataset": "adrenalmnist3d",
                                              "data_root": str(SAMPLE_ROOT), "budget": 4, "pop_size": 4}]}))
    return path


def _unexpected(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("medtune: error: RuntimeError: boom (traceback in "), err
    return err


def test_a_run_that_started_keeps_its_traceback_and_names_medtune_resume(tmp_path, capsys, monkeypatch, temp_dir):
    from orchestrator.coordinator import core

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(core, "_drive", boom)  # after the run folder and its manifest exist
    run_dir = (tmp_path / "run").resolve()
    assert main(["run", str(_spec(tmp_path)), "--out", str(run_dir)]) == 1
    err = _unexpected(capsys)
    assert f"(traceback in {run_dir / 'medtune-error.log'})" in err
    assert err.endswith(f"; everything evaluated is saved; `medtune resume {run_dir}` continues the run")
    assert "--resume" not in err and "Traceback" in (run_dir / "medtune-error.log").read_text()
    assert not list(temp_dir.iterdir())


def test_a_run_that_never_started_has_no_resume_hint_and_no_folder(tmp_path, capsys, monkeypatch, temp_dir):
    from orchestrator import spec

    def boom(entries):
        raise RuntimeError("boom")

    monkeypatch.setattr(spec, "topological_order", boom)
    assert main(["run", str(_spec(tmp_path)), "--out", str(tmp_path / "run")]) == 1
    err = _unexpected(capsys)
    assert f"(traceback in {temp_dir / 'medtune-error.log'})" in err and err.endswith(".log)")
    assert "medtune resume" not in err and "--resume" not in err and not (tmp_path / "run").exists()


def test_an_interrupted_run_that_never_started_says_so(tmp_path, capsys, monkeypatch):
    from orchestrator import spec

    def interrupt(entries):
        raise KeyboardInterrupt

    monkeypatch.setattr(spec, "topological_order", interrupt)
    assert main(["run", str(_spec(tmp_path)), "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == "medtune: interrupted; nothing had started"


@pytest.mark.parametrize("started", [True, False])
def test_a_search_names_resume_only_once_it_started(tmp_path, capsys, monkeypatch, temp_dir, started):
    from orchestrator import driver

    out = tmp_path / "o"

    def boom(search, cfg):
        out.mkdir()
        if started:
            (out / "run.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setattr(driver, "run_search", boom)
    assert main(["search", "ode", *SAMPLE, "--out", str(out)]) == 1
    err = _unexpected(capsys)
    assert f"(traceback in {out.resolve() / 'medtune-error.log'})" in err
    assert err.endswith("; everything evaluated is saved; rerun with --resume to continue") == started
    assert ("--resume" in err) == started and "medtune resume" not in err


def test_a_search_started_by_medtune_run_names_medtune_resume(tmp_path, capsys, monkeypatch, temp_dir):
    from orchestrator import driver

    run_dir = (tmp_path / "run").resolve()
    (run_dir / "a").mkdir(parents=True)
    for name in ("run.json", "spec.yaml", "a/run.json"):
        (run_dir / name).write_text("{}")

    def boom(search, cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(driver, "run_search", boom)
    config = {"dataset": "adrenalmnist3d", "data_root": str(SAMPLE_ROOT), "out": str(run_dir / "a")}
    assert main(["search", "ode", "--config-json", json.dumps(config)]) == 1
    err = _unexpected(capsys)
    assert f"(traceback in {run_dir / 'a' / 'medtune-error.log'})" in err
    assert err.endswith(f"`medtune resume {run_dir}` continues the run") and "--resume" not in err
