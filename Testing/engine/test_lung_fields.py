"""Lung fields: the exact reference (3D lung mask projected with the DRR projector), the bundled 2D
segmenter (accuracy on held-out synthetic chests under clinical processing, invariance to grey-value
LUTs, silence on blank images, refusal of damaged weights) and its trainer (a tiny run writes a
loadable card)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from axonct.config import DataConfig, ProjectionGeometry, VolumeGrid
from axonct.errors import AxonInputError
from axonct.metrics import dice
from axonct.models.lung_fields import (CARD_FILE, WEIGHTS_FILE, LungFieldNet, LungFieldSegmenter,
                                       bundled_weights_dir, load_lung_field_segmenter,
                                       lung_thickness_mm, parameter_count, project_lung_fields)

HELD_OUT_DICE = 0.85
"""Promised mean Dice of the bundled weights on held-out chests under the clinical chain with
geometric jitter (the card records what training measured on its validation chests)."""
CLEAN_DICE = 0.9


@pytest.fixture(scope="module")
def threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def generator(real_ct_path, threads):
    from axonct.data.synthetic_anatomy import SyntheticChestGenerator
    from axonct.io.sample_data import sample_labels_path, sample_structures_path
    from axonct.presets import model_preset

    try:
        labels, structures = sample_labels_path(), sample_structures_path()
    except AxonInputError as exc:
        pytest.skip(f"sample label map missing: {exc}")
    return SyntheticChestGenerator(model_preset("cpu").data, ct_path=real_ct_path, labels_path=labels,
                                   structures_path=structures)


@pytest.fixture(scope="module")
def reference(generator):
    from axonct.training.lung_fields import lung_mask

    chest = generator.reference()
    return chest, lung_mask(chest, generator.structures)


@pytest.fixture(scope="module")
def segmenter():
    seg = load_lung_field_segmenter(bundled_weights_dir())
    assert seg is not None, "the bundled lung-field weights are missing from axonct/weights/cpu"
    return seg


# ----------------------------------------------------------------------------- the exact reference


def test_a_ball_projects_to_its_chord_lengths():
    """A centred ball of radius r: the central ray crosses 2r mm; the field is a disc of radius
    r times the magnification (a bit more for the cone), and nothing at the corners."""
    cfg = DataConfig(VolumeGrid(size=64, fov_mm=320.0), ProjectionGeometry(detector_pixels=64))
    n, s, r = 64, 320.0 / 64, 60.0
    c = (np.arange(n) - (n - 1) / 2) * s
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    ball = x**2 + y**2 + z**2 <= r**2
    thick = lung_thickness_mm(ball, cfg)
    mid = thick[:, 31:33, 31:33].mean(axis=(1, 2))
    assert np.allclose(mid, 2 * r, rtol=0.05), mid
    fields = project_lung_fields(torch.from_numpy(ball), cfg, min_thickness_mm=10.0)
    assert isinstance(fields, np.ndarray) and fields.dtype == bool
    pitch = cfg.geometry.pixel_spacing_mm
    radius_px = np.sqrt(fields[0].sum() / np.pi) * pitch / cfg.geometry.magnification
    assert r * 0.9 < radius_px < r * 1.15
    assert not fields[:, :4, :4].any()
    with pytest.raises(ValueError):
        project_lung_fields(ball[:, :, :32], cfg)
    with pytest.raises(ValueError):
        project_lung_fields(ball, cfg, min_thickness_mm=0.0)


def test_reference_fields_of_the_sample_ct(generator, reference):
    chest, mask = reference
    cfg = generator.config
    fields = project_lung_fields(mask, cfg)
    assert fields.shape == (2, 128, 128) and fields.dtype == bool
    frontal = fields[0]
    # the right lung lies on the image's left (radiological display), the left lung on its right
    ids = {name: i for name, (i, _) in generator.structures.items()}
    left = np.isin(chest.labels, [ids["lung_upper_lobe_left"], ids["lung_lower_lobe_left"]])
    right = mask & ~left
    # in units of the fields' box, so the checks hold for any detector size and magnification
    rows_, cols_ = np.nonzero(frontal)
    c0, c1, height = cols_.min(), cols_.max() + 1, rows_.max() + 1 - rows_.min()
    width, mid = c1 - c0, (c0 + c1) / 2
    cols = np.arange(128)
    col_of = lambda f: float((f.sum(0) * cols).sum() / f.sum())  # noqa: E731
    left_field, right_field = project_lung_fields(left, cfg)[0], project_lung_fields(right, cfg)[0]
    assert col_of(left_field) > mid + 0.12 * width and col_of(right_field) < mid - 0.12 * width
    # two fields that do not overlap, together the union; each outer third is largely lung and the
    # column profile dips between them (the mediastinum) near the midline
    assert left_field.sum() > 0.2 * width * height and right_field.sum() > 0.2 * width * height
    assert (left_field & right_field).sum() < 0.01 * frontal.sum()
    assert ((left_field | right_field) == frontal).mean() > 0.995
    prof = frontal[rows_.min():rows_.max() + 1].mean(0)
    third = int(width / 4)
    sides = min(prof[c0 + 2:c0 + 2 + third].mean(), prof[c1 - 2 - third:c1 - 2].mean())
    assert sides > 0.45
    lo, hi = int(mid - 0.1 * width), int(mid + 0.1 * width) + 1
    assert lo <= int(np.argmin(prof[lo:hi])) + lo < hi and prof[lo:hi].min() < 0.4 * sides
    # nothing outside the body: where the rays meet only air there is no lung field
    drr = chest.render_drr()
    assert (drr < 0.05).sum() > 500  # the lateral view has air in front of and behind the chest
    assert not (fields & (drr < 0.05)).any()
    # a higher threshold only removes pixels
    thick = project_lung_fields(mask, cfg, min_thickness_mm=40.0)
    assert (thick <= fields).all() and thick.sum() < fields.sum()


# ----------------------------------------------------------------------------- the bundled segmenter


def test_bundled_segmenter_on_held_out_chests(generator, segmenter):
    """Chests from the test seed set (disjoint from training and validation), both views, clean and
    under the clinical realism chain with geometric jitter."""
    from axonct.data.synthetic_anatomy import case_seed
    from axonct.training.lung_fields import (TEST_SET_SEED, TRAIN_SET_SEED, VAL_SET_SEED, JitterConfig,
                                             build_pool, clinical_realism, make_sample)

    seeds = [case_seed(TEST_SET_SEED, i) for i in range(3)]
    card = segmenter.card
    assert not set(map(str, seeds)) & set(card["trained_on"]["train_seeds"] + card["validation"]["seeds"])
    assert TEST_SET_SEED not in (TRAIN_SET_SEED, VAL_SET_SEED)
    pool = build_pool(generator, [(f"test-{i}", s) for i, s in enumerate(seeds)], None, log=lambda *_: None)
    gen = torch.Generator().manual_seed(1234)
    jitter = JitterConfig(probability=1.0, band_probability=0.0)
    scores = {"clean": [], "clinical": []}
    for cond, realism, jit in (("clean", None, None), ("clinical", clinical_realism(), jitter)):
        imgs, targets = [], []
        for i in range(len(seeds)):
            for v in range(2):
                x, t = make_sample(pool["line_integrals"][i, v], pool["thickness"][i, v], gen, realism=realism,
                                   jitter=jit, min_thickness_mm=segmenter.cfg.min_thickness_mm, size=128)
                imgs.append(x[0].numpy())
                targets.append(t[0].numpy() > 0.5)
        masks = segmenter.masks(np.stack(imgs))
        scores[cond] = [dice(m, t) for m, t in zip(masks, targets)]
    clean, clinical = np.mean(scores["clean"]), np.mean(scores["clinical"])
    assert clean >= CLEAN_DICE, scores
    assert clinical >= HELD_OUT_DICE, scores
    assert min(scores["clinical"]) >= 0.7, scores


def test_segmenter_shapes_sizes_and_card(segmenter, reference, generator):
    chest, mask = reference
    views = torch.from_numpy(chest.render_drr())
    from axonct.transforms.normalize import robust_unit

    img = robust_unit(views[:, None])[:, 0].numpy()
    p = segmenter.probabilities(img)
    assert p.shape == (2, 128, 128) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    one = segmenter.probabilities(img[0])
    assert one.shape == (128, 128) and np.allclose(one, p[0], atol=1e-5)
    # another size: resized in and out, still on the lungs
    big = torch.nn.functional.interpolate(torch.from_numpy(img)[:, None], size=(200, 200), mode="bilinear")[:, 0]
    pb = segmenter.probabilities(big.numpy())
    assert pb.shape == (2, 200, 200)
    ref = project_lung_fields(mask, generator.config)
    ref_big = torch.nn.functional.interpolate(torch.from_numpy(ref).float()[:, None], size=(200, 200))[:, 0] > 0.5
    assert dice(pb[0] >= 0.5, ref_big[0].numpy()) > 0.85
    with pytest.raises(ValueError):
        segmenter.probabilities(np.zeros((100, 80), np.float32))
    with pytest.raises(ValueError):
        segmenter.probabilities(np.full((64, 64), np.nan, np.float32))
    card = json.loads((bundled_weights_dir() / CARD_FILE).read_text())
    sources = card["trained_on"]["source_ct"]  # one CT, or the training patients' CTs
    assert card["kind"] == "lung_fields" and any("LIDC-IDRI-0001" in s for s in np.atleast_1d(sources))
    assert 100_000 <= card["parameters"] == parameter_count(segmenter.net) <= 500_000
    assert (bundled_weights_dir() / WEIGHTS_FILE).stat().st_size < 2_000_000


def test_segmenter_ignores_monotone_luts_and_blank_images(segmenter, reference):
    chest, _ = reference
    from axonct.transforms.normalize import robust_unit

    img = robust_unit(torch.from_numpy(chest.render_drr())[:, None])[:, 0].numpy()
    p = segmenter.probabilities(img)
    for lut in (lambda a: a**0.5, lambda a: 1 / (1 + np.exp(-8 * (a - 0.4))), lambda a: 0.2 + 0.5 * a**2):
        q = segmenter.probabilities(lut(img).astype(np.float32))
        assert np.abs(q - p).mean() < 0.01
        assert dice(q >= 0.5, p >= 0.5) > 0.98
    # nothing lung-like in a blank or uniform image, nor in smooth noise
    for blank in (np.zeros((128, 128)), np.full((128, 128), 0.4), np.ones((96, 96))):
        assert segmenter.probabilities(blank.astype(np.float32)).mean() < 0.05
    rng = np.random.default_rng(0)
    noise = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 1, 6, 6), dtype=np.float32)),
                                            size=(128, 128), mode="bicubic")[0, 0].numpy()
    assert segmenter.probabilities(noise).mean() < 0.1


# ----------------------------------------------------------------------------- loading


def test_loader_refuses_damaged_files_and_skips_missing_ones(tmp_path):
    assert load_lung_field_segmenter(tmp_path) is None
    folder = tmp_path / "w"
    folder.mkdir()
    for name in (WEIGHTS_FILE, CARD_FILE):
        shutil.copy(bundled_weights_dir() / name, folder / name)
    assert isinstance(load_lung_field_segmenter(folder), LungFieldSegmenter)
    raw = bytearray((folder / WEIGHTS_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(AxonInputError, match=WEIGHTS_FILE) as exc:
        load_lung_field_segmenter(folder)
    assert exc.value.path.endswith(WEIGHTS_FILE)
    (folder / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(AxonInputError, match=WEIGHTS_FILE):
        LungFieldSegmenter.load(folder)
    shutil.copy(bundled_weights_dir() / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    (folder / CARD_FILE).write_text("{broken")
    with pytest.raises(AxonInputError, match=CARD_FILE):
        load_lung_field_segmenter(folder)
    card = json.loads((bundled_weights_dir() / CARD_FILE).read_text())
    card["config"]["channels"] = [4, 8]
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(AxonInputError, match=WEIGHTS_FILE):  # the weights do not fit that network
        load_lung_field_segmenter(folder)
    (folder / CARD_FILE).unlink()
    assert load_lung_field_segmenter(folder) is None
    with pytest.raises(AxonInputError, match=CARD_FILE):
        LungFieldSegmenter.load(folder)


def test_net_interface():
    from axonct.models.lung_fields import LungFieldConfig

    net = LungFieldNet(LungFieldConfig(size=32, channels=(4, 8)))
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError):
        net(torch.rand(2, 32, 32))
    with pytest.raises(ValueError):
        LungFieldConfig.from_dict({"size": 30, "channels": [4, 8, 16]})
    with pytest.raises(ValueError):
        LungFieldConfig.from_dict({"depth": 3})


# ----------------------------------------------------------------------------- training


def test_tiny_training_run_writes_a_loadable_card(generator, tmp_path):
    from axonct.training.lung_fields import train_lung_fields

    lines = []
    info = train_lung_fields(tmp_path / "out", steps=2, seed=3, pool=1, val_cases=1, batch_size=2,
                             generator=generator, log=lines.append)
    out = tmp_path / "out"
    assert (out / WEIGHTS_FILE).exists() and (out / CARD_FILE).exists()
    assert not list(out.glob(".*partial*"))
    card = json.loads((out / CARD_FILE).read_text())
    assert card == json.loads(json.dumps(info))
    assert card["training"]["steps"] == 2 and card["training"]["seed"] == 3
    assert len(card["trained_on"]["train_seeds"]) == 1 and "LIDC-IDRI-0001" in card["trained_on"]["source_ct"]
    assert set(card["validation"]["dice"]) == {"clean", "clinical"}
    assert set(card["validation"]["dice"]["clinical"]) == {"frontal", "lateral"}
    seg = LungFieldSegmenter.load(out)
    assert seg.probabilities(np.zeros((128, 128), np.float32)).shape == (128, 128)
    assert any("validation" in line for line in lines)
    # the pool is cached: a second run reads it instead of regenerating
    assert len(list((out / "pool").rglob("*.npz"))) == 3


def test_a_card_carries_the_view_check_thresholds_of_its_network(reference, tmp_path):
    """The input checks read thresholds chosen for one network from its card; a damaged entry is
    refused when the network loads, naming the card."""
    from axonct.models.lung_fields import ViewChecks
    from axonct.pipeline import framing as fr

    folder = tmp_path / "weights"
    folder.mkdir()
    for name in (WEIGHTS_FILE, CARD_FILE):
        shutil.copy(bundled_weights_dir() / name, folder / name)
    card = json.loads((folder / CARD_FILE).read_text())
    card.pop("view_checks", None)
    (folder / CARD_FILE).write_text(json.dumps(card))
    assert LungFieldSegmenter.load(folder).view_checks == ViewChecks()  # no entry: the defaults
    card["view_checks"] = {"inverted_ratio": 1.2, "inverted_difference": 0.0}
    (folder / CARD_FILE).write_text(json.dumps(card))
    seg = LungFieldSegmenter.load(folder)
    assert seg.view_checks == ViewChecks(inverted_ratio=1.2, inverted_difference=0.0)
    # the sample chest's negative is caught with the defaults and passes with thresholds no image
    # can reach: the card's values are the ones used
    from axonct.transforms.normalize import robust_unit

    frontal = robust_unit(torch.from_numpy(reference[0].render_drr())[:1, None])[0, 0].numpy()
    card.pop("view_checks")
    (folder / CARD_FILE).write_text(json.dumps(card))
    assert fr.looks_inverted(1.0 - frontal, LungFieldSegmenter.load(folder))
    card["view_checks"] = {"inverted_ratio": 1e9, "inverted_difference": 2.0}
    (folder / CARD_FILE).write_text(json.dumps(card))
    assert not fr.looks_inverted(1.0 - frontal, LungFieldSegmenter.load(folder))
    for bad in ({"inverted_ratio": "high"}, {"unknown": 1.0}, [1.5, 0.1]):
        card["view_checks"] = bad
        (folder / CARD_FILE).write_text(json.dumps(card))
        with pytest.raises(AxonInputError, match="view_checks") as err:
            LungFieldSegmenter.load(folder)
        assert err.value.path == str(folder / CARD_FILE)
