"""Config sections of the panoptic plug-in (jdepth/training/panoptic.py), shared by every recipe.

A recipe config calls `add_sections(config)` (off by default) so `--config.panoptic.enabled=True`
works on it, and a variant switches them on with `enable(config)`. Only ml_collections is
imported here: config files stay cheap to load.

Values follow YOSO's Cityscapes config and Mask2Former unless noted; see DESIGN.md items 1-3.
"""

from __future__ import annotations

from ml_collections import config_dict


def panoptic_section() -> config_dict.ConfigDict:
    """`config.panoptic`: the YOSO-style head and its Mask2Former loss."""
    cfg = config_dict.ConfigDict()
    cfg.enabled = False
    # lambda_Pan: L_Pan (eq. 2) into the depth objective (paper Sec. 4.2.1, "when integrated
    # into the depth estimation branch we set the weight of lambda_Pan to 0.35").
    cfg.weight = 0.35
    # Warm-up (jdepth/training/plugin_warmup.py): the head's gradient reaches the depth encoder
    # from this step; before it the head trains on gradient-stopped features. 0: the paper.
    cfg.start_step = 0
    cfg.num_classes = 19  # Cityscapes train classes; the head adds a no-object class
    cfg.num_proposals = 100
    cfg.hidden_dim = 256
    cfg.agg_dim = 128
    cfg.num_stages = 2  # kernel-update stages after the stage-0 kernels
    cfg.ffn_dim = 2048
    cfg.num_heads = 8
    cfg.num_cls_fcs = 3  # YOSO Cityscapes (COCO: 1)
    cfg.num_mask_fcs = 3
    # Class logits / temperature, in the matching, the loss and at inference: YOSO's Cityscapes
    # config (TEMPERATIRE: 0.05; its default 0.1). With YOSO's classifier init (trunc-normal 0.02,
    # the same here) 1 / 0.05 spreads the step-0 logits 20x, so the CE starts far above log(20),
    # as in YOSO (RESULTS.md, "Panoptic loss scale at initialisation").
    cfg.temperature = 0.05
    # Ground-truth segments per image kept as targets (static shapes); <= num_proposals. Images
    # with more are logged as panoptic/truncated.
    cfg.max_segments = 64
    cfg.class_weight = 2.0
    cfg.mask_weight = 5.0
    cfg.dice_weight = 5.0
    # Weight of the no-object class in the CE (Mask2Former / YOSO eos_coef; DETR's bipartite
    # matching loss down-weights no-object by 10): the paper's "bipartite matching loss ... with a
    # weight of 0.1" (Sec. 4.2.1), as we read it.
    cfg.no_object_weight = 0.1
    # "mask2former": mask / dice summed over the global batch's matched masks / num_masks, CE one
    # weighted mean over all its proposals (Mask2Former's criterion; psum-ed under pmap).
    # "per_image": each image normalised by its own segments, then the mean over images (jdepth
    # before issue 24). jdepth/losses/panoptic.py.
    cfg.normalization = "mask2former"
    cfg.num_points = 12544  # capped at the stride-4 mask's pixel count
    cfg.oversample_ratio = 3.0
    cfg.importance_sample_ratio = 0.75
    # Inference (jdepth/eval/panoptic.py), YOSO Cityscapes values.
    cfg.object_mask_threshold = 0.8
    cfg.overlap_threshold = 0.8
    return cfg


def contrastive_section() -> config_dict.ConfigDict:
    """`config.contrastive`: the instance-aware patch contrastive loss (paper eq. 1)."""
    cfg = config_dict.ConfigDict()
    cfg.enabled = False
    # The paper gives no weight for eq. 1; FSRE's triplet loss, which it replaces, uses 0.1.
    cfg.weight = 0.1
    cfg.start_step = 0  # weight 0 before this step (jdepth/training/plugin_warmup.py); 0: paper
    cfg.kind = "supcon"  # eq. 1; "triplet": FSRE's semantics-guided triplet loss (ablation)
    # Positives share the panoptic segment ("panoptic", the paper) or only the class ("semantic":
    # with kind="triplet" this is FSRE's loss as published).
    cfg.labels = "panoptic"
    cfg.scales = (3, 2, 1)  # decoder features at 1/8, 1/4, 1/2 (FSRE's layers)
    cfg.patch_size = 5  # K
    cfg.temperature = 0.1  # tau (the paper gives no value)
    cfg.margin = 0.3  # triplet only (FSRE)
    cfg.min_pairs = 4  # anchors need >= this many positives and negatives (FSRE: K - 1)
    return cfg


def add_sections(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """Adds `data.load_panoptic`, `panoptic` and `contrastive` (all off) to a recipe config."""
    config.data.load_panoptic = False  # panoptic label PNG of every frame (batch["panoptic"])
    config.panoptic = panoptic_section()
    config.contrastive = contrastive_section()
    return config


def enable(config: config_dict.ConfigDict, head: bool = True, contrastive: bool = True):
    """Switches the head and/or the contrastive loss on (and the label loading they need)."""
    config.data.load_panoptic = True
    config.panoptic.enabled = head
    config.contrastive.enabled = contrastive
    return config


def enable_paper_components(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """Every component Shyam et al. add to a depth recipe: the panoptic head, the instance-aware
    contrastive loss, small-object masking and piece-wise pose (and the labels they read).

    The recipes `manydepth_plus`, `hrdepth_plus`, `hrdepth_pp` and their demo twins are built with
    it; the `*_panoptic` configs switch on the panoptic branch alone.
    """
    enable(config)
    config.masking.small_objects = True
    config.piecewise.enabled = True
    return config


def disable_paper_components(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """The inverse of `enable_paper_components` (the labels are no longer loaded)."""
    config.data.load_panoptic = False
    config.panoptic.enabled = config.contrastive.enabled = False
    config.masking.small_objects = False
    config.piecewise.enabled = False
    return config
