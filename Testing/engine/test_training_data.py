"""Training on more than one chest: HU labels for CTs without a label map, caches drawn equally,
patients kept together in splits, and a ControlNet fine-tuned on a new prior."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from axonct.config import data_preset
from axonct.data.auto_labels import NoLungsError, auto_label_map
from axonct.data.synthetic_anatomy import LUNG_LEFT, LUNG_RIGHT, SyntheticChestGenerator
from axonct.errors import AxonInputError

AXON = [sys.executable, "-m", "axonct.app.cli"]


@pytest.fixture(scope="module")
def labelled_and_auto(real_ct_path):
    """The sample CT with its radiologist-grade label map, and the same CT labelled from HU only."""
    data = data_preset("tiny")
    labelled = SyntheticChestGenerator(data)
    auto = SyntheticChestGenerator(data, ct_path=real_ct_path)
    return labelled, auto


def _mask(gen, names):
    ids = [gen.structures[n][0] for n in names]
    return np.isin(gen._labels[0, 0].numpy().astype(int), ids)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_hu_labels_find_each_lung_where_the_label_map_has_it(labelled_and_auto):
    labelled, auto = labelled_and_auto
    assert auto.labels_path is None
    for side in (LUNG_LEFT, LUNG_RIGHT):
        assert _dice(_mask(labelled, side), _mask(auto, side)) > 0.85
    s = auto.work_grid.spacing_mm
    for key in ("lung_left", "lung_right", "thorax"):
        assert np.linalg.norm(labelled.landmarks[key][0] - auto.landmarks[key][0]) < 15.0, key
    # the domes are measured on the lower half of each HU lung: within two voxels' height of the lobes'
    for side in ("left", "right"):
        assert abs(labelled.landmarks[f"dome_{side}"][2] - auto.landmarks[f"dome_{side}"][2]) < 4 * s


def test_hu_heart_and_spine_lie_where_the_labels_put_them(labelled_and_auto):
    labelled, auto = labelled_and_auto
    heart = np.linalg.norm(labelled.landmarks["heart"][0] - auto.landmarks["heart"][0])
    assert heart < 40.0  # the HU "heart" is the lower mediastinum: heart plus what surrounds it
    assert abs(labelled.landmarks["spine"][0][0] - auto.landmarks["spine"][0][0]) < 10.0  # left-right
    assert auto.landmarks["spine"][0][1] > auto.landmarks["heart"][0][1]  # spine behind the heart (+y posterior)


def test_a_chest_is_made_from_a_ct_without_a_label_map(labelled_and_auto):
    _, auto = labelled_and_auto
    chest = auto.generate(7)
    air = chest.lung_mask()
    left, right = chest.lung_side_masks()
    assert left.sum() > 0 and right.sum() > 0
    assert 0.5 < left.sum() / right.sum() < 2.0
    x = np.arange(air.shape[2])
    assert (left * x).sum() / left.sum() > (right * x).sum() / right.sum()  # +x is the patient's left


def test_a_ct_with_no_lungs_is_refused_with_its_name(tmp_path):
    z, y, x = np.mgrid[:40, :64, :64]
    water = np.where((y - 32) ** 2 + (x - 32) ** 2 < 28**2, 0.0, -1000.0).astype(np.int16)
    img = sitk.GetImageFromArray(water)
    img.SetSpacing((5.0, 5.0, 5.0))
    path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(img, str(path))
    with pytest.raises(AxonInputError, match="phantom.nii.gz.*cannot be labelled from its HU"):
        SyntheticChestGenerator(data_preset("tiny"), ct_path=path)
    with pytest.raises(NoLungsError):
        auto_label_map(water.astype(np.float32), 5.0)


def test_synth_records_that_the_labels_came_from_hu(real_ct_path, tmp_path):
    out = tmp_path / "syn"
    r = subprocess.run([*AXON, "synth", "--ct", str(real_ct_path), "--out", str(out), "--count", "2",
                        "--seed", "3", "--preset", "tiny"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthetic"]["source_labels"].startswith("auto")
    assert len(manifest["cases"]) == 2


def test_structures_without_a_label_map_are_refused(real_ct_path, tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("group,structure,id\n")
    with pytest.raises(AxonInputError, match="give the map with --labels"):
        SyntheticChestGenerator(data_preset("tiny"), ct_path=real_ct_path, structures_path=csv)


# --------------------------------------------------------------------------- several caches


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    from synthetic import synthetic_cache

    a = synthetic_cache(tmp_path_factory.mktemp("a"), n_cases=2)
    b = synthetic_cache(tmp_path_factory.mktemp("b"), n_cases=8)
    return a.rename(a.parent / "small"), b.rename(b.parent / "large")


def test_each_cache_is_drawn_equally_often_whatever_its_size(two_caches):
    from axonct.data.datasets import Augmentation, BatchMaker, CacheSet, open_caches

    a, b = two_caches
    caches = open_caches([a, b])
    assert isinstance(caches, CacheSet)
    ids = caches.case_ids("all")
    assert {k.split("/")[0] for k in ids} == {"small", "large"}
    maker = BatchMaker(caches, ids, 2, Augmentation.none())
    picks = [k for step in range(100) for k in maker.batch(step, 2, seed=0)["case_ids"]]
    share = sum(k.startswith("small/") for k in picks) / len(picks)
    assert 0.4 < share < 0.6  # 2 of 10 cases, half of the draws
    ct, drr = caches.load(ids[0])
    assert ct.ndim == 3 and drr.shape[0] == 2


def test_caches_of_another_geometry_are_refused_and_like_names_kept_apart(two_caches, tmp_path):
    from axonct.data.datasets import open_caches

    a, b = two_caches
    assert {k.split("/")[0] for k in open_caches([a, a]).case_ids("all")} == {"small", "small-2"}
    other = tmp_path / "other"
    import shutil

    shutil.copytree(b, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config"]["grid"]["fov_mm"] = 440.0
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AxonInputError, match="another grid/geometry"):
        open_caches([a, other])


def test_training_on_two_caches_records_both(two_caches, tmp_path, one_thread):
    a, b = two_caches
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"base": "tiny", "train": {"batch_size": 1, "checkpoint_every": 2, "validate_every": 2,
                                                         "log_every": 1, "val_cases": 1}}))
    r = subprocess.run([*AXON, "train", "sr", "--data", str(a), str(b), "--config", str(cfg), "--out",
                        str(tmp_path / "run"), "--steps", "2", "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "run" / "sr.json").read_text())["trained_on"]
    assert record["caches"] == [str(Path(a).resolve()), str(Path(b).resolve())]
    assert {c.split("/")[0] for c in record["cases"]} == {"small", "large"}


def test_controlnet_fine_tuning_keeps_the_new_prior(tiny_cache, tiny_weights, tmp_path, one_thread):
    """--init-from old weights must not put the old prior (saved beside the old ControlNet) back."""
    from axonct.pipeline.checkpoint import load_stage
    from axonct.presets import model_preset
    from axonct.training.trainer import train

    preset = model_preset("tiny")
    preset.train.steps, preset.train.batch_size = 1, 1
    preset.train.checkpoint_every = preset.train.validate_every = 1
    prior = tmp_path / "prior"
    train("prior", tiny_cache, preset, prior, progress=False, log=lambda m: None, init_from=tiny_weights)
    new_prior, _ = load_stage(prior, "prior")
    out = tmp_path / "cn"
    train("controlnet", tiny_cache, preset, out, progress=False, log=lambda m: None, init_from=tiny_weights,
          prior_dir=str(prior), coarse_dir=str(tiny_weights))
    state, _ = load_stage(out, "controlnet")
    for k, v in new_prior.items():
        assert torch.equal(state[f"prior.{k}"], v), k


# --------------------------------------------------------------------------- patients in splits


def test_breathing_phases_of_one_patient_stay_in_one_split(real_ct_path, tmp_path):
    src = tmp_path / "cts"
    src.mkdir()
    img = sitk.ReadImage(str(real_ct_path))
    small = sitk.Resample(img, [64, 64, 34], sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                          [s * 8 for s in img.GetSpacing()[:2]] + [img.GetSpacing()[2] * 4], img.GetDirection(), -1024)
    names = ["p1_phase00.nii.gz", "p1_phase50.nii.gz", "p2.nii.gz", "p3.nii.gz"]
    for n in names:
        sitk.WriteImage(small, str(src / n))
    table = tmp_path / "patients.csv"
    table.write_text("path,kind,patient\n" + "\n".join(f"ct/{n},ct,{'P1' if n.startswith('p1') else n[:2].upper()}"
                                                        for n in names) + "\n")
    for seed in range(4):
        out = tmp_path / f"cache{seed}"
        r = subprocess.run([*AXON, "prepare", "--ct", str(src), "--out", str(out), "--preset", "tiny", "--patients",
                            str(table), "--val-fraction", "0.34", "--test-fraction", "0", "--seed", str(seed),
                            "--no-progress"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        splits = json.loads((out / "splits.json").read_text())
        manifest = json.loads((out / "manifest.json").read_text())
        p1 = [c["case_id"] for c in manifest["cases"] if c["patient_id"] == "P1"]
        assert len(p1) == 2
        where = [k for k, v in splits["cases"].items() if p1[0] in v]
        assert where and all(c in splits["cases"][where[0]] for c in p1)


def test_a_patient_table_without_the_columns_is_refused(tmp_path, real_ct_path):
    table = tmp_path / "bad.csv"
    table.write_text("file,who\na,b\n")
    r = subprocess.run([*AXON, "prepare", "--ct", str(real_ct_path), "--out", str(tmp_path / "c"), "--preset",
                        "tiny", "--patients", str(table)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "bad.csv" in r.stderr and "path and patient" in r.stderr
    assert not (tmp_path / "c").exists()


def test_the_prior_fine_tunes_from_a_published_folder_that_keeps_it_inside_the_controlnet(
        tiny_cache, tiny_weights, tmp_path, one_thread):
    """Shipped weights hold no prior.safetensors: the frozen prior is saved in controlnet.safetensors."""
    from axonct.pipeline.checkpoint import load_stage
    from axonct.presets import model_preset
    from axonct.training.trainer import train

    published = tmp_path / "published"
    published.mkdir()
    for f in tiny_weights.iterdir():
        if f.is_file() and not f.name.startswith("prior."):
            shutil.copy(f, published / f.name)
    preset = model_preset("tiny")
    preset.train.steps, preset.train.batch_size, preset.train.lr = 1, 1, 0.0
    preset.train.checkpoint_every = preset.train.validate_every = 1
    out = tmp_path / "prior"
    train("prior", tiny_cache, preset, out, progress=False, log=lambda m: None, init_from=published)
    state, _ = load_stage(out, "prior")
    inside, _ = load_stage(published, "controlnet")
    for k, v in state.items():
        assert torch.equal(v, inside[f"prior.{k}"]), k


def test_the_lung_field_network_learns_from_every_training_ct(real_ct_path, tmp_path):
    from axonct.training.lung_fields import train_lung_fields

    other = tmp_path / "P9_chest.nii.gz"
    shutil.copy(real_ct_path, other)  # stands in for another patient's CT without a label map
    card = train_lung_fields(tmp_path / "out", steps=1, seed=0, pool=3, val_cases=1, batch_size=2,
                             data_cfg=data_preset("tiny"), extra_cts=[other], log=lambda m: None)
    record = card["trained_on"]
    assert record["source_ct"][1] == str(other) and record["chests_per_source"] == [2, 1]
    assert record["cases"] == ["reference", "train-000", "train-001", "P9_chest-reference", "P9_chest-train-000"]


def test_ct_sources_are_only_for_the_lung_field_stage(tiny_cache, tmp_path, real_ct_path):
    r = subprocess.run([*AXON, "train", "sr", "--data", str(tiny_cache), "--out", str(tmp_path / "r"),
                        "--ct", str(real_ct_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--ct is for the lung-fields stage" in r.stderr
    assert not (tmp_path / "r").exists()


def test_each_patient_is_drawn_equally_often_whatever_its_volume_count(two_caches, tmp_path):
    """Breathing phases of one 4D CT are one patient: 7 volumes of patient A and 1 of patient B in
    one cache give each patient half of the draws, alone and inside a set of caches."""
    import json
    import shutil

    from axonct.data.datasets import Augmentation, BatchMaker, open_caches

    cache = tmp_path / "phases"
    shutil.copytree(two_caches[1], cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    for i, case in enumerate(manifest["cases"]):
        case["patient_id"] = "B" if i == 0 else "A"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    lone_b = manifest["cases"][0]["case_id"]
    for caches, key in ((open_caches(cache), lone_b), (open_caches([two_caches[0], cache]), f"phases/{lone_b}")):
        ids = caches.case_ids("all")
        maker = BatchMaker(caches, ids, 2, Augmentation.none())
        picks = [k for step in range(150) for k in maker.batch(step, 2, seed=0)["case_ids"]]
        from_cache = [k for k in picks if not k.startswith("small/")]
        share = sum(k == key for k in from_cache) / len(from_cache)
        assert 0.38 < share < 0.62, share  # 1 of 8 volumes, half of the cache's draws


def test_a_share_of_training_views_stays_clean_and_zero_keeps_the_old_draws(two_caches):
    """`clean_view_probability`: that share of samples shows the clean DRR (as `axon drr` writes it),
    the rest the simulated radiograph; at 0 the batches are exactly those of earlier runs."""
    from axonct.data.datasets import Augmentation, BatchMaker, open_caches
    from axonct.presets import TrainConfig
    from axonct.transforms.normalize import robust_unit

    caches = open_caches(two_caches[1])
    ids = caches.case_ids("all")
    plain = BatchMaker(caches, ids, 2, Augmentation(spatial=False))
    zero = BatchMaker(caches, ids, 2, Augmentation(spatial=False, clean_probability=0.0))
    for step in range(3):
        torch.testing.assert_close(plain.batch(step, 2, seed=0)["views"], zero.batch(step, 2, seed=0)["views"])
    half = BatchMaker(caches, ids, 2, Augmentation(spatial=False, clean_probability=0.5))
    clean = 0
    for step in range(40):
        batch = half.batch(step, 1, seed=0)
        drr = torch.from_numpy(caches.load(batch["case_ids"][0])[1]).float()
        clean += bool(torch.allclose(batch["views"][0], robust_unit(drr[:, None])[:, 0], atol=1e-6))
    assert 10 <= clean <= 30, clean
    with pytest.raises(ValueError, match="clean_view_probability"):
        TrainConfig(clean_view_probability=1.5)
