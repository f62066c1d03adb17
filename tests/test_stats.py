"""The paired statistics behind the claims' verdicts in `isd report` (isd.experiments.stats), checked against
values worked out by hand."""

from __future__ import annotations

import math

import pytest

from isd.experiments.report import baseline_lines, claim_lines, load_results, markdown
from isd.experiments.stats import PaperClaim, pair_up, paired, t_quantile_975


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042),
                                          (40, 2.021), (60, 2.000), (120, 1.980), (10_000, 1.960)])
def test_t_quantiles_are_the_tabulated_ones(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=1.5e-3)


def test_t_quantile_needs_a_degree_of_freedom():
    with pytest.raises(ValueError, match="at least 1 degree"):
        t_quantile_975(0)


def test_paired_interval_is_students_t_over_the_differences():
    # mean 2, sample sd 1, n 3: half-width t(2) / sqrt(3) = 4.303 / 1.7320508 = 2.48434
    result = paired([1.0, 2.0, 3.0])
    assert (result.n, result.mean) == (3, 2.0)
    assert result.low == pytest.approx(2.0 - 4.303 / math.sqrt(3)) and result.high == pytest.approx(2.0 + 4.303 / math.sqrt(3))
    assert result.verdict == "not resolved at n = 3"
    assert result.interval_text() == "[-0.48, +4.48]"


@pytest.mark.parametrize("differences, verdict", [
    ([1.0, 1.2, 0.8, 1.1, 0.9], "holds"),                     # interval [0.80, 1.20]
    ([-1.0, -1.2, -0.8, -1.1, -0.9], "does not hold"),
    ([0.5, -0.4, 0.3, -0.2, 0.1], "not resolved at n = 5"),
    ([2.0], "not resolved at n = 1"),                          # one pair has no interval
    ([0.76, 0.80], "holds"),                                   # two close pairs: t(1) = 12.7 and still above 0
])
def test_verdicts(differences, verdict):
    assert paired(differences).verdict == verdict


def test_pairs_to_resolve_is_the_fewest_whose_interval_would_clear_zero_at_this_mean_and_spread():
    # mean 5/6, sample sd sqrt(19/12) = 1.25831: need t(n-1) / sqrt(n) < 0.66227; n = 11: 2.228 / 3.3166 = 0.6718,
    # n = 12: 2.201 / 3.4641 = 0.6354
    assert paired([1.0, 2.0, -0.5]).pairs_to_resolve() == 12
    assert paired([1.0, 2.0, -0.5]).pairs_to_resolve(most=11) is None
    assert paired([1.0, 1.2, 0.8, 1.1, 0.9]).pairs_to_resolve() is None  # resolved already
    assert paired([0.3]).pairs_to_resolve() is None and paired([0.5, -0.5]).pairs_to_resolve() is None


def test_one_pair_has_no_interval():
    result = paired([0.3])
    assert result.low is None and result.high is None and result.interval_text() == "–"


def _row(method, seed, knn20, draw=None, knn1=None, per_class=None, rare=()):
    return {"method": method, "seed": seed, "draw": draw, "rare_classes": list(rare),
            "metrics": {"knn20": knn20, "knn1": knn20 if knn1 is None else knn1},
            "per_class": {"knn1": per_class or []}}


def test_pairs_are_the_seeds_both_methods_ran_and_nothing_else():
    rows = [_row("isd", 0, 85.0), _row("isd", 1, 84.0), _row("isd", 2, 86.0),
            _row("moco", 0, 84.0), _row("moco", 2, 84.5), _row("byol", 1, 10.0)]
    result = pair_up(rows, PaperClaim("isd", "moco", "knn20", "20-NN"), lambda r, m: r["metrics"][m])
    assert result is not None and result.differences == (1.0, 1.5) and result.n == 2
    assert pair_up(rows, PaperClaim("isd", "supervised", "knn20", "20-NN"), lambda r, m: r["metrics"][m]) is None


def test_a_seed_free_floor_run_once_pairs_with_every_seed_at_knn_but_not_at_the_linear_probe():
    rows = [_row("distill", s, v) for s, v in enumerate((63.0, 62.5, 62.0))]
    for r in rows:
        r["metrics"]["linear"] = r["metrics"]["knn20"]
    teacher = dict(_row("teacher", 0, 70.0), floor="teacher")
    teacher["metrics"]["linear"] = 71.0
    pixels, init = dict(_row("raw-pixels", 0, 40.0), floor="raw-pixels"), dict(_row("random-init", 0, 20.0),
                                                                              floor="random-init")
    rows += [teacher, pixels, init]
    value = lambda r, m: r["metrics"][m]  # noqa: E731
    share = pair_up(rows, PaperClaim("distill", "teacher", "knn20", "20-NN", share=0.9), value)
    assert share is not None and share.n == 3 and share.differences == pytest.approx((0.0, -0.5, -1.0))
    assert pair_up(rows, PaperClaim("distill", "raw-pixels", "knn20", "20-NN"), value).n == 3
    assert pair_up(rows, PaperClaim("distill", "teacher", "linear", "linear probe"), value).n == 1  # SGD: per seed
    assert pair_up(rows, PaperClaim("distill", "random-init", "knn20", "20-NN"), value).n == 1  # weights: per seed


def test_claim_lines_for_balanced_seeds_name_the_verdict_the_mean_and_the_pairs():
    rows = [_row(m, s, v) for m, vals in {"isd": (85.0, 85.2, 85.1), "byol": (84.0, 84.1, 84.2),
                                            "moco": (84.1, 84.0, 84.3)}.items() for s, v in enumerate(vals)]
    lines = claim_lines(rows, bold=False)
    assert lines[0].startswith("ISD ≥ BYOL-asym at 20-NN: holds (ISD − BYOL-asym = +1.00 points, 95% interval [")
    assert lines[0].endswith("3 paired seeds: +1.00, +1.10, +0.90)")
    assert lines[1].startswith("BYOL-asym ≥ MoCo-v2 at 20-NN: not resolved at n = 3 (BYOL-asym − MoCo-v2 = -0.03")
    # differences -0.1, +0.1, -0.1: sd 0.11547, |mean| 0.0333; t(n-1) / sqrt(n) < 0.28868 first at n = 49
    assert lines[1].endswith("-0.10, +0.10, -0.10; at this mean and spread about 49 seeds would resolve it)")
    assert lines[2].startswith("ISD ≥ MoCo-v2 at 20-NN: holds")


def test_claim_lines_for_unbalanced_draws_use_the_rare_classes():
    # classes 0 common, 1 and 2 rare: the rare accuracy is the mean of per-class 1-NN over classes 1 and 2
    rows = [_row("isd", 0, 0.0, draw=d, knn1=80.0, per_class=[90.0, 70.0 + d, 72.0], rare=(1, 2)) for d in (1, 2, 3)]
    rows += [_row("moco", 0, 0.0, draw=d, knn1=79.0, per_class=[95.0, 68.0, 70.0], rare=(1, 2)) for d in (1, 2, 3)]
    rare, everything = claim_lines(rows, bold=True)
    # ISD rare = (70 + d + 72) / 2, MoCo rare = 69: differences 2.5, 3.0, 3.5
    assert rare.startswith("ISD ≥ MoCo-v2 at 1-NN on the rare classes: **holds** (ISD − MoCo-v2 = +3.00 points")
    assert rare.endswith("3 paired draws: +2.50, +3.00, +3.50)")
    assert everything.startswith("ISD ≥ MoCo-v2 at 1-NN on all classes: **holds** (ISD − MoCo-v2 = +1.00 points")


def test_a_study_judges_rows_on_two_or_more_seeds_against_its_baseline_row():
    rows = [_row("demo", s, v) for s, v in enumerate((80.0, 81.0, 79.0))]
    rows += [_row("batch128", s, v) for s, v in enumerate((81.0, 82.5, 80.5))]  # +1.0, +1.5, +1.5
    rows += [_row("crop0.3", 0, 70.0), _row("random-init", 0, 79.0), _row("random-init", 1, 80.0)]
    rows[-1]["floor"] = rows[-2]["floor"] = "random-init"
    assert baseline_lines(rows) == []  # no plan named a baseline
    rows[3]["baseline"] = "demo"  # one cell naming it speaks for the group (cells run before the plan said so)
    # differences 1.0, 1.5, 1.5: mean 4/3, sd 0.288675, half-width 4.303 * 0.288675 / sqrt(3) = 0.7172
    (line,) = baseline_lines(rows, bold=False)  # crop0.3 has one seed, floors are not judged
    assert line == ("batch128 ≥ demo at 20-NN: holds (batch128 − demo = +1.33 points, 95% interval [+0.62, +2.05]; "
                    "3 paired seeds: +1.00, +1.50, +1.50)")
    for row in rows:
        row.update(plan="study", budget="b", budget_about="", queries="holdout", classes=["a"],
                   config={"arch": "r", "dataset": "d"},
                   seconds=1.0, eval={}, provenance={"device": "cpu", "torch": "2", "commit": None, "dirty": False})
        row["metrics"].update(knn_weighted=0.0, linear=0.0)
    text = markdown(rows)
    assert "each against the baseline row demo (paired by seed" in text
    assert "- batch128 ≥ demo at 20-NN: **holds**" in text


def test_the_demo_prints_the_committed_claims_verdicts(capsys):
    from isd.cli.demo import DEMOS, EXPERIMENTS, print_claim_summary, print_claims

    claims = [EXPERIMENTS / name for name in DEMOS["fashion-mnist"].claims]
    print_claims(claims)  # --more: every verdict in full
    out = capsys.readouterr().out
    assert "fmnist-balanced-gpu (budget gpu;" in out and "fmnist-unbalanced-gpu (budget gpu;" in out
    assert "ISD ≥ MoCo-v2 at 1-NN on the rare classes:" in out
    print_claim_summary(claims)  # the default: one line per claim and experiment
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    assert "  fmnist-balanced-gpu: ISD ≥ MoCo-v2 at 20-NN: holds (+0.78 [+0.53, +1.03], 2 seeds)" in lines
    assert len(lines) == sum(len(claim_lines(load_results([str(c)]))) for c in claims if c.is_dir())
    assert all(len(line) < 125 for line in lines), max(lines, key=len)
    print_claims([])
    assert capsys.readouterr().out == ""


def test_a_grid_short_of_its_planned_pairs_says_its_verdicts_are_interim():
    rows = [_row(m, s, v) for m, vals in {"isd": (85.0, 85.2, 85.1), "moco": (84.1, 84.0, 84.3)}.items()
            for s, v in enumerate(vals)]
    for row in rows:
        row["provenance"] = {"date": "2026-01-01"}
    assert claim_lines(rows, bold=False)[0].startswith("ISD ≥ MoCo-v2 at 20-NN: holds (ISD − MoCo-v2")
    rows[0].update(planned_pairs=3)  # cells written before the budget fixed an n carry none
    assert claim_lines(rows, bold=False)[0].startswith("ISD ≥ MoCo-v2 at 20-NN: holds (ISD − MoCo-v2")
    rows[-1].update(planned_pairs=5, provenance={"date": "2026-02-01"})  # the newest cell's budget speaks
    (line,) = claim_lines(rows, bold=True)
    assert line.startswith("ISD ≥ MoCo-v2 at 20-NN: **holds** (interim: 3 of the 5 seeds its budget reads it at; ISD − MoCo-v2 = +0.97 ")
