"""The IAC search's tables, statistics and figures: genotypes grouped over runs, Table II's DSC
gains, the paired tests, and the best cell, alpha/beta, Dice-per-stage and validation-slice plots.

They read the rows the stages of :mod:`orchestrator.searches.darts` return (Stage I's rows,
Stage II's ``history``, Stage III's rows); ``DartsSearch.summarize`` writes them. Kept apart from the
stages, and never importing them, so the reporting can be read and tested on its own.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch
from scipy import stats

from medcore.records import OK
from orchestrator import reports
from trainables.darts_trial import build_skip_model
from trainables.nets.iac_cell import INPUT_NAMES, PRIMITIVES, STEPS, Genotype, node_slices
from trainables.unet_trial import SKIPS_FILE

IAC = "iac"  # the skip kind of a Stage III run with a searched cell (the baselines have their names)
REPLACE = "replace"  # the paper's implant (rows written before --implant existed have none)


# ---- tables and statistics ---------------------------------------------------------------

def _key(genotype) -> str:
    return json.dumps(genotype, sort_keys=True)


def by_genotype(rows: list[dict]) -> list[dict]:
    """Stage III IAC runs grouped by (backbone, genotype): mean val Dice over runs."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["backbone"], _key(r["genotype"])), []).append(r)
    out = []
    for (backbone, _), rs in groups.items():
        dice = [r["val_dice"] for r in rs]
        epochs = sorted({e for r in rs for e in r["snapshot_epochs"]})
        out.append({"backbone": backbone, "genotype": rs[0]["genotype"], "epochs": epochs, "epoch": epochs[0],
                    "dice": sum(dice) / len(dice), "runs": len(dice),
                    "gain": sum(r["dice_gain"] for r in rs) / len(rs)})
    return out


def genotype_row(h: dict, iac: list[dict]) -> dict:
    """One ``genotypes.csv`` row: a Stage II epoch's genotype, with its Stage III Dice and gain
    where it was a snapshot (``iac`` from :func:`by_genotype`)."""
    match = next((g for g in iac if g["backbone"] == h["backbone"] and _key(g["genotype"]) == _key(h["genotype"])
                  and h["epoch"] in g["epochs"]), None)
    return {"backbone": h["backbone"], "epoch": h["epoch"], "searching": h["searching"],
            "search_dice": h["search_dice"], "genotype": str(Genotype.from_dict(h["genotype"])),
            "genotype_json": h["genotype"], "stage3_dice": match["dice"] if match else None,
            "stage3_gain": match["gain"] if match else None}


def last_epoch(history: list[dict], backbone: str) -> dict | None:
    """The backbone's last Stage II epoch (search Dice, genotype), or None if it has none."""
    rows = [h for h in history if h["backbone"] == backbone]
    if not rows:
        return None
    last = max(rows, key=lambda h: h["epoch"])
    return {"epoch": last["epoch"], "search_dice": last["search_dice"], "genotype": last["genotype"]}


def _mean_var(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "variance": float(v.var(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def _best_iac_runs(rows: list[dict], backbone: str) -> list[dict]:
    """The runs of the backbone's best IAC genotype (by mean val Dice over runs)."""
    groups = [g for g in by_genotype([r for r in rows if r["skip"] == IAC and r["backbone"] == backbone])]
    if not groups:
        return []
    best = max(groups, key=lambda g: g["dice"])
    return [r for r in rows if r["skip"] == IAC and r["backbone"] == backbone
            and _key(r["genotype"]) == _key(best["genotype"])]


def improvement_table(stage1: dict, rows: list[dict]) -> dict:
    """Table II: per backbone and skip kind, the DSC improvement over the frozen Stage I U-Net
    (mean and variance over runs); IAC is its best genotype's runs."""
    table = {}
    for backbone, s1 in stage1.items():
        entry = {"baseline_dice": s1["val_dice"]}
        kinds = {IAC: _best_iac_runs(rows, backbone)}
        for r in rows:
            if r["skip"] != IAC and r["backbone"] == backbone:
                kinds.setdefault(r["skip"], []).append(r)
        for kind, rs in kinds.items():
            if rs:
                entry[kind] = {"dice": _mean_var([r["val_dice"] for r in rs]),
                               "gain": _mean_var([r["val_dice"] - s1["val_dice"] for r in rs])}
        table[backbone] = entry
    return table


def paired_tests(stage1: dict, rows: list[dict]) -> dict:
    """Paired t-test and Wilcoxon signed-rank test (scipy.stats) of each skip kind against the
    frozen Stage I U-Net, over the runs (backbone x seed): IAC is each backbone's best genotype."""
    out = {}
    kinds = [IAC] + sorted({r["skip"] for r in rows if r["skip"] != IAC})
    for kind in kinds:
        pairs = []
        for backbone, s1 in stage1.items():
            rs = _best_iac_runs(rows, backbone) if kind == IAC else \
                [r for r in rows if r["skip"] == kind and r["backbone"] == backbone]
            pairs += [(s1["val_dice"], r["val_dice"]) for r in sorted(rs, key=lambda r: r["seed"])]
        entry = {"n": len(pairs), "mean_gain": (sum(b - a for a, b in pairs) / len(pairs)) if pairs else None,
                 "ttest_p": None, "wilcoxon_p": None}
        diffs = [b - a for a, b in pairs]
        if len(pairs) < 2 or all(d == diffs[0] for d in diffs):
            entry["reason"] = "needs at least 2 runs with differing gains (--runs, more backbones)"
        else:
            entry["ttest_p"] = _finite(stats.ttest_rel([b for _, b in pairs], [a for a, _ in pairs]).pvalue)
            if any(d != 0 for d in diffs):
                entry["wilcoxon_p"] = _finite(stats.wilcoxon(diffs).pvalue)
        out[kind] = entry
    return out


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


# ---- plots ---------------------------------------------------------------------------------

def plot_cell(genotype: dict, path, synthetic: bool, title: str = "IAC genotype"):
    """The cell as a DAG: the two inputs, four nodes (each with its two op-labelled edges), the output."""
    plt = reports._plt()
    g = Genotype.from_dict(genotype)
    pos = {0: (0.0, 2.2), 1: (0.0, 0.8)}
    for k in range(STEPS):
        pos[2 + k] = (1.3 + 1.2 * k, 1.5 + (0.9 if k % 2 else -0.9))
    out = (1.3 + 1.2 * STEPS + 0.3, 1.5)
    names = {0: f"input0\n({INPUT_NAMES[0]})", 1: f"input1\n({INPUT_NAMES[1]})",
             **{2 + k: f"node {k}" for k in range(STEPS)}}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k in range(STEPS):
        for n, (op, i) in enumerate(g.node_edges(k)):
            (x0, y0), (x1, y1) = pos[i], pos[2 + k]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "color": f"C{k}", "lw": 1.5, "shrinkA": 18, "shrinkB": 18,
                                    "connectionstyle": f"arc3,rad={0.15 if n else -0.15}"})
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + (0.12 if n else -0.12), op, fontsize=7, color=f"C{k}",
                    ha="center", va="center", bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.5})
    for node in g.concat:
        ax.annotate("", xy=out, xytext=pos[node], arrowprops={"arrowstyle": "->", "color": "grey", "lw": 0.8,
                                                              "shrinkA": 18, "shrinkB": 22, "ls": "--"})
    for node, (x, y) in pos.items():
        ax.text(x, y, names[node], ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "lightblue" if node < 2 else "khaki"})
    ax.text(*out, "concat\n1x1 conv\n(output)", ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round", "fc": "lightgreen"})
    ax.set_xlim(-0.6, out[0] + 0.6)
    ax.set_ylim(0.0, 3.0)
    ax.axis("off")
    reports._title(ax, title, synthetic)
    return reports.save_figure(fig, path, dpi=110)


def plot_alpha_beta(history: list[dict], path, synthetic: bool):
    """Per search epoch: the edge weights Psi (normalised beta, one line per edge) and the op
    weights softmax(alpha) averaged over the 14 edges (one line per operation)."""
    plt = reports._plt()
    history = sorted(history, key=lambda h: h["epoch"])
    epochs = [h["epoch"] for h in history]
    betas = np.asarray([h["betas"] for h in history])
    alphas = np.asarray([h["alphas"] for h in history]).mean(axis=1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for node, s in enumerate(node_slices()):
        for e in range(s.start, s.stop):
            a1.plot(epochs, betas[:, e], color=f"C{node}", lw=1, marker="." if len(epochs) < 30 else None,
                    label=f"node {node}" if e == s.start else None)
    a1.set_xlabel("search epoch")
    a1.set_ylabel("edge weight Psi")
    a1.legend(fontsize=7)
    reports._title(a1, "beta (edge normalisation)", synthetic)
    for o, name in enumerate(PRIMITIVES):
        a2.plot(epochs, alphas[:, o], label=name, marker="." if len(epochs) < 30 else None)
    a2.set_xlabel("search epoch")
    a2.set_ylabel("softmax(alpha), mean over edges")
    a2.legend(fontsize=7)
    reports._title(a2, "alpha (operations)", synthetic)
    return reports.save_figure(fig, path, dpi=110)


def plot_dice_per_stage(summary: dict, stage3: list[dict], path, synthetic: bool):
    """Per backbone: Stage I val Dice, the last Stage II search Dice (val_search), the best IAC
    and each baseline (val Dice, mean over runs)."""
    plt = reports._plt()
    backbones = [r["backbone"] for r in summary["stage1"]]
    kinds = ["stage I", "stage II (val_search)", "stage III IAC"] + sorted(
        {r["skip"] for r in stage3 if r["skip"] != IAC and r["status"] == OK})
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(backbones) + 2), 4))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        vals = []
        for b in backbones:
            entry = summary["improvement"].get(b, {})
            if kind == "stage I":
                vals.append(entry.get("baseline_dice"))
            elif kind == "stage II (val_search)":
                vals.append((summary["stage2_final"].get(b) or {}).get("search_dice"))
            else:
                vals.append((entry.get(IAC if kind == "stage III IAC" else kind) or {}).get("dice", {}).get("mean"))
        xs = np.arange(len(backbones)) + (k - (len(kinds) - 1) / 2) * width
        ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, label=kind)
    ax.set_xticks(np.arange(len(backbones)), backbones)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    reports._title(ax, "Dice per stage (val_dt unless noted)", synthetic)
    return reports.save_figure(fig, path, dpi=110)


def _best_model(unet, stage3: list[dict], best: dict):
    """The frozen Stage I U-Net (``unet``, of ``best``'s backbone) and the best IAC model (its best
    run's weights, of the Stage III rows), both on CPU."""
    runs = [r for r in stage3 if r["status"] == OK and r["skip"] == IAC
            and r["backbone"] == best["backbone"] and _key(r["genotype"]) == _key(best["genotype"])
            and r.get("checkpoint")]
    if not runs:
        return None, None
    run = max(runs, key=lambda r: r["val_dice"])
    model = build_skip_model(unet.build, IAC, {"genotype": best["genotype"], "implant": run.get("implant") or REPLACE})
    model.load_state_dict(torch.load(f"{run['checkpoint']}/{SKIPS_FILE}", map_location="cpu", weights_only=True))
    return unet.model().eval(), model.eval()


def plot_slices(data, unet, stage3: list[dict], best: dict, path, synthetic: bool, n: int = 4):
    """A few val_dt slices of ``data`` (those with the most foreground; 3D: the middle axial slice)
    with the ground truth, the Stage I U-Net's mask and the best IAC model's mask as contours."""
    base, iac = _best_model(unet, stage3, best)
    if base is None:
        return None
    x_all, y_all = data.images["val_dt"], data.labels["val_dt"]
    order = np.argsort(-y_all.reshape(len(y_all), -1).sum(1))[:n]
    x = torch.from_numpy(np.ascontiguousarray(x_all[order])).float()
    with torch.no_grad():
        pb, pi = (base(x) > 0).numpy(), (iac(x) > 0).numpy()
    y = y_all[order]
    plt = reports._plt()
    fig, axes = plt.subplots(1, len(order), figsize=(3.2 * len(order), 3.6), squeeze=False)

    def show(a):  # 3D: the middle slice along the last axis
        a = a[0]
        return a[..., a.shape[-1] // 2] if a.ndim == 3 else a

    for j, ax in enumerate(axes[0]):
        ax.imshow(show(x[j].numpy()), cmap="gray")
        for mask, color in ((y[j], "white"), (pb[j], "red"), (pi[j], "lime")):
            m = show(mask.astype(float))
            if m.any():
                ax.contour(m, levels=[0.5], colors=color, linewidths=1)
        ax.axis("off")
        reports._title(ax, f"val slice {int(order[j])}", synthetic)
    fig.suptitle("ground truth (white), Stage I U-Net (red), best IAC (green)", fontsize=9)
    return reports.save_figure(fig, path, dpi=110)
