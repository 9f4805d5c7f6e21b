"""jdepth/training/hlo_profile.py: attributing traced HLO instructions to parts of the step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jdepth import geometry
from jdepth.losses import photometric
from jdepth.training import hlo_profile


class Head(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(3, (3, 3), name="head_conv")(x)


def _loss(params, source, target, depth, T, K, inv_K):
    """A tiny photometric objective: a conv module, the warp and the SSIM."""
    image = Head().apply({"params": params}, source)
    warped, _ = geometry.inverse_warp(image, depth, T, K, inv_K)
    return jnp.mean(photometric.ssim_loss(warped, target))


def _inputs():
    rng = np.random.default_rng(0)
    b, h, w = 2, 8, 12
    K = np.array([[[6.0, 0, 6, 0], [0, 6, 4, 0], [0, 0, 1, 0], [0, 0, 0, 1]]] * b, np.float32)
    T = np.array([np.eye(4)] * b, np.float32)
    T[:, 0, 3] = 0.1
    source = rng.random((b, h, w, 3), np.float32)
    target = rng.random((b, h, w, 3), np.float32)
    depth = np.full((b, h, w, 1), 2.0, np.float32)
    params = Head().init(jax.random.key(0), source)["params"]
    return params, source, target, depth, T, K, np.linalg.inv(K)


@pytest.fixture(scope="module")
def compiled_loss():
    args = _inputs()
    return jax.jit(jax.grad(_loss)).lower(*args).compile(), args


def test_module_part_reads_the_flax_path_through_transforms():
    assert hlo_profile.module_part(
        "jit(train_step)/transpose(jvp(PoseNet))/encoder/layer3_0/conv1/conv_general_dilated"
    ) == "PoseNet/encoder"
    assert hlo_profile.module_part("jit(train_step)/jvp(DepthNet)/add") == "DepthNet"
    # An einsum spec and plain primitives are not modules.
    assert hlo_profile.module_part("jit(f)/Hh,bhwc,Ww->bHWc/dot_general") is None
    assert hlo_profile.module_part("jit(f)/transpose(jvp(vmap()))/mul") is None


def test_parse_module_reads_op_names_stacks_and_operands(compiled_loss):
    compiled, _ = compiled_loss
    instructions = hlo_profile.parse_module(compiled.as_text())
    assert instructions, "no instruction parsed"
    # Every operand named is itself a parsed instruction (computations are dropped).
    for info in instructions.values():
        assert all(name in instructions for name in info["operands"])
    files = {file for info in instructions.values() for file, _ in info["stack"]}
    assert any(f.endswith("jdepth/geometry.py") for f in files)
    op_names = " ".join(info["op_name"] for info in instructions.values())
    # The custom_vjp backwards carry their own names (their stack is the caller's).
    assert "_ssim_loss_bwd" in op_names and "_sample_border_bwd" in op_names
    assert "Head" in op_names


def test_categories_cover_network_sampling_and_ssim(compiled_loss):
    compiled, _ = compiled_loss
    parts = set(hlo_profile.categories(hlo_profile.parse_module(compiled.as_text())).values())
    assert "network: Head/head_conv" in parts
    assert "SSIM" in parts
    assert "sampling (bilinear gather + its scatter gradient)" in parts


def test_metadata_less_instructions_take_their_users_part():
    instructions = {
        "kernel_copy": {"opcode": "copy", "op_name": "", "operands": [], "stack": []},
        "conv": {"opcode": "convolution", "op_name": "jit(f)/jvp(DepthNet)/decoder/x/conv",
                 "operands": ["kernel_copy"], "stack": []},
        "orphan": {"opcode": "copy", "op_name": "", "operands": [], "stack": []},
    }
    parts = hlo_profile.categories(instructions)
    assert parts["kernel_copy"] == "network: DepthNet/decoder"
    assert parts["orphan"] == "no source (XLA-inserted)"


def test_attribute_sums_durations_and_skips_control_flow_containers():
    instructions = {
        "a": {"opcode": "fusion", "op_name": "jit(f)/jvp(PoseNet)/encoder/c/conv", "operands": [],
              "stack": []},
        "loop": {"opcode": "while", "op_name": "jit(f)/while", "operands": [], "stack": []},
    }
    events = [
        {"ph": "X", "dur": 5.0, "args": {"hlo_op": "a", "hlo_module": "jit_f"}},
        {"ph": "X", "dur": 7.0, "args": {"hlo_op": "a", "hlo_module": "jit_f"}},
        {"ph": "X", "dur": 100.0, "args": {"hlo_op": "loop", "hlo_module": "jit_f"}},
        {"ph": "X", "dur": 50.0, "args": {"hlo_op": "a", "hlo_module": "jit_other"}},
        {"ph": "X", "dur": 3.0, "args": {"hlo_op": "unknown", "hlo_module": "jit_f"}},
    ]
    parts = hlo_profile.attribute(events, instructions, module="jit_f")
    assert parts["network: PoseNet/encoder"]["us"] == 12.0
    assert parts["network: PoseNet/encoder"]["count"] == 2
    assert parts["unattributed"]["us"] == 3.0
    assert set(parts) == {"network: PoseNet/encoder", "unattributed"}


def test_a_real_trace_is_attributed(tmp_path, compiled_loss):
    compiled, args = compiled_loss
    jax.block_until_ready(compiled(*args))
    jax.profiler.start_trace(str(tmp_path), create_perfetto_trace=True)
    try:
        for _ in range(3):
            jax.block_until_ready(compiled(*args))
    finally:
        jax.profiler.stop_trace()
    events = hlo_profile.trace_events(str(tmp_path))
    assert events, "the trace has no HLO instruction events"
    parts = hlo_profile.attribute(events, hlo_profile.parse_module(compiled.as_text()))
    assert "SSIM" in parts and parts["SSIM"]["us"] > 0
    assert any(name.startswith("network: Head") for name in parts)
