"""The device pipeline for image files (`data_pipeline: device`): workers read, the training device decodes JPEGs in
one batched call and augments whole batches with per-sample parameters. Everything here runs on the CPU, which
takes the same code path as a GPU (only the device differs)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms.v2 import RandomResizedCrop

import isd.data.batch_augment as A
from conftest import single_thread, tiny_values, write_image_folder
from isd.config import build_config
from isd.data.batches import DeviceFileLoader, FileLoader, batches_of, decode_on_device
from isd.data.decode import decode_all, encoded_or_rgb, open_rgb
from isd.data.sources import IMAGENET_MEAN, IMAGENET_STD, image_folder
from isd.train.loop import train

CPU = torch.device("cpu")
SIZES = [(375, 500), (500, 375), (60, 300), (224, 224)]  # (height, width): landscape, portrait, very wide, square


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    points = torch.cat([a, b]).unique()
    cdf = [torch.searchsorted(x.sort().values, points, right=True) / len(x) for x in (a, b)]
    return float((cdf[0] - cdf[1]).abs().max())


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


# ------------------------------------------------------------------------------------------ crop parameters


def test_per_sample_sizes_draw_the_crops_of_random_resized_crop():
    """Each sample's box fits its own image, and the scale and aspect-ratio distributions are torchvision's."""
    n, g = 4000, torch.Generator().manual_seed(0)
    for h, w in SIZES:
        heights, widths = torch.full((n,), float(h)), torch.full((n,), float(w))
        boxes = A.sample_crop_boxes(n, heights, widths, (0.2, 1.0), (3 / 4, 4 / 3), generator=g)
        top, left, bh, bw = boxes.unbind(1)
        assert torch.equal(boxes, boxes.round()) and (top >= 0).all() and (left >= 0).all()
        assert (top + bh <= h).all() and (left + bw <= w).all()
        torch.manual_seed(0)
        rrc, image = RandomResizedCrop(224, scale=(0.2, 1.0)), torch.zeros(3, h, w)
        ref = torch.tensor([[p["height"], p["width"]] for p in (rrc.make_params([image]) for _ in range(n))]).float()
        for ours, theirs in [(bh * bw / (h * w), ref[:, 0] * ref[:, 1] / (h * w)), (bw / bh, ref[:, 1] / ref[:, 0])]:
            # 0.0436: the KS test's critical value for two samples of 4000 at a significance of 0.001
            assert ks_distance(ours, theirs) < 0.0436, (h, w)


def test_a_mixed_batch_gives_each_sample_the_box_of_its_own_size():
    """One batch of different sizes = each sample drawn alone with the same random numbers."""
    heights = torch.tensor([float(h) for h, _ in SIZES])
    widths = torch.tensor([float(w) for _, w in SIZES])
    mixed = A.sample_crop_boxes(len(SIZES), heights, widths, generator=torch.Generator().manual_seed(3))
    for i, (h, w) in enumerate(SIZES):
        same = A.sample_crop_boxes(len(SIZES), h, w, generator=torch.Generator().manual_seed(3))
        assert torch.equal(mixed[i], same[i]), (h, w)


def test_per_sample_fallback_is_torchvisions_central_crop():
    heights, widths = torch.tensor([28.0, 10.0, 40.0]), torch.tensor([28.0, 40.0, 10.0])
    boxes = A.sample_crop_boxes(3, heights, widths, scale=(2.0, 3.0))  # never fits: the fallback for each
    for (h, w), box in zip([(28, 28), (10, 40), (40, 10)], boxes.int().tolist()):
        params = RandomResizedCrop(8, scale=(2.0, 3.0)).make_params([torch.zeros(3, h, w)])
        assert box == [params["top"], params["left"], params["height"], params["width"]], (h, w)


# ------------------------------------------------------------------------------------------ pixels


def test_crop_and_resize_of_each_image_equals_torchvisions_for_fixed_boxes():
    """Downscaling (antialiased) and upscaling crops of images of different sizes, exactly as TF.resized_crop."""
    images = [torch.from_numpy(_photo(h, w, i)).permute(2, 0, 1) for i, (h, w) in enumerate(SIZES)]
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [0.0, 0.0, 500.0, 375.0], [5.0, 100.0, 40.0, 30.0],
                          [50.0, 60.0, 100.0, 100.0]])
    out = A.resized_crop_each(images, boxes, 64) / 255
    for image, (top, left, h, w), got in zip(images, boxes.int().tolist(), out):
        ref = TF.resized_crop(image.float() / 255, top, left, h, w, [64, 64], antialias=True)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_a_list_of_images_gets_per_sample_views():
    images = [torch.from_numpy(_photo(h, w, i)).permute(2, 0, 1) for i, (h, w) in enumerate(SIZES)]
    aug = A.BatchAugment("strong", 32, IMAGENET_MEAN, IMAGENET_STD)

    def views(seed: int) -> torch.Tensor:
        return aug(images, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed))

    first = views(0)
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, views(0)) and not torch.equal(first, views(1))
    same = views(0)[0]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = same * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # normalised views of [0, 1] pixels


def test_weak_views_of_a_list_are_the_crop_then_the_flip():
    """weak = RandomResizedCrop + flip: a view is the torchvision crop of its box, mirrored where drawn."""
    images = [torch.from_numpy(_photo(h, w, i)).permute(2, 0, 1) for i, (h, w) in enumerate(SIZES)]
    aug = A.BatchAugment("weak", 48, (0, 0, 0), (1, 1, 1))
    out = aug(images, torch.Generator().manual_seed(5), torch.Generator().manual_seed(9))
    heights = torch.tensor([float(h) for h, _ in SIZES])
    widths = torch.tensor([float(w) for _, w in SIZES])
    boxes = A.sample_crop_boxes(4, heights, widths, aug.scale, aug.ratio, torch.Generator().manual_seed(9))
    flips = torch.rand(4, generator=torch.Generator().manual_seed(5)) < 0.5
    for image, (top, left, h, w), flip, got in zip(images, boxes.int().tolist(), flips, out):
        ref = TF.resized_crop(image.float() / 255, top, left, h, w, [48, 48], antialias=True)
        torch.testing.assert_close(got, ref.flip(-1) if flip else ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ decoding


def _save(folder: Path, img: Image.Image, name: str, **kwargs) -> Path:
    path = folder / name
    img.save(path, **kwargs)
    return path


def test_what_the_workers_hand_on_decodes_to_open_rgbs_pixels(tmp_path):
    photo = _photo(40, 56)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 100, np.uint8)])
    files = {"rgb.jpg": (Image.fromarray(photo), True), "gray.jpg": (Image.fromarray(photo[..., 0]), True),
             "cmyk.jpg": (Image.fromarray(photo).convert("CMYK"), False),
             "rgba.png": (Image.fromarray(rgba), False), "plain.png": (Image.fromarray(photo), False),
             "gray16.png": (Image.fromarray(photo[..., 1].astype(np.uint16) * 257), False)}
    paths = []
    for name, (img, on_device) in files.items():
        path = _save(tmp_path, img, name)
        payload = encoded_or_rgb(path)
        assert (payload.ndim == 1) == on_device, name  # only RGB and gray JPEGs are left encoded
        paths.append(path)
    decoded = decode_all([encoded_or_rgb(p) for p in paths], CPU)
    for path, image in zip(paths, decoded):
        assert image is not None and image.dtype == torch.uint8
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(open_rgb(path))), path.name


def test_an_undecodable_jpeg_is_none_and_the_rest_still_decode(tmp_path):
    good = _save(tmp_path, Image.fromarray(_photo(32, 32)), "good.jpg")
    truncated = _save(tmp_path, Image.fromarray(_photo(64, 64, 1)), "truncated.jpg", quality=95)
    truncated.write_bytes(truncated.read_bytes()[:-600])  # the header is intact: the worker cannot tell
    assert encoded_or_rgb(truncated).ndim == 1
    images = decode_all([encoded_or_rgb(good), encoded_or_rgb(truncated), encoded_or_rgb(good)], CPU)
    assert images[1] is None and images[0] is not None and torch.equal(images[0], images[2])


def test_huge_jpegs_are_drafted_on_the_cpu(tmp_path, monkeypatch):
    import isd.data.decode as decode

    monkeypatch.setattr(decode, "DRAFT_SIDE", 16)  # stands for 2048
    huge = _save(tmp_path, Image.new("RGB", (130, 70), (10, 200, 30)), "huge.jpg")
    payload = encoded_or_rgb(huge)
    assert payload.shape == (3, 18, 33)  # decoded here at 1/4, as open_rgb does


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"just some text\n"])
def test_non_images_raise_in_the_worker(tmp_path, content):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(OSError):
        encoded_or_rgb(path)


# ------------------------------------------------------------------------------------------ the loader


def test_auto_is_the_device_on_a_gpu_and_the_workers_on_a_cpu(monkeypatch):
    import isd.data.batches as batches

    monkeypatch.setattr(batches, "jpeg_decoder_problem", lambda device: None)  # a GPU whose decoder works
    cfg = build_config(None, {"data": "x"})
    assert cfg.data_pipeline == "auto"
    assert decode_on_device(cfg, torch.device("cuda")) and not decode_on_device(cfg, CPU)
    cfg.data_pipeline = "workers"
    assert not decode_on_device(cfg, torch.device("cuda"))
    cfg.data_pipeline = "device"
    assert decode_on_device(cfg, CPU)


def test_a_device_whose_jpeg_decoder_fails_is_never_a_silent_slow_path(monkeypatch):
    """auto then takes the workers' pipeline; an explicit `device` is a one-line error naming the setting."""
    import isd.data.batches as batches
    import isd.data.decode as decode
    from isd.errors import SettingError

    def no_nvjpeg(data, mode, device):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(decode, "decode_jpeg", no_nvjpeg)
    monkeypatch.setattr(decode, "_DECODER_PROBLEMS", {})
    assert "not compiled with nvJPEG" in decode.jpeg_decoder_problem(CPU)
    cfg = build_config(None, {"data": "x", "data_pipeline": "device"})
    with pytest.raises(SettingError, match="data_pipeline=device: JPEGs cannot be decoded on cpu .*nvJPEG"):
        decode_on_device(cfg, CPU)
    cfg.data_pipeline = "auto"
    monkeypatch.setattr(batches, "jpeg_decoder_problem", lambda device: "no nvJPEG")  # a GPU without it
    assert not decode_on_device(cfg, torch.device("cuda"))


def test_the_decoder_check_passes_on_this_cpu():
    from isd.data.decode import jpeg_decoder_problem

    assert jpeg_decoder_problem(CPU) is None


def _folder(tmp_path: Path) -> Path:
    train_dir = tmp_path / "data" / "train"
    write_image_folder(train_dir, classes=2, per_class=6, ext="jpg")
    _save(train_dir / "class0", Image.fromarray(_photo(30, 50)), "wide.jpg")
    _save(train_dir / "class1", Image.fromarray(_photo(50, 30)).convert("CMYK"), "cmyk.jpg")
    _save(train_dir / "class1", Image.fromarray(_photo(20, 20)), "small.png")
    _save(train_dir / "class0", Image.fromarray(_photo(44, 44)), "extra.jpg")
    return tmp_path / "data"


def _loader(data: Path, tmp_path: Path, **extra):
    cfg = build_config(None, tiny_values(data, tmp_path / "run", data_pipeline="device", **extra))
    source = image_folder(data / "train")
    return batches_of(source).two_views(cfg, 24, CPU), source


def test_the_loader_gives_two_normalised_views_per_image(tmp_path):
    loader, source = _loader(_folder(tmp_path), tmp_path)
    assert isinstance(loader, DeviceFileLoader)
    batches = list(loader.epoch(1))
    assert len(batches) == loader.steps_per_epoch() == len(source) // 4
    for batch in batches:
        assert batch.key.shape == batch.query.shape == (4, 3, 24, 24) and batch.bad == []
        assert not torch.equal(batch.key, batch.query)
    seen = torch.cat([b.labels for b in batches])
    assert set(seen.tolist()) == {0, 1}


def test_the_views_depend_on_seed_epoch_and_step_only(tmp_path):
    data = _folder(tmp_path)
    loader, _ = _loader(data, tmp_path)
    full = list(loader.epoch(2))
    resumed = list(loader.epoch(2, start_step=2))  # a resume inside the epoch sees the same batches
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a.key, b.key) and torch.equal(a.query, b.query) and torch.equal(a.labels, b.labels)
    with_workers, _ = _loader(data, tmp_path, num_workers=2)
    for a, b in zip(full, with_workers.epoch(2)):
        assert torch.equal(a.key, b.key) and torch.equal(a.query, b.query)
    other_epoch = next(iter(loader.epoch(3)))
    assert not torch.equal(full[0].key, other_epoch.key)


def test_a_file_only_the_decoder_refuses_is_replaced_and_reported(tmp_path):
    data = _folder(tmp_path)
    truncated = _save(data / "train" / "class0", Image.fromarray(_photo(64, 64, 3)), "truncated.jpg", quality=95)
    truncated.write_bytes(truncated.read_bytes()[:-600])
    (data / "train" / "class1" / "text.jpg").write_text("not a picture\n")  # the worker's own replacement
    loader, source = _loader(data, tmp_path)
    bad = [path for batch in loader.epoch(1) for path in batch.bad]
    assert sorted(bad) == sorted([str(truncated), str(data / "train" / "class1" / "text.jpg")])


def test_the_workers_pipeline_is_kept_where_asked(tmp_path):
    data = _folder(tmp_path)
    cfg = build_config(None, tiny_values(data, tmp_path / "run", data_pipeline="workers"))
    assert isinstance(batches_of(image_folder(data / "train")).two_views(cfg, 24, CPU), FileLoader)


def test_training_from_a_folder_on_the_device_pipeline(tmp_path):
    data, run_dir = _folder(tmp_path), tmp_path / "run"
    with single_thread():
        setup = train(build_config(None, tiny_values(data, run_dir, epochs=1, data_pipeline="device")),
                      log=lambda _: None)
    assert (run_dir / "ckpt_epoch_1.pth").is_file()
    losses = [line for line in (run_dir / "log.jsonl").read_text().splitlines() if '"train"' in line]
    assert losses and all(math.isfinite(float(line.split('"loss": ')[1].split(",")[0])) for line in losses)
    assert setup.cfg.data_pipeline == "device"
