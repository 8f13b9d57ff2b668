"""The baseline cnnlab is measured against: the plain PyTorch-tutorial pipeline.

A torchvision-style Dataset that turns one image at a time into PIL, per-image transforms
(RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), a DataLoader with
worker processes, fp32, no channels_last: what the PyTorch CIFAR-10 tutorial and most
notebooks do. `__getitem__` mirrors torchvision.datasets.CIFAR10's.
"""

from __future__ import annotations

import time

import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset


class TutorialCIFAR(Dataset):
    def __init__(self, images_nchw: torch.Tensor, labels: torch.Tensor, mean, std, train: bool = True):
        self.data = images_nchw.permute(0, 2, 3, 1).numpy()  # HWC uint8, as torchvision keeps it
        self.targets = labels.tolist()
        steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
        self.transform = T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        return self.transform(img), target


def throughput(model: nn.Module, dataset: TutorialCIFAR, batch_size: int = 128, batches: int = 60,
               warmup: int = 5, num_workers: int = 2, lr: float = 0.01) -> float:
    """Training images per second of the tutorial loop (SGD, fp32), after `warmup` batches."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True,
                        persistent_workers=num_workers > 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            seen, start = 0, time.perf_counter()
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        seen += len(y)
        if i + 1 == warmup + batches:
            break
    return seen / (time.perf_counter() - start)
