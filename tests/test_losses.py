import pytest
import torch

from pdeseg.losses.segmentation import CEDiceLoss, soft_dice_loss


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
    with pytest.raises(ValueError):
        CEDiceLoss(0.0, 0.0)
