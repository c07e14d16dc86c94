"""The report's single-label parts: the task's scores, the confusion matrix and the per-class precision / recall /
F1 / AUC table (seed 000's Table 5 layout), as HTML rows whose numbers name their source (data-metric paths into
metrics.json, as the rest of the page)."""

from __future__ import annotations

import html

import numpy as np

SCORES = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"),
          ("mcc", "MCC"), ("auc_ovo", "AUC one-vs-one (macro)"), ("auc_ovr", "AUC one-vs-rest (macro)"),
          ("kappa", "quadratic-weighted kappa"), ("kendall_tau", "Kendall tau"))


def _cell(value, path: str, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        text = "n/a"
    elif isinstance(value, (int, np.integer)):
        text = f"{value:,}"
    else:
        text = f"{value:.{digits}f}"
    return f'<td data-metric="{html.escape(path)}">{text}</td>'


def sections(result: dict, prefix: str, folds: dict | None = None) -> list[str]:
    """HTML: the scores (with the per-fold mean +- SD and median where a run has them), the confusion matrix,
    the per-class table."""
    ordinal = result.get("task") == "ordinal"
    parts = ['<h2 id="single_label">Single-label scores</h2>',
             f"<p>Task {html.escape(str(result.get('task')))}: one class per image, read from the probabilities by "
             f"<b>{html.escape(str(result.get('decision')))}</b>"
             + (" (ordinal grades; the table below compares the decision rules)" if ordinal else "") + ".</p>",
             '<table class="cards"><tr><th>score</th><th>value</th>'
             + ("<th>per fold: mean</th><th>SD</th><th>median</th>" if folds else "") + "</tr>"]
    for key, title in SCORES:
        if result.get(key) is None and key in ("kappa", "kendall_tau") and not ordinal:
            continue
        row = f'<tr><td class="name">{title}</td>' + _cell(result.get(key), prefix + key)
        if folds:
            stats = folds.get(key) or {}
            row += "".join(_cell(stats.get(s), f"folds/{key}/{s}") for s in ("mean", "std", "median"))
        parts.append(row + "</tr>")
    parts.append("</table>")
    if ordinal and result.get("by_decision"):
        parts += ["<p>The same probabilities read by each decision rule (argmax; median = CORN's rule; expected = the "
                  "rounded expected grade, which often raises kappa):</p>", "<table><tr><th>decision</th>"
                  + "".join(f"<th>{t}</th>" for t in ("kappa", "MCC", "Kendall tau", "accuracy")) + "</tr>"]
        for rule, s in result["by_decision"].items():
            parts.append(f'<tr><td class="name">{rule}</td>' + "".join(
                _cell(s.get(k), f"{prefix}by_decision/{rule}/{k}") for k in ("kappa", "mcc", "kendall_tau", "accuracy"))
                + "</tr>")
        parts.append("</table>")
    classes = [r["class"] for r in result["per_class"]]
    cm = result["confusion"]
    parts += ['<h2 id="confusion">Confusion matrix</h2>',
              "<p>Rows: the true class; columns: the predicted class (counts over the scored images). The diagonal "
              "holds the correct predictions.</p>", '<table id="confusion_matrix"><tr><th>true \\ predicted</th>'
              + "".join(f"<th>{html.escape(str(c))}</th>" for c in classes) + "<th>images</th></tr>"]
    for i, (name, row) in enumerate(zip(classes, cm)):
        parts.append(f'<tr><td class="name">{html.escape(str(name))}</td>'
                     + "".join(_cell(int(v), f"{prefix}confusion/{i}/{j}") for j, v in enumerate(row))
                     + f"<td>{int(sum(row)):,}</td></tr>")
    parts.append("</table>")
    parts += ['<h2 id="per_class_single">Per class: precision, recall, F1, AUC</h2>',
              "<p>Precision: share of images predicted as the class that are of it; recall: share of the class's images "
              "predicted as it; AUC one-vs-rest from the class's probability.</p>",
              '<table id="per_class_table"><tr><th>class</th><th>images</th><th>predicted</th><th>precision</th>'
              "<th>recall</th><th>F1</th><th>AUC</th><th>AP</th></tr>"]
    for r in result["per_class"]:
        key = f"{prefix}per_class/{r['class']}"
        parts.append(f'<tr><td class="name">{html.escape(str(r["class"]))}</td>' + _cell(r["n_pos"], key + "/n_pos")
                     + _cell(r["n_pred"], key + "/n_pred") + _cell(r["precision"], key + "/precision")
                     + _cell(r["recall"], key + "/recall") + _cell(r["f1"], key + "/f1") + _cell(r["auc"], key + "/auc")
                     + _cell(r["ap"], key + "/ap") + "</tr>")
    parts.append("</table>")
    return parts
