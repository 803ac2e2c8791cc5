"""Intersection over union as the linear-semantics paper defines it (App. A)."""

from __future__ import annotations

import torch


def per_image_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """pred, target: int [B, H, W] -> IoU [B, C], NaN where the class is in neither."""
    p = torch.nn.functional.one_hot(pred.long(), num_classes).bool()
    t = torch.nn.functional.one_hot(target.long(), num_classes).bool()
    inter = (p & t).sum((1, 2)).float()
    union = (p | t).sum((1, 2)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))


class IoUMeter:
    """Per class: the mean over images where the class is in the prediction or the target (eq. 4);
    mIoU: the mean over classes that occurred at all."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.sum = torch.zeros(num_classes, dtype=torch.float64)
        self.count = torch.zeros(num_classes, dtype=torch.float64)

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        iou = per_image_iou(pred, target, self.num_classes).double()
        seen = ~iou.isnan()
        self.sum += torch.where(seen, iou, torch.zeros_like(iou)).sum(0)
        self.count += seen.sum(0)

    def per_class(self) -> list[float | None]:
        return [float(s / c) if c else None for s, c in zip(self.sum, self.count)]

    def miou(self) -> float:
        values = [v for v in self.per_class() if v is not None]
        return sum(values) / len(values) if values else float("nan")


def image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mIoU of each image [B] over the classes present in its prediction or target (eq. 7's mIoU)."""
    return per_image_iou(pred, target, num_classes).nanmean(1)
