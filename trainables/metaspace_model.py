"""The MedNNS meta-space: encoders, performance predictor, losses and trainer (paper 2 A.3).

* ``E_m`` (:attr:`MetaSpaceNet.model_encoder`): MLP on a model's architecture encoding +
  functional encoding (A.2); ``E_d`` (:attr:`MetaSpaceNet.dataset_encoder`): MLP on a
  dataset's mean image feature; both end on the unit sphere, so a dot product is the cosine
  similarity that the rank loss (eq. 3) and the query (eq. 5) use.
* ``phi`` (:attr:`MetaSpaceNet.predictor`): MLP on the (model, dataset) embedding pair ->
  predicted performance ``y_hat``.
* ``L = L_perf + L_rank + L_FID`` (each switchable), plus a TANS-style contrastive loss for
  the Table 2 ablation. Adam, lr 1e-2 (section 3).

Pairs are the zoo's (model, dataset, performance) rows. Sampling is vectorised: rows are
sorted by dataset (then performance, best first) once, and each step draws, for every row
of the batch, a rank partner from the same dataset (and for the contrastive loss a positive
from the dataset's top decile) with one tensor expression, so an epoch over 720k pairs is a
few hundred batched steps and no Python loop over pairs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MetaSpaceOptions:
    """How the meta-space is trained (defaults: Adam lr 1e-2 as in the paper, all three paper losses)."""

    epochs: int = 20
    lr: float = 1e-2
    beta: float = 10.0  # eq. 3 scaling of the cosine-similarity difference
    sigma: float | None = None  # eq. 4 FID scale; None: the median FID between training datasets
    temperature: float = 0.1  # contrastive loss
    use_perf: bool = True
    use_rank: bool = True
    use_fid: bool = True
    use_contrastive: bool = False
    batch_size: int = 4096
    seed: int = 0
    hidden_dim: int = 128
    embedding_dim: int = 32
    metric: str = "val_acc"  # the zoo column used as the performance P_hat (never a test metric by default)
    top_fraction: float = 0.1  # contrastive positives: a dataset's top models by performance

    def check(self) -> None:
        from medcore.errors import ConfigError

        for name in ("epochs", "batch_size", "hidden_dim", "embedding_dim"):
            low = 0 if name == "epochs" else 1
            if int(getattr(self, name)) < low:
                raise ConfigError(f"must be >= {low}, got {getattr(self, name)}", name)
        for name in ("lr", "beta", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", name)
        if self.sigma is not None and not self.sigma > 0:
            raise ConfigError(f"must be > 0 (or unset for the median FID), got {self.sigma}", "sigma")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.top_fraction}", "top_fraction")
        if not (self.use_perf or self.use_rank or self.use_fid or self.use_contrastive):
            raise ConfigError("at least one of use_perf, use_rank, use_fid, use_contrastive must be on", "use_rank")


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


class MetaSpaceNet(nn.Module):
    """E_m, E_d and phi, with the input standardisation (training means and stds) as buffers,
    so a saved state dict embeds raw features the same way after loading."""

    def __init__(self, model_dim: int, dataset_dim: int, hidden_dim: int = 128, embedding_dim: int = 32):
        super().__init__()
        self.model_encoder = _mlp(model_dim, hidden_dim, embedding_dim)
        self.dataset_encoder = _mlp(dataset_dim, hidden_dim, embedding_dim)
        self.predictor = _mlp(2 * embedding_dim, hidden_dim, 1)
        for name, dim in (("model", model_dim), ("dataset", dataset_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    def set_standardisation(self, model_x: torch.Tensor, dataset_x: torch.Tensor) -> None:
        for name, x in (("model", model_x), ("dataset", dataset_x)):
            mean = x.mean(dim=0)
            std = x.std(dim=0, unbiased=False) if len(x) > 1 else torch.ones_like(mean)
            std = torch.where(std > 1e-6 * max(float(std.max()), 1.0), std, torch.ones_like(std))
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_std").copy_(std)

    def embed_models(self, x: torch.Tensor) -> torch.Tensor:
        """E_m(s) on the unit sphere."""
        return F.normalize(self.model_encoder((x - self.model_mean) / self.model_std), dim=-1)

    def embed_datasets(self, x: torch.Tensor) -> torch.Tensor:
        """E_d(D) on the unit sphere."""
        return F.normalize(self.dataset_encoder((x - self.dataset_mean) / self.dataset_std), dim=-1)

    def predict(self, model_emb: torch.Tensor, dataset_emb: torch.Tensor) -> torch.Tensor:
        """phi(E_m(s), E_d(D)) -> y_hat, shape (B,)."""
        return self.predictor(torch.cat([model_emb, dataset_emb], dim=-1)).squeeze(-1)


def performance_loss(predicted: torch.Tensor, performance: torch.Tensor) -> torch.Tensor:
    """L_perf: mean squared error between y_hat = phi(E_m(s), E_d(D)) and the zoo's P_hat."""
    return F.mse_loss(predicted, performance)


def rank_loss(similarity_j: torch.Tensor, similarity_k: torch.Tensor, performance_j: torch.Tensor,
              performance_k: torch.Tensor, beta: float) -> torch.Tensor:
    """L_rank (eq. 3): mean over pairs with P_j > P_k of -log sigmoid(beta (E_d.E_m(s_j) - E_d.E_m(s_k))).

    Each pair (j, k) is oriented so the better model comes first; ties carry no order and are
    left out; |P| is the number of ordered pairs. 0 (with a gradient path) when no pair is ordered.
    """
    delta = performance_j - performance_k
    ordered = delta != 0
    if not bool(ordered.any()):
        return (similarity_j - similarity_k).sum() * 0.0
    margin = torch.sign(delta[ordered]) * (similarity_j[ordered] - similarity_k[ordered])
    return -F.logsigmoid(beta * margin).mean()


def fid_loss(dataset_emb: torch.Tensor, fid: torch.Tensor, sigma: float) -> torch.Tensor:
    """L_FID (eq. 4): mean over i != j of exp(-FID(D_i, D_j) / sigma) ||E_d(D_i) - E_d(D_j)||^2."""
    k = dataset_emb.shape[0]
    if k < 2:
        return dataset_emb.sum() * 0.0
    sq = (dataset_emb[:, None, :] - dataset_emb[None, :, :]).pow(2).sum(-1)
    off = ~torch.eye(k, dtype=torch.bool, device=dataset_emb.device)
    return (torch.exp(-fid / sigma) * sq)[off].mean()


def contrastive_loss(dataset_emb: torch.Tensor, model_emb: torch.Tensor, temperature: float,
                     groups: torch.Tensor | None = None) -> torch.Tensor:
    """TANS-style InfoNCE: row i's dataset should be closer to its own good model i than to the
    other rows' models: mean_i -log softmax_j(cos(d_i, m_j) / temperature)[i].

    ``groups`` (B,): rows of the same dataset; their models are not negatives for each other.
    Embeddings are expected on the unit sphere.
    """
    logits = dataset_emb @ model_emb.T / temperature
    if groups is not None:
        same = (groups[:, None] == groups[None, :]) & ~torch.eye(len(groups), dtype=torch.bool,
                                                                   device=logits.device)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


@dataclass
class MetaSpaceFit:
    net: MetaSpaceNet
    history: list  # one dict per epoch: mean of each active loss, wall and CPU seconds
    sigma: float | None


def fit_metaspace(model_x: np.ndarray, dataset_x: np.ndarray, row_dataset: np.ndarray, performance: np.ndarray,
                  fid: np.ndarray | None, options: MetaSpaceOptions) -> MetaSpaceFit:
    """Train E_m, E_d and phi on pairs (row i: model features ``model_x[i]`` on dataset
    ``row_dataset[i]`` with performance ``performance[i]``); ``dataset_x`` (K, D) are the
    training datasets' embeddings and ``fid`` (K, K) their FID matrix (for L_FID).

    ``options.epochs == 0`` returns the untrained (seeded) network, standardised on the data.
    """
    options.check()
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    mx = torch.as_tensor(np.asarray(model_x, np.float32))
    dx = torch.as_tensor(np.asarray(dataset_x, np.float32))
    ds = torch.as_tensor(np.asarray(row_dataset, np.int64))
    perf = torch.as_tensor(np.asarray(performance, np.float32))
    n, k = len(mx), len(dx)
    net = MetaSpaceNet(mx.shape[1], dx.shape[1], options.hidden_dim, options.embedding_dim)
    net.set_standardisation(mx, dx)

    # Positions in the order (dataset, performance desc): a partner is offset + a uniform draw,
    # mapped back to its row through ``order`` (the feature matrix itself is never copied).
    order = torch.as_tensor(np.lexsort((-np.asarray(performance, np.float64), np.asarray(row_dataset))))
    count = torch.bincount(ds, minlength=k)
    start = torch.cumsum(count, 0) - count
    top = torch.clamp((count.float() * options.top_fraction).ceil().long(), min=1)

    sigma = options.sigma
    fid_t = None
    if options.use_fid and fid is not None and k > 1:
        fid_t = torch.as_tensor(np.asarray(fid, np.float32))
        if sigma is None:
            off = fid_t[~torch.eye(k, dtype=torch.bool)]
            sigma = max(float(off.median()), 1e-6)

    opt = torch.optim.Adam(net.parameters(), lr=options.lr)
    history = []
    for epoch in range(options.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        sums: dict[str, float] = {}
        steps = 0
        perm = torch.randperm(n, generator=gen)
        for b in range(0, n, options.batch_size):
            idx = perm[b:b + options.batch_size]
            d_idx = ds[idx]
            d_all = net.embed_datasets(dx)
            d_emb = d_all[d_idx]
            rows = [idx]
            if options.use_rank:
                partner = start[d_idx] + (torch.rand(len(idx), generator=gen) * count[d_idx]).long()
                rows.append(order[partner])
            if options.use_contrastive:
                positive = start[d_idx] + (torch.rand(len(idx), generator=gen) * top[d_idx]).long()
                rows.append(order[positive])
            m_all = net.embed_models(mx[torch.cat(rows)])
            m_parts = m_all.split(len(idx))
            m_emb = m_parts[0]
            losses = {}
            if options.use_perf:
                losses["perf"] = performance_loss(net.predict(m_emb, d_emb), perf[idx])
            if options.use_rank:
                sim = (m_emb * d_emb).sum(-1)
                sim_partner = (m_parts[1] * d_emb).sum(-1)
                losses["rank"] = rank_loss(sim, sim_partner, perf[idx], perf[rows[1]], options.beta)
            if fid_t is not None:
                losses["fid"] = fid_loss(d_all, fid_t, sigma)
            if options.use_contrastive:
                losses["contrastive"] = contrastive_loss(d_emb, m_parts[-1], options.temperature, d_idx)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            steps += 1
        entry = {key: value / max(steps, 1) for key, value in sums.items()}
        entry.update(epoch=epoch + 1, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        if not all(math.isfinite(v) for v in entry.values()):
            raise FloatingPointError(f"meta-space loss is not finite at epoch {epoch + 1}: {entry}")
        history.append(entry)
    net.eval()
    return MetaSpaceFit(net=net, history=history, sigma=sigma)


@torch.no_grad()
def embed_in_batches(fn, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """``fn`` (an embed method) over rows of ``x`` in batches, as float32 numpy."""
    out = [fn(torch.as_tensor(np.asarray(x[i:i + batch_size], np.float32))).numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


# ---- memory: what training keeps alive, before it starts -----------------------------------

# Per pair, besides its feature row: fit_metaspace's dataset codes (int64), performance (float32
# tensor), sort order (int64) and the epoch permutation (int64, the old one alive while the next
# is drawn: 2x); train_metaspace's codes (int64) and performance (float64).
PAIR_VECTOR_BYTES = 8 + 4 + 8 + 2 * 8 + 8 + 8
EMBED_BATCH = 65536  # embed_in_batches' default rows per batch
FEATURE_CHUNK = 65536  # rows of a ragged zoo column stacked at once into the feature matrix
ROW_ARRAY_OVERHEAD = 112  # a numpy array object's own bytes (the per-row float32 arrays of a chunk)


class _PairStep(nn.Module):
    """One training step of :func:`fit_metaspace` as a module, for the meta-device simulation:
    E_m on the gathered rows of the batch (the rows themselves, their rank partners and
    contrastive positives), E_d on every training dataset, phi on the batch's pairs."""

    def __init__(self, net: MetaSpaceNet, n_datasets: int, batch: int, options: MetaSpaceOptions):
        super().__init__()
        self.net, self.batch, self.options = net, int(batch), options
        self.register_buffer("datasets", torch.zeros(n_datasets, net.dataset_mean.shape[0]))
        self.register_buffer("row_dataset", torch.zeros(self.batch, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d_emb = self.net.embed_datasets(self.datasets)[self.row_dataset]
        parts = self.net.embed_models(x).split(self.batch)
        out = [(p * d_emb).sum(-1) for p in parts]
        if self.options.use_perf:
            out.append(self.net.predict(parts[0], d_emb))
        return torch.cat(out)


class _Embed(nn.Module):
    """E_m alone, standardisation included, as :func:`embed_in_batches` runs it."""

    def __init__(self, net: MetaSpaceNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed_models(x)


def metaspace_memory(n_pairs: int, model_dim: int, dataset_dim: int, n_datasets: int, options: MetaSpaceOptions,
                     table_bytes: int = 0, ragged_width: int | None = None) -> int:
    """Bytes that training a meta-space on ``n_pairs`` zoo rows adds to the process, before any
    is allocated (the zoo itself is already in memory): the pair feature matrix E_m reads
    (``n_pairs x model_dim`` float32, built once and indexed per batch) and the chunk its widest
    ragged column (``ragged_width`` values a row) is stacked through, the per-pair vectors
    (:data:`PAIR_VECTOR_BYTES`), the network with its gradients and Adam's two moments, the
    model embeddings written after training (and their concatenated copy), ``table_bytes`` of
    the query table, and ``SAFETY x`` the larger of one training step's tensors at
    ``options.batch_size`` (a gather of 1 + rank + contrastive rows per pair) and one batch of
    the final embedding pass, both simulated on the meta device. The phases' terms are summed,
    not maxed: the allocator keeps what a phase freed (measured on the synthetic OFA-shaped zoo,
    278 features: 160k pairs added 516 MB, this says 693 MB; 640k pairs 1,054 MB, this says
    1,423 MB). The features dominate; the batch moves the step term only."""
    from trainables.memory import SAFETY, simulate_peak_bytes

    n = int(n_pairs)
    batch = max(1, min(int(options.batch_size), n))
    rows_per_pair = 1 + int(options.use_rank) + int(options.use_contrastive)
    with torch.device("meta"):
        step = _PairStep(MetaSpaceNet(model_dim, dataset_dim, options.hidden_dim, options.embedding_dim),
                         n_datasets, batch, options)
    params = sum(p.numel() for p in step.parameters()) * 4
    step_peak = simulate_peak_bytes(step, (int(model_dim),), rows_per_pair * batch)
    embed = EMBED_BATCH if n > EMBED_BATCH else n
    embed_peak = simulate_peak_bytes(_Embed(step.net), (int(model_dim),), embed, train=False) if n else 0
    embeddings = 2 * n * options.embedding_dim * 4
    chunk = min(n, FEATURE_CHUNK)
    stacking = chunk * (2 * 4 * int(model_dim if ragged_width is None else ragged_width) + ROW_ARRAY_OVERHEAD)
    return int(n * model_dim * 4 + stacking + n * PAIR_VECTOR_BYTES + 4 * params + embeddings + int(table_bytes)
               + SAFETY * max(step_peak, embed_peak))
