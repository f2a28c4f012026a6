"""The model analysis report a person reads: the blessing decision first, then the evidence.

One self-contained HTML file (components/common/html_report.py: inline CSS, matplotlib PNGs
embedded as data URIs, no scripts or CDNs) so it renders in the Kubeflow UI's HTML viewer and
offline. Plots: ROC and calibration (model against baseline; the model's reliability before and
after calibration), per-slice recall and false-positive rate, fairness gaps, and feature
dependence from the counterfactual flips.
"""

from __future__ import annotations

from components.common.artifacts.evaluation import SCALAR_METRICS
from components.common.artifacts.model import privacy_of
from components.common.html_report import (
    e,
    figure,
    grouped_barh,
    img,
    legend_outside,
    n,
    num,
    write_page,
)
from components.evaluate.blessing import LOWER_IS_BETTER

MODEL_COLOR, BASELINE_COLOR, RAW_COLOR = "#1f77b4", "#7f7f7f", "#ff7f0e"
RECALL_COLOR, FPR_COLOR = "#2ca02c", "#d62728"
MAX_SLICE_BARS = 20
MAX_SLICE_ROWS = 100


def roc_plot(overall: dict, baseline: dict | None) -> str:
    fig = figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="#999", lw=1)
    for name, metrics, color in (("model", overall, MODEL_COLOR),
                                 ("baseline", baseline, BASELINE_COLOR)):
        if not metrics or not metrics.get("roc_curve"):
            continue
        roc = metrics["roc_curve"]
        ax.plot(roc["fpr"], roc["tpr"], color=color, lw=2,
                label=f"{name} (AUC {num(metrics['auc'], '.3f')})")
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]["matrix"]
        if tp + fn and tn + fp:
            ax.plot([fp / (fp + tn)], [tp / (tp + fn)], "o", color=color, ms=6)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)",
           title="ROC (dot: decision threshold)", xlim=(0, 1), ylim=(0, 1.01))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=9)
    return img(fig, "ROC curve")


def calibration_plot(overall: dict, baseline: dict | None, raw: dict | None = None) -> str:
    """Reliability curves: the model's `probability`, its score before calibration (`raw`,
    when the model has one) and the baseline's."""
    fig = figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="#999", lw=1, label="perfectly calibrated")
    for name, metrics, color, style in (
            ("model before calibration", raw, RAW_COLOR, "s--"),
            ("model" if raw is None else "model (calibrated)", overall, MODEL_COLOR, "o-"),
            ("baseline", baseline, BASELINE_COLOR, "o-")):
        if not metrics:
            continue
        cal = metrics["calibration"]
        ax.plot(cal["mean_predicted"], cal["observed_rate"], style, color=color, lw=1.5, ms=4,
                label=f"{name} (ECE {num(cal['ece'], '.3f')})")
    ax.set(xlabel="mean predicted probability (bin)", ylabel="observed positive rate",
           title=f"Calibration ({overall['calibration']['bins']} bins)", xlim=(0, 1),
           ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=9)
    return img(fig, "calibration curve")


def slice_plot(feature: str, rows: list[dict]) -> str:
    shown = [r for r in rows if r["eligible"]][:MAX_SLICE_BARS]
    if not shown:
        return ""
    fig = figure(7.5, 0.9 + 0.36 * len(shown))
    ax = fig.add_subplot()
    grouped_barh(ax, [f"{r['value'][:34]} (n={r['count']})" for r in shown],
                 [("recall", [r["recall"] for r in shown], RECALL_COLOR),
                  ("false-positive rate", [r["fpr"] for r in shown], FPR_COLOR)])
    ax.set_xlim(0, 1.08)
    ax.set_title(f"{feature}: recall and false-positive rate per slice", parse_math=False)
    return img(fig, f"{feature} slices")


def fairness_plot(slices: dict) -> str:
    names = [name for name, s in slices.items()
             if any(s["fairness"][m]["gap"] is not None for m in ("recall", "fpr"))]
    if not names:
        return ""
    fig = figure(6.0, 1.0 + 0.6 * len(names))
    ax = fig.add_subplot()
    grouped_barh(ax, names, [(label, [slices[name]["fairness"][metric]["gap"] for name in names],
                              color)
                             for metric, color, label in (("recall", RECALL_COLOR, "recall gap"),
                                                          ("fpr", FPR_COLOR, "FPR gap"))])
    ax.set(xlim=(0, 1.08), xlabel="max - min across eligible slices", title="Fairness gaps")
    return img(fig, "fairness gaps")


def dependence_plot(features: dict) -> str:
    names = [name for name, s in features.items() if s["mean_abs_delta"] is not None]
    if not names:
        return ""
    names.sort(key=lambda name: -features[name]["mean_abs_delta"])
    fig = figure(7.0, 1.0 + 0.35 * len(names))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [features[name]["mean_abs_delta"] for name in names],
            color=MODEL_COLOR, label="mean |Δp|")
    ax.plot([features[name]["max_abs_delta"] for name in names], range(len(names)), "k|",
            ms=12, label="max |Δp|")
    ax.set_yticks(list(range(len(names))), names, parse_math=False)
    ax.invert_yaxis()
    ax.set(xlabel="|change in probability| when only this feature changes",
           title="Feature dependence (counterfactual flips)", xlim=(0, 1))
    legend_outside(ax)
    return img(fig, "feature dependence")


def _blessing_section(blessing: dict) -> list[str]:
    out = []
    if blessing["reasons"]:
        out.append("<table><tr><th>check</th><th>kind</th><th>value</th><th>bound</th>"
                   "<th>result</th></tr>")
        for r in blessing["reasons"]:
            css, word = ("ok", "passed") if r["passed"] else ("bad", "failed")
            note = f" <span class='muted'>{e(r['note'])}</span>" if r.get("note") else ""
            out.append(f"<tr><td>{e(r['check'])}</td><td>{e(r['kind'])}</td>"
                       f"<td class='num'>{n(r['value'])}</td>"
                       f"<td class='num'>{n(r['threshold'])}</td>"
                       f"<td class='{css}'>{word}{note}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='muted'>No thresholds or baseline tolerances configured.</p>")
    if blessing.get("note"):
        out.append(f"<p class='muted'>{e(blessing['note'])}</p>")
    return out


def _overall_table(overall: dict, baseline: dict | None) -> str:
    head = "<tr><th>metric</th><th>model</th>"
    if baseline:
        head += "<th>baseline</th><th>change</th>"
    rows = [head + "</tr>"]
    for name in SCALAR_METRICS:
        value = overall.get(name)
        row = f"<tr><td>{e(name)}</td><td class='num'>{n(value)}</td>"
        if baseline:
            base = baseline.get(name)
            change = ""
            if value is not None and base is not None:
                delta = value - base
                better = delta <= 0 if name in LOWER_IS_BETTER else delta >= 0
                change = f"<span class='{'ok' if better else 'bad'}'>{delta:+.4f}</span>"
            row += f"<td class='num'>{n(base)}</td><td class='num'>{change}</td>"
        rows.append(row + "</tr>")
    extra = (f"<tr><td>examples</td><td class='num'>{overall['count']}</td></tr>"
             f"<tr><td>positive rate</td><td class='num'>{n(overall['positive_rate'])}</td></tr>"
             f"<tr><td>predicted positive rate</td>"
             f"<td class='num'>{n(overall['predicted_positive_rate'])}</td></tr>")
    return "<table>" + "".join(rows) + extra + "</table>"


def _calibration_table(calibration: dict) -> str:
    """Before (the raw score) and after calibration, with the actual positive rate."""
    before, after = calibration["before"], calibration["after"]
    rows = [("ECE", "ece", ".4f"), ("Brier score", "brier", ".4f"),
            ("log loss", "log_loss", ".4f"), ("AUC", "auc", ".4f"),
            ("mean probability", "mean_probability", ".1%"),
            ("decision threshold", "decision_threshold", ".4f"),
            ("predicted positive rate", "predicted_positive_rate", ".1%")]
    out = ["<table><tr><th></th><th>before calibration</th><th>calibrated</th></tr>"]
    for label, key, spec in rows:
        out.append(f"<tr><td>{e(label)}</td><td class='num'>{n(before.get(key), spec)}</td>"
                   f"<td class='num'>{n(after.get(key), spec)}</td></tr>")
    out.append(f"<tr><td>actual positive rate</td>"
               f"<td class='num' colspan='2'>{n(after['positive_rate'], '.1%')}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _confusion_table(overall: dict, class_names: tuple[str, str]) -> str:
    (tn, fp), (fn, tp) = overall["confusion_matrix"]["matrix"]
    neg, pos = (e(c) for c in class_names)
    return ("<table><tr><th>true \\ predicted</th>"
            f"<th>{neg}</th><th>{pos}</th></tr>"
            f"<tr><th>{neg}</th><td class='num'>{tn}</td><td class='num'>{fp}</td></tr>"
            f"<tr><th>{pos}</th><td class='num'>{fn}</td><td class='num'>{tp}</td></tr>"
            "</table>")


def _slice_table(rows: list[dict]) -> str:
    out = ["<table><tr><th>value</th><th>count</th><th>positives</th><th>AUC</th>"
           "<th>recall</th><th>FPR</th><th>precision</th><th>compared</th></tr>"]
    for r in rows[:MAX_SLICE_ROWS]:
        compared = "yes" if r["eligible"] else "<span class='muted'>too small</span>"
        out.append(f"<tr><td>{e(r['value'])}</td><td class='num'>{r['count']}</td>"
                   f"<td class='num'>{r['positives']}</td>"
                   f"<td class='num'>{n(r['auc'], '.3f')}</td>"
                   f"<td class='num'>{n(r['recall'], '.3f')}</td>"
                   f"<td class='num'>{n(r['fpr'], '.3f')}</td>"
                   f"<td class='num'>{n(r['precision'], '.3f')}</td><td>{compared}</td></tr>")
    out.append("</table>")
    if len(rows) > MAX_SLICE_ROWS:
        out.append(f"<p class='muted'>{len(rows) - MAX_SLICE_ROWS} smaller slices not shown; "
                   "all are in metrics.json.</p>")
    return "".join(out)


def _fairness_table(slices: dict) -> str:
    out = ["<table><tr><th>feature</th><th>metric</th><th>gap</th><th>highest</th>"
           "<th>lowest</th><th>slices compared</th></tr>"]
    for feature, entry in slices.items():
        for metric, gap in entry["fairness"].items():
            def side(s):
                return f"{e(s['slice'])} ({num(s['value'], '.3f')}, n={s['count']})" if s else ""
            note = f" <span class='muted'>{e(gap['note'])}</span>" if gap.get("note") else ""
            out.append(f"<tr><td>{e(feature)}</td><td>{e(metric)}</td>"
                       f"<td class='num'>{n(gap['gap'], '.3f')}{note}</td>"
                       f"<td>{side(gap['max'])}</td>"
                       f"<td>{side(gap['min'])}</td>"
                       f"<td class='num'>{gap['slices_compared']}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _dependence_table(features: dict) -> str:
    out = ["<table><tr><th>feature</th><th>mean |Δp|</th><th>max |Δp|</th><th>mean Δp</th>"
           "<th>decisions flipped</th><th>counterfactuals</th><th>values tried</th></tr>"]
    order = sorted(features, key=lambda name: -(features[name]["mean_abs_delta"] or 0.0))
    for name in order:
        s = features[name]
        tried = ", ".join(repr(v[:30]) if v else "(blank)" for v in s["values_tried"])
        out.append(f"<tr><td>{e(name)}</td><td class='num'>{n(s['mean_abs_delta'])}</td>"
                   f"<td class='num'>{n(s['max_abs_delta'])}</td>"
                   f"<td class='num'>{n(s.get('mean_delta'))}</td>"
                   f"<td class='num'>{n(s['flip_rate'], '.1%')}</td>"
                   f"<td class='num'>{s['counterfactuals']}</td><td>{e(tried)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _privacy_line(privacy: dict | None) -> str:
    """One paragraph: the privacy budget of a model trained with DP-SGD, else that it was not."""
    if privacy is None:
        return ("<p class='muted'>Trained without differential privacy (no privacy budget).</p>")
    return (f"<p id='privacy'><b>Differentially private training</b> "
            f"({e(privacy.get('mechanism'))}, {e(privacy.get('sampling'))} sampling): "
            f"<b>&epsilon; = {num(privacy.get('epsilon'), '.3g')}</b> at &delta; = "
            f"{num(privacy.get('target_delta'), '.3g')} after {n(privacy.get('steps'))} steps "
            f"(noise multiplier {num(privacy.get('noise_multiplier'), '.3g')}, clip "
            f"{num(privacy.get('l2_clip'), '.3g')}, sampling rate "
            f"{num(privacy.get('sampling_rate'), '.3g')}). It bounds what the model reveals "
            "about any one training row; the eval rows scored here and the calibration "
            "holdout are not covered.</p>")


def write_report(path: str, metrics: dict, blessing: dict, config) -> None:
    overall = metrics["overall"]
    baseline_entry = metrics.get("baseline")
    baseline = baseline_entry["overall"] if baseline_entry else None
    class_names = (config.label.negative[0], config.label.positive[0])
    model = metrics["model"]
    status = ("<span class='ok'>BLESSED</span>" if blessing["blessed"]
              else "<span class='bad'>NOT BLESSED</span>")
    base = blessing["baseline"]
    if base.get("model_id"):
        version = f"version {base['version']}, " if base.get("version") is not None else ""
        baseline_text = f"{version}model {e(base['model_id'])} ({e(base['uri'])})"
    else:
        baseline_text = e(base.get("note") or "none")
    training = model.get("training") or {}
    trained_on = training.get("dataset_version")
    policy = (training.get("decision_threshold") or {}).get("policy")
    privacy = privacy_of(training)
    threshold_source = metrics.get("decision_threshold_source") or "config"
    if threshold_source == "model" and policy:
        threshold_source = f"the model's, policy {policy}"
    out = [
        f"<h1>Model evaluation: {e(config.name)} model {e(model['model_id'])}</h1>",
        f"<p>{status}. Evaluated on {metrics['eval_examples']} eval examples of "
        f"{e(metrics['dataset_version'])}"
        + (f" (trained on {e(trained_on)})" if trained_on else "")
        + f"; decision threshold {num(metrics['decision_threshold'], '.4g')} "
        f"({e(threshold_source)}). Baseline: {baseline_text}.</p>",
        _privacy_line(privacy),
        "<h2>Blessing</h2>",
        *_blessing_section(blessing),
        "<h2>Overall metrics</h2>",
        "<div class='plots'>", _overall_table(overall, baseline),
        _confusion_table(overall, class_names), "</div>",
    ]
    for note in overall["notes"]:
        out.append(f"<p class='muted'>{e(note)}</p>")
    calibration = metrics.get("calibration")
    raw = calibration["before"] if calibration else None
    out += ["<div class='plots'>", roc_plot(overall, baseline),
            calibration_plot(overall, baseline, raw), "</div>"]
    if calibration:
        out += ["<h2>Calibration</h2>",
                "<p class='muted'>The model's probability is calibrated inside the SavedModel; "
                "before calibration is its raw score (raw_probability), decided at the config's "
                "fixed threshold. The mean probability is the positive rate the probabilities "
                "promise; the actual rate is the eval set's. The calibration is monotonic, so "
                "it does not reorder the scores: the AUC stays (an isotonic step can tie a "
                "few).</p>",
                "<div class='plots'>", _calibration_table(calibration), "</div>"]

    slices = metrics["slices"]
    if slices:
        min_size = next(iter(slices.values()))["min_slice_size"]
        out.append(f"<h2>Fairness gaps</h2><p class='muted'>Largest difference in recall and in "
                   f"false-positive rate between slices with at least {min_size} examples.</p>")
        out.append(_fairness_table(slices))
        out.append(f"<div class='plots'>{fairness_plot(slices)}</div>")
        out.append("<h2>Slices</h2>")
        for feature, entry in slices.items():
            out.append(f"<div class='section' id='slice-{e(feature)}'><h3>{e(feature)}</h3>")
            out.append(f"<div class='plots'>{slice_plot(feature, entry['slices'])}</div>")
            out.append(_slice_table(entry["slices"]))
            out.append("</div>")

    dependence = metrics["feature_dependence"]
    out.append("<h2>Feature dependence</h2>")
    out.append(f"<p class='muted'>Each of {dependence['sample_size']} sampled eval examples "
               f"(seed {dependence['seed']}) re-scored with one feature replaced by each of its "
               f"{dependence['replacements']} most common values in the sample, or blank; "
               "a decision flips when the prediction crosses the threshold.</p>")
    for note in dependence["notes"]:
        out.append(f"<p class='bad'>{e(note)}</p>")
    if dependence["features"]:
        out.append(f"<div class='plots'>{dependence_plot(dependence['features'])}</div>")
        out.append(_dependence_table(dependence["features"]))
    if dependence.get("signature_max_abs_diff") is not None:
        out.append(f"<p class='muted'>serving_default vs serving_tf_example on the sample: max "
                   f"|Δp| {dependence['signature_max_abs_diff']:.2g}.</p>")
    out.append(f"<p class='muted'>code {e(metrics['code_version'])}, "
               f"{e(metrics['created_at'])}</p>")
    write_page(path, f"Model evaluation: {model['model_id']}", out)
