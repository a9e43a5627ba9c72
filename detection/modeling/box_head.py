"""R-CNN box head (mmdetection's Shared4Conv1FCBBoxHead and its parameter names)."""

import torch
from torch import nn

from .layers import ConvBlock, NormFactory


class ConvFCBoxHead(nn.Module):
    """`num_convs` x (3x3 conv, norm, ReLU) → flatten → `num_fcs` x (fc, ReLU) → fc_cls and fc_reg.

    forward(x [K, C, S, S]) -> (cls_logits [K, num_classes + 1] with background LAST,
    box_deltas [K, 4 * num_classes] (class-specific, class c at columns 4c..4c+3) or [K, 4] (class_agnostic)).
    """

    def __init__(
        self,
        in_channels: int,
        roi_size: int,
        num_classes: int,
        num_convs: int = 4,
        conv_channels: int = 256,
        num_fcs: int = 1,
        fc_channels: int = 1024,
        norm: NormFactory | None = None,
        class_agnostic: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.shared_convs = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else conv_channels, conv_channels, 3, norm=norm) for i in range(num_convs)
        )
        flat = (conv_channels if num_convs > 0 else in_channels) * roi_size * roi_size
        self.shared_fcs = nn.ModuleList(nn.Linear(flat if i == 0 else fc_channels, fc_channels) for i in range(num_fcs))
        last = fc_channels if num_fcs > 0 else flat
        self.fc_cls = nn.Linear(last, num_classes + 1)
        self.fc_reg = nn.Linear(last, 4 if class_agnostic else 4 * num_classes)
        self._init_linear()

    def _init_linear(self) -> None:
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """rows: optional bool [K], the RoIs whose statistics the norm layers use in training (not padding)."""
        for conv in self.shared_convs:
            x = conv(x, rows)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = torch.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def select_deltas(self, box_deltas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Deltas of class `labels` per RoI: [K, 4 * num_classes] or [K, 4], labels int64 [K] -> [K, 4].
        Background labels (== num_classes) are clamped to a valid column; their rows must be ignored by the caller."""
        if self.class_agnostic:
            return box_deltas
        idx = labels.clamp(max=self.num_classes - 1)
        rows = torch.arange(idx.shape[0], device=idx.device)
        return box_deltas.view(box_deltas.shape[0], self.num_classes, 4)[rows, idx]
