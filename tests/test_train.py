"""Training: it learns, every schedule runs, seeds reproduce, resume is exact, bad checkpoints are refused."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from feedback_solver import train as train_mod
from feedback_solver.checkpoints import load_state, load_weights, matching, read_model, save_model
from feedback_solver.solver import FeedbackSolver, build_solver
from feedback_solver.train import Phase, phase_loss, phase_parameters, phases, train, validate

FAST = ("train.iterations=20", "train.init_iterations=20", "train.checkpoint_every=10", "train.log_every=10",
        "train.val_samples=32")


@pytest.fixture(scope="module")
def fast_cfg(toy_cfg):
    def make(*overrides: str, variant: str | None = None):
        return toy_cfg(*FAST, *overrides, variant=variant)

    return make


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# --- learning -------------------------------------------------------------------------------------------
def test_short_training_beats_the_untrained_solver(toy_task, toy_cfg, tmp_path):
    cfg = toy_cfg("train.iterations=100")
    val = toy_task.sample(256, "val", 11)
    torch.manual_seed(cfg.seed)
    untrained = validate(build_solver(toy_task, cfg), val)
    path = train(toy_task, cfg, tmp_path / "fb.safetensors", progress=False)
    trained = validate(FeedbackSolver.from_checkpoint(toy_task, path=path), val)
    assert trained < 0.3 * untrained, (untrained, trained)
    _, stored_cfg, meta = read_model(path, "toy")
    assert meta["phases"] == ["stage0", "stage1", "stage2"] and meta["val_distance"] < 0.3 * untrained
    assert stored_cfg == cfg
    assert not (tmp_path / "fb.safetensors.state.pt").exists(), "a finished run leaves no training state behind"


# --- schedules -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,expected", [
    ((), ["stage0", "stage1", "stage2"]),
    (("solver.init=learned", "train.finetune_iterations=5"), ["init", "stage0", "stage1", "stage2", "finetune"]),
    (("train.schedule=joint", "train.supervision=deep"), ["joint"]),
    (("train.schedule=joint", "train.supervision=final", "solver.mode=shared"), ["joint"]),
    (("solver.steps=0", "solver.init=learned"), ["init"]),
], ids=["progressive", "progressive-init-finetune", "joint-deep", "joint-final-shared", "regression"])
def test_every_schedule_runs(toy_task, fast_cfg, tmp_path, overrides, expected):
    cfg = fast_cfg(*overrides)
    assert [p.name for p in phases(cfg)] == expected
    torch.manual_seed(cfg.seed)
    before = build_solver(toy_task, cfg).state_dict()
    path = train(toy_task, cfg, tmp_path / "m.safetensors", progress=False)
    tensors, _, meta = read_model(path, "toy")
    assert meta["phases"] == expected and meta["val_distance"] > 0
    assert tensors.keys() == before.keys()
    moved = [k for k in before if not torch.equal(before[k], tensors[k])]
    assert moved, "training changed no weight"
    # every net of every stage is trained by some phase
    if cfg.solver.steps:
        for k in range(len(FeedbackSolver.from_checkpoint(toy_task, path=path).stages.nets)):
            assert any(name.startswith(f"stages.nets.{k}.") for name in moved), f"stage {k} never trained"


def test_progressive_stage_phase_moves_only_its_own_net(toy_task, fast_cfg):
    cfg = fast_cfg()
    solver = build_solver(toy_task, cfg)
    batch = toy_task.sample(16, "train", 0)
    phase = Phase("stage1", 10, 1)
    assert {id(p) for p in phase_parameters(solver, phase)} == {id(p) for p in solver.stages.net(1).parameters()}
    phase_loss(solver, phase, batch, "deep").backward()
    grads = [[p.grad for p in net.parameters()] for net in solver.stages.nets]
    assert all(g is None for g in grads[0] + grads[2])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1])


def test_warm_start_copies_the_previous_stage_and_trains_from_there(toy_task, fast_cfg, tmp_path):
    solver = build_solver(toy_task, fast_cfg())
    before = [p.detach().clone() for p in solver.stages.net(0).parameters()]
    train_mod.warm_start(solver, Phase("stage0", 10, 0))  # stage 0 has no predecessor: untouched
    assert all(torch.equal(a, b) for a, b in zip(before, solver.stages.net(0).parameters()))
    train_mod.warm_start(solver, Phase("stage2", 10, 2))
    assert all(torch.equal(a, b) for a, b in zip(solver.stages.net(1).parameters(), solver.stages.net(2).parameters()))
    out = train(toy_task, fast_cfg("train.warm_start=true", "train.iterations=1"), tmp_path / "w.safetensors",
                progress=False)
    w = weights(out)  # one Adam step per stage: stage t stays within a step of stage t-1
    for name in [k for k in w if k.startswith("stages.nets.1.")]:
        assert (w[name] - w[name.replace("nets.1.", "nets.0.")]).abs().max() < 5e-3, name


@pytest.mark.parametrize("learned_init", [False, True])
def test_joint_deep_and_final_supervision_losses(toy_task, fast_cfg, learned_init):
    init = "learned" if learned_init else "constant"
    cfg = fast_cfg("train.schedule=joint", f"solver.init={init}", "solver.damping.enabled=false")
    torch.manual_seed(0)
    solver = build_solver(toy_task, cfg)
    batch = toy_task.sample(16, "train", 0)
    joint = Phase("joint", 10)
    states = solver.unroll(batch, 3)
    per_state = [toy_task.loss(x, batch.x, batch.ctx) for x in states]
    final = phase_loss(solver, joint, batch, "final")
    deep = phase_loss(solver, joint, batch, "deep")
    assert torch.allclose(final, per_state[-1])
    first = 0 if learned_init else 1  # a constant start has no parameters to supervise
    assert torch.allclose(deep, torch.stack(per_state[first:]).mean())
    assert not torch.allclose(deep, final)
    torch.manual_seed(0)
    ends = phase_loss(solver, joint, batch, "ends")  # the start's and the last state's loss (Luo et al.)
    assert torch.allclose(ends, per_state[0] + per_state[-1])


def test_a_nets_auxiliary_outputs_add_the_tasks_auxiliary_loss(toy_task, fast_cfg, monkeypatch):
    solver = build_solver(toy_task, fast_cfg())
    batch = toy_task.sample(16, "train", 0)
    stage = Phase("stage0", 10, 0)
    plain = phase_loss(solver, stage, batch, "deep")
    solver.stages.net(0).aux = {"depth": torch.ones(16, 1, 4, 4)}  # what a net with an auxiliary head reports
    with pytest.raises(NotImplementedError, match="defines no auxiliary_loss"):
        phase_loss(solver, stage, batch, "deep")
    monkeypatch.setattr(toy_task, "auxiliary_loss", lambda aux, b: aux["depth"].sum() * 0 + 5.0, raising=False)
    assert torch.allclose(phase_loss(solver, stage, batch, "deep"), plain + 5.0)


# --- reproducibility and resume ------------------------------------------------------------------------------
def test_fixed_seed_reproduces_identical_weights(toy_task, fast_cfg, tmp_path):
    a = weights(train(toy_task, fast_cfg(), tmp_path / "a.safetensors", progress=False))
    b = weights(train(toy_task, fast_cfg(), tmp_path / "b.safetensors", progress=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = weights(train(toy_task, fast_cfg("seed=1"), tmp_path / "c.safetensors", progress=False))
    assert max_diff(a, c) > 1e-3


class Interrupted(Exception):
    pass


def count_steps(monkeypatch, crash_after: int | None = None) -> list[int]:
    """Count training's optimisation steps; with `crash_after`, crash on the next one, like a killed job."""
    real, count = train_mod.phase_loss, [0]

    def counting(*args, **kwargs):
        count[0] += 1
        if crash_after is not None and count[0] > crash_after:
            raise Interrupted(f"killed at step {count[0]}")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "phase_loss", counting)
    return count


@pytest.mark.parametrize("variant,stop,position", [
    (None, 15, (0, 10)),          # mid-phase, between checkpoints: redo iterations 10..14
    (None, 20, (1, 0)),           # right at a phase boundary
    (None, 47, (2, 0)),           # into the last stage, before its first checkpoint
    ("feedback_shared", 33, (0, 30)),  # joint schedule
], ids=["mid-phase", "phase-boundary", "last-stage", "joint"])
def test_resume_matches_an_uninterrupted_run(toy_task, fast_cfg, tmp_path, monkeypatch, variant, stop, position):
    cfg = fast_cfg(variant=variant) if variant is None else fast_cfg("train.iterations=60", variant=variant)
    total = sum(p.iterations for p in phases(cfg))
    assert total == 60
    ref = weights(train(toy_task, cfg, tmp_path / "ref.safetensors", progress=False))
    out = tmp_path / "run.safetensors"
    state_path = tmp_path / "run.safetensors.state.pt"
    with monkeypatch.context() as m:
        count_steps(m, crash_after=stop)
        with pytest.raises(Interrupted):
            train(toy_task, cfg, out, progress=False)
    assert not out.exists() and state_path.exists()
    state = load_state(state_path)
    assert (state["phase"], state["iteration"]) == position
    done = sum(p.iterations for p in phases(cfg)[: position[0]]) + position[1]
    with monkeypatch.context() as m:
        steps = count_steps(m)
        train(toy_task, cfg, out, resume=True, progress=False)
    assert steps[0] == total - done, "resume must continue from the saved position, not start over"
    assert not state_path.exists()
    assert max_diff(ref, weights(out)) <= 1e-6


def interrupted_run(task, cfg, out, monkeypatch) -> None:
    """A run killed at its 13th step, after its first checkpoint: `out`.state.pt is left behind."""
    with monkeypatch.context() as m:
        count_steps(m, crash_after=12)
        with pytest.raises(Interrupted):
            train(task, cfg, out, progress=False)


def test_resume_refuses_a_state_of_another_config(toy_task, fast_cfg, tmp_path, monkeypatch):
    out = tmp_path / "run.safetensors"
    interrupted_run(toy_task, fast_cfg(), out, monkeypatch)
    with pytest.raises(ValueError, match="another task or config"):
        train(toy_task, fast_cfg("train.lr=0.01"), out, resume=True, progress=False)


def test_resume_without_state_is_an_error(toy_task, fast_cfg, tmp_path):
    with pytest.raises(ValueError, match="--resume: no training state at .*x.safetensors.state.pt"):
        train(toy_task, fast_cfg(), tmp_path / "x.safetensors", resume=True, progress=False)
    assert not list(tmp_path.iterdir()), "nothing written, no lock left behind"


def test_a_fresh_run_never_overwrites_an_interrupted_runs_state(toy_task, fast_cfg, tmp_path, monkeypatch):
    out = tmp_path / "run.safetensors"
    interrupted_run(toy_task, fast_cfg(), out, monkeypatch)
    before = (tmp_path / "run.safetensors.state.pt").read_bytes()
    with pytest.raises(ValueError, match="interrupted run exists; continue it with --resume"):
        train(toy_task, fast_cfg(), out, progress=False)
    assert (tmp_path / "run.safetensors.state.pt").read_bytes() == before


def test_a_second_run_to_the_same_output_is_refused_while_the_first_holds_it(toy_task, fast_cfg, tmp_path,
                                                                            monkeypatch):
    from feedback_solver.train import StateLock

    out = tmp_path / "run.safetensors"
    held = StateLock(out.with_name(out.name + ".state.pt"))
    held.acquire()
    monkeypatch.setattr(StateLock, "WAIT", 0.2)
    try:
        with pytest.raises(ValueError, match="another training run still writes run.safetensors.state.pt"):
            train(toy_task, fast_cfg(), out, progress=False)
    finally:
        held.release()
    assert not out.exists() and not held.path.exists()
    train(toy_task, fast_cfg(), out, progress=False)  # once released, the run goes ahead
    assert out.exists() and not held.path.exists()


def test_a_state_of_another_world_size_is_refused(toy_task, fast_cfg, tmp_path, monkeypatch):
    from feedback_solver.checkpoints import load_state, save_state

    out = tmp_path / "run.safetensors"
    interrupted_run(toy_task, fast_cfg(), out, monkeypatch)
    state_path = tmp_path / "run.safetensors.state.pt"
    save_state(state_path, load_state(state_path) | {"world_size": 2})
    with pytest.raises(ValueError, match="written by a 2-rank run and this one has 1; resume it with 2 rank"):
        train(toy_task, fast_cfg(), out, resume=True, progress=False)


# --- refused checkpoints ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(toy_cls, toy_cfg, tmp_path_factory):
    cfg = toy_cfg(*FAST)
    path = train(toy_cls(cfg), cfg, tmp_path_factory.mktemp("ckpt") / "feedback.safetensors", progress=False)
    return path, cfg


def test_checkpoints_are_readable_by_others(trained):
    """Written through a private temporary file (mkstemp: 0600), but shipped to other users."""
    assert trained[0].stat().st_mode & 0o444 == 0o444
    assert not list(trained[0].parent.glob("*.tmp")), "no temporary file left behind"


def test_truncated_checkpoint_is_refused(toy_task, trained, tmp_path):
    data = trained[0].read_bytes()
    for size in (len(data) // 2, 10, 0):
        bad = tmp_path / f"cut{size}.safetensors"
        bad.write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"truncated or not a safetensors file") as err:
            FeedbackSolver.from_checkpoint(toy_task, path=bad)
        assert str(bad) in str(err.value)
    missing = tmp_path / "none.safetensors"
    with pytest.raises(FileNotFoundError, match="fbsolve train toy"):
        FeedbackSolver.from_checkpoint(toy_task, path=missing)


def test_truncated_training_state_is_refused(toy_task, fast_cfg, tmp_path, monkeypatch):
    out = tmp_path / "run.safetensors"
    state_path = tmp_path / "run.safetensors.state.pt"
    interrupted_run(toy_task, fast_cfg(), out, monkeypatch)
    data = state_path.read_bytes()
    state_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated or corrupt.*delete it") as err:
        train(toy_task, fast_cfg(), out, resume=True, progress=False)
    assert str(state_path) in str(err.value)
    state_path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        train(toy_task, fast_cfg(), out, resume=True, progress=False)


def test_checkpoint_of_another_task_is_refused_naming_both(toy_task, trained, tmp_path):
    path, cfg = trained
    with pytest.raises(ValueError, match=r"belongs to task 'toy', not 'ik'"):
        read_model(path, "ik")
    solver = FeedbackSolver.from_checkpoint(toy_task, path=path)
    fake_ik = save_model(tmp_path / "ik.safetensors", solver, "ik", cfg, {})
    with pytest.raises(ValueError, match=r"belongs to task 'ik', not 'toy'"):
        FeedbackSolver.from_checkpoint(toy_task, path=fake_ik)


def test_foreign_safetensors_file_is_refused(toy_task, tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not written by feedback_solver"):
        FeedbackSolver.from_checkpoint(toy_task, path=foreign)


@pytest.mark.parametrize("override", ["model.hidden=32", "solver.steps=2", "feedback.inputs=[y,x]",
                                      "solver.init=learned"])
def test_checkpoint_of_another_model_shape_is_refused(toy_task, trained, toy_cfg, override):
    tensors, _, _ = read_model(trained[0], "toy")
    other = build_solver(toy_task, toy_cfg(override))
    with pytest.raises(ValueError, match="does not fit this model"):
        load_weights(other, tensors, str(trained[0]))
    load_weights(build_solver(toy_task, toy_cfg()), tensors, str(trained[0]))  # the matching shape loads


def test_init_from_starts_from_the_fitting_tensors_and_refuses_a_foreign_model(toy_task, trained, fast_cfg,
                                                                                tmp_path, capsys):
    source = weights(trained[0])
    cfg = fast_cfg("model.hidden=32", f"train.init_from={trained[0]}", "train.iterations=0", "train.init_iterations=0")
    out = train(toy_task, cfg, tmp_path / "wider.safetensors", progress=False)
    got = weights(out)
    same = [k for k in got if k in source and got[k].shape == source[k].shape]
    assert same and all(torch.equal(got[k], source[k]) for k in same)  # no iterations: exactly the source's
    assert len(same) < len(got)  # the layers that changed shape start fresh
    assert "left at their initial values" in capsys.readouterr().out
    foreign = save_model(tmp_path / "foreign.safetensors", torch.nn.Linear(3, 3), "toy", trained[1], {})
    with pytest.raises(ValueError, match="no tensor fits this model"):
        train(toy_task, fast_cfg(f"train.init_from={foreign}"), tmp_path / "x.safetensors", progress=False)


def test_warm_start_leaves_the_stages_that_init_from_fills(toy_task, trained, fast_cfg, tmp_path):
    """Fine-tuning a stage-wise checkpoint: stage t starts from its own trained weights, not from stage t-1's."""
    source = weights(trained[0])
    assert max_diff({k: v for k, v in source.items() if ".nets.1." in k},
                    {k.replace(".nets.0.", ".nets.1."): v for k, v in source.items() if ".nets.0." in k}) > 0
    cfg = fast_cfg(f"train.init_from={trained[0]}", "train.warm_start=true", "train.iterations=0")
    assert max_diff(weights(train(toy_task, cfg, tmp_path / "ft.safetensors", progress=False)), source) == 0
    wider = build_solver(toy_task, fast_cfg("model.hidden=32"))
    assert train_mod.fine_tuned_stages(wider, matching(wider, source)) == frozenset()  # other shapes: warm start copies
    same = build_solver(toy_task, trained[1])
    assert train_mod.fine_tuned_stages(same, matching(same, source)) == frozenset(range(len(same.stages.nets)))


def test_a_resumed_fine_tune_keeps_its_stages_as_the_uninterrupted_run(toy_task, trained, fast_cfg, tmp_path):
    """A resumed run does not reload init_from (its state holds the weights) but still knows which stages it filled."""
    args = (f"train.init_from={trained[0]}", "train.warm_start=true", "train.iterations=5", "train.checkpoint_every=1")
    ref = train(toy_task, fast_cfg(*args), tmp_path / "ref.safetensors", progress=False)
    out = tmp_path / "paused.safetensors"
    train(toy_task, fast_cfg(*args, "train.stop_after=7"), out, progress=False)  # paused inside stage 1
    assert not out.exists()
    resumed = train(toy_task, fast_cfg(*args, "train.stop_after=0"), out, resume=True, progress=False)
    assert max_diff(weights(resumed), weights(ref)) == 0


# --- pooled training (costly forward models) -------------------------------------------------------------------
def test_pool_states_are_the_solvers_own_states(toy_task, fast_cfg, tmp_path):
    path = train(toy_task, fast_cfg(), tmp_path / "p.safetensors", progress=False)
    solver = FeedbackSolver.from_checkpoint(toy_task, path=path)
    pool = train_mod.Pool(toy_task.sample(100, "train", 3))
    for stage in (0, 2, 3):
        train_mod.advance(solver, pool, stage, chunk=32)
        assert pool.t == stage
        ref = solver.solve(pool.batch.y, pool.batch.ctx, steps=stage)
        assert torch.allclose(pool.x, ref.x, atol=1e-5)
        assert torch.allclose(pool.y_t, toy_task.forward(ref.x, {}), atol=1e-5)


def test_pooled_training_learns_calls_the_forward_model_less_and_resumes_exactly(toy_task, fast_cfg, tmp_path,
                                                                                   monkeypatch):
    cfg = fast_cfg("train.pool=256", "train.iterations=100", "solver.init=learned")
    calls = [0]
    real = type(toy_task).forward

    def counting(self, x, ctx):
        calls[0] += x.shape[0]
        return real(self, x, ctx)

    with monkeypatch.context() as m:
        m.setattr(type(toy_task), "forward", counting)
        ref = train(toy_task, cfg, tmp_path / "ref.safetensors", progress=False)
    val = toy_task.sample(256, "val", 11)
    assert validate(FeedbackSolver.from_checkpoint(toy_task, path=ref), val) < 0.12
    fresh = 3 * 100 * cfg.train.batch_size  # at least one forward per sample and iteration without the pool
    assert calls[0] < fresh / 2, (calls[0], fresh)
    out = tmp_path / "run.safetensors"
    with monkeypatch.context() as m:
        count_steps(m, crash_after=250)  # inside stage 1, past its first checkpoint
        with pytest.raises(Interrupted):
            train(toy_task, cfg, out, progress=False)
    train(toy_task, cfg, out, resume=True, progress=False)
    assert max_diff(weights(ref), weights(out)) <= 1e-6


def test_pool_must_be_a_non_negative_integer(toy_cfg):
    with pytest.raises(ValueError, match="train.pool must be >= 0"):
        toy_cfg("train.pool=-5")


def test_training_ignores_restarts_an_inference_setting(toy_task, fast_cfg, tmp_path):
    """The toy gives no restart starts: asking for restarts would raise if training's solves used them."""
    path = train(toy_task, fast_cfg("solver.restarts.starts=2"), tmp_path / "r.safetensors", progress=False)
    _, cfg, meta = read_model(path, "toy")
    assert meta["val_distance"] > 0 and cfg.solver.restarts.starts == 2


def test_augment_sees_every_pooled_minibatch_and_a_task_without_one_is_told(toy_task, fast_cfg, tmp_path,
                                                                            monkeypatch):
    cfg = fast_cfg("train.pool=64", "train.iterations=10", "train.augment=true")
    with pytest.raises(NotImplementedError, match="defines no augmentation; set train.augment=false"):
        train(toy_task, cfg, tmp_path / "none.safetensors", progress=False)
    seen = []

    def identity(self, batch, states, gen):
        seen.append(states is not None and len(batch) == states[0].shape[0])
        return batch, states

    monkeypatch.setattr(type(toy_task), "augment", identity, raising=False)
    aug = train(toy_task, cfg, tmp_path / "aug.safetensors", progress=False)
    plain = train(toy_task, fast_cfg("train.pool=64", "train.iterations=10"), tmp_path / "p.safetensors",
                  progress=False)
    assert seen == [True] * 30 and max_diff(weights(aug), weights(plain)) == 0.0
