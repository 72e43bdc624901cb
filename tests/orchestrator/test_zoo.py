"""The model zoo: schema, partitions, filters, de-duplication, atomic writes, ranking and the CLI handlers."""
import argparse
import json
import math
import os
import threading
from datetime import timedelta

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from medcore.errors import MedtuneError
from medcore.records import METRICS, ModelRecord
from orchestrator import zoo
from orchestrator.zoo_commands import add_commands

INPUT = (1, 28, 28, 28)


def records(n, search="ode", stage="search", status="ok", metric=lambda i: {"val_auc": 0.5 + i / 100},
            weights=lambda i: None):
    return [ModelRecord(search=search, stage=stage, family="cell3d", architecture={"cell": i},
                        encoding=[i / 10, 1.0 - i / 10], status=status, metrics=metric(i), trial_id=f"t{i}",
                        weights=weights(i))
            for i in range(n)]


def rows(recs, dataset="adrenalmnist3d", run="r1", synthetic=False):
    return zoo.rows_from_records(recs, dataset=dataset, size=28, spatial_dims=3, task="binary-class",
                                 input_shape=INPUT, run=run, synthetic=synthetic)


def test_schema_round_trip(tmp_path):
    rec = ModelRecord(search="ode", stage="retrain", family="cell3d", architecture={"ops": ["conv", "pool"], "k": 3},
                      encoding=[0.25, 0.5, 1.0], status="ok", reason="",
                      metrics={"val_auc": 0.8, "test_acc": 0.7, "params": 18000, "best_epoch": 4,
                               "curve": [0.1, float("nan")], "val_loss": None},
                      build={"builder": "trainables.nets.tiny_cnn:TinyCNN", "kwargs": {"in_channels": 1}},
                      weights="/ckpt/t0", trial_id="t0")
    [row] = rows([rec], synthetic=True)
    assert row["model_id"] == rec.model_id("adrenalmnist3d", 28, "r1")
    [path] = zoo.write_rows(tmp_path, [row], "r1-ode-retrain")
    assert path == tmp_path / "dataset=adrenalmnist3d" / "r1-ode-retrain.parquet"
    assert "dataset" not in pq.read_schema(path).names  # the partition key lives in the folder name

    df = zoo.read_zoo(tmp_path)
    assert list(df.columns) == list(zoo.COLUMNS) and len(df) == 1
    got = df.iloc[0]
    assert got["dataset"] == "adrenalmnist3d" and got["size"] == 28 and got["spatial_dims"] == 3
    assert (got["search"], got["run"], got["stage"], got["family"]) == ("ode", "r1", "retrain", "cell3d")
    assert json.loads(got["architecture"]) == {"ops": ["conv", "pool"], "k": 3}
    assert list(got["encoding"]) == [0.25, 0.5, 1.0] and list(got["input_shape"]) == list(INPUT)
    assert got["val_auc"] == 0.8 and got["test_acc"] == 0.7 and got["params"] == 18000.0
    assert math.isnan(got["val_loss"]) and math.isnan(got["flops"])
    assert json.loads(got["metrics_extra"]) == {"best_epoch": 4, "curve": [0.1, None]}
    assert json.loads(got["build"])["builder"] == "trainables.nets.tiny_cnn:TinyCNN"
    assert got["weights"] == "/ckpt/t0" and bool(got["synthetic"]) is True and got["task"] == "binary-class"
    assert got["medtune_version"] and str(got["created"].tz) == "UTC"
    assert set(METRICS) <= set(df.columns)
    assert df["val_auc"].dtype == "float64" and df["size"].dtype == "int64"


def test_partitioned_by_dataset_and_pruned(tmp_path):
    zoo.write_rows(tmp_path, rows(records(3), "adrenalmnist3d") + rows(records(2), "organmnist3d"), "r1-ode-search")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset=adrenalmnist3d", "dataset=organmnist3d"]
    assert len(zoo.read_zoo(tmp_path, dataset="organmnist3d")) == 2
    # a corrupt file in another partition is never opened by a read for one dataset
    (tmp_path / "dataset=zzz").mkdir()
    (tmp_path / "dataset=zzz" / "broken.parquet").write_bytes(b"not parquet")
    assert set(zoo.read_zoo(tmp_path, dataset="adrenalmnist3d")["dataset"]) == {"adrenalmnist3d"}
    with pytest.raises(MedtuneError, match="unreadable Parquet in zoo"):
        zoo.read_zoo(tmp_path)


def test_filters_and_columns(tmp_path):
    zoo.write_rows(tmp_path, rows(records(4)), "r1-ode-search")
    zoo.write_rows(tmp_path, rows(records(3, search="compress", stage="search", status="infeasible")), "r1-compress")
    assert len(zoo.read_zoo(tmp_path)) == 7
    assert set(zoo.read_zoo(tmp_path, search="compress")["status"]) == {"infeasible"}
    assert len(zoo.read_zoo(tmp_path, status="ok")) == 4
    assert len(zoo.read_zoo(tmp_path, search=["ode", "compress"], status=["ok", "infeasible"])) == 7
    assert len(zoo.read_zoo(tmp_path, dataset="organmnist3d")) == 0
    df = zoo.read_zoo(tmp_path, columns=["model_id", "val_auc"])
    assert list(df.columns) == ["model_id", "val_auc"] and len(df) == 7
    with pytest.raises(MedtuneError, match="unknown zoo column"):
        zoo.read_zoo(tmp_path, columns=["nope"])


def test_dedupe_keeps_newest(tmp_path):
    old = rows(records(2, metric=lambda i: {"val_auc": 0.1}))
    new = rows(records(1, metric=lambda i: {"val_auc": 0.9}))
    new[0]["created"] = old[0]["created"] + timedelta(seconds=5)
    zoo.write_rows(tmp_path, new, "b-newer")
    zoo.write_rows(tmp_path, old, "a-older")
    df = zoo.read_zoo(tmp_path)
    assert len(df) == 2 and df["model_id"].is_unique
    assert df.set_index("model_id").loc[new[0]["model_id"], "val_auc"] == 0.9
    assert zoo.get_model(tmp_path, new[0]["model_id"])["val_auc"] == 0.9
    # status is filtered after de-duplication: a model whose newest row failed is not ok
    failed = rows(records(1, status="failed", metric=lambda i: {"val_auc": 0.95}))
    failed[0]["created"] = new[0]["created"] + timedelta(seconds=5)
    zoo.write_rows(tmp_path, failed, "c-newest")
    assert new[0]["model_id"] not in set(zoo.read_zoo(tmp_path, status="ok")["model_id"])
    assert new[0]["model_id"] not in set(zoo.best(tmp_path, "val_auc", n=5)["model_id"])
    assert zoo.get_model(tmp_path, new[0]["model_id"])["status"] == "failed"


def test_rewriting_a_writer_replaces_its_file(tmp_path):
    zoo.write_rows(tmp_path, rows(records(3, metric=lambda i: {"val_auc": 0.1})), "r1-ode-search")
    zoo.write_rows(tmp_path, rows(records(3, metric=lambda i: {"val_auc": 0.6})), "r1-ode-search")
    assert len(list(tmp_path.rglob("*.parquet"))) == 1
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 3  # no duplicate rows on disk, not only after de-duplication
    assert set(zoo.read_zoo(tmp_path)["val_auc"]) == {0.6}


def test_concurrent_writers_never_share_a_file(tmp_path):
    errors = []

    def writer(name, search):
        try:
            for _ in range(10):
                zoo.write_rows(tmp_path, rows(records(20, search=search), run=name), f"{name}-{search}-search")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"run{i}", "ode")) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["run0-ode-search.parquet", "run1-ode-search.parquet"]  # no temporaries left
    assert len(zoo.read_zoo(tmp_path)) == 40


def test_crash_mid_write_leaves_the_old_zoo(tmp_path, monkeypatch):
    zoo.write_rows(tmp_path, rows(records(3)), "r1-ode-search")

    def crash(src, dst):
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        zoo.write_rows(tmp_path, rows(records(5, metric=lambda i: {"val_auc": 0.0})), "r1-ode-search")
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "dataset=adrenalmnist3d").iterdir()] == ["r1-ode-search.parquet"]
    df = zoo.read_zoo(tmp_path)
    assert len(df) == 3 and 0.0 not in set(df["val_auc"])


def test_partial_temporaries_are_invisible_to_readers(tmp_path):
    """A writer killed before its rename leaves a dot-named temporary: pyarrow's discovery skips it."""
    zoo.write_rows(tmp_path, rows(records(3)), "r1-ode-search")
    folder = tmp_path / "dataset=adrenalmnist3d"
    good = (folder / "r1-ode-search.parquet").read_bytes()
    (folder / ".r2-ode-search.parquet.0123.tmp").write_bytes(good[: len(good) // 2])
    (folder / "_r3-ode-search.parquet").write_bytes(b"partial")
    assert len(zoo.read_zoo(tmp_path)) == 3 and len(zoo.best(tmp_path, "val_auc", n=10)) == 3


def test_empty_and_missing_zoo(tmp_path):
    for path in (tmp_path / "missing", tmp_path):
        df = zoo.read_zoo(path)
        assert df.empty and list(df.columns) == list(zoo.COLUMNS)
        assert zoo.best(path, "val_auc").empty
    assert zoo.write_rows(tmp_path, [], "r1-ode-search") == []


def test_best_ordering(tmp_path):
    metrics = [{"val_auc": 0.7, "val_loss": 0.5, "params": 300}, {"val_auc": 0.9, "val_loss": 0.9, "params": 100},
               {"val_auc": float("nan"), "val_loss": 0.1, "params": 200}, {"val_auc": 0.8, "params": 50}]
    recs = records(4, metric=lambda i: metrics[i])
    failed = records(1, stage="other", status="failed", metric=lambda i: {"val_auc": 1.0, "val_loss": 0.0})
    zoo.write_rows(tmp_path, rows(recs + failed), "r1")
    ids = [r.model_id("adrenalmnist3d", 28, "r1") for r in recs]
    assert list(zoo.best(tmp_path, "val_auc", n=5)["model_id"]) == [ids[1], ids[3], ids[0]]  # NaN, failed out
    assert list(zoo.best(tmp_path, "val_loss", n=5)["model_id"]) == [ids[2], ids[0], ids[1]]  # lower first
    assert list(zoo.best(tmp_path, "params", n=2)["model_id"]) == [ids[3], ids[1]]
    assert zoo.best(tmp_path, "val_auc", dataset="organmnist3d").empty
    with pytest.raises(MedtuneError, match="unknown metric 'accuracy'"):
        zoo.best(tmp_path, "accuracy")


def test_one_line_errors(tmp_path):
    file = tmp_path / "zoo.parquet"
    file.write_text("x")
    for call in (lambda: zoo.read_zoo(file), lambda: zoo.write_rows(file, rows(records(1)), "w")):
        with pytest.raises(MedtuneError, match="is a file, not a zoo folder"):
            call()
    zoo.write_rows(tmp_path / "z", rows(records(1)), "w")
    with pytest.raises(MedtuneError, match=f"^model abc not found in zoo {tmp_path / 'z'}$"):
        zoo.get_model(tmp_path / "z", "abc")
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(MedtuneError, match="writer id"):
            zoo.write_rows(tmp_path, rows(records(1)), bad)
    with pytest.raises(MedtuneError, match="dataset 'a=b'"):
        zoo.write_rows(tmp_path, rows(records(1), dataset="a=b"), "w")


# --- CLI handlers -------------------------------------------------------------------------------

def cli(argv):
    parser = argparse.ArgumentParser(prog="medtune")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def small_zoo(tmp_path):
    recs = records(3, metric=lambda i: {"val_auc": [0.6, 0.9, 0.7][i], "params": 1000 * (i + 1)},
                   weights=lambda i: f"/ckpt/t{i}")
    zoo.write_rows(tmp_path, rows(recs) + rows(records(1), dataset="organmnist3d", synthetic=True), "r1-ode-search")
    return tmp_path, [r.model_id("adrenalmnist3d", 28, "r1") for r in recs]


def test_cli_list(small_zoo, capsys):
    path, ids = small_zoo
    assert cli(["zoo", "list", "--zoo", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["model_id", "dataset", "search", "stage", "status", "val_auc"]
    assert len(out) == 5 and "SYNTHETIC" in "".join(out)
    assert cli(["zoo", "list", "--zoo", str(path), "--dataset", "adrenalmnist3d", "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1] == "(2 of 3 models; --limit 0 lists all)"
    assert all(line.split()[0] in ids for line in out[1:3])
    assert cli(["zoo", "list", "--zoo", str(path / "none")]) == 0
    assert "no models in zoo" in capsys.readouterr().out


def test_cli_show(small_zoo, capsys):
    path, ids = small_zoo
    assert cli(["zoo", "show", ids[1], "--zoo", str(path)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model_id"] == ids[1] and row["val_auc"] == 0.9 and row["val_loss"] is None
    assert row["architecture"] == {"cell": 1}
    with pytest.raises(MedtuneError, match=f"^model nope not found in zoo {path}$"):
        cli(["zoo", "show", "nope", "--zoo", str(path)])


def test_cli_best(small_zoo, capsys):
    path, ids = small_zoo
    assert cli(["zoo", "best", "--zoo", str(path), "--dataset", "adrenalmnist3d", "--n", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == [ids[1], ids[2]]
    assert out[0].split()[1] == "val_auc=0.9000"
    assert cli(["zoo", "best", "--zoo", str(path), "--metric", "params", "--n", "1"]) == 0
    assert capsys.readouterr().out.split()[0] == ids[0]
    with pytest.raises(MedtuneError, match="unknown metric 'auc'"):
        cli(["zoo", "best", "--zoo", str(path), "--metric", "auc"])
    with pytest.raises(MedtuneError, match="no model with status ok and a test_auc"):
        cli(["zoo", "best", "--zoo", str(path), "--metric", "test_auc"])



def test_medtune_main_prints_one_line_errors(small_zoo, capsys):
    from orchestrator.cli import main

    path, ids = small_zoo
    assert main(["zoo", "best", "--zoo", str(path), "--n", "1"]) == 0
    assert capsys.readouterr().out.split()[0] == ids[1]
    assert main(["zoo", "show", "nope", "--zoo", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"medtune: error: model nope not found in zoo {path}\n"


# --- usable rankings: weights, baselines, one-class models ---------------------------------------

def mixed_zoo(path):
    """The demo's shape: weightless search-stage rows rank highest on val, then the hand-made
    baseline (weights), then the retrained models (weights); one retrained model predicts one class."""
    search = records(3, stage="search", metric=lambda i: {"val_auc": 0.95 - i / 100})
    baseline = [ModelRecord(search="ode", stage="baseline", family="baseline", architecture={"model": "tiny3d"},
                            encoding=[], status="ok", metrics={"val_auc": 0.9}, weights="/ckpt/base", trial_id="b")]
    retrain = records(2, stage="retrain", weights=lambda i: f"/ckpt/r{i}",
                      metric=lambda i: {"val_auc": [0.85, 0.8][i], "test_pred_classes": [2, 1][i]})
    zoo.write_rows(path, rows(search + baseline + retrain), "r1-ode")
    ids = lambda recs: [r.model_id("adrenalmnist3d", 28, "r1") for r in recs]  # noqa: E731
    return ids(search), ids(baseline)[0], ids(retrain)


def test_pandas_null_weights_are_no_weights(tmp_path):
    zoo.write_rows(tmp_path, rows(records(2, weights=lambda i: "/ckpt/t1" if i else None)), "r1")
    df = zoo.read_zoo(tmp_path).sort_values("model_id")
    missing = [w for w in df["weights"] if not isinstance(w, str)]
    assert len(missing) == 1 and bool(missing[0])  # pandas reads a null string as NaN, which is truthy
    assert sorted(df["weights"].map(zoo.has_weights)) == [False, True]
    assert not zoo.has_weights(None) and not zoo.has_weights("") and not zoo.has_weights(float("nan"))


def test_zoo_best_ranks_usable_rows_and_says_what_it_skipped(tmp_path, capsys):
    search, baseline, retrain = mixed_zoo(tmp_path)
    assert cli(["zoo", "best", "--zoo", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == retrain  # the first id is a retrained model, with weights
    assert all(line.split("  ")[3] == "weights" for line in lines)
    assert "ONE CLASS" not in lines[0] and lines[1].endswith("weights  ONE CLASS")
    assert err == "skipped 3 rows without weights and 1 baseline; --any / --baselines to include them\n"

    assert cli(["zoo", "best", "--zoo", str(tmp_path), "--baselines"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == [baseline, *retrain]
    assert out.splitlines()[0].endswith("ode/baseline baseline params=-  weights  BASELINE")
    assert err == "skipped 3 rows without weights; --any to include them\n"

    assert cli(["zoo", "best", "--zoo", str(tmp_path), "--any", "--n", "10"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == [*search, *retrain]
    assert out.splitlines()[0].endswith("ode/search cell3d params=-  no weights (no stored weights)")
    assert err == "skipped 1 baseline; --baselines to include them\n"

    assert cli(["zoo", "best", "--zoo", str(tmp_path), "--any", "--baselines", "--n", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.split()[0] == search[0] and err == ""

    # the library call keeps its old meaning (every ok row) unless asked
    assert list(zoo.best(tmp_path, "val_auc", n=4)["model_id"]) == [*search, baseline]
    assert list(zoo.best(tmp_path, "val_auc", n=4, weights=True, baselines=False)["model_id"]) == retrain


def test_zoo_best_with_nothing_usable_is_one_line(tmp_path):
    zoo.write_rows(tmp_path, rows(records(2)), "r1")
    with pytest.raises(MedtuneError) as info:
        cli(["zoo", "best", "--zoo", str(tmp_path), "--dataset", "adrenalmnist3d"])
    assert str(info.value) == (f"no usable model with a val_auc for adrenalmnist3d in zoo {tmp_path}: "
                               f"skipped 2 rows without weights; --any to include them")


def test_a_recorded_reason_for_missing_weights_is_shown(tmp_path, capsys):
    recs = records(1, search="compress", metric=lambda i: {"val_auc": 0.7, zoo.WEIGHTS_REASON: "int8 model not kept"})
    zoo.write_rows(tmp_path, rows(recs), "r1")
    [model_id] = [r.model_id("adrenalmnist3d", 28, "r1") for r in recs]
    assert cli(["zoo", "best", "--zoo", str(tmp_path), "--any"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("no weights (int8 model not kept)")
    assert cli(["zoo", "show", model_id, "--zoo", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["no_weights"] == "int8 model not kept"


def test_baseline_marker_written_and_derived_for_old_zoos(tmp_path):
    assert zoo.is_baseline("ode", "baseline") and zoo.is_baseline("compress", "base")
    assert zoo.is_baseline("strategy", "retrain-default") and not zoo.is_baseline("strategy", "retrain-best")
    assert zoo.is_baseline("darts", "stage1") and zoo.is_baseline("darts", "stage3", '{"skip": "attention"}')
    assert not zoo.is_baseline("darts", "stage3", {"skip": "iac", "genotype": [["conv", 0]]})
    assert not zoo.is_baseline("ode", "search") and not zoo.is_baseline("ode", "retrain")

    search, baseline, retrain = mixed_zoo(tmp_path / "new")
    df = zoo.read_zoo(tmp_path / "new").set_index("model_id")
    assert df["baseline"].dtype == bool and list(df.loc[[baseline, *retrain], "baseline"]) == [True, False, False]

    # a zoo written before the column existed: the files lack it, the reader derives it
    old = pq.read_table(next((tmp_path / "new").rglob("*.parquet"))).drop_columns(["baseline"])
    folder = tmp_path / "old" / "dataset=adrenalmnist3d"
    folder.mkdir(parents=True)
    pq.write_table(old, folder / "r1-ode.parquet")
    got = zoo.read_zoo(tmp_path / "old").set_index("model_id")
    assert got["baseline"].to_dict() == df["baseline"].to_dict()
    assert zoo.read_zoo(tmp_path / "old", columns=["model_id", "baseline"]).set_index("model_id")[
        "baseline"].to_dict() == df["baseline"].to_dict()
    assert zoo.get_model(tmp_path / "old", baseline)["baseline"] is True


def test_one_class_models_are_flagged_in_list_and_show(tmp_path, capsys):
    search, baseline, retrain = mixed_zoo(tmp_path)
    assert cli(["zoo", "list", "--zoo", str(tmp_path), "--limit", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-2:] == ["weights", "notes"]
    by_id = {line.split()[0]: line for line in lines[1:]}
    tail = {i: line.split()[-3:] for i, line in by_id.items()}
    assert tail[retrain[1]] == ["yes", "ONE", "CLASS"] and tail[baseline][-2:] == ["yes", "BASELINE"]
    assert tail[retrain[0]][-1] == "yes" and tail[search[0]][-1] == "-"
    assert sum("ONE CLASS" in line for line in lines) == 1 and sum("BASELINE" in line for line in lines) == 1
    assert cli(["zoo", "show", retrain[1], "--zoo", str(tmp_path)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["one_class"] is True and row["warning"] == "predicts one class for every case"
    assert row["test_pred_classes"] == 1 and row["baseline"] is False
    assert cli(["zoo", "show", retrain[0], "--zoo", str(tmp_path)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["one_class"] is False and "warning" not in row and "no_weights" not in row
