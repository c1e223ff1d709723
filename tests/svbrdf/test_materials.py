"""tasks.svbrdf.materials: the gk/fantasy real test set (skipped when it cannot be fetched) and map-folder reading."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.svbrdf import materials as M


@pytest.fixture(scope="session")
def gk_root() -> Path:
    """The cached cube2-data folder (fetched once, about 173 MB download); skip when unobtainable."""
    try:
        return M.ensure_gk_fantasy()
    except Exception as e:  # no network, no apt-get, ...
        pytest.skip(f"gk/fantasy data unavailable: {e}")


@pytest.fixture(scope="session")
def gk_materials(gk_root: Path) -> list[M.MaterialFiles]:
    return M.find_materials(gk_root / M.GK_SUBDIR)


def _check_ranges(x: torch.Tensor, size: int) -> None:
    assert x.shape == (9, size, size) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x[0:6].min() >= 0 and x[0:6].max() <= 1
    assert x[6].min() >= 0.02 and x[6].max() <= 1
    assert x[7:9].min() >= -1 and x[7:9].max() <= 1


# ------------------------------------------------------------------------------------------------ gk test set


def test_gk_materials_found(gk_materials):
    names = [m.name for m in gk_materials]
    assert len(names) > 10 and names == sorted(names)
    for m in gk_materials:
        assert m.normal is not None and m.specular is not None and m.height is not None
        assert m.gk_specular and m.green_up is False
        assert "_cc_c" not in m.color.name and m.color.suffix in (".jpg", ".png")


def test_every_gk_material_loads_in_range(gk_materials):
    nz_means = []
    for m in gk_materials:
        x = M.load_material(m, 48, "center")
        _check_ranges(x, 48)
        assert x[0:3].std() > 0.01, f"{m.name}: flat colour"
        nz = 1 / torch.sqrt(1 + x[7] ** 2 + x[8] ** 2)
        assert nz.mean() > 0.75, f"{m.name}: normals not mostly facing up ({nz.mean():.2f})"
        nz_means.append(nz.mean())
    assert torch.stack(nz_means).mean() > 0.8


def test_gk_green_convention_matches_height(gk_materials):
    """Decoded normals must agree with the height maps' gradients; the opposite green reading must not."""
    agree = 0
    for m in gk_materials[:4]:
        cx, cy = M.height_normal_correlation(m)
        _, cy_flipped = M.height_normal_correlation(m, green_up=not m.green_up)
        assert cy_flipped < 0
        agree += cx > 0.3 and cy > 0.3
    assert agree >= 2


def test_real_set_deterministic(gk_root, gk_materials):
    x, names = M.real_set(32, 2, seed=0, root=gk_root.parent)
    assert x.shape == (2 * len(gk_materials), 9, 32, 32) and len(names) == x.shape[0]
    assert names[:2] == [f"{gk_materials[0].name}/crop0", f"{gk_materials[0].name}/crop1"]
    for i in range(x.shape[0]):
        _check_ranges(x[i], 32)
    k = 3
    again = M.material_crops(gk_materials[k], 32, 2, seed=0, index=k)
    assert torch.equal(torch.stack(again), x[2 * k:2 * k + 2])
    other = M.material_crops(gk_materials[k], 32, 2, seed=1, index=k)
    assert torch.equal(other[0], x[2 * k])  # the centre crop does not depend on the seed
    assert not torch.equal(other[1], x[2 * k + 1])


# ---------------------------------------------------------------------------------------- user map folders


def _save(path: Path, rgb, size: int = 16) -> None:
    a = np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (size, size, 3))
    Image.fromarray(np.ascontiguousarray(a)).save(path)


def _encode_normal(n) -> list[int]:
    """OpenGL-style normal-map RGB of a unit normal."""
    return [int(round((c + 1) / 2 * 255)) for c in n]


N_TILT = (0.3, 0.2, math.sqrt(1 - 0.13))


def test_common_names(tmp_path):
    bricks = tmp_path / "bricks"
    bricks.mkdir()
    _save(bricks / "basecolor.png", (128, 64, 32))
    _save(bricks / "normal.png", _encode_normal(N_TILT), 8)
    _save(bricks / "roughness.png", (178, 178, 178), 32)
    wood = tmp_path / "wood"
    wood.mkdir()
    _save(wood / "Wood_Albedo_2K.JPG", (200, 200, 200))
    _save(wood / "Wood-Gloss.png", (204, 204, 204))
    _save(wood / "Wood_NormalDX.png", _encode_normal(N_TILT))
    _save(wood / "Wood_Specular.tga", (60, 60, 60))
    (tmp_path / "notes").mkdir()  # no images: not a material

    mats = M.find_materials(tmp_path)
    assert [m.name for m in mats] == ["bricks", "wood"]
    b, w = mats
    assert b.green_up and not w.green_up and not b.gk_specular and w.specular.name == "Wood_Specular.tga"
    assert w.gloss is not None and w.roughness is None

    xb = M.load_material(b, 8)
    _check_ranges(xb, 8)
    assert torch.allclose(xb[0:3, 0, 0], torch.tensor([128, 64, 32]) / 255, atol=1e-4)
    assert torch.allclose(xb[3:6], torch.full_like(xb[3:6], 0.04 ** (1 / 2.2)), atol=1e-4)  # no specular map
    assert torch.allclose(xb[6], torch.full_like(xb[6], 178 / 255), atol=1e-3)
    expect = torch.tensor([N_TILT[0] / N_TILT[2], N_TILT[1] / N_TILT[2]])
    assert torch.allclose(xb[7:9, 3, 3], expect, atol=0.02)  # green up -> ny > 0

    xw = M.load_material(w, 8)
    _check_ranges(xw, 8)
    assert torch.allclose(xw[6], torch.full_like(xw[6], 1 - 204 / 255), atol=1e-3)  # gloss inverted
    assert torch.allclose(xw[3:6], torch.full_like(xw[3:6], 60 / 255), atol=1e-3)  # specular = F0 as stored
    assert torch.allclose(xw[7:9, 3, 3], expect * torch.tensor([1.0, -1.0]), atol=0.02)  # DirectX green
    assert torch.allclose(M.load_material(w, 8, green_up=True)[7:9, 3, 3], expect, atol=0.02)


def test_gk_names_and_working_resolution(tmp_path):
    mat = tmp_path / "stone_gk"
    mat.mkdir()
    _save(mat / "stone_gk_cc.jpg", (100, 110, 120), 64)
    _save(mat / "stone_gk_cc_c.jpg", (0, 0, 0), 64)  # composite copy: ignored
    _save(mat / "stone_gk_nm.png", (128, 128, 255), 32)
    _save(mat / "stone_gk_sc.png", (255, 255, 255), 16)
    _save(mat / "stone_gk_hm.jpg", (128, 128, 128), 32)
    (m,) = M.find_materials(tmp_path)
    assert m.color.name == "stone_gk_cc.jpg" and m.gk_specular and not m.green_up
    x = M.load_material(m, 24, (4, 4, 8))  # working resolution 16 (the specular map's)
    _check_ranges(x, 24)
    assert torch.allclose(x[3:6], torch.full_like(x[3:6], 0.6), atol=1e-4)  # F0 = 0.1 + 0.5 s
    assert torch.allclose(x[6], torch.full_like(x[6], 0.2), atol=1e-4)  # roughness = 0.9 - 0.7 s
    assert x[7:9].abs().max() < 0.01
    with pytest.raises(ValueError, match="16x16"):
        M.load_material(m, 24, (10, 10, 8))


def test_sixteen_bit_roughness(tmp_path):
    mat = tmp_path / "m"
    mat.mkdir()
    _save(mat / "color.png", (10, 20, 30))
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(mat / "m_rough.png")
    (m,) = M.find_materials(tmp_path)
    assert torch.allclose(M.load_material(m, 4)[6], torch.full((4, 4), 0.5), atol=1e-3)


def test_a_subfolder_without_a_colour_map_is_listed_and_skipped(tmp_path, capsys):
    (tmp_path / "good").mkdir()
    _save(tmp_path / "good" / "albedo.png", (1, 2, 3))
    (tmp_path / "broken").mkdir()
    _save(tmp_path / "broken" / "normal.png", (128, 128, 255))
    assert [m.name for m in M.find_materials(tmp_path)] == ["good"]
    assert "skipped 1 subfolder(s) that are not materials: broken (no colour map among normal.png)" in \
        capsys.readouterr().err
    with pytest.raises(ValueError, match="no colour map"):
        M.material_files(tmp_path / "broken")


def test_folder_without_materials(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no material subfolder.*basecolor"):
        M.find_materials(tmp_path)


# --------------------------------------------------------------------------------------------- fetching


def _tiny_deb(tmp_path: Path) -> Path:
    """A cube2-data look-alike .deb: one gk material plus files that must not be kept."""
    root = tmp_path / "debroot"
    mat = root / "usr/share/games/cube2/packages/gk/fantasy/foo_gk_v01"
    mat.mkdir(parents=True)
    for suffix in ("cc.jpg", "nm.png", "sc.jpg", "hm.jpg", "cc_c.jpg"):
        _save(mat / f"foo_gk_v01_{suffix}", (128, 128, 255))
    (mat / "foo_gk_v01_cc.dds").write_bytes(b"dds")
    (mat / "package.cfg").write_text("setshader bumpspecmapparallaxworld\n")
    sky = root / "usr/share/games/cube2/packages/gk/fantasy/skyfantasy"
    sky.mkdir()
    _save(sky / "skyfantasy_bk.png", (0, 0, 255))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text("Package: cube2-data\nVersion: 1.3-1\nArchitecture: all\n"
                                         "Maintainer: test <t@t>\nDescription: test\n")
    deb = tmp_path / "cube2-data_1.3-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_with_fake_apt_get(tmp_path, monkeypatch, capsys):
    deb = _tiny_deb(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\ncp '{deb}' .\n")
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(M, "SYSTEM_GK", tmp_path / "not-installed")
    monkeypatch.setenv("FBSOLVE_DATA", str(tmp_path / "cache"))
    got = M.ensure_gk_fantasy()
    assert got == tmp_path / "cache" / "cube2-data"
    assert "downloading cube2-data" in capsys.readouterr().err
    kept = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    assert kept == [f"gk/fantasy/foo_gk_v01/foo_gk_v01_{s}" for s in ("cc.jpg", "hm.jpg", "nm.png", "sc.jpg")]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["cube2-data"]  # no temp folder left
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 1\n")  # cached now: apt-get is not called again
    assert M.ensure_gk_fantasy() == got


def test_fetch_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "SYSTEM_GK", tmp_path / "not-installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package cube2-data' >&2\nexit 100\n")
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=r"apt-get download cube2-data failed: E: Unable to locate.*FBSOLVE_DATA"):
        M.ensure_gk_fantasy(tmp_path / "cache")
    monkeypatch.setattr(M.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get not found.*cube2-data"):
        M.ensure_gk_fantasy(tmp_path / "cache")
    assert not (tmp_path / "cache" / "cube2-data").exists()
