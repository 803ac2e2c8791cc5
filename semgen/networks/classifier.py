"""A VGG-style scene classifier whose stages are the Semantic Pyramid's levels.

conv1..conv5 are the outputs of the five conv stages after pooling; fc7 the second hidden fully
connected layer (after ReLU); fc8 the class logits. fc6 exists but is not a level (paper §3.4).
Inputs are RGB in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc7", "fc8")
SPATIAL_LEVELS = LEVELS[:5]


class ConvStage(nn.Module):
    """n × (conv3x3 → BN → ReLU), then 2×2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int):
        super().__init__()
        layers = []
        for i in range(num_convs):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class Classifier(nn.Module):
    # Layers whose feature statistics IMAGINE matches (the analogue of ResNet-50's four stages) and
    # the one Grad-CAM reads for position control (8×8 at 64 px: fine enough to place a blob).
    spatial_layers = SPATIAL_LEVELS
    match_layers = SPATIAL_LEVELS[:4]
    gradcam_layer = "conv3"

    def __init__(
        self,
        image_size: int = 64,
        num_classes: int = 8,
        stage_channels: tuple[int, ...] = (24, 48, 96, 128, 192),
        convs_per_stage: tuple[int, ...] = (1, 1, 2, 2, 2),
        fc_dim: int = 256,
        dropout: float = 0.3,
        class_names: tuple[str, ...] = (),
    ):
        super().__init__()
        self.config = dict(
            image_size=image_size,
            num_classes=num_classes,
            stage_channels=tuple(stage_channels),
            convs_per_stage=tuple(convs_per_stage),
            fc_dim=fc_dim,
            dropout=dropout,
            class_names=tuple(class_names),
        )
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (five poolings), got {image_size}")
        if len(stage_channels) != 5 or len(convs_per_stage) != 5:
            raise ValueError("stage_channels and convs_per_stage need one entry per conv level (5)")
        self.image_size = image_size
        self.num_classes = num_classes
        self.stage_channels = tuple(stage_channels)
        self.fc_dim = fc_dim
        self.class_names = tuple(class_names)
        stages, c_in = [], 3
        for c_out, n in zip(stage_channels, convs_per_stage):
            stages.append(ConvStage(c_in, c_out, n))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        flat = stage_channels[-1] * (image_size // 32) ** 2
        self.fc6 = nn.Sequential(nn.Flatten(), nn.Linear(flat, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True))
        self.fc7_dropout = nn.Dropout(dropout)
        self.fc8 = nn.Linear(fc_dim, num_classes)

    def level_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each level's features for one image (no batch axis)."""
        shapes = {}
        for i, name in enumerate(SPATIAL_LEVELS):
            side = self.image_size // 2 ** (i + 1)
            shapes[name] = (self.stage_channels[i], side, side)
        shapes["fc7"] = (self.fc_dim,)
        shapes["fc8"] = (self.num_classes,)
        return shapes

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, 3, S, S] in [-1, 1] -> {level: [B, C, h, w] or [B, D]}."""
        feats = {}
        for name, stage in zip(SPATIAL_LEVELS, self.stages):
            x = stage(x)
            feats[name] = x
        h7 = self.fc7(self.fc6(x))
        feats["fc7"] = h7
        feats["fc8"] = self.fc8(self.fc7_dropout(h7))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] -> logits [B, num_classes]."""
        return self.features(x)["fc8"]


VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetClassifier(nn.Module):
    """What the torchvision layouts share: the config, a size check (overall stride 32) and
    ImageNet normalisation of our [-1, 1] inputs."""

    def __init__(self, image_size: int, num_classes: int, class_names: tuple[str, ...]):
        super().__init__()
        self.config = dict(image_size=image_size, num_classes=num_classes, class_names=tuple(class_names))
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (overall stride 32), got {image_size}")
        self.image_size = image_size
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [-1, 1] -> ImageNet-normalised."""
        return ((x + 1) / 2 - self.mean) / self.std


class TorchvisionVGG16(ImageNetClassifier):
    """torchvision's VGG16 (no batch norm), layer for layer: torchvision's `features.N` are our
    `convs.N` (pools at 4, 9, 16, 23, 30) and its `classifier.{0,3,6}` (fc6, fc7, fc8) our
    `fcs.{0,3,6}`; `semgen.checkpoints.load_torchvision_vgg16` renames the keys on load.

    Same interface as `Classifier`: inputs RGB in [-1, 1] (ImageNet normalisation is applied
    inside), levels conv1..conv5 after each pooling, fc7 after its ReLU, fc8 the logits.
    """

    spatial_layers = SPATIAL_LEVELS
    match_layers = SPATIAL_LEVELS[:4]
    gradcam_layer = "conv5"

    def __init__(self, image_size: int = 224, num_classes: int = 1000, class_names: tuple[str, ...] = ()):
        super().__init__(image_size, num_classes, class_names)
        layers, c_in = [], 3
        for stage in VGG16_STAGES:
            for c_out in stage:
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2, 2))
        self.convs = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.fcs = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def level_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for i, name in enumerate(SPATIAL_LEVELS):
            shapes[name] = (VGG16_STAGES[i][-1], self.image_size // 2 ** (i + 1), self.image_size // 2 ** (i + 1))
        shapes["fc7"] = (4096,)
        shapes["fc8"] = (self.num_classes,)
        return shapes

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, 3, S, S] in [-1, 1] -> {level: [B, C, h, w] or [B, D]}."""
        x = self.normalise(x)
        feats, level = {}, 0
        for layer in self.convs:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                feats[SPATIAL_LEVELS[level]] = x
                level += 1
        h = torch.flatten(self.avgpool(x), 1)
        feats["fc7"] = self.fcs[:5](h)
        feats["fc8"] = self.fcs[5:](feats["fc7"])
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["fc8"]
