"""`isd neighbors` and `isd clusters`: the pictures are drawn from real checkpoints; k-means finds clusters."""

from __future__ import annotations

import pytest
import torch

from conftest import single_thread, tiny_values
from isd.cli.main import main
from isd.config import build_config
from isd.eval.figures import kmeans
from isd.train.loop import train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_kmeans_recovers_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 16) * 10
    x = torch.cat([c + torch.randn(50, 16, generator=gen) for c in centres])
    assign, centroids = kmeans(x, 4, seed=1)
    truth = torch.arange(4).repeat_interleave(50)
    for c in range(4):  # each true cluster lands in one k-means cluster, and the four are different
        assert len(set(assign[truth == c].tolist())) == 1
    assert len(set(assign.tolist())) == 4
    assert torch.allclose(centroids.norm(dim=1), torch.ones(4))


def is_png(path) -> bool:
    return path.read_bytes()[:4] == b"\x89PNG"


def test_neighbors_and_clusters_draw_from_a_training_checkpoint(isd_run, image_root, tmp_path, capsys):
    ckpt = isd_run / "ckpt_last.pth"
    assert main(["neighbors", str(ckpt), str(image_root), "--anchors", "16", "--queries", "2", "--top", "3",
                 "-o", str(tmp_path / "n.png"), "--device", "cpu"]) == 0
    assert is_png(tmp_path / "n.png")
    assert main(["clusters", str(ckpt), str(image_root), "-k", "2", "--images", "8", "--per-row", "3",
                 "-o", str(tmp_path / "c.png"), "--device", "cpu"]) == 0
    assert is_png(tmp_path / "c.png") and "purity" in capsys.readouterr().out


def test_neighbors_needs_an_isd_checkpoint_and_says_so(image_root, tmp_path, capsys):
    run = tmp_path / "byol"
    with single_thread():
        train(build_config(None, tiny_values(image_root, run, method="byol", epochs=1)), log=lambda _: None)
    capsys.readouterr()
    assert main(["neighbors", str(run / "ckpt_last.pth"), str(image_root), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "not an ISD / ISD+ training checkpoint" in err and len(err.strip().splitlines()) == 1
    assert main(["clusters", str(run / "ckpt_last.pth"), str(image_root), "-k", "2", "--images", "8",
                 "-o", str(tmp_path / "b.png"), "--device", "cpu"]) == 0  # any backbone clusters


@pytest.mark.parametrize("argv, message", [
    (["neighbors", "CKPT", "DATA", "--top", "0"], "--top must be in"),
    (["neighbors", "CKPT", "DATA", "-o", "x.jpg"], "must be a .png"),
    (["clusters", "CKPT", "DATA", "-k", "1"], "--clusters must be in"),
    (["clusters", "CKPT", "DATA", "-k", "5", "--images", "4"], "at least the number of clusters"),
    (["clusters", "CKPT", "DATA", "--images", "1"], "--images must be in"),
    (["clusters", "CKPT"], "no data folder"),
])
def test_figure_commands_answer_bad_values_in_one_line(isd_run, image_root, capsys, argv, message):
    argv = [str(isd_run / "ckpt_last.pth") if a == "CKPT" else str(image_root) if a == "DATA" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
