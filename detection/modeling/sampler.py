"""Random positive/negative sampling of matched boxes, computed on-device without host synchronisation."""

import torch

from .matcher import NEGATIVE, POSITIVE


def random_subset_mask(
    mask: torch.Tensor,
    k: int | torch.Tensor,
    generator: torch.Generator | None = None,
    keys: torch.Tensor | None = None,
):
    """bool [N] -> bool [N] with min(k, mask.sum()) of the True entries kept, chosen uniformly at random: those
    with the k smallest random keys (`keys`, float [N] in [0, 1), drawn here when not given).

    `k` may be a 0-dim tensor, so the count never has to be read on the host."""
    if keys is None:
        keys = torch.rand(mask.shape, device=mask.device, generator=generator)
    keys = keys.masked_fill(~mask, 2.0)  # non-candidates sort last
    order = keys.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=mask.device)
    return mask & (rank < k)


class RandomSampler:
    """Sample up to `num` boxes with at most `num * pos_fraction` positives; negatives fill the remainder.

    `add_gt_as_proposals` is read by the R-CNN head, which prepends the GT boxes to the proposals before matching.
    """

    def __init__(self, num: int, pos_fraction: float, add_gt_as_proposals: bool = False):
        if num <= 0 or not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"need num > 0 and 0 <= pos_fraction <= 1, got num={num}, pos_fraction={pos_fraction}")
        self.num = num
        self.pos_fraction = pos_fraction
        self.add_gt_as_proposals = add_gt_as_proposals

    def __call__(
        self,
        match_labels: torch.Tensor,
        generator: torch.Generator | None = None,
        keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """match_labels: int8 [N] from `Matcher` -> (pos_mask, neg_mask), bool [N] each.

        keys: optional float [2, N], the random keys of the positive and of the negative draw (else drawn here)."""
        num_pos_expected = int(self.num * self.pos_fraction)
        pos_keys, neg_keys = (None, None) if keys is None else keys
        pos_mask = random_subset_mask(match_labels == POSITIVE, num_pos_expected, generator, pos_keys)
        num_neg_expected = self.num - pos_mask.sum()
        neg_mask = random_subset_mask(match_labels == NEGATIVE, num_neg_expected, generator, neg_keys)
        return pos_mask, neg_mask

    @property
    def pos_limit(self) -> int:
        """The most positives one draw keeps (`num * pos_fraction`, rounded down)."""
        return int(self.num * self.pos_fraction)

    def sample_slots(
        self,
        match_labels: torch.Tensor,
        generator: torch.Generator | None = None,
        keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The draw of `__call__` as exactly `num` slots, with no data-dependent shape and no host sync:
        (index int64 [num] into match_labels, is_pos bool [num], valid bool [num]).

        The sampled positives come first, then the sampled negatives, each in index order; then padding slots
        (valid False, pointing at index 0) up to `num`. The positives are at most `pos_limit`, so they always lie
        in the first `pos_limit` slots. match_labels must not be empty."""
        n = match_labels.shape[0]
        if n == 0:
            raise ValueError("match_labels: sample_slots needs at least one candidate")
        pos, neg = self(match_labels, generator, keys)
        rank = torch.where(pos, 0, torch.where(neg, 1, 2)).to(torch.uint8)
        if n < self.num:
            rank = torch.cat([rank, rank.new_full((self.num - n,), 2)])
        order = torch.argsort(rank, stable=True)[: self.num]
        slot_rank = rank[order]
        valid = slot_rank < 2
        return torch.where(valid, order, 0), slot_rank == 0, valid
