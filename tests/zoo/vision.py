"""Image models: residual CNN, mobile blocks, U-Net, detection heads."""

from __future__ import annotations

from pathlib import Path

from zoo._export import export, randomize_batchnorm, seeded


def _resnet_class():
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            skip = x if self.down is None else self.down(x)
            y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (y + skip).relu()

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU())
            self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    return ResNet


def resnet_bn_module():
    """A residual CNN with BatchNorm as a PyTorch factory (edgeopt exports it)."""
    import torch

    seeded(0)
    model = _resnet_class()()
    randomize_batchnorm(model)
    return model.eval(), (torch.randn(1, 3, 32, 32),)


def build_resnet_bn(folder: Path) -> str:
    """Residual CNN with BatchNorm, given as ``package.module:factory``."""
    return "zoo.vision:resnet_bn_module"


def _mobile_class():
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.reduce = nn.Conv2d(channels, channels // 4, 1)
            self.expand = nn.Conv2d(channels // 4, channels, 1)

        def forward(self, x):
            s = x.mean(dim=(2, 3), keepdim=True)
            return x * nn.functional.hardsigmoid(self.expand(self.reduce(s).relu()))

    class MobileBlock(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False),
                                        nn.BatchNorm2d(2 * channels), nn.Hardswish())
            self.depthwise = nn.Sequential(
                nn.Conv2d(2 * channels, 2 * channels, 3, 1, 1, groups=2 * channels,
                          bias=False), nn.BatchNorm2d(2 * channels), nn.Hardswish())
            self.se = SqueezeExcite(2 * channels)
            self.project = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False),
                                         nn.BatchNorm2d(channels))

        def forward(self, x):
            return x + self.project(self.se(self.depthwise(self.expand(x))))

    class MobileNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False),
                                      nn.BatchNorm2d(16), nn.Hardswish())
            self.blocks = nn.Sequential(MobileBlock(16), MobileBlock(16))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    return MobileNet


def build_mobile_se(folder: Path) -> Path:
    """Depthwise-separable blocks with squeeze-excite and hard-swish, 1x3x32x32."""
    import torch

    seeded(1)
    model = _mobile_class()()
    randomize_batchnorm(model)
    return export(model, (torch.randn(1, 3, 32, 32),), folder / "mobile_se.onnx",
                  ["image"], ["logits"])


def _unet_class():
    import torch
    from torch import nn

    def double_conv(cin: int, cout: int):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1, self.enc2 = double_conv(3, 8), double_conv(8, 16)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.dec = double_conv(24, 8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
            return self.head(self.dec(torch.cat([self.up(e2), e1], dim=1)))

    return UNet


def build_unet(folder: Path) -> Path:
    """U-Net: max-pool down, nearest upsample, skip concat; 1x3x32x32 -> 1x2x32x32."""
    import torch

    seeded(2)
    model = _unet_class()()
    randomize_batchnorm(model)
    return export(model, (torch.randn(1, 3, 32, 32),), folder / "unet.onnx",
                  ["image"], ["mask"])


def _detector_class(classes: int = 3):
    import torch
    from torch import nn

    class Detector(nn.Module):
        """Anchors on a stride-4 grid: pixel-scale boxes (exp regression) and Sigmoid
        class scores, concatenated into one output the way many detectors end."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(),
                                          nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
            self.box = nn.Conv2d(16, 4, 1)
            self.score = nn.Conv2d(16, classes, 1)

        def forward(self, x):
            f = self.backbone(x)
            boxes = (self.box(f).flatten(2).transpose(1, 2) * 0.5).exp() * 16.0
            scores = torch.sigmoid(self.score(f)).flatten(2).transpose(1, 2)
            return torch.cat([boxes, scores], dim=2)

    return Detector


def build_detection_head(folder: Path) -> Path:
    """Detector head: box regression and Sigmoid scores, Concat into 1xNx7, 1x3x32x32 in."""
    import torch

    seeded(3)
    return export(_detector_class()(), (torch.randn(1, 3, 32, 32),),
                  folder / "detection_head.onnx", ["image"], ["detections"])


def build_dynamic_detector(folder: Path) -> Path:
    """The detector with dynamic batch, height and width (and so a dynamic anchor count)."""
    import torch

    seeded(4)
    return export(_detector_class()(), (torch.randn(1, 3, 32, 32),),
                  folder / "dynamic_detector.onnx", ["images"], ["detections"],
                  dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                "detections": {0: "batch", 1: "anchors"}})
