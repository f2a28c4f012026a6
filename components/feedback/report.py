"""The feedback report: one self-contained HTML page (components/common/html_report.py)."""

from __future__ import annotations

from components.common.html_report import e, figure, img, n, write_page

COLORS = ("#1a73e8", "#e8710a", "#188038", "#a142f4", "#d93025")


def _interval(value: dict | None, spec: str = ".3f") -> str:
    if not value or value.get("value") is None:
        return n(None)
    ci = value.get("ci")
    text = n(value["value"], spec)
    if ci:
        text += f" <span class='muted'>[{n(ci[0], spec)}, {n(ci[1], spec)}]</span>"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _decision(result: dict) -> str:
    decision = result["decision"]
    verdict = ("<span class='bad'>retrain: true</span>" if decision["retrain"]
               else "<span class='ok'>retrain: false</span>")
    reasons = "".join(f"<li>{e(r)}</li>" for r in decision["reasons"]) or \
        "<li class='muted'>no check asks for it</li>"
    checks = _table(["check", "result", "detail"],
                    [[e(c["check"]), e(c["result"]), e(c.get("detail", ""))]
                     for c in decision["checks"]])
    flagged = " flagged" if decision["retrain"] else ""
    return (f"<div class='section{flagged}'><h2>Decision: {verdict}</h2><ul>{reasons}</ul>"
            f"{checks}</div>")


def _join(result: dict) -> str:
    join, labels, window = result["join"], result["labels"], result["window"]
    rows = [
        ["predictions read", n(join["records"])],
        ["in the window", n(join["in_window"])],
        ["before the window (keys only)", n(join["before_window"])],
        ["scored (prediction + label)", n(join["matched"])],
        ["pending (no label yet)", n(join["pending"])],
        ["duplicate predictions (same key again)", n(join["duplicate_predictions"])],
        ["without a key", n(join["unkeyed"])],
        ["batch followers (key of the first instance)", n(join["batch_followers"])],
        ["malformed log lines", n(join["malformed_lines"])],
    ]
    label_rows = [
        ["label rows", n(labels["rows"])], ["ids with a label", n(labels["ids"])],
        ["scored", n(labels["scored"])],
        ["late (prediction before the window)", n(labels["late"])],
        ["unknown id (never predicted)", n(labels["unknown"])],
        ["duplicates (same id, same label)", n(labels["duplicates"])],
        ["conflicting (same id, other label; the last counts)", n(labels["conflicting"])],
        ["blank (not known yet)", n(labels["blank"])], ["invalid value", n(labels["invalid"])],
        ["no id", n(labels["missing_id"])],
    ]
    span = f"{window['first'] or '-'} to {window['last'] or '-'}"
    since = f" (since {window['since']})" if window["since"] else ""
    bad = "".join(f"<li>{e(x)}</li>" for x in join.get("malformed_examples", []))
    return (f"<h2>Predictions meet labels</h2><p>Window: {e(span)}{e(since)}</p>"
            f"<div class='plots'>{_table(['predictions', 'count'], rows)}"
            f"{_table(['labels', 'count'], label_rows)}</div>"
            + (f"<p class='muted'>Malformed lines:</p><ul class='muted'>{bad}</ul>" if bad
               else ""))


def _versions(result: dict) -> str:
    versions = result["versions"]
    if not versions:
        return "<h2>Live metrics</h2><p>No predictions in the window.</p>"
    rows = []
    for version, m in versions.items():
        if not m.get("n"):
            rows.append([e(version), e(", ".join(m.get("labels", [])) or "-"),
                         n(m["predictions"]), n(0)] + [n(None)] * 7)
            continue
        rows.append([
            e(version), e(", ".join(m.get("labels", [])) or "-"), n(m["predictions"]),
            n(m["n"]), _interval(m["positive_rate"]), _interval(m["auc"]),
            _interval(m["precision"]), _interval(m["recall"]), n(m["f1"], ".3f"),
            n(m["calibration"]["ece"], ".3f"),
            _interval(m["calibration"]["calibration_in_the_large"], "+.3f"),
        ])
    table = _table(["version", "labels", "predictions", "scored", "positive rate", "AUC",
                    "precision", "recall", "F1", "ECE", "mean predicted - observed"], rows)
    thresholds = ", ".join(f"version {v}: {m['threshold']} ({m['threshold_source']})"
                           for v, m in versions.items() if m.get("n"))
    return (f"<h2>Live metrics per version</h2><p class='muted'>95% intervals: DeLong for "
            f"AUC, Wilson for rates. Decision thresholds (where the log has no decision): "
            f"{e(thresholds or '-')}.</p>{table}{_calibration_plot(versions)}")


def _calibration_plot(versions: dict) -> str:
    measured = {v: m for v, m in versions.items() if m.get("n")}
    if not measured:
        return ""
    fig = figure(5.0, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect")
    for color, (version, m) in zip(COLORS * 4, measured.items(), strict=False):
        bins = m["calibration"]["bins"]
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins],
                marker="o", color=color, label=f"version {version}")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return "<h3>Calibration</h3>" + img(fig, "reliability diagram per version")


def _ab(result: dict) -> str:
    ab = result["ab"]
    if ab is None:
        return "<h2>A/B</h2><p>No canary deployed: nothing to compare.</p>"
    flagged = " flagged" if ab["significant"] else ""
    rows = [["stable", e(ab["stable"]), n(ab["labelled"]["stable"])],
            ["canary", e(ab["canary"]), n(ab["labelled"]["canary"])]]
    detail = ""
    if ab["difference"] is not None:
        detail = (f"<p>AUC difference (canary - stable): {n(ab['difference'], '+.4f')} "
                  f"[{n(ab['ci'][0], '+.4f')}, {n(ab['ci'][1], '+.4f')}], z = "
                  f"{n(ab['z'], '.2f')}, p = {n(ab['p_value'], '.3g')} (alpha {ab['alpha']})"
                  "</p>")
    needed = ab.get("labelled_still_needed")
    plan = (f"<p class='muted'>Labelled predictions for a conclusive test of a difference of "
            f"{n(ab['planning']['effect'], '.3f')} (power {ab['power']}): "
            f"{n(ab['labelled_needed_total'])} in all, {n(needed)} more.</p>")
    change = result.get("deployment") or {}
    action = (f"<p>Deployment: {e(change.get('action'))}"
              f"{' - ' + e(change['reason']) if change.get('reason') else ''}</p>")
    return (f"<div class='section{flagged}'><h2>A/B verdict</h2><p><b>{e(ab['verdict'])}</b></p>"
            f"{_table(['label', 'version', 'scored'], rows)}{detail}{plan}{action}</div>")


def _drift(result: dict) -> str:
    drift = result["drift"]
    if "skipped" in drift:
        return f"<h2>Serving vs training data</h2><p>Not measured: {e(drift['skipped'])}</p>"
    rows = []
    for feature in drift["features"]:
        skew = drift["skew"].get(feature, {})
        moved = drift["drift"].get(feature, {})
        verdict = "<span class='bad'>drift</span>" if moved.get("above") else \
            "<span class='ok'>ok</span>"
        rows.append([e(feature), e(moved.get("type", skew.get("type", "-"))),
                     n(skew.get("value")), n(skew.get("threshold")), n(moved.get("value")),
                     n(moved.get("threshold")), verdict])
    anomalies = "".join(f"<li>{e(a['feature'])}: {e(a['short'])} - {e(a['description'])}</li>"
                        for a in drift["serving_anomalies"])
    flagged = " flagged" if drift["drifted"] else ""
    return (f"<div class='section{flagged}'><h2>Serving vs training data (TFDV)</h2>"
            f"<p>{n(drift['serving_examples'])} logged inputs (sample) against "
            f"{n(drift['training_examples'])} training examples of "
            f"{e(drift.get('training_dataset_version'))}.</p>"
            + _table(["feature", "measure", "skew", "skew threshold", "drift",
                      "drift threshold", ""], rows)
            + (f"<h3>Serving data anomalies</h3><ul>{anomalies}</ul>" if anomalies else "")
            + "</div>")


def _dataset(result: dict) -> str:
    data = result["dataset"]
    if not data.get("dataset_version"):
        return f"<h2>New data</h2><p>{e(data['status'])}.</p>"
    base = (f" after the {n(data['rows_base'])} rows of {e(data['combined_with'])}"
            if data.get("combined_with") else "")
    return (f"<h2>New data</h2><p>{n(data['rows_new'])} newly labelled rows{base}: dataset "
            f"version <b>{e(data['dataset_version'])}</b>, {e(data['status'])} at "
            f"<code>{e(data['uri'])}</code>.</p>"
            + (f"<p class='muted'>{e(data['note'])}</p>" if data.get("note") else ""))


def write_report(path: str, result: dict) -> None:
    title = f"Feedback: {result['model_name']}"
    body = [f"<h1>{e(title)}</h1><p class='muted'>{e(result['created_at'])}; deployment "
            f"revision {e(result['deployment_record']['revision'])}</p>",
            _decision(result), _join(result), _versions(result), _ab(result), _drift(result),
            _dataset(result)]
    write_page(path, title, body)
