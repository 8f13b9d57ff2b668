"""A one-file PyTorch-tutorial training script driven by a plain Hydra --multirun: the sweep baseline.

    python tutorial_hydra.py --config-dir DIR --multirun trial=t0,t1,...

Each job: the exercise's TF-tutorial CNN, torchvision-style per-image transforms, a DataLoader,
fp32, Adam; the same training subset as cnnlab (the cache and split are shared so that both see the
same images). Prints and writes result.json in its Hydra output directory.
"""

import json
import time

import hydra
import hydra.core.hydra_config
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, dense_units=64, dropout=0.0, batch_norm=False):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3), *([nn.BatchNorm2d(cout)] if batch_norm else []), nn.ReLU()]

        self.features = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
                                      nn.Flatten())
        head = [nn.Linear(1024, dense_units), nn.ReLU()] if dense_units else []
        head += [nn.Dropout(dropout)] if dropout else []
        head += [nn.Linear(dense_units or 1024, 10)]
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))


@hydra.main(version_base=None, config_name="config")
def main(cfg):
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from cnnlab import data
    from tutorial import TutorialCIFAR  # the per-image Dataset of the throughput baseline

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    ds = data.load(SimpleNamespace(name="cifar10", root=None, download=False))
    splits = data.split(ds, cfg.val_split, cfg.train_fraction, cfg.seed)
    train = DataLoader(TutorialCIFAR(splits.x_train, splits.y_train, ds.mean, ds.std), batch_size=cfg.batch_size,
                       shuffle=True, num_workers=2)
    test = DataLoader(TutorialCIFAR(splits.x_test, splits.y_test, ds.mean, ds.std, train=False), batch_size=500,
                      num_workers=2)
    model = Net(cfg.dense_units, cfg.dropout, cfg.batch_norm)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(cfg.epochs):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test:
            correct += (model(x).argmax(1) == y).sum().item()
    runtime = hydra.core.hydra_config.HydraConfig.get().runtime
    result = {"trial": runtime.choices["trial"], "seed": cfg.seed, "test_acc": correct / len(splits.y_test),
              "seconds": time.perf_counter() - start}
    print(json.dumps(result))
    out = runtime.output_dir  # Hydra 1.3 no longer changes directory
    with open(f"{out}/result.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
