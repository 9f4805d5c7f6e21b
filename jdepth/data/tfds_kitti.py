"""KITTI frame tuples packed into tensorflow-datasets array_record shards, read back with grain.

Why: the file-tree pipeline opens F image files per sample and probes neighbours with `isfile`;
packing one record per split-file line turns that into one random-access read from a few large
shards (friendlier to network file systems and object stores). The frames stay ENCODED, byte for
byte the files on disk (PNG, or Monodepth2's JPEGs), at their native size: resizing at read time
with `pipeline.resize_image` is what makes a packed batch identical to a file-tree batch, and
lets one packed split serve any training resolution.

One record (one line of the split file, records in split order):
  images        bytes   [F]     image files of the frames in `frame_ids` order
  frame_indices int32   [F]     absolute frame index of each stored frame (after `on_missing`)
  k_norm        float64 [4, 4]  normalised intrinsics of the frame's camera; stored as raw bytes
                                because tf.train.Example floats are float32 and K must match
                                the file-tree pipeline exactly
  folder, side  bytes   []      the frame id: drive folder and 'l' / 'r'
  frame_index   int32   []      the frame id: frame number within the drive
  index         int32   []      line position in the split file
  velocity      float32 [F]     oxts forward velocity (m/s); NaN when the drive has no oxts/data
  panoptic      bytes   [F]     panoptic label PNGs; b"" when the drive has no panoptic_0{cam}/data

TensorFlow is never needed: `download_and_prepare()` writes array_record, `as_data_source()` parses
the records with tfds's numpy decoding, which returns `Tensor(dtype=object)` features as bytes.
The image decoding happens here with PIL, in the grain workers.

One builder config per (split name, frame_ids): `<data_dir>/kitti_triplets/<split>-frames_0_m1_p1/`
holds one tfds split named `<split>`. Prepare with
  python -m jdepth.data.tfds_kitti --data_root ROOT --split_file FILE --data_dir OUT --name train
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import os
import re
import sys
from typing import Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jdepth.data import kitti, pipeline

ON_MISSING_RULES = ("raise", "clamp")


def config_name(split_name: str, frame_ids: Sequence[int]) -> str:
    """Builder-config name, e.g. ('train', (0, -1, 1)) -> 'train-frames_0_m1_p1'."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", split_name):
        raise ValueError(f"split name must be letters, digits or '_', got {split_name!r}")
    if split_name.lower() == "all":
        raise ValueError("split name 'all' is reserved by tfds (it means every split)")
    if not frame_ids or frame_ids[0] != 0:
        raise ValueError(f"frame_ids must start with the target frame 0, got {tuple(frame_ids)}")
    tokens = [f"m{-f}" if f < 0 else (f"p{f}" if f > 0 else "0") for f in frame_ids]
    return f"{split_name}-frames_{'_'.join(tokens)}"


@dataclasses.dataclass(eq=False)
class KittiTripletsConfig(tfds.core.BuilderConfig):
    """What one prepared dataset holds: one split of frame tuples."""

    split_name: str = "train"
    frame_ids: tuple[int, ...] = (0, -1, 1)
    on_missing: str = "raise"


class KittiTriplets(tfds.core.GeneratorBasedBuilder):
    """KITTI raw frame tuples (target + temporal neighbours) of one split file, still encoded.

    The manual dir is the KITTI raw root (real or synthetic). Pass `split_file` to prepare; reading
    needs only `data_dir`, `split_name` and `frame_ids`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Encoded frame tuples, intrinsics, frame ids, oxts, panoptic."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    The manual dir is a KITTI raw root in Monodepth2's layout: <root>/<date>/calib_cam_to_cam.txt,
    <root>/<date>/<date>_drive_<NNNN>_sync/image_0{2,3}/data/%010d.png|jpg (plus optional oxts/
    and panoptic_0{2,3}/), e.g. one written by tools/make_synthetic_kitti.py.
    """

    def __init__(
        self,
        *,
        split_name: str = "train",
        frame_ids: Sequence[int] = (0, -1, 1),
        on_missing: str = "raise",
        split_file: str | None = None,
        config: KittiTripletsConfig | None = None,
        **kwargs,
    ):
        if on_missing not in ON_MISSING_RULES:
            raise ValueError(f"on_missing must be one of {ON_MISSING_RULES}, got {on_missing!r}")
        if config is None:  # tfds unpickles with `config=`, so it must win over the other kwargs
            frame_ids = tuple(int(f) for f in frame_ids)
            config = KittiTripletsConfig(
                name=config_name(split_name, frame_ids),
                description=f"split {split_name!r}, frame_ids {frame_ids}",
                split_name=split_name, frame_ids=frame_ids, on_missing=on_missing,
            )
        self._split_file = split_file
        kwargs.setdefault("file_format", "array_record")
        super().__init__(config=config, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds' own lookup probes `importlib_resources` (an etils[epath] extra that may be absent,
        # ModuleNotFoundError) for a builder that lives in an installed package.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        num_frames = len(self.builder_config.frame_ids)
        encoded = functools.partial(tfds.features.Tensor, dtype=np.object_)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "images": encoded(shape=(num_frames,)),
                "frame_indices": tfds.features.Tensor(shape=(num_frames,), dtype=np.int32),
                "k_norm": tfds.features.Tensor(
                    shape=(4, 4), dtype=np.float64, encoding=tfds.features.Encoding.BYTES
                ),
                "folder": encoded(shape=()),
                "side": encoded(shape=()),
                "frame_index": tfds.features.Scalar(dtype=np.int32),
                "index": tfds.features.Scalar(dtype=np.int32),
                "velocity": tfds.features.Tensor(shape=(num_frames,), dtype=np.float32),
                "panoptic": encoded(shape=(num_frames,)),
            }),
            # Record i must be split line i (the `index` the file-tree pipeline reports).
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(on_missing=self.builder_config.on_missing),
        )

    def _split_generators(self, dl_manager):
        if self._split_file is None:
            raise ValueError(f"{self.data_dir}: preparing KittiTriplets needs split_file=")
        root = os.fspath(dl_manager.manual_dir)
        refs = kitti.read_split_file(self._split_file)
        if not refs:
            raise kitti.DataError(f"{self._split_file}: split file has no frames")
        self.info.metadata.update(data_root=root, split_file=os.path.abspath(self._split_file))
        return {self.builder_config.split_name: self._generate_examples(root, refs)}

    def _generate_examples(self, root: str, refs: Sequence[kitti.FrameRef]):
        cfg = self.builder_config
        decoded: set[str] = set()  # a frame sits in up to len(frame_ids) tuples: check it once
        for index, ref in enumerate(refs):
            yield index, pack_frame_tuple(root, ref, index, cfg.frame_ids, cfg.on_missing, decoded)


# ------------------------------------------------------------------------------------- packing


@functools.lru_cache(maxsize=256)
def _normalised_intrinsics(calib_dir: str, cam: int) -> np.ndarray:
    return kitti.normalised_intrinsics(kitti.load_camera_calibration(calib_dir, cam))


def _read_bytes(path: str, what: str) -> bytes:
    kitti.require_file(path, what)
    with open(path, "rb") as f:
        return f.read()


def pack_frame_tuple(
    root: str,
    ref: kitti.FrameRef,
    index: int,
    frame_ids: Sequence[int],
    on_missing: str,
    decoded: set[str] | None = None,
) -> dict:
    """The record of one split line (see the module docstring).

    Every image and label file is decoded once while packing, so that a corrupt file fails here
    and not in a worker hours into training; paths in `decoded` are taken as already checked, and
    the paths checked here are added to it.

    Raises:
      MissingFileError, DataError: a frame, calibration, oxts or panoptic file is missing or bad.
    """
    decoded = set() if decoded is None else decoded
    drive = os.path.join(root, ref.folder)
    has_oxts = os.path.isdir(os.path.join(drive, "oxts", "data"))
    has_panoptic = os.path.isdir(os.path.join(drive, f"panoptic_0{ref.camera}", "data"))
    images, indices, velocity, panoptic = [], [], [], []
    for offset in frame_ids:
        frame_index = kitti.neighbour_index(root, ref, offset, on_missing=on_missing)
        path = kitti.image_path(root, ref, frame_index=frame_index)
        images.append(_read_bytes(path, "image"))
        if path not in decoded:
            decode_image(images[-1], path)
            decoded.add(path)
        indices.append(frame_index)
        if has_oxts:
            oxts_file = kitti.oxts_path(root, ref, frame_index=frame_index)
            velocity.append(kitti.read_oxts(oxts_file)["vf"])
        else:
            velocity.append(np.nan)
        if has_panoptic:
            label_file = kitti.panoptic_path(root, ref, frame_index=frame_index)
            panoptic.append(_read_bytes(label_file, "panoptic label PNG"))
            if label_file not in decoded:
                decode_panoptic(panoptic[-1], label_file)
                decoded.add(label_file)
        else:
            panoptic.append(b"")
    return {
        "images": np.array(images, dtype=object),
        "frame_indices": np.array(indices, np.int32),
        "k_norm": _normalised_intrinsics(kitti.calib_dir(root, ref), ref.camera),
        "folder": ref.folder,
        "side": ref.side,
        "frame_index": ref.frame_index,
        "index": index,
        "velocity": np.array(velocity, np.float32),
        "panoptic": np.array(panoptic, dtype=object),
    }


def prepare(
    data_root: str,
    split_file: str,
    data_dir: str,
    split_name: str = "train",
    frame_ids: Sequence[int] = (0, -1, 1),
    on_missing: str = "raise",
    overwrite: bool = False,
) -> KittiTriplets:
    """Packs `split_file` of the KITTI tree `data_root` into `data_dir`; returns the builder.

    An already prepared dataset is reused unless `overwrite` (tfds does not notice a changed split
    file).
    """
    if not os.path.isdir(data_root):
        raise kitti.MissingFileError(f"{data_root}: KITTI data root not found")
    builder = KittiTriplets(
        data_dir=data_dir, split_name=split_name, frame_ids=frame_ids, on_missing=on_missing,
        split_file=split_file,
    )
    mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_root, download_mode=mode)
    )
    return builder


# ------------------------------------------------------------------------------------- reading


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3], exactly as `kitti.load_image` decodes a file.

    Raises:
      DataError: naming `name`, when the bytes are not a decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.array(rgb, dtype=np.uint8)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise kitti.DataError(f"{name}: cannot decode image: {exc}") from exc


def decode_panoptic(data: bytes, name: str) -> np.ndarray:
    """Encoded panoptic PNG bytes -> int32 [H, W] ids, the rules of `kitti.load_panoptic`."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:
        raise kitti.DataError(f"{name}: cannot decode panoptic label PNG: {exc}") from exc
    if img.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
        return np.array(img).astype(np.int32)
    if img.mode == "RGB":
        rgb = np.array(img).astype(np.int32)
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    raise kitti.DataError(
        f"{name}: panoptic PNG has mode {img.mode!r}; expected 8/16-bit grayscale ids or "
        "RGB-encoded ids (R + 256 G + 256^2 B)"
    )


def _record_name(record: dict, position: int) -> str:
    folder = record["folder"].decode()
    side = record["side"].decode()
    return f"packed {folder} frame {record['frame_indices'][position]} ({side})"


def load_packed_sample(record: dict, rng: np.random.Generator, cfg: pipeline.PipelineConfig,
                       train: bool) -> dict:
    """`pipeline.load_sample` for a packed record: same dict, same RNG draws in the same order."""
    flipped, jitter = pipeline.draw_augmentation(rng, cfg, train)
    images = [
        pipeline.resize_image(decode_image(data, _record_name(record, i)), cfg.height, cfg.width)
        for i, data in enumerate(record["images"])
    ]
    labels, velocity = None, None
    if cfg.load_panoptic:
        labels = []
        for i, data in enumerate(record["panoptic"]):
            if not data:
                raise kitti.DataError(f"{_record_name(record, i)}: packed without panoptic labels")
            label = decode_panoptic(data, _record_name(record, i))
            labels.append(pipeline.resize_labels(label, cfg.height, cfg.width))
    if cfg.load_velocity:
        velocity = np.asarray(record["velocity"], np.float32)
        if np.isnan(velocity).any():
            raise kitti.DataError(f"{_record_name(record, 0)}: packed without oxts velocity")
    return pipeline.assemble_sample(
        record["index"], images, record["k_norm"], flipped, jitter, cfg, labels, velocity
    )


def load_source(data_dir: str, split_name: str, frame_ids: Sequence[int] = (0, -1, 1),
                on_missing: str = "raise"):
    """The prepared split as a random-access tfds data source (record i = split line i).

    Raises:
      MissingFileError: nothing is prepared for (split_name, frame_ids) under `data_dir`.
      ValueError: the data was packed with on_missing='clamp' but 'raise' is asked for.
    """
    builder = KittiTriplets(data_dir=data_dir, split_name=split_name, frame_ids=frame_ids,
                            on_missing=on_missing)
    if not builder.is_prepared():
        raise kitti.MissingFileError(
            f"{builder.data_dir}: no packed split {split_name!r} with frame_ids "
            f"{tuple(frame_ids)}; run `python -m jdepth.data.tfds_kitti --data_root ROOT "
            f"--split_file FILE --data_dir {data_dir} --name {split_name}`"
        )
    packed_rule = builder.info.metadata.get("on_missing", "raise")
    if packed_rule == "clamp" and on_missing == "raise":
        raise ValueError(
            f"{builder.data_dir}: packed with on_missing='clamp' (boundary frames repeated), "
            "but on_missing='raise' was asked for; repack with --on_missing raise"
        )
    return builder.as_data_source(split_name)


def make_tfds_dataset(
    cfg: pipeline.PipelineConfig,
    data_dir: str,
    split_name: str,
    *,
    batch_size: int,
    seed: int,
    train: bool = True,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """`pipeline.make_dataset` over a packed split: the same batches for the same seed.

    `cfg.root` is not read (the frames are in the shards); `cfg.img_ext` is not applied (the
    packed files are whatever `kitti.image_path` auto-detected).
    """
    source = load_source(data_dir, split_name, cfg.frame_ids, cfg.on_missing)
    first = source[0]
    if cfg.load_velocity and np.isnan(first["velocity"]).any():
        raise kitti.DataError(f"{_record_name(first, 0)}: load_velocity but packed without oxts")
    if cfg.load_panoptic and not all(first["panoptic"]):
        raise kitti.DataError(f"{_record_name(first, 0)}: load_panoptic but packed without labels")
    # The same chain as pipeline.make_dataset, so that grain derives the same per-record RNGs.
    ds = grain.MapDataset.source(source)
    if train:
        ds = ds.seed(seed).shuffle()
        ds = ds.repeat(num_epochs)
        ds = ds.random_map(functools.partial(load_packed_sample, cfg=cfg, train=True))
    else:
        ds = ds.map(functools.partial(load_packed_sample, rng=None, cfg=cfg, train=False))
    return ds.batch(batch_size, drop_remainder=train)


# ----------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pack a KITTI split into tfds array_record.")
    parser.add_argument("--data_root", required=True, help="KITTI raw root (the manual dir)")
    parser.add_argument("--split_file", required=True)
    parser.add_argument("--data_dir", required=True, help="tfds data dir to write")
    parser.add_argument("--name", default="train", help="split name (letters, digits, '_')")
    parser.add_argument("--frame_ids", type=int, nargs="+", default=[0, -1, 1])
    parser.add_argument("--on_missing", choices=ON_MISSING_RULES, default="raise")
    parser.add_argument("--overwrite", action="store_true", help="repack an existing split")
    args = parser.parse_args(argv)
    builder = prepare(args.data_root, args.split_file, args.data_dir, args.name,
                      args.frame_ids, args.on_missing, args.overwrite)
    split = builder.info.splits[args.name]
    print(f"{builder.data_dir}: split {args.name!r}, {split.num_examples} records, "
          f"{split.num_shards} shards, {split.num_bytes / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
