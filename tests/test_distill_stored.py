"""Distillation from stored teacher states (dode.distillation.stored): one teacher, every solver on its grid."""

import pytest
import torch

import dode
from dode.core.grids import GridSpec
from dode.distillation.stored import distill_from_states
from dode.distillation.teacher import TeacherConfig, teacher_states
from dode.distillation.teacher_parquet import write_teacher
from dode.models import digits_mixture
from dode.store.trajectory import read_steps


@pytest.fixture(scope="module")
def mixture():
    return digits_mixture(0.35, per_class=True)


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def student_states(den, x, sigmas, factor, teacher_solver):
    """The teacher's states at every student grid index, keyed by the student index."""
    plan = TeacherConfig(solver=teacher_solver, factor=factor).plan(sigmas, "euler", den)
    steps = len(sigmas) - 1
    held = teacher_states(den, x, plan, keep={i * factor for i in range(steps + 1)})
    return {i: held[i * factor] for i in range(steps + 1)}, plan


@pytest.mark.parametrize("solver", ["euler", "heun", "ipndm", "dpmpp_2m"])
@pytest.mark.parametrize("guard", [True, False])
def test_equals_distill_with_the_same_teacher(mixture, solver, guard):
    # One dpmpp_2m teacher on the 3-step grid serves every solver on it; the fit equals dode.distill's.
    sigmas = GridSpec("karras", 3).sigmas()
    x = noise(24)
    states, plan = student_states(mixture, x, sigmas, 4, "dpmpp_2m")
    got = distill_from_states(mixture, x, sigmas, states, solver, teacher=plan.record(), fit={"guard": guard})
    want = dode.distill(mixture, x, sigmas, solver, {"factor": 4, "solver": "dpmpp_2m"}, {"guard": guard})
    assert got == want


def test_from_a_parquet_trajectory_matches_to_float32(mixture, tmp_path):
    # Stored states are float32: the fit from the file agrees with the float64 fit to float32 accuracy.
    sigmas = GridSpec("karras", 4).sigmas()
    fine = dode.refine(sigmas, 5)
    x = noise(32, seed=3)
    path = write_teacher(tmp_path / "t.parquet", mixture, x, fine, "dpmpp_2m", keep={5 * i for i in range(5)})
    traj = read_steps(path)
    stored = {s // 5: traj.at(s) for s in traj.steps}
    exact, _ = student_states(mixture, x, sigmas, 5, "dpmpp_2m")
    got = distill_from_states(mixture, x, sigmas, stored, "ipndm", fit={"guard": False})
    want = distill_from_states(mixture, x, sigmas, exact, "ipndm", fit={"guard": False})
    assert got.values == pytest.approx(want.values, rel=1e-4, abs=1e-5)
    assert got.values != pytest.approx([0.0] * len(got.values))


def test_missing_states_name_the_indices(mixture):
    sigmas = GridSpec("karras", 3).sigmas()
    x = noise(4)
    states, _ = student_states(mixture, x, sigmas, 2, "euler")
    del states[2]
    with pytest.raises(ValueError, match=r"indices \[2\] are missing"):
        distill_from_states(mixture, x, sigmas, states, "euler")

