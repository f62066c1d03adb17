"""Experiments: data splits, the supervised baseline, plans, `isd experiment` (smoke budgets, resume, claims,
shards), `isd report` and the README's generated results blocks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, single_thread, tiny_values
from isd.cli.main import main
from isd.config import build_config
from isd.data.sources import find_idx_files, load_source
from isd.data.splits import capped, common_class_ids, evaluation_sets, holdout_split, training_images, unbalanced_subset
from isd.errors import UsageError
from isd.experiments.plans import load_plan, select
from isd.experiments.provenance import device_name, provenance
from isd.experiments.report import (chart_names, curve_table, header, load_results, readme_blocks, report, train_seconds,
                                   write_charts)
from isd.experiments.runner import Claim, read_result, run_cells
from isd.methods import Supervised, method_from_config
from isd.train.loop import train

needs_fmnist = pytest.mark.skipif(find_idx_files("fashion-mnist", "") is None, reason="Fashion-MNIST not installed "
                                  "(apt-get install dataset-fashion-mnist)")


# ------------------------------------------------------------------------------------------ splits


def test_holdout_is_disjoint_fixed_and_independent_of_the_run_seed():
    kept, held = holdout_split(1000, 100)
    assert len(held) == 100 and len(kept) == 900
    assert set(kept.tolist()).isdisjoint(held.tolist()) and set(kept.tolist()) | set(held.tolist()) == set(range(1000))
    again_kept, again_held = holdout_split(1000, 100)
    assert torch.equal(held, again_held) and torch.equal(kept, again_kept)
    with pytest.raises(UsageError, match="holdout=1000"):
        holdout_split(1000, 1000)


def test_unbalanced_subset_keeps_common_classes_whole_and_the_rest_at_the_rare_count():
    targets = torch.arange(10).repeat_interleave(60)  # 10 classes x 60 images
    picked = unbalanced_subset(targets, 10, common=3, rare_per_class=5, draw=1)
    counts = torch.bincount(targets[picked], minlength=10)
    common = common_class_ids(10, 3, draw=1)
    assert len(common) == 3
    assert all(counts[c] == (60 if c in common else 5) for c in range(10))
    assert torch.equal(picked, unbalanced_subset(targets, 10, 3, 5, draw=1))  # a draw is reproducible
    assert any(common_class_ids(10, 3, d) != common for d in range(2, 6))  # other draws pick other classes
    with pytest.raises(UsageError, match="common_classes=10"):
        unbalanced_subset(targets, 10, 10, 5, 1)


def test_cap_is_a_fixed_subset():
    assert capped(100, 0) is None and capped(100, 200) is None
    picked = capped(100, 10)
    assert len(picked) == 10 and torch.equal(picked, capped(100, 10)) and torch.equal(picked, picked.sort().values)


def test_training_images_apply_holdout_then_unbalance_then_cap(image_root, tmp_path):
    source = load_source("folder", str(image_root), "train", in_memory="off")  # 2 classes x 4 images
    cfg = build_config(None, tiny_values(image_root, tmp_path, holdout=2))
    kept = training_images(source, cfg)
    bank, queries = evaluation_sets(cfg, "holdout")
    assert len(kept) == 6 and len(queries) == 2 and len(bank) == 6
    assert set(kept.files).isdisjoint(queries.files) and kept.files == bank.files
    cfg = build_config(None, tiny_values(image_root, tmp_path, common_classes=1, rare_per_class=1, max_train_images=3))
    subset = training_images(source, cfg)
    assert len(subset) == 3 and len(set(subset.files)) == 3


# ------------------------------------------------------------------------------------------ supervised


def test_supervised_baseline_is_cross_entropy_on_the_query_view(image_root, tmp_path):
    cfg = build_config(None, tiny_values(image_root, tmp_path, method="supervised"))
    torch.manual_seed(0)
    model = method_from_config(cfg, in_channels=3, stem="small", num_classes=5)
    assert isinstance(model, Supervised) and not hasattr(model, "encoder_k")
    key, query = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 4, 2])
    model.eval()
    loss, stats, after = model(key, query, labels)
    logits = model.encoder_q(query)
    assert logits.shape == (4, 5)
    assert torch.allclose(loss, F.cross_entropy(logits, labels))
    assert stats["train_acc"] == (logits.argmax(1) == labels).float().mean()
    assert not after.update_teacher and after.keys is None  # nothing for after the optimizer step
    loss_other_key = model(torch.zeros_like(key), query, labels).loss  # the key view plays no part
    assert torch.equal(loss, loss_other_key)


def test_supervised_training_learns_and_checkpoints_like_the_other_methods(image_root, tmp_path):
    cfg = build_config(None, tiny_values(image_root, tmp_path, method="supervised", epochs=3, lr=0.1))
    with single_thread():
        setup = train(cfg, log=lambda _: None)
    state = torch.load(tmp_path / "ckpt_last.pth", weights_only=False)["state_dict"]
    assert state["encoder_q.fc.weight"].shape == (2, setup.model.encoder_q.fc.in_features)
    assert not any(k.startswith("encoder_k") for k in state)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["train_acc"] <= 1.0 for r in rows if r["kind"] == "train")


# ------------------------------------------------------------------------------------------ plans


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "plans").glob("*.yaml")), ids=lambda p: p.name)
def test_the_committed_sweep_plans_load(path):
    plan = load_plan(str(path))  # every cell's config resolves
    # sweeps choose recipes on the validation split, never on test; a check (a chosen recipe on a set it was not
    # chosen on) is read on the test split and tunes nothing, and so is the distillation evidence, which compares
    # recipes fixed beforehand
    read_on_test = path.stem.endswith("-check") or path.stem == "cifar10-distill-cpu"
    assert plan.queries == ("test" if read_on_test else "holdout")


def test_shipped_plans_expand_to_their_grids():
    balanced = load_plan("fmnist-balanced")
    assert [c.name for c in balanced.cells("smoke")] == [
        "isd-seed0", "isd-plus-seed0", "byol-seed0", "moco-seed0", "supervised-seed0", "random-init-seed0",
        "raw-pixels-seed0"]
    gpu = balanced.cells("gpu")
    assert len(gpu) == 3 * 6 + 1  # 3 seeds of 5 trained methods and random init, raw pixels once
    assert [c.seed for c in gpu[:7]] == [0] * 7  # seeds outermost: a partial run fills whole seeds
    isd = gpu[0].config(Path("runs/x"))
    assert (isd.method, isd.epochs, isd.seed, isd.blur_prob) == ("isd", 20, 0, 0.0)
    assert gpu[0].eval_images == 0 and balanced.cells("smoke")[0].eval_images == 500  # 0: the whole test set
    unbalanced = load_plan("fmnist-unbalanced")
    cells = unbalanced.cells("gpu")
    assert len(cells) == 10 and {c.draw for c in cells} == {1, 2, 3, 4, 5}
    cfg = cells[0].config(Path("runs/x"))
    assert (cfg.common_classes, cfg.rare_per_class, cfg.draw) == (3, 500, 1)
    assert load_plan("folder").cells("smoke")[0].config(Path("runs/x"), data="d").dataset == "folder"


def test_the_cpu_seeds_budgets_give_every_claim_enough_pairs():
    balanced = load_plan("fmnist-balanced").cells("cpu-seeds")
    for method in ("isd", "isd-plus", "byol", "moco", "supervised", "random-init"):
        assert sorted(c.seed for c in balanced if c.method == method) == [0, 1, 2], method
    isd = next(c for c in balanced if c.method == "isd").config(Path("runs/x"))
    assert (isd.width, isd.epochs, isd.max_train_images, isd.blur_prob, isd.crop_scale) == (16, 2, 32000, 0.5,
                                                                                            (0.5, 1.0))
    unbalanced = load_plan("fmnist-unbalanced").cells("cpu-seeds")
    assert sorted((c.method, c.draw) for c in unbalanced) == [(m, d) for m in ("isd", "moco") for d in range(1, 6)]
    assert all(c.eval_images == 10000 for c in balanced + unbalanced)


def test_the_narrow_cpu_budgets_pair_every_claim_at_one_eighth_width():
    balanced = load_plan("fmnist-balanced").cells("cpu-seeds-w8")
    for method in ("isd", "isd-plus", "byol", "moco", "random-init"):
        assert sorted(c.seed for c in balanced if c.method == method) == list(range(10)), method
    unbalanced = load_plan("fmnist-unbalanced").cells("cpu-seeds-w8")
    assert sorted((c.method, c.draw) for c in unbalanced) == [(m, d) for m in ("isd", "moco") for d in range(1, 21)]
    # the n each budget's verdicts are read at (interim before it): seeds on balanced data, draws on unbalanced
    assert load_plan("fmnist-balanced").planned_pairs("cpu-seeds-w8") == 10
    assert load_plan("fmnist-unbalanced").planned_pairs("cpu-seeds-w8") == 20
    for cell in balanced + unbalanced:
        cfg = cell.config(Path("runs/x"))
        assert (cfg.width, cfg.crop_scale, cfg.blur_prob, cfg.eval_every) == (8, (0.5, 1.0), 0.5, 0), cell.name
        assert cfg.amp == "off", cell.name  # fp32 on every host, so cells from CPUs with and without bf16 pool
        assert cell.eval_images == 0  # the final kNN uses the full bank


def test_the_cpu_recipe_study_runs_its_baseline_and_leading_rows_on_three_seeds():
    plan = load_plan(str(ROOT / "benchmarks" / "plans" / "fmnist-cpu-recipe-study.yaml"))
    seeds = defaultdict(list)
    for cell in plan.cells("cpu-seeds"):
        seeds[cell.method].append(cell.seed)
    assert plan.baseline == "demo"
    leading = {"demo", "batch128", "queue1024", "random-init"}
    assert {m for m, s in seeds.items() if s == [0, 1, 2]} == leading
    assert all(s == [0] for m, s in seeds.items() if m not in leading)


def test_only_and_shard_pick_parts_of_the_grid():
    cells = load_plan("fmnist-balanced").cells("gpu")
    assert [c.name for c in select(cells, "method=isd,seed=1")] == ["isd-seed1"]
    assert {c.method for c in select(cells, "method=isd,method=moco")} == {"isd", "moco"}
    shards = [select(cells, shard=f"{i}/3") for i in (1, 2, 3)]
    assert sorted(c.name for s in shards for c in s) == sorted(c.name for c in cells)
    assert not set(c.name for c in shards[0]) & set(c.name for c in shards[1])
    for bad in ("method", "colour=red"):
        with pytest.raises(UsageError, match="only"):
            select(cells, bad)
    for bad in ("0/3", "4/3", "a/b", "2"):
        with pytest.raises(UsageError, match="shard"):
            select(cells, shard=bad)


@pytest.mark.parametrize("text, message", [
    ("methods: {isd: {recipe: isd-r18-fmnist}}\nbudgets: {smoke: {set: {epochs: 0}}}", "budget 'smoke', cell isd-seed0"),
    ("methods: {isd: {recipe: isd-r18-fmnist, sett: {}}}\nbudgets: {smoke: {}}", "unknown keys"),
    ("methods: {isd: {floor: pixels}}\nbudgets: {smoke: {}}", "floor must be"),
    ("methods: {isd: {recipe: no-such-recipe}}\nbudgets: {smoke: {}}", "unknown recipe"),
    ("budgets: {smoke: {}}", "needs a 'methods'"),
    ("methods: {isd: {recipe: isd-r18-fmnist}}\nbudgets: {smoke: {eval_max: 5}}", "budget 'smoke': unknown keys"),
    ("methods: {isd: {recipe: isd-r18-fmnist}}\nbudgets: {smoke: {eval_images: many}}", "eval_images must be"),
    ("methods: {isd: {}}\nqueries: train\nbudgets: {smoke: {}}", "queries must be"),
    ("methods: {isd: {recipe: isd-r18-fmnist, set: {epochs: 4}}}\nbudgets: {smoke: {set: {epochs: 1}}}",
     "method 'isd' sets epochs, which budget 'smoke' sets too, and the budget's value wins"),
    ("methods: {isd: {recipe: isd-r18-fmnist}, px: {floor: raw-pixels}}\nbaseline: px\nbudgets: {smoke: {}}",
     "baseline 'px' must name one of its trained rows: isd"),
    ("methods: [", "not valid YAML"),
])
def test_a_bad_plan_is_refused_whole_before_anything_runs(tmp_path, text, message):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_plan(str(path))


def test_experiment_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["experiment", "no-such-plan"]) == 2
    assert "unknown plan 'no-such-plan'" in capsys.readouterr().err
    assert main(["experiment", "fmnist-balanced", "--only", "method=nothing", "--out", str(tmp_path)]) == 2
    assert "no cell" in capsys.readouterr().err
    assert main(["experiment", "fmnist-balanced", "--jobs", "0"]) == 2
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no result.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ running


def test_provenance_names_code_machine_and_command(monkeypatch):
    info = provenance(torch.device("cpu"))
    assert info["torch"] == torch.__version__ and info["device"].startswith("CPU")
    assert len(info["commit"] or "") == 40 and isinstance(info["dirty"], bool)  # the tests run from a git checkout
    monkeypatch.setenv("ISD_GIT_COMMIT", "abc123")
    assert provenance(torch.device("cpu"))["commit"] == "abc123"


def test_dirty_means_code_not_the_reports_a_running_grid_rewrites(tmp_path, monkeypatch):
    from isd.experiments import provenance as provenance_module

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                        "-c", "commit.gpgsign=false", *args], check=True, capture_output=True)

    code, report_file = tmp_path / "src" / "code.py", tmp_path / "benchmarks" / "results" / "plan" / "report.md"
    for path, text in ((code, "a = 1\n"), (report_file, "n = 3\n")):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    monkeypatch.delenv("ISD_GIT_COMMIT", raising=False)
    monkeypatch.setattr(provenance_module, "_checkout_root", lambda: tmp_path)
    assert provenance_module.code_version()["dirty"] is False
    report_file.write_text("n = 4\n")  # what the runner does after each cell
    assert provenance_module.code_version()["dirty"] is False
    code.write_text("a = 2\n")
    assert provenance_module.code_version()["dirty"] is True


def test_a_live_claim_keeps_a_cell_and_a_dead_one_is_taken_over(tmp_path):
    plan = load_plan("fmnist-balanced")
    cell = plan.cells("smoke")[-1]  # raw pixels: no training, but the claim logic is the same
    claim = Claim(tmp_path / cell.name)
    assert claim.acquire()  # held by this (live) process
    assert not Claim(tmp_path / cell.name).acquire()
    assert run_cells(plan, [cell], tmp_path, say=lambda _: None) == []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim.path.write_text(f"{claim.mine.split()[0]} {dead.stdout.strip()}")
    assert Claim(tmp_path / cell.name).acquire()


@needs_fmnist
def test_smoke_experiments_write_results_tables_and_charts_and_a_rerun_skips_them(tmp_path, capsys):
    balanced, unbalanced = tmp_path / "balanced", tmp_path / "unbalanced"
    with single_thread():
        assert main(["experiment", "fmnist-balanced", "--budget", "smoke", "--out", str(balanced)]) == 0
        assert main(["experiment", "fmnist-unbalanced", "--budget", "smoke", "--out", str(unbalanced)]) == 0
    printed = capsys.readouterr().out
    results = {p.parent.name: json.loads(p.read_text()) for p in balanced.glob("*/result.json")}
    assert set(results) == {"isd-seed0", "isd-plus-seed0", "byol-seed0", "moco-seed0", "supervised-seed0",
                            "random-init-seed0", "raw-pixels-seed0"}
    isd = results["isd-seed0"]
    for key in ("knn1", "knn20", "knn_weighted", "linear", "linear_top5", "linear_best"):
        assert 0 <= isd["metrics"][key] <= 100
    assert len(isd["per_class"]["knn20"]) == len(isd["per_class"]["linear"]) == 10
    assert isd["train"]["images"] == 512 and isd["train"]["images_per_s"] > 0 and isd["train"]["history"]
    assert isd["provenance"]["commit"] and isd["config"]["method"] == "isd" and isd["config"]["epochs"] == 1
    assert results["raw-pixels-seed0"]["train"] == {} and results["raw-pixels-seed0"]["eval"]["dim"] == 784
    assert results["supervised-seed0"]["trained_method"] == "supervised"
    # the tables: every method once, in the printed output and in report.md, and the charts
    for name in ("ISD", "ISD+", "BYOL-asym", "MoCo-v2", "supervised (ceiling)", "random init (floor)"):
        assert f"| {name} | 1 |" in printed
    for chart in ("accuracy", "per_class", "curves"):
        assert (balanced / f"{chart}.png").read_bytes()[:4] == b"\x89PNG"
    assert (unbalanced / "rare.png").read_bytes()[:4] == b"\x89PNG"
    unb = json.loads((unbalanced / "isd-draw2-seed0" / "result.json").read_text())
    assert len(unb["rare_classes"]) == 7 and len(unb["common_classes"]) == 3
    assert unb["train"]["images"] == 512 and unb["eval"]["bank"] == 500
    assert "| D1 |" in printed and "| D2 |" in printed and "ISD − MoCo-v2 rare" in printed
    # a second run trains nothing: every cell has its result
    stamps = {p: p.stat().st_mtime_ns for p in balanced.glob("*/result.json")}
    assert main(["experiment", "fmnist-balanced", "--budget", "smoke", "--out", str(balanced)]) == 0
    assert "7 of 7 cells finished" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in balanced.glob("*/result.json")}


@needs_fmnist
def test_an_unfinished_cell_resumes_from_its_checkpoint(tmp_path, capsys):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text("methods: {isd: {recipe: isd-r18-fmnist}}\nbudgets:\n  smoke:\n    set: {epochs: 2, "
                         "width: 8, batch_size: 128, queue_size: 256, max_train_images: 256, eval_max_images: 300, "
                         "num_workers: 0}\n    eval_images: 300\n")
    plan = load_plan(str(plan_file))
    cell = plan.cells("smoke")[0]
    first = cell.config(tmp_path / "exp" / cell.name)

    def killed_in_epoch_2(setup, epoch, runlog):  # before epoch 2's checkpoint: only epoch 1's is there
        if epoch == 2:
            raise KeyboardInterrupt

    with single_thread():
        with pytest.raises(KeyboardInterrupt):
            train(first, log=lambda _: None, on_epoch_end=killed_in_epoch_2)
        assert main(["experiment", str(plan_file), "--budget", "smoke", "--out", str(tmp_path / "exp")]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 1" in out
    result = read_result(tmp_path / "exp" / cell.name)
    assert result["config"]["epochs"] == 2


# ------------------------------------------------------------------------------------------ README


@pytest.mark.parametrize("doc", ["README.md", "docs/results.md"])
def test_the_readme_results_blocks_are_what_isd_report_makes_of_the_committed_files(doc, monkeypatch):
    """Every table in the generated blocks of the README and docs/results.md comes from committed result files
    and this code; the chart links are relative to the file and lead to the committed charts."""
    monkeypatch.chdir(ROOT)
    blocks = readme_blocks((ROOT / doc).read_text())
    assert blocks, f"{doc} has no generated results block"
    for folders, body in blocks:
        assert all(f.startswith("benchmarks/results/") for f in folders)
        assert body == report(folders, write=False, link_from=(ROOT / doc).parent), \
            f"{doc} block for {folders} is stale: run `isd report --readme {doc}`"
        for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", body):
            assert ((ROOT / doc).parent / link).is_file(), f"{doc}: {link} does not exist"


def test_cells_evaluated_only_at_the_end_get_no_empty_training_curve(tmp_path):
    rows = load_results([str(ROOT / "benchmarks/results/experiments/fmnist-balanced-cpu-seeds")])
    assert rows and not any(r["train"].get("history") for r in rows)  # the cpu-seeds budget: eval_every 0
    assert chart_names(rows) == ["accuracy", "per_class"]
    (tmp_path / "curves.png").write_bytes(b"stale")
    written = write_charts(rows, tmp_path)
    assert [p.name for p in written] == ["accuracy.png", "per_class.png"] and not (tmp_path / "curves.png").exists()
    with_history = [dict(rows[0], train={**rows[0]["train"], "history": [{"epoch": 1, "seconds": 60.0,
                                                                           "student_20nn": 70.0}]})]
    assert chart_names(with_history) == ["accuracy", "per_class", "curves"]
    assert chart_names([dict(rows[0], rare_classes=[3])]) == ["accuracy", "rare"]


def test_a_single_seed_rows_training_curve_is_tabled_beside_its_final_score_and_the_floors():
    rows = load_results([str(ROOT / "benchmarks/results/experiments/fmnist-balanced-cpu-seeds")])
    isd, raw = next(r for r in rows if r["method"] == "isd"), next(r for r in rows if r["method"] == "raw-pixels")
    checks = [{"epoch": e, "seconds": 60.0 * e, "student_20nn": 70.0 + e, "teacher_20nn": 71.0 + e} for e in (1, 2, 3)]
    curved = dict(isd, train={**isd["train"], "seconds": 150.0, "history": checks},
                  config={**isd["config"], "eval_max_images": 5000})
    table = curve_table([curved, raw]).splitlines()
    assert table[2] == "| 1 | 1.0 · 71.00 · 72.00 |" and table[4] == "| 3 | 3.0 · 73.00 · 74.00 |"
    assert table[5] == f"| final, full bank | 3.0 · {isd['metrics']['knn20']:.2f} |"  # train time: the curve's clock
    assert "5,000 of the training images" in table[-1] and f"raw pixels (floor) {raw['metrics']['knn20']:.2f}" in table[-1]
    assert curve_table([dict(curved, train={**curved["train"], "history": checks[:2]})]) == ""  # too short a curve
    assert curve_table([curved, dict(curved, seed=1)]) == ""  # several seeds of a row: the chart, not a table


def test_a_budget_grown_over_sessions_is_described_by_its_newest_cells_note():
    rows = load_results([str(ROOT / "benchmarks/results/experiments/fmnist-balanced-cpu-seeds")])
    old = [dict(r, budget_about="3 seeds") for r in rows]
    newer = dict(rows[-1], budget_about="5 seeds", provenance={**rows[-1]["provenance"], "date": "2099-01-01T00:00:00"})
    for order in ([*old, newer], [newer, *old]):
        assert header("fmnist-balanced", "cpu-seeds", order).startswith("**fmnist-balanced**, budget `cpu-seeds` (5 seeds)")


def test_a_grid_spread_over_two_machines_says_so_and_counts_cells_per_machine():
    rows = load_results([str(ROOT / "benchmarks/results/experiments/fmnist-balanced-cpu-seeds")])
    one = header("fmnist-balanced", "cpu-seeds", rows)
    assert "Machine: " in one and "Machines:" not in one and "means over cells" not in one
    moved = [dict(r, provenance={**r["provenance"], "device": "CPU: Other (AVX512), 2 threads"}) for r in rows[:2]]
    two = header("fmnist-balanced", "cpu-seeds", [*moved, *rows[2:]])
    assert "CPU: Other (AVX512), 2 threads (2 cells)" in two
    assert f"{rows[2]['provenance']['device']} ({len(rows) - 2} cells)" in two
    assert "Train time and images/s are means over cells of these machines" in two


def test_a_resumed_cells_train_time_counts_from_its_first_start():
    # the resumed process ran 40 s; the kNN curve's clock, carried in the checkpoint's folder, says 300 s in all
    resumed = {"seconds": 40.0, "history": [{"epoch": 1, "seconds": 150.0}, {"epoch": 2, "seconds": 300.0}]}
    assert train_seconds(resumed) == 300.0
    assert train_seconds({"seconds": 40.0, "history": []}) == 40.0


def test_report_regenerates_readme_blocks_in_place(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    folder = "benchmarks/results/experiments/fmnist-unbalanced-gpu"
    readme = tmp_path / "R.md"
    readme.write_text(f"# title\n<!-- begin: isd report {folder} -->\nstale\n<!-- end: isd report -->\ntail\n")
    assert main(["report", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale" not in text and text.startswith("# title\n") and text.endswith("tail\n")
    assert "| D1 |" in text and readme_blocks(text)[0][1] == report([folder], write=False, link_from=tmp_path)
    assert f"]({Path(os.path.relpath(ROOT / folder, tmp_path)).as_posix()}/accuracy.png)" in text


def test_a_cell_started_with_another_config_is_not_resumed(tmp_path, capsys):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text("methods: {isd: {recipe: isd-r18-fmnist}}\nbudgets:\n  smoke:\n    set: {epochs: 2, "
                         "width: 8}\n")
    cell = load_plan(str(plan_file)).cells("smoke")[0]
    run_dir = tmp_path / "exp" / cell.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("epochs: 4\nwidth: 8\nnum_workers: 3\n")
    assert main(["experiment", str(plan_file), "--budget", "smoke", "--out", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err
    assert "started with another config (epochs 4 -> 2)" in err and "num_workers" not in err


# ------------------------------------------------------------------------------------------ demo


@needs_fmnist
def test_the_demo_ends_with_its_table_its_curve_and_the_committed_gpu_headline(tmp_path, capsys):
    argv = ["demo", "--run-dir", str(tmp_path), "--set", "epochs=1", "--set", "width=8", "--set",
            "max_train_images=512", "--set", "batch_size=128", "--set", "queue_size=512", "--set", "eval_max_images=500",
            "--more"]
    with single_thread():
        assert main(argv) == 0
        report = json.loads((tmp_path / "demo.json").read_text())
        here = device_name(torch.device(report["device"]))  # the thread count it names is the run's
    out = capsys.readouterr().out
    assert set(report["floors"]) == {"raw pixels", "random init encoder"}
    assert f"{report['isd']['20-NN']:6.2f}%" in out  # the table prints what demo.json holds
    # where it ran (the demo picks the GPU when there is one, so compare with the device it reports)
    assert report["config"]["epochs"] == 1
    assert report["provenance"]["device"] == here
    assert "kNN during training" in out and str(tmp_path / "curves.png") in out and (tmp_path / "curves.png").is_file()
    assert "What longer runs reach" in out and "budget gpu" in out and "NVIDIA H200" in out
    chosen = out.split("net was chosen", 1)[1].split("What longer runs reach", 1)[0]  # the CPU study behind it
    assert "budget cpu " in chosen and "held-out validation split" in chosen and "w32-stem7-8ep" in chosen
    committed = [json.loads(p.read_text())["metrics"]["knn20"]
                 for p in (ROOT / "benchmarks/results/experiments/fmnist-balanced-gpu").glob("isd-seed*/result.json")]
    committed_part = out.split("What longer runs reach", 1)[1]  # the demo's own table also has an "ISD" row
    isd_line = next(line for line in committed_part.splitlines() if line.strip().startswith("ISD "))
    assert f"{sum(committed) / len(committed):.2f}" in isd_line and f"(n={len(committed)})" in isd_line
