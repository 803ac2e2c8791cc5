"""Semantic extractors that read a segmentation out of a generator's feature maps (Xu & Zheng).

All take the list of the generator's layer outputs (features[i]: [B, C_i, R_i, R_i]) and return
class logits at the output size [B, num_classes, S, S]:
    LSE    per layer a 1×1 conv without bias, upsampled bilinearly, summed (eq. 1)
    NSE-1  per layer three 3×3 convs with ReLUs in between, upsampled, summed
    NSE-2  per layer a 1×1 extractor; a hidden state that starts at the coarsest layer, is
           upsampled (nearest) as the resolution grows, refined by a 3×3 conv + ReLU at each
           layer, and mapped to classes by a final conv; plus the LSE-like per-layer sum
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class SemanticHead(nn.Module):
    """Shared config and checks; subclasses define `forward(features, size)`."""

    kind = ""

    def __init__(self, layer_channels, num_classes: int, class_names=()):
        super().__init__()
        if class_names and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.layer_channels = tuple(int(c) for c in layer_channels)
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.config = dict(layer_channels=self.layer_channels, num_classes=num_classes, class_names=self.class_names)

    def check_features(self, features) -> None:
        got = tuple(f.shape[1] for f in features)
        if got != self.layer_channels:
            raise ValueError(f"head expects layers with channels {self.layer_channels}, the generator gives {got}")


class LinearSemanticExtractor(SemanticHead):
    kind = "lse"

    def __init__(self, layer_channels, num_classes: int, class_names=()):
        super().__init__(layer_channels, num_classes, class_names)
        self.transforms = nn.ModuleList([nn.Conv2d(c, num_classes, 1, bias=False) for c in self.layer_channels])

    def layer_logits(self, features, size: int) -> list[torch.Tensor]:
        """Each layer's own contribution, upsampled to `size` (their sum is the prediction)."""
        return [_upsample(t(f), size) for t, f in zip(self.transforms, features)]

    def forward(self, features, size: int):
        self.check_features(features)
        by_resolution: dict[int, torch.Tensor] = {}  # sum before upsampling: the same result, fewer upsamples
        for t, f in zip(self.transforms, features):
            r = f.shape[-1]
            by_resolution[r] = t(f) if r not in by_resolution else by_resolution[r] + t(f)
        return torch.stack([_upsample(x, size) for x in by_resolution.values()]).sum(0)

    @torch.no_grad()
    def set_from_centers(self, centers: torch.Tensor) -> "LinearSemanticExtractor":
        """Use class centres [num_classes, sum(C_i)] of the stacked per-pixel features as T (§3.3).
        Rows are normalised, so argmax_k T_k·X is the centre nearest to X/|X| on the unit sphere."""
        centers = torch.nn.functional.normalize(centers, dim=1)
        for t, block in zip(self.transforms, centers.split(list(self.layer_channels), dim=1)):
            t.weight.copy_(block[:, :, None, None])
        return self


class NonlinearSemanticExtractor1(SemanticHead):
    kind = "nse1"

    def __init__(self, layer_channels, num_classes: int, class_names=(), hidden: int = 32):
        super().__init__(layer_channels, num_classes, class_names)
        self.config["hidden"] = hidden
        self.transforms = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(True), nn.Conv2d(hidden, hidden, 3, padding=1),
                          nn.ReLU(True), nn.Conv2d(hidden, num_classes, 3, padding=1))
            for c in self.layer_channels
        ])

    def forward(self, features, size: int):
        self.check_features(features)
        return torch.stack([_upsample(t(f), size) for t, f in zip(self.transforms, features)]).sum(0)


class NonlinearSemanticExtractor2(SemanticHead):
    kind = "nse2"

    def __init__(self, layer_channels, num_classes: int, class_names=(), hidden: int = 32):
        super().__init__(layer_channels, num_classes, class_names)
        self.config["hidden"] = hidden
        self.extract = nn.ModuleList([nn.Conv2d(c, hidden, 1) for c in self.layer_channels])
        self.refine = nn.ModuleList([nn.Conv2d(hidden, hidden, 3, padding=1) for _ in self.layer_channels])
        self.out = nn.Conv2d(hidden, num_classes, 3, padding=1)
        self.direct = nn.ModuleList([nn.Conv2d(hidden, num_classes, 1, bias=False) for _ in self.layer_channels])

    def forward(self, features, size: int):
        self.check_features(features)
        hidden, direct = None, []
        for extract, refine, to_class, f in zip(self.extract, self.refine, self.direct, features):
            e = F.relu(extract(f))
            direct.append(_upsample(to_class(e), size))
            if hidden is not None and hidden.shape[-1] != e.shape[-1]:
                hidden = F.interpolate(hidden, size=e.shape[-2:], mode="nearest")
            hidden = F.relu(refine(e if hidden is None else hidden + e))
        return _upsample(self.out(hidden), size) + torch.stack(direct).sum(0)


HEAD_KINDS = {cls.kind: cls for cls in (LinearSemanticExtractor, NonlinearSemanticExtractor1, NonlinearSemanticExtractor2)}
