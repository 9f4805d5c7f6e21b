"""XLA compiler options for the compiled train steps, chosen by backend.

XLA:CPU hands convolutions, dots, elementwise ops and reductions to YNNPACK by default. Its
convolutions are fast in the forward pass but its kernel gradients are not: for a 3x3 convolution
the weight gradient cost several times the forward pass, up to 40x for the decoder's wide,
few-output layers, and made the Monodepth2 step slower than the released PyTorch code. With YNNPACK
kept for reductions only, XLA's own (Eigen) convolution runs the gradients at about the forward
cost; YNNPACK's reductions stay, since XLA's native ones are slower again (BatchNorm statistics).
Measured per layer and per step in BENCHMARKS.md ("Speed"). The values and gradients are the same
convolution mathematics either way (tests/test_compile_options.py).

GPU and TPU compiles get no options: cuDNN / the TPU compiler already choose their algorithms.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger("jdepth")

# YNNPACK only for reductions (see above). The option list is a comma-separated set of
# LIBRARY_FUSION_TYPE_* names; an empty string would switch YNNPACK off altogether.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def for_platform(platform: str) -> dict[str, str]:
    """The options for a device platform name ('cpu', 'gpu', 'cuda', 'tpu', ...)."""
    return dict(CPU_OPTIONS) if platform == "cpu" else {}


def compile_lowered(lowered, platform: str):
    """`lowered.compile(options)` with this backend's options.

    A jaxlib that does not know an option (the YNNPACK switch is experimental upstream) compiles
    with XLA's defaults and says so once, rather than failing the run.
    """
    options = for_platform(platform)
    if not options:
        return lowered.compile()
    try:
        return lowered.compile(options)
    except jax.errors.JaxRuntimeError as error:
        if "No such compile option" not in str(error):
            raise
        log.warning("XLA compile options %s not supported by this jaxlib (%s); compiling with "
                    "XLA's defaults (slower convolution gradients on CPU)", options, error)
        return lowered.compile()
