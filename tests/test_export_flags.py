"""TAO's export flags through taoctl's exporter: target opsets, a static batch, INT8 outputs left in float,
the calibration cache's algorithm, TAO 4's .etlt name, and every flag of TAO's export app on the command line."""

from __future__ import annotations

import configparser
import json

import numpy as np
import onnx
import pytest
import torch
from conftest import make_colour_images
from torch import nn

from taoctl.engine import export
from taoctl.errors import TaoctlError

SOFTMAX, SIGMOID = "predictions/Softmax", "attributes/Sigmoid"


class Classifier(nn.Module):
    """conv-bn-relu-pool-linear-softmax, as a deployed classifier, plus a sigmoid (multi-label) head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.classes = nn.Linear(8, 5)
        self.attributes = nn.Linear(8, 2)

    def forward(self, x):
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 1), 1)
        return torch.softmax(self.classes(features), 1), torch.sigmoid(self.attributes(features))


class GridSample(nn.Module):
    def forward(self, x):
        grid = torch.zeros(x.shape[0], 4, 4, 2)
        return nn.functional.grid_sample(x, grid, align_corners=False)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = Classifier()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding them is exercised
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def adapter(module, **kwargs) -> export.ExportAdapter:
    return export.ExportAdapter(module=module, input_names=("input_1",), output_names=(SOFTMAX, SIGMOID),
                                dynamic_axes={"input_1": {0: export.BATCH}}, **kwargs)


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 16, 16), dtype=np.float32)


def opset_of(path) -> int:
    return next(e.version for e in onnx.load(str(path)).opset_import if e.domain in ("", "ai.onnx"))


def test_opset_13_gives_the_outputs_of_opset_18(classifier, tmp_path):
    sample = {"input_1": images(4)}
    old = export.export_model(adapter(classifier), tmp_path / "o13.onnx", sample, opset=13).onnx
    new = export.export_model(adapter(classifier), tmp_path / "o18.onnx", sample, opset=18).onnx
    assert (opset_of(old), opset_of(new)) == (13, 18)
    onnx.checker.check_model(str(old), full_check=True)
    x = images(7, seed=1)  # another batch size: the batch axis stays dynamic
    got, want = export.run_onnx(old, x), export.run_onnx(new, x)
    assert list(got) == [SOFTMAX, SIGMOID]
    for name in (SOFTMAX, SIGMOID):
        assert got[name].shape == want[name].shape and np.abs(got[name] - want[name]).max() < 1e-5
    assert opset_of(export.export_model(adapter(classifier), tmp_path / "default.onnx", sample).onnx) == \
        export.DEFAULT_OPSET


def test_opsets_that_cannot_be_written_are_one_line(classifier, tmp_path):
    sample = {"input_1": images(2)}
    with pytest.raises(TaoctlError, match="^ONNX opset 6 is not supported: taoctl exports opset 7 and newer$"):
        export.export_model(adapter(classifier), tmp_path / "o6.onnx", sample, opset=6)
    with pytest.raises(TaoctlError, match="^INT8 export needs opset 13 or newer .*, got 12$"):
        export.export_model(adapter(classifier), tmp_path / "o12.onnx", sample, opset=12, data_type="int8",
                            calibration=[sample])
    module = GridSample()  # grid_sample exists in ONNX from opset 16
    grid_adapter = export.ExportAdapter(module=module, input_names=("x",), output_names=("y",),
                                        dynamic_axes={"x": {0: export.BATCH}})
    with pytest.raises(TaoctlError) as caught:
        export.export_model(grid_adapter, tmp_path / "g13.onnx", {"x": images(2)}, opset=13)
    assert str(caught.value).startswith("ONNX opset 13 cannot be produced for this model (Exporting the operator "
                                        "'aten::grid_sampler' to ONNX opset version 13 is not supported.")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    assert opset_of(export.export_model(grid_adapter, tmp_path / "g16.onnx", {"x": images(2)}, opset=16).onnx) == 16


def test_int8_leaves_softmax_and_sigmoid_outputs_in_float(classifier, tmp_path):
    sample = {"input_1": images(16)}
    calibration = [{"input_1": images(8, seed)} for seed in (2, 3)]
    result = export.export_model(adapter(classifier), tmp_path / "q.onnx", sample, data_type="int8",
                                 calibration=calibration, cal_method="entropy")
    graph = onnx.load(str(result.onnx)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    assert {producers[SOFTMAX], producers[SIGMOID]} == {"Softmax", "Sigmoid"}  # no DequantizeLinear after them
    assert "QuantizeLinear" in producers.values()  # the rest is quantised
    quantised, reference = export.run_onnx(result.onnx, sample), export.torch_outputs(adapter(classifier), sample)
    for name in (SOFTMAX, SIGMOID):
        steps = quantised[name] * 255
        assert np.abs(steps - np.round(steps)).max() > 0.05, f"{name} comes in 1/255 steps"
        assert np.abs(quantised[name] - reference[name]).max() < 0.05
    assert result.cal_cache.read_text().splitlines()[0] == "TRT-8601-EntropyCalibration2"


@pytest.mark.parametrize("method, header", [("minmax", "TRT-8601-MinMaxCalibration"),
                                            ("entropy", "TRT-8601-EntropyCalibration2"),
                                            ("percentile", "TRT-8601-LegacyCalibration")])
def test_calibration_cache_header_names_the_algorithm(tmp_path, method, header):
    export.write_trt_cache(tmp_path / "cal.bin", {"input_1": (-2.0, 1.0)}, method)
    assert (tmp_path / "cal.bin").read_text().splitlines()[0] == header
    assert export.read_trt_cache(tmp_path / "cal.bin") == {"input_1": pytest.approx(2.0 / 127)}


def test_static_batch_size_fixes_the_batch_dimension(classifier, tmp_path, capsys):
    fields = export.DeepStreamFields(export.NetworkType.CLASSIFIER, labels=tuple("abcde"),
                                     normalizer={"mean": [0.0] * 3, "std": [1.0] * 3, "bgr": False})
    calibration = [{"input_1": images(5, seed)} for seed in (4, 5)]  # 10 rows regrouped into batches of 3
    result = export.export_model(adapter(classifier, deepstream=fields), tmp_path / "s.onnx",
                                 {"input_1": images(2)}, static_batch_size=3, data_type="int8",
                                 calibration=calibration, gen_ds_config=True, max_batch_size=8)
    declared = [[d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
                for i in onnx.load(str(result.onnx)).graph.input]
    assert declared == [[3, 3, 16, 16]]
    assert export.run_onnx(result.onnx, images(3))[SOFTMAX].shape == (3, 5)
    assert "Calibrating on 12 images" in capsys.readouterr().out
    config = configparser.ConfigParser()
    config.read(result.deepstream_config)
    assert config["property"]["batch-size"] == "3"
    dynamic = export.export_model(adapter(classifier), tmp_path / "d.onnx", {"input_1": images(2)},
                                  static_batch_size=-1).onnx  # TAO's -1: dynamic
    assert onnx.load(str(dynamic)).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    with pytest.raises(TaoctlError, match="^--static_batch_size must be -1 \\(dynamic\\) or >= 1, got 0$"):
        export.export_model(adapter(classifier), tmp_path / "z.onnx", {"input_1": images(2)}, static_batch_size=0)


def test_tensorrt_profile_batch_sizes(classifier):
    sample = {"input_1": images(2)}
    profile = export.tensorrt_profile(adapter(classifier), sample, 16, opt_batch_size=4, min_batch_size=2)
    assert profile == {"input_1": ((2, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16))}
    with pytest.raises(TaoctlError, match="--min_batch_size \\(8\\) <= --opt_batch_size \\(4\\) <= --max_batch_size"):
        export.batch_profile(16, min_batch_size=8, opt_batch_size=4)


def test_etlt_output_is_plain_onnx_named_in_the_deepstream_config(classifier, tmp_path, capsys):
    fields = export.DeepStreamFields(export.NetworkType.CLASSIFIER, labels=tuple("abcde"),
                                     normalizer={"mean": [0.0] * 3, "std": [1.0] * 3, "bgr": False})
    result = export.export_model(adapter(classifier, deepstream=fields), tmp_path / "model.etlt",
                                 {"input_1": images(2)}, gen_ds_config=True)
    notices = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Notice:")]
    assert len(notices) == 1 and "unencrypted ONNX" in notices[0] and "onnx-file=" in notices[0]
    onnx.checker.check_model(str(result.onnx))
    assert result.deepstream_config.read_text().count("onnx-file=model.etlt\n") == 1
    with pytest.raises(TaoctlError, match="name the output \\*.onnx"):
        export.export_model(adapter(classifier), tmp_path / "model.uff", {"input_1": images(2)})


# TAO's export app (nvidia_tao_tf1/cv/common/export/app.py) and its entrypoint's flags.
TAO_EXPORT_FLAGS = ["-m", "--model", "-k", "--key", "-o", "--output_file", "--force_ptq", "--cal_data_file",
                    "--cal_image_dir", "--cal_json_file", "--data_type", "-s", "--strict_type_constraints",
                    "--gen_ds_config", "--cal_cache_file", "--batches", "--max_workspace_size", "--max_batch_size",
                    "--batch_size", "--min_batch_size", "--opt_batch_size", "--onnx_route", "-e", "--experiment_spec",
                    "--engine_file", "--static_batch_size", "--target_opset", "--results_dir", "-v", "--verbose",
                    "--gpus", "--gpu_index", "--log_file", "--use_amp", "-np", "--num_processes"]


def test_every_tao_export_flag_is_declared():
    from taoctl.tasks.classification.scripts.export import command

    declared = {name for param in command.params for name in param.opts}
    assert [flag for flag in TAO_EXPORT_FLAGS if flag not in declared] == []
    opset_help = next(param.help for param in command.params if "--target_opset" in param.opts)
    assert f"default {export.DEFAULT_OPSET}" in opset_help


SPEC = """
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" }}
train_config {{
  train_dataset_path: "{data}/train" val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ lr: 0.01 }} }} lr_config {{ step {{ learning_rate: 0.01 step_size: 1 gamma: 1 }} }}
  batch_size_per_gpu: 4 n_epochs: 1 n_workers: 0
}}
eval_config {{ eval_dataset_path: "{data}/val" top_k: 1 batch_size: 4 }}
"""


def test_tao_export_command_with_every_flag(tmp_path, taoctl):
    data = make_colour_images(tmp_path / "data", {"train": 4, "val": 2})
    spec = tmp_path / "spec.txt"
    spec.write_text(SPEC.format(data=data))
    taoctl("classification", "train", "-e", spec, "-r", tmp_path / "train", check=True)
    out = tmp_path / "export"
    qat_scales = tmp_path / "qat.json"
    qat_scales.write_text("{}")
    result = taoctl(
        "classification", "export", "-m", tmp_path / "train" / "weights" / "resnet_001.tlt", "-o", out / "m.etlt",
        "-e", spec, "--data_type", "int8", "--cal_image_dir", data / "val", "--batches", "1", "--batch_size", "2",
        "--cal_cache_file", out / "cal.bin", "--cal_json_file", qat_scales, "--force_ptq", "-s",
        "--static_batch_size", "-1", "--min_batch_size", "1", "--opt_batch_size", "2", "--max_batch_size", "4",
        "--max_workspace_size", str(1 << 30), "--onnx_route", "keras2onnx", "--target_opset", "13",
        "--results_dir", out / "logs", "--gpus", "1", "--gpu_index", "0", "--log_file", out / "export.log",
        "--gen_ds_config", check=True)
    notices = [line for line in result.stdout.splitlines() if line.startswith("Notice:")]
    for flag in ("--force_ptq", "--cal_json_file", "--onnx_route", "-s/--strict_type_constraints", "m.etlt"):
        assert len([line for line in notices if flag in line]) == 1, (flag, notices)
    engine_only = next(line for line in notices if "-s/--strict_type_constraints" in line)
    for flag in ("--min_batch_size", "--opt_batch_size", "--max_workspace_size", "--gpu_index"):
        assert flag in engine_only
    assert opset_of(out / "m.etlt") == 13
    assert (out / "cal.bin").read_text().startswith("TRT-8601-LegacyCalibration\n")  # percentile, the default
    config = configparser.ConfigParser()
    config.read(out / "nvinfer_config.txt")
    assert config["property"]["onnx-file"] == "m.etlt" and config["property"]["batch-size"] == "4"
    status = [json.loads(line) for line in (out / "logs" / "status.json").read_text().splitlines()]
    assert status[-1]["status"] == "SUCCESS"
    assert all(line in (out / "export.log").read_text() for line in notices)
