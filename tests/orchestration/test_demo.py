"""`python -m dode_flows.demo --quick`: the demo's path on the embedded digits model (FD-digits), in a tmp registry."""

from dode.store.registry import Registry


def test_quick_demo_on_the_embedded_model(prefect_harness, tmp_path, capsys):
    from dode_flows.demo import main

    assert main(["--quick", "--no-dask", "--registry", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FD-digits" in out and "RMSE to teacher" in out
    reg = Registry(tmp_path)
    (report,) = reg.list("report")
    assert f"report: {reg.local_path(report, 'report.md')}" in out
    rows = reg.read_json(report, "results.json")["rows"]
    assert {(r["solver"], r["nfe"]) for r in rows} == {("euler", 3), ("euler", 5), ("dpmpp_2m", 3), ("dpmpp_2m", 5)}
    rmse = [r for r in rows if r["metric"] == "rmse"]
    assert sum(r["dode"] for r in rmse) < sum(r["base"] for r in rmse)  # closer to the teacher: what D-ODE fits
    assert all(r["teacher"] > 0 for r in rows if r["metric"] == "fd-digits")
    analytic = next(r for r in rows if (r["solver"], r["nfe"], r["metric"]) == ("dpmpp_2m", 3, "fd-digits"))
    assert set(analytic["variants"]) == {"analytic λ+t", "base+analytic"}
    assert analytic["variants"]["base+analytic"] < analytic["base"] / 5  # 3 calls: the Gaussian's first step
