"""The command line: every option of every sub-command (and of every `dode run STAGE`) has help text;
`dode sample --lambdas ID` implies solver, NFE and grid; progress bars only when asked for and on a terminal."""

import argparse
import io

import pytest

from dode.cli import build_parser, main
from dode.common import progress
from dode.core.correction import Lambdas
from dode.core.grids import GridSpec
from dode.models import load_model
from dode.store.lambdas import save_lambdas
from dode.store.registry import Registry
from dode.store.samples import load_samples


def sub_parsers(parser: argparse.ArgumentParser, prefix: str = "dode"):
    """(command line, parser) of ``parser`` and every sub-command under it."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from sub_parsers(child, f"{prefix} {name}")


def stage_parsers():
    from dode_flows.cli import STAGES, load_flow, stage_parser

    return [(f"dode run {s}", stage_parser(s, load_flow(s))) for s in STAGES]


def test_every_option_has_help_text():
    parsers = [*sub_parsers(build_parser()), *stage_parsers()]
    missing = [f"{cmd} {action.option_strings[0] if action.option_strings else action.dest}"
               for cmd, p in parsers for action in p._actions
               if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()]
    assert len(parsers) > 10 and not missing, missing


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Lambdas for heun at NFE 5 fitted on a karras grid (params as the distill step writes them), and lambdas
    without a recorded grid."""
    root = tmp_path_factory.mktemp("cli") / "registry"
    reg = Registry(root)
    spec = GridSpec.for_nfe("karras", "heun", 5)
    sigmas = spec.sigmas(load_model("mixture-smooth").denoiser).tolist()
    with_grid = save_lambdas(reg, Lambdas([0.0] * 5, "heun", sigmas), "with-grid", params={"grid": spec.to_dict()})
    bare = save_lambdas(reg, Lambdas([0.0, 0.0], "euler", [80.0, 1.0, 0.0]), "bare")
    return root, reg, with_grid, bare


def sample(root, *argv):
    return main(["sample", "--model", "mixture-smooth", "--sampling-n-samples", "3", "--sampling-batch-size", "3",
                 "--device", "cpu",
                 "--registry", str(root), "--quiet", *map(str, argv)])


def test_lambdas_imply_solver_nfe_and_grid(fitted, capsys):
    root, reg, with_grid, bare = fitted
    assert sample(root, "--lambdas", with_grid.id[:10]) == 0
    job = reg.get(capsys.readouterr().out.split()[-1]).params["job"]
    assert (job["solver"], job["grid"], job["lambdas_id"]) == ("heun", None, with_grid.id)  # theirs, implied
    assert sample(root, "--lambdas", with_grid.id, "--solver", "heun", "--nfe", "5", "--family", "karras") == 0
    art = reg.get(capsys.readouterr().out.split()[-1])
    assert art.params["job"]["grid"] == job["grid"] and len(load_samples(reg, art)) == 3  # agreeing: same job
    assert sample(root, "--lambdas", bare.id) == 0
    job = reg.get(capsys.readouterr().out.split()[-1]).params["job"]
    assert job["grid"] is None and job["solver"] == "euler"


@pytest.mark.parametrize("extra, message", [
    (("--solver", "euler"), "drop solver euler (they imply heun)"),
    (("--nfe", "3"), "drop nfe 3 (they imply 5)"),
    (("--family", "time_uniform", "--nfe", "4"), "drop nfe 4 (they imply 5), family time_uniform (they imply karras)"),
])
def test_conflicting_options_are_one_clear_error(fitted, capsys, extra, message):
    root, reg, with_grid, _ = fitted
    before = {a.id for a in reg.list()}
    assert sample(root, "--lambdas", with_grid.id, *extra) == 2
    err = capsys.readouterr().err
    assert f"fitted for solver heun, NFE 5 on a karras grid; {message}: the lambdas imply them" in err
    assert "Traceback" not in err and {a.id for a in Registry(root).list()} == before


def test_sample_without_lambdas_needs_nfe(tmp_path, capsys):
    assert sample(tmp_path / "reg") == 2
    assert "give nfe (network calls per sample) or sigmas (an explicit grid), or lambdas" in capsys.readouterr().err


def test_sample_on_an_explicit_grid(tmp_path, capsys):
    from dode.store.samples import load_samples

    assert sample(tmp_path / "reg", "--solver", "dpmpp_2m", "--sigmas", "80,5,0.5,0.05,0") == 0
    art = Registry(tmp_path / "reg").get(capsys.readouterr().out.strip())
    assert art.params["job"]["grid"]["values"] == [80.0, 5.0, 0.5, 0.05, 0.0]
    assert load_samples(Registry(tmp_path / "reg"), art).shape[0] == 3
    for bad, message in ((["--sigmas", "80,1,2,0"], "strictly decreasing"), (["--sigmas", "80,x,0"], "invalid float"),
                         (["--sigmas", "80,1,0", "--nfe", "2"], "sigmas is the whole grid: drop nfe and family")):
        try:
            assert sample(tmp_path / "reg", *bad) == 2
        except SystemExit as exit_:  # argparse's own refusal
            assert exit_.code == 2
        assert message in capsys.readouterr().err


def test_progress_bars_are_off_unless_turned_on_and_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    with progress.bar(4, "quiet") as bar:
        bar.update(4)
    assert term.getvalue() == ""  # library default: silent
    with progress.bars(), progress.bar(4, "teacher") as bar:
        bar.update(4)
    assert "teacher:   0%" in term.getvalue() and "0/4" in term.getvalue()
    with progress.bars(False), progress.bar(4, "off") as bar:  # --quiet
        bar.update(4)
    assert "off" not in term.getvalue()


def option_names(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_commands_and_stages_share_option_names():
    # One configuration per command: `dode sample` takes the sample stage's options, by the same names;
    # `dode gaussian` and `dode distill-pipeline` name their fields as the stages do.
    from dode.cli.options import config_options
    from dode.pipeline.runs import SampleRun

    commands = dict(sub_parsers(build_parser()))
    stage = dict(stage_parsers())["dode run sample"]
    config = {f"--{dest.replace('.', '-').replace('_', '-')}" for dest, *_ in config_options(SampleRun)}
    assert config <= option_names(commands["dode sample"]) and config <= option_names(stage)
    assert {"--family", "--solver", "--n-samples", "--first-seed", "--batch-size"} <= option_names(
        commands["dode gaussian"])
    assert {"--family", "--solver", "--nfe", "--teacher-factor", "--fit-correction", "--fit-objective",
            "--fit-options"} <= option_names(commands["dode distill-pipeline"])
    assert not {"--grid", "--n", "--n-samples", "--correction"} & option_names(commands["dode sample"])


@pytest.mark.parametrize("argv, message", [
    (["distill", "--fit-objective", "final", "--fit-options", '{"learn_sigmas": "false"}'],
     "fit.options: objective 'final': learn_sigmas: Input should be a valid boolean"),
    (["distill", "--fit-objective", "final", "--fit-options", "iterations=1.5"],
     "iterations: Input should be a valid integer"),
    (["pipeline", "--variants", '{"v": {"objective": "final", "options": {"activation_checkpointing": "no"}}}'],
     "variants.v.options: objective 'final': activation_checkpointing: Input should be a valid boolean"),
    (["distill", "--nfe", "100000", "--teacher-factor", "1000"], "100000000 steps, above the bound of 100,000"),
    (["distill", "--nfe", "50", "--teacher-n-samples", "100000"], "states in memory, above the bound of 2,000,000"),
])
def test_a_wrongly_typed_or_over_budget_run_is_refused_before_any_flow(argv, message, tmp_path, capsys):
    registry = tmp_path / "registry"
    assert main(["run", *argv, "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not registry.exists() and list(tmp_path.iterdir()) == []  # nothing written
