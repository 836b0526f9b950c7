"""Acceptance on real photos (../shared/data/ants_bees, 153 val images): slow, run with -m slow.

mobilenet_v2 from the ImageNet weights with the shipped recipe reaches >= 95 % val top-1 (seeded
training repeats exactly: 96.73 % with the spec's seed; 95.42-96.73 % over seeds 1-11); the
fp32 ONNX export gives the same top-1 and the calibrated INT8 export >= 94 %; pruned with the
shipped retrain recipe's flags to <= 50 % of the parameters and retrained, it keeps >= 92 %
(measured 93.46-94.12 % over random_seed 42, 1-4 of the retrain; docs/pruning_table.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from taoctl.engine import modelfile
from conftest import REPO

DATA = Path("/work/shared/data/ants_bees")
RECIPE = REPO / "specs" / "classification" / "mobilenet_v2_ants_bees.txt"
RETRAIN = REPO / "specs" / "classification" / "mobilenet_v2_ants_bees_retrain.txt"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/ants_bees")]


@pytest.fixture(scope="module")
def taoctl(taoctl):
    """The real command; a failing step fails the test with its output."""
    return lambda *args: taoctl(*args, check=True, timeout=1800)


@pytest.fixture(scope="module")
def top1(taoctl):
    def evaluate(spec, model, out: Path) -> float:
        taoctl("classification", "evaluate", "-e", str(spec), "-m", str(model), "-r", str(out))
        return json.loads((out / "results.json").read_text())["top1_accuracy"]

    return evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory, taoctl):
    root = tmp_path_factory.mktemp("ants_bees")
    run = root / "run"
    taoctl("classification", "train", "-e", str(RECIPE), "-r", str(run))
    return root, run


def test_mobilenet_v2_recipe_reaches_95_percent_and_exports(trained, taoctl, top1):
    root, run = trained
    model = run / "weights" / "mobilenet_v2_010.tlt"
    accuracy = top1(RECIPE, model, root / "eval")
    assert accuracy >= 0.95

    for data_type in ("fp32", "int8"):
        onnx_path = root / f"model_{data_type}.onnx"
        taoctl("classification", "export", "-m", str(model), "-o", str(onnx_path), "-e", str(RECIPE),
               "--data_type", data_type, "--cal_image_dir", str(DATA / "train"), "--batches", "8",
               "--batch_size", "16")
        shutil.copy(run / "classmap.json", root / "classmap.json")
        onnx_top1 = top1(RECIPE, onnx_path, root / f"eval_{data_type}")
        if data_type == "fp32":
            assert onnx_top1 == accuracy
        else:
            assert onnx_top1 >= 0.94


def test_pruned_to_half_the_parameters_keeps_92_percent(trained, taoctl, top1):
    root, run = trained
    base = run / "weights" / "mobilenet_v2_010.tlt"
    pruned = root / "pruned.tlt"
    taoctl("classification", "prune", "-m", str(base), "-o", str(pruned), "-pth", "0.4", "-pg", "8",
           "-el", "features.0", "features.1", "features.2", "features.3", "--criterion", "L2_bn",
           "--cal_image_dir", str(DATA / "train"), "--classifier_input_ratio", "0.2")
    record = modelfile.load_model(pruned).manifest["pruning"]
    assert record["params_after"] <= 0.5 * record["params_before"]
    spec = root / "retrain.txt"
    spec.write_text(RETRAIN.read_text()
                    .replace('"runs/ants_bees/pruned.tlt"', f'"{pruned}"')
                    .replace('"runs/ants_bees/train/weights/mobilenet_v2_010.tlt"', f'"{base}"'))
    taoctl("classification", "train", "-e", str(spec), "-r", str(root / "retrain"))
    assert top1(spec, root / "retrain" / "weights" / "mobilenet_v2_003.tlt", root / "eval_retrain") >= 0.92
