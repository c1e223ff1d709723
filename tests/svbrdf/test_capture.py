"""Issue 31: the closed-form gradient, the photo's exposure as an unknown, the capture conditions, the faster solve."""
from __future__ import annotations

import pytest
import torch

from feedback_solver.config import load_config
from feedback_solver.feedback import energy_gradient
from tasks.svbrdf import capture, render
from tasks.svbrdf.task import SVBRDFTask


class Autograd(SVBRDFTask):
    """The task with its closed-form gradient switched off: the core's autograd pass."""

    def energy_gradient(self, x, y_obs, ctx):
        return None


@pytest.fixture(scope="module")
def task() -> SVBRDFTask:
    return SVBRDFTask(load_config(SVBRDFTask, ["task.size=64"]))


def test_the_closed_form_gradient_is_autograds_to_1e_5(task):
    """Maps inside and on their bounds (where the retraction's projection halves the gradient), nominal and per-photo
    exposures, a photo that clips: the task's hook against autograd through the same retraction."""
    batch = task.sample(4, "test", 0)
    torch.manual_seed(0)
    x = task.space.project(batch.x + 0.3 * torch.randn_like(batch.x))
    assert ((x == 0) | (x == 1)).any()  # some maps sit on a bound
    slow = Autograd(task.cfg)
    for ctx in (batch.ctx, batch.ctx | {"exposure": torch.tensor([1.0, 0.5, 2.0, 4.0])}):
        g, y, _ = energy_gradient(task, x, batch.y, ctx)
        g_ref, y_ref, _ = energy_gradient(slow, x, batch.y, ctx)
        scale = float(g_ref.abs().max())
        assert scale > 0 and float((g - g_ref).abs().max()) <= 1e-5 * scale
        assert torch.allclose(y, y_ref, atol=1e-6)


def test_exposure_estimation_recovers_a_known_scale_within_5_percent(task):
    """The same fixed material photographed at 0.5x and 2x the flash: the estimate scales with it."""
    x = task.sample(3, "test", 5).x
    nominal = capture.estimate_exposure(render.flash_photo(x))
    for scale in (0.5, 2.0):
        photo = render.to_photo(render.flash_shade(x, render.FLASH_INTENSITY * scale))
        ratio = capture.estimate_exposure(photo) / nominal
        assert torch.allclose(ratio, torch.full_like(ratio, scale), rtol=0.05), ratio


def test_the_reference_exposure_is_the_training_photos(task):
    """REFERENCE is what its own command computes (512 photos: about 10 s)."""
    assert capture.reference() == pytest.approx(capture.REFERENCE, abs=5e-5)


def test_every_capture_condition_is_seeded_and_changes_the_photo_its_own_way():
    x = SVBRDFTask(load_config(SVBRDFTask, ["task.size=64"])).sample(2, "test", 1).x
    nominal, e = capture.degrade(x, "nominal", 0)
    assert torch.equal(nominal, render.flash_photo(x)) and torch.equal(e, torch.ones(2))
    for name in capture.CONDITIONS[1:]:
        y, e = capture.degrade(x, name, 0)
        again, _ = capture.degrade(x, name, 0)
        assert torch.equal(y, again), name
        assert y.shape == nominal.shape and 0 <= float(y.min()) and float(y.max()) <= 1
        assert float((y - nominal).abs().mean()) > 1e-3, name
        assert float(e[0]) == {"exposure_0.5": 0.5, "exposure_2": 2.0}.get(name, 1.0)
    centre = capture.vignette(64, 64)
    assert float(centre.max()) <= 1 and float(centre.min()) == pytest.approx(0.55, abs=0.02)
    with pytest.raises(ValueError, match="task.capture must be one of"):
        capture.degrade(x, "fisheye", 0)


def test_the_answer_at_its_estimated_exposure_is_compared_with_the_truth():
    """A twice-exposed photo of the truth, 'solved' by maps half as bright: at the estimated exposure over the true
    one they render as the truth does; the truth itself at the wrong exposure does not."""
    task = SVBRDFTask(load_config(SVBRDFTask, ["task.size=64", "task.exposure=estimate", "task.capture=exposure_2"]))
    batch = task.sample(2, "test", 0)
    assert torch.equal(batch.ctx["exposure_true"], torch.full((2,), 2.0))
    rel = task.relative_exposure(batch.ctx)
    assert rel is not None and torch.all(rel > 0)
    zero = task.render_metrics(batch.x, batch.x, lpips=False, ctx={"exposure": torch.ones(2),
                                                                   "exposure_true": torch.ones(2)})
    assert float(zero["render_rmse"].max()) == 0
    off = task.render_metrics(batch.x, batch.x, lpips=False, ctx={"exposure": torch.full((2,), 2.0)})
    assert float(off["render_rmse"].min()) > 0.01


def test_an_estimated_exposure_solves_a_dark_photo_like_a_nominal_one(task):
    """The exposure-invariant solve: the same material at 0.5x gives nearly the same maps as at 1x."""
    from feedback_solver.solver import FeedbackSolver

    est = SVBRDFTask(load_config(SVBRDFTask, ["task.size=64", "task.exposure=estimate"]))
    x = est.sample(2, "test", 0).x
    solver = FeedbackSolver.from_checkpoint(est)
    answers = []
    for scale in (1.0, 0.5):
        y = render.to_photo(render.flash_shade(x, render.FLASH_INTENSITY * scale))
        answers.append(solver.solve(y, est.calibrate(y, {})).x)
    assert float((answers[0] - answers[1]).abs().mean()) < 0.01


def write_photo(path, y: torch.Tensor):
    import numpy as np
    from PIL import Image

    Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def test_solve_says_the_estimated_exposure_and_warns_on_photos_unlike_a_flash_photo(tmp_path, capsys):
    import argparse
    import warnings

    task = SVBRDFTask(load_config(SVBRDFTask, ["task.size=64"]))
    x = task.sample(1, "test", 2).x
    dark = write_photo(tmp_path / "dark.png", render.to_photo(render.flash_shade(x, render.FLASH_INTENSITY / 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a flash photo at half the exposure: no warning
        batch = task.load_observation(argparse.Namespace(image=str(dark)))
    said = capsys.readouterr().out
    assert "estimated exposure:" in said and float(said.split("estimated exposure: ")[1].split("x")[0]) > 0
    assert float(batch.ctx["exposure"][0]) == pytest.approx(float(capture.estimate_exposure(batch.y)[0]))
    side = render.shade(x, torch.tensor([[[1.6, 0.0, render.CAMERA_HEIGHT]]]), render.camera_position(1))[:, 0]
    lamps = torch.tensor([[[3.0, 0, 2.4], [-3.0, 0, 2.4], [0, 3.0, 2.4], [0, -3.0, 2.4]]])
    ambient = 2 * render.shade(x, lamps, render.camera_position(1).expand(1, 4, 3)).mean(1)
    for name, rad, message in (("side.png", side, "from the centre"), ("lamps.png", ambient, "flash photo")):
        path = write_photo(tmp_path / name, render.to_photo(rad))
        with pytest.warns(UserWarning, match=message):
            task.load_observation(argparse.Namespace(image=str(path)))
