"""Imports PyTorch weights into jdepth.

A Monodepth2 (or ManyDepth) weights folder -> a jdepth params .npz and/or an inference workdir:

    python tools/import_torch.py --torch_dir mono_640x192 [--npz md2.npz] [--workdir runs/md2_ref]

  --npz      flat jdepth params (jdepth/interop/params_npz.py), usable as a training start with
             `--config.model.encoder_init=params:md2.npz`. ManyDepth folders convert to this only.
  --workdir  config.json + checkpoint 0 (model variables only: for tools/predict.py and
             `python -m jdepth.evaluate`, not for resuming training). The config is
             configs/monodepth2.py with the ResNet depths, scales and input size read from the
             weights; every variable is checked against the model built from it.

A torchvision ImageNet state dict -> the same keys as .npz, so training machines without torch can
use `--config.model.encoder_init=imagenet:resnet18.npz`:

    python tools/import_torch.py --torchvision resnet18-f37072fd.pth --out resnet18.npz

Reading .pth files needs torch (`pip install -e '.[torch]'`); folders of .npz files do not.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch_dir", help="weights folder with encoder.pth, depth.pth, ...")
    parser.add_argument("--npz", help="write jdepth params here")
    parser.add_argument("--workdir", help="write an inference workdir here")
    parser.add_argument("--torchvision", help="a torchvision ResNet .pth to convert to .npz")
    parser.add_argument("--out", help="output .npz for --torchvision")
    args = parser.parse_args(argv)
    if bool(args.torch_dir) == bool(args.torchvision):
        parser.error("give either --torch_dir or --torchvision")
    if args.torch_dir and not (args.npz or args.workdir):
        parser.error("--torch_dir needs --npz and/or --workdir")
    if args.torchvision and not args.out:
        parser.error("--torchvision needs --out")
    return args


def base_config():
    """configs/monodepth2.py's get_config(), loaded by path as ml_collections does."""
    path = os.path.join(REPO, "configs", "monodepth2.py")
    spec = importlib.util.spec_from_file_location("jdepth_config_monodepth2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def config_for(params, extras):
    """The Monodepth2 config whose networks have exactly these variables."""
    from jdepth.interop import checkpoints

    config = base_config()
    config.model.num_layers = checkpoints.resnet_depth(params["depth"]["encoder"])
    config.model.pose_num_layers = checkpoints.resnet_depth(params["pose"]["encoder"])
    config.model.scales = tuple(
        sorted(int(name.split("_")[1]) for name in params["depth"]["decoder"]
               if name.startswith("dispconv_"))
    )
    config.data.height, config.data.width = int(extras["height"]), int(extras["width"])
    return config


def write_workdir(workdir, params, batch_stats, extras) -> None:
    """config.json + an orbax checkpoint (step 0) of the model item, checked against the model."""
    import numpy as np

    from jdepth.interop import trees
    from jdepth.training import checkpoint, recipes

    if "reduce_conv" in params["depth"]["encoder"] or "pose" not in params:
        raise ValueError("--workdir supports Monodepth2 folders (depth + pose networks) only; "
                         "convert ManyDepth folders with --npz")
    config = config_for(params, extras)
    abstract = recipes.abstract_state_tree(config)
    trees.check_complete(params, abstract["params"], "imported params")
    trees.check_complete(batch_stats, abstract["batch_stats"], "imported batch_stats")
    checkpoint.save_config(workdir, config)
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=1)
    # The Monodepth2 recipe keeps no state outside params and batch_stats ("extra" is empty).
    ckpt.save(0, {"params": params, "batch_stats": batch_stats, "extra": {}},
              {"step": np.int64(0)}, {}, force=True)
    ckpt.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jdepth.interop import checkpoints, files, params_npz

    if args.torchvision:
        state = files.load_state_dict(args.torchvision)
        files.save_state_dict(args.out, state)
        print(f"-> {args.out}: {len(state)} torchvision entries from {args.torchvision}")
        return 0
    folder = files.load_checkpoint_dir(args.torch_dir, checkpoints.MANYDEPTH_FILES)
    params, batch_stats, extras = checkpoints.from_torch(folder)
    print(f"read {', '.join(sorted(folder))} from {args.torch_dir}; networks {sorted(params)}; "
          f"extras {extras}")
    if extras.get("use_stereo"):
        print("note: a stereo-trained model; its depth is metric after x5.4 (Monodepth2's "
              "STEREO_SCALE_FACTOR): tools/predict.py --scale 5.4")
    if args.npz:
        params_npz.save(args.npz, params, batch_stats, extras=extras)
        print(f"-> {args.npz}")
    if args.workdir:
        write_workdir(args.workdir, params, batch_stats, extras)
        print(f"-> {args.workdir} (inference workdir: tools/predict.py --workdir {args.workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
