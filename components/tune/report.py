"""The tuning report a person reads: the best trial, then the objective against each parameter.

One self-contained page (components/common/html_report.py): a scatter per parameter with the
best trial highlighted, and the table of every trial.
"""

from __future__ import annotations

from components.common.html_report import e, figure, img, n, write_page

TRIAL_COLOR, BEST_COLOR, FAILED_COLOR = "#1f77b4", "#d62728", "#999999"


def _scatter(name: str, trials: list[dict], best: dict, objective: str) -> str:
    done = [t for t in trials if t["objective"] is not None]
    if not done:
        return ""
    fig = figure(4.2, 3.0)
    ax = fig.add_subplot()
    values = [t["parameters"].get(name) for t in done]
    categorical = any(isinstance(v, str) for v in values)
    order = sorted({str(v) for v in values}) if categorical else None
    xs = [order.index(str(v)) if categorical else v for v in values]
    ax.scatter(xs, [t["objective"] for t in done], color=TRIAL_COLOR, s=24, label="trial")
    x_best = (order.index(str(best["parameters"][name])) if categorical
              else best["parameters"][name])
    ax.scatter([x_best], [best["objective"]], color=BEST_COLOR, s=70, marker="*",
               label="best")
    if categorical:
        ax.set_xticks(range(len(order)), order, fontsize=8)
    elif min(xs) > 0 and max(xs) / min(xs) > 20:  # a log-uniform range, e.g. learning_rate
        ax.set_xscale("log")
    ax.set(xlabel=name, ylabel=objective)
    ax.legend(fontsize=8, frameon=False)
    return img(fig, f"{objective} against {name}")


def _shown(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def write_report(path: str, result: dict) -> None:
    trials, best = result["trials"], result["best"]
    objective = result["objective"]
    body = [f"<h1>Hyperparameter tuning: {e(result['backend'])} backend</h1>"]
    if not result["enabled"]:
        body.append("<p>Tuning was off: train used the given hyperparameters.</p>")
    else:
        body.append(
            f"<p>{len(trials)} trials ({result['succeeded']} succeeded), {e(result['algorithm'])}"
            f" search, {e(result['goal'])} {e(objective)}. Best: <b>{e(best['name'])}</b>, "
            f"{e(objective)} = {n(best['objective'])}.</p>")
        body.append("<h2>Best hyperparameters</h2><table>" + "".join(
            f"<tr><td>{e(k)}</td><td>{e(_shown(v))}</td></tr>"
            for k, v in sorted(result["best_hparams"].items())) + "</table>")
        names = sorted({k for t in trials for k in t["parameters"]})
        plots = [_scatter(name, trials, best, objective) for name in names]
        body.append("<h2>Objective against each parameter</h2><div class='plots'>"
                    + "".join(plots) + "</div>")
        head = "".join(f"<th>{e(k)}</th>" for k in names)
        rows = []
        for t in trials:
            mark = " class='ok'" if t["name"] == best["name"] else ""
            cells = "".join(f"<td>{e(_shown(t['parameters'].get(k, '')))}</td>" for k in names)
            rows.append(f"<tr><td{mark}>{e(t['name'])}</td><td>{e(t['status'])}</td>"
                        f"<td class='num'>{n(t['objective'])}</td>{cells}"
                        f"<td class='num'>{n(t['seconds'], '.1f')}</td>"
                        f"<td class='muted'>{e(t['message'])}</td></tr>")
        body.append(f"<h2>Trials</h2><table><tr><th>trial</th><th>status</th>"
                    f"<th>{e(objective)}</th>{head}<th>seconds</th><th>message</th></tr>"
                    + "".join(rows) + "</table>")
    write_page(path, "Hyperparameter tuning", body)
