"""Weights in and out of jdepth: PyTorch layouts, the reference checkpoints, plain .npz files.

    torch_layout.py   per network part: jdepth variables <-> torch state-dict keys (numpy only)
    checkpoints.py    whole Monodepth2 / ManyDepth weights folders (encoder.pth, depth.pth, ...)
    files.py          .pth (optional torch) and .npz reading/writing of state dicts
    params_npz.py     jdepth variables as one flat .npz with documented names
    encoder_init.py   `config.model.encoder_init`: ImageNet or converted weights as initialisation
    trees.py          checked merging of pretrained weights into initial variables
    stablehlo.py      the depth network as a jax.export (StableHLO) artifact; its loader needs jax only

Command-line front ends: tools/export_params.py, tools/import_torch.py, tools/predict.py,
tools/export_stablehlo.py.
"""
