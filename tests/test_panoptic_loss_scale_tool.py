"""tools/panoptic_loss_scale.py: config overrides and the weighted rows it prints (no step is run)."""

import pytest
from conftest import load_config, load_tool

from jdepth.config_files import override


def _tool():
    return load_tool("panoptic_loss_scale")


def test_rows_are_lambda_pan_times_term_weight_times_term(capsys):
    tool = _tool()
    config = load_config("monodepth2_panoptic")
    override(config, "panoptic.temperature=1.0")
    override(config, "panoptic.enabled=false")
    assert config.panoptic.temperature == 1.0 and config.panoptic.enabled is False
    metrics = {"photometric": 0.1, "smoothness": 0.001, "panoptic/s0_mask": 0.5,
               "panoptic/s0_dice": 0.9, "panoptic/s1_ce": 8.0, "panoptic/s1_mask": 0.6,
               "panoptic/s1_dice": 0.9, "panoptic": 7.0, "contrastive": 0.2,
               "contrastive/unweighted": 2.0, "panoptic/segments": 3.0}
    rows = dict(tool.report("monodepth2_panoptic", config, metrics))
    by_term = {label.split(" (")[0]: value for label, value in rows.items()}
    assert by_term["panoptic s1 ce"] == pytest.approx(0.35 * 2.0 * 8.0)
    assert by_term["panoptic s0 mask"] == pytest.approx(0.35 * 5.0 * 0.5)
    assert by_term["panoptic s1 dice"] == pytest.approx(0.35 * 5.0 * 0.9)
    assert "panoptic s0 ce" not in by_term  # stage 0 has no class logits
    assert by_term["contrastive"] == pytest.approx(0.2)
    out = capsys.readouterr().out
    assert "temperature 1" in out and "56.00" in out  # s1 ce: 5.6 / photometric 0.1


def test_config_override_reads_values_as_the_fields_types():
    config = load_config("demo")
    override(config, "--config.optim.decay_epochs=(1,)")  # jdepth.train's spelling
    override(config, "train.num_epochs=2")
    override(config, "model.encoder_init=params:/runs/start.npz")
    override(config, "optim.lr=1e-4")
    override(config, "model.pose_zero_init=False")
    assert tuple(config.optim.decay_epochs) == (1,) and config.train.num_epochs == 2
    assert config.model.encoder_init == "params:/runs/start.npz"
    assert config.optim.lr == pytest.approx(1e-4) and config.model.pose_zero_init is False
    with pytest.raises(ValueError, match="section.field=value"):
        override(config, "train.num_epochs")
    with pytest.raises(KeyError):
        override(config, "train.no_such_field=1")
