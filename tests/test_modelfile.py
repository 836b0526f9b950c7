"""Model files: round trip, encryption, pruned widths rebuilt from the manifest, bad files."""

import zipfile

import pytest
import torch
from torch import nn

from taoctl.engine import modelfile
from taoctl.errors import TaoctlError


def small_net(width=16):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 8, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def test_round_trip_plain_is_a_zip_with_json_and_safetensors(tmp_path):
    net = small_net()
    path = tmp_path / "m.tlt"
    modelfile.save_model(path, net, {"task": "classification", "class_map": {"a": 0, "b": 1}})
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "weights.safetensors"]
    loaded = modelfile.load_model(path)
    assert loaded.manifest["class_map"] == {"a": 0, "b": 1}
    assert loaded.manifest["layers"]["0"] == {"type": "Conv2d", "in_channels": 3, "out_channels": 16,
                                              "kernel_size": [3, 3], "stride": [1, 1], "padding": [0, 0],
                                              "dilation": [1, 1], "groups": 1, "padding_mode": "zeros", "bias": True}
    fresh = modelfile.load_weights_into(small_net(), loaded)
    x = torch.randn(2, 3, 8, 8)
    net.eval(), fresh.eval()
    assert torch.equal(net(x), fresh(x))


def test_encrypted_file_needs_the_right_key(tmp_path):
    path = tmp_path / "m.tlt"
    modelfile.save_model(path, small_net(), {"task": "t"}, key="nvidia_tlt")
    assert not zipfile.is_zipfile(path)
    assert modelfile.load_model(path, "nvidia_tlt").manifest["task"] == "t"
    with pytest.raises(TaoctlError, match=r"cannot decrypt .*m\.tlt: wrong key"):
        modelfile.load_model(path, "other")
    with pytest.raises(TaoctlError, match="cannot decrypt .*wrong key"):
        modelfile.load_model(path)


def test_pruned_widths_rebuild_from_manifest_alone(tmp_path):
    pruned = small_net(width=5)
    path = tmp_path / "pruned.tlt"
    modelfile.save_model(path, pruned, {"task": "t"})
    rebuilt = modelfile.load_weights_into(small_net(width=16), modelfile.load_model(path))
    assert rebuilt[0].out_channels == 5 and rebuilt[1].num_features == 5 and rebuilt[3].in_channels == 5
    x = torch.randn(1, 3, 8, 8)
    pruned.eval(), rebuilt.eval()
    assert torch.allclose(pruned(x), rebuilt(x))


def test_not_a_model_file_and_missing_file(tmp_path):
    junk = tmp_path / "junk.tlt"
    junk.write_bytes(b"\x80\x02pickle?")
    with pytest.raises(TaoctlError, match="not a taoctl model file"):
        modelfile.load_model(junk)
    with pytest.raises(TaoctlError, match="not found"):
        modelfile.load_model(tmp_path / "absent.tlt")


def test_mismatched_architecture_is_reported(tmp_path):
    path = tmp_path / "m.tlt"
    modelfile.save_model(path, small_net(), {"task": "t"})
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(TaoctlError):
        modelfile.load_weights_into(other, modelfile.load_model(path))


def test_trainer_state_round_trips_without_pickle(tmp_path):
    net = small_net()
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    modelfile.save_state(tmp_path / "s", {"optimizer": optimizer.state_dict(), "epoch": 3, "t": (1, None)})
    state = modelfile.load_state(tmp_path / "s")
    assert state["epoch"] == 3 and state["t"] == (1, None)
    fresh = torch.optim.Adam(net.parameters())
    fresh.load_state_dict(state["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_assets_travel_in_the_manifest_and_damaged_ones_are_corrupt(tmp_path):
    files = {"tokenizer.json": b'{"model": "wordpiece"}', "vocab.txt": "[PAD]\n[CLS]\nh\u00e9llo\n".encode()}
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "nlp.tlt"
    modelfile.save_model(path, model, {"task": "text_classification", "assets": modelfile.pack_assets(files)},
                         key="k")
    loaded = modelfile.load_model(path, "k")
    assert modelfile.unpack_assets(path, loaded.manifest["assets"]) == files
    with pytest.raises(TaoctlError, match="corrupt model file .*assets are not base64"):
        modelfile.unpack_assets(path, {"vocab.txt": "not base64!"})
