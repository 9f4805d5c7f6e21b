"""Surface appearance for the synthetic KITTI dataset: photographic textures, materials, shading.

Textures are scikit-image's real photographs (brick, grass, gravel), mirror-tiled so they repeat
without seams, with a mip pyramid so distant surfaces are filtered instead of aliased (aliasing
would make the same surface point change colour between frames and poison photometric losses).
Texture coordinates are metres on the surface in the object's own frame, so the pattern moves
exactly with the geometry. Shading is Lambertian under a fixed sun, i.e. independent of the viewer.
"""

from __future__ import annotations

import functools

import numpy as np

from jdepth.data import synthetic_scene as sc

BRICK, GRASS, GRAVEL = range(3)
_LEVELS = 8
_SIZE = 1024
# Per material: texture, metres per texel, texture contrast, lidar reflectivity.
_MATERIALS = {
    sc.ROAD: (GRAVEL, 0.005, 0.55, 0.35), sc.SIDEWALK: (BRICK, 0.006, 0.5, 0.4),
    sc.BUILDING: (BRICK, 0.008, 0.6, 0.5), sc.POLE: (GRAVEL, 0.004, 0.4, 0.6),
    sc.CANOPY: (GRASS, 0.006, 0.9, 0.3), sc.TRUNK: (GRAVEL, 0.004, 0.6, 0.3),
    sc.TERRAIN: (GRASS, 0.005, 0.8, 0.3), sc.CAR_BODY: (GRAVEL, 0.004, 0.12, 0.7),
    sc.CAR_CABIN: (GRAVEL, 0.004, 0.15, 0.2),
}
_TEXTURE, _TEXEL, _CONTRAST, _REFLECTIVITY = np.array(
    [_MATERIALS[m] for m in range(len(_MATERIALS))]).T.copy()
_TEXTURE = _TEXTURE.astype(np.int64)
# Colours are [3, 1] columns: shading works channel-first ([3, N]), which keeps numpy fast.
_ASPHALT, _PAINT = np.array([[0.34], [0.34], [0.36]]), np.array([[0.92], [0.92], [0.88]])
_GRASS_TINT, _GLASS = np.array([[0.40], [0.52], [0.26]]), np.array([[0.10], [0.13], [0.17]])
_TYRE = np.array([[0.07], [0.07], [0.08]])
SKY_HORIZON, _SKY_ZENITH = np.array([[0.86], [0.90], [0.95]]), np.array([[0.36], [0.55], [0.84]])


@functools.lru_cache(maxsize=1)
def _atlas() -> tuple[np.ndarray, np.ndarray]:
    """All mip levels of all textures in one flat float32 array (mean 1), and their offsets."""
    import skimage.data  # imported lazily: only generation needs it

    flat, offsets = [], np.zeros((3, _LEVELS), np.int64)
    pos = 0
    for tex, image in enumerate((skimage.data.brick(), skimage.data.grass(),
                                 skimage.data.gravel())):
        g = image.astype(np.float64)
        g = np.block([[g, g[:, ::-1]], [g[::-1], g[::-1, ::-1]]])  # seamless 1024 x 1024
        g /= g.mean()
        for level in range(_LEVELS):
            offsets[tex, level] = pos
            flat.append(g.ravel())
            pos += g.size
            g = 0.25 * (g[0::2, 0::2] + g[1::2, 0::2] + g[0::2, 1::2] + g[1::2, 1::2])
    return np.concatenate(flat).astype(np.float32), offsets


def sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray, texel: np.ndarray,
                   footprint: np.ndarray) -> np.ndarray:
    """Bilinear, mip-mapped texture lookup.

    Args:
      tex: [N] texture ids; u, v: [N] surface coordinates (metres); texel: [N] metres per texel at
        full resolution; footprint: [N] metres covered by one image pixel on the surface.

    Returns:
      [N] float64 texture values (mean about 1).
    """
    flat, offsets = _atlas()
    with np.errstate(divide="ignore"):
        level = np.clip(np.floor(np.log2(footprint / texel) + 0.5), 0, _LEVELS - 1).astype(np.int64)
    scale = texel * np.exp2(level)
    size = _SIZE >> level
    mask = size - 1
    base = offsets[tex, level]
    x, y = u / scale - 0.5, v / scale - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    cols = (x0 & mask, (x0 + 1) & mask)
    rows = (base + (y0 & mask) * size, base + ((y0 + 1) & mask) * size)
    top = flat[rows[0] + cols[0]] * (1 - fx) + flat[rows[0] + cols[1]] * fx
    bottom = flat[rows[1] + cols[0]] * (1 - fx) + flat[rows[1] + cols[1]] * fx
    return top * (1 - fy) + bottom * fy


def _textured(material: np.ndarray, u: np.ndarray, v: np.ndarray,
              footprint: np.ndarray) -> np.ndarray:
    """[N] texture value of each material's photograph, contrast-scaled around 1."""
    g = sample_texture(_TEXTURE[material], u, v, _TEXEL[material], footprint)
    return 1 + _CONTRAST[material] * (g - 1)


def _paint(albedo: np.ndarray, mask: np.ndarray, colour: np.ndarray, g: np.ndarray,
           texture_weight: float) -> None:
    """Overwrites albedo [3, N] where mask holds with a lightly textured flat colour [3, 1]."""
    index = np.flatnonzero(mask)
    if index.size:
        albedo[:, index] = colour * (1 - texture_weight + texture_weight * g[index])


def ground_albedo(scene: sc.Scene, x: np.ndarray, z: np.ndarray, footprint: np.ndarray):
    """Road (asphalt with lane lines) or terrain (grass) at scene-frame ground points.

    Returns:
      albedo [3, N], material [N] (ROAD or TERRAIN).
    """
    on_road = (x >= scene.road_edges[0]) & (x <= scene.road_edges[1])
    material = np.where(on_road, sc.ROAD, sc.TERRAIN)
    g = _textured(material, x, z, footprint)
    albedo = (_GRASS_TINT + (_ASPHALT - _GRASS_TINT) * on_road) * g
    paint = np.zeros(len(x), bool)
    dash = (z - 9.0 * np.floor(z / 9.0)) < 3.0
    for line_x, dashed in scene.markings:
        stripe = np.abs(x - line_x) < 0.075
        paint |= stripe & dash if dashed else stripe
    _paint(albedo, paint, _PAINT, g, 0.1)
    return albedo, material


def face_normals(half: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face axis [N] (0, 1, 2) and unit outward normal [3, N] of surface points [3, N] on boxes
    with half extents [3, N], both in box frames."""
    gap = np.abs(local) - half  # the face the point lies on has gap 0, the others negative
    axis = np.where((gap[0] >= gap[1]) & (gap[0] >= gap[2]), 0, np.where(gap[1] >= gap[2], 1, 2))
    normal = np.zeros_like(local)
    for a in range(3):
        normal[a] = np.where(axis == a, np.sign(local[a]), 0.0)
    return axis, normal


def box_albedo(scene: sc.Scene, box: np.ndarray, local: np.ndarray, axis: np.ndarray,
               footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo of hits on boxes.

    Args:
      box: [N] scene box indices; local: [3, N] hit points in each box's frame; axis: [N] face
        axis from `face_normals`; footprint: [N] metres per image pixel on the surface.

    Returns:
      albedo [3, N], material [N].
    """
    lx, ly, lz = local
    half_y, half_z = scene.half[box, 1], scene.half[box, 2]
    height = half_y - ly  # above the box bottom
    side = axis != 1
    # Surface coordinates: horizontal and vertical metres on side faces, x and z on top faces.
    along = np.where(axis == 0, lz, lx)
    v = np.where(side, height, lz)
    material = scene.material[box]
    brick = material == sc.BUILDING  # the photo's bricks stand upright: turn them on facades
    u = np.where(brick, v, along) + scene.uv_offset[box, 0]
    v = np.where(brick, along, v) + scene.uv_offset[box, 1]
    g = _textured(material, u, v, footprint)
    albedo = scene.tint.T[:, box] * g
    # Facade windows on a per-building grid, none on the ground floor.
    spacing_x, spacing_y, fill_x, fill_y = scene.windows.T[:, box]
    along = along + scene.uv_offset[box, 0]
    above_ground = height - 0.5
    window = (brick & side & (np.mod(along, spacing_x) < fill_x * spacing_x)
              & (np.mod(above_ground - 0.8, spacing_y) < fill_y * spacing_y)
              & (above_ground > 3.0) & (above_ground < 2 * half_y - 1.5))
    _paint(albedo, window, _GLASS, g, 0.2)
    _paint(albedo, (material == sc.CAR_CABIN) & side, _GLASS, g, 0.1)
    body = material == sc.CAR_BODY
    wheel = body & (axis == 0) & (((np.abs(lz) - half_z + 0.8) ** 2 + (height - 0.21) ** 2)
                                  < 0.31**2)
    _paint(albedo, wheel | (body & side & (height < 0.14)), _TYRE, g, 1.0)
    return albedo, material


def reflectance(albedo: np.ndarray, material: np.ndarray) -> np.ndarray:
    """Lidar intensity [N] in [0, 1] from surface brightness [3, N] and material reflectivity."""
    brightness = (albedo[0] + albedo[1] + albedo[2]) / 3
    return np.clip(0.05 + _REFLECTIVITY[material] * brightness, 0.0, 1.0)


def sky_colour(elevation: np.ndarray) -> np.ndarray:
    """[N] ray elevation (rad) -> [3, N] sky colour, a gradient that depends on direction only."""
    w = np.clip(elevation / 0.6, 0.0, 1.0) ** 0.7
    return SKY_HORIZON * (1 - w) + _SKY_ZENITH * w


def lambert(normal_scene: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """[3, N] unit normals -> [N] shading factor: ambient 0.4 plus diffuse sunlight."""
    return 0.4 + 0.6 * np.clip(sun @ normal_scene, 0.0, None)
