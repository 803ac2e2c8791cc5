"""torchvision's ResNet-50 (v1.5), module for module, so that its state dict loads unchanged.

Attribute names, key names and shapes are exactly torchvision's `resnet50()` (320 state-dict entries,
25,557,032 parameters at 1000 classes); torchvision itself is not needed.
"""

from __future__ import annotations

import torch
from torch import nn

from semgen.networks.classifier import ImageNetClassifier

# (blocks, width) per stage layer1..layer4; a block's output has width × EXPANSION channels
RESNET50_STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))
EXPANSION = 4


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride, v1.5) → 1×1 expand, each with BN; ReLU after the sum."""

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, h, w] -> [B, 4·width, h/stride, w/stride]."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchvisionResNet50(ImageNetClassifier):
    """torchvision's ResNet-50 with its own names (conv1, bn1, layer1..layer4, fc), so
    `semgen.checkpoints.load_torchvision_resnet50` loads its state dict without renaming.

    Inputs RGB in [-1, 1] (ImageNet normalisation is applied inside). Levels, named after the last
    conv block of each stage: conv1_1 the stem after conv1 → bn1 → ReLU (before the max-pool),
    conv2_3, conv3_4, conv4_6, conv5_3 the outputs of layer1..layer4, fc8 the logits.
    """

    spatial_layers = ("conv1_1", "conv2_3", "conv3_4", "conv4_6", "conv5_3")
    match_layers = ("conv1_1", "conv2_3", "conv3_4", "conv4_6")  # IMAGINE's four matched layers
    gradcam_layer = "conv5_3"

    def __init__(self, image_size: int = 224, num_classes: int = 1000, class_names: tuple[str, ...] = ()):
        super().__init__(image_size, num_classes, class_names)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        for i, (blocks, width) in enumerate(RESNET50_STAGES):
            stride = 1 if i == 0 else 2
            stage = [Bottleneck(c_in, width, stride)]
            c_in = width * EXPANSION
            stage += [Bottleneck(c_in, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, num_classes)

    def level_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each level's features for one image (no batch axis)."""
        side = self.image_size // 2
        shapes = {"conv1_1": (64, side, side)}
        for i, (name, (_, width)) in enumerate(zip(self.spatial_layers[1:], RESNET50_STAGES)):
            side = self.image_size // 2 ** (i + 2)  # layer1 runs after the max-pool, then each stage halves
            shapes[name] = (width * EXPANSION, side, side)
        shapes["fc8"] = (self.num_classes,)
        return shapes

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, 3, S, S] in [-1, 1] -> {level: [B, C, h, w] or [B, num_classes]}."""
        x = self.normalise(x)
        x = self.relu(self.bn1(self.conv1(x)))  # [B, 64, S/2, S/2]
        feats = {"conv1_1": x}
        x = self.maxpool(x)  # [B, 64, S/4, S/4]
        for name, stage in zip(self.spatial_layers[1:], (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = stage(x)  # [B, 256, S/4] -> [B, 512, S/8] -> [B, 1024, S/16] -> [B, 2048, S/32]
            feats[name] = x
        feats["fc8"] = self.fc(torch.flatten(self.avgpool(x), 1))  # [B, num_classes]
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] -> logits [B, num_classes]."""
        return self.features(x)["fc8"]
