"""Binary glTF 2.0 (GLB) writer: one mesh, one metallic-roughness PBR material, embedded PNG textures.

Written from the glTF 2.0 specification (Khronos, https://registry.khronos.org/glTF/specs/2.0/glTF-2.0.html) with
``json`` and ``struct``; checked by the Khronos glTF validator and read back by trimesh and pygltflib in
tests/test_export_mesh.py. Layout:

* GLB header (magic ``glTF``, version 2, total length), a JSON chunk padded with spaces and a BIN chunk padded with
  zeros, both to 4 bytes.
* One buffer; buffer views start at multiples of 4 bytes. Vertex attributes (POSITION with min/max, NORMAL,
  TEXCOORD_0 or COLOR_0) have target ARRAY_BUFFER, the indices (unsigned int) ELEMENT_ARRAY_BUFFER, images none.
* Material: ``baseColorTexture``; the ORM image serves both ``metallicRoughnessTexture`` (G = roughness,
  B = metallic) and ``occlusionTexture`` (R), as glTF intends; optional ``normalTexture``. A mesh whose colours
  already hold the lighting (``Mesh.unlit``) also gets the ratified ``KHR_materials_unlit`` extension, listed in
  ``extensionsUsed`` but not ``extensionsRequired``: viewers that know it show the base colour as it is, the others
  fall back to the same metallic-roughness material (the extension's fallback advice: metallic 0, roughness > 0.5).
* Animation (4D representations): the vertices' displacement at N keyframes as N morph targets (POSITION
  accessors with min/max) and one animation whose sampler (LINEAR) sets the node's morph weights to the one-hot of
  keyframe k at time k·T/(N − 1), so players interpolate the displacement linearly between keyframes (glTF 2.0 §3.7.2
  morph targets, §3.11 animations).
* Axes: glTF is +Y up, +Z front, metres — the same as dreamkit's world, so no axis change. glTF's UV origin is the
  top-left of the image, so TEXCOORD_0 = (u, 1 − v) of our OpenGL-convention UVs.
"""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from .mesh import Mesh, apply_origin, vertex_normals

__all__ = ["write_glb", "glb_bytes", "encode_png"]

_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_FLOAT, _UNSIGNED_INT = 5126, 5125
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


def encode_png(image: np.ndarray) -> bytes:
    """[H, W, C] float in [0, 1] (or uint8) → PNG bytes."""
    import imageio.v3 as iio

    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    iio.imwrite(buf, image, extension=".png")
    return buf.getvalue()


def _pad4(data: bytes, fill: bytes = b"\x00") -> bytes:
    return data + fill * (-len(data) % 4)


def glb_bytes(mesh: Mesh, origin: str = "keep", double_sided: bool = False, name: str = "dreamkit",
              morph: Optional[tuple[np.ndarray, np.ndarray]] = None) -> bytes:
    """The GLB file content for ``mesh`` (textures are embedded as PNG; vertex colours are written as COLOR_0 when
    the mesh has no UVs + base-colour texture). ``origin``: see :func:`dreamkit.export.mesh.apply_origin`.
    ``morph``: (keyframe times [N] in seconds, increasing; vertex displacements [N, V, 3]) — an animated mesh."""
    if mesh.num_faces == 0:
        raise ValueError("cannot write an empty mesh")
    mesh = apply_origin(mesh, origin)
    normals = mesh.normals if mesh.normals is not None else vertex_normals(mesh.verts, mesh.faces)
    textured = mesh.uvs is not None and mesh.base_color is not None

    blob = bytearray()
    views: list[dict] = []
    accessors: list[dict] = []

    def add_view(data: bytes, target: int | None) -> int:
        blob.extend(b"\x00" * (-len(blob) % 4))  # every view starts 4-byte aligned
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        blob.extend(data)
        views.append(view)
        return len(views) - 1

    def add_accessor(array: np.ndarray, kind: str, target: Optional[int], component: int = _FLOAT,
                     with_bounds: bool = False) -> int:
        dtype = np.float32 if component == _FLOAT else np.uint32
        array = np.ascontiguousarray(array, dtype=dtype)
        acc = {"bufferView": add_view(array.tobytes(), target), "componentType": component,
               "count": int(array.shape[0]), "type": kind}
        if with_bounds:  # required for POSITION; computed from the float32 values actually written
            flat = array.reshape(array.shape[0], -1)
            acc["min"] = flat.min(0).astype(float).tolist()
            acc["max"] = flat.max(0).astype(float).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    attributes = {
        "POSITION": add_accessor(mesh.verts, "VEC3", _ARRAY_BUFFER, with_bounds=True),
        "NORMAL": add_accessor(normals, "VEC3", _ARRAY_BUFFER),
    }
    if textured:
        tex = np.stack([mesh.uvs[:, 0], 1.0 - mesh.uvs[:, 1]], -1)
        attributes["TEXCOORD_0"] = add_accessor(tex, "VEC2", _ARRAY_BUFFER)
    elif mesh.vertex_colors is not None:
        attributes["COLOR_0"] = add_accessor(np.clip(mesh.vertex_colors, 0, 1), "VEC3", _ARRAY_BUFFER)
    indices = add_accessor(mesh.faces.reshape(-1), "SCALAR", _ELEMENT_ARRAY_BUFFER, component=_UNSIGNED_INT)
    targets, animations = None, None
    if morph is not None:
        times, displacement = (np.asarray(a, dtype=np.float32) for a in morph)
        n = len(times)
        if displacement.shape != (n, mesh.num_verts, 3) or n < 1 or np.any(np.diff(times) <= 0):
            raise ValueError(f"morph needs increasing times [N] and displacements [N, {mesh.num_verts}, 3], got "
                             f"{times.shape} and {displacement.shape}")
        targets = [{"POSITION": add_accessor(d, "VEC3", _ARRAY_BUFFER, with_bounds=True)} for d in displacement]
        key_input = add_accessor(times, "SCALAR", None, with_bounds=True)
        key_output = add_accessor(np.eye(n, dtype=np.float32).reshape(-1), "SCALAR", None)
        animations = [{"name": f"{name}_motion",
                       "samplers": [{"input": key_input, "output": key_output, "interpolation": "LINEAR"}],
                       "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]}]

    images: list[dict] = []
    textures: list[dict] = []

    def add_texture(image: np.ndarray, label: str) -> int:
        images.append({"bufferView": add_view(encode_png(image), None), "mimeType": "image/png", "name": label})
        textures.append({"sampler": 0, "source": len(images) - 1})
        return len(textures) - 1

    pbr: dict = {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": float(mesh.metallic),
                 "roughnessFactor": float(mesh.roughness)}
    material: dict = {"name": f"{name}_material", "pbrMetallicRoughness": pbr, "doubleSided": bool(double_sided)}
    if mesh.unlit:
        material["extensions"] = {"KHR_materials_unlit": {}}
    if textured:
        pbr["baseColorTexture"] = {"index": add_texture(mesh.base_color, "base_color")}
        if mesh.orm is not None:
            orm = add_texture(mesh.orm, "occlusion_roughness_metallic")
            pbr["metallicRoughnessTexture"] = {"index": orm}
            material["occlusionTexture"] = {"index": orm}
        if mesh.normal_map is not None:
            material["normalTexture"] = {"index": add_texture(mesh.normal_map, "normal")}

    gltf: dict = {
        "asset": {"version": "2.0", "generator": "dreamkit"},
        "scene": 0,
        "scenes": [{"name": name, "nodes": [0]}],
        "nodes": [{"name": name, "mesh": 0}],
        "meshes": [{"name": name, "primitives": [
            {"attributes": attributes, "indices": indices, "material": 0, "mode": 4}]}],
        "materials": [material],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }
    if targets is not None:
        gltf["meshes"][0]["primitives"][0]["targets"] = targets
        gltf["meshes"][0]["weights"] = [0.0] * len(targets)
        gltf["meshes"][0]["extras"] = {"targetNames": [f"keyframe_{k}" for k in range(len(targets))]}
        gltf["animations"] = animations
    if mesh.unlit:
        gltf["extensionsUsed"] = ["KHR_materials_unlit"]
    if textures:
        gltf["samplers"] = [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR, "wrapS": _CLAMP_TO_EDGE,
                             "wrapT": _CLAMP_TO_EDGE}]
        gltf["textures"] = textures
        gltf["images"] = images

    json_chunk = _pad4(json.dumps(gltf, separators=(",", ":")).encode("utf-8"), b" ")
    bin_chunk = _pad4(bytes(blob))
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join([
        struct.pack("<4sII", b"glTF", 2, total),
        struct.pack("<I4s", len(json_chunk), b"JSON"), json_chunk,
        struct.pack("<I4s", len(bin_chunk), b"BIN\x00"), bin_chunk,
    ])


def write_glb(mesh: Mesh, path: str | Path, origin: str = "keep", double_sided: bool = False,
              morph: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Path:
    """Write ``mesh`` as a GLB file (animated with ``morph``, see :func:`glb_bytes`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = glb_bytes(mesh, origin=origin, double_sided=double_sided, name=mesh.name, morph=morph)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def check_origin(export_cfg) -> str:
    from ..errors import ConfigError

    origin = str(getattr(export_cfg, "mesh_origin", "centre")) if export_cfg is not None else "centre"
    if origin not in ("centre", "center", "base", "keep"):
        raise ConfigError(f"export.mesh_origin={origin!r} — use centre, base or keep")
    return origin


def export_glb(model, path, export_cfg=None, background=None, device="cpu", **_) -> Path:
    """Exporter ``glb``: representation → textured mesh → ``path`` (GLB), plus a preview PNG and turntable MP4
    rendered from the written file when ``export.mesh_preview`` is set."""
    origin = check_origin(export_cfg)
    from ..representations import canonical_scene
    from .bake import textured_mesh

    if getattr(model, "dynamic", False) and hasattr(model, "displacement"):
        # 4D with a deformation field: the mesh at the canonical time τ_c (0 unless the recipe says), its vertices
        # moved by the field at each keyframe
        mesh = textured_mesh(canonical_scene(model), export_cfg)
        path = write_glb(mesh, path, origin=origin, morph=animation_morph(model, mesh, export_cfg))
    elif getattr(model, "dynamic", False):
        print("this 4D field has no deformation to animate a mesh with: the GLB holds its surface at τ = 0 (the "
              "turntable MP4 shows the motion)", flush=True)
        path = write_glb(textured_mesh(canonical_scene(model), export_cfg), path, origin=origin)
    else:
        path = write_glb(textured_mesh(model, export_cfg), path, origin=origin)
    if export_cfg is None or getattr(export_cfg, "mesh_preview", True):
        from .mesh import write_preview

        write_preview(path, export_cfg, background)
    return path


def keyframe_times(export_cfg=None) -> np.ndarray:
    """[N] keyframe times τ_k = k/(N − 1) of a 4D export (``export.animation_keyframes``)."""
    n = int(getattr(export_cfg, "animation_keyframes", 16)) if export_cfg is not None else 16
    return np.linspace(0.0, 1.0, n, dtype=np.float32)


def animation_morph(model, mesh: Mesh, export_cfg=None) -> tuple[np.ndarray, np.ndarray]:
    """(keyframe times in seconds [N], displacements [N, V, 3]) of ``mesh``'s vertices under a 4D model's
    deformation field (``model.displacement``) at the keyframes."""
    import torch

    taus = keyframe_times(export_cfg)
    seconds = float(getattr(export_cfg, "animation_seconds", 2.0)) if export_cfg is not None else 2.0
    param = next(model.parameters())
    with torch.no_grad():
        verts = torch.as_tensor(mesh.verts, dtype=param.dtype, device=param.device)
        disp = torch.cat([model.displacement(verts, torch.as_tensor(taus[i:i + 4], device=param.device))
                          for i in range(0, len(taus), 4)])
    return taus * seconds, disp.cpu().numpy().astype(np.float32)


def export_mesh_files(model, path, export_cfg=None, background=None, device="cpu", **_) -> Path:
    """One extraction written as ``path`` (GLB) and the same name with ``.obj`` (+ MTL, PNGs); the preview is
    rendered from the GLB. Returns the GLB path. (Not registered: ``glb`` then ``obj`` share one extraction anyway
    through :func:`dreamkit.export.bake.textured_mesh`'s memo.)"""
    origin = check_origin(export_cfg)
    from .bake import textured_mesh
    from .obj import write_obj

    mesh = textured_mesh(model, export_cfg)
    path = write_glb(mesh, Path(path).with_suffix(".glb"), origin=origin)
    write_obj(mesh, path.with_suffix(".obj"), origin=origin)
    if export_cfg is None or getattr(export_cfg, "mesh_preview", True):
        from .mesh import write_preview

        write_preview(path, export_cfg, background)
    return path
