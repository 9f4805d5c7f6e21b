"""Recipe name -> the module that implements its networks and train step.

A recipe module provides `build_networks(config, bn_axis_name)`, `init_variables(networks, config,
rng) -> (params, batch_stats)`, optionally `init_extra(config)`, `train_step(state, batch, rng, *,
networks, config, axis_name)` and `predict_disparity(params, batch_stats, extra, images, *,
networks, config)`. Plug-in losses (ISSL) are config switches inside a family, not recipes.

Optional, for recipes that need them: `make_optimizer(config, steps_per_epoch)` replaces the
default Adam (ManyDepth freezes its teacher with it); `lookup_frames(config)` names the frames
besides frame 0 the eval pass needs, which then receives `context={"lookup": [B, H, W, 3],
"K": [B, 4, 4] at H x W, "lookup_valid": [B]}` (see jdepth/inference.py).
"""

from __future__ import annotations

import importlib

import jax

_RECIPES = {
    "monodepth2": "jdepth.training.monodepth",
    "manydepth": "jdepth.training.manydepth",
    "student": "jdepth.training.student",  # HRDepth+ / HRDepth++ (scale distillation)
}


def get(name: str):
    """The module implementing recipe `name`."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(_RECIPES)}")
    return importlib.import_module(_RECIPES[name])


def init_extra(recipe, config) -> dict:
    return recipe.init_extra(config) if hasattr(recipe, "init_extra") else {}


def abstract_state_tree(config) -> dict:
    """Shapes/dtypes of {params, batch_stats, extra} of a recipe, without allocating them."""
    recipe = get(config.recipe)
    networks = recipe.build_networks(config, bn_axis_name=None)

    def init():
        params, batch_stats = recipe.init_variables(networks, config, jax.random.PRNGKey(0))
        return {"params": params, "batch_stats": batch_stats, "extra": init_extra(recipe, config)}

    return jax.eval_shape(init)
