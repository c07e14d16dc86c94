"""The report's figures (matplotlib, Agg): one function per figure, each writes one PNG atomically.

Conventions, so the figures read alike: findings are listed most frequent first (top / top-left),
head / medium / tail in the same three colours everywhere (colour-blind safe, Okabe-Ito), chance
level drawn in black or grey dashes, full finding names, axes that say what and in which unit.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..utils import atomic
from ..evaluate import calibration  # noqa: E402

GROUP_COLOURS = {"head": "#0072B2", "medium": "#E69F00", "tail": "#D55E00"}
OTHER = "#999999"
MISS = "#C00000"
FOUND = "#1A7F37"
FALSE_ALARM = "#8A5A00"
DPI = 90


def group_colour(group) -> str:
    return GROUP_COLOURS.get(group, OTHER)


def group_legend(groups: dict, classes) -> list:
    handles = []
    for g, colour in GROUP_COLOURS.items():
        n = sum(1 for c in classes if groups.get(c) == g)
        if n:
            handles.append(Patch(color=colour, label=f"{g} ({n} findings)"))
    return handles


def save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic.atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def class_distribution(classes, counts, groups: dict, path: Path, *, title: str) -> Path:
    """Horizontal bars of positive training images per finding on a log axis, most frequent on top."""
    counts = np.asarray(counts, dtype=np.float64)
    order = np.argsort(-counts, kind="stable")
    fig, ax = plt.subplots(figsize=(8.5, 0.26 * len(classes) + 1.4), layout="constrained")
    y = np.arange(len(order))
    shown = np.maximum(counts[order], 0.8)  # a zero count still gets a visible stub on the log axis
    ax.barh(y, shown, color=[group_colour(groups.get(classes[i])) for i in order])
    for yi, i in zip(y, order):
        ax.text(shown[yi] * 1.08, yi, f"{int(counts[i]):,}", va="center", fontsize=8)
    ax.set_yticks(y, [classes[i] for i in order], fontsize=9)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.7, shown.max() * 3)
    ax.set_xlabel("training images with the finding (log scale)")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.legend(handles=group_legend(groups, classes), loc="lower right", fontsize=8, title="group", title_fontsize=8)
    return save(fig, path)


def ap_auc_bars(rows: list[dict], path: Path, *, title: str, fold_word: str = "validation folds") -> Path:
    """AP and AUC per finding (rows in display order): bar = pooled value, range bar = per-fold min..max.

    rows: {class, group, n_train, ap, auc, prevalence, ap_folds: [...], auc_folds: [...]}.
    """
    n = len(rows)
    fig, (ax_ap, ax_auc) = plt.subplots(1, 2, figsize=(11, 0.27 * n + 1.9), sharey=True, layout="constrained")
    y = np.arange(n)
    colours = [group_colour(r["group"]) for r in rows]
    labels = [f"{r['class']}  (n={r['n_train']:,})" if r.get("n_train") is not None else r["class"] for r in rows]
    for ax, key, chance_label in ((ax_ap, "ap", "chance = prevalence"), (ax_auc, "auc", "chance = 0.5")):
        values = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=np.float64)
        ax.barh(y, np.nan_to_num(values), color=colours, alpha=0.9)
        spread_drawn = False
        for yi, r in zip(y, rows):
            folds = [v for v in r.get(f"{key}_folds") or [] if v is not None]
            if len(folds) > 1:
                ax.errorbar((min(folds) + max(folds)) / 2, yi, xerr=(max(folds) - min(folds)) / 2, fmt="none",
                            ecolor="black", elinewidth=1.2, capsize=3, label=None if spread_drawn else
                            f"range over the {fold_word}")
                spread_drawn = True
            if r[key] is None:
                ax.text(0.01, yi, "not scored (no positives)", va="center", fontsize=7, color="0.35")
        if key == "ap":
            prevalence = [r["prevalence"] if r["prevalence"] is not None else np.nan for r in rows]
            ax.scatter(prevalence, y, marker="|", s=160, color="black", linewidths=2, label=chance_label, zorder=3)
            ax.set_xlabel("average precision (AP)")
            ax.set_title("AP: 1 = every positive ranked first", fontsize=10)
        else:
            ax.axvline(0.5, color="black", linestyle="--", linewidth=1, label=chance_label)
            ax.set_xlabel("area under the ROC curve (AUC)")
            ax.set_title("AUC: 1 = perfect separation", fontsize=10)
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
    ax_ap.set_yticks(y, labels, fontsize=8.5)
    ax_ap.invert_yaxis()
    handles = {h.get_label(): h for ax in (ax_ap, ax_auc) for h in ax.get_legend_handles_labels()[0]}
    handles = list(handles.values())
    handles += group_legend({r["class"]: r["group"] for r in rows}, [r["class"] for r in rows])
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8.5)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def pr_curves(y_true, y_prob, classes, groups: dict, order, ap: dict, path: Path, *, title: str, ncols: int = 6) -> Path:
    """Small multiples: precision-recall curve per finding, AP in the title, prevalence dashed."""
    from sklearn.metrics import precision_recall_curve

    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    nrows = int(np.ceil(len(order) / ncols))
    height = 2.4 * nrows + 1.6
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, height), sharex=True, sharey=True, squeeze=False)
    # Fixed margins: constrained layout over ~30 axes costs seconds per figure.
    fig.subplots_adjust(left=0.055, right=0.98, top=1 - 1.0 / height, bottom=0.9 / height, hspace=0.8, wspace=0.14)
    for k, ax in enumerate(axes.flat):
        if k >= len(order):
            ax.axis("off")
            continue
        j = order[k]
        name = classes[j]
        positives = int(y_true[:, j].sum())
        prevalence = positives / len(y_true) if len(y_true) else 0.0
        if 0 < positives < len(y_true):
            precision, recall, _ = precision_recall_curve(y_true[:, j], y_prob[:, j])
            ax.step(recall, precision, where="post", color=group_colour(groups.get(name)), linewidth=1.6)
            ax.axhline(prevalence, color="0.4", linestyle="--", linewidth=0.9)
            label = f"AP {ap[name]:.2f}" if ap.get(name) is not None else ""
        else:
            ax.text(0.5, 0.5, "not scored:\nno positive images" if positives == 0 else "not scored:\nno negatives",
                    ha="center", va="center", fontsize=8, color="0.35")
            label = ""
        ax.set_title("\n".join(textwrap.wrap(name, 22)[:2]) + (f"\n{label}, n+={positives}" if label else ""),
                     fontsize=8, color=group_colour(groups.get(name)))
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
        if k % ncols == 0:
            ax.set_ylabel("precision", fontsize=8)
        if k >= len(order) - ncols:
            ax.set_xlabel("recall (sensitivity)", fontsize=8)
            ax.xaxis.set_tick_params(labelbottom=True)
    handles = group_legend(groups, [classes[j] for j in order])
    handles.append(plt.Line2D([], [], color="0.4", linestyle="--", label="chance (prevalence)"))
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def reliability_diagram(y_true, y_prob, groups_of_columns, path: Path, *, title: str, n_bins: int = 10,
                        min_count: int = 10) -> tuple[Path, dict]:
    """Observed frequency vs predicted probability (all findings pooled, and per group), with the histogram.

    Bins holding fewer than `min_count` predictions are not drawn (their frequency is noise); ECE counts them.
    """
    y_true, y_prob = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    ece = calibration.multilabel_ece(y_true, y_prob, n_bins)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.4, 7.2), height_ratios=[3, 1.2], sharex=True, layout="constrained")
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfectly calibrated")
    bins = calibration.reliability(y_true, y_prob, n_bins)
    used = bins["count"] >= min_count
    ax.plot(bins["confidence"][used], bins["frequency"][used], marker="o", color="black", linewidth=2,
            label=f"all findings (ECE {ece['pooled']:.3f})")
    group_ece = {}
    for g, colour in GROUP_COLOURS.items():
        cols = [j for j, grp in enumerate(groups_of_columns) if grp == g]
        if not cols:
            continue
        b = calibration.reliability(y_true[:, cols], y_prob[:, cols], n_bins)
        u = b["count"] >= min_count
        group_ece[g] = calibration.expected_calibration_error(y_true[:, cols], y_prob[:, cols], n_bins)
        ax.plot(b["confidence"][u], b["frequency"][u], marker=".", color=colour, linewidth=1.2,
                label=f"{g} findings (ECE {group_ece[g]:.3f})")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency of the finding")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(y_prob.ravel(), bins=bins["edges"], color="0.5")
    hist.set_yscale("log")
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("predictions\n(log scale)")
    hist.grid(alpha=0.3)
    ece["groups"] = group_ece
    return save(fig, path), ece


def learning_curves(histories: list[dict], path: Path, *, title: str, loss_name: str, baseline: float | None) -> Path:
    """Training loss and validation mAP (solid) / tail mAP (dashed) per fold; the kept epoch starred.

    histories: {fold, frame (history.csv), selected_epoch}.
    """
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    colours = plt.get_cmap("tab10").colors
    for h in histories:
        frame, colour, fold = h["frame"], colours[h["fold"] % 10], h["fold"]
        if "loss" in frame:
            ax_loss.plot(frame["epoch"], frame["loss"], color=colour, marker=".", label=f"fold {fold}")
        if "val_mAP" in frame:
            ax_map.plot(frame["epoch"], frame["val_mAP"], color=colour, marker=".", label=f"fold {fold}: all findings")
        if "val_tail_mAP" in frame:
            ax_map.plot(frame["epoch"], frame["val_tail_mAP"], color=colour, linestyle="--",
                        label=f"fold {fold}: tail findings")
        kept = h.get("selected_epoch")
        if kept is not None and "val_mAP" in frame and (frame["epoch"] == kept).any():
            ax_map.scatter([kept], frame.loc[frame["epoch"] == kept, "val_mAP"], marker="*", s=160, color=colour,
                           edgecolor="black", zorder=4)
    if baseline is not None:
        ax_map.axhline(baseline, color="0.4", linestyle=":", label="chance (prevalence)")
    ax_map.scatter([], [], marker="*", s=120, color="white", edgecolor="black", label="model kept (best epoch)")
    ax_loss.set_title(f"training loss ({loss_name})", fontsize=10)
    ax_map.set_title("validation mAP (mean average precision)", fontsize=10)
    for ax in (ax_loss, ax_map):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.set_ylabel("loss")
    ax_map.set_ylabel("mAP")
    ax_loss.legend(fontsize=8)
    ax_map.legend(fontsize=7.5, loc="best")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def gallery(items: list[dict], classes, path: Path, *, title: str, threshold: float, ncols: int = 4,
            max_listed: int = 5) -> Path:
    """Validation radiographs with their findings: found in green, missed in red, false alarms in brown.

    items: {image (2-D uint8 array), caption, truth (bool [C]), prob (float [C])}.
    """
    nrows = int(np.ceil(len(items) / ncols))
    fig = plt.figure(figsize=(3.3 * ncols, 4.75 * nrows + 0.6))
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3.0, 1.55] * nrows, hspace=0.12, wspace=0.08,
                            left=0.02, right=0.98, top=1 - 0.8 / fig.get_figheight(), bottom=0.01)
    for k, item in enumerate(items):
        r, c = divmod(k, ncols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(item["image"], cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(item["caption"], fontsize=7.5, color="0.3")
        text_ax = fig.add_subplot(grid[2 * r + 1, c])
        text_ax.axis("off")
        for i, (text, colour) in enumerate(finding_lines(item, classes, threshold, max_listed)):
            text_ax.text(0.02, 1.0 - 0.125 * i, text, transform=text_ax.transAxes, fontsize=8, color=colour, va="top",
                         fontweight="bold" if colour == MISS else "normal")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def finding_lines(item: dict, classes, threshold: float, max_listed: int = 5) -> list[tuple[str, str]]:
    """(text, colour) lines under a gallery image: labelled findings (found / MISSED), then false alarms."""
    truth, prob = np.asarray(item["truth"], bool), np.asarray(item["prob"])
    lines = []
    true_idx = sorted(np.flatnonzero(truth), key=lambda j: -prob[j])
    for j in true_idx[:max_listed]:
        found = prob[j] >= threshold
        lines.append((f"{'found' if found else 'MISSED'}: {classes[j]} ({prob[j]:.2f})", FOUND if found else MISS))
    if len(true_idx) > max_listed:
        missed = int(sum(prob[j] < threshold for j in true_idx[max_listed:]))
        lines.append((f"+{len(true_idx) - max_listed} more labelled ({missed} missed)", MISS if missed else FOUND))
    if not true_idx:
        lines.append(("no finding labelled", "0.2"))
    alarms = sorted((j for j in np.flatnonzero(~truth) if prob[j] >= threshold), key=lambda j: -prob[j])
    for j in alarms[:2]:
        lines.append((f"false alarm: {classes[j]} ({prob[j]:.2f})", FALSE_ALARM))
    if len(alarms) > 2:
        lines.append((f"+{len(alarms) - 2} more false alarms", FALSE_ALARM))
    return lines
