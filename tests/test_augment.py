"""Batch augmentation: pixel equality with the per-image transform, and the parameter
distributions checked against their definitions (not against torchvision's code)."""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from reid.data.augment import (
    ERASE_RATIO,
    ERASE_SCALE,
    PARAM_NAMES,
    AugmentSpec,
    BatchParams,
    augment_batch,
    draw_params,
)
from reid.data.datasets import Record
from reid.data.image_dataset import ImageDataset
from reid.data.sampler import Sample
from reid.data.transforms import build_train_transform
from reid.errors import InputError

SIZE = (32, 16)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FLIP, TOP, LEFT, ERASE, BOX_I, BOX_J, BOX_H, BOX_W = range(len(PARAM_NAMES))


def make_spec(
    size: tuple[int, int] = SIZE,
    flip_prob: float = 0.5,
    padding: int = 4,
    erase_prob: float = 0.5,
) -> AugmentSpec:
    return AugmentSpec(
        size=size, flip_prob=flip_prob, padding=padding, erase_prob=erase_prob, mean=MEAN, std=STD
    )


def per_image_transform(spec: AugmentSpec) -> v2.Compose:
    """torchvision's own transforms for the spec, the reference of both of reid's paths."""
    steps = [v2.RandomHorizontalFlip(spec.flip_prob)] if spec.flip_prob > 0 else []
    if spec.padding > 0:
        steps += [v2.Pad(spec.padding), v2.RandomCrop(spec.size)]
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(spec.mean, spec.std),
    ]
    if spec.erase_prob > 0:
        steps.append(
            v2.RandomErasing(spec.erase_prob, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=0)
        )
    return v2.Compose(steps)


def random_images(count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """uint8 (count, 3, H, W) noise from a private generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, *size), dtype=torch.uint8, generator=generator)


def seeded(seed: int, fn, *args):
    """``fn(*args)`` as ImageDataset runs a transform, and the next draw after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = fn(*args)
        return result, torch.rand(1)


def params_for(spec: AugmentSpec, seeds) -> torch.Tensor:
    """(len(seeds), 8) params, each drawn right after seeding the CPU generator with
    its seed (torch.manual_seed also seeds every accelerator, a hundred times slower)."""
    with torch.random.fork_rng(devices=[]):
        rows = []
        for seed in seeds:
            torch.default_generator.manual_seed(seed)
            rows.append(draw_params(spec))
        return torch.stack(rows)


# --- pixel equality with the per-image path -------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"flip_prob": 0.0},
        {"flip_prob": 1.0},
        {"padding": 0},
        {"erase_prob": 0.0},
        {"erase_prob": 1.0},
    ],
    ids=["all", "no-flip", "always-flip", "no-padding", "no-erase", "always-erase"],
)
def test_batch_path_equals_per_image_transform(changes: dict) -> None:
    spec = make_spec(**changes)
    seeds = range(1000, 1100)
    images = random_images(len(seeds), spec.size, seed=len(changes))
    transform = per_image_transform(spec)

    expected, params = [], []
    for seed, image in zip(seeds, images, strict=True):
        out, next_after_transform = seeded(seed, transform, image)
        drawn, next_after_params = seeded(seed, draw_params, spec)
        # The same number of draws: anything drawn afterwards stays the same too.
        assert torch.equal(next_after_params, next_after_transform), seed
        expected.append(torch.as_tensor(out))
        params.append(drawn)
    params = torch.stack(params)
    out = augment_batch(images, params, spec)

    assert out.dtype == torch.float32 and out.shape == images.shape
    torch.testing.assert_close(out, torch.stack(expected), rtol=0, atol=1e-6)
    # reid's per-image transform: torchvision's pixels to the bit, and the same draws.
    ours = build_train_transform(
        spec.size, spec.mean, spec.std, spec.flip_prob, spec.padding, spec.erase_prob,
        resize=False,
    )  # fmt: skip
    for seed, image, reference in zip(seeds, images, expected, strict=True):
        mine, next_after_mine = seeded(seed, ours, image)
        assert torch.equal(mine, reference), seed
        assert torch.equal(next_after_mine, seeded(seed, transform, image)[1]), seed
    # The seeds exercise both branches of every augmentation that is on.
    flips, erases = int(params[:, FLIP].sum()), int(params[:, ERASE].sum())
    expected_flips = {0.0: 0, 1.0: len(seeds)}.get(spec.flip_prob)
    assert flips == expected_flips if expected_flips is not None else 0 < flips < len(seeds)
    if spec.erase_prob == 0:
        assert erases == 0
    else:  # at erase_prob 1, only the draws where a box fits erase
        assert erases > 0 and (erases < len(seeds) or spec.erase_prob == 1)
    if spec.padding == 0:
        assert not params[:, [TOP, LEFT]].any()


def test_augment_batch_of_a_batch_equals_each_sample_alone() -> None:
    spec = make_spec(erase_prob=0.8)
    images = random_images(24, SIZE, seed=7)
    params = params_for(spec, range(24))
    together = augment_batch(images, params, spec)
    alone = torch.cat(
        [augment_batch(images[k : k + 1], params[k : k + 1], spec) for k in range(24)]
    )
    assert torch.equal(together, alone)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu() -> None:
    spec = make_spec(erase_prob=0.8)
    images = random_images(64, SIZE, seed=8)
    params = params_for(spec, range(64))
    on_cpu = augment_batch(images, params, spec)
    on_cuda = augment_batch(images.cuda(), params.cuda(), spec)
    assert on_cuda.device.type == "cuda"
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=1e-6)


# --- parameter distributions from their definitions -----------------------------------

DRAWS = 20000
DIST_FLIP, DIST_PADDING, DIST_ERASE = 0.3, 4, 0.7  # asymmetric: an inverted coin shows
# (32, 16): most first boxes fit; (2, 40): a box fits in few attempts, so the 10 tries
# and the "nothing erased" outcome matter.
DIST_SIZES = [(32, 16), (2, 40)]


@pytest.fixture(scope="module", params=DIST_SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def drawn(request) -> tuple[AugmentSpec, np.ndarray]:
    spec = make_spec(
        size=request.param, flip_prob=DIST_FLIP, padding=DIST_PADDING, erase_prob=DIST_ERASE
    )
    return spec, params_for(spec, range(DRAWS)).numpy()


def assert_frequency(count: int, n: int, prob: float, extra_var: float = 0.0) -> None:
    """``count / n`` within 5 standard deviations of ``prob``."""
    sd = math.sqrt(prob * (1 - prob) / n + extra_var)
    assert abs(count / n - prob) <= 5 * sd, (count / n, prob, sd)


@pytest.mark.slow  # 20,000 draws: in the full suite, out of the quick loop
def test_flip_frequency(drawn) -> None:
    _, params = drawn
    assert set(np.unique(params[:, FLIP])) <= {0, 1}
    assert_frequency(int(params[:, FLIP].sum()), DRAWS, DIST_FLIP)


@pytest.mark.slow  # 20,000 draws: in the full suite, out of the quick loop
def test_crop_offsets_uniform(drawn) -> None:
    _, params = drawn
    values = 2 * DIST_PADDING + 1
    for column in (TOP, LEFT):
        counts = np.bincount(params[:, column], minlength=values)
        assert len(counts) == values and params[:, column].min() >= 0
        for count in counts:
            assert_frequency(int(count), DRAWS, 1 / values)
    joint = np.bincount(params[:, TOP] * values + params[:, LEFT], minlength=values**2)
    for count in joint:
        assert_frequency(int(count), DRAWS, 1 / values**2)


def simulate_erase_boxes(
    size: tuple[int, int], n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random erasing's box by its definition, with numpy: ``(fits (n,), h, w)`` of the
    first of 10 attempts that fits, where an attempt draws area ~ U(scale) * H * W and
    log(h / w) ~ U(log ratio), and fits when h < H and w < W."""
    rng = np.random.default_rng(seed)
    height, width = size
    area = rng.uniform(*ERASE_SCALE, size=(n, 10)) * height * width
    ratio = np.exp(rng.uniform(*np.log(ERASE_RATIO), size=(n, 10)))
    h = np.round(np.sqrt(area * ratio)).astype(np.int64)
    w = np.round(np.sqrt(area / ratio)).astype(np.int64)
    fits = (h < height) & (w < width)
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    return fits.any(axis=1), h[rows, first], w[rows, first]


SIMULATED = 400000


@pytest.mark.slow  # 20,000 draws: in the full suite, out of the quick loop
def test_erase_frequency(drawn) -> None:
    spec, params = drawn
    fits, _, _ = simulate_erase_boxes(spec.size, SIMULATED)
    fit_fraction = fits.mean()
    simulation_var = DIST_ERASE**2 * fit_fraction * (1 - fit_fraction) / SIMULATED
    erased = params[:, ERASE]
    assert set(np.unique(erased)) <= {0, 1}
    assert_frequency(int(erased.sum()), DRAWS, DIST_ERASE * fit_fraction, simulation_var)
    assert not params[erased == 0][:, [BOX_I, BOX_J, BOX_H, BOX_W]].any()


@pytest.mark.slow  # 20,000 draws: in the full suite, out of the quick loop
def test_erase_boxes_follow_the_definition(drawn) -> None:
    spec, params = drawn
    height, width = spec.size
    boxes = params[params[:, ERASE] == 1]
    i, j, h, w = boxes[:, BOX_I], boxes[:, BOX_J], boxes[:, BOX_H], boxes[:, BOX_W]
    assert (i >= 0).all() and (j >= 0).all() and (i + h <= height).all()
    assert (j + w <= width).all() and (h < height).all() and (w < width).all()

    # h and w are rounded sqrt(area * r) and sqrt(area / r): some area and r in range
    # must round to them.
    area_low, area_high = (h - 0.5).clip(0) * (w - 0.5).clip(0), (h + 0.5) * (w + 0.5)
    assert (area_high >= ERASE_SCALE[0] * height * width).all()
    assert (area_low <= ERASE_SCALE[1] * height * width).all()
    ratio_low = (h - 0.5).clip(0) / (w + 0.5)
    ratio_high = np.where(w > 0.5, (h + 0.5) / np.maximum(w - 0.5, 1e-9), np.inf)
    assert (ratio_high >= ERASE_RATIO[0]).all() and (ratio_low <= ERASE_RATIO[1]).all()

    # The sizes' distributions match the simulated definition (two-proportion z-test).
    fits, sim_h, sim_w = simulate_erase_boxes(spec.size, SIMULATED, seed=1)
    for drawn_sizes, simulated_sizes in ((h, sim_h[fits]), (w, sim_w[fits])):
        top = max(drawn_sizes.max(), simulated_sizes.max()) + 1
        drawn_counts = np.bincount(drawn_sizes, minlength=top)
        simulated_counts = np.bincount(simulated_sizes, minlength=top)
        n1, n2 = len(drawn_sizes), len(simulated_sizes)
        for value, (k1, k2) in enumerate(zip(drawn_counts, simulated_counts, strict=True)):
            pooled = (k1 + k2) / (n1 + n2)
            sd = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
            assert abs(k1 / n1 - k2 / n2) <= 5 * sd + 1e-12, (value, k1 / n1, k2 / n2)

    # The box's corner is uniform over its free positions: (i + U) / (H - h + 1), with
    # an independent U ~ U(0, 1), is then U(0, 1); its deciles hold 10% each.
    jitter = np.random.default_rng(2).uniform(size=(2, len(boxes)))
    for corner, free, noise in ((i, height - h + 1, jitter[0]), (j, width - w + 1, jitter[1])):
        deciles = np.bincount(((corner + noise) / free * 10).astype(np.int64), minlength=10)
        assert len(deciles) == 10
        for count in deciles:
            assert_frequency(int(count), len(boxes), 0.1)


# --- the loader's side ----------------------------------------------------------------


def test_batch_params_pickles_and_returns_image_and_params() -> None:
    spec = make_spec()
    loaded = pickle.loads(pickle.dumps(BatchParams(spec)))
    assert loaded.spec == spec
    image = random_images(1, SIZE, seed=3)[0]
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    for given in (image, pil):
        (out, params), _ = seeded(5, loaded, given)
        assert out.dtype == torch.uint8 and out.shape == (3, *SIZE)
        assert params.dtype == torch.int64 and params.shape == (len(PARAM_NAMES),)
        assert torch.equal(out, image)
        assert torch.equal(params, seeded(5, draw_params, spec)[0])


def test_image_dataset_gives_the_same_pixels_both_ways(tmp_path: Path) -> None:
    spec = make_spec(erase_prob=0.8)
    records = []
    for k, image in enumerate(random_images(4, SIZE, seed=4)):
        path = tmp_path / f"{k}.png"  # lossless: both paths see the same pixels
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        records.append(Record(str(path), pid=k, camid=0))
    per_image = ImageDataset(records, per_image_transform(spec))
    batch_mode = ImageDataset(records, BatchParams(spec))
    samples = [Sample(index=k % 4, seed=100 + k) for k in range(16)]

    expected = torch.stack([per_image[sample][0] for sample in samples])
    images, params = zip(*(batch_mode[sample][0] for sample in samples), strict=True)
    out = augment_batch(torch.stack(images), torch.stack(params), spec)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_bad_inputs_name_the_problem() -> None:
    spec = make_spec()
    images = random_images(2, SIZE)
    params = params_for(spec, range(2))
    with pytest.raises(InputError, match="flip_prob"):
        make_spec(flip_prob=1.5)
    with pytest.raises(InputError, match="padding"):
        make_spec(padding=-1)
    with pytest.raises(InputError, match="uint8"):
        augment_batch(images.float(), params, spec)
    with pytest.raises(InputError, match="size"):
        augment_batch(random_images(2, (16, 16)), params, spec)
    with pytest.raises(InputError, match="params"):
        augment_batch(images, params[:1], spec)
    with pytest.raises(InputError, match=r"resize"):
        BatchParams(spec)(random_images(1, (16, 16))[0])
