"""The small CNNs torchslim trains on Fashion-MNIST, and the MNIST CNN of digit-recognizer-py.

ResNet-20/56 follow He et al., "Deep Residual Learning" (arXiv:1512.03385), section 4.2 (the
CIFAR variant: 3 stages of 16/32/64 channels, 6n+2 layers), with one input channel for 28x28 images.
"""

from __future__ import annotations

import torch
from torch import nn


class MnistCNN(nn.Module):
    """The architecture of digit-recognizer-py 0.1.0 (``digit_recognizer/model.py``), same names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = self.conv_layers(x)  # (B, 128, 3, 3)
        return self.fc_layers(x.flatten(1))  # (B, 10)


class FashionCNN(nn.Module):
    """A plain conv-BN-ReLU network: the smallest Fashion-MNIST model of the zoo."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
            )

        self.features = nn.Sequential(
            block(1, width),
            block(width, width),
            nn.MaxPool2d(2),  # 14x14
            block(width, 2 * width),
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # 7x7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(2 * width * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        return self.classifier(self.features(x))  # (B, num_classes)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 conv shortcut where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of depth 6n+2 (20, 32, 44, 56, 110) for single-channel images."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            layers = []
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, 28, 28)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, 7, 7)
        return self.fc(self.pool(x).flatten(1))  # (B, num_classes)


def resnet20(num_classes: int = 10) -> ResNet:
    """ResNet-20 (0.27 M parameters)."""
    return ResNet(20, num_classes)


def resnet56(num_classes: int = 10) -> ResNet:
    """ResNet-56 (0.85 M parameters)."""
    return ResNet(56, num_classes)
