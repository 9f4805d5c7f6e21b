"""`config.model.encoder_init`: start training from pretrained weights instead of scratch.

Accepted values:

    "scratch"               keep the random initialisation (default).
    "imagenet:PATH"         a torchvision ResNet state dict (`resnet18-f37072fd.pth`; .pth needs
                            torch, or the .npz that `tools/import_torch.py --torchvision` writes)
                            for every network's `encoder`: the depth encoder gets it as is, an
                            encoder of n stacked frames (the pose encoder, n = 2) gets conv1
                            repeated over the input channels and divided by n, as Monodepth2
                            does. Decoders keep their random initialisation.
    "params:PATH"           a jdepth params .npz (`jdepth/interop/params_npz.py`, e.g. a released
                            Monodepth2 model converted by `tools/import_torch.py`): every variable
                            in the file replaces the initial one (fine-tuning).

The weights only replace values; shapes never change, so under abstract evaluation (`jax.eval_shape`
of the init, used to build restore targets) nothing is read and the file need not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax

from jdepth.interop import files, params_npz, torch_layout, trees

log = logging.getLogger("jdepth")

SCRATCH = "scratch"
KINDS = ("imagenet", "params")
_RESNET_MODULES = ("conv1", "bn1", "layer")


def parse(spec: str | None) -> tuple[str, str | None]:
    """'imagenet:/w/resnet18.pth' -> ('imagenet', '/w/resnet18.pth'); None/'scratch' -> scratch."""
    if spec in (None, "", SCRATCH):
        return SCRATCH, None
    kind, sep, path = str(spec).partition(":")
    if not sep or kind not in KINDS or not path:
        raise ValueError(
            f"model.encoder_init={spec!r}: expected 'scratch', 'imagenet:PATH' or 'params:PATH'"
        )
    return kind, path


def _is_abstract(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def apply(params: Mapping, batch_stats: Mapping, spec: str | None) -> tuple[dict, dict]:
    """The initial (params, batch_stats) with `spec`'s pretrained weights put in.

    Args:
        params, batch_stats: the recipe's initial variables, dicts keyed by network name.
        spec: the `model.encoder_init` value.

    Returns:
        New (params, batch_stats); unchanged for "scratch" or under abstract evaluation.
    """
    kind, path = parse(spec)
    if kind == SCRATCH or _is_abstract(params):
        return dict(params), dict(batch_stats)
    if kind == "imagenet":
        return imagenet_encoders(params, batch_stats, files.load_state_dict(path), source=path)
    loaded_params, loaded_stats, _ = params_npz.load(path)
    log.info("encoder_init: %s -> networks %s", path, sorted(loaded_params))
    return (
        trees.overlay(params, loaded_params, f"params:{path}"),
        trees.overlay(batch_stats, loaded_stats, f"params:{path} (batch_stats)"),
    )


def imagenet_encoders(
    params: Mapping, batch_stats: Mapping, state: Mapping, source: str = "imagenet"
) -> tuple[dict, dict]:
    """Every network's `encoder` initialised from one torchvision ResNet state dict.

    Args:
        params, batch_stats: variables keyed by network; networks without an `encoder` subtree
            are left alone.
        state: torchvision keys (`conv1.weight` [64, 3, 7, 7], ..., `fc.*` ignored).
        source: shown in errors and logs.

    Returns:
        New (params, batch_stats). Encoder variables that are not ResNet modules (e.g. a
        ManyDepth cost-volume conv) keep their initial values.
    """
    params, batch_stats = dict(params), dict(batch_stats)
    for network, net_params in params.items():
        if "encoder" not in net_params or "conv1" not in net_params["encoder"]:
            continue
        in_channels = net_params["encoder"]["conv1"]["kernel"].shape[2]
        enc_params, enc_stats = torch_layout.encoder_from_torch(
            torch_layout.stack_conv1(state, in_channels // 3)
        )
        where = f"{source} -> {network}/encoder"
        missing = trees.covers(enc_params, net_params["encoder"], _RESNET_MODULES)
        if missing:
            raise ValueError(f"{where}: the weights lack {', '.join(missing[:5])}")
        params[network] = {
            **net_params, "encoder": trees.overlay(net_params["encoder"], enc_params, where)
        }
        net_stats = batch_stats[network]
        batch_stats[network] = {
            **net_stats, "encoder": trees.overlay(net_stats["encoder"], enc_stats, where)
        }
        log.info("encoder_init: %s (%d input images)", where, in_channels // 3)
    return params, batch_stats
