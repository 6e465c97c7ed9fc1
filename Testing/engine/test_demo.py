"""`axon demo` on the real sample CT: files, metrics, and the seen-in-training label."""

from __future__ import annotations

import json
import shutil

import SimpleITK as sitk

from axonct.tools.demo import run_demo


def test_demo_reconstructs_the_real_case_and_labels_it(real_ct_path, tiny_weights, tmp_path):
    out = tmp_path / "demo"
    m = run_demo(out, weights=tiny_weights, steps=2, device="cpu")
    assert m["case"]["status"] == "held out"  # the tiny weights never saw the real CT
    for name in ("reconstruction.nrrd", "ground_truth_model_grid.nrrd", "montage.png", "metrics.json",
                 "input_frontal.png", "input_lateral.png"):
        assert (out / name).exists(), name
    rec, gt = (sitk.ReadImage(str(out / n)) for n in ("reconstruction.nrrd", "ground_truth_model_grid.nrrd"))
    assert rec.GetSize() == gt.GetSize() == (64, 64, 64) and rec.GetSpacing() == gt.GetSpacing()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["honest"]["psnr"] > 5 and 0 < saved["x2ct"]["ssim"] <= 1
    assert saved["reprojection_consistency"]["frontal"]["given"]
    assert set(saved["stage_cuts"]) == {"stage I", "stages I+II", "stages I+II+III"}

    seen = tmp_path / "seen_weights"
    shutil.copytree(tiny_weights, seen)
    card = json.loads((seen / "coarse.json").read_text())
    card["trained_on"]["cases"].append(m["case"]["patient_id"])
    (seen / "coarse.json").write_text(json.dumps(card))
    assert run_demo(tmp_path / "demo2", weights=seen, steps=2, device="cpu")["case"]["status"] == "seen in training"

    made_from = tmp_path / "synthetic_weights"  # trained on chests synthesised from the demo's CT
    shutil.copytree(tiny_weights, made_from)
    card = json.loads((made_from / "coarse.json").read_text())
    card["trained_on"]["synthetic_from"] = [str(real_ct_path)]
    (made_from / "coarse.json").write_text(json.dumps(card))
    assert run_demo(tmp_path / "demo3", weights=made_from, steps=2, device="cpu")["case"]["status"] == \
        "seen in training"
