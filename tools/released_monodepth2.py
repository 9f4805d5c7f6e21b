"""The released PyTorch Monodepth2 train step: the yardstick for jdepth's speed and learning.

Networks and geometry layers are nianticlabs' released code as the PyPI `manydepth` package ships it
(`manydepth.networks.ResnetEncoder / DepthDecoder / PoseDecoder`, `manydepth.layers.SSIM /
BackprojectDepth / Project3D / get_smooth_loss / disp_to_depth / transformation_from_parameters`).
The loss is Monodepth2's `trainer.py` (`predict_poses`, `generate_images_pred`,
`compute_reprojection_loss`, `compute_losses`: full-resolution multi-scale, per-pixel minimum,
automask with 1e-5 tie-breaking noise, edge-aware smoothness of the mean-normalised disparity
/ 2**scale), written from it because the package's own trainer is ManyDepth's. Adam over depth
and pose networks, as the reference.

Optional: `pip install -e ".[reference]"` (torch, torchvision, manydepth, matplotlib). Never
imported by jdepth itself: tools/benchmark.py (`--against torch`) and tools/train_released.py use
it.

Inputs are what jdepth's pipeline and `device_transforms.prepare_images` produce (NHWC floats in
[0, 1], jittered copies, the image pyramid, K / inv_K at scale 0), so both implementations train on
exactly the same tensors; the jitter is applied outside this step (the reference does it in its
data loader workers).
"""

from __future__ import annotations

import sys
import types

import numpy as np


def import_released():
    """(torch, manydepth.networks, manydepth.layers), or ImportError naming the extra."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the released PyTorch step needs torch: "
                          "pip install -e '.[reference]'") from e
    # torchvision's PyPI wheel registers CUDA meta kernels at import, which fails beside the CPU
    # torch build; the manydepth networks only use torchvision.models' ResNet classes.
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    threads = torch.get_num_threads()
    try:
        from manydepth import layers, networks
    except ImportError as e:
        raise ImportError("the released PyTorch step needs the PyPI `manydepth` package: "
                          "pip install -e '.[reference]'") from e
    # manydepth.networks.resnet_encoder sets OMP_NUM_THREADS=1 at import; keep the caller's count.
    torch.set_num_threads(threads)
    return torch, networks, layers


class ReleasedMonodepth2:
    """Monodepth2 (ResNet-18 depth + separate ResNet-18 pose) with its trainer's loss and Adam.

    Args:
      batch_size, height, width: the step's static shapes (the reference's layers are built for
        them).
      scales: decoder output scales (0, 1, 2, 3).
      frame_ids: (0, -1, 1).
      lr: Adam learning rate (the reference: 1e-4).
      seed: torch.manual_seed before building (initialisation).
      num_threads: torch intra-op threads.
    """

    def __init__(self, batch_size, height, width, scales=(0, 1, 2, 3), frame_ids=(0, -1, 1),
                 min_depth=0.1, max_depth=100.0, lr=1e-4, ssim_weight=0.85,
                 smoothness_weight=1e-3, automask=True, seed=0, num_threads=None):
        torch, networks, layers = import_released()
        self.torch, self.layers = torch, layers
        if num_threads:
            torch.set_num_threads(int(num_threads))
        torch.manual_seed(seed)
        self.batch_size, self.height, self.width = batch_size, height, width
        self.scales, self.frame_ids = tuple(scales), tuple(frame_ids)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.ssim_weight, self.smoothness_weight, self.automask = (
            ssim_weight, smoothness_weight, automask)
        self.encoder = networks.ResnetEncoder(18, False)
        self.depth = networks.DepthDecoder(self.encoder.num_ch_enc, self.scales)
        self.pose_encoder = networks.ResnetEncoder(18, False, num_input_images=2)
        self.pose = networks.PoseDecoder(self.pose_encoder.num_ch_enc, num_input_features=1,
                                         num_frames_to_predict_for=2)
        self.modules = [self.encoder, self.depth, self.pose_encoder, self.pose]
        # The trainer's automask tie-breaking noise (N(0, 1) x 1e-5); parity tests set it to 0.
        self.tie_noise_std = 0.00001
        params = [p for m in self.modules for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr)
        self.ssim = layers.SSIM()
        self.backproject = layers.BackprojectDepth(batch_size, height, width)
        self.project = layers.Project3D(batch_size, height, width)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _nchw(self, x) -> "object":
        return self.torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))

    def tensors(self, color, color_aug, pyramid, K, inv_K) -> dict:
        """Torch inputs from jdepth's prepared arrays.

        Args:
          color, color_aug: [B, F, H, W, 3] in frame_ids order.
          pyramid: list over scales of [B, h_s, w_s, 3] target frames (scale 0 first).
          K, inv_K: [B, 4, 4] at scale 0.
        """
        color, color_aug = np.asarray(color, np.float32), np.asarray(color_aug, np.float32)
        inputs = {}
        for i, f in enumerate(self.frame_ids):
            inputs[("color", f)] = self._nchw(color[:, i])
            inputs[("color_aug", f)] = self._nchw(color_aug[:, i])
        for s, image in enumerate(pyramid):
            inputs[("pyramid", s)] = self._nchw(np.asarray(image, np.float32))
        inputs["K"] = self.torch.from_numpy(np.asarray(K, np.float32).copy())
        inputs["inv_K"] = self.torch.from_numpy(np.asarray(inv_K, np.float32).copy())
        return inputs

    def forward(self, inputs: dict, train: bool = True) -> dict:
        """Depth of frame 0 (disps per scale) and cam_T_cam to every source frame."""
        for m in self.modules:
            m.train(train)
        outputs = dict(self.depth(self.encoder(inputs[("color_aug", 0)])))
        for f in self.frame_ids[1:]:
            pair = ([inputs[("color_aug", f)], inputs[("color_aug", 0)]] if f < 0
                    else [inputs[("color_aug", 0)], inputs[("color_aug", f)]])
            features = [self.pose_encoder(self.torch.cat(pair, 1))]
            axisangle, translation = self.pose(features)
            outputs[("axisangle", f)], outputs[("translation", f)] = axisangle, translation
            outputs[("cam_T_cam", f)] = self.layers.transformation_from_parameters(
                axisangle[:, 0], translation[:, 0], invert=(f < 0))
        return outputs

    def _reprojection(self, pred, target):
        l1 = (target - pred).abs().mean(1, True)
        ssim = self.ssim(pred, target).mean(1, True)
        return self.ssim_weight * ssim + (1 - self.ssim_weight) * l1

    def loss(self, inputs: dict, outputs: dict):
        """trainer.generate_images_pred + compute_losses (full-resolution multi-scale)."""
        F = self.torch.nn.functional
        torch = self.torch
        target = inputs[("color", 0)]
        total = 0.0
        for scale in self.scales:
            disp = outputs[("disp", scale)]
            full = F.interpolate(disp, [self.height, self.width], mode="bilinear",
                                 align_corners=False)
            _, depth = self.layers.disp_to_depth(full, self.min_depth, self.max_depth)
            cam_points = self.backproject(depth, inputs["inv_K"])
            reprojection, identity = [], []
            for f in self.frame_ids[1:]:
                pix = self.project(cam_points, inputs["K"], outputs[("cam_T_cam", f)])
                warped = F.grid_sample(inputs[("color", f)], pix, padding_mode="border",
                                       align_corners=True)
                reprojection.append(self._reprojection(warped, target))
                if self.automask:
                    identity.append(self._reprojection(inputs[("color", f)], target))
            combined = torch.cat(reprojection, 1)
            if self.automask:
                identity = torch.cat(identity, 1)
                identity = identity + torch.randn(identity.shape) * self.tie_noise_std
                combined = torch.cat((identity, combined), 1)
            to_optimise = combined.min(dim=1)[0] if combined.shape[1] > 1 else combined
            loss = to_optimise.mean()
            norm_disp = disp / (disp.mean(2, True).mean(3, True) + 1e-7)
            smooth = self.layers.get_smooth_loss(norm_disp, inputs[("pyramid", scale)])
            total = total + loss + self.smoothness_weight * smooth / (2 ** scale)
        return total / len(self.scales)

    def step(self, inputs: dict) -> dict:
        """One Adam step; returns the loss, the mean depth at scale 0 and the mean norm of the
        translation to the first later frame."""
        outputs = self.forward(inputs, train=True)
        loss = self.loss(inputs, outputs)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with self.torch.no_grad():
            _, depth = self.layers.disp_to_depth(outputs[("disp", 0)], self.min_depth,
                                                 self.max_depth)
            later = [f for f in self.frame_ids if f > 0] or list(self.frame_ids[1:])
            t = outputs[("cam_T_cam", later[0])][:, :3, 3]
        # Named as jdepth's step metrics (pose_summary, collapse.step_diagnostics).
        return {"loss": loss.item(), "depth/mean": float(depth.mean()),
                "pose/t_norm": float(t.norm(dim=-1).mean())}

    def predict_disp(self, images: np.ndarray) -> np.ndarray:
        """Eval-mode disparity at scale 0, [N, H, W] for images [N, H, W, 3] in [0, 1]."""
        self.encoder.eval()
        self.depth.eval()
        with self.torch.no_grad():
            disp = self.depth(self.encoder(self._nchw(np.asarray(images, np.float32))))
        return disp[("disp", 0)][:, 0].numpy()

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "depth": self.depth.state_dict(),
                "pose_encoder": self.pose_encoder.state_dict(), "pose": self.pose.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("encoder", "depth", "pose_encoder", "pose", "optimizer"):
            getattr(self, name).load_state_dict(state[name])


def save_inputs(path: str, color, color_aug, pyramid, K, inv_K) -> None:
    """Writes prepared step inputs for `serve` (arrays as `tensors` takes them)."""
    arrays = {"color": color, "color_aug": color_aug, "K": K, "inv_K": inv_K}
    arrays.update({f"pyramid{s}": image for s, image in enumerate(pyramid)})
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})


def serve(inputs_path: str, lr: float, min_depth: float, max_depth: float, threads: int,
          scales=(0, 1, 2, 3), frame_ids=(0, -1, 1)) -> None:
    """A step server for side-by-side timing in a process of its own.

    Reads `step` or `quit` lines on stdin; answers each `step` with one JSON line
    {"seconds": ..., "loss": ...}. One warm-up step runs before the `ready` line.
    """
    import json
    import time

    data = np.load(inputs_path)
    pyramid = [data[f"pyramid{s}"] for s in range(len(scales))]
    b, _, h, w, _ = data["color"].shape
    model = ReleasedMonodepth2(b, h, w, scales=scales, frame_ids=frame_ids, min_depth=min_depth,
                               max_depth=max_depth, lr=lr, num_threads=threads)
    inputs = model.tensors(data["color"], data["color_aug"], pyramid, data["K"], data["inv_K"])
    model.step(inputs)
    print(json.dumps({"ready": True, "threads": model.torch.get_num_threads(),
                      "torch_version": model.torch.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        metrics = model.step(inputs)
        print(json.dumps({"seconds": time.perf_counter() - start, "loss": metrics["loss"]}),
              flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve released-PyTorch Monodepth2 steps.")
    parser.add_argument("--serve", required=True, help="npz written by save_inputs")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--min_depth", type=float, default=0.1)
    parser.add_argument("--max_depth", type=float, default=100.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    serve(args.serve, args.lr, args.min_depth, args.max_depth, args.threads)
