"""Small ResNet-style CNN used by the benchmarks (CIFAR-sized input, random init).

stem conv3x3(3->32)+BN+ReLU, four basic blocks with 32/64/96/128 channels (stride 2 on
blocks 2-4, 1x1 conv + BN shortcut when the shape changes), BN+ReLU, global average pool,
Linear(128->10). Every ReLU position is its own ``nn.ReLU`` instance, so a forward hook on a
ReLU module fires exactly once per model forward.

Run ``.venv/bin/python bench/models.py`` to print the architecture summary and the parameter count.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()  # distinct instance: one hook call per position
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths=(32, 64, 96, 128)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head_bn = nn.BatchNorm2d(cin)
        self.head_relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = self.head_relu(self.head_bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_model(seed: int = 0) -> SmallResNet:
    """The benchmark model with a fixed random init, in eval mode."""
    torch.manual_seed(seed)
    model = SmallResNet()
    # non-trivial BN statistics so activations are not all identical after random init
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` of every Conv2d/Linear, in ``named_modules`` order (13 here)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def relu_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` of every ``nn.ReLU``, in ``named_modules`` order (10 here)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


if __name__ == "__main__":
    m = make_model()
    relus = [n for n, mod in m.named_modules() if isinstance(mod, nn.ReLU)]
    convs = [n for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        y = m(torch.randn(2, 3, 32, 32))
    print(f"SmallResNet: {count_params(m):,} parameters ({count_params(m) / 1e6:.3f} M), "
          f"output {tuple(y.shape)} for input (2, 3, 32, 32)")
    print(f"  {len(relus)} distinct nn.ReLU modules: {', '.join(relus)}")
    print(f"  {len(convs)} Conv2d/Linear weight tensors, "
          f"{sum(mod.weight.numel() for n, mod in m.named_modules() if n in convs):,} weights")
