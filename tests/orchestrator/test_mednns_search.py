"""The MedNNS search end to end on three tiny SYNTHETIC datasets under local Ray, and its bad inputs."""
import json

import numpy as np
import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.config import MedNNSSearchConfig, Resources
from orchestrator.data import load_medmnist, make_synthetic
from tests.figures import capture

FLAGS = ("breastmnist", "pneumoniamnist", "retinamnist")


@pytest.mark.parametrize("datasets,message", [
    ("breastmnist", "--datasets: leave-one-dataset-out needs at least two datasets, got 1 (breastmnist)"),
    ("breastmnist,adrenalmnist3d", "--datasets: 2D and 3D flags mixed in one meta-space: breastmnist (2D), "
                                   "adrenalmnist3d (3D); run one search per dimensionality"),
    ("breastmnist,nosuchmnist", "--datasets: unknown MedMNIST flag 'nosuchmnist'; known flags:"),
    ("breastmnist,breastmnist", "--datasets: lists a dataset twice"),
])
def test_bad_input(datasets, message, capsys, tmp_path):
    assert main(["search", "mednns", "--datasets", datasets, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_bad_numbers_are_refused(capsys, tmp_path):
    assert main(["search", "mednns", "--datasets", "breastmnist,pneumoniamnist", "--supernet-paths", "4",
                 "--out", str(tmp_path)]) == 2
    assert "--supernet-paths: strict fairness needs a multiple of 3" in capsys.readouterr().err


@pytest.mark.timeout(1800)  # Ray trials on a busy 2-core machine
def test_tiny_mednns_search_end_to_end(ray_local, tmp_path, monkeypatch):
    from orchestrator.driver import run_search
    from orchestrator.metaspace import MetaSpace
    from orchestrator.zoo import read_zoo

    figures = capture(monkeypatch)
    root = tmp_path / "data"
    for i, flag in enumerate(FLAGS):
        make_synthetic(flag, root, n_samples=(32, 16, 16), seed=i)
    data = {flag: load_medmnist(flag, 28, root) for flag in FLAGS}
    cfg = MedNNSSearchConfig(datasets=",".join(FLAGS), data_root=str(root), out=str(tmp_path / "run"),
                             supernet_epochs=2, zoo_size=8, bn_images=16, encode_images=16, metaspace_epochs=3,
                             top_k=1, finetune_epochs=1, baseline="resnet10", batch_size=16,
                             resources=Resources(max_concurrent=2))
    s = run_search("mednns", cfg, data)
    assert s["search"] == "mednns" and s["synthetic"] is True and s["datasets"] == list(FLAGS)
    assert s["n_zoo"] == 24 and len(s["loo"]) == 3
    for entry in s["loo"]:
        # leave-one-out: the recommendation never comes from the target itself
        assert entry["recommended"]["source_dataset"] != entry["target"]
        for key in ("t1_acc", "scratch_acc", "resnet_acc"):
            assert 0 <= entry[key] <= 1, (entry["target"], key, entry.get("errors"))
    zoo = read_zoo(tmp_path / "run" / "zoo")
    assert len(zoo) == 24 and set(zoo.family) == {"ofa_resnet2d"} and zoo.synthetic.all()
    assert all(len(f) == 256 for f in zoo.functional) and all(len(e) == 20 for e in zoo.encoding)
    assert zoo.weights.notna().all() and zoo.val_acc.between(0, 1).all()
    for target in FLAGS:
        space = MetaSpace.load(tmp_path / "run" / "metaspace" / target)
        assert target not in set(space.models.dataset) and space.excluded == target
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["n_zoo"] == 24 and written["loo"][0]["target"] == FLAGS[0]
    for png in ("fid_heatmap.png", "finetune_curves.png", *(f"tsne_{t}.png" for t in FLAGS)):
        assert (tmp_path / "run" / png).is_file() and png in figures, png
    # the plots draw the summary: the FID matrix, each held-out target's curves, each meta-space
    fid = figures["fid_heatmap.png"][0]  # [1] is the colorbar
    np.testing.assert_allclose(fid["images"][0], pd.DataFrame(s["fid"]).loc[list(FLAGS), list(FLAGS)], atol=1e-3)
    assert len(fid["texts"]) == len(FLAGS) ** 2
    curves = figures["finetune_curves.png"]
    assert [ax["title"].split("\n")[0] for ax in curves] == [f"held out: {e['target']}" for e in s["loo"]]
    for ax, entry in zip(curves, s["loo"]):
        drawn = {label: xy[:, 1].tolist() for label, xy in ax["lines"]}
        assert drawn == {k: pytest.approx(c) for k, c in entry["curves"].items() if c} and drawn, entry["target"]
    for target in FLAGS:
        tsne = figures[f"tsne_{target}.png"][0]
        models = MetaSpace.load(tmp_path / "run" / "metaspace" / target).model_embeddings
        assert len(tsne["points"][0][1]) == len(models) > 0 and len(tsne["points"]) == 1 + len(FLAGS)
        assert sorted(tsne["texts"]) == sorted(f + (" (held out)" if f == target else "") for f in FLAGS)
