"""`--eval-every`: kNN of student and teacher during training, into log.jsonl, knn_history.json, curves.png."""

from __future__ import annotations

import json

from isd.cli.main import main
from conftest import TINY, single_thread, write_image_folder


def test_eval_every_writes_student_and_teacher_curves(tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(data / "train", classes=2, per_class=4)
    write_image_folder(data / "val", classes=2, per_class=2, seed=3)
    run = tmp_path / "run"
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    with single_thread():
        code = main(["train", str(data), "--epochs", "2", "--eval-every", "1", "--run-dir", str(run), *sets])
    assert code == 0
    history = json.loads((run / "knn_history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2]  # 0: the initial weights, before the first step
    for row in history:
        for key in ("student_1nn", "student_20nn", "teacher_1nn", "teacher_20nn"):
            assert 0.0 <= row[key] <= 100.0
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum(1 for row in evals if row["kind"] == "eval") == 3
    assert (run / "curves.png").stat().st_size > 1000
    assert "epoch 2 kNN: student_1nn" in capsys.readouterr().out


def test_eval_every_without_val_split_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(data / "train", classes=2, per_class=4)
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    code = main(["train", str(data), "--epochs", "1", "--eval-every", "1", "--run-dir", str(tmp_path / "r"), *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--eval-every needs a labelled val split" in err[0] and "val" in err[0]


def test_eval_every_with_subset_file_labels_queries_as_the_bank(tmp_path, monkeypatch):
    """--subset-file keeps classes 1 and 2 of the train split, renumbered 0 and 1: the val queries must be cut to
    those classes and numbered the same way, or every query is scored against the wrong class."""
    import isd.eval.monitor as monitor

    data = tmp_path / "data"
    write_image_folder(data / "train", classes=3, per_class=4)
    write_image_folder(data / "val", classes=3, per_class=2, seed=3)
    (tmp_path / "subset.txt").write_text("class1\nclass2\n")
    seen = []
    real = monitor.knn_of

    def watch(encoded, num_classes, *args, **kwargs):
        seen.append((encoded.bank_y.tolist(), encoded.query_y.tolist(), num_classes))
        return real(encoded, num_classes, *args, **kwargs)

    monkeypatch.setattr(monitor, "knn_of", watch)
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    with single_thread():
        code = main(["train", str(data), "--epochs", "1", "--eval-every", "1", "--run-dir", str(tmp_path / "run"),
                     "--subset-file", str(tmp_path / "subset.txt"), *sets])
    assert code == 0 and len(seen) == 4  # student and teacher, at epochs 0 and 1
    for bank_y, query_y, num_classes in seen:
        assert num_classes == 2 and sorted(set(bank_y)) == [0, 1]
        assert query_y == [0, 0, 1, 1]  # val/class1 then val/class2; class0's images left out
