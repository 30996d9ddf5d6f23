"""The flows under a Prefect test server, on the analytic mixture, in a temporary registry."""

import warnings
from pathlib import Path

import pytest

import dode
from dode.common.config import build
from dode.core.grids import GridSpec
from dode.distillation.teacher import TeacherConfig
from dode.models import load_model
from dode.pipeline.runs import DistillRun
from dode.store.lambdas import load_lambdas
from dode.store.registry import Registry

TEACHER = {"factor": 4, "n_samples": 48, "batch_size": 48}
SMALL = {"model": "mixture-smooth", "solvers": ("euler", "heun", "dpmpp_2m"), "nfes": (3, 5), "teacher": TEACHER,
         "sampling": {"n_samples": 96, "batch_size": 48}}


def task_states(flow_run_id):
    from dode_flows.tasks import settled_task_runs

    return [(r.name.rsplit("-", 1)[0], r.state.name) for r in settled_task_runs(flow_run_id)]


def read_artifacts():
    """Every artifact on the session's server, page by page (one call returns at most a page, and the
    session's other flow runs fill the server)."""
    from prefect.client.orchestration import get_client

    found, page = [], [None]
    with get_client(sync_client=True) as client:
        while page:
            page = client.read_artifacts(limit=200, offset=len(found))
            found += page
    return found


@pytest.fixture(scope="module")
def swept(prefect_harness, tmp_path_factory):
    from dode_flows.pipeline import pipeline_flow

    reg = Registry(tmp_path_factory.mktemp("registry"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = pipeline_flow(config=SMALL, registry=reg.uri, return_state=True)
    return reg, state.result(), state.state_details.flow_run_id, caught


def test_one_teacher_per_grid_size_serves_every_solver(swept):
    reg = swept[0]
    trajectories = {a.id: a for a in reg.list("trajectory")}
    steps = {a.params["grid"]["steps"] for a in trajectories.values()}
    assert steps == {2, 3, 5}  # heun NFE 3 -> 2 steps; euler, dpmpp_2m NFE 3 and heun NFE 5 -> 3; NFE 5 -> 5
    users = {}
    for lam in reg.list("lambdas"):
        (parent,) = lam.parents
        assert trajectories[parent].params["grid"] == lam.params["grid"]
        users.setdefault(parent, set()).add((lam.params["solver"], lam.params["nfe"]))
    shared = next(t for t in trajectories.values() if t.params["grid"]["steps"] == 3)
    assert users[shared.id] == {("euler", 3), ("dpmpp_2m", 3), ("heun", 5)}
    assert all(t.params["teacher_solver"] == "dpmpp_2m" for t in trajectories.values())


@pytest.mark.parametrize(("solver", "nfe"), [("euler", 3), ("heun", 5)])
def test_lambdas_equal_a_direct_distillation(swept, solver, nfe):
    # The stored teacher (float32 on disk) gives the lambdas dode.distill gets from its own teacher run.
    reg, _, _, _ = swept
    (art,) = [a for a in reg.list("lambdas") if (a.params["solver"], a.params["nfe"]) == (solver, nfe)]
    stored = load_lambdas(reg, art)
    m = load_model("mixture-smooth")
    teacher = TeacherConfig(**TEACHER)
    assert teacher.solver == "dpmpp_2m" and teacher.seeds == range(1_000_000, 1_000_048)
    sigmas = GridSpec.for_nfe("karras", solver, nfe).sigmas(m.denoiser)
    direct = dode.distill(m.denoiser, teacher.noise(m.shape), sigmas, solver, teacher)
    assert stored.values == pytest.approx(direct.values, rel=1e-4, abs=1e-5)
    decision = [{k: g[k] for k in ("scale", "chosen", "changed") if k in g} for g in (stored.guard, direct.guard)]
    assert decision[0] and decision[0] == decision[1]  # the guard decided alike
    assert stored.teacher["trajectory"] == art.parents[0]


def test_results_table_report_and_ui_artifacts(swept):
    reg, out, run_id, caught = swept
    rows = {(r["solver"], r["nfe"], r["metric"]): r for r in out["rows"]}
    assert len(rows) == 6 * 2 and {m for _, _, m in rows} == {"fd-pixels", "rmse"}
    assert rows[("euler", 3, "rmse")]["dode"] < 0.8 * rows[("euler", 3, "rmse")]["base"]  # D-ODE's point
    assert all(r["teacher"] is not None for k, r in rows.items() if k[2] == "fd-pixels")
    report = reg.get(out["report_id"])
    assert {"report.md", "results.json", "lambdas.png", "samples.png", "metric-rmse.png"} <= set(report.files)
    text = reg.read_bytes(report, "report.md").decode()
    assert "| euler | 3 |" in text and "![samples](samples.png)" in text
    assert out["report"].endswith("report.md") and Path(out["report"]).read_text() == text
    named = {"dode-results", "dode-report", "dode-pipeline-progress"}
    artifacts = [a for a in read_artifacts() if a.flow_run_id == run_id and a.key]
    mine = {a.key for a in artifacts}
    assert named <= mine
    ui_report = next(a.data for a in artifacts if a.key == "dode-report")  # what the Prefect UI renders
    # The Prefect UI (3.x) lists a run's own artifacts first, then its tasks' (each group in id order, random
    # uuid4s): the report is the run's only own artifact, so the first card (checked in Chromium: docs/prefect.md).
    assert [a.key for a in artifacts if a.task_run_id is None] == ["dode-report"]
    assert all(a.task_run_id is not None for a in artifacts if a.key in named - {"dode-report"})
    assert "data:image/png;base64," in ui_report and "file://" not in ui_report and "dode artifacts get" in ui_report
    links = mine - named
    assert {f"dode-{a.kind}-{a.id[:12]}" for a in reg.list() if "shard" not in a.params
            and "images.npy" not in a.files} == links  # one link per registry entry (chunks: via their index)
    noisy = [str(w.message) for w in caught if "dode" in w.filename or "flows" in w.filename]
    assert not noisy


def test_unchanged_rerun_is_cached_and_adds_nothing(swept):
    from dode_flows.pipeline import pipeline_flow

    reg, out, _, _ = swept
    before = {a.id for a in reg.list()}
    state = pipeline_flow(config=SMALL, registry=reg.uri, return_state=True)
    assert state.result()["rows"] == out["rows"]
    assert {a.id for a in Registry(reg.uri).list()} == before
    states = task_states(state.state_details.flow_run_id)
    published = {"register-model", "open-progress", "publish-results"}  # run every time: the model check, UI cards
    assert {s for name, s in states if name not in published} == {"Cached"}, states


def test_stage_flows_reuse_the_pipeline_artifacts(swept):
    from dode_flows.stages import distill_flow, sample_flow, score_flow, teacher_flow

    reg, out, _, _ = swept
    row = next(r for r in out["rows"] if (r["solver"], r["nfe"], r["metric"]) == ("euler", 3, "fd-pixels"))
    lam = reg.get(row["lambdas"])
    assert teacher_flow(config={"steps": 3, "teacher": TEACHER}, registry=reg.uri) == lam.parents[0]
    assert distill_flow(config={"solver": "euler", "nfe": 3, "teacher": TEACHER}, registry=reg.uri)["lambdas"] == lam.id
    samples = sample_flow(config={"lambdas": lam.id[:16], "sampling": {**SMALL["sampling"], "num_shards": 2}},
                          registry=reg.uri)
    (score,) = score_flow(config={"samples": [samples], "sampling": {"n_samples": 96}}, registry=reg.uri)
    assert score["value"] == row["dode"]
    again = score_flow(config={"sampling": SMALL["sampling"]}, registry=reg.uri)
    assert sorted(again, key=str) == sorted(out["rows"], key=str)


def test_library_loggers_reach_the_flow_run_logs(prefect_harness):
    # PREFECT_LOGGING_EXTRA_LOGGERS=dode (set by importing flows): dode.* records are shipped with the run's.
    import logging
    import time

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    @flow
    def emits():
        logging.getLogger("dode.pipeline.generate").info("a dode library record")

    run_id = emits(return_state=True).state_details.flow_run_id
    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
    for _ in range(40):
        with get_client(sync_client=True) as client:
            messages = [log.message for log in client.read_logs(log_filter=flt)]
        if "a dode library record" in messages:
            return
        time.sleep(0.25)
    pytest.fail(f"the dode record never reached the API; logs: {messages}")


def test_registry_damage_beats_the_prefect_cache(prefect_harness, tmp_path):
    """Issue: a rerun after deleting a job's samples (or wiping the registry) used to report every task "Cached"
    while the registry lacked the artifacts. The registry is the source of truth: recompute. (What the cache
    checks of a samples job is its index: a damaged chunk is refused when read, test_cache_repair.py.)"""
    import shutil

    from dode_flows.pipeline import pipeline_flow
    from dode_flows.stages import distill_flow

    teacher = {"factor": 2, "n_samples": 16, "batch_size": 16}
    tiny = {"model": "mixture-smooth", "solvers": ("euler",), "nfes": (3,), "teacher": teacher,
            "sampling": {"n_samples": 32, "batch_size": 16}}
    reg = Registry(tmp_path / "registry")
    first = pipeline_flow(config=tiny, registry=reg.uri)
    index = min(a.id for a in reg.list("samples") if "images.npy" not in a.files)
    shutil.rmtree(tmp_path / "registry" / "artifacts" / index)
    again = pipeline_flow(config=tiny, registry=reg.uri, return_state=True)
    states = task_states(again.state_details.flow_run_id)
    again = again.result()
    assert again["rows"] == first["rows"]
    assert Registry(reg.uri).intact(index) and Registry(reg.uri).verify() == []
    assert ("sample", "Completed") in states  # the damaged job ran again; the rest stayed cached
    assert {s for _, s in states} == {"Completed", "Cached"}

    common = {"model": "mixture-smooth", "solver": "euler", "nfe": 3, "teacher": teacher}
    lam = distill_flow(config=common, registry=reg.uri)["lambdas"]
    shutil.rmtree(tmp_path / "registry")  # a wiped registry
    assert distill_flow(config=common, registry=reg.uri)["lambdas"] == lam  # recomputed, same content, same id
    assert Registry(reg.uri).intact(lam)


def test_official_alignment_through_the_distill_flow(swept):
    """`alignment=official` (the reference code's Euler teacher) through the flow equals the library's; it stores
    no teacher (its grid is the solver's own): the lambdas' parent is the model."""
    from dode_flows.stages import distill_flow

    reg = swept[0]
    trajectories = {a.id for a in reg.list("trajectory")}
    config = build(DistillRun, {"solver": "euler", "nfe": 3, "teacher": {**TEACHER, "alignment": "official"}})
    assert config.teacher.solver == "euler"  # the official teacher's default
    out = distill_flow(config=config, registry=reg.uri)
    lam, art = load_lambdas(reg, out["lambdas"]), reg.get(out["lambdas"])
    m = load_model(SMALL["model"])
    direct = dode.distill(m.denoiser, config.teacher.noise(m.shape), config.grid.sigmas(m.denoiser), "euler",
                          config.teacher, config.fit)
    assert lam.values == direct.values and lam.teacher["alignment"] == "official"
    assert out["trajectory"] is None and {a.id for a in Registry(reg.uri).list("trajectory")} == trajectories
    assert list(art.parents) == [reg.find("model", fingerprint=m.fingerprint)[0].id]
    assert art.params["teacher"] == config.teacher.model_dump() and art.params["fit"] == config.fit.model_dump()
    exact = load_lambdas(reg, distill_flow(config={"solver": "euler", "nfe": 3, "teacher": TEACHER},
                                           registry=reg.uri)["lambdas"])
    assert exact.values != lam.values


def test_reevaluation_compares_each_lambdas_with_its_own_teacher(swept):
    """Re-evaluating lambdas fitted to different teachers (exact dpmpp_2m x4, official Euler x4): each is scored
    against the samples of its own teacher, not the first lambdas' teacher."""
    from dode_flows.stages import distill_flow, score_flow

    reg = swept[0]
    ids = [distill_flow(config={"solver": "euler", "nfe": 3, "teacher": teacher}, registry=reg.uri)["lambdas"]
           for teacher in (TEACHER, {**TEACHER, "alignment": "official"})]
    rows = score_flow(config={"lambdas": ids, "sampling": SMALL["sampling"]}, registry=reg.uri)
    assert sorted({r["lambdas"] for r in rows}) == sorted(ids)
    reg = Registry(reg.uri)
    for lam_id, solver in zip(ids, ("dpmpp_2m", "euler")):
        (dode_samples,) = [a for a in reg.list("samples") if a.params.get("job", {}).get("lambdas_id") == lam_id
                           and "shard" not in a.params and "images.npy" not in a.files]
        teachers = {(job["solver"], job["grid"]["steps"], job["lambdas_id"])
                    for job in (reg.get(a.params["reference"]).params["job"] for a in reg.list("score")
                                if a.params["samples"] == dode_samples.id and a.params["metric"] == "rmse")}
        assert (solver, 4 * 3, None) in teachers and {t[0] for t in teachers} == {solver}  # its own teacher only
