"""MedMNIST loading through the medmnist classes: real sample, MD5, bad files, subsets."""
import json
import shutil

import numpy as np
import pytest

from orchestrator import data as D
from medcore.errors import DataError


def test_shipped_sample_is_the_official_file():
    d = D.load_sample()
    assert D.md5sum(D.SAMPLE_ROOT / "adrenalmnist3d.npz") == "bbd3c5a5576322bc4cdfea780653b1ce"
    assert not d.info.synthetic and d.info.task == "binary-class" and d.info.n_outputs == 1
    assert d.sizes() == {"train": 1188, "val": 98, "test": 298}
    assert d.images["train"].shape[1:] == (1, 28, 28, 28) and d.images["train"].dtype == np.uint8


def test_unknown_flag_and_size():
    with pytest.raises(DataError, match="unknown MedMNIST flag 'nosuchmnist'"):
        D.load_medmnist("nosuchmnist")
    with pytest.raises(DataError, match="size 32"):
        D.load_medmnist("adrenalmnist3d", 32)


def test_missing_file_offline_names_file_md5_and_folder(tmp_path):
    with pytest.raises(DataError) as err:
        D.load_medmnist("nodulemnist3d", 28, tmp_path)
    msg = str(err.value)
    assert "nodulemnist3d.npz" in msg and D.expected_md5("nodulemnist3d", 28) in msg and str(tmp_path) in msg
    assert "\n" not in msg


def test_corrupt_file_is_refused(tmp_path):
    (tmp_path / "adrenalmnist3d.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="corrupt or not the official file"):
        D.load_medmnist("adrenalmnist3d", 28, tmp_path)


def test_synthetic_files_are_flagged_and_missharped_ones_refused(tmp_path):
    path = D.make_synthetic("organmnist3d", tmp_path, n_samples=(22, 11, 11))
    d = D.load_medmnist("organmnist3d", 28, tmp_path)
    assert d.info.synthetic and d.info.n_outputs == 11 and d.sizes() == {"train": 22, "val": 11, "test": 11}
    # a synthetic marker does not make a tampered file acceptable
    arrays = dict(np.load(path))
    arrays["val_images"] = arrays["val_images"][:, :20]
    np.savez_compressed(path, **arrays)
    with pytest.raises(DataError, match="corrupt"):
        D.load_medmnist("organmnist3d", 28, tmp_path)
    marker = path.with_name("organmnist3d.synthetic.json")
    marker.write_text(json.dumps({"synthetic": True, "md5": D.md5sum(path)}))
    with pytest.raises(DataError, match="spatial shape"):
        D.load_medmnist("organmnist3d", 28, tmp_path)


def test_truncated_official_name_with_matching_marker_is_refused_cleanly(tmp_path):
    shutil.copy(D.SAMPLE_ROOT / "adrenalmnist3d.npz", tmp_path)
    p = tmp_path / "adrenalmnist3d.npz"
    p.write_bytes(p.read_bytes()[:1000])
    (tmp_path / "adrenalmnist3d.synthetic.json").write_text(json.dumps({"md5": D.md5sum(p)}))
    with pytest.raises(DataError, match="cannot be read"):
        D.load_medmnist("adrenalmnist3d", 28, tmp_path)


def test_2d_rgb_and_multilabel_synthetic(tmp_path):
    D.make_synthetic("chestmnist", tmp_path, n_samples=(20, 8, 8))
    D.make_synthetic("dermamnist", tmp_path, n_samples=(21, 7, 7))
    chest, derma = D.load_medmnist("chestmnist", 28, tmp_path), D.load_medmnist("dermamnist", 28, tmp_path)
    assert chest.info.multi_label and chest.labels["train"].shape == (20, 14) and chest.info.n_outputs == 14
    assert derma.images["train"].shape == (21, 3, 28, 28)


def test_stratified_subset_is_seeded_and_keeps_class_balance():
    d = D.load_sample()
    sub = d.low_fidelity(0.25, seed=1)
    assert len(sub.labels["train"]) == pytest.approx(297, abs=2)
    frac_full = d.labels["train"].mean()
    assert sub.labels["train"].mean() == pytest.approx(frac_full, abs=0.01)
    again = d.low_fidelity(0.25, seed=1)
    assert np.array_equal(sub.labels["val"], again.labels["val"])
    assert sub.sizes()["test"] == 298  # test is never reduced
    with pytest.raises(DataError, match="fraction"):
        D.stratified_indices(d.labels["train"], 1.5, 0)


def test_low_fidelity_can_keep_the_whole_val_split():
    d = D.load_sample()
    sub = d.low_fidelity(0.25, seed=1, val_fraction=1.0)
    assert sub.labels["val"] is d.labels["val"] and sub.images["val"] is d.images["val"]  # shared, not copied
    assert np.array_equal(sub.labels["train"], d.low_fidelity(0.25, seed=1).labels["train"])
    assert len(d.low_fidelity(0.25, seed=1, val_fraction=0.5).labels["val"]) == pytest.approx(49, abs=1)
