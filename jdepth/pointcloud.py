"""Coloured point clouds from depth maps: back-projection and binary PLY files.

Points are in the camera frame of `jdepth.geometry` (x right, y down, z forward, in the depth's
units), lifted by `geometry.backproject` so that predictions, the training warp and exported clouds
share one camera model: pixel (u, v) has its centre at integer (u, v), and the point of depth z
projects back to it with K. Files are PLY 1.0, binary little-endian, one vertex element
``x y z`` (float32) ``red green blue`` (uchar): what MeshLab, CloudCompare and Open3D read.
"""

from __future__ import annotations

import numpy as np

from jdepth import geometry

VERTEX_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                         ("red", "u1"), ("green", "u1"), ("blue", "u1")])
_PROPERTIES = [("float", "x"), ("float", "y"), ("float", "z"),
               ("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """[4, 4] float64 pixel intrinsics (the layout of `calibration.scale_intrinsics`)."""
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = fx, fy, cx, cy
    return k


def backproject_depth(depth: np.ndarray, K: np.ndarray, stride: int = 1) -> np.ndarray:
    """Camera-frame points of every `stride`-th pixel of a depth map.

    Args:
      depth: [H, W] z-depth.
      K: [3, 3] or [4, 4] pixel intrinsics at H x W.
      stride: keep pixels (stride * i, stride * j), i.e. rows and columns 0, stride, 2 stride...

    Returns:
      float32 [ceil(H / stride), ceil(W / stride), 3] points (X, Y, Z), Z = depth.
    """
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    k = np.eye(4)
    k[:3, :3] = np.asarray(K, np.float64)[:3, :3]
    # The strided grid's pixel (j, i) is the full grid's (stride j, stride i): the same rays as K
    # with rows 0 and 1 divided by the stride, so geometry.backproject's unit grid applies.
    k[:2] /= stride
    inv_k = np.linalg.inv(k).astype(np.float32)
    sub = depth[::stride, ::stride]
    points = geometry.backproject(sub[None, :, :, None], inv_k[None])
    return np.asarray(points)[0, :, :, :3]


def point_cloud(depth: np.ndarray, image: np.ndarray, K: np.ndarray, stride: int = 1):
    """Coloured points of a depth map, row-major over the kept pixels.

    Args:
      depth: [H, W] z-depth.
      image: uint8 [H, W, 3] RGB at the depth's resolution.
      K: [3, 3] or [4, 4] pixel intrinsics at H x W.
      stride: see `backproject_depth`.

    Returns:
      (points float32 [N, 3], colours uint8 [N, 3]), N = ceil(H / stride) * ceil(W / stride).
    """
    image = np.asarray(image)
    if image.shape != np.shape(depth) + (3,) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3] like depth {np.shape(depth)}, got "
                         f"{image.dtype} {image.shape}")
    points = backproject_depth(depth, K, stride)
    return points.reshape(-1, 3), image[::stride, ::stride].reshape(-1, 3)


def write_ply(path: str, points: np.ndarray, colors: np.ndarray, comments=()) -> None:
    """Writes a binary little-endian PLY.

    Args:
      path: output file.
      points: [N, 3] x, y, z (stored as float32).
      colors: uint8 [N, 3] red, green, blue.
      comments: header comment lines (one line each, no newlines).
    """
    points, colors = np.asarray(points), np.asarray(colors)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colors must both be [N, 3], got {points.shape} and "
                         f"{colors.shape}")
    if colors.dtype != np.uint8:
        raise ValueError(f"colors must be uint8, got {colors.dtype}")
    vertices = np.empty(len(points), VERTEX_DTYPE)
    for axis, name in enumerate("xyz"):
        vertices[name] = points[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        vertices[name] = colors[:, channel]
    header = ["ply", "format binary_little_endian 1.0"]
    for comment in comments:
        if "\n" in comment or "\r" in comment:
            raise ValueError(f"a PLY comment is one line: {comment!r}")
        header.append(f"comment {comment}".rstrip())
    header.append(f"element vertex {len(vertices)}")
    header += [f"property {kind} {name}" for kind, name in _PROPERTIES]
    header.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertices.tobytes())


def read_ply(path: str):
    """Reads a PLY written by `write_ply` (this exact vertex layout; anything else is refused).

    Returns:
      (points float32 [N, 3], colours uint8 [N, 3], comments: list of str).
    """
    with open(path, "rb") as f:
        if f.readline().rstrip(b"\r\n") != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        comments, count, properties = [], None, []
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii").rstrip("\r\n").split(" ")
            if words[0] == "end_header":
                break
            if words[0] == "format" and words[1:] != ["binary_little_endian", "1.0"]:
                raise ValueError(f"{path}: format {' '.join(words[1:])}, expected "
                                 "binary_little_endian 1.0")
            if words[0] == "comment":
                comments.append(" ".join(words[1:]))
            elif words[0] == "element":
                if words[1] != "vertex" or count is not None:
                    raise ValueError(f"{path}: only one 'vertex' element is supported")
                count = int(words[2])
            elif words[0] == "property":
                properties.append((words[1], words[2]))
        if properties != _PROPERTIES or count is None:
            raise ValueError(f"{path}: vertex properties {properties}, expected {_PROPERTIES}")
        data = f.read()
    if len(data) != count * VERTEX_DTYPE.itemsize:
        raise ValueError(f"{path}: {len(data)} bytes of vertex data for {count} vertices of "
                         f"{VERTEX_DTYPE.itemsize} bytes")
    vertices = np.frombuffer(data, VERTEX_DTYPE)
    points = np.stack([vertices[n] for n in "xyz"], axis=1)
    colors = np.stack([vertices[n] for n in ("red", "green", "blue")], axis=1)
    return points, colors, comments
