"""Monodepth2 (M, ResNet-18, 640x192) on KITTI raw, Eigen-Zhou split.

  python -m jdepth.train --config configs/monodepth2.py --workdir runs/md2 \
      --config.data.root=/data/kitti_raw --config.data.split_dir=splits/eigen_zhou \
      --config.data.test_split=splits/eigen/test_files.txt

Reference: KITTI Eigen AbsRel 0.115 with ImageNet weights (0.132 from scratch), 20 epochs, batch 12.
Expected cost: about 12 h on one Titan Xp in the reference (jdepth GPU timings: not measured yet).
"""

from ml_collections import config_dict

from jdepth.training import panoptic_config


def get_config():
    config = config_dict.ConfigDict()
    config.recipe = "monodepth2"
    config.seed = 0

    config.data = config_dict.ConfigDict()
    config.data.root = config_dict.placeholder(str)
    config.data.split_dir = config_dict.placeholder(str)  # holds {train,val}_files.txt
    config.data.train_split = config_dict.placeholder(str)
    config.data.val_split = config_dict.placeholder(str)
    config.data.test_split = config_dict.placeholder(str)
    config.data.height = 192
    config.data.width = 640
    config.data.frame_ids = (0, -1, 1)
    config.data.img_ext = config_dict.placeholder(str)  # None: png or jpg, auto-detected per frame
    config.data.on_missing = "raise"  # neighbour at a sequence boundary: 'raise' or 'clamp'
    config.data.num_workers = 4
    config.data.load_velocity = False  # oxts forward speed per frame (speed supervision)
    config.data.frame_interval = 0.1  # seconds between frames (KITTI raw is 10 Hz)
    config.data.cache_dir = config_dict.placeholder(str)
    config.data.frame_cache_mb = 256  # decoded training frames kept per loader process
    config.data.synthetic = config_dict.ConfigDict()  # generator args; empty: use data.root

    config.model = config_dict.ConfigDict()
    config.model.num_layers = 18
    config.model.pose_num_layers = 18
    config.model.scales = (0, 1, 2, 3)
    config.model.min_depth = 0.1
    config.model.max_depth = 100.0
    config.model.dtype = "float32"
    # 'scratch', 'imagenet:/path/resnet18.pth' (torchvision weights for the depth and pose
    # encoders; the reference's default --weights_init pretrained) or 'params:/path/params.npz'
    # (a converted model, tools/import_torch.py). See jdepth/interop/encoder_init.py.
    config.model.encoder_init = "scratch"
    # True: the pose decoder's output conv starts at zero (identity poses); the reference's
    # random init is False. Helps training from scratch (configs/demo.py).
    config.model.pose_zero_init = False
    # Metric runs (speed loss): initial depth in metres (0: the reference's sigmoid(0)) and the
    # pose translation factor (0.01: the reference). jdepth/training/metric_init.py.
    config.model.init_depth = 0.0
    config.model.pose_translation_scale = 0.01

    config.loss = config_dict.ConfigDict()
    config.loss.ssim_weight = 0.85
    config.loss.smoothness_weight = 1e-3
    config.loss.automask = True
    # > 0: the automask joins at this step (reference: 0, from the start). See configs/demo.py.
    config.loss.automask_start_step = 0
    config.loss.avg_reprojection = False
    # Monodepth2's --v1_multiscale: each scale warped at its own resolution (off: full-res
    # multiscale).
    config.loss.v1_multiscale = False
    # Warp with depth / its per-image mean (Wang et al. 2018; not in the reference): the depth
    # net cannot shrink its depth to grow the warps (jdepth/losses/monodepth.py).
    config.loss.depth_normalization = False
    # Speed supervision of the pose translation (jdepth/losses/velocity.py); > 0 needs
    # data.load_velocity. Off in the reference recipe; anchors metric scale (DESIGN.md item 8).
    config.loss.velocity_weight = 0.0

    # ISSL plug-in (jdepth/losses/issl.py; Cha et al. App. A.2 values). configs/monodepth2_issl.py
    # switches it on.
    config.issl = config_dict.ConfigDict()
    config.issl.enabled = False
    config.issl.weight = 0.1  # lambda_3
    config.issl.start_step = 0  # weight 0 before this step (jdepth/training/plugin_warmup.py)
    config.issl.num_samples = 4  # n_k self-samples per target image
    config.issl.distribution = "uniform"  # or "gaussian" (std theta/2, clipped to theta)
    config.issl.theta_r_start = 0.005  # rotation range (rad) in the first epoch ...
    config.issl.theta_r_end = 0.2  # ... rising linearly to this in the last epoch
    config.issl.theta_t = 0.005  # translation range (depth units)
    config.issl.median_scaling = True
    config.issl.target_in_self_frame = True  # False: sampled frame-t depth, the literal reading

    # Panoptic head + contrastive loss plug-in (jdepth/training/panoptic_config.py; all off here,
    # configs/monodepth2_panoptic.py switches them on): data.load_panoptic, panoptic, contrastive.
    panoptic_config.add_sections(config)

    # Piece-wise pose (paper Sec. 3.3, jdepth/training/piecewise.py): ego pose on thing-masked
    # pairs, one pose per matched instance, composed per pixel in the warp. Needs
    # data.load_panoptic; configs/demo_piecewise.py switches it on.
    config.piecewise = config_dict.ConfigDict()
    config.piecewise.enabled = False
    # Instance slots per frame (static shapes). Every slot costs one more pose-net pair per source
    # frame, filled or not; the largest instances win when a frame has more.
    config.piecewise.max_instances = 8
    config.piecewise.min_area_fraction = 0.01  # alpha = 1 % of the image (paper Sec. 4.2)
    # "absolute" (the paper: "instance-wise pose estimation is computed employing the masked
    # instance image"): the pose net predicts the instance's whole transform. Deviations:
    # "residual": instance transform = ego transform @ the object's own motion (starts at the ego
    # warp; no gradient from instance pixels into the ego pose); "residual_coupled": the same with
    # that gradient; "none": no instance poses, only the thing-masked ego pose (an ablation).
    config.piecewise.instance_pose = "absolute"
    # "shared": the ego pose net also makes the instance calls (the paper); "separate": the
    # instances get their own PoseNet.
    config.piecewise.instance_network = "shared"
    # What the instance call sees: "masked" (the paper): both frames masked to the instance;
    # "ego_warped" (struct2depth): the masked target and the masked source instance carried into
    # the target by the ego pose and current depth, so only the object's own motion is left to
    # see. Needs a residual instance_pose.
    config.piecewise.instance_input = "masked"
    # Warm-up (jdepth/training/plugin_warmup.py): a Monodepth2 step before this step. 0: paper.
    config.piecewise.start_step = 0
    # False: pixels of matched instances train their instance pose, not the depth (the per-object
    # depth / motion trade-off leaves their depth free). True: the paper's unchanged loss.
    config.piecewise.instance_depth_gradient = True
    # > 0: small-motion prior on the residual instance motions (jdepth/losses/motion_prior.py;
    # not in the paper, which keeps the loss unchanged): residual scene flow on instance pixels
    # per unit depth. Needs instance_pose "residual" or "residual_coupled".
    config.piecewise.motion_prior_weight = 0.0
    # > 0: object-size prior (jdepth/losses/object_size.py; struct2depth's, not in the paper):
    # every car's log(mean depth x image rows spanned) pulled to the batch median, so a moving
    # car's depth follows its size where its photometric error cannot pin it.
    config.piecewise.size_prior_weight = 0.0
    # > 0: ground-contact prior (jdepth/losses/ground_contact.py; not in the paper): each car's
    # lowest rows and the road right below them pulled together in log depth.
    config.piecewise.contact_prior_weight = 0.0

    # Small-object masking (Shyam et al. Sec. 3; jdepth/training/plugins.py) on its own: frame-0
    # thing pixels outside every instance of >= alpha of the image get photometric weight 0.
    # Piece-wise pose drops those (and the instances beyond its M slots) itself. Needs
    # data.load_panoptic.
    config.masking = config_dict.ConfigDict()
    config.masking.small_objects = False
    config.masking.min_area_fraction = 0.01  # alpha (paper Sec. 4.2)

    config.optim = config_dict.ConfigDict()
    config.optim.lr = 1e-4
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    # LR x0.1 from epoch 15 on: 15 + 5 epochs, the reference's intent (PyTorch 0.4.1). Modern
    # PyTorch runs of the reference decay after 14 epochs; use (14,) to reproduce those.
    config.optim.decay_epochs = (15,)
    config.optim.decay_factor = 0.1
    # > 0: linear learning-rate warm-up over this many steps (reference: 0). See configs/demo.py.
    config.optim.warmup_steps = 0
    config.optim.grad_clip_norm = 0.0
    # > 0: the depth net is held fixed for this many steps while the pose net starts (reference: 0).
    config.optim.hold_depth_steps = 0
    config.optim.pose_lr_scale = 1.0  # the pose net's LR is lr x this (reference: 1)
    config.optim.scale_lr_scale = 1.0  # Student-II's global log-scale: lr x this (sign-Adam)

    config.train = config_dict.ConfigDict()
    config.train.batch_size = 12
    config.train.num_epochs = 20
    config.train.max_steps = 0  # > 0 overrides num_epochs
    config.train.parallel = "pmap"  # or "jit" (NamedSharding over a ('batch',) mesh)
    config.train.log_every = 250
    config.train.ckpt_every_steps = 1000
    config.train.max_to_keep = 3
    # Updates with a non-finite gradient are skipped (params kept, jdepth/training/state.py);
    # more than this many in a run stop it with an error.
    config.train.max_skipped_steps = 5
    config.train.eval_every_epochs = 1
    config.train.eval_max_images = 0  # 0: the whole val split
    config.train.progress_bar = True

    # Multi-process runs (README "Multi-host training"; jdepth/training/distributed.py). Unset,
    # the layout comes from the environment ($JDEPTH_NUM_PROCESSES, ..., or an `srun` step of
    # several tasks); none of it is part of what is trained, so a run may resume on another
    # process count.
    config.distributed = config_dict.ConfigDict()
    config.distributed.coordinator_address = ""  # host:port of process 0
    config.distributed.num_processes = 0  # 0: from the environment (1 without one)
    config.distributed.process_id = -1  # -1: from the environment
    config.distributed.local_device_ids = ""  # e.g. "0,1,2,3": this process's GPUs ("": JAX's)
    config.distributed.auto_detect = True  # read SLURM's variables in an `srun` step
    # Process 0 evaluates the test split alone after training; the others wait this long for it.
    config.distributed.shutdown_timeout_seconds = 1800

    config.eval = config_dict.ConfigDict()
    config.eval.absolute_depth = False  # True: no median scaling (scale-aware recipes)
    return config
