"""Export: a zoo row with weights becomes model.pt2 (plain-torch loadable), model.onnx and card.json."""
import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from medcore.errors import MedtuneError
from medcore.records import ModelRecord
from orchestrator import zoo
from orchestrator.export import PREPROCESSING, export_model
from orchestrator.zoo_commands import add_commands
from trainables.nets.tiny_cnn import TinyCNN

# Loads the program in a fresh interpreter that never imports medtune's packages.
LOAD = """
import sys, torch
program = torch.export.load(sys.argv[1]).module()
x = torch.load(sys.argv[2])
torch.save([program(x), program(x[:1])], sys.argv[3])
assert not {m.split('.')[0] for m in sys.modules} & {'orchestrator', 'trainables', 'medcore', 'searchers'}
"""


def make_zoo(tmp_path, spatial_dims, weights=True, synthetic=False):
    kwargs = {"in_channels": 2, "n_outputs": 3, "spatial_dims": spatial_dims}
    torch.manual_seed(0)
    model = TinyCNN(**kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ckpt = tmp_path / "checkpoint_000000"
    ckpt.mkdir()
    torch.save(model.state_dict(), ckpt / "model.pt")
    rec = ModelRecord(search="ode", stage="retrain", family="tiny", architecture={"widths": [8, 16, 32]},
                      encoding=[8.0, 16.0, 32.0], status="ok", metrics={"val_auc": 0.81, "test_auc": 0.77},
                      build={"builder": "trainables.nets.tiny_cnn:TinyCNN", "kwargs": kwargs},
                      weights=ckpt.as_uri() if weights else None, trial_id="t0")
    shape = (2,) + (16,) * spatial_dims
    rows = zoo.rows_from_records([rec], dataset="organmnist3d", size=16, spatial_dims=spatial_dims,
                                 task="multi-class", input_shape=shape, run="r1", synthetic=synthetic)
    zoo.write_rows(tmp_path / "zoo", rows, "r1-ode-retrain")
    return tmp_path / "zoo", rows[0]["model_id"], model.eval(), shape


def test_export_round_trip(tmp_path):
    path, model_id, model, shape = make_zoo(tmp_path, 3, synthetic=True)
    out = tmp_path / "export"
    card = export_model(path, model_id, out)
    try:
        import onnx
    except ImportError:  # ONNX export needs onnx + onnxscript; without them the card says why
        onnx = None
        assert card["onnx"]["file"] is None and "onnx" in card["onnx"]["skipped"]
    files = ["card.json", "model.pt2"] if onnx is None else ["card.json", "model.onnx", "model.pt2"]
    assert sorted(p.name for p in out.iterdir()) == files

    x = torch.rand(4, *shape)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", LOAD, str(out / "model.pt2"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True, cwd=tmp_path, timeout=120)
    y, y1 = torch.load(tmp_path / "y.pt")
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(y1, expected[:1], atol=1e-5, rtol=0)  # the batch dimension is dynamic

    on_disk = json.loads((out / "card.json").read_text())
    assert on_disk == card
    assert card["model_id"] == model_id and card["dataset"] == "organmnist3d" and card["task"] == "multi-class"
    assert card["metrics"] == {"val_auc": 0.81, "test_auc": 0.77} and card["input_shape"] == list(shape)
    assert card["preprocessing"] == PREPROCESSING and card["synthetic"] is True and "SYNTHETIC" in card["note"]
    assert card["build"]["builder"] == "tiny_cnn" and card["weights_loaded_by"] == "model.pt"
    assert card["load"] == "torch.export.load('model.pt2').module()" and card["dynamic_batch"] is True
    assert card["output"] == {"kind": "logits", "shape": ["N", 3],
                              "scores": "softmax(logits, dim=1): class probabilities",
                              "decision": "argmax over dim 1 (the most probable class)", "threshold": None}
    # organmnist3d has 11 classes in medmnist.INFO: names that do not fit the outputs are not claimed
    assert card["class_names"] is None
    assert card["class_names_source"] == "medmnist.INFO lists 11 labels for organmnist3d, the model has 3 outputs"
    assert card["baseline"] is False and card["one_class"] is False and "warning" not in card

    if onnx is None:
        return
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto)
    [got] = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=0)


def test_export_without_weights_is_one_line(tmp_path):
    path, model_id, _, _ = make_zoo(tmp_path, 2, weights=False)
    message = (f"model {model_id} has no stored weights; only models with weights "
               f"(e.g. retrained top models) can be exported; `medtune zoo best --zoo {path}` lists them")
    with pytest.raises(MedtuneError) as info:
        export_model(path, model_id, tmp_path / "out")
    assert str(info.value) == message
    assert not (tmp_path / "out").exists()


def test_export_errors(tmp_path):
    path, model_id, _, _ = make_zoo(tmp_path, 2)
    with pytest.raises(MedtuneError, match=f"^model nope not found in zoo {path}$"):
        export_model(path, "nope", tmp_path / "out")
    (tmp_path / "checkpoint_000000" / "model.pt").unlink()
    with pytest.raises(MedtuneError, match="expected a folder holding model.pt"):
        export_model(path, model_id, tmp_path / "out")


def test_export_command(tmp_path, capsys):
    path, model_id, _, _ = make_zoo(tmp_path, 2)
    parser = argparse.ArgumentParser(prog="medtune")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", model_id, "--zoo", str(path), "--out", str(tmp_path / "out")])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'out' / 'model.pt2'}" in out and "card.json" in out
    program = torch.export.load(str(tmp_path / "out" / "model.pt2")).module()  # the 2D network
    assert program(torch.rand(3, 2, 16, 16)).shape == (3, 3)


# --- `zoo best` gives an exportable id; the card says how to read the outputs --------------------

def tiny_record(tmp_path, name, stage, val_auc, kwargs, weights=True, **metrics):
    torch.manual_seed(len(name))
    model = TinyCNN(**kwargs).eval()
    ref = None
    if weights:
        (tmp_path / name).mkdir()
        torch.save(model.state_dict(), tmp_path / name / "model.pt")
        ref = str(tmp_path / name)
    builder = "trainables.nets.tiny_cnn:TinyCNN"
    return ModelRecord(search="ode", stage=stage, family="baseline" if stage == "baseline" else "tiny",
                       architecture={"name": name}, encoding=[], status="ok",
                       metrics={"val_auc": val_auc, **metrics}, build={"builder": builder, "kwargs": kwargs},
                       weights=ref, trial_id=name)


def test_zoo_best_first_id_is_exportable(tmp_path, capsys):
    """The demo's zoo: a weightless search-stage row and the baseline rank above the retrained model on val."""
    kwargs = {"in_channels": 1, "n_outputs": 1, "spatial_dims": 2}
    recs = [tiny_record(tmp_path, "search0", "search", 0.95, kwargs, weights=False),
            tiny_record(tmp_path, "base", "baseline", 0.90, kwargs),
            tiny_record(tmp_path, "retrain0", "retrain", 0.80, kwargs, test_pred_classes=1)]
    rows = zoo.rows_from_records(recs, dataset="adrenalmnist3d", size=16, spatial_dims=2, task="binary-class",
                                 input_shape=(1, 16, 16), run="r1", synthetic=False)
    zoo.write_rows(tmp_path / "zoo", rows, "r1-ode")
    search_id, base_id, retrain_id = (r["model_id"] for r in rows)
    parser = argparse.ArgumentParser(prog="medtune")
    add_commands(parser.add_subparsers(dest="command", required=True))
    run = lambda *argv: (lambda a: a.handler(a))(parser.parse_args(list(argv)))  # noqa: E731

    assert run("zoo", "best", "--zoo", str(tmp_path / "zoo")) == 0
    out, err = capsys.readouterr()
    first = out.split()[0]
    assert first == retrain_id and "ONE CLASS" in out.splitlines()[0]
    assert "skipped 1 row without weights and 1 baseline" in err
    assert run("export", first, "--zoo", str(tmp_path / "zoo"), "--out", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "WARNING: this model predicts one class for every case" in printed
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["model_id"] == retrain_id and card["one_class"] is True and "one class" in card["warning"]
    assert card["baseline"] is False and card["class_names"] == ["normal", "hyperplasia"]
    assert card["class_names_source"] == "medmnist.INFO['adrenalmnist3d']['label']"
    assert card["output"]["kind"] == "logits" and card["output"]["shape"] == ["N", 1]
    assert card["output"]["threshold"] == {"probability": 0.5, "logit": 0.0}
    assert card["output"]["decision"] == ("class 1 (hyperplasia) where sigmoid(logit) > 0.5, i.e. logit > 0; "
                                          "else class 0")

    # the baseline is exportable too, and its card says it is one; the search-stage row is not
    export_model(tmp_path / "zoo", base_id, tmp_path / "base_out")
    assert json.loads((tmp_path / "base_out" / "card.json").read_text())["baseline"] is True
    with pytest.raises(MedtuneError, match="has no stored weights"):
        export_model(tmp_path / "zoo", search_id, tmp_path / "none")


def test_output_spec_per_task():
    from orchestrator.export import output_spec

    multi = output_spec("multi-label, binary-class", [14], None)
    assert multi["threshold"] == {"probability": 0.5, "logit": 0.0} and "per label" in multi["scores"]
    assert output_spec("ordinal-regression", [5], None)["decision"].startswith("argmax over dim 1")
    assert output_spec("segmentation", [1, 16, 16], None)["decision"] == "foreground where logit > 0"
    assert output_spec("segmentation", [3, 16, 16], None)["threshold"] is None
    assert output_spec("binary-class", [1], None)["decision"].startswith("class 1 where")


# --- the exported files reproduce the recorded test AUC with only torch + onnxruntime ------------

# Runs with `python -I -S` from an empty folder: no site processing, so the editable install's
# finder never runs, and only the venv's site-packages folder (torch, onnxruntime, sklearn) is added.
OUTSIDE = r"""
import json, sys
sys.path.append(sys.argv[1])
try:
    import orchestrator  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the repository is importable here")
import numpy as np, onnxruntime, torch
from sklearn.metrics import roc_auc_score

folder = sys.argv[2]
card = json.load(open(f"{folder}/card.json"))
assert card["output"]["kind"] == "logits" and card["output"]["threshold"]["logit"] == 0.0
x = (np.load(sys.argv[3]).astype(np.float32) / 255.0)  # the card's preprocessing: uint8 scaled to [0, 1]
y = np.load(sys.argv[4])[:, 0]
program = torch.export.load(f"{folder}/{card['files']['pt2']}").module()
with torch.no_grad():
    pt2 = torch.sigmoid(program(torch.from_numpy(x)))[:, 0].numpy()
session = onnxruntime.InferenceSession(f"{folder}/{card['files']['onnx']}", providers=["CPUExecutionProvider"])
logits = session.run(None, {session.get_inputs()[0].name: x})[0]
onnx = 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))
print(json.dumps({"pt2": roc_auc_score(y, pt2), "onnx": roc_auc_score(y, onnx),
                  "modules": sorted({m.split('.')[0] for m in sys.modules} & {"orchestrator", "trainables",
                                                                              "medcore", "searchers"})}))
"""


def _blobs(n, rng):
    """Binary uint8 volumes: class 1 has a brighter centre, with noise enough for an AUC below 1."""
    y = rng.integers(0, 2, size=(n, 1)).astype(np.int64)
    x = rng.normal(100, 40, size=(n, 1, 12, 12, 12))
    x[:, :, 4:8, 4:8, 4:8] += 25 * y[:, :, None, None, None]
    return np.clip(x, 0, 255).astype(np.uint8), y


def test_exported_files_reproduce_the_recorded_test_auc_outside_medtune(tmp_path):
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pytest.skip("onnxruntime is not installed (pip install -e '.[test]' installs it)")
    import sysconfig

    from medcore.records import DatasetInfo
    from orchestrator.data import MedMNISTData
    from trainables.fit import FitConfig, fit

    rng = np.random.default_rng(0)
    splits = {"train": _blobs(128, rng), "val": _blobs(48, rng), "test": _blobs(96, rng)}
    info = DatasetInfo(flag="adrenalmnist3d", task="binary-class", n_channels=1, n_classes=2, spatial_dims=3,
                       size=12, synthetic=True, path="")
    data = MedMNISTData(info, {k: v[0] for k, v in splits.items()}, {k: v[1] for k, v in splits.items()})
    kwargs = {"in_channels": 1, "n_outputs": 1, "spatial_dims": 3}
    torch.manual_seed(0)
    model = TinyCNN(**kwargs)
    # the number a search records: fit()'s test evaluation of the best epoch, in its default
    # precision (bf16 autocast training where the CPU has it)
    result = fit(model, data, FitConfig(max_epochs=3, batch_size=32, lr=3e-3, device="cpu", select_metric="val_auc"),
                 evaluate_test=True, keep_state=True)
    test = {k.removeprefix("test_"): v for k, v in result.test.items()}
    assert 0.55 < test["auc"] < 0.999  # a model that ranks, imperfectly: the AUC is worth reproducing
    x_test, y_test = splits["test"]
    (tmp_path / "ckpt").mkdir()
    torch.save(result.state_dict, tmp_path / "ckpt" / "model.pt")
    rec = ModelRecord(search="ode", stage="retrain", family="tiny", architecture={}, encoding=[], status="ok",
                      metrics={"val_auc": 0.7, "test_auc": test["auc"], "test_acc": test["acc"],
                               "test_pred_classes": test["pred_classes"]},
                      build={"builder": "trainables.nets.tiny_cnn:TinyCNN", "kwargs": kwargs},
                      weights=str(tmp_path / "ckpt"), trial_id="t0")
    rows = zoo.rows_from_records([rec], dataset="adrenalmnist3d", size=12, spatial_dims=3, task="binary-class",
                                 input_shape=(1, 12, 12, 12), run="r1", synthetic=True)
    zoo.write_rows(tmp_path / "zoo", rows, "r1-ode-retrain")
    card = export_model(tmp_path / "zoo", rows[0]["model_id"], tmp_path / "export")
    assert card["files"]["onnx"] == "model.onnx", card["onnx"]
    assert card["onnx"]["max_abs_diff"] < 1e-4 and card["onnx"]["checked"].startswith("onnxruntime")
    recorded = zoo.get_model(tmp_path / "zoo", rows[0]["model_id"])["test_auc"]

    np.save(tmp_path / "x_test.npy", x_test)
    np.save(tmp_path / "y_test.npy", y_test)
    empty = tmp_path / "cwd"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-I", "-S", "-c", OUTSIDE, sysconfig.get_paths()["purelib"],
                           str(tmp_path / "export"), str(tmp_path / "x_test.npy"), str(tmp_path / "y_test.npy")],
                          cwd=empty, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["modules"] == []
    assert abs(got["pt2"] - recorded) <= 1e-6, (got, recorded)
    assert abs(got["onnx"] - recorded) <= 1e-4, (got, recorded)


def build_from_folder(folder: str, **kwargs):
    """A builder that loads its own weights (as MedNNS' subnet builder does from the supernet folder)."""
    model = TinyCNN(**kwargs)
    model.load_state_dict(torch.load(f"{folder}/own.pt", weights_only=True))
    return model


def test_a_recipe_that_loads_its_own_weights_exports(tmp_path):
    kwargs = {"in_channels": 1, "n_outputs": 2, "spatial_dims": 2}
    torch.manual_seed(3)
    model = TinyCNN(**kwargs).eval()
    (tmp_path / "w").mkdir()
    torch.save(model.state_dict(), tmp_path / "w" / "own.pt")  # no model.pt: the builder reads the folder
    rec = ModelRecord(search="mednns", stage="zoo", family="x", architecture={}, encoding=[], status="ok",
                      metrics={"val_auc": 0.6}, weights=str(tmp_path / "w"), trial_id="z",
                      build={"builder": "tests.orchestrator.test_export:build_from_folder",
                             "kwargs": {"folder": str(tmp_path / "w"), **kwargs}})
    rows = zoo.rows_from_records([rec], dataset="organmnist", size=16, spatial_dims=2, task="multi-class",
                                 input_shape=(1, 16, 16), run="r1", synthetic=False)
    zoo.write_rows(tmp_path / "zoo", rows, "r1-mednns-zoo")
    card = export_model(tmp_path / "zoo", rows[0]["model_id"], tmp_path / "out")
    assert card["weights_loaded_by"] == "builder"
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(tmp_path / "out" / "model.pt2")).module()(x), model(x))
