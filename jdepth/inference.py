"""Trained-model inference: load a workdir, predict disparity/depth for images of any size.

Used by `jdepth.evaluate`, `tools/predict.py` and the periodic evaluation of the train loop, so all
three see exactly the same preprocessing (Lanczos resize to the training resolution, [0, 1] floats).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jdepth.data import pipeline
from jdepth.training import checkpoint, recipes


class DepthPredictor:
    """A trained depth network with its config, ready to run on numpy images.

    Attributes:
      config: the run's config.
      params, batch_stats: host pytrees of all networks of the recipe.
      height, width: the network's input resolution.
      absolute: True when the recipe predicts metric depth (no median scaling at evaluation).
    """

    def __init__(self, config, params, batch_stats, extra=None):
        self.config = config
        self.params = params
        self.batch_stats = batch_stats
        self.extra = extra or {}
        self.height, self.width = int(config.data.height), int(config.data.width)
        self.recipe = recipes.get(config.recipe)
        self.absolute = bool(config.eval.get("absolute_depth", False))
        # Multi-frame recipes (ManyDepth) also need these frames (offsets from frame 0).
        self.lookup_offsets = tuple(getattr(self.recipe, "lookup_frames", lambda c: ())(config))
        networks = self.recipe.build_networks(config, bn_axis_name=None)
        self._forward = functools.partial(
            self.recipe.predict_disparity, networks=networks, config=config
        )
        self._predict = jax.jit(self._forward)

    @classmethod
    def from_workdir(cls, workdir: str, step: int | None = None) -> "DepthPredictor":
        """Restores the latest (or given) checkpoint of a training run."""
        config = checkpoint.load_config(workdir)
        state_tree = recipes.abstract_state_tree(config)
        restored, _ = checkpoint.restore_params(workdir, state_tree, step)
        return cls(config, restored["params"], restored["batch_stats"], restored.get("extra"))

    def disparity_fn(self):
        """The eval forward pass with this predictor's weights bound, for tracing (jax.export).

        Returns `images -> disparity`: float32 [B, H, W, 3] in [0, 1] -> scaled disparity
        [B, H, W, 1], as `predict_disparity` before its last axis is dropped. Single-frame recipes
        only (no `context`). Not jitted: under a symbolic batch a jitted inner function would keep
        every network's weights (the pose net's too) as constants of the exported module.
        """
        return functools.partial(self._forward, self.params, self.batch_stats, self.extra)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 [h, w, 3] -> float32 [H, W, 3] at the network resolution."""
        image = pipeline.resize_image(np.asarray(image, np.uint8), self.height, self.width)
        return image.astype(np.float32) / 255.0

    def predict_disparity(
        self, images: np.ndarray, batch_size: int = 8, *, lookup=None, K=None, lookup_valid=None
    ) -> np.ndarray:
        """Scaled disparity (1 / depth) at the network resolution.

        Args:
          images: uint8 [N, h, w, 3] (or a list of differently sized [h, w, 3]).
          batch_size: images per forward pass; the last batch is padded so shapes never change.
          lookup: multi-frame recipes only (`lookup_offsets`): uint8 frames at offset
            `lookup_offsets[0]`, like `images`.
          K: multi-frame recipes only: [N, 4, 4] pixel intrinsics at the network resolution.
          lookup_valid: optional [N] bool, False where the lookup frame is missing (no matching).

        Returns:
          float32 [N, H, W].
        """
        inputs = {"images": np.stack([self.preprocess(im) for im in images])}
        if self.lookup_offsets:
            if lookup is None or K is None:
                raise ValueError(
                    f"{self.config.recipe} is multi-frame: predict_disparity needs lookup= (frame "
                    f"{self.lookup_offsets[0]}) and K= (intrinsics at {self.height}x{self.width})"
                )
            n = len(inputs["images"])
            inputs["lookup"] = np.stack([self.preprocess(im) for im in lookup])
            inputs["K"] = np.asarray(K, np.float32).reshape(n, 4, 4)
            valid = np.ones(n, bool) if lookup_valid is None else np.asarray(lookup_valid, bool)
            inputs["lookup_valid"] = valid
        out = []
        for start in range(0, len(inputs["images"]), batch_size):
            chunk = {k: v[start : start + batch_size] for k, v in inputs.items()}
            n = len(chunk["images"])
            if n < batch_size:  # pad: one compiled shape for every call
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, 0)])
                         for k, v in chunk.items()}
            images_chunk = jnp.asarray(chunk.pop("images"))
            kwargs = {"context": chunk} if chunk else {}
            disp = self._predict(self.params, self.batch_stats, self.extra, images_chunk, **kwargs)
            out.append(np.asarray(disp)[:n, ..., 0])
        return np.concatenate(out).astype(np.float32)

    def predict_depth(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Depth [N, H, W] in the model's units (metres for absolute-depth recipes)."""
        return 1.0 / self.predict_disparity(images, batch_size)
