"""Max-IoU matching of boxes (anchors or proposals) to ground truth, shared by the RPN and every R-CNN stage."""

import torch

POSITIVE = 1
NEGATIVE = 0
IGNORE = -1


class Matcher:
    """Assign each box to the GT it overlaps most, with mmdetection's MaxIoUAssigner rules:

    - max IoU < neg_iou_thr: NEGATIVE;  max IoU >= pos_iou_thr: POSITIVE (matched to the argmax GT);
    - in between: IGNORE (neither trained as foreground nor background);
    - match_low_quality: each GT whose best IoU is >= min_pos_iou also claims every box reaching that best IoU
      (ties included; when several GTs claim one box the GT listed last wins), so that no GT goes unmatched.

    Boxes may be excluded beforehand with `valid` (e.g. anchors outside the image): they are IGNORE.
    """

    def __init__(self, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float, match_low_quality: bool):
        if not 0.0 <= neg_iou_thr <= pos_iou_thr <= 1.0:
            raise ValueError(f"need 0 <= neg_iou_thr <= pos_iou_thr <= 1, got {neg_iou_thr}, {pos_iou_thr}")
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality

    def __call__(self, iou: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """iou: [G, N] float (GT x boxes); valid: optional bool [N].

        Returns matched_idxs int64 [N] (index of the matched GT; 0 where not POSITIVE) and match_labels int8 [N]
        (POSITIVE / NEGATIVE / IGNORE). With G == 0 every valid box is NEGATIVE; with N == 0 (an image without
        proposals) both are empty.
        """
        num_gt, num_boxes = iou.shape
        device = iou.device
        if num_gt == 0 or num_boxes == 0:
            matched_idxs = torch.zeros(num_boxes, dtype=torch.int64, device=device)
            labels = torch.full((num_boxes,), NEGATIVE, dtype=torch.int8, device=device)
        else:
            if valid is not None:
                iou = iou.masked_fill(~valid[None, :], -1.0)
            max_iou, matched_idxs = iou.max(dim=0)  # [N]
            labels = torch.full((num_boxes,), IGNORE, dtype=torch.int8, device=device)
            labels = labels.masked_fill((max_iou >= 0) & (max_iou < self.neg_iou_thr), NEGATIVE)
            labels = labels.masked_fill(max_iou >= self.pos_iou_thr, POSITIVE)
            if self.match_low_quality:
                matched_idxs, labels = self._add_low_quality(iou, matched_idxs, labels)
        if valid is not None:
            labels = labels.masked_fill(~valid, IGNORE)
        matched_idxs = matched_idxs.masked_fill(labels != POSITIVE, 0)
        return matched_idxs, labels

    def _add_low_quality(
        self, iou: torch.Tensor, matched_idxs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gt_max = iou.max(dim=1, keepdim=True).values  # [G, 1]
        claims = (iou == gt_max) & (gt_max >= self.min_pos_iou)  # [G, N]
        # Index + 1 of the last GT claiming each box (0 = none): later GTs override earlier ones, as in a loop.
        gt_ids = torch.arange(1, iou.shape[0] + 1, device=iou.device)[:, None]
        last_claim = (claims * gt_ids).max(dim=0).values  # [N]
        claimed = last_claim > 0
        matched_idxs = torch.where(claimed, last_claim - 1, matched_idxs)
        labels = labels.masked_fill(claimed, POSITIVE)
        return matched_idxs, labels
