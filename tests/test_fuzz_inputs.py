"""Fuzz every reader behind `fbsolve solve` and `fbsolve bench --meshes/--materials/--bvh` (hypothesis).

The contract: a user's file is either read, or refused with an error the CLI prints as one line naming the file
(one of cli.USER_ERRORS, exit code 2); never another exception, which would be a traceback. Case counts per reader
are the `max_examples` below (the closing note of issue 27 sums them).
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from feedback_solver.checkpoints import load_state, read_model
from feedback_solver.cli import USER_ERRORS, message
from feedback_solver.render.mesh import load_mesh, mesh_folder
from tasks.ik.skeleton import load_bvh
from tasks.illumination.task import read_image
from tasks.pose.task import read_silhouette
from tasks.svbrdf import materials
from tasks.svbrdf.photos import read_photo


def fuzz(examples: int) -> settings:
    """Hypothesis settings of a reader's fuzz test: derandomized, so CI tries the same cases on every run."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SHIPPED = Path(__file__).resolve().parents[1] / "tasks"
SMALLEST_CHECKPOINT = SHIPPED / "ik" / "checkpoints" / "regression.safetensors"


def read_or_refuse(read, path: Path, *args) -> bool:
    """Call a reader on a user's file: True if it read it, False if it refused it the way the CLI reports."""
    try:
        read(path, *args)
        return True
    except USER_ERRORS as err:
        text = message(err)
        assert "\n" not in text and text.strip(), f"{type(err).__name__} without a one-line message"
        assert path.name in text or str(path) in text, f"the error does not name the file: {text}"
        return False


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


# --- images: photos, silhouettes, shaded images ------------------------------------------------------------------
SAVEABLE = {"1": "PNG", "L": "PNG", "LA": "PNG", "P": "PNG", "RGB": "PNG", "RGBA": "PNG", "I": "TIFF",
            "I;16": "PNG", "F": "TIFF", "CMYK": "TIFF", "YCbCr": "JPEG", "LAB": "TIFF", "I;16B": "TIFF",
            "PA": "TIFF", "RGBX": "TIFF"}
READERS = {"silhouette": lambda p: read_silhouette(p, 128), "illumination": lambda p: read_image(p, 128),
           "photo": lambda p: read_photo(p, 64)}


def image_bytes(mode: str, w: int, h: int, seed: int, fill: str) -> bytes:
    """An image of a PIL mode and size: noise, all zero or all full, in a format that stores that mode."""
    rng = np.random.default_rng(seed)
    rgb = {"noise": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "zero": np.zeros((h, w, 3), np.uint8),
           "full": np.full((h, w, 3), 255, np.uint8)}[fill]
    deep = {"I": np.int32, "I;16": np.uint16, "I;16B": ">u2", "F": np.float32}
    if mode in deep:
        img = Image.fromarray(rgb[..., 0].astype(deep[mode]) * 200)
    else:
        img = Image.fromarray(rgb, "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, SAVEABLE[mode])
    return buf.getvalue()


@fuzz(60)
@given(mode=st.sampled_from(sorted(SAVEABLE)), w=st.sampled_from([1, 2, 17, 64, 128, 129]),
       h=st.sampled_from([1, 3, 64, 128]), seed=st.integers(0, 99), fill=st.sampled_from(["noise", "zero", "full"]),
       reader=st.sampled_from(sorted(READERS)))
def test_images_of_every_mode_and_size_are_read_or_refused(tmp_path_factory, mode, w, h, seed, fill, reader):
    tmp = tmp_path_factory.mktemp("img")
    try:
        data = image_bytes(mode, w, h, seed, fill)
    except (OSError, ValueError, KeyError):
        return  # PIL cannot write this mode in that format: not a file a user can have either
    read_or_refuse(READERS[reader], write(tmp, f"in.{SAVEABLE[mode].lower()}", data))


@fuzz(40)
@given(data=st.binary(max_size=512), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ""]),
       reader=st.sampled_from(sorted(READERS)))
def test_random_bytes_as_an_image_are_refused(tmp_path_factory, data, suffix, reader):
    tmp = tmp_path_factory.mktemp("junk")
    assert not read_or_refuse(READERS[reader], write(tmp, f"in{suffix}", data))


@fuzz(40)
@given(cut=st.floats(0.0, 0.999), reader=st.sampled_from(sorted(READERS)), fmt=st.sampled_from(["PNG", "JPEG"]))
def test_truncated_images_are_read_or_refused(tmp_path_factory, cut, reader, fmt):
    tmp = tmp_path_factory.mktemp("cut")
    rgb = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    data = buf.getvalue()
    read_or_refuse(READERS[reader], write(tmp, f"in.{fmt.lower()}", data[: int(cut * len(data))]))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb): refused before decoding."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_huge_and_empty_images_are_refused_by_name(tmp_path, reader):
    assert not read_or_refuse(READERS[reader], write(tmp_path, "bomb.png", png_claiming(60_000, 60_000)))
    assert not read_or_refuse(READERS[reader], write(tmp_path, "empty.png", b""))
    assert not read_or_refuse(READERS[reader], tmp_path / "missing.png")


def test_masks_with_no_or_every_pixel_set_and_a_large_photo(tmp_path):
    for fill in ("zero", "full"):
        path = write(tmp_path, f"{fill}.png", image_bytes("L", 128, 128, 0, fill))
        with pytest.raises(ValueError, match=f"{fill}.png is (empty|all foreground)"):
            read_silhouette(path, 128)
    big = write(tmp_path, "big.jpg", image_bytes("RGB", 2500, 1800, 0, "noise"))
    assert read_photo(big, 64).shape == (1, 3, 64, 64)


def test_photos_with_transparency_are_refused_and_opaque_alpha_is_read(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (80, 80, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    assert read_photo(tmp_path / "opaque.png", 64).shape == (1, 3, 64, 64)
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    with pytest.raises(ValueError, match="cutout.png has transparent pixels"):
        read_photo(tmp_path / "cutout.png", 64)


# --- meshes --------------------------------------------------------------------------------------------------
finite = st.floats(-1e3, 1e3, allow_nan=False)
coord = st.one_of(finite, finite, finite, st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0]))


@fuzz(60)
@given(vertices=st.lists(st.tuples(coord, coord, coord), max_size=8),
       faces=st.lists(st.tuples(*[st.integers(-2, 9)] * 3), max_size=8))
def test_obj_files_of_any_vertices_and_faces_are_read_or_refused(tmp_path_factory, vertices, faces):
    text = "".join(f"v {x} {y} {z}\n" for x, y, z in vertices) + "".join(f"f {a} {b} {c}\n" for a, b, c in faces)
    path = write(tmp_path_factory.mktemp("obj"), "m.obj", text.encode())
    if read_or_refuse(load_mesh, path):
        mesh = load_mesh(path)
        assert np.isfinite(mesh.vertices).all() and mesh.area > 0 and len(mesh.faces) > 0


@fuzz(40)
@given(data=st.binary(max_size=1024), suffix=st.sampled_from([".obj", ".stl", ".ply", ".glb", ".off", ".gltf"]))
def test_random_bytes_as_a_mesh_are_read_or_refused(tmp_path_factory, data, suffix):
    read_or_refuse(load_mesh, write(tmp_path_factory.mktemp("junk"), f"m{suffix}", data))


@pytest.fixture(scope="module")
def mesh_files(tmp_path_factory):
    """A real mesh (pybullet_data's duck) exported in every binary format the reader takes."""
    from feedback_solver.render import objects

    tmp = tmp_path_factory.mktemp("meshes")
    mesh = trimesh.load(objects.resolve("duck.obj"), force="mesh")
    return {s: mesh.export(file_type=s[1:]) for s in (".stl", ".ply", ".glb", ".off", ".obj")}, tmp


@fuzz(40)
@given(suffix=st.sampled_from([".stl", ".ply", ".glb", ".off", ".obj"]), cut=st.floats(0.0, 0.999))
def test_truncated_meshes_are_read_or_refused(mesh_files, suffix, cut):
    files, tmp = mesh_files
    data = files[suffix] if isinstance(files[suffix], bytes) else files[suffix].encode()
    read_or_refuse(load_mesh, write(tmp, f"cut{suffix}", data[: int(cut * len(data))]))


@pytest.mark.parametrize("text, why", [
    ("", "no faces"), ("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "no surface"),
    ("v 0 0 0\nv 0 0 0\nv 0 0 0\nf 1 2 3\n", "degenerate"), ("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite"),
    ("v 0 0 inf\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite")])
def test_meshes_without_a_surface_are_refused_by_name(tmp_path, text, why):
    path = write(tmp_path, "bad.obj", text.encode())
    with pytest.raises(ValueError, match=f"bad.obj .*{why}"):
        load_mesh(path)


def test_a_mesh_folder_lists_what_it_skipped_and_goes_on(tmp_path, capsys, mesh_files):
    files, _ = mesh_files
    (tmp_path / "duck.stl").write_bytes(files[".stl"])
    (tmp_path / "notes.txt").write_text("not a mesh")
    (tmp_path / "broken.obj").write_text("v 0 0 0\n")
    (tmp_path / "sub").mkdir()
    found = mesh_folder(tmp_path, load_mesh)
    assert [Path(f).name for f in found] == ["duck.stl"]
    err = capsys.readouterr().err
    assert "skipped 3" in err and "notes.txt" in err and "broken.obj (has no faces" in err and "sub (a folder)" in err
    for name in ("duck.stl",):
        (tmp_path / name).unlink()
    with pytest.raises(ValueError, match="no usable mesh file"):
        mesh_folder(tmp_path, load_mesh)


# --- BVH clips -----------------------------------------------------------------------------------------------
BVH = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Spine
  {
    OFFSET 0 1 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    JOINT Head
    {
      OFFSET 0 1 0
      CHANNELS 3 Zrotation Yrotation Xrotation
      End Site
      {
        OFFSET 0 0.5 0
      }
    }
  }
}
MOTION
Frames: 3
Frame Time: 0.0083333
0 0 0 0 0 0 10 0 0 0 5 0
0 0 0 1 0 0 11 0 0 0 6 0
0 0 0 2 0 0 12 0 0 0 7 0
"""


def test_the_fuzzed_bvh_reads_and_a_trailing_extra_row_is_tolerated(tmp_path):
    assert load_bvh(write(tmp_path, "ok.bvh", BVH.encode())).rotations.shape == (3, 3, 3, 3)
    extra = BVH + "0 0 0 3 0 0 13 0 0 0 8 0\n"
    with pytest.warns(UserWarning, match="one row more than 'Frames: 3'; the last row is ignored"):
        clip = load_bvh(write(tmp_path, "extra.bvh", extra.encode()))
    assert clip.rotations.shape[0] == 3
    two_more = extra + "0 0 0 3 0 0 13 0 0 0 8 0\n"
    with pytest.raises(ValueError, match="more.bvh: not a BVH file: motion has 5 rows, but 'Frames:' says 3"):
        load_bvh(write(tmp_path, "more.bvh", two_more.encode()))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_motion_is_refused_with_its_row(tmp_path, value):
    bad = BVH.replace("0 0 0 1 0 0 11", f"0 0 0 {value} 0 0 11")
    with pytest.raises(ValueError, match="bad.bvh: not a BVH file: motion row 2 holds NaN or infinite values"):
        load_bvh(write(tmp_path, "bad.bvh", bad.encode()))


@fuzz(60)
@given(cut=st.integers(0, BVH.count("\n")), keep_partial=st.booleans())
def test_bvh_cut_at_any_line_is_read_or_refused(tmp_path_factory, cut, keep_partial):
    lines = BVH.split("\n")
    text = "\n".join(lines[:cut]) + ("\n" + lines[cut][: len(lines[cut]) // 2] if keep_partial else "")
    path = write(tmp_path_factory.mktemp("bvh"), "cut.bvh", text.encode())
    if read_or_refuse(load_bvh, path):
        assert load_bvh(path).rotations.shape[0] == 3  # only the whole file (its last line is empty) reads


@fuzz(60)
@given(line=st.integers(0, BVH.count("\n") - 1), edit=st.sampled_from(["drop token", "add token", "channels",
                                                                         "junk", "duplicate"]),
       n=st.integers(0, 9), junk=st.text(max_size=8))
def test_mutated_bvh_is_read_or_refused(tmp_path_factory, line, edit, n, junk):
    lines = BVH.split("\n")
    tok = lines[line].split()
    if edit == "drop token" and tok:
        tok = tok[:-1]
    elif edit == "add token":
        tok = [*tok, str(n)]
    elif edit == "channels":
        lines = [ln.replace("CHANNELS 3", f"CHANNELS {n}") if i == line or "CHANNELS 3" not in ln else ln
                 for i, ln in enumerate(lines)]
        tok = lines[line].split()
    elif edit == "junk":
        tok = [*tok, junk]
    else:
        lines.insert(line, lines[line])
    lines[line] = " ".join(tok)
    read_or_refuse(load_bvh, write(tmp_path_factory.mktemp("bvh"), "m.bvh", "\n".join(lines).encode()))


@fuzz(30)
@given(data=st.binary(max_size=512))
def test_random_bytes_as_a_bvh_are_refused(tmp_path_factory, data):
    assert not read_or_refuse(load_bvh, write(tmp_path_factory.mktemp("bvh"), "junk.bvh", data))


# --- checkpoints and training states ---------------------------------------------------------------------------
def test_every_shipped_checkpoint_is_sealed_and_verifies():
    shipped = sorted(SHIPPED.glob("*/checkpoints/**/*.safetensors"))
    assert len(shipped) >= 14, "shipped checkpoints are missing"
    for path in shipped:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            assert "sha256" in f.metadata(), f"{path} carries no seal"
        read_model(path, path.parts[path.parts.index("tasks") + 1])


@fuzz(40)
@given(position=st.floats(0.0, 0.999999), bit=st.integers(0, 7))
def test_a_flipped_bit_anywhere_in_a_shipped_checkpoints_copy_is_refused(tmp_path_factory, position, bit):
    data = bytearray(SMALLEST_CHECKPOINT.read_bytes())
    at = int(position * len(data))
    data[at] ^= 1 << bit
    path = write(tmp_path_factory.mktemp("flip"), "flipped.safetensors", bytes(data))
    assert not read_or_refuse(read_model, path, "ik"), f"a flipped bit at byte {at} went unnoticed"


@pytest.mark.parametrize("region", ["header", "tensors", "end"])
def test_a_flipped_byte_in_each_region_is_refused_naming_the_file(tmp_path, region):
    data = bytearray(SMALLEST_CHECKPOINT.read_bytes())
    header_len = struct.unpack("<Q", bytes(data[:8]))[0]
    at = {"header": 8 + header_len // 2, "tensors": 8 + header_len + 100, "end": len(data) - 1}[region]
    data[at] ^= 0x10
    path = write(tmp_path, "flipped.safetensors", bytes(data))
    with pytest.raises(ValueError, match="flipped.safetensors"):
        read_model(path, "ik")


@fuzz(30)
@given(data=st.binary(max_size=1024), cut=st.floats(0.0, 0.999))
def test_random_or_truncated_checkpoints_and_states_are_refused(tmp_path_factory, data, cut):
    tmp = tmp_path_factory.mktemp("ckpt")
    assert not read_or_refuse(read_model, write(tmp, "junk.safetensors", data), "ik")
    real = SMALLEST_CHECKPOINT.read_bytes()
    assert not read_or_refuse(read_model, write(tmp, "cut.safetensors", real[: int(cut * len(real))]), "ik")
    assert not read_or_refuse(load_state, write(tmp, "junk.state.pt", data))
    assert not read_or_refuse(load_state, write(tmp, "cut.state.pt", STATE[: int(cut * len(STATE))]))


def state_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.ones(64)}, "phase": 0}, buf)
    return buf.getvalue()


STATE = state_bytes()


# --- material folders ----------------------------------------------------------------------------------------
@fuzz(30)
@given(colour=st.one_of(st.binary(max_size=256), st.sampled_from(["png", "cut png", "grey16"])),
       others=st.lists(st.sampled_from(["notes", "normal only", "empty dir"]), max_size=3))
def test_material_folders_are_read_or_refused_and_list_what_they_skip(tmp_path_factory, colour, others):
    root = tmp_path_factory.mktemp("mats")
    mat = root / "stone"
    mat.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(buf, "PNG")
    data = {"png": buf.getvalue(), "cut png": buf.getvalue()[:40]}.get(colour) if isinstance(colour, str) else colour
    if colour == "grey16":
        Image.fromarray(np.full((32, 32), 30000, np.uint16)).save(mat / "albedo.png")
    else:
        (mat / "albedo.png").write_bytes(data)
    for k, kind in enumerate(others):
        d = root / f"other{k}"
        d.mkdir()
        if kind == "notes":
            (d / "readme.txt").write_text("x")
        elif kind == "normal only":
            Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(d / "normal.png")

    def read(folder: Path) -> None:
        for files in materials.find_materials(folder):
            materials.load_material(files, 16)

    try:
        read(root)
    except USER_ERRORS as err:
        text = message(err)
        assert "\n" not in text and ("albedo.png" in text or str(root) in text), text


def test_a_checkpoint_written_before_seals_loads_with_a_warning(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(SMALLEST_CHECKPOINT), "pt") as f:
        header = {k: v for k, v in f.metadata().items() if k != "sha256"}
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(SMALLEST_CHECKPOINT)), str(old), metadata=header)
    with pytest.warns(UserWarning, match="old.safetensors carries no SHA-256"):
        read_model(old, "ik")
