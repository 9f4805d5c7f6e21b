"""The reference PyTorch architectures and losses, written in plain torch.nn for parity tests.

Written from the reference's specification (Monodepth2's networks/ and layers.py: encoder input
normalisation, decoder order, pose scaling, SSIM, warp, loss), not copied. Attribute names reproduce
the state-dict keys of torchvision's ResNet and of Monodepth2's ResnetEncoder / DepthDecoder /
PoseDecoder, so `load_state_dict(..., strict=True)` checks every key and shape of an export.
torchvision itself is not needed (its 0.28 wheel is a CUDA build that does not import next to the
CPU torch); `RESNET18_PARAMETERS` pins the layout to torchvision's parameter count.

Import this module only after `pytest.importorskip("torch")`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# torchvision.models.resnet18() / resnet50() parameter totals, classifier included.
RESNET18_PARAMETERS = 11_689_512
RESNET50_PARAMETERS = 25_557_032


# --- torchvision ResNet layout. -------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride here: v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


_RESNETS = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """torchvision's ResNet (with `fc`), `num_input_images` frames stacked on the channels."""

    def __init__(self, num_layers=18, num_input_images=1):
        super().__init__()
        block, counts = _RESNETS[num_layers]
        self.conv1 = nn.Conv2d(3 * num_input_images, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), 1):
            stride = 1 if stage == 1 else 2
            blocks = []
            for i in range(count):
                downsample = None
                if i == 0 and (stride != 1 or inplanes != planes * block.expansion):
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                blocks.append(block(inplanes, planes, stride if i == 0 else 1, downsample))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, 1000)


class ResnetEncoder(nn.Module):
    """Monodepth2's ResnetEncoder: (x - 0.45) / 0.225, then the 5 feature levels."""

    def __init__(self, num_layers=18, num_input_images=1):
        super().__init__()
        self.encoder = ResNet(num_layers, num_input_images)

    def forward(self, x):
        e = self.encoder
        features = [e.relu(e.bn1(e.conv1((x - 0.45) / 0.225)))]
        features.append(e.layer1(e.maxpool(features[-1])))
        for layer in (e.layer2, e.layer3, e.layer4):
            features.append(layer(features[-1]))
        return features


# --- Monodepth2 decoders. -------------------------------------------------------------------------


class Conv3x3(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x):
        return self.conv(self.pad(x))


class ConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)
        self.nonlin = nn.ELU()

    def forward(self, x):
        return self.nonlin(self.conv(x))


class DepthDecoder(nn.Module):
    """Monodepth2's DepthDecoder; convs live in one ModuleList in creation order."""

    def __init__(self, num_ch_enc, scales=range(4)):
        super().__init__()
        self.scales = list(scales)
        dec = (16, 32, 64, 128, 256)
        self.convs = OrderedDict()
        for i in range(4, -1, -1):
            self.convs[("upconv", i, 0)] = ConvBlock(num_ch_enc[-1] if i == 4 else dec[i + 1],
                                                     dec[i])
            self.convs[("upconv", i, 1)] = ConvBlock(dec[i] + (num_ch_enc[i - 1] if i else 0),
                                                     dec[i])
        for s in self.scales:
            self.convs[("dispconv", s)] = Conv3x3(dec[s], 1)
        self.decoder = nn.ModuleList(list(self.convs.values()))

    def forward(self, features):
        outputs, x = {}, features[-1]
        for i in range(4, -1, -1):
            x = F.interpolate(self.convs[("upconv", i, 0)](x), scale_factor=2, mode="nearest")
            if i > 0:
                x = torch.cat([x, features[i - 1]], 1)
            x = self.convs[("upconv", i, 1)](x)
            if i in self.scales:
                outputs[i] = torch.sigmoid(self.convs[("dispconv", i)](x))
        return outputs


class PoseDecoder(nn.Module):
    """Monodepth2's PoseDecoder (one input feature, 2 frames predicted, x0.01)."""

    def __init__(self, num_ch_enc, num_frames=2):
        super().__init__()
        self.num_frames = num_frames
        self.convs = OrderedDict()
        self.convs["squeeze"] = nn.Conv2d(num_ch_enc[-1], 256, 1)
        self.convs[("pose", 0)] = nn.Conv2d(256, 256, 3, 1, 1)
        self.convs[("pose", 1)] = nn.Conv2d(256, 256, 3, 1, 1)
        self.convs[("pose", 2)] = nn.Conv2d(256, 6 * num_frames, 1)
        self.net = nn.ModuleList(list(self.convs.values()))

    def forward(self, features):
        x = F.relu(self.convs["squeeze"](features[-1]))
        for i in range(3):
            x = self.convs[("pose", i)](x)
            x = F.relu(x) if i != 2 else x
        x = 0.01 * x.mean(3).mean(2).view(-1, self.num_frames, 1, 6)
        return x[..., :3], x[..., 3:]


# --- Warping and losses (layers.py, trainer.compute_losses). --------------------------------------


def ssim_loss(x, y):
    """Per-pixel (1 - SSIM) / 2 with reflection padding and 3x3 average pooling, clamped."""
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    pool = lambda t: F.avg_pool2d(t, 3, 1)  # noqa: E731
    mu_x, mu_y = pool(x), pool(y)
    sigma_x, sigma_y = pool(x * x) - mu_x**2, pool(y * y) - mu_y**2
    sigma_xy = pool(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    n = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    d = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return torch.clamp((1 - n / d) / 2, 0, 1)


def warp(source, depth, T, K, inv_K):
    """Backproject depth, move by T, project with K, grid_sample(border, align_corners=True)."""
    b, _, h, w = depth.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=depth.dtype), torch.arange(w, dtype=depth.dtype),
                            indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, dtype=depth.dtype)])
    cam = depth.view(b, 1, -1) * torch.matmul(inv_K[:, :3, :3], pix)
    cam = torch.cat([cam, torch.ones(b, 1, h * w, dtype=depth.dtype)], 1)
    p = torch.matmul(torch.matmul(K, T)[:, :3, :], cam)
    uv = p[:, :2] / (p[:, 2:3] + 1e-7)
    uv = uv.view(b, 2, h, w).permute(0, 2, 3, 1)
    grid = (uv / torch.tensor([w - 1, h - 1], dtype=depth.dtype) - 0.5) * 2
    return F.grid_sample(source, grid, padding_mode="border", align_corners=True)


def reprojection_error(pred, target):
    """0.85 * mean_c SSIM loss + 0.15 * mean_c |target - pred|, shape [B, 1, H, W]."""
    l1 = (target - pred).abs().mean(1, True)
    return 0.85 * ssim_loss(pred, target).mean(1, True) + 0.15 * l1


def smooth_loss(disp, img):
    """Edge-aware smoothness of the mean-normalised disparity."""
    disp = disp / (disp.mean((2, 3), True) + 1e-7)
    dx = (disp[:, :, :, :-1] - disp[:, :, :, 1:]).abs()
    dy = (disp[:, :, :-1, :] - disp[:, :, 1:, :]).abs()
    dx = dx * torch.exp(-(img[:, :, :, :-1] - img[:, :, :, 1:]).abs().mean(1, True))
    dy = dy * torch.exp(-(img[:, :, :-1, :] - img[:, :, 1:, :]).abs().mean(1, True))
    return dx.mean() + dy.mean()


def monodepth2_loss(disps, target, sources, poses, K, inv_K, pyramid, min_depth=0.1,
                    max_depth=100.0):
    """Full-res multiscale min reprojection with automask (no tie noise) + smoothness."""
    h, w = target.shape[2:]
    total = 0.0
    identity = torch.cat([reprojection_error(src, target) for src in sources], 1)
    for s, disp in sorted(disps.items()):
        up = F.interpolate(disp, (h, w), mode="bilinear", align_corners=False)
        depth = 1 / (1 / max_depth + (1 / min_depth - 1 / max_depth) * up)
        reproj = torch.cat([reprojection_error(warp(src, depth, T, K, inv_K), target)
                            for src, T in zip(sources, poses)], 1)
        photometric = torch.cat([identity, reproj], 1).min(1)[0].mean()
        total = total + photometric + 1e-3 * smooth_loss(disp, pyramid[s]) / 2**s
    return total / len(disps)


# --- Helpers for the tests: layouts, strict loading, non-trivial weights. -------------------------


def nchw(x):
    """numpy/jax NHWC -> a writable torch NCHW tensor (a copy)."""
    import numpy as np

    return torch.from_numpy(np.array(np.asarray(x).transpose(0, 3, 1, 2)))


def tensor(x):
    """numpy/jax array -> a writable torch tensor (a copy)."""
    import numpy as np

    return torch.from_numpy(np.array(x))


def assert_close_nhwc(torch_value, jax_value, tol):
    """A torch NCHW result equals a jdepth NHWC one to `tol` (absolute and relative).

    The absolute tolerance grows with the tensor's largest value (1e-6 of it, when that exceeds
    `tol`): deep encoder features of ~200 carry float32 rounding of ~1e-4 from their summation
    order (oneDNN and XLA differ, and XLA's differs with the threads it gets), which a feature
    near zero after a cancelling sum cannot meet relatively.
    """
    import numpy as np

    expected = torch_value.detach().numpy().transpose(0, 2, 3, 1)
    atol = max(tol, 1e-6 * float(np.abs(expected).max()))
    np.testing.assert_allclose(expected, jax_value, rtol=tol, atol=atol)


def load_strict(module, state):
    """Loads a numpy state dict (plain extras such as height dropped) with strict=True, so every
    key and shape must match; returns the module in eval mode."""
    module.load_state_dict({k: tensor(v) for k, v in state.items() if "." in k}, strict=True)
    return module.eval()


def randomised_resnet(depth, seed):
    """A ResNet with random BatchNorm parameters and statistics (torch starts them at 1 / 0)."""
    torch.manual_seed(seed)
    net = ResNet(depth)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            for values, low, high in ((module.weight, 0.8, 1.2), (module.bias, -0.1, 0.1),
                                      (module.running_mean, -0.1, 0.1),
                                      (module.running_var, 0.5, 1.5)):
                values.data.uniform_(low, high)
    return net
