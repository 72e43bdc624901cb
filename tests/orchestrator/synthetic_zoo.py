"""A SYNTHETIC zoo with planted structure for the MedNNS meta-space: tests and the scale benchmark
(``benchmarks/metaspace_scale.py``)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from medcore.records import OK
from orchestrator.metaspace import DatasetEncodings


def synthetic_zoo(n_datasets: int = 8, models_per_dataset: int = 200, seed: int = 0, feature_dim: int = 16,
                  encoding_len: int = 6, functional_len: int = 8, noise: float = 0.02, missing_functional: float = 0.0,
                  families: tuple = ("synthetic-net",)) -> tuple[pd.DataFrame, DatasetEncodings]:
    """A SYNTHETIC zoo with planted structure, for tests and the scale benchmark.

    Dataset d has a latent direction z_d on the unit circle and an embedding A z_d (+ noise);
    model m has an architecture encoding a_m and a latent direction w_m = normalise(B a_m);
    its performance on its own dataset is 0.5 + 0.4 cos(w_m, z_d) + noise. The FID between two
    datasets is proportional to |z_i - z_j|^2. Every row and the encodings are marked synthetic.
    """
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(n_datasets) / n_datasets + rng.uniform(-0.2, 0.2, n_datasets)
    z = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    a_map = rng.normal(size=(2, feature_dim))
    b_map = rng.normal(size=(encoding_len, 2))
    c_map = rng.normal(size=(encoding_len, functional_len))
    names = [f"synthetic{d}" for d in range(n_datasets)]
    n = n_datasets * models_per_dataset
    arch = rng.uniform(-1, 1, size=(n, encoding_len))
    w = arch @ b_map
    w /= np.linalg.norm(w, axis=1, keepdims=True) + 1e-12
    ds = np.repeat(np.arange(n_datasets), models_per_dataset)
    perf = 0.5 + 0.4 * (w * z[ds]).sum(1) + rng.normal(0, noise, n)
    functional = arch @ c_map  # in place from here: a 720k-row zoo holds ~1.5 GB of functional encodings
    np.tanh(functional, out=functional)
    fam = np.asarray(families, dtype=object)[rng.integers(0, len(families), n)]
    has_fun = rng.uniform(size=n) >= missing_functional
    zoo = pd.DataFrame({
        "model_id": [f"syn{seed}-{i:07d}" for i in range(n)],
        "dataset": np.asarray(names, dtype=object)[ds], "spatial_dims": 2, "family": fam,
        "architecture": [None] * n, "encoding": list(arch.astype(np.float64)),
        "functional": [f if h else None for f, h in zip(functional, has_fun)],
        "status": OK, "val_acc": perf, "test_acc": perf, "weights": None, "build": None, "synthetic": True})
    zoo["architecture"] = [json.dumps({"synthetic": i}) for i in range(n)]
    embeddings = {nm: z[d] @ a_map + rng.normal(0, 0.05, feature_dim) for d, nm in enumerate(names)}
    fid = 100.0 * ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    enc = DatasetEncodings(embeddings, pd.DataFrame(fid, index=names, columns=names), "synthetic-planted", 2,
                           n_images=0, seed=seed, synthetic={nm: True for nm in names})
    return zoo, enc
