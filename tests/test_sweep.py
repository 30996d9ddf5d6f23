"""The orchestration's domain logic, in the library: sweep cells, stage configurations, metrics, reference data,
tables."""

import math
from dataclasses import replace

import numpy as np
import pytest

from dode.common.config import build
from dode.core.grids import GridSpec
from dode.distillation.config import STUDENT_SOLVER
from dode.metrics.reference import reference_images
from dode.metrics.scores import METRICS, auto_metrics, resolve_metrics, rmse
from dode.models import load_model
from dode.pipeline.generate import SamplingConfig
from dode.pipeline.report import markdown_tables, text_table
from dode.pipeline.runs import PipelineRun, SampleRun, ScoreRun
from dode.pipeline.sweep import (
    plan_cells,
    plan_variants,
    sampling_jobs,
    score_items,
    variant_applies,
    with_samples,
)

PIPELINE = {"model": "mixture-smooth", "solvers": ["euler"], "nfes": [3], "family": "karras",
            "teacher": {"factor": 10, "solver": "dpmpp_2m", "n_samples": 256, "batch_size": 250},
            "sampling": {"n_samples": 100, "num_shards": 1}, "fit": {"holdout": 0.25, "correction": "data",
                                                                    "objective": "step"}, "scoring": {"metrics": ["auto"]}}
TEACHER = {"solver": "dpmpp_2m", "factor": 4}
SAMPLING = SamplingConfig(n_samples=8, first_seed=0, batch_size=4)


def test_cells_skip_nfes_a_solver_cannot_make_unless_asked_for():
    cells = plan_cells(["euler", "heun"], [3, 4], None, "karras")
    assert [(c["solver"], c["nfe"]) for c in cells] == [("euler", 3), ("euler", 4), ("heun", 3)]
    assert cells[2]["grid"] == GridSpec.for_nfe("karras", "heun", 3).to_dict() == {**cells[2]["grid"], "steps": 2}
    with pytest.raises(ValueError, match="cannot make exactly 4"):
        plan_cells(["heun"], [], {"heun": [4]}, "karras")
    with pytest.raises(ValueError, match="at least 2 network evaluations"):
        plan_cells(["euler"], [1], None, "karras")
    with pytest.raises(ValueError, match="unknown grid family 'linear'; choose one of"):
        plan_cells(["euler"], [3], None, "linear")


def test_sampling_jobs_and_scores_pair_each_cell_with_its_teacher():
    cells = [{**c, "lambdas": f"lam{i}", "teacher": TEACHER}
             for i, c in enumerate(plan_cells(["euler", "dpmpp_2m"], [3, 5], None, "karras"))]
    keys, jobs = sampling_jobs("gaussian", cells, SAMPLING)
    assert keys == ["karras/dpmpp_2m-x4"] and len(jobs) == 1 + 2 * len(cells)
    assert jobs[0]["solver"] == "dpmpp_2m" and jobs[0]["grid"]["steps"] == 4 * 5  # the finest student grid, refined
    assert [j["lambdas_id"] for j in jobs[1:]] == [None, "lam0", None, "lam1", None, "lam2", None, "lam3"]
    ids = [f"s{i}" for i in range(len(jobs))]
    cells, teachers = with_samples(cells, keys, ids)
    assert teachers == {"karras/dpmpp_2m-x4": "s0"} and (cells[1]["base"], cells[1]["dode"]) == ("s3", "s4")
    items = score_items(cells, teachers, {"fd-pixels": "ref"}, ["fd-pixels", "rmse"])
    assert items[0] == ("s0", "fd-pixels", "ref") and ("s4", "rmse", "s0") in items and len(items) == 1 + 4 * 4


def test_variants_are_sampled_and_scored_beside_base_and_dode():
    plan = plan_variants({"timesteps": {"objective": "final", "options": {"learn_lambdas": False}, "nfes": [5]}})
    cells = [{**c, "lambdas": f"lam{i}", "teacher": TEACHER,
              "variants": {n: f"v{i}" for n, v in plan.items() if variant_applies(v, c)}}
             for i, c in enumerate(plan_cells(["euler"], [3, 5], None, "karras"))]
    assert [c["variants"] for c in cells] == [{}, {"timesteps": "v1"}]
    keys, jobs = sampling_jobs("gaussian", cells, SAMPLING)
    assert [j["lambdas_id"] for j in jobs[1:]] == [None, "lam0", None, "lam1", "v1"]
    cells, teachers = with_samples(cells, keys, [f"s{i}" for i in range(len(jobs))])
    assert cells[1]["samples"] == {"base": "s3", "dode": "s4", "timesteps": "s5"}
    assert len(score_items(cells, teachers, {}, ["rmse"])) == 5


def test_each_cell_is_compared_with_its_own_teacher():
    # Re-evaluated lambdas fitted to different teachers: each teacher sampled once, each cell scored against its own.
    grids = plan_cells(["euler"], [3, 5], None, "karras")
    cells = [{**grids[0], "lambdas": "lam0", "teacher": TEACHER},
             {**grids[1], "lambdas": "lam1", "teacher": {"solver": "euler", "factor": 10}},
             {**grids[0], "solver": "dpmpp_2m", "lambdas": "lam2", "teacher": TEACHER}]
    keys, jobs = sampling_jobs("gaussian", cells, SAMPLING)
    assert keys == ["karras/dpmpp_2m-x4", "karras/euler-x10"]
    assert [(j["solver"], j["grid"]["steps"]) for j in jobs[:2]] == [("dpmpp_2m", 4 * 3), ("euler", 10 * 5)]
    cells, teachers = with_samples(cells, keys, [f"s{i}" for i in range(len(jobs))])
    assert teachers == {"karras/dpmpp_2m-x4": "s0", "karras/euler-x10": "s1"}
    rmse_refs = {sid: ref for sid, m, ref in score_items(cells, teachers, {}, ["rmse"])}
    assert [rmse_refs[c["dode"]] for c in cells] == ["s0", "s1", "s0"]


@pytest.mark.parametrize(("change", "message"), [
    ({"model": "sd-turbo"}, "model: unknown model 'sd-turbo'"),
    ({"teacher": {"solver": "rk4"}}, "teacher.solver: Input should be 'euler', 'heun'"),
    ({"teacher": {"factor": True}}, "teacher.factor: Input should be a valid integer"),  # a YAML `factor: yes`
    ({"teacher": {"factor": 2.0}}, "teacher.factor: Input should be a valid integer"),
    ({"fit": {"guard": "false"}}, "fit.guard: Input should be a valid boolean"),
    ({"nfes": [3, True]}, "nfes.1: Input should be a valid integer"),
    ({"teacher": {"factor": 0}}, "teacher.factor: Input should be greater than or equal to 1"),
    ({"fit": {"correction": "both"}}, "fit.correction: Input should be 'data' or 'noise'"),
    ({"fit": {"objective": "adamw"}}, "fit.objective: Input should be 'step' or 'final'"),
    ({"fit": {"options": {"learn_sigmas": True}}}, r"fit.options: objective 'step' has no option\(s\) \['learn_sigmas'\]"),
    ({"fit": {"objective": "final", "options": {"iterations": -1}}}, "iterations: Input should be greater than or equal to 0"),
    ({"fit": {"objective": "final", "options": {"learn_sigmas": "false"}}}, "learn_sigmas: Input should be a valid boolean"),
    ({"variants": {"v": {"objective": "final", "options": {"activation_checkpointing": "no"}}}},
     "variants.v.options: objective 'final': activation_checkpointing: Input should be a valid boolean"),
    ({"variants": {"fast": {"objective": "final", "options": {"iters": 3}}}}, r"no option\(s\) \['iters'\]"),
    ({"variants": {"fast": {"options": {}}}}, "variants.fast.objective: Field required"),
    ({"variants": {"base": {"objective": "final"}}}, "variant name 'base' is taken"),
    ({"teacher": {"alignment": "roughly"}}, "teacher.alignment: Input should be 'exact' or 'official'"),
    ({"teacher": {"alignment": "official"}, "solvers": ["euler", "dpmpp_2m"]}, r"use alignment=exact for \['dpmpp_2m'\]"),
    ({"teacher": {"alignment": "official", "solver": "dpmpp_2m"}}, "official alignment uses the reference code's Euler"),
    ({"variants": {"v": {"objective": "final", "solvers": ["rk4"]}}}, "variants.v.solvers.0: Input should be 'euler'"),
    ({"nfes": [100_000], "teacher": {"factor": 1000}}, "above the bound of 100,000; lower the steps"),
    ({"nfes": [10], "teacher": {"n_samples": 1_000_000}}, "states in memory, above the bound of 2,000,000"),
    ({"fit": {"holdout": 1.0}}, "fit.holdout: Input should be less than 1"),
    ({"scoring": {"metrics": ["fid", "lpips"]}}, r"scoring: unknown metric\(s\) \['lpips'\]"),
    ({"solvers": ["heun"], "nfes": [4]}, "heun makes odd NFEs only"),
    ({"n_distill": 64}, "n_distill: Extra inputs are not permitted"),
])
def test_a_bad_pipeline_parameter_is_one_clear_error(change, message):
    build(PipelineRun, PIPELINE)
    with pytest.raises(ValueError, match=message) as err:
        build(PipelineRun, {**PIPELINE, **change})
    assert err.value.args[0].startswith("PipelineRun: ") and "\n" not in err.value.args[0]


def test_official_alignment_defaults_its_teacher_to_euler():
    config = build(PipelineRun, {**PIPELINE, "teacher": {"alignment": "official"}})
    assert config.teacher.solver == "euler" and build(PipelineRun, PIPELINE).teacher.solver == "dpmpp_2m"


def test_sample_and_score_configurations_catch_contradictions():
    sample = {"model": "gaussian", "sampling": {"n_samples": 4, "batch_size": 2}}
    with pytest.raises(ValueError, match="give nfe"):
        build(SampleRun, sample)
    with pytest.raises(ValueError, match="drop sigmas and gaussian"):
        build(SampleRun, {**sample, "lambdas": "abc", "gaussian": "def"})
    with pytest.raises(ValueError, match="sigmas is the whole grid: drop nfe and family"):
        build(SampleRun, {**sample, "sigmas": [80, 1, 0], "nfe": 2})
    with pytest.raises(ValueError, match="needs a gaussian artifact id"):
        build(SampleRun, {**sample, "nfe": 3, "first_step": "analytic"})
    assert build(SampleRun, {**sample, "solver": "euler", "nfe": 3}).sampling.batch_size == 2
    assert build(SampleRun, {**sample, "nfe": 3}).job(None).solver == STUDENT_SOLVER  # the one default
    with pytest.raises(ValueError, match="not both"):
        build(ScoreRun, {"model": "gaussian", "samples": ["a"], "lambdas": ["b"]})


def test_metrics_come_from_the_model():
    m = load_model("mixture-smooth")
    assert auto_metrics(m)[0] == "fd-pixels" and auto_metrics(m)[-1] == "rmse"
    assert auto_metrics(replace(m, metrics=())) in (["rmse"], ["fid", "rmse"])  # FID where its weights are
    assert resolve_metrics(["rmse", "fd-pixels", "rmse"], m) == ["rmse", "fd-pixels"]
    assert set(auto_metrics(m)) <= set(METRICS)


def test_rmse_on_the_model_scale():
    a = np.full((2, 1, 2, 2), 255, np.uint8)
    assert rmse(a, a) == 0.0
    assert rmse(a, np.zeros_like(a)) == pytest.approx(2.0)  # 1 - (-1)
    assert rmse(a, np.where(np.arange(8).reshape(a.shape) % 2, a, 0).astype(np.uint8)) == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="equally shaped"):
        rmse(a, a[:1])


def test_reference_data_is_declared_by_the_model():
    m = load_model("gaussian")
    images, source = reference_images(m, 64, 3)
    assert images.shape == (64, 1, 8, 8) and images.dtype == np.uint8 and source == "exact-draws-64-seed3"
    assert np.array_equal(reference_images(m, 64, 3)[0], images)  # seeded
    assert 100 < images.mean() < 155  # N(0, 0.25) around mid-grey
    with pytest.raises(ValueError, match="no built-in reference data for model 'gaussian'; pass reference="):
        reference_images(replace(m, reference=None), 4, 0)
    with pytest.raises(ValueError, match="unknown reference data 'imagenet'"):
        reference_images(replace(m, reference="imagenet"), 4, 0)


def test_tables_show_every_row_and_dashes_for_missing_values():
    rows = [{"solver": "euler", "nfe": 3, "metric": "rmse", "label": "RMSE to teacher", "base": 0.5, "dode": 0.25,
             "teacher": None, "change_pct": -50.0, "guard": {"dode": "fitted"}, "variants": {"timesteps": 0.125},
             "spread": {"base": 0.01, "dode": 0.02, "timesteps": 0.005}},
            {"solver": "euler", "nfe": 3, "metric": "fd-pixels", "label": "FD-pixels", "base": 0.0, "dode": 2.0,
             "teacher": 1.0, "change_pct": None, "guard": {"dode": "base"}, "variants": {}}]
    text = text_table(rows).splitlines()
    assert text[0].split()[-4:] == ["D-ODE", "timesteps", "teacher", "change"]
    assert text[2].split() == ["euler", "3", "RMSE", "to", "teacher", "0.5", "±", "0.01", "0.25", "±", "0.02",
                               "0.125", "±", "0.005", "—", "-50.0%"]
    assert text[3].split()[-3:] == ["—", "1", "—"] and "disjoint evaluation sets" in text[4]
    md = markdown_tables(rows)
    assert "### RMSE to teacher" in md
    assert "| euler | 3 | 0.5 ± 0.01 | 0.25 ± 0.02 | 0.125 ± 0.005 | — | -50.0 % | dode: fitted |" in md


def test_few_step_summary_judges_each_variant_against_its_own_base_and_sibling():
    from dode.pipeline.sweep import few_step_summary, plan_variants

    variants = plan_variants({"t": {"objective": "final", "options": {"learn_lambdas": False}},
                              "jt": {"objective": "final"},
                              "a t": {"objective": "final", "first_step": "analytic", "options": {"learn_lambdas": False}},
                              "a jt": {"objective": "final", "first_step": "analytic"}})
    rows = [{"solver": "dpmpp_2m", "nfe": 3, "metric": "fd", "base": 900.0, "dode": 950.0, "teacher": 10.0,
             "variants": {"t": 800.0, "jt": 850.0, "base+analytic": 40.0, "a t": 39.0, "a jt": 30.0},
             "guard": {"dode": "fitted", "t": "final", "jt": "final", "a t": "final", "a jt": "final"}},
            {"solver": "unipc", "nfe": 3, "metric": "fd", "base": 700.0, "dode": 720.0, "teacher": 10.0,
             "variants": {"t": 700.0, "jt": 700.0, "base+analytic": 35.0, "a t": 50.0, "a jt": 35.0},
             "guard": {"dode": "base", "t": "base", "jt": "base", "a t": "final", "a jt": "base"}}]
    lines = few_step_summary(rows, variants, "fd")
    assert lines[1] == "  3: 700 (unipc), 30 (dpmpp_2m a jt), teacher 10"
    # dpmpp_2m jt 850 > 1.05 x its sibling t 800; unipc "a t" 50 > 1.05 x its own base 35; the rest hold
    assert lines[2].startswith("variant cells within 1.05x of their own base and timesteps-only sibling, or given "
                               "the base by the guard: 6 of 8")
    assert "dpmpp_2m 3 jt: 850 (own base 900, t 800)" in lines[2] and "unipc 3 a t: 50 (own base 35)" in lines[2]
    assert lines[3].endswith("changed the base in 5 variant cells; fd agreed (no worse than the own base) in 4 of them")


@pytest.mark.parametrize("record", [{"solver": "euler", "factor": 10**9}, {"solver": "rk45", "factor": 10},
                                    {"factor": 10}, {"solver": "euler", "factor": 2.5}])
def test_a_stored_teacher_record_is_checked_before_its_reevaluation_samples(tmp_path, record):
    # A shared registry is untrusted: the teacher a lambdas artifact records decides the teacher job's grid
    # (factor x steps), so it passes TeacherConfig's rules before any sampling.
    import dode
    from dode.pipeline.sweep_run import reevaluation_cells
    from dode.store.lambdas import save_lambdas
    from dode.store.registry import Registry

    reg = Registry(tmp_path / "reg")
    grid = GridSpec("karras", 3)
    lam = dode.Lambdas([0.0, 0.1, 0.2], "euler", grid.sigmas().tolist(), teacher=record)
    art = save_lambdas(reg, lam, "tampered", params={"model": "mixture-smooth", "grid": grid.to_dict()})
    with pytest.raises(ValueError, match=f"lambdas {art.short} record no valid teacher"):
        reevaluation_cells(reg.uri, "mixture-smooth", (art.id,))
    good = save_lambdas(reg, dode.Lambdas([0.0, 0.1, 0.2], "euler", grid.sigmas().tolist(),
                                          teacher={"solver": "dpmpp_2m", "factor": 4}), "good",
                        params={"model": "mixture-smooth", "grid": grid.to_dict()})
    (cell,) = reevaluation_cells(reg.uri, "mixture-smooth", (good.id,))
    assert cell["teacher"] == {"solver": "dpmpp_2m", "factor": 4} and cell["nfe"] == 3
