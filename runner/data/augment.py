"""Augmentation on whole batches on the device: a random crop of the zero-padded image and a
horizontal flip per image, drawn from the epoch's random stream (a function of the seed and the
epoch alone, so a resumed run draws the same).
"""

import numpy as np
import torch
import torch.nn.functional as F


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch: a function of (seed, epoch) alone, so a resumed run draws the same."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch at offsets (dy, dx), mirrored where `flip`
    (with `pad` 0, the flip alone: each image or its mirror image)."""
    if pad == 0:
        return torch.where(flip[:, None, None, None], x.flip(3), x)
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def draw_crops(sizes: list[int], pad: int, gen: torch.Generator) -> torch.Tensor:
    """The crop offsets (dy, dx) and flips of an epoch's batches of `sizes`, drawn batch by batch for
    the whole batch (so every image gets the same crop under DDP): one (3, sum(sizes)) tensor, sent to
    the device in one copy, not three a step."""
    draws = []
    for size in sizes:
        dy = torch.randint(0, 2 * pad + 1, (size,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (size,), generator=gen)
        flip = torch.rand((size,), generator=gen) < 0.5
        draws.append(torch.stack([dy, dx, flip.long()]))
    return torch.cat(draws, dim=1)
