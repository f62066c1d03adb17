"""`isd report`: markdown tables and PNG charts from the result.json files of experiment folders.

The tables are a pure function of the result files (sorted, rounded, no timestamps), so the README's results
section can be checked against what this module makes of the committed files.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from isd.errors import UsageError
from isd.experiments.speed import is_speed_file, speed_markdown
from isd.experiments.stats import PaperClaim, pair_up
from isd.plots import pyplot

NAMES = {"isd": "ISD", "isd-plus": "ISD+", "byol": "BYOL-asym", "moco": "MoCo-v2",
         "supervised": "supervised (ceiling)", "random-init": "random init (floor)", "raw-pixels": "raw pixels (floor)",
         "distill": "distilled (CompRess)", "teacher": "teacher (fixed)"}
ORDER = ["teacher", "distill", "isd", "isd-plus", "byol", "moco", "supervised", "random-init", "raw-pixels"]
METRICS = (("knn1", "1-NN"), ("knn20", "20-NN"), ("knn_weighted", "weighted kNN"), ("linear", "linear"))
# cells that measured the CIFAR-10 benchmarks' weighted 200-NN (T 0.1) show it in place of InstDisc's (T 0.07)
ANCHOR_METRICS = (("knn1", "1-NN"), ("knn20", "20-NN"), ("knn200", "weighted 200-NN"), ("linear", "linear"))


def metrics_of(rows: list[dict]) -> tuple[tuple[str, str], ...]:
    return ANCHOR_METRICS if all("knn200" in r["metrics"] for r in rows) else METRICS
# the paper's orderings, checked wherever a group has both methods: ISD ≥ BYOL-asym ≥ MoCo-v2 on balanced data
# (its Table 1), ISD ahead of MoCo-v2 on unbalanced data and most of all on the rare classes (its Table 5)
BALANCED_CLAIMS = (PaperClaim("isd", "byol", "knn20", "20-NN"), PaperClaim("byol", "moco", "knn20", "20-NN"),
                   PaperClaim("isd", "moco", "knn20", "20-NN"))
UNBALANCED_CLAIMS = (PaperClaim("isd", "moco", "rare", "1-NN on the rare classes"),
                     PaperClaim("isd", "moco", "knn1", "1-NN on all classes"))
# distillation (CompRess): the student keeps most of its teacher's accuracy, and beats the same net trained with ISD
# from scratch for the same minutes, and raw pixels
DISTILL_CLAIMS = (PaperClaim("distill", "teacher", "knn20", "20-NN", share=0.9),
                  PaperClaim("distill", "isd", "knn20", "20-NN"), PaperClaim("distill", "raw-pixels", "knn20", "20-NN"),
                  PaperClaim("distill", "isd", "linear", "linear probe"))


def display(method: str) -> str:
    return NAMES.get(method, method)


def method_order(method: str) -> tuple[int, str]:
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def load_results(folders: list[str]) -> list[dict]:
    results = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise UsageError(f"EXPDIR {folder} is not a folder (pass experiment folders holding <cell>/result.json)")
        for path in sorted(root.rglob("result.json")):
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise UsageError(f"{path} is not a readable result file ({err})") from None
            result["_dir"] = str(path.parent)
            results.append(result)
    if not results:
        raise UsageError(f"no result.json under {', '.join(folders)}: run `isd experiment PLAN` first")
    return results


def groups(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        out[(r["plan"], r["budget"])].append(r)
    return dict(sorted(out.items()))


def train_seconds(train: dict) -> float:
    """Training time of a cell; one resumed after a stop counts from its first start (the kNN curve's clock runs
    on from the checkpoint, the resumed process's own clock only since the resume)."""
    history = train.get("history") or []
    return max(train["seconds"], history[-1]["seconds"] if history else 0.0)


def grid_minutes(rows: list[dict]) -> float:
    """Training and evaluation of every cell, as if run one after another (a resumed cell counts whole)."""
    seconds = 0.0
    for r in rows:
        trained = train_seconds(r["train"]) if r.get("train") else 0.0
        seconds += max(r["seconds"], trained + r["eval"].get("seconds", 0.0))
    return seconds / 60


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def rare_accuracy(result: dict, key: str = "knn1") -> float | None:
    per_class = result["per_class"][key]
    rare = [per_class[c] for c in result.get("rare_classes") or [] if per_class[c] is not None]
    return statistics.mean(rare) if rare else None


def metric_value(result: dict, metric: str) -> float | None:
    return rare_accuracy(result) if metric == "rare" else result["metrics"].get(metric)


def claim_lines(rows: list[dict], bold: bool = True) -> list[str]:
    """One sentence per claim of the paper that this group can test: holds, does not hold, or not resolved, with
    the paired mean difference and its 95% interval (`isd.experiments.stats`)."""
    unbalanced = any(r.get("rare_classes") for r in rows)
    return _verdicts(rows, claims_of(rows), "draw" if unbalanced else "seed", bold, min_pairs=1,
                     planned=planned_pairs(rows))


def claims_of(rows: list[dict]) -> tuple[PaperClaim, ...]:
    if any(r["method"] == "distill" for r in rows):
        return DISTILL_CLAIMS
    return UNBALANCED_CLAIMS if any(r.get("rare_classes") for r in rows) else BALANCED_CLAIMS


def short_claim_lines(rows: list[dict]) -> list[str]:
    """`claim_lines` in a few words each: the verdict, the paired mean difference, its interval and n."""
    unbalanced = any(r.get("rare_classes") for r in rows)
    lines = []
    for claim in claims_of(rows):
        result = pair_up(rows, claim, metric_value)
        if result is None:
            continue
        unit = "draw" if unbalanced else "seed"
        verdict = result.verdict.split(" at n = ")[0]  # n follows in the parentheses
        lines.append(f"{display(claim.better)} ≥ {_scaled(claim)} at {claim.label}: {verdict} "
                     f"({result.mean:+.2f} {result.interval_text()}, {result.n} {unit}{'s' if result.n > 1 else ''})")
    return lines


def planned_pairs(rows: list[dict]) -> int | None:
    """The n the newest cell's budget reads its verdicts at (None for cells written before budgets said so)."""
    recorded = [r for r in rows if r.get("planned_pairs")]
    return newest(recorded)["planned_pairs"] if recorded else None


def newest(rows: list[dict]) -> dict:
    """The cell written last: a budget grown over sessions (more seeds) describes itself as it now is."""
    return max(rows, key=lambda r: r["provenance"].get("date", ""))


def baseline_of(rows: list[dict]) -> str | None:
    """The row a study plan compares the others with (its `baseline`); cells run before the plan named one carry
    none, so any cell of the group that names it speaks for the group."""
    return next((r["baseline"] for r in rows if r.get("baseline")), None)


def baseline_lines(rows: list[dict], bold: bool = True) -> list[str]:
    """Every trained row that shares at least two seeds with the plan's baseline row, judged against it at 20-NN
    the way the paper's claims are: 'ROW ≥ BASELINE' holds, does not hold or is not resolved."""
    baseline = baseline_of(rows)
    if baseline is None:
        return []
    others = sorted({r["method"] for r in rows if not r.get("floor") and r["method"] != baseline}, key=method_order)
    return _verdicts(rows, [PaperClaim(m, baseline, "knn20", "20-NN") for m in others], "seed", bold, min_pairs=2)


def _verdicts(rows: list[dict], claims, unit: str, bold: bool, min_pairs: int,
              planned: int | None = None) -> list[str]:
    lines = []
    for claim in claims:
        result = pair_up(rows, claim, metric_value)
        if result is None or result.n < min_pairs:
            continue
        a, b = display(claim.better), _scaled(claim)
        verdict = f"**{result.verdict}**" if bold else result.verdict
        # a grid run in stages: a verdict read before its fixed n, and acted on, would be biased
        interim = f"interim: {result.n} of the {planned} {unit}s its budget reads it at; " if (
            planned and result.n < planned) else ""
        spread = f", 95% interval {result.interval_text()}" if result.n > 1 else ""
        needed = result.pairs_to_resolve()
        plan = f"; at this mean and spread about {needed} {unit}s would resolve it" if needed else ""
        lines.append(f"{a} ≥ {b} at {claim.label}: {verdict} ({interim}{a} − {b} = {result.mean:+.2f} points{spread}; "
                     f"{result.n} paired {unit}{'s' if result.n != 1 else ''}: "
                     f"{', '.join(f'{d:+.2f}' for d in result.differences)}{plan})")
    return lines


def _scaled(claim: PaperClaim) -> str:
    return display(claim.worse) if claim.share == 1 else f"{claim.share:g} × {display(claim.worse)}"


def header(plan: str, budget: str, rows: list[dict]) -> str:
    about = newest(rows).get("budget_about", "")
    devices = Counter(r["provenance"]["device"] for r in rows)
    torches = sorted({r["provenance"]["torch"] for r in rows})
    commits = sorted({(r["provenance"]["commit"] or "unknown")[:10] + ("+dirty" if r["provenance"]["dirty"] else "")
                      for r in rows})
    cfg = rows[0]["config"]
    queries = "the held-out validation split" if rows[0]["queries"] == "holdout" else "the test split"
    shared = max(r["provenance"].get("concurrent_cells", 1) for r in rows)
    if shared > 1:
        sharing = f" Train time and images/s are per cell, with up to {shared} cells sharing the device."
    else:
        sharing = f" Wall time of these {len(rows)} cells, one after another: {grid_minutes(rows):.0f} min."
    if len(devices) == 1:
        machine = f"Machine: {next(iter(devices))}"
    else:  # a grid spread over sessions may land on different CPUs: its times are then not one machine's
        machine = "Machines: " + "; ".join(f"{d} ({n} cells)" for d, n in sorted(devices.items()))
        sharing += (" Train time and images/s are means over cells of these machines: compare times within one "
                    "machine (each cell's result.json names its own).")
    return (f"**{plan}**, budget `{budget}`" + (f" ({about})" if about else "") + f": {cfg['arch']}, "
            f"{cfg['dataset']}; accuracy in % on {queries}. {machine}; torch "
            f"{', '.join(torches)}; commit {', '.join(commits)}.{sharing}")


def headline(rows: list[dict], methods: tuple[str, ...]) -> list[str]:
    """One line per method (in the order given): its 1-NN and 20-NN over seeds, for a console summary of committed
    results."""
    by_method = _by_method(rows)
    return [f"{display(m):24s} 1-NN {mean_std([c['metrics']['knn1'] for c in by_method[m]]):>14s}   20-NN "
            f"{mean_std([c['metrics']['knn20'] for c in by_method[m]]):>14s}   (n={len(by_method[m])})"
            for m in methods if m in by_method]


def balanced_table(rows: list[dict]) -> str:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
    columns = metrics_of(rows)
    lines = ["| method | n | " + " | ".join(label for _, label in columns) + " | train time | images/s |",
             "| --- | --- | " + " | ".join("---" for _ in columns) + " | --- | --- |"]
    for method in sorted(by_method, key=method_order):
        cells = by_method[method]
        scores = [mean_std([c["metrics"][key] for c in cells]) for key, _ in columns]
        times = [train_seconds(c["train"]) for c in cells if c.get("train")]
        speeds = [c["train"]["images_per_s"] for c in cells if c.get("train") and c["train"].get("images_per_s")]
        time_text = f"{statistics.mean(times) / 60:.1f} min" if times else "–"
        speed_text = f"{statistics.mean(speeds):,.0f}" if speeds else "–"
        lines.append(f"| {display(method)} | {len(cells)} | " + " | ".join(scores) + f" | {time_text} | {speed_text} |")
    return "\n".join(lines)


def unbalanced_table(rows: list[dict], baseline: str = "moco") -> str:
    """Per draw: every method's 1-NN over all classes and over the rare ones, and its difference to MoCo."""
    methods = sorted({r["method"] for r in rows}, key=method_order)
    by_key = {(r["draw"], r["method"]): r for r in rows}  # one seed per draw and method in these plans
    draws = sorted({r["draw"] for r in rows})
    others = [m for m in methods if m != baseline and baseline in methods]
    head = ["draw", "common classes"]
    for m in methods:
        head += [f"{display(m)} all", f"{display(m)} rare"]
    for m in others:
        head += [f"{display(m)} − {display(baseline)} all", f"{display(m)} − {display(baseline)} rare"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    totals: dict[str, list[float]] = defaultdict(list)
    for draw in draws:
        some = next(r for (d, _), r in by_key.items() if d == draw)
        cells = [f"D{draw}", ", ".join(some["classes"][c] for c in some["common_classes"])]
        for m in methods:
            r = by_key.get((draw, m))
            values = (r["metrics"]["knn1"], rare_accuracy(r)) if r else (None, None)
            for tag, v in zip(("all", "rare"), values):
                cells.append("–" if v is None else f"{v:.2f}")
                if v is not None:
                    totals[f"{m} {tag}"].append(v)
        for m in others:
            a, b = by_key.get((draw, m)), by_key.get((draw, baseline))
            for tag in ("all", "rare"):
                va, vb = ((r["metrics"]["knn1"] if tag == "all" else rare_accuracy(r)) if r else None for r in (a, b))
                if va is not None and vb is not None:
                    cells.append(f"{va - vb:+.2f}")
                    totals[f"{m}-{baseline} {tag}"].append(va - vb)
                else:
                    cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    mean_cells = ["mean", ""]
    for m in methods:
        mean_cells += [_mean(totals[f"{m} all"]), _mean(totals[f"{m} rare"])]
    for m in others:
        mean_cells += [_mean(totals[f"{m}-{baseline} all"], signed=True),
                       _mean(totals[f"{m}-{baseline} rare"], signed=True)]
    lines.append("| " + " | ".join(mean_cells) + " |")
    return "\n".join(lines)


def rare_description(cfg: dict) -> str:
    if cfg.get("imbalance_ratio"):
        return (f"the long tail's tail classes (imbalance ratio {cfg['imbalance_ratio']:g}: the classes that keep "
                f"fewer than 1/√{cfg['imbalance_ratio']:g} of the largest class's images); *common classes* is the "
                f"head")
    return f"the classes that kept {cfg.get('rare_per_class', 500)} images"


def _mean(values: list[float], signed: bool = False) -> str:
    if not values:
        return "–"
    return f"{statistics.mean(values):+.2f}" if signed else f"{statistics.mean(values):.2f}"


def markdown(results: list[dict], chart_dir: dict[tuple[str, str], str] | None = None) -> str:
    parts = []
    for (plan, budget), rows in groups(results).items():
        parts.append(header(plan, budget, rows))
        parts.append("")
        unbalanced = any(r.get("rare_classes") for r in rows)
        parts.append(unbalanced_table(rows) if unbalanced else balanced_table(rows))
        if unbalanced:
            parts.append("")
            parts.append(f"1-NN accuracy; *rare* = mean accuracy over {rare_description(rows[0]['config'])}. Bank: "
                         f"the balanced train split; queries: the balanced test split.")
        claims = claim_lines(rows)
        if claims:
            parts.append("")
            whose = "CompRess's" if claims_of(rows) == DISTILL_CLAIMS else "The paper's"
            parts.append(f"{whose} claims on these cells (paired by " + ("draw" if unbalanced else "seed")
                         + "; the interval is Student's t over the pairs):")
            parts.append("")
            parts += [f"- {line}" for line in claims]
        against = baseline_lines(rows)
        if against:
            parts.append("")
            parts.append(f"Rows run on two or more seeds, each against the baseline row "
                         f"{display(baseline_of(rows) or '')} (paired by seed; the interval is Student's t over the "
                         f"pairs):")
            parts.append("")
            parts += [f"- {line}" for line in against]
        curves = curve_table(rows)
        if curves:
            parts += ["", curves]
        if chart_dir and (plan, budget) in chart_dir:
            parts.append("")
            folder = chart_dir[(plan, budget)]
            parts.append(" ".join(f"![{name}]({folder}/{name}.png)" for name in chart_names(rows)))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def curve_table(rows: list[dict]) -> str:
    """The kNN checks during training of single-seed trained rows (a budget-sizing plan), epoch by epoch, beside
    each row's final score and the floors. Empty when no cell kept a curve of three or more checks."""
    cells = [r for r in rows if len(_history(r)) >= 3 and not r["floor"]]
    if not cells or len({r["method"] for r in cells}) != len(cells):
        return ""  # several seeds of a row: the chart shows them; a table would have to pick one
    cells.sort(key=lambda r: method_order(r["method"]))
    epochs = sorted({h["epoch"] for r in cells for h in _history(r)})
    at = [{h["epoch"]: h for h in _history(r)} for r in cells]
    lines = ["| epoch | " + " | ".join(f"{display(r['method'])}: min · student 20-NN · teacher 20-NN"
                                       for r in cells) + " |",
             "| --- | " + " | ".join("---" for _ in cells) + " |"]
    for epoch in epochs:
        cells_at = [_curve_cell(by_epoch.get(epoch)) for by_epoch in at]
        lines.append(f"| {epoch or '0 (initial weights)'} | " + " | ".join(cells_at) + " |")
    lines.append("| final, full bank | " + " | ".join(
        f"{train_seconds(r['train']) / 60:.1f} · {r['metrics']['knn20']:.2f}" for r in cells) + " |")
    banks = sorted({r["config"].get("eval_max_images", 0) for r in cells})
    bank = " / ".join(f"{b:,} of the" if b else "all the" for b in banks)
    floors = [f"{display(r['method'])} {r['metrics']['knn20']:.2f}"
              for r in sorted(rows, key=lambda r: method_order(r["method"])) if r["floor"]]
    queries = "the held-out split" if rows[0]["queries"] == "holdout" else "the test split"
    return "\n".join(lines) + (
        f"\n\nDuring training the kNN bank is {bank} training images and the queries all of {queries}; minutes count "
        f"training and these checks. The final row uses the full bank, as the floors do"
        + (f" (20-NN: {', '.join(floors)})." if floors else "."))


def _curve_cell(row: dict | None) -> str:
    if row is None:
        return ""
    teacher = row.get("teacher_20nn")
    return (f"{row['seconds'] / 60:.1f} · {row['student_20nn']:.2f}"
            + (f" · {teacher:.2f}" if teacher is not None else ""))


def chart_names(rows: list[dict]) -> list[str]:
    if any(r.get("rare_classes") for r in rows):
        return ["accuracy", "rare"]
    # a budget that evaluates only at the end (eval_every 0) has no curve to draw
    return ["accuracy", "per_class"] + (["curves"] if any(_history(r) for r in rows) else [])


def _history(row: dict) -> list[dict]:
    return (row.get("train") or {}).get("history") or []


# ----------------------------------------------------------------------------------------------- charts


def write_charts(rows: list[dict], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    draw = {"accuracy": accuracy_chart, "rare": rare_chart, "per_class": per_class_chart, "curves": curves_chart}
    names = chart_names(rows)
    for stale in set(draw) - set(names):
        (folder / f"{stale}.png").unlink(missing_ok=True)
    return [draw[name](rows, folder / f"{name}.png") for name in names]


def _by_method(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["method"]].append(r)
    return {m: out[m] for m in sorted(out, key=method_order)}


def accuracy_chart(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    methods = _by_method(rows)
    fig, ax = plt.subplots(figsize=(8, 4))
    columns = metrics_of(rows)
    width = 0.8 / len(columns)
    for i, (key, label) in enumerate(columns):
        means = [statistics.mean([c["metrics"][key] for c in cells]) for cells in methods.values()]
        errs = [statistics.stdev([c["metrics"][key] for c in cells]) if len(cells) > 1 else 0
                for cells in methods.values()]
        ax.bar([x + i * width for x in range(len(methods))], means, width, yerr=errs, label=label, capsize=2)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(methods))])
    ax.set_xticklabels([display(m).replace(" (", "\n(") for m in methods], fontsize=8)
    low = min(c["metrics"][k] for r in methods.values() for c in r for k, _ in columns)
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{rows[0]['plan']}, budget {rows[0]['budget']}")
    ax.legend(fontsize=8, ncol=len(columns))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_class_chart(rows: list[dict], path: Path, key: str = "knn20") -> Path:
    plt = pyplot()
    methods = _by_method(rows)
    classes = rows[0]["classes"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(methods)
    for i, (method, cells) in enumerate(methods.items()):
        means = [statistics.mean([c["per_class"][key][k] or 0 for c in cells]) for k in range(len(classes))]
        ax.bar([x + i * width for x in range(len(classes))], means, width, label=display(method))
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(classes))])
    ax.set_xticklabels(classes, rotation=30, fontsize=8)
    ax.set_ylabel("20-NN accuracy (%)")
    ax.set_title("accuracy per class")
    ax.legend(fontsize=7, ncol=4)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_chart(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for method, cells in _by_method(rows).items():
        for j, cell in enumerate(cells):
            history = _history(cell)
            if not history:
                continue
            label = display(method) if j == 0 else None
            accs = [h["student_20nn"] for h in history]
            color = f"C{method_order(method)[0] % 10}"
            by_epoch.plot([h["epoch"] for h in history], accs, marker="o", ms=3, color=color, label=label)
            by_time.plot([h["seconds"] / 60 for h in history], accs, marker="o", ms=3, color=color, label=label)
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("wall time (min, training and these evaluations)")
    by_epoch.set_ylabel("student 20-NN accuracy (%)")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_epoch.legend(fontsize=8)
    fig.suptitle("kNN accuracy during training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rare_chart(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    methods = _by_method(rows)
    draws = sorted({r["draw"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / (2 * len(methods))
    for i, (method, cells) in enumerate(methods.items()):
        by_draw = {c["draw"]: c for c in cells}
        for j, (tag, fn) in enumerate((("all", lambda c: c["metrics"]["knn1"]), ("rare", rare_accuracy))):
            values = [fn(by_draw[d]) if d in by_draw else 0 for d in draws]
            ax.bar([x + (2 * i + j) * width for x in range(len(draws))], values, width,
                   label=f"{display(method)} {tag}", alpha=1.0 if tag == "all" else 0.6,
                   color=f"C{method_order(method)[0] % 10}", hatch=None if tag == "all" else "//")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(draws))])
    ax.set_xticklabels([f"D{d}" for d in draws])
    ax.set_ylabel("1-NN accuracy (%)")
    ax.set_title("unbalanced data: all classes and the rare ones")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- readme


BEGIN, END = "<!-- begin: isd report", "<!-- end: isd report -->"


def report(folders: list[str], write: bool = True, link_from: Path | None = None) -> str:
    """The markdown for these folders; with `write`, also the charts and a report.md in each group's folder.
    Chart links are relative to `link_from` (the folder of the file they go in), else to the working folder.
    A `.json` file among them is a speed measurement (`isd bench --out`, vs_original.py): its table follows."""
    speed = [speed_markdown(f) for f in folders if is_speed_file(f)]
    folders = [f for f in folders if not is_speed_file(f)]
    if not folders:
        return "\n".join(speed)
    results = load_results(folders)
    chart_dirs, links = {}, {}
    for key, rows in groups(results).items():
        folder = Path(common_parent([r["_dir"] for r in rows]))
        chart_dirs[key] = folder
        links[key] = Path(os.path.relpath(folder, link_from)).as_posix() if link_from else folder.as_posix()
        if write:
            write_charts(rows, folder)
    text = markdown(results, links)
    if write:
        for folder in set(chart_dirs.values()):
            mine = [r for r in results if Path(r["_dir"]).parent == folder or Path(r["_dir"]) == folder]
            (folder / "report.md").write_text(markdown(mine, {k: "." for k in chart_dirs}))
    return "\n".join([text, *speed])


def common_parent(dirs: list[str]) -> str:
    parents = {str(Path(d).parent) for d in dirs}
    return parents.pop() if len(parents) == 1 else str(Path(*Path(min(parents)).parts[:1]))


def _block_spans(text: str) -> list[tuple[list[str], int, int]]:
    """(report folders, start, end of the body) for each generated block of a README."""
    spans, pos = [], 0
    while (start := text.find(BEGIN, pos)) >= 0:
        line_end = text.index("-->", start)
        folders = text[start + len(BEGIN):line_end].split()
        body_start = text.index("\n", line_end) + 1
        body_end = text.index(END, body_start)
        spans.append((folders, body_start, body_end))
        pos = body_end + len(END)
    return spans


def readme_blocks(text: str) -> list[tuple[list[str], str]]:
    """[(report folders, the block's body)] for each `<!-- begin: isd report FOLDER... -->` block."""
    return [(folders, text[a:b]) for folders, a, b in _block_spans(text)]


def update_readme(path: Path) -> int:
    """Regenerate every generated block of the file (the README, docs/results.md) in place, chart links relative
    to the file; returns how many blocks there are."""
    text = path.read_text()
    spans = _block_spans(text)
    for folders, a, b in reversed(spans):  # from the end, so earlier offsets stay valid
        text = text[:a] + report(folders, write=False, link_from=path.parent) + text[b:]
    path.write_text(text)
    return len(spans)
