"""Ordered frames from videos (PyAV) and image folders: the readers shared by tools/predict.py
and the custom-sequence data source (jdepth/data/sequences.py).

PyAV is an optional extra (`pip install -e '.[video]'`); it is imported only when a video is
read, so jdepth imports without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np

from jdepth.data.calibration import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
VIDEO_INSTALL_HINT = "pip install -e '.[video]' (the 'video' extra: PyAV, av==18.1.0)"


def import_av():
    """The PyAV module, or an ImportError that says how to install it (an optional extra)."""
    try:
        import av
    except ImportError as exc:
        raise ImportError(f"video input needs PyAV, which is not installed: {VIDEO_INSTALL_HINT}"
                          ) from exc
    return av


def natural_key(name: str) -> list:
    """frame_2 before frame_10: digit runs compare as numbers (the pieces alternate str, int)."""
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", name)]


def folder_images(folder: str) -> list[str]:
    """Image paths under `folder`, folder by folder, each folder's names in natural order."""
    paths = []
    for root, _, names in sorted(os.walk(folder)):
        paths.extend(os.path.join(root, name) for name in sorted(names, key=natural_key)
                     if name.lower().endswith(IMAGE_EXTENSIONS))
    return paths


def is_video(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def open_video(av, path: str):
    """(container, its first video stream); DataError naming the file when unreadable."""
    try:
        container = av.open(path)
    except av.FFmpegError as exc:
        raise DataError(f"{path}: cannot open video: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: no video stream")
    return container, container.streams.video[0]


def decode_video(av, path: str) -> Iterator[np.ndarray]:
    """Yields the uint8 [H, W, 3] RGB frames of the first video stream, in presentation order.

    Raises:
      DataError: naming the file, when it cannot be opened or a packet cannot be decoded (the
        frames before it have been yielded).
    """
    container, stream = open_video(av, path)
    with container:
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise DataError(f"{path}: cannot decode video: {exc}") from exc


def video_info(av, path: str):
    """(frame count or None when the container does not say, frame rate) of the first stream."""
    container, stream = open_video(av, path)
    with container:
        return (stream.frames or None), (stream.average_rate or stream.guessed_rate or 30)
