"""The seed's detector sequences on real data (../shared/data/bccd_kitti), asserting issues 13 and 14's
accuracy figures (speed: bench/bench_detectnet.py, bench/bench_yolo_v3.py).

Each runs its docs/ script end to end: train from ImageNet weights, evaluate on the test split, prune,
retrain, export fp32 and INT8, evaluate both exports on the test split, then QAT and its INT8 export.
On the 2-core CPU with the machine quiet: detectnet_v2 about 50 minutes, yolo_v3 about two hours.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from taoctl.engine import modelfile

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd_kitti"


def _map(folder: Path) -> float:
    return json.loads((folder / "results.json").read_text())["mAP"]


@pytest.mark.slow
@pytest.mark.skipif(not BCCD.is_dir(), reason="needs ../shared/data/bccd_kitti")
# Issue 13 asks both INT8 exports (PTQ and QAT) to keep 99 % of fp32's mAP; issue 14 either of them.
@pytest.mark.parametrize("script, int8_kept", [("docs/detectnet_v2_bccd.sh", min), ("docs/yolo_v3_bccd.sh", max)])
def test_seed_sequence_on_bccd(tmp_path, script, int8_kept):
    runs = tmp_path / "bccd"
    subprocess.run(["bash", script, str(runs)], cwd=REPO, check=True, timeout=5 * 3600)
    unpruned = _map(runs / "evaluate")
    retrained = _map(runs / "evaluate_retrained")
    fp32 = _map(runs / "evaluate_model")
    int8 = _map(runs / "evaluate_model_int8")
    qat_int8 = _map(runs / "evaluate_model_qat_int8")
    pruning = modelfile.load_model(runs / "pruned" / "model_pruned.tlt").manifest["pruning"]
    macs_kept = pruning["macs_after"] / pruning["macs_before"]
    assert unpruned >= 0.90, f"test mAP50 {unpruned:.4f} < 90 %"
    assert macs_kept <= 0.5, f"the pruned model keeps {macs_kept:.1%} of the MACs > 50 %"
    assert retrained >= 0.97 * unpruned, f"pruned + retrained keeps {retrained / unpruned:.1%} < 97 %"
    assert fp32 == pytest.approx(retrained, abs=1e-4)  # the ONNX model detects what PyTorch does
    kept = int8_kept(int8, qat_int8) / fp32
    assert kept >= 0.99, f"INT8 keeps {kept:.1%} of fp32 < 99 % (PTQ {int8 / fp32:.1%}, QAT {qat_int8 / fp32:.1%})"
