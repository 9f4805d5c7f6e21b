"""One pass over every file a run will read, before anything is compiled.

`check_data` reads each split file once, lists each referenced drive folder once (no per-frame
`stat`, nothing decoded) and parses each drive's calibration once, and returns every problem it
finds, each naming the file and line: a split line that does not parse, a drive folder or camera
that is not there (with a guess at why: a root one level too deep, a line without its date
folder), a frame or neighbour that is missing (a sequence boundary told apart from a gap), per-
frame files a recipe needs (panoptic labels, oxts, velodyne scans), calibration that does not
parse or has unusable intrinsics, and a sample image header per drive that is not an image.
`ValidationError` raises them together.

Cost: one `listdir` per (drive, file kind) and one set lookup per frame, so a 40k-line split
checks in about a second (README, "When something is wrong").
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterable, Sequence

from jdepth.data import kitti


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the inputs: where (`file:line`, `file` or `config.key`) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class ValidationError(ValueError):
    """Every problem a validation pass found, listed in the message (the first `MAX_LISTED`).

    Attributes:
      problems: the full list of `Problem`s.
    """

    MAX_LISTED = 100

    def __init__(self, problems: Sequence[Problem], context: str = "before training"):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[: self.MAX_LISTED]]
        if len(self.problems) > self.MAX_LISTED:
            lines.append(f"... and {len(self.problems) - self.MAX_LISTED} more")
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} found {context}:\n  "
                         + "\n  ".join(lines))


# Per-frame file kinds: (sub-folder of the drive for a camera, accepted extensions, description).
_KINDS = {
    "panoptic": (lambda cam: f"panoptic_0{cam}/data", ("png",), "panoptic label"),
    "oxts": (lambda cam: "oxts/data", ("txt",), "oxts record"),
    "velodyne": (lambda cam: "velodyne_points/data", ("bin",),
                 "velodyne scan (evaluation ground truth)"),
    "dense_gt": (lambda cam: f"proj_depth/groundtruth/image_0{cam}", ("png",), "dense depth"),
}


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """What a run reads for each line of one split file.

    Attributes:
      name: 'train', 'val', 'test' (messages name the config key `data.<name>_split`).
      path: the split file.
      offsets: image frames read per line, relative to the line's frame ((0,) for evaluation).
      on_missing: 'raise' or 'clamp' (`kitti.neighbour_index`); with 'clamp' only the line's own
        frame must exist.
      img_ext: None (png or jpg) or one extension.
      per_frame: other file kinds read at every offset ('panoptic', 'oxts').
      per_target: file kinds read at the line's own frame only ('velodyne').
      optional: file kinds whose presence for every line is reported (`DataReport.complete`),
        never a problem.
    """

    name: str
    path: str
    offsets: tuple[int, ...] = (0,)
    on_missing: str = "raise"
    img_ext: str | None = None
    per_frame: tuple[str, ...] = ()
    per_target: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()


@dataclasses.dataclass
class DataReport:
    """What `check_data` found.

    Attributes:
      problems: every problem, in split order.
      frames: lines per split name.
      drives: distinct drive folders over all splits.
      complete: {(split name, kind): True when every line's file of that optional kind exists}.
      seconds: wall time of the pass.
    """

    problems: list[Problem]
    frames: dict[str, int]
    drives: int
    complete: dict[tuple[str, str], bool]
    seconds: float


class _FolderIndex:
    """Frame indices present in each folder, one `listdir` per folder and extension set."""

    def __init__(self):
        self._sets: dict[tuple[str, tuple[str, ...]], frozenset[int] | None] = {}

    def frames(self, folder: str, exts: tuple[str, ...]) -> frozenset[int] | None:
        """Indices of `%010d.<ext>` files in `folder`; None when the folder does not exist."""
        key = (folder, exts)
        if key not in self._sets:
            try:
                names = os.listdir(folder)
            except OSError:
                self._sets[key] = None
            else:
                found = set()
                for name in names:
                    stem, _, ext = name.rpartition(".")
                    if ext in exts and stem.isdigit():
                        found.add(int(stem))
                self._sets[key] = frozenset(found)
        return self._sets[key]


def root_problems(root: str | None) -> list[Problem]:
    """The data root is set and is a folder."""
    if not root:
        return [Problem("config.data.root", "not set: pass --config.data.root=/path/to/kitti_raw "
                        "(or use configs/demo.py, which generates synthetic data)")]
    if not os.path.isdir(root):
        return [Problem(root, "data root not found (config.data.root)")]
    return []


def _resolve(index: int, offset: int, present: frozenset[int], on_missing: str) -> int | None:
    """The frame loaded for `index + offset` (`kitti.neighbour_index` on a known set)."""
    target = index + offset
    if target in present:
        return target
    if on_missing == "clamp" and offset:
        step = -1 if offset > 0 else 1
        for i in range(target + step, index + step, step):
            if i in present:
                return i
    return None


def _neighbour_problem(ref, offset: int, present: frozenset[int], image_dir: str) -> str:
    target = ref.frame_index + offset
    first, last = min(present), max(present)
    if target < first or target > last:
        return (f"frame {ref.frame_index} has no frame {target} (offset {offset:+d}): sequence "
                f"boundary, the drive has frames {first}..{last}; drop the line or set "
                "config.data.on_missing='clamp'")
    return (f"neighbour frame {target} (offset {offset:+d}) of frame {ref.frame_index} is "
            f"missing from {image_dir}: an incomplete drive (extract it again)")


class _Checker:
    """State shared by the splits of one pass: folder listings, checked calibrations, drives."""

    def __init__(self, root: str):
        self.root = root
        self.index = _FolderIndex()
        self.calibs: dict[tuple[str, int], str | None] = {}  # error or None
        self.drives: set[str] = set()
        self.missing_folders: set[str] = set()
        self.problems: list[Problem] = []

    def add(self, where: str, what: str) -> None:
        self.problems.append(Problem(where, what))

    def check_split(self, spec: SplitSpec) -> tuple[int, dict[tuple[str, str], bool]]:
        """Checks one split; returns (number of lines, completeness of the optional kinds)."""
        path = spec.path
        if not path or not os.path.isfile(path):
            self.add(path or f"config.data.{spec.name}_split",
                     f"{spec.name} split file not found (config.data.{spec.name}_split)")
            return 0, {}
        lines = kitti.read_split_lines(path)
        for line in lines:
            if line.ref is None:
                self.add(f"{path}:{line.line_no}",
                         f"expected {kitti.SPLIT_LINE_FORMAT}, got {line.text!r}")
        good = [line for line in lines if line.ref is not None]
        if not lines:
            self.add(path, f"{spec.name} split file has no frames")
        if self.root is None:
            return len(lines), {}
        complete = {(spec.name, kind): True for kind in spec.optional}
        self._check_drives(spec, good)
        for line in good:
            self._check_line(spec, line, complete)
        return len(lines), complete

    def _check_drives(self, spec: SplitSpec, lines: list[kitti.SplitLine]) -> None:
        """Drive folders, camera folders and calibration, once per drive / camera."""
        first: dict[tuple[str, int], kitti.SplitLine] = {}
        count: dict[tuple[str, int], int] = {}
        for line in lines:
            key = (line.ref.folder, line.ref.camera)
            first.setdefault(key, line)
            count[key] = count.get(key, 0) + 1
        reported_drives = set()
        for (folder, cam), line in first.items():
            where = f"{spec.path}:{line.line_no}"
            drive_dir = os.path.join(self.root, folder)
            n_lines = sum(c for (f, _), c in count.items() if f == folder)
            if not os.path.isdir(drive_dir):
                if folder not in reported_drives:
                    self.add(where, f"drive folder {drive_dir} not found ({n_lines} line(s) of "
                             f"this split use it): {kitti.drive_folder_hint(self.root, folder)}")
                    reported_drives.add(folder)
                continue
            self.drives.add(folder)
            image_dir = os.path.join(drive_dir, f"image_0{cam}", "data")
            if self.index.frames(image_dir, self._exts(spec)) is None:
                cameras = sorted(d for d in os.listdir(drive_dir) if d.startswith("image_0"))
                self.add(where, f"{image_dir}: no such folder: {count[(folder, cam)]} line(s) ask "
                         f"for camera {cam} (side {line.ref.side!r}); the drive has {cameras}")
            self._check_calibration(where, line.ref)
            self._check_header(where, spec, line.ref)

    def _check_calibration(self, where: str, ref: kitti.FrameRef) -> None:
        key = (kitti.calib_dir(self.root, ref), ref.camera)
        if key in self.calibs:
            return
        try:
            kitti.load_camera_calibration(*key)
            self.calibs[key] = None
        except kitti.DataError as exc:
            self.calibs[key] = str(exc)
            self.add(where, f"calibration of camera {ref.camera} unusable: {exc}")

    def _check_header(self, where: str, spec: SplitSpec, ref: kitti.FrameRef) -> None:
        """Reads the header of the drive's first referenced image (a sample, not every frame)."""
        try:
            kitti.read_image_size(kitti.image_path(self.root, ref, ext=spec.img_ext))
        except kitti.MissingFileError:
            pass  # reported per line
        except kitti.DataError as exc:
            self.add(where, str(exc))

    @staticmethod
    def _exts(spec: SplitSpec) -> tuple[str, ...]:
        return kitti.IMAGE_EXTENSIONS if spec.img_ext is None else (spec.img_ext.lstrip("."),)

    def _check_line(self, spec: SplitSpec, line: kitti.SplitLine, complete: dict) -> None:
        ref = line.ref
        where = f"{spec.path}:{line.line_no}"
        image_dir = os.path.join(self.root, ref.folder, f"image_0{ref.camera}", "data")
        present = self.index.frames(image_dir, self._exts(spec))
        if present is None:
            return  # drive or camera folder missing: reported once per drive
        if ref.frame_index not in present:
            self.add(where, f"frame {ref.frame_index} not found in {image_dir} (tried "
                     f"{'/'.join(self._exts(spec))}): the line names a frame the drive does not "
                     "have")
            return
        frames = {0: ref.frame_index}
        for offset in spec.offsets:
            if offset == 0:
                continue
            resolved = _resolve(ref.frame_index, offset, present, spec.on_missing)
            if resolved is None:
                self.add(where, _neighbour_problem(ref, offset, present, image_dir))
            else:
                frames[offset] = resolved
        for kind in spec.per_frame:
            self._check_kind(where, ref, kind, sorted(set(frames.values())))
        for kind in spec.per_target:
            self._check_kind(where, ref, kind, [ref.frame_index])
        for kind in spec.optional:
            if complete[(spec.name, kind)] and not self._has(ref, kind, ref.frame_index):
                complete[(spec.name, kind)] = False

    def _kind_dir(self, ref: kitti.FrameRef, kind: str) -> str:
        return os.path.join(self.root, ref.folder, _KINDS[kind][0](ref.camera))

    def _has(self, ref: kitti.FrameRef, kind: str, index: int) -> bool:
        present = self.index.frames(self._kind_dir(ref, kind), _KINDS[kind][1])
        return present is not None and index in present

    def _check_kind(self, where: str, ref, kind: str, indices: Iterable[int]) -> None:
        folder = self._kind_dir(ref, kind)
        _, exts, what = _KINDS[kind]
        present = self.index.frames(folder, exts)
        if present is None:
            if folder not in self.missing_folders:  # once per folder
                self.missing_folders.add(folder)
                self.add(where, f"{folder}: no such folder: the run reads a {what} per frame")
            return
        for index in indices:
            if index not in present:
                self.add(where, f"{what} missing: {os.path.join(folder, f'{index:010d}.{exts[0]}')}")


def check_data(root: str | None, specs: Sequence[SplitSpec]) -> DataReport:
    """Checks the data root and every split in `specs` against it; see the module docstring.

    Args:
      root: the data root (None or missing: only the split files themselves are checked).
      specs: one SplitSpec per split file the run reads.

    Returns:
      DataReport; `problems` empty when everything a run reads is there.
    """
    start = time.perf_counter()
    problems = root_problems(root)
    checker = _Checker(root if not problems else None)
    frames, complete = {}, {}
    for spec in specs:
        frames[spec.name], found = checker.check_split(spec)
        complete.update(found)
    return DataReport(problems + checker.problems, frames, len(checker.drives), complete,
                      time.perf_counter() - start)
