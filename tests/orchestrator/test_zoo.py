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


def records(n, search="ode", stage="search", status="ok", metric=lambda i: {"val_auc": 0.5 + i / 100}):
    return [ModelRecord(search=search, stage=stage, family="cell3d", architecture={"cell": i},
                        encoding=[i / 10, 1.0 - i / 10], status=status, metrics=metric(i), trial_id=f"t{i}")
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
    recs = records(3, metric=lambda i: {"val_auc": [0.6, 0.9, 0.7][i], "params": 1000 * (i + 1)})
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
