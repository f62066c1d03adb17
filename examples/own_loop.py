"""Train ISD in your own PyTorch loop: isd gives the model, the views and the step contract; the loop is yours.

    python examples/own_loop.py                  # random images, 2 steps
    python examples/own_loop.py --folder DIR     # DIR/<class>/<image>: its images at 32 px
"""

from __future__ import annotations

import argparse
import math

import torch
from torchvision import datasets, transforms

import isd


def train(images: torch.Tensor, steps: int, *, epochs: int = 1, batch_size: int = 64, seed: int = 0,
          lr: float = 0.05, width: int = 16) -> list[float]:
    """ISD on a uint8 tensor [N, C, H, W] for `steps` steps; returns each step's loss."""
    torch.manual_seed(seed)  # the initial weights and the queue
    backbone = isd.build_backbone("resnet18", stem="small", width=width, in_channels=images.shape[1])
    model = isd.ISD(backbone, queue_size=4 * batch_size, temp=0.02, ema=0.99)
    params = [p for p in model.parameters() if p.requires_grad]  # the teacher has none
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    batches = isd.two_view_batches(images, batch_size=batch_size, seed=seed)  # strong views for both
    losses: list[float] = []
    for epoch in range(1, epochs + 1):
        for group in optimizer.param_groups:  # cosine schedule, per epoch
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        for batch in batches.epoch(epoch):
            loss, stats, after = model(batch.key, batch.query)  # the step contract: forward changes nothing
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.apply_step(after)  # then the teacher's EMA update and the enqueue of this step's keys
            losses.append(loss.item())
            if len(losses) == steps:
                return losses
    return losses


def folder_images(root: str, size: int = 32) -> torch.Tensor:
    to_uint8 = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    return torch.stack([image for image, _ in datasets.ImageFolder(root, transform=to_uint8)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="an image folder (DIR/<class>/<image>); default: random images")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    data = folder_images(args.folder) if args.folder else torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    for step, value in enumerate(train(data, args.steps, batch_size=min(args.batch_size, len(data))), 1):
        print(f"step {step}: loss {value:.4f}")
