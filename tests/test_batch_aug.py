import pytest
import torch
import torchvision.transforms.v2.functional as TF

from isd.data import batch_augment as A
from isd.data.batch_augment import BatchAugment, two_views
from isd.train.bench import OpCounter

MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MEAN1, STD1 = (0.286,), (0.353,)


def _images(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, size, size), dtype=torch.uint8, generator=g)


def _floats(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("recipe", ["strong", "weak", "none"])
@pytest.mark.parametrize("c, in_size, out_size", [(1, 28, 28), (3, 32, 32), (1, 28, 24), (3, 32, 40)])
def test_shape_and_dtype(recipe, c, in_size, out_size):
    mean, std = (MEAN1, STD1) if c == 1 else (MEAN3, STD3)
    out = BatchAugment(recipe, out_size, mean, std)(_images(6, c, in_size))
    assert out.shape == (6, c, out_size, out_size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_unknown_recipe():
    with pytest.raises(ValueError):
        BatchAugment("medium", 32, MEAN3, STD3)


def test_none_on_constant_image_is_exact_normalisation():
    images = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    out = BatchAugment("none", 32, MEAN3, STD3)(images)
    expected = (torch.tensor(200.0) / 255 - torch.tensor(MEAN3)) / torch.tensor(STD3)
    assert torch.equal(out, expected.view(1, 3, 1, 1).expand_as(out))


def test_none_resize_matches_torchvision():
    x = _images(2, 3, 32)
    out = BatchAugment("none", 24, (0, 0, 0), (1, 1, 1))(x)
    ref = TF.resize(x.float() / 255, [24, 24], antialias=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_full_crop_is_identity():
    x = _floats(4, 3, 32)
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(4, 4)
    torch.testing.assert_close(A.resized_crop(x, boxes, 32), x, atol=1e-5, rtol=0)
    flip = torch.tensor([True, False, True, False])
    out = A.resized_crop(x, boxes, 32, flip)
    torch.testing.assert_close(out[flip], x[flip].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[~flip], x[~flip], atol=1e-5, rtol=0)


def test_upscaling_crop_matches_torchvision_resized_crop():
    x = _floats(3, 3, 28)
    boxes = torch.tensor([[0.0, 0.0, 28.0, 28.0], [3.0, 5.0, 10.0, 14.0], [17.0, 0.0, 11.0, 20.0]])
    out = A.resized_crop(x, boxes, 32)
    for i, (top, left, h, w) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(x[i], top, left, h, w, [32, 32], antialias=False)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_crop_boxes_follow_random_resized_crop():
    from torchvision.transforms.v2 import RandomResizedCrop

    n, g = 5000, torch.Generator().manual_seed(0)
    boxes = A.sample_crop_boxes(n, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), generator=g)
    top, left, h, w = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    assert len(set(top.tolist())) > 10 and len(set(left.tolist())) > 10

    torch.manual_seed(0)
    rrc, image = RandomResizedCrop(32, scale=(0.2, 1.0)), torch.zeros(3, 32, 32)
    ref = torch.tensor([[p["height"], p["width"]] for p in (rrc.make_params([image]) for _ in range(n))]).float()
    for ours, theirs in [(h * w, ref[:, 0] * ref[:, 1]), (w / h, ref[:, 1] / ref[:, 0])]:
        assert abs(ours.mean() - theirs.mean()) < 0.015 * theirs.mean()
        assert abs(ours.std() - theirs.std()) < 0.03 * theirs.std()
        assert theirs.min() * 0.95 <= ours.min() and ours.max() <= theirs.max() * 1.05


def test_crop_boxes_fall_back_to_central_crop():
    whole = A.sample_crop_boxes(5, 28, 28, scale=(2.0, 3.0))  # never fits
    assert torch.equal(whole, torch.tensor([[0.0, 0.0, 28.0, 28.0]]).expand(5, 4))
    wide = A.sample_crop_boxes(5, 10, 40, scale=(2.0, 3.0))  # too wide for ratio <= 4/3
    assert torch.equal(wide[0], torch.tensor([0.0, 13.0, 10.0, 13.0]))


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.37])
def test_brightness_contrast_saturation_match_torchvision(factor):
    x = _floats(5, 3, 16)
    factors = torch.tensor([factor, 0.7, 1.2, 1.4, 0.0])
    for ours, ref in [
        (A.adjust_brightness, TF.adjust_brightness),
        (A.adjust_contrast, TF.adjust_contrast),
        (A.adjust_saturation, TF.adjust_saturation),
    ]:
        expected = torch.stack([ref(x[i], f.item()) for i, f in enumerate(factors)])
        torch.testing.assert_close(ours(x, factors), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x, factor), ref(x, factor), atol=1e-5, rtol=0)
    gray = x[:, :1]
    torch.testing.assert_close(A.adjust_contrast(gray, factor), TF.adjust_contrast(gray, factor), atol=1e-5, rtol=0)


def test_hue_matches_torchvision():
    x = _floats(6, 3, 16)
    x[0] = 0.5  # grey: hue undefined
    x[1, :, :4] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # saturated primaries
    factors = torch.tensor([0.1, -0.1, 0.05, -0.5, 0.5, 0.0])
    expected = torch.stack([TF.adjust_hue(x[i], f.item()) for i, f in enumerate(factors)])
    torch.testing.assert_close(A.adjust_hue(x, factors), expected, atol=1e-4, rtol=0)


def test_grayscale_matches_torchvision():
    x = _floats(3, 3, 8)
    torch.testing.assert_close(A.rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_blur_matches_torchvision(c):
    x = _floats(3, c, 28)
    sigmas = torch.tensor([0.1, 1.3, 2.0])
    out = A.gaussian_blur(x, sigmas, radius=6)
    for i, s in enumerate(sigmas.tolist()):
        ref = TF.gaussian_blur(x[i], [13, 13], [s, s])
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("recipe", ["strong", "weak"])
def test_generator_reproducibility(recipe):
    aug, x = BatchAugment(recipe, 32, MEAN3, STD3), _images(16, 3, 32)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_views_differ_and_samples_are_independent():
    aug = BatchAugment("strong", 28, MEAN1, STD1)
    x = _images(1, 1, 28).expand(8, 1, 28, 28)
    key, query = two_views(x, aug, aug, torch.Generator().manual_seed(0))
    assert key.shape == query.shape == (8, 1, 28, 28)
    assert not torch.allclose(key, query)
    assert not torch.allclose(key[0], key[1])  # one image, different augmentations per sample


@pytest.mark.parametrize("recipe", ["strong", "weak", "none"])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("files", [False, True])
def test_two_views_of_one_recipe_are_one_batch_with_the_pixels_of_two_calls(recipe, c, files):
    """One BatchAugment for both views: one batch of 2B (half the operations), the same bits as key then query."""
    mean, std = (MEAN1, STD1) if c == 1 else (MEAN3, STD3)
    aug = BatchAugment(recipe, 24, mean, std)
    if files:  # decoded image files of their own sizes, cropped on the host
        images = [_images(1, c, 20 + 3 * i, seed=i)[0, :, :, : 36 - 2 * i] for i in range(6)]
    else:
        images = _images(12, c, 28)
    gen, crops = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    separate = aug(images, gen, crops), aug(images, gen, crops)
    watch = OpCounter()
    with watch:
        paired = two_views(images, aug, aug, torch.Generator().manual_seed(3), torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(separate, paired))
    with OpCounter() as one_call:
        aug(images, torch.Generator().manual_seed(3), torch.Generator().manual_seed(4))
    ops = sum(watch.counts["all"].values())
    if recipe != "none" and not files:  # a file batch's per-image crops stay one per image and view
        assert ops < 1.2 * sum(one_call.counts["all"].values())


def test_uniforms_of_two_views_hand_out_each_views_numbers_in_sample_order():
    numbers = torch.arange(12.0)  # view 0: 0..5, view 1: 6..11
    draws = A.Uniforms(numbers, views=2)
    assert draws.take(4).tolist() == [0, 1, 6, 7]
    assert draws.take(2, 2).tolist() == [[2, 3], [8, 9]]
    assert not draws.all_used()
    assert draws.take(4).tolist() == [4, 5, 10, 11] and draws.all_used()
    with pytest.raises(ValueError):
        draws.take(2)
    with pytest.raises(ValueError):
        A.Uniforms(numbers, views=2).take(3)  # 3 samples do not split into 2 views


def test_color_jitter_probability():
    x = _floats(4000, 3, 4)
    out = A.color_jitter(x, generator=torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert abs(changed - 0.8) < 0.03


def test_color_jitter_order_is_per_sample():
    # brightness then contrast differs from contrast then brightness once clamping kicks in
    x = _floats(1, 1, 8).expand(2000, 1, 8, 8)
    out = A.color_jitter(x, p=1.0, strength=(0.4, 0.4, 0.0, 0.0), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    torch.rand(2000, generator=g)  # applied
    bri, con = 0.6 + 0.8 * torch.rand(2000, generator=g), 0.6 + 0.8 * torch.rand(2000, generator=g)
    torch.rand(2000, generator=g), torch.rand(2000, generator=g)  # saturation, hue
    order = torch.rand(2000, 4, generator=g).argsort(1)
    bri_first = (order == 0).int().argmax(1) < (order == 1).int().argmax(1)
    bc = A.adjust_contrast(A.adjust_brightness(x, bri), con)
    cb = A.adjust_brightness(A.adjust_contrast(x, con), bri)
    expected = torch.where(bri_first.view(-1, 1, 1, 1), bc, cb)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert 0.4 < bri_first.float().mean() < 0.6


def _jitter_one_by_one(x, p, strength, seed):
    """ColorJitter as torchvision runs it: sample by sample, each op of its own order in turn."""
    g, b = torch.Generator().manual_seed(seed), x.shape[0]
    applied = torch.rand(b, generator=g) < p
    bri, con, sat, hue = strength
    factors = [1 - bri + 2 * bri * torch.rand(b, generator=g), 1 - con + 2 * con * torch.rand(b, generator=g),
               1 - sat + 2 * sat * torch.rand(b, generator=g), -hue + 2 * hue * torch.rand(b, generator=g)]
    order = torch.rand(b, 4, generator=g).argsort(1)
    ops = (A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue)
    out = []
    for i in range(b):
        y = x[i:i + 1]
        for op in order[i].tolist() if applied[i] else []:
            y = ops[op](y, factors[op][i:i + 1]) if x.shape[1] == 3 or op < 2 else y
        out.append(y)
    return torch.cat(out)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("strength", [(0.4, 0.4, 0.4, 0.1), (0.0, 0.8, 0.4, 0.5)])
def test_color_jitter_equals_each_sample_in_its_own_order(c, strength):
    # hue runs once on the batch and the other three share one blend per position: the same ops, in each
    # sample's own order, as a loop over the samples (values a little outside [0, 1] too: the crop's rounding)
    x = _floats(300, c, 6) * 1.2 - 0.1
    out = A.color_jitter(x, 0.8, strength, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, _jitter_one_by_one(x, 0.8, strength, 3), atol=1e-6, rtol=0)


def test_single_channel_skips_saturation_and_hue(monkeypatch):
    def boom(*args):
        raise AssertionError("hue must not run on 1-channel images")

    monkeypatch.setattr(A, "adjust_hue", boom)
    out = BatchAugment("strong", 28, MEAN1, STD1)(_images(64, 1, 28), torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 28, 28)
    with pytest.raises(AssertionError):
        A.color_jitter(_floats(8, 3, 4), p=1.0)


def test_random_grayscale_probability():
    x = _floats(4000, 3, 4)
    out = A.random_grayscale(x, 0.2, torch.Generator().manual_seed(0))
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert abs(gray.float().mean().item() - 0.2) < 0.03
    torch.testing.assert_close(out[gray], A.rgb_to_grayscale(x[gray]).expand(-1, 3, -1, -1))
    assert torch.equal(out[~gray], x[~gray])


def test_weak_keeps_colours():
    # weak = crop + flip only: a constant image stays exactly constant
    images = torch.full((8, 3, 32, 32), 77, dtype=torch.uint8)
    out = BatchAugment("weak", 32, (0, 0, 0), (1, 1, 1))(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full_like(out, 77 / 255), atol=1e-6, rtol=0)
