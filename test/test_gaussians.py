import json

import pytest
import torch

from gspose_ros.core.errors import InputError
from gspose_ros.core.gaussians import GaussianObject, load_gaussians, save_gaussians


def small_object(n=50):
    torch.manual_seed(0)
    return GaussianObject(torch.randn(n, 3), torch.randn(n, 3), torch.randn(n, 4), torch.randn(n), torch.randn(n, 4, 3),
                          meta={"diameter": 0.12, "box": [[0, 0, 0], [1, 1, 1]]})


def test_round_trip(tmp_path):
    obj = small_object()
    path = tmp_path / "obj.safetensors"
    save_gaussians(obj, path)
    back = load_gaussians(path)
    for k, v in obj.tensors().items():
        assert torch.equal(back.tensors()[k], v)
    assert back.diameter == 0.12 and back.meta["box"] == [[0, 0, 0], [1, 1, 1]]
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary behind


def test_corrupt_files_are_reported(tmp_path):
    path = tmp_path / "obj.safetensors"
    save_gaussians(small_object(), path)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt"):
        load_gaussians(tmp_path / "trunc.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="corrupt"):
        load_gaussians(tmp_path / "garbage.safetensors")
    with pytest.raises(InputError, match="not found"):
        load_gaussians(tmp_path / "missing.safetensors")


def test_non_finite_and_wrong_version_rejected(tmp_path):
    from safetensors.torch import save_file

    obj = small_object()
    t = {k: v.clone() for k, v in obj.tensors().items()}
    t["means"][3, 1] = float("nan")
    save_file(t, str(tmp_path / "nan.safetensors"), metadata={"gspose": json.dumps({"diameter": 1.0, "format_version": 1})})
    with pytest.raises(InputError, match="non-finite"):
        load_gaussians(tmp_path / "nan.safetensors")
    save_file(obj.tensors(), str(tmp_path / "v9.safetensors"), metadata={"gspose": json.dumps({"diameter": 1.0, "format_version": 9})})
    with pytest.raises(InputError, match="version"):
        load_gaussians(tmp_path / "v9.safetensors")
    for bad in (-0.001, "1 mm", float("nan"), True):  # render.dilation's fitted pixel size
        save_file(obj.tensors(), str(tmp_path / "fit.safetensors"),
                  metadata={"gspose": json.dumps({"diameter": 1.0, "format_version": 1, "fit_pixel_m": bad})})
        with pytest.raises(InputError, match="fit_pixel_m"):
            load_gaussians(tmp_path / "fit.safetensors")


def test_shape_checks():
    with pytest.raises(InputError, match="quats"):
        GaussianObject(torch.zeros(5, 3), torch.zeros(5, 3), torch.zeros(4, 4), torch.zeros(5), torch.zeros(5, 1, 3))
    with pytest.raises(InputError, match="SH degree"):
        GaussianObject(torch.zeros(5, 3), torch.zeros(5, 3), torch.zeros(5, 4), torch.zeros(5), torch.zeros(5, 9, 3))
