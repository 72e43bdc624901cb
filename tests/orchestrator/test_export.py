"""Export: a zoo row with weights becomes model.pt2 (plain-torch loadable), model.onnx and card.json."""
import argparse
import json
import subprocess
import sys

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
    assert card["build"]["builder"] == "trainables.nets.tiny_cnn:TinyCNN"
    assert card["load"] == "torch.export.load('model.pt2').module()" and card["dynamic_batch"] is True

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
               f"(e.g. retrained top models) can be exported")
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
