"""Shared pytest fixtures."""

import os

# Tests run on the CPU; two host devices let the pmap tests run everywhere. This must be set
# before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
