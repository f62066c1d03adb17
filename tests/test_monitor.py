"""`--eval-every`: kNN of student and teacher during training, into log.jsonl, knn_history.json, curves.png."""

from __future__ import annotations

import json

from isd.cli import main
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
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        for key in ("student_1nn", "student_20nn", "teacher_1nn", "teacher_20nn"):
            assert 0.0 <= row[key] <= 100.0
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum(1 for row in evals if row["kind"] == "eval") == 2
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
