"""The one error table: each kind's exit code, collector_error label and Nagios code are what
the CLI documents (docs/mmrwatch.1, ``--help``), and the one context rule (a ranges-file
error in the daemon) holds in every front end that meets it."""
import pytest

from mmrwatch.agent import cli, exits, metrics, nagios, targetopts
from mmrwatch.agent.monitor import Monitor
from mmrwatch.agent.serve import ServeError
from mmrwatch.collectors import engine, vocab
from mmrwatch.collectors.deadline import Deadline
from mmrwatch.collectors.errors import CheckTimeout, MmrwatchError, RangesError, TargetError
from mmrwatch.collectors.target import Target
from tests.synth import SynthKernel, target

# The contract, written out (not derived from the table): kind -> (exit, label, Nagios).
CONTRACT = {
    "starting": (None, "starting", None),
    "noinput": (66, "noinput", 3), "permission": (77, "permission", 3),
    "debuginfo": (69, "debuginfo", 3), "data": (65, "data", 3), "timeout": (None, "timeout", 3),
    "config": (78, "config", 3), "internal": (70, "internal", 3),
    "usage": (64, None, 3), "oserr": (71, None, 3),
}


def test_the_table_is_the_documented_contract():
    assert {k: (o.exit, o.label, o.nagios) for k, o in exits.OUTCOMES.items()} == CONTRACT
    assert set(exits.OUTCOMES) == set(vocab.ERROR_KINDS) | {vocab.STARTING}
    # the metric's series, in the order they have always been exported
    assert metrics.ERROR_KINDS == ("starting", "noinput", "permission", "debuginfo", "data",
                                   "timeout", "config", "internal")


@pytest.mark.parametrize("err", [TargetError("debuginfo", "x"), RangesError("x"),
                                 CheckTimeout(5), cli.UsageError("x"), ServeError("oserr", "x")])
def test_every_layer_raises_the_one_base_error(err):
    assert isinstance(err, MmrwatchError) and err.kind in vocab.ERROR_KINDS


def test_a_message_is_one_line_whatever_it_was_given():
    assert str(TargetError("data", "a\nb\x1b")) == "a\\nb\\x1b"
    assert len(str(RangesError("x" * 1000))) == 400


@pytest.mark.parametrize("kind,oneshot", [("noinput", 66), ("data", 65)])
def test_a_ranges_file_error_is_its_kind_in_report_and_config_in_the_daemon(kind, oneshot):
    e = RangesError("ranges.toml: cannot read", kind)
    assert exits.outcome(e).exit == oneshot
    assert (exits.outcome(e, daemon=True).exit, exits.outcome(e, daemon=True).label) == (78, "config")
    t = TargetError(kind, "vmcore: cannot read")        # the target's own files: no such rule
    assert exits.outcome(t, daemon=True) == exits.outcome(t) == exits.OUTCOMES[kind]


def _target() -> Target:
    """A small synthetic kernel (no UV, direct map only), live so that confirm re-walks."""
    k = SynthKernel(ram_mib=32)
    k.direct_map_ram()
    return target(k, live=True)


def test_the_monitor_labels_a_ranges_file_broken_on_reload_config():
    def sources():
        raise RangesError("ranges.toml: not valid TOML", vocab.DATA)
    t = _target()
    m = Monitor(lambda: t, sources, 300, 30)
    m.run_once()
    h, snap = m.state
    assert (h.success, h.error_kind, h.error, snap) == (False, "config",
                                                        "ranges.toml: not valid TOML", None)


def test_the_plugin_and_the_daemon_time_out_with_the_same_line(monkeypatch, capsys):
    t = _target()
    monkeypatch.setattr(targetopts, "open_target", lambda args: t)
    assert cli.main(["check", "--timeout", "1e-9"]) == 3
    assert capsys.readouterr().out == "MMRWATCH UNKNOWN - check did not finish within 1e-09 s\n"
    m = Monitor(lambda: t, lambda: [engine.uv_source], 300, 1e-9)
    m.run_once()
    assert (m.state[0].error_kind, m.state[0].error) == ("timeout",
                                                         "check did not finish within 1e-09 s")


def test_the_plugin_judges_a_healthy_kernel_ok(monkeypatch):
    t = _target()
    monkeypatch.setattr(targetopts, "open_target", lambda args: t)
    args = cli.build_parser().parse_args(["check"])
    code, out = nagios.run(args)
    assert code == exits.NAGIOS_OK and out.startswith("MMRWATCH OK - "), out
    with pytest.raises(CheckTimeout):                    # the shared sequence's deadline
        from mmrwatch.agent import onecheck
        onecheck.run(lambda: t, engine.default_sources(None), Deadline(0.0), 7, 0.0)
