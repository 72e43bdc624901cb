"""Segmentation data: Fig. 5 splits by case, the Decathlon (MONAI + nibabel) and npz paths agree,
synthetic data is labelled synthetic, bad inputs give one-line DataErrors."""
import json
from pathlib import Path

import numpy as np
import pytest

from medcore.errors import DataError
from orchestrator.segmentation_data import SPLITS, load_segmentation, split_cases

HIPPOCAMPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "segmentation" / "msd_hippocampus"


def tiny_volumes(n=6, seed=0, shape=(9, 11, 5)):
    """A few tiny (H, W, D) volumes with a foreground blob each, raw-intensity like MSD."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        img = (rng.random(shape) * 900 + 100).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        r, c = rng.integers(1, 5, 2)
        lab[r:r + 3, c:c + 4, 1:4] = rng.integers(1, 3)  # labels 1 or 2, binarised by the loader
        out[f"{i * 3 + 1:03d}"] = (img, lab)
    return out


def write_decathlon(root: Path, volumes: dict, index: bool = True) -> Path:
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    entries = []
    for case, (img, lab) in volumes.items():
        for folder, arr in (("imagesTr", img), ("labelsTr", lab)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / folder / f"tiny_{case}.nii.gz"))
        entries.append({"image": f"./imagesTr/tiny_{case}.nii.gz", "label": f"./labelsTr/tiny_{case}.nii.gz"})
    if index:
        (root / "dataset.json").write_text(json.dumps({"name": "Tiny", "numTraining": len(entries),
                                                       "training": entries, "test": []}))
    return root


def write_npz(path: Path, volumes: dict) -> Path:
    arrays = {"case_ids": np.array(sorted(volumes))}
    for case, (img, lab) in volumes.items():
        arrays[f"image_{case}"], arrays[f"label_{case}"] = img, lab
    np.savez(path, **arrays)
    return path


def assert_splits_by_case(d):
    for a in SPLITS:
        assert set(np.unique(d.sample_cases[a])) == set(d.cases[a])
        assert len(d.sample_cases[a]) == len(d.images[a]) == len(d.labels[a])
    assert not set(d.cases["train_dt"]) & set(d.cases["val_dt"])
    assert not set(d.cases["train_search"]) & set(d.cases["val_search"])
    assert set(d.cases["train_search"]) | set(d.cases["val_search"]) == set(d.cases["train_dt"])
    assert abs(len(d.cases["train_search"]) - len(d.cases["val_search"])) <= 1
    for half in ("train_search", "val_search"):  # views of train_dt, not copies
        assert np.shares_memory(d.images[half], d.images["train_dt"])
    assert len(d.images["train_search"]) + len(d.images["val_search"]) == len(d.images["train_dt"])


def test_split_cases_fig5_proportions_and_no_case_in_two_splits():
    s = split_cases([f"{i:03d}" for i in range(50)], seed=3)
    assert (len(s["train_dt"]), len(s["val_dt"]), len(s["train_search"]), len(s["val_search"])) == (40, 10, 20, 20)
    assert not set(s["train_dt"]) & set(s["val_dt"])
    assert s == split_cases([f"{i:03d}" for i in reversed(range(50))], seed=3)  # order-free, seeded
    assert s != split_cases([f"{i:03d}" for i in range(50)], seed=4)


def test_synthetic_2d_is_labelled_synthetic_and_split_by_case():
    d = load_segmentation("synthetic", 16, 2, max_cases=5, seed=1)
    assert d.synthetic and d.info.synthetic and d.describe()["synthetic"] is True
    assert d.info.task == "segmentation" and d.info.n_outputs == 1 and d.info.input_shape == (1, 16, 16)
    assert_splits_by_case(d)
    x, y = d.images["train_dt"], d.labels["train_dt"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 16, 16) and y.dtype == np.uint8 and y.shape[1:] == (1, 16, 16)
    assert set(np.unique(y)) == {0, 1} and 0.0 <= x.min() and x.max() <= 1.0
    # fit's names alias the Fig. 5 splits without copies; fit_view re-points them
    assert d.images["train"] is d.images["train_dt"] and d.labels["val"] is d.labels["val_dt"]
    v = d.fit_view("train_search", "val_search")
    assert v.images["train"] is d.images["train_search"] and v.images["val"] is d.images["val_search"]
    with pytest.raises(DataError, match="unknown split"):
        d.fit_view("test")


def test_synthetic_3d_volumes():
    d = load_segmentation("synthetic", 16, 3, max_cases=4)
    assert d.images["train_dt"].shape[1:] == (1, 16, 16, 16) and len(d.images["train_dt"]) == len(d.cases["train_dt"])
    assert d.synthetic and d.labels["train_dt"].any()


def test_tiny_decathlon_folder_through_monai_equals_the_npz(tmp_path):
    vols = tiny_volumes()
    folder = load_segmentation(str(write_decathlon(tmp_path / "Task99_Tiny", vols)), 12, 2, seed=2)
    npz = load_segmentation(str(write_npz(tmp_path / "tiny_volumes.npz", vols)), 12, 2, seed=2)
    assert not folder.synthetic and folder.info.flag == "tiny" == npz.info.flag
    assert folder.cases == npz.cases and sorted(sum((folder.cases[s] for s in ("train_dt", "val_dt")), [])) == sorted(vols)
    for s in SPLITS:
        np.testing.assert_array_equal(folder.images[s], npz.images[s])
        np.testing.assert_array_equal(folder.labels[s], npz.labels[s])
    assert_splits_by_case(folder)
    # per volume min-max, binary mask, axial slices padded to 12x12, one sample per slice
    case = folder.cases["val_dt"][0]
    img, lab = vols[case]
    rows = folder.sample_cases["val_dt"] == case
    assert rows.sum() == img.shape[-1]
    x, y = folder.images["val_dt"][rows], folder.labels["val_dt"][rows]
    assert x.max() == pytest.approx(1.0) and x[:, :, :1].max() == 0.0  # padding rows are zero
    assert y.sum() == (lab > 0).sum()
    three = load_segmentation(str(tmp_path / "Task99_Tiny"), 8, 3, seed=2)
    assert three.images["train_dt"].shape[1:] == (1, 8, 8, 8) and len(three.images["train_dt"]) == len(three.cases["train_dt"])


@pytest.mark.skipif(not (HIPPOCAMPUS / "dataset.json").is_file(), reason="shared MSD hippocampus data not present")
def test_real_hippocampus_folder_equals_its_npz_copy():
    folder = load_segmentation(str(HIPPOCAMPUS), 64, 2, max_cases=5)
    npz = load_segmentation(str(HIPPOCAMPUS / "hippocampus_volumes.npz"), 64, 2, max_cases=5)
    assert folder.cases == npz.cases and not folder.synthetic and folder.info.flag == "hippocampus"
    for s in SPLITS:
        np.testing.assert_array_equal(folder.images[s], npz.images[s])
        np.testing.assert_array_equal(folder.labels[s], npz.labels[s])
    assert_splits_by_case(folder)
    assert 0.01 < folder.labels["train_dt"].mean() < 0.1  # hippocampus: a few % foreground


def test_missing_dataset_json(tmp_path):
    root = write_decathlon(tmp_path / "Task99", tiny_volumes(3), index=False)
    with pytest.raises(DataError, match="no dataset.json"):
        load_segmentation(str(root), 12)
    with pytest.raises(DataError, match="not found"):
        load_segmentation(str(tmp_path / "nowhere"), 12)


def test_image_label_shape_mismatch(tmp_path):
    vols = tiny_volumes(4)
    case = sorted(vols)[1]
    vols[case] = (vols[case][0], vols[case][1][:, :-1])
    with pytest.raises(DataError, match=f"case {case}: image shape .* and label shape .* differ"):
        load_segmentation(str(write_decathlon(tmp_path / "T", vols)), 12)
    with pytest.raises(DataError, match="differ"):
        load_segmentation(str(write_npz(tmp_path / "t.npz", vols)), 12)


def test_empty_mask_set(tmp_path):
    vols = {c: (img, np.zeros_like(lab)) for c, (img, lab) in tiny_volumes(4).items()}
    with pytest.raises(DataError, match="empty mask set"):
        load_segmentation(str(write_decathlon(tmp_path / "T", vols)), 12)


def test_unreadable_file_and_too_few_cases(tmp_path):
    root = write_decathlon(tmp_path / "T", tiny_volumes(4))
    bad = sorted((root / "imagesTr").iterdir())[2]
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match=f"cannot read .*{bad.name}"):
        load_segmentation(str(root), 12)
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_segmentation(str(tmp_path / "broken.npz"), 12)
    with pytest.raises(DataError, match="at least 3"):
        load_segmentation(str(write_npz(tmp_path / "two.npz", tiny_volumes(2))), 12)
    with pytest.raises(DataError) as e:
        load_segmentation("synthetic", 4)
    assert "size must be at least 8" in str(e.value) and "\n" not in str(e.value)
