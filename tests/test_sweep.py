"""The orchestration's domain logic, in the library: sweep cells, stage checks, metrics, reference data, tables."""

import math
from dataclasses import replace

import numpy as np
import pytest

from dode.checks import check_pipeline, check_sample, check_score
from dode.grids import GridSpec
from dode.metrics.reference import reference_images
from dode.metrics.scores import METRICS, auto_metrics, resolve_metrics, rmse
from dode.models import load_model
from dode.report import markdown_tables, text_table
from dode.sweep import plan_cells, plan_variants, sampling_jobs, score_items, variant_applies, with_samples

PIPELINE = {"model": "mixture-smooth", "solvers": ["euler"], "nfes": [3], "nfes_by_solver": None, "family": "karras",
            "teacher_factor": 10, "teacher_solver": "dpmpp_2m", "n_distill": 256, "batch_size": 250,
            "n_samples": 100, "num_shards": 1, "holdout": 0.25, "correction": "data", "objective": "step",
            "objective_options": None, "variants": None, "metrics": ["auto"]}


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
    cells = [{**c, "lambdas": f"lam{i}"} for i, c in enumerate(plan_cells(["euler", "dpmpp_2m"], [3, 5], None, "karras"))]
    families, jobs = sampling_jobs("gaussian", cells, {"solver": "dpmpp_2m", "factor": 4}, 8, 0, 4)
    assert families == ["karras"] and len(jobs) == 1 + 2 * len(cells)
    assert jobs[0]["solver"] == "dpmpp_2m" and jobs[0]["grid"]["steps"] == 4 * 5  # the finest student grid, refined
    assert [j["lambdas_id"] for j in jobs[1:]] == [None, "lam0", None, "lam1", None, "lam2", None, "lam3"]
    ids = [f"s{i}" for i in range(len(jobs))]
    cells, teachers = with_samples(cells, families, ids)
    assert teachers == {"karras": "s0"} and (cells[1]["base"], cells[1]["dode"]) == ("s3", "s4")
    items = score_items(cells, teachers, {"fd-pixels": "ref"}, ["fd-pixels", "rmse"])
    assert items[0] == ("s0", "fd-pixels", "ref") and ("s4", "rmse", "s0") in items and len(items) == 1 + 4 * 4


def test_variants_are_sampled_and_scored_beside_base_and_dode():
    plan = plan_variants({"timesteps": {"objective": "final", "options": {"learn_lambdas": False}, "nfes": [5]}})
    cells = [{**c, "lambdas": f"lam{i}", "variants": {n: f"v{i}" for n, v in plan.items() if variant_applies(v, c)}}
             for i, c in enumerate(plan_cells(["euler"], [3, 5], None, "karras"))]
    assert [c["variants"] for c in cells] == [{}, {"timesteps": "v1"}]
    families, jobs = sampling_jobs("gaussian", cells, {"solver": "dpmpp_2m", "factor": 4}, 8, 0, 4)
    assert [j["lambdas_id"] for j in jobs[1:]] == [None, "lam0", None, "lam1", "v1"]
    cells, teachers = with_samples(cells, families, [f"s{i}" for i in range(len(jobs))])
    assert cells[1]["samples"] == {"base": "s3", "dode": "s4", "timesteps": "s5"}
    assert len(score_items(cells, teachers, {}, ["rmse"])) == 5


@pytest.mark.parametrize(("change", "message"), [
    ({"model": "sd-turbo"}, "unknown model 'sd-turbo'"),
    ({"teacher_solver": "rk4"}, "unknown teacher solver 'rk4'"),
    ({"teacher_factor": 0}, "teacher_factor must be >= 1"),
    ({"correction": "both"}, "unknown correction 'both'"),
    ({"objective": "adamw"}, "unknown objective 'adamw'"),
    ({"objective_options": {"learn_sigmas": True}}, r"objective 'step' has no option\(s\) \['learn_sigmas'\]"),
    ({"variants": {"fast": {"objective": "final", "options": {"iters": 3}}}}, r"no option\(s\) \['iters'\]"),
    ({"variants": {"fast": {"options": {}}}}, "must be a mapping with 'objective'"),
    ({"variants": {"base": {"objective": "final"}}}, "variant name 'base' is taken"),
    ({"alignment": "roughly"}, "unknown alignment 'roughly'"),
    ({"alignment": "official", "solvers": ["euler", "dpmpp_2m"]}, r"use alignment=exact for \['dpmpp_2m'\]"),
    ({"variants": {"v": {"objective": "final", "solvers": ["rk4"]}}}, "unknown solver 'rk4'"),
    ({"holdout": 1.0}, r"holdout must be a fraction in \(0, 1\)"),
    ({"metrics": ["fid", "lpips"]}, r"unknown metric\(s\) \['lpips'\]"),
    ({"solvers": ["heun"], "nfes": [4]}, "heun makes odd NFEs only"),
])
def test_a_bad_pipeline_parameter_is_one_clear_error(change, message):
    check_pipeline(PIPELINE)
    with pytest.raises(ValueError, match=message):
        check_pipeline({**PIPELINE, **change})


def test_sample_and_score_checks_catch_contradictions():
    sample = {"model": "gaussian", "solver": None, "nfe": None, "family": "karras", "lambdas": None, "n_samples": 4,
              "batch_size": 2, "num_shards": 1}
    with pytest.raises(ValueError, match="give solver and nfe"):
        check_sample(sample)
    with pytest.raises(ValueError, match="drop solver/nfe"):
        check_sample({**sample, "lambdas": "abc", "solver": "euler"})
    check_sample({**sample, "solver": "euler", "nfe": 3})
    with pytest.raises(ValueError, match="not both"):
        check_score({**sample, "metrics": ["auto"], "samples": ["a"], "lambdas": ["b"]})


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
             "teacher": None, "change_pct": -50.0, "guard": {"dode": "fitted"}, "variants": {"timesteps": 0.125}},
            {"solver": "euler", "nfe": 3, "metric": "fd-pixels", "label": "FD-pixels", "base": 0.0, "dode": 2.0,
             "teacher": 1.0, "change_pct": None, "guard": {"dode": "base"}, "variants": {}}]
    text = text_table(rows).splitlines()
    assert text[0].split()[-4:] == ["D-ODE", "timesteps", "teacher", "change"]
    assert text[2].split() == ["euler", "3", "RMSE", "to", "teacher", "0.5", "0.25", "0.125", "—", "-50.0%"]
    assert text[3].split()[-3:] == ["—", "1", "—"]
    md = markdown_tables(rows)
    assert "### RMSE to teacher" in md and "| euler | 3 | 0.5 | 0.25 | 0.125 | — | -50.0 % | dode: fitted |" in md


def test_few_step_summary_judges_each_variant_against_its_own_base_and_sibling():
    from dode.sweep import few_step_summary, plan_variants

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
