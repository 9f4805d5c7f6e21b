"""Monodepth2 on your own video(s) or frame folders (README "Train on your own video").

  python -m jdepth.train --config configs/video.py --workdir runs/myvideo \
      --config.data.sequences.path=drive.mp4 --config.data.sequences.intrinsics=fx,fy,cx,cy

The first run prepares the sequences once (jdepth/data/sequence_cache.py: videos decoded into a
frame cache in ~/.cache/jdepth, static stretches skipped, train/val/test split without neighbour
leakage), then trains exactly as on KITTI: the same grain pipeline, augmentations and validation
pass. With known depth beside the sequences (SEQ.depth/, e.g. tools/make_synthetic_kitti.py
--format video) the test frames are scored against it next to the average-depth baseline;
without it the run trains and says that it cannot evaluate.

The training settings are the demo's (configs/demo.py: from scratch at 192x64 on a CPU, 6 epochs)
with the collapse guards in place of its pose learning-rate aid: pose lr x1, 26 warm-up steps and
depth normalisation (README "When training collapses"). On the demo's drives written as H.264
videos, the demo's aids collapsed (depth pinned at the 0.1 m minimum on every pixel from step 60;
val AbsRel 0.543 at step 86) while these trained to AbsRel 0.284 against the average-depth
baseline's 0.346, the demo's own 0.284 on the PNG frames (RESULTS.md "Train on your own video";
one seed each). For a real camera raise the resolution (`--config.data.width=640
--config.data.height=192`) and the epochs. Speed supervision for metric depth:
`--config.data.load_velocity=True --config.loss.velocity_weight=0.05` with a SEQ.speed.csv per
sequence and `--config.data.frame_interval` = stride / fps (the validation pass says the value).
"""

from ml_collections import config_dict

from jdepth.config_files import sibling


def get_config():
    config = sibling(__file__, "demo").get_config()
    config.data.synthetic = config_dict.ConfigDict()  # the data are the sequences below
    config.data.sequences = config_dict.ConfigDict({
        # A video, a folder of frames, or a folder of several (each one sequence); sidecars
        # SEQ.intrinsics.txt, SEQ.speed.csv, SEQ.depth/ (jdepth/data/sequences.py).
        "path": config_dict.placeholder(str),
        # Shared camera when a sequence has no SEQ.intrinsics.txt: 'fx,fy,cx,cy' in pixels of
        # the native frame size, or a KITTI calibration file.
        "intrinsics": config_dict.placeholder(str),
        "stride": 1,  # keep every stride-th frame (a 30 fps video moves little between frames)
        # Targets whose neighbour differs by a mean absolute grey difference below this (0-255,
        # 64-pixel-wide thumbnails) are skipped as static; 0 keeps every frame.
        "static_threshold": 1.0,
        "holdout": "auto",  # 'sequences' (whole ones; 'auto' from 3 on) or 'ranges' (the ends)
        "val_fraction": 0.1,
        "test_fraction": 0.1,
    })
    # Collapse guards (configs/demo.py keeps its aids instead; see the docstring for why not here).
    config.optim.pose_lr_scale = 1.0
    config.optim.warmup_steps = 26
    config.loss.depth_normalization = True
    config.data.gt_kind = "auto"  # known depth -> 'dense' (Eigen protocol on it), else 'none'
    config.data.frame_interval = 0.1  # seconds between kept frames (stride / fps)
    return config
