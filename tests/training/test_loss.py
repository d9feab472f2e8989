"""The training objective (Eq. 1-5): sampling, and gradients exactly where the paper puts them."""

from __future__ import annotations

import torch

from fastmask_cli.training.assign import IGNORE, NEGATIVE, assign_windows, window_targets
from fastmask_cli.training.loss import FastMaskLoss, Target, mask_iou, sample_windows
from support import tiny_model


def square_target(height: int = 192, width: int = 192, ignore: bool = False) -> Target:
    masks = torch.zeros(1, height, width, dtype=torch.uint8)
    masks[0, 50:140, 40:130] = 1
    return Target(masks, torch.tensor([[40.0, 50.0, 130.0, 140.0]]), torch.tensor([ignore]))


def empty_target(height: int = 192, width: int = 192) -> Target:
    return Target(torch.zeros(0, height, width, dtype=torch.uint8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool))


def test_sampling_balances_and_never_takes_ignored_windows() -> None:
    labels = torch.full((1000,), NEGATIVE)
    labels[:10] = 0
    labels[500:900] = IGNORE
    torch.manual_seed(0)
    pos, neg = sample_windows(labels, 64)
    assert len(pos) == 10 and len(neg) == 32  # all 10 positives, half the budget of negatives
    assert (labels[pos] >= 0).all() and (labels[neg] == NEGATIVE).all()
    labels[:300] = 1
    pos, neg = sample_windows(labels, 64)
    assert len(pos) == len(neg) == 32


def grads(model: torch.nn.Module, prefix: str) -> float:
    return sum(float(p.grad.abs().sum()) for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None)


def capture_pyramid(model: torch.nn.Module) -> dict:
    """Keep the model's next pyramid in the returned dict, with gradients kept on its window scores."""
    captured = {}
    forward = model.forward

    def keep_scores(images, scales=None):
        captured["pyramid"] = pyramid = forward(images, scales)
        for s in pyramid.scores:
            s.retain_grad()
        return pyramid

    model.forward = keep_scores
    return captured


def test_mask_and_attention_get_no_gradient_without_positives() -> None:
    model = tiny_model().train()
    images = torch.rand(1, 3, 192, 192) * 255
    losses = FastMaskLoss(model)(images, [empty_target()])
    losses["loss"].backward()
    assert losses["positives"] == 0 and losses["seg"] == 0 and losses["att"] == 0
    assert grads(model, "head.mask") == 0 and grads(model, "head.attention") == 0
    assert grads(model, "head.score") > 0
    for p in model.parameters():  # every parameter is in the graph (DDP needs it), with a zero gradient at worst
        assert p.grad is not None


def test_with_positives_every_branch_learns() -> None:
    model = tiny_model().train()
    losses = FastMaskLoss(model)(torch.rand(1, 3, 192, 192) * 255, [square_target()])
    losses["loss"].backward()
    assert losses["positives"] > 0 and losses["seg"] > 0 and losses["att"] > 0
    assert grads(model, "head.mask") > 0 and grads(model, "head.attention") > 0 and grads(model, "body") > 0
    total = losses["conf"] + losses["seg"] + losses["att"]
    assert torch.allclose(losses["loss"].detach(), total)


def test_confidence_gradient_only_on_sampled_windows_and_never_on_ignored() -> None:
    model = tiny_model().train()
    captured = capture_pyramid(model)
    target = square_target(ignore=True)
    FastMaskLoss(model, windows_per_image=16)(torch.rand(1, 3, 192, 192) * 255, [target])["loss"].backward()
    pyramid = captured["pyramid"]
    grad = torch.cat([s.grad.flatten(1) for s in pyramid.scores], dim=1)[0]
    labels = assign_windows(pyramid.grid, target.boxes, target.ignore)
    assert (labels == IGNORE).any()
    assert grad[labels == IGNORE].abs().max() == 0
    assert 0 < int((grad != 0).sum()) <= 16


def test_mask_iou_counts_pixels_of_the_predicted_and_target_masks() -> None:
    logits = torch.full((3, 4, 4), -5.0)
    logits[0, :2] = 5.0  # top half predicted
    logits[1] = 5.0  # all predicted
    targets = torch.zeros(3, 4, 4)
    targets[0, :, :2] = 0.7  # left half (soft, above 0.5)
    targets[1, :1] = 0.4  # below 0.5: empty target
    assert torch.allclose(mask_iou(logits, targets), torch.tensor([4 / 12, 0.0, 0.0]))


def test_iou_objectness_targets_each_positive_windows_own_mask_iou() -> None:
    """The confidence target recovered from the gradient (sigmoid(l) - y = N * dL/dl) is 0 for negatives
    and, for positives, the IoU of the window's predicted mask with its target (OLN), not 1."""
    model = tiny_model().train()
    captured = capture_pyramid(model)
    target = square_target()
    losses = FastMaskLoss(model, windows_per_image=64, objectness="iou")(torch.rand(1, 3, 192, 192) * 255, [target])
    losses["loss"].backward()
    pyramid = captured["pyramid"]
    logits = pyramid.flat_scores()[0].detach()
    grad = torch.cat([s.grad.flatten(1) for s in pyramid.scores], dim=1)[0]
    sampled = (grad != 0).nonzero().squeeze(1)
    goal = torch.sigmoid(logits[sampled]) - grad[sampled] * losses["windows"]
    labels = assign_windows(pyramid.grid, target.boxes, target.ignore)[sampled]
    positive = labels >= 0
    assert positive.sum() == losses["positives"] > 0
    assert torch.allclose(goal[~positive], torch.zeros(()), atol=1e-5)
    with torch.no_grad():
        windows = sampled[positive]
        mask_logits, _ = model.decode(pyramid, torch.zeros_like(windows), windows)
        seg, _ = window_targets(target.masks, target.boxes, labels[positive], pyramid.grid.boxes(windows),
                                model.config.mask_size, model.config.window)
    assert torch.allclose(goal[positive], mask_iou(mask_logits, seg), atol=1e-5)
    assert (goal[positive] < 1).all()  # an untrained network's masks are far from its objects'
