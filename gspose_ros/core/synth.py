"""Synthetic BOP scenes: textured meshes rendered with pyrender (OSMesa) on cluttered backgrounds.

The mesh renderer here is independent of the Gaussian renderer under test.
Objects: procedurally generated (a textured one, a low-texture one) and real
meshes from Debian's assimp-testmodels (the Collada duck).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from .errors import InputError  # noqa: E402
from .geometry import pose_to_bop  # noqa: E402
from .metrics import model_diameter  # noqa: E402
from .render import look_at_pose, shifted_intrinsics  # noqa: E402

DUCK_PATH = "/usr/share/assimp/models/Collada/duck.dae"
DEFAULT_K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])
WIDTH, HEIGHT = 640, 480


def _normalise(mesh: trimesh.Trimesh, diameter: float) -> trimesh.Trimesh:
    """Centre on the bounding-box centre and scale so the diameter (max vertex distance) is `diameter` m."""
    mesh = mesh.copy()
    mesh.apply_translation(-mesh.bounds.mean(0))
    d = max(model_diameter(mesh.vertices), 1e-9)
    mesh.apply_scale(diameter / d)
    return mesh


def textured_object(seed: int = 1) -> trimesh.Trimesh:
    """A rounded box with a high-frequency random colour pattern (vertex colours)."""
    rng = np.random.default_rng(seed)
    mesh = trimesh.creation.box(extents=[1.0, 0.7, 0.5])
    mesh = mesh.subdivide_to_size(0.04)
    v = mesh.vertices
    # a few colour blobs and stripes: distinctive under any rotation
    col = np.full((len(v), 3), 0.5)
    for _ in range(14):
        c = rng.uniform(-0.5, 0.5, 3) * [1.0, 0.7, 0.5]
        r = rng.uniform(0.1, 0.3)
        w = np.exp(-np.sum((v - c) ** 2, 1) / (2 * r * r))[:, None]
        col = col * (1 - w) + w * rng.uniform(0, 1, 3)
    col += 0.15 * np.sin(25 * v[:, :1]) * np.cos(19 * v[:, 1:2])
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=(np.clip(col, 0, 1) * 255).astype(np.uint8))
    return _normalise(mesh, 0.16)


def lowtex_object() -> trimesh.Trimesh:
    """An asymmetric L-shaped bracket in one plain colour (shape, not texture, carries the pose)."""
    a = trimesh.creation.box(extents=[1.0, 0.35, 0.3])
    b = trimesh.creation.box(extents=[0.3, 0.35, 0.8])
    b.apply_translation([0.35, 0, 0.55])
    c = trimesh.creation.cylinder(radius=0.12, height=0.5)
    c.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    c.apply_translation([-0.4, 0.3, 0.0])
    mesh = trimesh.util.concatenate([a, b, c]).subdivide_to_size(0.05)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile([205, 170, 120, 255], (len(mesh.vertices), 1)))
    return _normalise(mesh, 0.15)


def duck_object() -> trimesh.Trimesh:
    if not os.path.isfile(DUCK_PATH):
        raise InputError(f"real mesh not found: {DUCK_PATH} (apt-get install assimp-testmodels)")
    scene = trimesh.load(DUCK_PATH)
    mesh = scene.to_geometry() if isinstance(scene, trimesh.Scene) else scene
    return _normalise(mesh, 0.14)


OBJECTS = {1: ("textured", textured_object), 2: ("lowtex", lowtex_object), 3: ("duck", duck_object)}


def random_background(rng: np.random.Generator, width=WIDTH, height=HEIGHT) -> np.ndarray:
    """Cluttered background: smooth colour field plus random rectangles, ellipses and lines."""
    small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    bg = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(15, 35)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(bg, (x, y), (x + int(rng.integers(10, 150)), y + int(rng.integers(10, 150))), colour, -1)
        elif kind == 1:
            cv2.ellipse(bg, (x, y), (int(rng.integers(5, 80)), int(rng.integers(5, 80))), float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            cv2.line(bg, (x, y), (int(rng.integers(0, width)), int(rng.integers(0, height))), colour, int(rng.integers(1, 8)))
    noise = rng.normal(0, 6, bg.shape)
    return np.clip(bg + noise, 0, 255).astype(np.uint8)


class MeshRenderer:
    """pyrender offscreen renderer for one mesh with random lighting."""

    def __init__(self, mesh: trimesh.Trimesh, width=WIDTH, height=HEIGHT):
        import pyrender

        self.pyrender = pyrender
        self.mesh = pyrender.Mesh.from_trimesh(mesh, smooth=False)
        self.renderer = pyrender.OffscreenRenderer(width, height)
        self.width, self.height = width, height

    def render(self, T, K, rng: np.random.Generator, fixed_light: bool = False):
        """fixed_light: one light fixed in the object frame, as when a camera circles a static
        object to capture references; otherwise random lighting relative to the camera."""
        pr = self.pyrender
        ambient = 0.35 if fixed_light else rng.uniform(0.25, 0.45)
        scene = pr.Scene(ambient_light=np.full(3, ambient), bg_color=[0, 0, 0, 0])
        scene.add(self.mesh)
        # pyrender (OpenGL) puts pixel centres at integer + 0.5, BOP's K (OpenCV) at integers, as our
        # rasterizers do: the principal point moves by half a pixel (shifted_intrinsics), or every
        # image and mask lands half a pixel up and left of where K projects the model (measured
        # -0.52 / -0.52 px against the mesh's silhouette)
        Kgl = shifted_intrinsics(torch.as_tensor(K, dtype=torch.float64)).numpy()
        cam = pr.IntrinsicsCamera(Kgl[0, 0], Kgl[1, 1], Kgl[0, 2], Kgl[1, 2], znear=0.01, zfar=10.0)
        # pyrender cameras look down -z with y up (OpenGL); ours look down +z with y down
        cam_pose = np.linalg.inv(T) @ np.diag([1.0, -1.0, -1.0, 1.0])
        scene.add(cam, pose=cam_pose)
        if fixed_light:
            light_pose = np.eye(4)
            light_pose[:3, :3] = _rotation_towards(np.array([0.3, 0.2, -1.0]))  # from above, object frame
            intensity = 3.0
        else:
            light_dir = rng.normal(size=3)
            light_dir[2] = -abs(light_dir[2]) - 0.5  # mostly from the camera side
            light_pose = cam_pose.copy()
            light_pose[:3, :3] = cam_pose[:3, :3] @ _rotation_towards(light_dir)
            intensity = rng.uniform(2.0, 4.0)
        scene.add(pr.DirectionalLight(intensity=intensity), pose=light_pose)
        color, depth = self.renderer.render(scene, flags=pr.RenderFlags.RGBA)
        return color[..., :3], depth

    def close(self):
        self.renderer.delete()


def _rotation_towards(direction: np.ndarray) -> np.ndarray:
    """Rotation whose -z axis points along `direction` (pyrender lights shine along -z)."""
    z = -direction / np.linalg.norm(direction)
    x = np.cross([0.0, 1.0, 0.0], z)
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0, 0])
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def reference_poses(n: int, distance: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Views spread over the whole sphere (Fibonacci lattice) with random in-plane roll."""
    poses = []
    for i in range(n):
        el = np.degrees(np.arcsin(1 - 2 * (i + 0.5) / n))
        az = np.degrees(i * np.pi * (3 - np.sqrt(5))) % 360
        poses.append(look_at_pose(distance, az, el, rng.uniform(-30, 30)))
    return poses


def query_poses(n: int, distance: float, rng: np.random.Generator, K=DEFAULT_K, width=WIDTH, height=HEIGHT):
    """Random rotations, depth in [0.8, 1.3]*distance, object anywhere well inside the image."""
    poses = []
    for _ in range(n):
        elevation = np.degrees(np.arcsin(rng.uniform(-1, 1)))  # uniform over the sphere
        T = look_at_pose(distance * rng.uniform(0.8, 1.3), rng.uniform(0, 360), elevation, rng.uniform(-180, 180))
        u = rng.uniform(0.25, 0.75) * width
        v = rng.uniform(0.25, 0.75) * height
        z = T[2, 3]
        T[0, 3] = (u - K[0, 2]) * z / K[0, 0]
        T[1, 3] = (v - K[1, 2]) * z / K[1, 1]
        poses.append(T)
    return poses


def render_views(mesh, poses, rng, K=DEFAULT_K, background=True, fixed_light=False):
    """Yield (RGB image, object mask) per pose: the object over a fresh cluttered background."""
    renderer = MeshRenderer(mesh)
    try:
        for T in poses:
            color, depth = renderer.render(T, K, rng, fixed_light)
            mask = depth > 0
            bg = random_background(rng) if background else np.zeros_like(color)
            yield np.where(mask[..., None], color, bg), mask
    finally:
        renderer.close()


def write_split(root, split, obj_id, mesh, poses, rng, K=DEFAULT_K, background=True, fixed_light=False):
    """Render one scene (scene id = obj id) of `split` in BOP layout."""
    sdir = os.path.join(root, split, f"{obj_id:06d}")
    os.makedirs(os.path.join(sdir, "rgb"), exist_ok=True)
    os.makedirs(os.path.join(sdir, "mask_visib"), exist_ok=True)
    cams, gts = {}, {}
    for im_id, (T, (img, mask)) in enumerate(zip(poses, render_views(mesh, poses, rng, K, background, fixed_light))):
        cv2.imwrite(os.path.join(sdir, "rgb", f"{im_id:06d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(sdir, "mask_visib", f"{im_id:06d}_000000.png"), mask.astype(np.uint8) * 255)
        R, t = pose_to_bop(T)
        cams[str(im_id)] = {"cam_K": K.reshape(-1).tolist(), "depth_scale": 1.0}
        gts[str(im_id)] = [{"cam_R_m2c": R, "cam_t_m2c": t, "obj_id": obj_id}]
    with open(os.path.join(sdir, "scene_camera.json"), "w") as f:
        json.dump(cams, f)
    with open(os.path.join(sdir, "scene_gt.json"), "w") as f:
        json.dump(gts, f)


def write_model(root, obj_id, mesh: trimesh.Trimesh, models_info: dict):
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    mm = mesh.copy()
    mm.apply_scale(1000.0)
    if not isinstance(mm.visual, trimesh.visual.ColorVisuals):
        mm.visual = mm.visual.to_color()
    mm.export(os.path.join(root, "models", f"obj_{obj_id:06d}.ply"))
    lo, hi = mm.bounds
    models_info[str(obj_id)] = {
        "diameter": model_diameter(mm.vertices),
        "min_x": float(lo[0]), "min_y": float(lo[1]), "min_z": float(lo[2]),
        "size_x": float(hi[0] - lo[0]), "size_y": float(hi[1] - lo[1]), "size_z": float(hi[2] - lo[2]),
    }


def write_multi_split(root, split, obj_ids, n_images, rng, distance=0.5, K=DEFAULT_K, scene_id=0):
    """One scene of images holding every object of obj_ids, side by side (some may overlap),
    composited by depth; mask_visib is each object's visible part."""
    sdir = os.path.join(root, split, f"{scene_id:06d}")
    os.makedirs(os.path.join(sdir, "rgb"), exist_ok=True)
    os.makedirs(os.path.join(sdir, "mask_visib"), exist_ok=True)
    renderers = [MeshRenderer(OBJECTS[i][1]()) for i in obj_ids]
    cams, gts = {}, {}
    try:
        for im_id in range(n_images):
            image = random_background(rng)
            zbuf = np.full(image.shape[:2], np.inf)
            layers = []
            slots = rng.permutation(len(obj_ids))
            for slot, (obj_id, renderer) in zip(slots, zip(obj_ids, renderers)):
                T = query_poses(1, distance, rng)[0]
                u = (slot + 0.5) / len(obj_ids) * WIDTH + rng.uniform(-0.08, 0.08) * WIDTH  # one column per object
                T[0, 3] = (u - K[0, 2]) * T[2, 3] / K[0, 0]
                color, depth = renderer.render(T, K, rng)
                layers.append((obj_id, T, color, np.where(depth > 0, depth, np.inf)))
            for _, _, color, depth in layers:
                front = depth < zbuf
                image[front] = color[front]
                zbuf = np.minimum(zbuf, depth)
            cv2.imwrite(os.path.join(sdir, "rgb", f"{im_id:06d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            gts[str(im_id)] = []
            for inst, (obj_id, T, _, depth) in enumerate(layers):
                visible = np.isfinite(depth) & (depth <= zbuf)
                cv2.imwrite(os.path.join(sdir, "mask_visib", f"{im_id:06d}_{inst:06d}.png"), visible.astype(np.uint8) * 255)
                R, t = pose_to_bop(T)
                gts[str(im_id)].append({"cam_R_m2c": R, "cam_t_m2c": t, "obj_id": int(obj_id)})
            cams[str(im_id)] = {"cam_K": K.reshape(-1).tolist(), "depth_scale": 1.0}
    finally:
        for r in renderers:
            r.close()
    with open(os.path.join(sdir, "scene_camera.json"), "w") as f:
        json.dump(cams, f)
    with open(os.path.join(sdir, "scene_gt.json"), "w") as f:
        json.dump(gts, f)


def generate_dataset(root: str, obj_ids=(1, 2, 3), n_refs: int = 64, n_tests: int = 30, seed: int = 0,
                     ref_split: str = "train", test_split: str = "test", distance: float = 0.5,
                     n_multi: int = 0, multi_split: str = "test_multi") -> str:
    """Write a small BOP dataset of the built-in objects; returns root. n_multi > 0 adds a split
    of images that each show all of obj_ids together."""
    models_info = {}
    for obj_id in obj_ids:
        if obj_id not in OBJECTS:
            raise InputError(f"unknown built-in object id {obj_id} (have {sorted(OBJECTS)})")
        rng = np.random.default_rng(seed * 1000 + obj_id)
        mesh = OBJECTS[obj_id][1]()
        write_model(root, obj_id, mesh, models_info)
        write_split(root, ref_split, obj_id, mesh, reference_poses(n_refs, distance, rng), rng, fixed_light=True)
        write_split(root, test_split, obj_id, mesh, query_poses(n_tests, distance, rng), rng)
    with open(os.path.join(root, "models", "models_info.json"), "w") as f:
        json.dump(models_info, f, indent=1)
    if n_multi > 0:
        write_multi_split(root, multi_split, obj_ids, n_multi, np.random.default_rng(seed * 1000 + 999), distance)
    return root


def render_sequence(mesh: trimesh.Trimesh, poses, K=DEFAULT_K, seed: int = 0):
    """Frames of a moving object over one fixed cluttered background (a tracking sequence)."""
    rng = np.random.default_rng(seed)
    bg = random_background(rng)
    renderer = MeshRenderer(mesh)
    frames = []
    try:
        light_rng = np.random.default_rng(seed + 1)
        for T in poses:
            color, depth = renderer.render(T, K, np.random.default_rng(light_rng.integers(1 << 31)), fixed_light=True)
            mask = depth > 0
            frames.append((np.where(mask[..., None], color, bg), mask))
    finally:
        renderer.close()
    return frames
