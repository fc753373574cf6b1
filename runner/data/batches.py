"""Float batches of one split on the training device, by seeded permutation.

No DataLoader and no workers: an epoch is a permutation drawn from (seed, epoch), and
normalization and augmentation (runner.data.augment) run on whole batches on the device.
"""

import math
from collections.abc import Iterator

import torch

from runner.data.augment import crop_flip, draw_crops, epoch_generator
from runner.data.splits import Split

# Evaluation's batches: on a 2-core CPU as fast as 256 for the small models, and up to 1.5x as fast for
# model=residual, whose activations then stay in the caches.
EVAL_BATCH_SIZE = 128


class Batches:
    """Float batches of one split: normalized, optionally shuffled, augmented and cut to full batches."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: torch.Tensor | None,
        std: torch.Tensor | None,
        shuffle: bool = False,
        augment: bool | str = False,
        drop_last: bool = False,
        seed: int = 0,
        pad: int = 4,
        memory_format: torch.memory_format = torch.contiguous_format,
        rank: int = 0,
        ranks: int = 1,
        split_batches: bool = True,
    ):
        """Under DDP (`ranks` > 1), this process (`rank`) takes its part of every batch when
        `split_batches` (training: the global batch is `batch_size`), else every ranks-th batch
        (evaluation: the ranks then sum their totals)."""
        self.split, self.shuffle, self.augment, self.seed = split, shuffle, bool(augment), seed
        self.pad = 0 if augment == "flip" else pad  # flip only: the crop of the unpadded image is the image
        self.memory_format = memory_format
        self.batch_size = min(batch_size, max(1, len(split)))
        self.drop_last = drop_last
        self.rank, self.ranks, self.split_batches = rank, ranks, split_batches  # ranks divide batch_size: schema
        images = split.in_layout(memory_format)  # for C > 1 in channels_last, a copy, made once
        self.shape = channels, height, width = images.shape[1:]
        self.channels_last = memory_format == torch.channels_last
        # each image as one row of bytes in the memory format's order: a batch is gathered with
        # index_select (several times as fast as indexing), and normalized row by row
        self.rows = self.rows_of(images)
        mean = torch.zeros(channels, device=images.device) if mean is None else mean
        std = torch.ones(channels, device=images.device) if std is None else std
        # x / 255, then (x - mean) / std, as one multiply and one add per value of a row
        per_channel, positions = (1 / (255 * std), -mean / std), height * width
        self.scale, self.shift = (
            v.repeat(positions) if self.channels_last else v.repeat_interleave(positions) for v in per_channel
        )

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _draw_crops(self, gen: torch.Generator) -> torch.Tensor:
        n = len(self.split)
        sizes = [min(n, (i + 1) * self.batch_size) - i * self.batch_size for i in range(len(self))]
        crops = draw_crops(sizes, self.pad, gen)
        return crops.pin_memory() if self.split.images.is_cuda else crops

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`, from batch `start` on (a resumed epoch draws what it skips)."""
        n, device = len(self.split), self.split.images.device
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen).to(device, non_blocking=True) if self.shuffle else None
        if self.augment:
            crops = self._draw_crops(gen).to(device, non_blocking=True)  # (3, batches * batch_size)
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min(n, (i + 1) * self.batch_size)
            if i < start or (not self.split_batches and i % self.ranks != self.rank):
                continue
            part = slice(None)
            if self.split_batches and self.ranks > 1:
                width = (hi - lo) // self.ranks
                part = slice(self.rank * width, (self.rank + 1) * width)
                lo, hi = lo + part.start, lo + part.stop
            if order is not None:
                idx = order[lo:hi]
                rows, labels = self.rows.index_select(0, idx), self.split.labels.index_select(0, idx)
            else:
                rows, labels = self.rows[lo:hi], self.split.labels[lo:hi]
            rows = rows.float()
            if self.augment:
                dy, dx, flip = crops[:, lo:hi]
                cropped = crop_flip(self.images_of(rows), dy, dx, flip.bool(), self.pad)
                rows = self.rows_of(cropped.contiguous(memory_format=self.memory_format))
            yield self.images_of(rows.mul_(self.scale).add_(self.shift)), labels

    def images_of(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, C * H * W) rows -> the (n, C, H, W) batch they hold, a view in the memory format."""
        channels, height, width = self.shape
        if self.channels_last:
            return rows.view(-1, height, width, channels).permute(0, 3, 1, 2)
        return rows.view(-1, channels, height, width)

    def rows_of(self, images: torch.Tensor) -> torch.Tensor:
        """A (n, C, H, W) batch in the memory format -> its (n, C * H * W) rows, a view."""
        ordered = images.permute(0, 2, 3, 1) if self.channels_last else images
        return ordered.reshape(len(images), math.prod(self.shape))
