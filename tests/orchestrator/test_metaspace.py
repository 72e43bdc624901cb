"""The MedNNS meta-space (paper 2 A.2-A.3, B, 3): query by cosine (eq. 5), leave-one-dataset-out,
learning on a planted synthetic zoo, save/load, dataset encodings + FID, bad inputs, and the
``medtune metaspace`` CLI. Fast tier: no Ray."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from medcore.errors import ConfigError, DataError
from medcore.records import DatasetInfo
from orchestrator.cli import main
from orchestrator.data import MedMNISTData, load_medmnist, make_synthetic
from orchestrator.metaspace import (DatasetEncodings, MetaSpace, MetaSpaceOptions, encode_datasets,
                                    load_or_encode, train_metaspace)
from orchestrator.zoo import read_zoo, write_rows
from tests.orchestrator.synthetic_zoo import synthetic_zoo

FAST = dict(batch_size=256, seed=0)


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    return synthetic_zoo(n_datasets=8, models_per_dataset=150, seed=0, missing_functional=0.3, families=("a", "b"))


@pytest.fixture(scope="module")
def trained(planted):
    zoo, enc = planted
    return train_metaspace(zoo, enc, MetaSpaceOptions(epochs=25, **FAST), exclude="synthetic3")


def test_query_returns_top_k_by_cosine_sorted(planted, trained):
    zoo, enc = planted
    q = enc.embeddings["synthetic3"]
    top = trained.query(q, top_k=7)
    assert list(top.columns[:7]) == ["model_id", "dataset", "family", "architecture", "build", "weights", "score"]
    with torch.no_grad():
        e_d = trained.net.embed_datasets(torch.as_tensor(q, dtype=torch.float32)[None])[0].numpy()
    m = trained.model_embeddings
    cosine = m @ e_d / (np.linalg.norm(m, axis=1) * np.linalg.norm(e_d))
    best = np.argsort(-cosine, kind="stable")[:7]
    assert top["model_id"].tolist() == trained.models["model_id"].iloc[best].tolist()
    np.testing.assert_allclose(top["score"], cosine[best], rtol=1e-5)
    assert top["score"].is_monotonic_decreasing
    skip = trained.query(q, top_k=50, exclude_dataset=top["dataset"].iloc[0])
    assert top["dataset"].iloc[0] not in set(skip["dataset"]) and len(skip) == 50
    assert len(trained.query(q, top_k=10**6)) == len(trained.models)


def test_leave_one_out_never_sees_the_target(planted, trained):
    zoo, enc = planted
    assert trained.excluded == "synthetic3" and "synthetic3" not in trained.datasets
    assert not trained.models["dataset"].eq("synthetic3").any()
    assert len(trained.models) == (zoo["dataset"] != "synthetic3").sum()
    # the same as a meta-space trained where the target never existed (zoo rows, embedding, FID row)
    others = [n for n in enc.names if n != "synthetic3"]
    alone = train_metaspace(zoo[zoo["dataset"] != "synthetic3"], enc.subset(others), MetaSpaceOptions(epochs=25, **FAST))
    np.testing.assert_allclose(alone.model_embeddings, trained.model_embeddings, atol=1e-6)


def _held_out_spearman(zoo, enc, target, epochs, seed):
    ms = train_metaspace(zoo, enc, MetaSpaceOptions(epochs=epochs, batch_size=256, seed=seed), exclude=target)
    rows = zoo[zoo["dataset"] == target]
    return spearmanr(ms.score_models(rows, enc.embeddings[target]), rows["val_acc"]).statistic


@pytest.mark.parametrize("seed,target", [(0, "synthetic3"), (1, "synthetic6")])
def test_trained_metaspace_ranks_held_out_models_better_than_untrained(seed, target):
    zoo, enc = synthetic_zoo(n_datasets=8, models_per_dataset=150, seed=seed, families=("a", "b"))
    trained = _held_out_spearman(zoo, enc, target, epochs=25, seed=seed)
    untrained = _held_out_spearman(zoo, enc, target, epochs=0, seed=seed)
    assert trained > 0.7 and trained - untrained > 0.3, (trained, untrained)


def test_save_load_round_trip(planted, trained, tmp_path):
    zoo, enc = planted
    trained.save(tmp_path / "ms")
    back = MetaSpace.load(tmp_path / "ms")
    q = enc.embeddings["synthetic3"]
    pd.testing.assert_frame_equal(back.query(q, 9), trained.query(q, 9))
    rows = zoo[zoo["dataset"] == "synthetic3"]
    np.testing.assert_allclose(back.score_models(rows, q), trained.score_models(rows, q), rtol=1e-6)
    assert (back.spatial_dims, back.extractor, back.datasets, back.excluded, back.synthetic) == (
        2, "synthetic-planted", trained.datasets, "synthetic3", True)
    enc.save(tmp_path / "enc")
    enc2 = DatasetEncodings.load(tmp_path / "enc")
    assert enc2.names == enc.names and enc2.extractor == enc.extractor and enc2.synthetic == enc.synthetic
    pd.testing.assert_frame_equal(enc2.fid, enc.fid)
    np.testing.assert_array_equal(enc2.embeddings["synthetic0"], enc.embeddings["synthetic0"])


def test_zoo_rows_of_any_search_and_missing_functional(planted):
    zoo, enc = planted
    zoo = zoo.copy()
    zoo.loc[zoo.index[:300], "encoding"] = pd.Series([[1.0, 2.0]] * 300, index=zoo.index[:300])  # another family
    zoo.loc[zoo.index[:300], "family"] = "cell"
    zoo.loc[zoo.index[300:310], "status"] = "failed"
    ms = train_metaspace(zoo.drop(columns=["functional"]), enc, MetaSpaceOptions(epochs=1, **FAST))
    assert len(ms.models) == len(zoo) - 10 and ms.layout.families == ["a", "b", "cell"]
    assert ms.layout.functional_len == 0


def _data(flag, dims, n=6, synthetic=True):
    info = DatasetInfo(flag=flag, task="binary-class", n_channels=1, n_classes=2, spatial_dims=dims, size=8,
                       synthetic=synthetic, path="")
    images = np.random.default_rng(len(flag)).integers(0, 256, size=(n, 1) + (8,) * dims, dtype=np.uint8)
    return MedMNISTData(info, {"train": images}, {"train": np.zeros((n, 1), np.int64)})


def test_bad_inputs(planted, trained):
    zoo, enc = planted
    opts = MetaSpaceOptions(epochs=1, **FAST)
    with pytest.raises(DataError, match="zoo is empty"):
        train_metaspace(zoo.iloc[:0], enc, opts)
    with pytest.raises(DataError, match="no model with status ok"):
        train_metaspace(zoo.assign(status="failed"), enc, opts)
    with pytest.raises(DataError, match="'nope' is not a dataset of the zoo"):
        train_metaspace(zoo, enc, opts, exclude="nope")
    with pytest.raises(DataError, match="synthetic7 in the zoo have no dataset encoding"):
        train_metaspace(zoo, enc.subset(enc.names[:-1]), opts)
    with pytest.raises(ConfigError, match="at least two datasets"):
        train_metaspace(zoo[zoo["dataset"] == "synthetic0"], enc, opts, exclude="synthetic0")
    mixed = zoo.copy()
    mixed.loc[mixed["dataset"] == "synthetic5", "spatial_dims"] = 3
    with pytest.raises(ConfigError, match="2D and 3D datasets mixed"):
        train_metaspace(mixed, enc, opts)
    with pytest.raises(ConfigError, match="2D and 3D datasets mixed"):
        encode_datasets({"a": _data("a", 2), "b": _data("b", 3)}, seed=0, n_images=4)
    with pytest.raises(ConfigError, match="2D .* encodings are 3D"):
        train_metaspace(zoo, DatasetEncodings(enc.embeddings, enc.fid, "x", 3), opts)
    with pytest.raises(ConfigError, match="a 3D query against a 2D meta-space"):
        trained.query(enc.embeddings["synthetic3"], 3, spatial_dims=3)
    with pytest.raises(ConfigError, match="a 3D query against a 2D meta-space"):
        trained.query_images(np.zeros((4, 1, 8, 8, 8), np.uint8), 3)
    with pytest.raises(DataError, match="embedding has 3 values"):
        trained.query(np.zeros(3), 3)
    with pytest.raises(ConfigError, match="top_k"):
        trained.query(enc.embeddings["synthetic3"], 0)


def test_3d_metaspace_refuses_a_2d_query():
    zoo, enc = synthetic_zoo(n_datasets=3, models_per_dataset=20, seed=0)
    zoo["spatial_dims"] = 3
    enc.spatial_dims = 3
    ms = train_metaspace(zoo, enc, MetaSpaceOptions(epochs=1, **FAST))
    with pytest.raises(ConfigError, match="a 2D query against a 3D meta-space"):
        ms.query_images(np.zeros((4, 1, 8, 8), np.uint8), 3)


@pytest.fixture(scope="module")
def real_format(tmp_path_factory):
    """Three SYNTHETIC MedMNIST-format files, their encodings, and a zoo folder naming them."""
    root = tmp_path_factory.mktemp("metaspace")
    data = root / "data"
    flags = ("breastmnist", "pneumoniamnist", "retinamnist")
    for i, flag in enumerate(flags):
        make_synthetic(flag, data, 28, (40, 8, 8), seed=i)
    datasets = {f: load_medmnist(f, 28, data) for f in flags}
    enc = load_or_encode(root / "enc", datasets, seed=0, n_images=24)
    zoo, _ = synthetic_zoo(n_datasets=3, models_per_dataset=40, seed=0)
    zoo["dataset"] = zoo["dataset"].map({f"synthetic{i}": f for i, f in enumerate(flags)})
    rows = zoo.drop(columns=["functional"]).to_dict("records")
    for r in rows:
        r["encoding"] = list(r["encoding"])
        r["weights"] = f"supernet://{r['dataset']}/{r['model_id']}"
    (root / "zoo").mkdir()
    write_rows(root / "zoo", rows, "synthetic-test")
    return root, data, datasets, enc


def test_encode_datasets_fid_and_cache(real_format):
    root, _, datasets, enc = real_format
    assert enc.extractor == "random-conv-v1" and enc.spatial_dims == 2 and all(enc.synthetic.values())
    fid = enc.fid.to_numpy()
    assert fid.shape == (3, 3) and np.allclose(fid, fid.T) and np.allclose(np.diag(fid), 0) and (fid[~np.eye(3, dtype=bool)] > 0).all()
    assert enc.embeddings["retinamnist"].shape == (256,)
    stamp = (root / "enc" / "encodings.npz").stat().st_mtime_ns
    again = load_or_encode(root / "enc", {"retinamnist": datasets["retinamnist"]}, seed=0, n_images=24)
    assert (root / "enc" / "encodings.npz").stat().st_mtime_ns == stamp  # served from the cache
    np.testing.assert_array_equal(again.embeddings["retinamnist"], enc.embeddings["retinamnist"])
    assert json.loads((root / "enc" / "encodings.json").read_text())["extractor"] == "random-conv-v1"


def test_cli_train_and_query(real_format, capsys):
    root, data, _, _ = real_format
    ms_dir = root / "ms"
    assert main(["metaspace", "train", "--zoo", str(root / "zoo"), "--encodings", str(root / "enc"),
                 "--out", str(ms_dir), "--epochs", "3", "--batch-size", "32", "--exclude", "retinamnist"]) == 0
    assert "retinamnist left out" in capsys.readouterr().out
    assert main(["metaspace", "query", "--metaspace", str(ms_dir), "--dataset", "retinamnist", "--data-root",
                 str(data), "--top-k", "4"]) == 0
    out = capsys.readouterr().out
    assert "random-conv-v1" in out and "SYNTHETIC" in out and "top 4 for retinamnist" in out
    assert main(["metaspace", "query", "--metaspace", str(ms_dir), "--npz", str(data / "retinamnist.npz"),
                 "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ms = MetaSpace.load(ms_dir)
    direct = ms.query_images(load_medmnist("retinamnist", 28, data).images["train"], 3)
    assert [r["model_id"] for r in result["top_k"]] == direct["model_id"].tolist()
    assert result["synthetic"] is True and result["extractor"] == "random-conv-v1"
    assert result["top_k"][0]["weights"].startswith("supernet://") and result["top_k"][0]["dataset"] != "retinamnist"
    assert len(read_zoo(root / "zoo")) == 120
    vol = root / "vol.npz"
    np.savez(vol, train_images=np.zeros((3, 28, 28, 28), np.uint8))
    assert main(["metaspace", "query", "--metaspace", str(ms_dir), "--npz", str(vol), "--top-k", "3"]) == 2
    assert "a 3D query against a 2D meta-space" in capsys.readouterr().err
