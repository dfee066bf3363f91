"""The SEP options, defined once (sep/options.py): `dispatcher sep start`, `python -m
sep`, the supervisor's child argv and `dispatcher up` all derive from one list."""

from __future__ import annotations

import sys

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.cli import cli
from sep.__main__ import main as sep_main
from sep.options import OPTIONS, SEPConfig, argv, parse
from sep.supervisor import Supervisor

URL, REGION = "postgresql://x/y", "test"


def _config(**kw: object) -> SEPConfig:
    return SEPConfig(URL, REGION, **kw)  # type: ignore[arg-type]


def test_defaults_are_no_options() -> None:
    assert argv(_config()) == []
    assert parse([], URL, REGION) == _config()


def test_every_option_round_trips() -> None:
    c = _config(
        app="tests.apps.basic",
        capabilities=("gpu", "-x", "a=b", ""),
        standby=True,
        poll_interval=0.25,
        heartbeat_interval=3600.0,
        async_commit=True,
        batch=1000,
        batch_window=0.0071,
    )
    args = argv(c)
    assert "--batch-window=7.1" in args  # ms on the command line, s in SEPConfig
    assert parse(args, URL, REGION) == c


@given(
    app=st.none() | st.text(max_size=20),
    capabilities=st.lists(st.text(max_size=10), max_size=3).map(tuple),
    standby=st.booleans(),
    poll=st.floats(0.01, 3600),
    heartbeat=st.floats(0.01, 3600),
    async_commit=st.booleans(),
    batch=st.integers(1, 1000),
    window=st.floats(0, 60),
)
def test_parse_of_argv_is_the_config(
    app: str | None,
    capabilities: tuple[str, ...],
    standby: bool,
    poll: float,
    heartbeat: float,
    async_commit: bool,
    batch: int,
    window: float,
) -> None:
    c = _config(
        app=app,
        capabilities=capabilities,
        standby=standby,
        poll_interval=poll,
        heartbeat_interval=heartbeat,
        async_commit=async_commit,
        batch=batch,
        batch_window=window,
    )
    assert parse(argv(c), URL, REGION) == c


def test_batch_window_is_in_ms() -> None:
    assert parse(["--batch-window", "7.1"], URL, REGION).batch_window == 0.0071
    assert parse(["--batch", "8", "--batch-window", "0"], URL, REGION).batch_window == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--poll", "nan"], "must be 0.01 to 3600 seconds, not nan"),
        (["--poll", "0.001"], "must be 0.01 to 3600 seconds, not 0.001"),
        (["--heartbeat", "inf"], "must be 0.01 to 3600 seconds, not inf"),
        (["--heartbeat", "soon"], "'soon' is not a number of seconds"),
        (["--batch", "0"], "0 is not in the range 1<=x<=1000"),
        (["--batch", "1001"], "1001 is not in the range 1<=x<=1000"),
        (["--batch-window", "-1"], "must be 0 to 60000 ms, not -1"),
        (["--batch-window", "nan"], "must be 0 to 60000 ms, not nan"),
    ],
)
def test_bounds(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(click.BadParameter, match=message.replace("(", r"\(")):
        parse(args, URL, REGION)
    assert sep_main(args) == 2  # python -m sep: usage, exit 2
    assert message in capsys.readouterr().err


def test_sep_start_and_up_have_the_options() -> None:
    """dispatcher sep start: every SEP option (--app required) and its own --count,
    --metrics-port; python -m sep: the same but --count; up: --batch, the same."""
    from sep.__main__ import command

    start = cli.commands["sep"].commands["start"]  # type: ignore[attr-defined]
    up = cli.commands["up"]
    by_flag = {
        name: {p.opts[0]: p for p in cmd.params if isinstance(p, click.Option)}
        for name, cmd in (("start", start), ("sep", command), ("up", up))
    }
    for o in OPTIONS:
        for name in ("start", "sep"):
            p = by_flag[name][o.flag]
            assert p.help == o.help and p.type.name == by_flag["start"][o.flag].type.name
            if o.kind in ("int", "seconds"):
                assert p.default == o.default, (name, o.flag)
        assert by_flag["start"][o.flag].required is (o.flag == "--app")
        assert not by_flag["sep"][o.flag].required
    assert {"--count", "--metrics-port"} <= set(by_flag["start"]) - set(by_flag["sep"])
    assert by_flag["up"]["--batch"].help == by_flag["start"]["--batch"].help
    # up's own --app: not given on the command line, it comes from the settings
    from dispatcher.config import DEFAULT_APP

    assert by_flag["up"]["--app"].default is None
    assert DEFAULT_APP == "dispatcher_examples.sample"


def test_the_supervisor_passes_its_config_to_its_seps() -> None:
    c = _config(app="tests.apps.basic", capabilities=("x",), batch=4, batch_window=0.002)
    child = Supervisor(c, 2)._argv()
    assert child[:3] == [sys.executable, "-m", "sep"]
    assert parse(child[3:], URL, REGION) == c
