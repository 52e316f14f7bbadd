import pytest
import torch

from pdeseg.build import build_loss
from pdeseg.config import LossConfig
from pdeseg.losses.composite import CompositeLoss, deep_supervision_weights
from pdeseg.losses.segmentation import CrossEntropyLoss, SoftDiceLoss, soft_dice_loss

from conftest import ce_dice as CEDiceLoss  # noqa: N812


def test_soft_dice_matches_hand_computation():
    # one pixel, two classes, probabilities (0.75, 0.25) for target class 0
    logits = torch.log(torch.tensor([0.75, 0.25])).view(1, 2, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    inter, denom = 0.75, 1 + 0.75**2 + 0.25**2
    assert float(soft_dice_loss(logits, target, eps=0.0)) == pytest.approx(1 - 2 * inter / denom, rel=1e-5)


def test_confident_correct_prediction_has_near_zero_loss():
    target = torch.randint(0, 4, (2, 8, 8))
    logits = 50 * torch.nn.functional.one_hot(target, 4).movedim(-1, 1).float()
    assert float(CEDiceLoss()(logits, target)) < 1e-6


def test_weights_combine_terms():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    ce = torch.nn.functional.cross_entropy(logits, target)
    dice = soft_dice_loss(logits, target)
    assert float(CEDiceLoss(2.0, 0.5)(logits, target)) == pytest.approx(float(2 * ce + 0.5 * dice), rel=1e-5)
    from pdeseg.errors import ConfigError

    with pytest.raises(ConfigError, match="weight 0"):
        CEDiceLoss(0.0, 0.0)
    with pytest.raises(ConfigError, match="unknown option.*epsilon"):
        build_loss(LossConfig(terms=[{"name": "dice", "epsilon": 1.0}]))  # options are checked when built
    with pytest.raises(ConfigError, match="not a registered loss"):
        build_loss(LossConfig(terms=[{"name": "dicee"}]))


def test_deep_supervision_weights_and_downsampled_targets():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 16, 16))
    full, half = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)
    loss = CompositeLoss([("ce", 1.0, CrossEntropyLoss())])
    half_target = target[:, ::2, ::2]  # nearest downsampling by 2 takes every other pixel
    expected = 2 / 3 * torch.nn.functional.cross_entropy(full, target) + 1 / 3 * torch.nn.functional.cross_entropy(half, half_target)
    lowest = torch.randn(2, 3, 4, 4)
    assert float(loss([full, half, lowest], target)) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss({"logits": full}, target)) == pytest.approx(float(torch.nn.functional.cross_entropy(full, target)), rel=1e-6)


def test_dice_term_module_matches_function():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    assert float(SoftDiceLoss(0.5, False)(logits, target)) == pytest.approx(float(soft_dice_loss(logits, target, 0.5, False)))


def test_deep_supervision_in_3d_with_dice_and_ce_by_hand():
    """Four 3D heads, nnU-Net's weights 1/2^i with the lowest off, normalised (4/7, 2/7, 1/7, 0),
    each term against the target taken at every 2^i-th voxel."""
    from pdeseg.losses.segmentation import SoftDiceLoss, soft_dice_loss

    torch.manual_seed(1)
    target = torch.randint(0, 3, (2, 16, 16, 8))
    heads = [torch.randn(2, 3, 16 // 2**i, 16 // 2**i, 8 // 2**i) for i in range(4)]
    loss = CompositeLoss([("ce", 1.0, CrossEntropyLoss()), ("dice", 0.5, SoftDiceLoss())])
    expected = 0.0
    for w, logits, step in zip((4 / 7, 2 / 7, 1 / 7), heads, (1, 2, 4)):
        t = target[:, ::step, ::step, ::step]
        expected += w * (torch.nn.functional.cross_entropy(logits, t) + 0.5 * soft_dice_loss(logits, t))
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert float(loss(heads, target)) == pytest.approx(float(expected), rel=1e-5)
