"""jdepth: self-supervised monocular depth estimation in JAX/Flax.

Conventions shared by every module (see README "Conventions"):

* Images are float32 NHWC in [0, 1]; depth and disparity maps are ``[B, H, W, 1]``.
* Camera frame is KITTI's rectified camera: x right, y down, z forward.
* Pixel centres sit at integer coordinates: pixel (row i, col j) is the point (x=j, y=i).
* ``K`` and ``inv_K`` are 4x4 pixel intrinsics at the resolution they are used with.
* ``T`` (a "cam_T_cam") is 4x4 and maps homogeneous points of the target camera (frame 0) into the
  source camera (frame f): ``X_f = T @ X_0``, as Monodepth2's ``cam_T_cam``.
"""

__version__ = "0.1.0"
