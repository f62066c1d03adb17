"""Hostile image folders: every exotic image decodes to the expected pixels, every bad file is skipped,
counted and listed, and a folder holding one of each still trains."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import isd.data.decode as decode
from conftest import single_thread, tiny_values, write_image_folder
from isd.config import build_config
from isd.data.decode import BACKGROUND, open_rgb
from isd.runtime import ignore_stop_signals
from isd.data.sources import image_folder
from isd.errors import UsageError
from isd.train.loop import train

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root reads chmod-000 files


def pixels(path) -> list:
    img = open_rgb(path)
    assert img.mode == "RGB"
    return np.asarray(img).reshape(-1, 3).tolist()


def save(tmp_path, img: Image.Image, name: str, **kwargs) -> Path:
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


# ------------------------------------------------------------------------------------------ decoding


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    png = save(tmp_path, Image.fromarray(values), "g16.png")
    assert Image.open(png).mode == "I;16"
    assert pixels(png) == [[0] * 3, [1] * 3, [128] * 3, [255] * 3]
    big_endian = save(tmp_path, Image.fromarray(values.astype(">u2")), "g16b.tif")
    assert Image.open(big_endian).mode == "I;16B" and pixels(big_endian) == pixels(png)
    as_int32 = save(tmp_path, Image.fromarray(values.astype(np.int32)), "g32.tif")
    assert Image.open(as_int32).mode == "I" and pixels(as_int32) == pixels(png)


def test_float_images(tmp_path):
    unit = save(tmp_path, Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), "unit.tif")
    assert Image.open(unit).mode == "F" and pixels(unit) == [[0] * 3, [128] * 3, [255] * 3]
    wide = save(tmp_path, Image.fromarray(np.array([[-3.0, 100.4, 300.0]], dtype=np.float32)), "wide.tif")
    assert pixels(wide) == [[0] * 3, [100] * 3, [255] * 3]


def test_cmyk(tmp_path):
    colours = [(0, 0, 0, 0), (0, 0, 0, 255), (255, 0, 0, 0)]
    img = Image.new("CMYK", (3, 1))
    for x, c in enumerate(colours):
        img.putpixel((x, 0), c)
    assert pixels(save(tmp_path, img, "cmyk.tif")) == [[255, 255, 255], [0, 0, 0], [0, 255, 255]]
    jpeg = save(tmp_path, Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "cmyk.jpg", quality=100)
    assert Image.open(jpeg).mode == "CMYK" and pixels(jpeg) == [[255, 255, 255]] * 256


def test_alpha_is_composited_over_the_background(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [0, 255, 0, 255], [0, 0, 255, 128]]], dtype=np.uint8)
    got = pixels(save(tmp_path, Image.fromarray(rgba), "rgba.png"))
    assert got[:2] == [list(BACKGROUND), [0, 255, 0]]  # the red under alpha 0 never shows
    half = [b * 127 / 255 + v * 128 / 255 for b, v in zip(BACKGROUND, (0, 0, 255))]  # 63.75, 63.75, 191.75
    assert np.allclose(got[2], half, atol=1)
    la = save(tmp_path, Image.fromarray(np.array([[[200, 0], [200, 255]]], dtype=np.uint8), "LA"), "la.png")
    assert pixels(la) == [list(BACKGROUND), [200] * 3]


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.putpixel((1, 0), 1)
    png = save(tmp_path, img, "p.png", transparency=0)  # index 0 (red) transparent
    assert Image.open(png).mode == "P" and pixels(png) == [list(BACKGROUND), [0, 0, 255]]
    gif = save(tmp_path, img, "p.gif", transparency=0)
    assert pixels(gif) == [list(BACKGROUND), [0, 0, 255]]
    pa = Image.new("PA", (1, 1), (1, 0))
    pa.putpalette([255, 0, 0, 0, 0, 255])
    assert pixels(save(tmp_path, pa.convert("RGBA"), "pa.png")) == [list(BACKGROUND)]


def test_one_bit_and_multi_frame(tmp_path):
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    assert pixels(save(tmp_path, one, "one.bmp")) == [[0] * 3, [255] * 3]
    frames = [Image.new("RGB", (2, 2), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = save(tmp_path, frames[0], "anim.gif", save_all=True, append_images=frames[1:])
    assert Image.open(gif).n_frames == 3 and pixels(gif) == [[255, 0, 0]] * 4
    tif = save(tmp_path, frames[1], "pages.tif", save_all=True, append_images=frames[2:])
    assert pixels(tif) == [[0, 255, 0]] * 4


def test_plain_images_decode_as_before(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    jpeg = save(tmp_path, Image.fromarray(rgb), "plain.jpg")
    with Image.open(jpeg) as img:
        assert np.array_equal(np.asarray(open_rgb(jpeg)), np.asarray(img.convert("RGB")))
    assert np.array_equal(np.asarray(open_rgb(save(tmp_path, Image.fromarray(rgb), "plain.png"))), rgb)


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "DRAFT_SIDE", 16)  # stands for 2048: the same rule on a small file
    jpeg = save(tmp_path, Image.new("RGB", (130, 70), (10, 200, 30)), "huge.jpg")
    img = open_rgb(jpeg)
    assert img.size == (33, 18)  # 1/4 (70 // 16 = 4), rounded up
    assert all(abs(a - b) <= 3 for a, b in zip(img.getpixel((5, 5)), (10, 200, 30)))
    assert open_rgb(save(tmp_path, Image.new("RGB", (130, 20)), "wide.jpg")).size == (130, 20)  # short side < 32
    assert open_rgb(save(tmp_path, Image.new("RGB", (130, 70)), "huge.png")).size == (130, 70)  # JPEG only


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning):  # between 1x and 2x the limit: PIL warns, it decodes
        assert open_rgb(save(tmp_path, Image.new("RGB", (40, 40)), "big.png")).size == (40, 40)
    with pytest.raises(Image.DecompressionBombError):
        open_rgb(save(tmp_path, Image.new("RGB", (50, 50)), "bomb.png"))


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"GIF89a not really", b"just some text\n"])
def test_non_images_raise(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(Exception):
        open_rgb(path)


def test_truncated_images_raise(tmp_path):
    for name in ("t.jpg", "t.png"):
        path = save(tmp_path, Image.fromarray(np.full((64, 64, 3), 7, np.uint8)), name)
        path.write_bytes(path.read_bytes()[:-60])
        with pytest.raises(OSError):
            open_rgb(path)


def test_what_is_no_regular_file_raises(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    os.symlink("gone.jpg", tmp_path / "dangling.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")  # opening it would wait for a writer forever
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    for name in ("dir.jpg", "dangling.jpg", "missing.jpg", "fifo.jpg", "zero.jpg"):
        with pytest.raises(OSError):
            open_rgb(tmp_path / name)


# ------------------------------------------------------------------------------------------ listing


def test_symlink_loops_are_listed_once(tmp_path):
    write_image_folder(tmp_path / "train", classes=2, per_class=2)
    nested = tmp_path / "train" / "class0" / "nested"
    nested.mkdir()
    Image.new("RGB", (8, 8)).save(nested / "n.png")
    os.symlink(".", tmp_path / "train" / "class0" / "self")  # a link to the folder that holds it
    os.symlink(".", tmp_path / "train" / "class0" / "self2")  # two: 2**40 paths for torchvision's make_dataset
    os.symlink("..", nested / "up")
    os.symlink("../..", nested / "root")
    (tmp_path / "extra").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "extra" / "e.png")
    os.symlink("../extra", tmp_path / "extra" / "again")
    os.symlink("../../extra", tmp_path / "train" / "class1" / "borrowed")  # no loop: followed, like torchvision
    files = [os.path.relpath(f, tmp_path / "train") for f in image_folder(tmp_path / "train").files]
    assert files == ["class0/0.png", "class0/1.png", "class0/nested/n.png",
                     "class1/0.png", "class1/1.png", "class1/borrowed/e.png"]


def test_a_class_folder_linked_to_the_root_is_an_empty_class(tmp_path):
    write_image_folder(tmp_path / "train", classes=1, per_class=2)
    os.symlink(".", tmp_path / "train" / "loop")
    with pytest.raises(UsageError, match="class folder.s. loop; remove the empty class folder"):
        image_folder(tmp_path / "train")


@pytest.mark.skipif(AS_ROOT, reason="root reads chmod-000 files and folders")
def test_unreadable_files_are_listed_and_unreadable_folders_logged(tmp_path, caplog):
    write_image_folder(tmp_path / "train", classes=1, per_class=2)
    locked_file = tmp_path / "train" / "class0" / "locked.png"
    Image.new("RGB", (8, 8)).save(locked_file)
    locked_dir = tmp_path / "train" / "class0" / "locked"
    locked_dir.mkdir()
    Image.new("RGB", (8, 8)).save(locked_dir / "hidden.png")
    locked_file.chmod(0)
    locked_dir.chmod(0)
    try:
        with caplog.at_level(logging.WARNING, logger="isd.data.sources"):
            files = image_folder(tmp_path / "train").files
        assert str(locked_file) in files and not any("hidden" in f for f in files)
        assert f"cannot list {locked_dir}" in caplog.text
        with pytest.raises(PermissionError):
            open_rgb(locked_file)
    finally:
        locked_dir.chmod(0o755)
        locked_file.chmod(0o644)


# ------------------------------------------------------------------------------------------ training


def test_workers_ignore_the_stop_signals():
    """The main process checkpoints on SIGINT/SIGTERM/SIGUSR1; its DataLoader workers must not die of them."""

    class Handlers(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, _):
            return [signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]

    loader = torch.utils.data.DataLoader(Handlers(), num_workers=1, worker_init_fn=ignore_stop_signals,
                                         collate_fn=lambda batch: batch[0])
    assert next(iter(loader)) == [True, True, True]


def hostile_folder(train: Path) -> tuple[list[Path], list[Path]]:
    """20 files: write_image_folder's 6 PNGs, 8 exotic images that decode and 6 bad files (7 unless root, where
    one of the PNGs is chmod 000); returns (exotic, bad). 20 = 5 batches of 4: each file is read in the epoch."""
    write_image_folder(train, classes=2, per_class=3)
    c0, c1 = train / "class0", train / "class1"
    wave = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    colour = np.random.default_rng(1).integers(0, 256, (40, 40, 4), dtype=np.uint8)
    palette = Image.fromarray(colour[..., :3]).quantize(16)
    exotic = [save(c0, Image.new("CMYK", (40, 40), (0, 200, 100, 20)), "cmyk.jpg"),
              save(c0, Image.fromarray((wave * 65535).astype(np.uint16)), "gray16.png"),
              save(c0, palette, "palette.png", transparency=3),
              save(c0, Image.fromarray(colour), "rgba.png"),
              save(c1, Image.fromarray(wave), "float.tif"),
              save(c1, Image.fromarray(colour[..., :3]).convert("1"), "bits.bmp"),
              save(c1, palette, "anim.png", save_all=True, append_images=[palette.rotate(90)]),  # APNG
              save(c1, Image.new("RGB", (50, 50), (1, 2, 3)), "large.png")]  # > MAX_IMAGE_PIXELS, < 2x: decoded
    bad = [c0 / "corrupt.jpg", c0 / "truncated.jpg", c1 / "empty.jpg", c1 / "text.png", c1 / "bomb.jpg",
           c1 / "fifo.jpg"]
    bad[0].write_bytes(bytes(np.random.default_rng(2).integers(0, 256, 2000, dtype=np.uint8)))
    Image.fromarray(colour[..., :3]).save(bad[1])
    bad[1].write_bytes(bad[1].read_bytes()[:300])
    bad[2].write_bytes(b"")
    bad[3].write_text("not a picture\n")
    Image.new("RGB", (80, 80)).save(bad[4])  # > 2 x MAX_IMAGE_PIXELS: a decompression bomb
    os.mkfifo(bad[5])
    os.symlink(".", c0 / "loop")
    os.symlink("..", c1 / "up")
    if not AS_ROOT:
        bad.append(c1 / "2.png")
        bad[-1].chmod(0)
    return exotic, bad


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_device_pipeline_decodes_every_exotic_image_as_the_workers_do(tmp_path, monkeypatch):
    exotic, _ = hostile_folder(tmp_path / "train")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    images = decode.decode_all([decode.encoded_or_rgb(path) for path in exotic], torch.device("cpu"))
    for path, image in zip(exotic, images):
        assert image is not None, path.name
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(open_rgb(path))), path.name


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("pipeline", ["workers", "device"])
def test_training_on_a_hostile_folder(tmp_path, monkeypatch, capsys, pipeline):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    exotic, bad = hostile_folder(data / "train")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 40x40 plain, 50x50 warns, 80x80 is a bomb
    source = image_folder(data / "train")
    assert sorted(source.files) == sorted(map(str, [*data.glob("train/*/*.*")]))  # once each, loops not entered
    assert len(source) == 6 + len(exotic) + len(bad) - (not AS_ROOT) == 20  # the locked file is a plain PNG
    with single_thread():
        train(build_config(None, tiny_values(data, run_dir, epochs=1, max_bad_fraction=0.5, data_pipeline=pipeline)),
              log=print)
    assert (run_dir / "ckpt_epoch_1.pth").is_file()
    listed = (run_dir / "bad_files.txt").read_text().splitlines()
    assert sorted(listed) == sorted(f"epoch 1\t{path}" for path in bad)
    assert f"epoch 1: {len(bad)} unreadable image(s) skipped" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("pipeline", ["workers", "device"])
def test_too_many_bad_files_still_stop_the_run(tmp_path, monkeypatch, pipeline):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    _, bad = hostile_folder(data / "train")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    with single_thread(), pytest.raises(UsageError, match=f"{len(bad)} of 20 images read in epoch 1 were unr"):
        train(build_config(None, tiny_values(data, run_dir, epochs=1, max_bad_fraction=0.2, data_pipeline=pipeline)),
              log=lambda _: None)
