"""The learned backend: the GS-Pose network's layout, checkpoint loading (safe formats only, clear
errors) and the cascade running end to end on CPU with a checkpoint of random weights."""

import os
import pickle

import numpy as np
import pytest
import torch

from gspose_ros.core import bop
from gspose_ros.core.errors import InputError
from gspose_ros.core.estimator import Estimator, EstimatorConfig
from gspose_ros.core.frontend import FrontEndConfig, make_frontend, store_detector_model
from gspose_ros.core.network import GSPoseNet, RoPE2D, grid_positions, load_network, save_network
from gspose_ros.core.refine import RefineConfig

SMALL = {"reference_views": 4, "bank_viewpoints": 6, "bank_inplane": 2, "query_long_side": 224}


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    net = GSPoseNet().eval()
    # every pixel "object": the co-segmenter's output is then known, so the crop/paste geometry is testable
    torch.nn.init.constant_(net.coseg_prediction_head[-1].bias, 8.0)
    return net


@pytest.fixture(scope="module")
def checkpoint(random_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "gspose_random.safetensors"
    save_network(random_net, path)
    return str(path)


def test_state_dict_has_the_official_layout(random_net):
    state = random_net.state_dict()
    # names and shapes the official model_weights.pth uses (backbone under dino_backbone.)
    expected = {
        "dino_backbone.pos_embed": (1, 1370, 768),
        "dino_backbone.blocks.11.attn.qkv.weight": (2304, 768),
        "dino_backbone.blocks.0.ls1.gamma": (768,),
        "dino_backbone_transition.8.1.weight": (768,),
        "coseg_refer_crossAttn.3.norm_kv.weight": (256,),
        "coseg_query_crossAttn.0.attn.k.weight": (256, 256),
        "coseg_refer_selfAttn_groupwise.2.attn.qkv.bias": (768,),
        "coseg_prediction_head.3.weight": (49, 256, 3, 3),
        "rotation_embedding_head.0.weight": (128, 257, 3, 3),
        "rotation_embedding_head.12.p": (1,),
        "rotation_embedding_head.14.weight": (64, 256),
    }
    for name, shape in expected.items():
        assert tuple(state[name].shape) == shape, name


def test_rope_depends_only_on_relative_position():
    rope = RoPE2D(100.0)
    q, k = torch.randn(1, 2, 1, 32), torch.randn(1, 2, 1, 32)

    def score(pq, pk):
        return (rope(q, torch.tensor([[pq]])) * rope(k, torch.tensor([[pk]]))).sum().item()

    assert score((3, 5), (1, 2)) == pytest.approx(score((7, 9), (5, 6)), rel=1e-4)
    assert score((3, 5), (1, 2)) != pytest.approx(score((3, 5), (2, 2)), rel=1e-3)
    assert grid_positions(1, 2, 3, "cpu")[0].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_network_shapes_on_a_crop_and_a_wide_image(random_net):
    with torch.no_grad():
        crops = torch.rand(2, 3, 224, 224)
        feats = random_net.features(crops)
        assert feats.shape == (2, 768, 32, 32)
        ref_masks = random_net.refer_cosegmentation(feats)
        assert ref_masks.shape == (2, 1, 224, 224)
        wide = random_net.features(torch.rand(1, 3, 168, 224))
        assert random_net.query_cosegmentation(wide, feats, ref_masks.sigmoid()).shape == (1, 1, 168, 224)
        emb = random_net.rotation_embedding(feats, ref_masks.sigmoid())
        assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


def test_checkpoint_round_trips_in_both_safe_formats(random_net, checkpoint, tmp_path):
    loaded = load_network(checkpoint)
    for name, value in random_net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    # the official split: heads in a torch file, backbone in a DINOv2 hub checkpoint (no prefix)
    state = random_net.state_dict()
    heads = tmp_path / "model_weights.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("dino_backbone.")}, heads)
    dino = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save({k[len("dino_backbone."):]: v for k, v in state.items() if k.startswith("dino_backbone.")}, dino)
    split = load_network(str(heads), str(dino))
    assert torch.equal(split.state_dict()["rotation_embedding_head.14.weight"], state["rotation_embedding_head.14.weight"])
    assert torch.equal(split.state_dict()["dino_backbone.pos_embed"], state["dino_backbone.pos_embed"])
    with pytest.raises(InputError, match="no DINOv2 backbone"):
        load_network(str(heads))


def test_bad_checkpoints_are_refused_with_the_reason(random_net, tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_network(str(tmp_path / "nope.pth"))
    with pytest.raises(InputError, match="empty"):
        load_network("")
    state = random_net.state_dict()
    renamed = {("coseg_head.weight" if k == "coseg_prediction_head.3.weight" else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(InputError, match=r"1 missing \(e.g. coseg_prediction_head.3.weight\).*1 unexpected"):
        load_network(str(tmp_path / "renamed.pth"))
    wrong = dict(state)
    wrong["rotation_embedding_head.14.weight"] = torch.zeros(32, 256)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match=r"wrong shape.*rotation_embedding_head.14.weight \(32, 256\)"):
        load_network(str(tmp_path / "wrong.pth"))
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="cannot read"):
        load_network(str(tmp_path / "corrupt.safetensors"))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_with_code_in_it_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload()}, f, protocol=2)
    with pytest.raises(InputError, match="cannot read"):
        load_network(str(path))


def test_frontends_in_one_process_share_one_network(checkpoint):
    config = FrontEndConfig(backend="learned", learned={"model_weights": checkpoint})
    assert make_frontend(config).net is make_frontend(config).net


def test_unknown_backend_and_settings_are_refused(checkpoint):
    with pytest.raises(InputError, match="unknown backend 'magic'"):
        make_frontend(FrontEndConfig(backend="magic"))
    with pytest.raises(InputError, match="unknown learned-backend settings"):
        make_frontend(FrontEndConfig(backend="learned", learned={"model_weights": checkpoint, "colour": 1}))
    with pytest.raises(InputError, match="checkpoint not found"):
        make_frontend(FrontEndConfig(backend="learned", learned={"model_weights": "/no/such/file.pth"}))


def test_learned_cosegmentation_pastes_masks_back_where_the_crops_came_from(checkpoint, dataset):
    frontend = make_frontend(FrontEndConfig(backend="learned", learned={"model_weights": checkpoint, **SMALL}))
    frames = bop.load_split_frames(dataset, "train", 3)[:6]
    images = [f.load()[0] for f in frames]
    seg = frontend.cosegment(images, [f.T for f in frames], [f.K for f in frames])
    assert len(seg.masks) == 6 and np.all(seg.confidences > 0.9)
    for mask, f in zip(seg.masks, frames):
        # the network says "object" everywhere, so each mask is its crop: a square around the
        # projected sphere centre, which sits where the camera looks (the image centre here)
        ys, xs = np.nonzero(mask)
        assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 2 or xs.min() == 0 or ys.min() == 0
        centre = f.T[:3, :3] @ seg.centre + f.T[:3, 3]
        u, v = (f.K @ centre)[:2] / centre[2]
        assert mask[int(v), int(u)]


def test_learned_backend_runs_the_cascade_end_to_end_on_cpu(checkpoint, built_duck, dataset):
    config = EstimatorConfig(frontend=FrontEndConfig(backend="learned", learned={"model_weights": checkpoint, **SMALL}),
                             refine=RefineConfig(max_steps=5, min_steps=5), min_detection_score=0.0, min_score=0.0)
    est = Estimator(config)
    loaded = [f.load() for f in bop.load_split_frames(dataset, "train", 3)]
    store_detector_model(built_duck, [i for i, _ in loaded], [m for _, m in loaded])
    est.add_object("duck", built_duck)
    bank = est.get("duck").prepared.bank
    assert bank.descriptors.shape == (12, 64)  # 6 viewpoints x 2 in-plane RA embeddings
    frame = bop.load_split_frames(dataset, "test", 3)[0]
    image, _ = frame.load()
    (report,) = est.estimate_reports(image, frame.K)
    # every stage ran: the network detected something, retrieval and refinement produced a pose
    assert report.timings["detect"] > 0 and report.timings["retrieve"] > 0 and report.timings["refine"] > 0
    pose = report.pose
    assert pose is not None and np.all(np.isfinite(pose.T)) and 0 <= pose.score <= 1
    assert pose.mask.shape == image.shape[:2] and pose.mask.any()
