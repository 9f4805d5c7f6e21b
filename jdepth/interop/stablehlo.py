"""A trained depth network as one serialised StableHLO artifact (`jax.export`) for deployment.

    blob, meta = export(predictor)   # jdepth.inference.DepthPredictor; needs jdepth, export only
    save("depth.jax", blob, meta)    # depth.jax (the artifact) + depth.jax.json (the sidecar)
    predict = load("depth.jax")      # jax + numpy only: runs without jdepth, flax or the config
    out = predict(images)            # float32 [B, H, W, 3] in [0, 1] -> {"disparity", "depth"}

The artifact holds the eval forward pass with the weights (params and BatchNorm statistics) baked
in as constants, so nothing else travels with it. Its input is `[B, H, W, 3]` float32 RGB in
[0, 1] at the training resolution H x W (resize first, as `DepthPredictor.preprocess` does: PIL
Lanczos, then / 255); the batch B is symbolic (any B >= 1 runs, each new B compiles once) unless
a fixed `batch_size` is asked for. Outputs, both `[B, H, W, 1]` float32:

    disparity  the scaled disparity of `DepthPredictor.predict_disparity`, in
               [1 / max_depth, 1 / min_depth]
    depth      1 / disparity, as `DepthPredictor.predict_depth`: in the model's units (metres for
               absolute-depth recipes, `absolute` in the sidecar; otherwise up to a scale, which
               the evaluation recovers by median scaling)

The artifact is lowered for CPU and CUDA by default (`platforms`) and runs on either with the jax
version that wrote it or a later one (jax.export's compatibility window). Deserialising needs the
`flatbuffers` package besides jax.

This module imports only json, os, jax and numpy, so `load` can be copied into a deployment
script (tests/test_export_stablehlo.py runs it with jdepth and flax absent).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

OUTPUTS = {
    "disparity": "scaled disparity [B, H, W, 1] in [1 / max_depth, 1 / min_depth] "
                 "(DepthPredictor.predict_disparity)",
    "depth": "1 / disparity [B, H, W, 1] in the model's units: metres when absolute, else up to "
             "a scale (DepthPredictor.predict_depth)",
}


def export(
    predictor, *, batch_size: int | None = None, platforms: tuple[str, ...] = ("cpu", "cuda")
) -> tuple[bytes, dict]:
    """Serialises a predictor's depth network.

    Args:
      predictor: a `jdepth.inference.DepthPredictor` of a single-frame recipe (Monodepth2, the
        students, or ManyDepth with `config.eval.teacher=True`: its mono teacher).
      batch_size: None for a symbolic batch dimension, else the one batch size the artifact takes.
      platforms: what the artifact is lowered for (jax.export names: "cpu", "cuda", "rocm", "tpu").

    Returns:
      `(blob, meta)`: the `jax.export` serialisation and the sidecar's content (a JSON-able dict).

    Raises:
      ValueError: for multi-frame predictors (ManyDepth's multi-frame network needs a lookup frame,
        intrinsics and a pose net; only its mono teacher exports).
    """
    config = predictor.config
    if predictor.lookup_offsets:
        raise ValueError(
            f"{config.recipe} predicts from several frames (offsets {predictor.lookup_offsets} "
            "and intrinsics), which this export does not support; supported are single-frame "
            "networks: the monodepth2 and student recipes, and the mono teacher of a multi-frame "
            "recipe (config.eval.teacher=True; tools/export_stablehlo.py --teacher)"
        )
    forward = predictor.disparity_fn()

    def predict(images):
        disparity = forward(images)
        return {"disparity": disparity, "depth": 1.0 / disparity}

    h, w = predictor.height, predictor.width
    if batch_size is None:
        (batch,) = jax.export.symbolic_shape("b")  # conv, pads and the 2x upsampling all accept it
    else:
        batch = int(batch_size)
    spec = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
    exported = jax.export.export(jax.jit(predict), platforms=tuple(platforms))(spec)
    teacher = bool(config.eval.get("teacher", False))
    meta = {
        "format": "jax.export (StableHLO); load with jax.export.deserialize",
        "recipe": config.recipe,
        "network": "mono teacher" if teacher else "depth",
        "input": {
            "shape": ["B" if batch_size is None else int(batch_size), h, w, 3],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "layout": "NHWC, RGB; resize to height x width first (PIL Lanczos), then / 255",
        },
        "height": h,
        "width": w,
        "batch": "symbolic" if batch_size is None else int(batch_size),
        "outputs": OUTPUTS,
        "min_depth": float(config.model.min_depth),
        "max_depth": float(config.model.max_depth),
        "absolute": bool(predictor.absolute),
        "platforms": list(exported.platforms),
        "calling_convention_version": int(exported.calling_convention_version),
        "jax_version": jax.__version__,
    }
    return bytes(exported.serialize()), meta


def save(path: str, blob: bytes, meta: dict) -> tuple[str, str]:
    """Writes the artifact to `path` and the sidecar to `path + ".json"`; returns both paths."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)
    sidecar = path + ".json"
    with open(sidecar, "w") as f:
        json.dump({**meta, "artifact_bytes": len(blob)}, f, indent=2)
    return path, sidecar


def load(path: str):
    """A saved artifact as a callable; jax and numpy only (copy this function into a script).

    Returns:
      `predict(images)`: float32 [B, H, W, 3] in [0, 1] -> {"disparity", "depth"}, each
      [B, H, W, 1] jax arrays on the default device. jitted, so repeated calls of one batch
      size compile once.
    """
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    call = jax.jit(exported.call)
    return lambda images: call(np.asarray(images, np.float32))
