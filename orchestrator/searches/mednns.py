"""The MedNNS search (paper 2 A.1-B, section 3): supernets -> zoo -> metaspace -> query.

* ``supernets``: one Tune trial per dataset, in parallel, trains an OFA ResNet supernet
  (full network first, then FairNAS strict fairness; :mod:`trainables.supernet_trial`).
* ``zoo``: one Tune trial per dataset samples ``--zoo-size`` distinct subnets, recalibrates
  their BatchNorm and evaluates them with inherited weights; the rows (architecture and
  functional encodings, val/test metrics, the supernet checkpoint + subnet config that
  rebuild them) go to the zoo, one file per dataset.
* ``metaspace``: the datasets are encoded (embedding + FID, cached in the run folder) and one
  meta-space is trained per leave-one-out target on the whole zoo without that target
  (:mod:`orchestrator.metaspace`).
* ``query``: for each target, its meta-space recommends the top-k models (eq. 5); T1 trains
  the best, T5/T10 train each of the top 5/10 one epoch and continue the best; the same
  architecture from random init and a fixed ResNet run in the same harness.

Outputs: ``summary.json`` (``loo``: one entry per target), ``loo.csv``, the zoo, the
meta-spaces, an FID heatmap (Fig. 1), t-SNE of dataset and model embeddings coloured by
accuracy (Fig. 3) and test-accuracy curves of T1/T5/T10 and the baselines.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ray import tune

from medcore.errors import RunError
from medcore.records import OK, ModelRecord
from orchestrator import reports
from orchestrator.config import MedNNSSearchConfig
from orchestrator.data import load_medmnist, stratified_indices
from orchestrator.metaspace import MetaSpace, MetaSpaceOptions, load_or_encode, train_metaspace
from orchestrator.search import RunContext, Search, Stage, runtime
from orchestrator.zoo import read_zoo, rows_from_records, write_rows
from trainables.memory import plan_batch
from trainables.supernet_trial import (EXTRACT_BATCH, extract_zoo, extraction_memory, finetune, finetune_memory,
                                       read_zoo_rows, supernet_checkpoint_ref, supernet_memory, train_supernet_for)

SUPERNETS, ZOO, FINETUNE = "mednns_supernets", "mednns_zoo", "mednns_finetune"
BUILDER = "ofa_subnet"  # trainables.builders name
STRATEGY_K = {"T1": 1, "T5": 5, "T10": 10}


@dataclass
class SupernetsOutput:
    """The supernets stage: dataset -> its supernet's checkpoint reference (folder or URI, as the
    zoo rows name it) and its trial's last report; ``checkpoints``: the ``tune.Checkpoint`` s the
    zoo stage's trials load (runtime only)."""

    refs: dict[str, str]
    metrics: dict[str, dict]
    checkpoints: dict = runtime()


@dataclass
class ZooOutput:
    """The zoo stage: the rows it wrote to the zoo and dataset -> extraction throughput."""

    n_rows: int
    throughput: dict[str, dict]


@dataclass
class MetaspaceOutput:
    """The metaspace stage: target -> the folder its meta-space is saved in. Runtime only: the
    dataset ``encodings`` (cached under ``metaspace/encodings``), the loaded meta-spaces (``spaces``)
    and the zoo rows they trained on (``zoo_rows``, a data frame)."""

    folders: dict[str, str]
    encodings: object = runtime()
    spaces: dict = runtime()
    zoo_rows: object = runtime()


@dataclass
class QueryOutput:
    """The query stage: the Tk ``strategies`` that ran; target -> its meta-space's top
    ``recommended`` model (model_id, source_dataset, family, architecture, score); target ->
    strategy -> the fine-tuning ``results`` (``acc_at``, ``test_acc_curve``; ``error`` when the
    trial failed)."""

    strategies: list[str]
    recommended: dict[str, dict]
    results: dict[str, dict[str, dict]]


def _family(spatial_dims: int) -> str:
    return f"ofa_resnet{spatial_dims}d"


def _strategies(top_k: int) -> list[str]:
    """The query strategies that run: Tk where k <= ``--top-k``."""
    return [s for s, k in STRATEGY_K.items() if k <= top_k]


class MedNNSSearch(Search):
    name = "mednns"
    description = "MedNNS: per-dataset supernets, their zoo, a leave-one-out meta-space and its recommendation"
    config_cls = MedNNSSearchConfig
    stage_names = ("supernets", "zoo", "metaspace", "query")

    def load_data(self, cfg):
        """Every dataset of ``--datasets`` (name -> MedMNISTData)."""
        return {flag: load_medmnist(flag, cfg.size, cfg.data_root) for flag in cfg.dataset_list()}

    def plan_memory(self, ctx: RunContext, limit: float | None) -> dict:
        """The Tune stages' trials sized before Ray starts, each stage at its heaviest dataset
        (every trial receives all datasets: their arrays count in each; the networks are built
        for the widest dataset, once):

        * ``supernets``: the full OFA network (the largest subnet bounds every sandwich / FairNAS
          path, trained one at a time) with the elastic phase's accumulated gradients
          (:func:`~trainables.supernet_trial.supernet_memory`); the batch is halved until it fits.
        * ``zoo``: the supernet, val/test and the ``--bn-images`` subset, the largest subnet's BN
          recalibration and evaluation at 256 (:func:`~trainables.supernet_trial.extraction_memory`).
          Not lowered: ``--batch-size`` does not reach extraction, and the recalibration batch
          is part of the result (each batch is normalised with its own statistics while the
          next BN's input moments accumulate, so a smaller one writes other BN statistics and
          other zoo metrics); it is refused naming ``--bn-images`` instead.
        * ``query``: fine-tuning the largest subnet (with Tk's retained states) or the fixed
          ResNet on the ``--finetune-fraction`` subset
          (:func:`~trainables.supernet_trial.finetune_memory`); the batch is halved until it fits.

        The meta-space trains in the driver, not in a trial: :func:`orchestrator.metaspace.check_memory`
        refuses it there when it would not fit the machine's available memory."""
        cfg = ctx.cfg
        flags = [f for f in cfg.dataset_list() if f in ctx.data]
        if not flags:  # stages() names the missing data
            return {}
        size = f"{cfg.size} px"
        supernet = supernet_memory(ctx.data, flags, cfg.supernet_epochs, cfg.supernet_full_epochs)
        zoo = extraction_memory(ctx.data, flags, cfg.bn_images, cfg.zoo_size, EXTRACT_BATCH)
        k = max(STRATEGY_K[s] for s in _strategies(cfg.top_k))
        rows = {f: len(stratified_indices(ctx.data[f].labels["train"], cfg.finetune_fraction, cfg.seed)) for f in flags}
        finetuned = {f: ctx.data[f] for f in flags}  # the query stage's trials receive these flags' subsets
        finetune = finetune_memory(finetuned, flags, cfg.baseline.lower(), k, cfg.bn_images, rows)
        return {
            "supernets": plan_batch(f"a supernet training trial ({size})", supernet, cfg.batch_size, limit,
                                    "--batch-size, --size or --datasets"),
            "zoo": plan_batch(f"a zoo extraction trial ({size})", lambda batch: zoo, EXTRACT_BATCH, limit,
                              "--bn-images, --zoo-size, --size or --datasets", lowerable=False),
            "query": plan_batch(f"a fine-tuning trial ({size})", finetune, cfg.batch_size, limit,
                                "--batch-size, --size, --finetune-fraction or a smaller --baseline")}

    def stages(self, ctx: RunContext) -> list[Stage]:
        cfg = ctx.cfg
        missing = [f for f in cfg.dataset_list() if f not in ctx.data]
        if missing:
            raise RunError(f"no data given for {', '.join(missing)}")
        return [Stage("supernets", self.supernets, SupernetsOutput), Stage("zoo", self.zoo, ZooOutput),
                Stage("metaspace", self.metaspace, MetaspaceOutput), Stage("query", self.query, QueryOutput)]

    # ---- stages ----------------------------------------------------------------------------
    def supernets(self, ctx: RunContext) -> SupernetsOutput:
        cfg = ctx.cfg
        batch, resources = ctx.stage_memory("supernets", cfg.batch_size)
        grid = ctx.run_tuner(SUPERNETS, tune.with_parameters(train_supernet_for, datasets=ctx.data),
                             resources=resources, param_space={
            "dataset": tune.grid_search(cfg.dataset_list()), "epochs": cfg.supernet_epochs,
            "full_epochs": cfg.supernet_full_epochs, "paths": cfg.supernet_paths, "sandwich": cfg.sandwich,
            "lr": cfg.lr, "batch_size": batch, "seed": cfg.seed})
        outcomes = ctx.outcomes(grid)
        checkpoints = _checkpoints(outcomes, "training the supernet")
        return SupernetsOutput(refs={f: supernet_checkpoint_ref(c) for f, c in checkpoints.items()},
                               metrics={o.config["dataset"]: o.metrics for o in outcomes if o.metrics},
                               checkpoints=checkpoints)

    def zoo(self, ctx: RunContext) -> ZooOutput:
        cfg, supernets = ctx.cfg, ctx.output(SupernetsOutput)
        batch, resources = ctx.stage_memory("zoo", EXTRACT_BATCH)
        grid = ctx.run_tuner(ZOO, tune.with_parameters(extract_zoo, datasets=ctx.data, supernets=supernets.checkpoints),
                             resources=resources,
                             param_space={"dataset": tune.grid_search(cfg.dataset_list()), "n": cfg.zoo_size,
                                          "seed": cfg.seed, "bn_images": cfg.bn_images, "bn_batch": batch,
                                          "eval_batch": batch})
        outcomes = ctx.outcomes(grid)
        checkpoints = _checkpoints(outcomes, "extracting the zoo")
        rows, throughput = [], {}
        for flag, checkpoint in checkpoints.items():
            data = ctx.data[flag]
            info = data.info
            ref = supernets.refs[flag]
            records = [_record(r, info, ref) for r in read_zoo_rows(checkpoint)]
            rows += rows_from_records(records, dataset=flag, size=info.size, spatial_dims=info.spatial_dims,
                                          task=info.task, input_shape=list(info.input_shape), run=ctx.run_id,
                                          synthetic=bool(info.synthetic))
            m = next(o.metrics for o in outcomes if o.config["dataset"] == flag)
            throughput[flag] = {"subnets": m["n"], "seconds": m["seconds"], "subnets_per_s": m["subnets_per_s"]}
        write_rows(cfg.zoo_path, rows, writer_id=f"{ctx.run_id}-mednns-zoo")
        return ZooOutput(len(rows), throughput)

    def metaspace(self, ctx: RunContext) -> MetaspaceOutput:
        cfg = ctx.cfg
        flags = cfg.dataset_list()
        encodings = load_or_encode(ctx.out / "metaspace" / "encodings", ctx.data, cfg.seed, cfg.encode_images)
        # everything the zoo holds on these datasets (ODE and compression rows included)
        zoo_rows = read_zoo(cfg.zoo_path, dataset=flags, status=OK)
        zoo_rows = zoo_rows[zoo_rows["spatial_dims"] == encodings.spatial_dims].reset_index(drop=True)
        losses = cfg.loss_list()
        options = MetaSpaceOptions(epochs=cfg.metaspace_epochs, lr=cfg.metaspace_lr, use_perf="perf" in losses,
                                   use_rank="rank" in losses, use_fid="fid" in losses,
                                   use_contrastive="contrastive" in losses, seed=cfg.seed)
        spaces, folders = {}, {}
        for target in flags:
            folder = ctx.out / "metaspace" / target
            folders[target] = str(folder)
            if cfg.resume and (folder / "metaspace.json").exists():
                spaces[target] = MetaSpace.load(folder)
                continue
            spaces[target] = train_metaspace(zoo_rows, encodings, options, exclude=target,
                                             settings="--zoo-size or --datasets (or a --zoo with fewer rows)")
            spaces[target].save(folder)
        return MetaspaceOutput(folders, encodings=encodings, spaces=spaces, zoo_rows=zoo_rows)

    def query(self, ctx: RunContext) -> QueryOutput:
        cfg, metaspace = ctx.cfg, ctx.output(MetaspaceOutput)
        flags, k_max = cfg.dataset_list(), cfg.top_k
        strategies = _strategies(k_max)
        batch, resources = ctx.stage_memory("query", cfg.batch_size)
        jobs, recommended = [], {}
        options = {"epochs": cfg.finetune_epochs, "report_epochs": cfg.report_list(), "lr": cfg.lr,
                   "batch_size": batch, "seed": cfg.seed, "bn_images": cfg.bn_images}
        for target in flags:
            info = ctx.data[target].info
            # rows of other searches may lack a build that carries weights: rank among the
            # supernet subnets (every one of them rebuilds with inherited weights)
            space = metaspace.spaces[target]
            top = space.query(metaspace.encodings.embeddings[target], top_k=len(space.models),
                              exclude_dataset=target)
            top = top[top["family"] == _family(info.spatial_dims)].head(k_max).reset_index(drop=True)
            if top.empty:
                raise RunError(f"the meta-space for {target} holds no supernet subnet to recommend")
            recommended[target] = top
            builds = [json.loads(b) if isinstance(b, str) else b for b in top["build"]]
            runs = [{"strategy": s, "candidates": builds[:STRATEGY_K[s]]} for s in strategies]
            scratch = {**builds[0], "kwargs": {**builds[0]["kwargs"], "supernet": None,
                                               "in_channels": info.n_channels, "n_outputs": info.n_outputs}}
            runs.append({"strategy": "scratch", "candidates": [scratch]})
            resnet = {"builder": "resnet",
                      "kwargs": {"name": cfg.baseline.lower(), "spatial_dims": info.spatial_dims,
                                 "in_channels": info.n_channels, "n_outputs": info.n_outputs}}
            runs.append({"strategy": "resnet", "candidates": [resnet]})
            jobs.append({"target": target, "runs": runs, **options})
        data = {f: ctx.data[f].subset("train", cfg.finetune_fraction, cfg.seed) for f in flags}
        grid = ctx.run_tuner(FINETUNE, tune.with_parameters(finetune, datasets=data), resources=resources,
                             param_space={"job": tune.grid_search(jobs)})
        results = {}
        for o in ctx.outcomes(grid):
            job = o.config["job"]
            for run in job["runs"]:
                results.setdefault(job["target"], {})[run["strategy"]] = {"error": o.reason} if o.failed \
                    else o.metrics["results"][run["strategy"]]
        return QueryOutput(strategies, {target: _recommended(top) for target, top in recommended.items()}, results)

    # ---- outputs -----------------------------------------------------------------------
    def summarize(self, ctx: RunContext) -> dict:
        cfg, out = ctx.cfg, ctx.out
        flags = cfg.dataset_list()
        synthetic = any(bool(d.info.synthetic) for d in ctx.data.values())
        first = cfg.report_list()[0]
        loo, table = [], []
        query = ctx.output(QueryOutput)
        for target in flags:
            res = query.results.get(target, {})

            def acc(strategy, epoch=first):
                m = res.get(strategy) or {}
                return (m.get("acc_at") or {}).get(str(epoch))

            entry = {"target": target, "recommended": query.recommended[target],
                     "epoch": first, "t1_acc": acc("T1"), "scratch_acc": acc("scratch"), "resnet_acc": acc("resnet")}
            for s in query.strategies:
                if s != "T1":
                    entry[f"{s.lower()}_acc"] = acc(s)
            entry["acc_at"] = {s: (res.get(s) or {}).get("acc_at") for s in query.strategies + ["scratch", "resnet"]}
            entry["curves"] = {s: (res.get(s) or {}).get("test_acc_curve") for s in
                               query.strategies + ["scratch", "resnet"]}
            errors = {s: m["error"] for s, m in res.items() if "error" in m}
            if errors:
                entry["errors"] = errors
            loo.append(entry)
            table.append({k: v for k, v in entry.items() if k not in ("curves", "acc_at")})
        reports.write_table(table, out / "loo.csv", synthetic)
        metaspace = ctx.output(MetaspaceOutput)
        encodings = metaspace.encodings
        plots = {}
        try:
            plots["fid"] = str(plot_fid(encodings, out / "fid_heatmap.png", synthetic))
            plots["curves"] = str(plot_curves(loo, out / "finetune_curves.png", synthetic))
            plots["tsne"] = [str(plot_tsne(metaspace.spaces[t], encodings, metaspace.zoo_rows, t,
                                           out / f"tsne_{t}.png", synthetic, cfg.seed)) for t in flags]
        except ImportError as exc:  # matplotlib / sklearn missing: the numbers stand without plots
            plots["error"] = f"plots skipped: {exc}"
        beats = [e for e in loo if _num(e["t1_acc"]) and _num(e["scratch_acc"]) and _num(e["resnet_acc"])
                 and e["t1_acc"] > e["scratch_acc"] and e["t1_acc"] > e["resnet_acc"]]
        zoo = ctx.output(ZooOutput)
        return {"search": "mednns", "datasets": flags, "dataset": ",".join(flags), "size": cfg.size,
                "synthetic": synthetic, "n_zoo": zoo.n_rows, "zoo_throughput": zoo.throughput,
                "extractor": encodings.extractor, "fid": encodings.fid.round(4).to_dict(),
                "supernets": {f: {k: m.get(k) for k in ("train_seconds", "params", "epoch")}
                              for f, m in ctx.output(SupernetsOutput).metrics.items()},
                "loo": loo, "t1_beats_both": f"{len(beats)} of {len(loo)}", "plots": plots,
                "zoo": {"path": cfg.zoo_path, "rows": zoo.n_rows}, "config": cfg.to_dict()}

    def print_summary(self, summary: dict) -> None:
        if summary.get("synthetic"):
            print("NOTE: results come from SYNTHETIC data")
        print(json.dumps({k: summary[k] for k in ("search", "datasets", "synthetic", "n_zoo")}))
        for e in summary["loo"]:
            print(f"{e['target']}: T1 {e['t1_acc']}, scratch {e['scratch_acc']}, resnet {e['resnet_acc']} "
                  f"(epoch {e['epoch']}); recommended from {e['recommended']['source_dataset']}")
        print(f"results in {summary['out']}")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _recommended(top) -> dict:
    """The summary's entry of a target's recommended model: the first row of its meta-space's ranking."""
    best = top.iloc[0]
    return {"model_id": best["model_id"], "source_dataset": best["dataset"], "family": best["family"],
            "architecture": json.loads(best["architecture"]), "score": float(best["score"])}


def _checkpoints(outcomes: list, what: str) -> dict:
    """Dataset -> checkpoint of a per-dataset experiment's trials; every one must have saved one."""
    out = {}
    for o in outcomes:
        flag = o.config.get("dataset")
        if o.failed or o.checkpoint is None:
            reasons = "; ".join(x.reason for x in outcomes if x.failed) or "it saved no checkpoint"
            raise RunError(f"{what} failed for {flag}: {reasons}")
        out[flag] = o.checkpoint
    return out


def _record(row: dict, info, supernet_ref: str) -> ModelRecord:
    kwargs = {"config": row["config"], "spatial_dims": info.spatial_dims, "in_channels": info.n_channels,
              "n_outputs": info.n_outputs, "size": info.size, "supernet": supernet_ref}
    return ModelRecord(
        search="mednns", stage="zoo", family=_family(info.spatial_dims), architecture=row["config"],
        encoding=row["encoding"], functional=row["functional"], status=OK, build={"builder": BUILDER, "kwargs": kwargs},
        weights=supernet_ref, metrics={k: row[k] for k in ("val_loss", "val_acc", "val_auc", "test_acc", "test_auc",
                                                           "params", "flops")})


# ---- plots ---------------------------------------------------------------------------------

def plot_fid(encodings, path: Path, synthetic: bool) -> Path:
    """FID between every pair of datasets (paper Fig. 1), with the extractor named."""
    plt = reports._plt()
    names = list(encodings.fid.index)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
    im = ax.imshow(encodings.fid.to_numpy(), cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{encodings.fid.iat[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="FID")
    reports._title(ax, f"FID between datasets ({encodings.extractor})", synthetic)
    return reports.save_figure(fig, path, dpi=120)


def plot_curves(loo: list, path: Path, synthetic: bool) -> Path:
    """Test accuracy per fine-tuning epoch: T1/T5/T10 against scratch and the fixed ResNet."""
    plt = reports._plt()
    fig, axes = plt.subplots(1, len(loo), figsize=(4 * len(loo), 3.2), squeeze=False)
    for ax, e in zip(axes[0], loo):
        for s, curve in e["curves"].items():
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=s)
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
        reports._title(ax, f"held out: {e['target']}", synthetic)
    return reports.save_figure(fig, path, dpi=120)


def plot_tsne(space, encodings, zoo_rows, target: str, path: Path, synthetic: bool, seed: int,
              max_models: int = 600) -> Path:
    """t-SNE of the meta-space (paper Fig. 3): model embeddings coloured by their accuracy,
    dataset embeddings (the held-out target starred)."""
    # local: summarize draws the plots under ``except ImportError`` (the numbers stand without them)
    from sklearn.manifold import TSNE

    plt = reports._plt()
    rng = np.random.default_rng(seed)
    idx = np.arange(len(space.model_embeddings))
    if len(idx) > max_models:
        idx = np.sort(rng.choice(idx, max_models, replace=False))
    models = space.model_embeddings[idx]
    acc = space.models[space.options.metric].to_numpy()[idx] if space.options.metric in space.models else None
    names = list(encodings.embeddings)
    datasets = np.stack([space.dataset_embedding(encodings.embeddings[n]) for n in names])
    points = np.concatenate([models, datasets]).astype(np.float64)
    xy = TSNE(n_components=2, perplexity=min(30.0, max(2.0, (len(points) - 1) / 3)), random_state=seed,
              init="pca").fit_transform(points)
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(xy[:len(models), 0], xy[:len(models), 1], c=acc, cmap="viridis", s=8)
    fig.colorbar(sc, ax=ax, label=space.options.metric)
    for i, n in enumerate(names):
        p = xy[len(models) + i]
        ax.scatter(*p, marker="*" if n == target else "s", s=160 if n == target else 60, c="red", edgecolors="k")
        ax.annotate(n + (" (held out)" if n == target else ""), p, fontsize=8)
    reports._title(ax, f"meta-space without {target}: models and datasets (t-SNE)", synthetic)
    return reports.save_figure(fig, path, dpi=120)
