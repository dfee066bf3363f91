"""The configuration: dispatcher.toml, the environment and the flags (flags > environment >
file > defaults), `dispatcher config show`, and every mistake in a file as one line
(exit 2, nothing started) — with click's CliRunner and as real subprocesses."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner, Result

from dispatcher.cli import cli
from dispatcher.config import KEYS, ConfigError, Origin, Settings, env_var, load_settings

from .listeners import free_port
from .seps import ROOT

FULL = """\
region = "filed"
database_url = "postgresql://u:secret@db.example/d"
cross_region_url = "postgresql://x.example/timers"
log_format = "json"
log_level = "warning"
database_roles = "on"
listener_database_url = "postgresql://l@db.example/d"
sep_database_url = "postgresql://s@db.example/d"
monitor_database_url = "postgresql://m@db.example/d"

[listener]
host = "127.0.0.2"
port = 7311
max_sessions = 500

[http]
host = "0.0.0.0"
port = 7381

[web]
host = "0.0.0.1"
port = 7391

[up]
app = "some.app"
seps = 3
batch = 8
listeners = 2
"""


def _no_dispatcher_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}


def _runner_env(**given: str) -> dict[str, str | None]:
    """An environment for CliRunner: no DISPATCHER_ variable of the test process (nor one
    an earlier command of this process exported, as logging does) but GIVEN."""
    names = {k for k in os.environ if k.startswith("DISPATCHER_")}
    names |= {env_var(k) for k in KEYS} | {"DISPATCHER_CONFIG", "DISPATCHER_HOME"}
    return {**dict.fromkeys(names), **given}


def invoke(*args: str, **env: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=_runner_env(**env))


def python_m(
    module: str, *args: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def show_json(result: Result | subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    """`config show --json` as {key: row}."""
    out = json.loads(result.stdout)
    return {row["key"]: row for row in out["settings"]}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


# --- load_settings: each layer, and their order ---------------------------------------


def test_defaults_without_a_file(home: Path) -> None:
    """No file, no variable: every default, and the origin says so."""
    s = load_settings(env={"DISPATCHER_HOME": str(home)})
    assert s.config_file is None
    assert (s.region, s.database_url, s.cross_region_url) == ("default", None, None)
    assert (s.log_format, s.log_level) == ("text", "info")
    assert (s.listener.host, s.listener.port) == ("127.0.0.1", 7300)
    assert (s.http.host, s.http.port) == ("127.0.0.1", 7380)
    assert (s.web.host, s.web.port) == ("127.0.0.1", 7390)
    assert (s.up.app, s.up.seps, s.up.batch) == ("dispatcher_examples.sample", None, 1)
    assert s.up.listeners == 1
    assert {str(s.origin(k)) for k in KEYS} == {"default"}


def test_the_file_of_the_home_sets_every_key(home: Path) -> None:
    (home / "dispatcher.toml").write_text(FULL)
    s = load_settings(env={"DISPATCHER_HOME": str(home)})
    assert s.config_file == home / "dispatcher.toml"
    assert s.region == "filed" and s.database_url == "postgresql://u:secret@db.example/d"
    assert s.cross_region_url == "postgresql://x.example/timers"
    assert (s.log_format, s.log_level) == ("json", "warning")
    assert (s.listener.host, s.listener.port, s.http.host, s.http.port) == (
        "127.0.0.2",
        7311,
        "0.0.0.0",
        7381,
    )
    assert (s.up.app, s.up.seps, s.up.batch, s.up.listeners) == ("some.app", 3, 8, 2)
    assert (s.database_roles, s.listener.max_sessions) == ("on", 500)
    assert (s.listener_database_url, s.sep_database_url, s.monitor_database_url) == (
        "postgresql://l@db.example/d",
        "postgresql://s@db.example/d",
        "postgresql://m@db.example/d",
    )
    assert all(s.origin(k) == Origin("file", str(home / "dispatcher.toml")) for k in KEYS)


def test_the_environment_beats_the_file_for_every_key(home: Path) -> None:
    (home / "dispatcher.toml").write_text(FULL)
    env = {
        "DISPATCHER_HOME": str(home),
        "DISPATCHER_REGION": "envy",
        "DISPATCHER_DATABASE_URL": "postgresql://e/d",
        "DISPATCHER_CROSS_REGION_URL": "postgresql://e/t",
        "DISPATCHER_LOG_FORMAT": "text",
        "DISPATCHER_LOG_LEVEL": "debug",
        "DISPATCHER_LISTENER_HOST": "::1",
        "DISPATCHER_LISTENER_PORT": "7400",
        "DISPATCHER_LISTENER_MAX_SESSIONS": "20",
        "DISPATCHER_DATABASE_ROLES": "off",
        "DISPATCHER_LISTENER_DATABASE_URL": "postgresql://le/d",
        "DISPATCHER_SEP_DATABASE_URL": "postgresql://se/d",
        "DISPATCHER_MONITOR_DATABASE_URL": "postgresql://me/d",
        "DISPATCHER_HTTP_HOST": "10.0.0.1",
        "DISPATCHER_HTTP_PORT": "7401",
        "DISPATCHER_WEB_HOST": "10.0.0.2",
        "DISPATCHER_WEB_PORT": "7402",
        "DISPATCHER_UP_APP": "env.app",
        "DISPATCHER_UP_SEPS": "5",
        "DISPATCHER_UP_BATCH": "2",
        "DISPATCHER_UP_LISTENERS": "3",
    }
    s = load_settings(env=env)
    assert s.region == "envy" and s.database_url == "postgresql://e/d"
    assert s.cross_region_url == "postgresql://e/t"
    assert (s.log_format, s.log_level) == ("text", "debug")
    assert (s.listener.host, s.listener.port, s.http.host, s.http.port) == (
        "::1",
        7400,
        "10.0.0.1",
        7401,
    )
    assert (s.up.app, s.up.seps, s.up.batch, s.up.listeners) == ("env.app", 5, 2, 3)
    assert (s.database_roles, s.listener.max_sessions) == ("off", 20)
    assert s.sep_database_url == "postgresql://se/d"
    assert all(s.origin(k) == Origin("env", env_var(k)) for k in KEYS)


def test_an_empty_variable_is_unset(home: Path) -> None:
    (home / "dispatcher.toml").write_text('region = "filed"\n')
    s = load_settings(env={"DISPATCHER_HOME": str(home), "DISPATCHER_REGION": ""})
    assert s.region == "filed" and s.origin("region").source == "file"


def test_flags_beat_the_environment(home: Path) -> None:
    (home / "dispatcher.toml").write_text(FULL)
    env = {"DISPATCHER_HOME": str(home), "DISPATCHER_REGION": "envy"}
    flags = {"region": "flagged", "log_format": "text", "log_level": None}
    s = load_settings(flags, env=env)
    assert s.region == "flagged" and s.origin("region") == Origin("flag", "--region")
    assert s.log_format == "text" and str(s.origin("log_format")) == "flag --log-format"
    assert s.log_level == "warning" and s.origin("log_level").source == "file"  # None: not given


def test_which_file(home: Path, tmp_path: Path) -> None:
    """--config beats DISPATCHER_CONFIG, which beats $DISPATCHER_HOME/dispatcher.toml."""
    (home / "dispatcher.toml").write_text('region = "home"\n')
    named = tmp_path / "named.toml"
    named.write_text('region = "named"\n')
    flagged = tmp_path / "flagged.toml"
    flagged.write_text('region = "flagged"\n')
    env = {"DISPATCHER_HOME": str(home)}
    assert load_settings(env=env).region == "home"
    env["DISPATCHER_CONFIG"] = str(named)
    assert load_settings(env=env).region == "named"
    s = load_settings(env=env, config=flagged)
    assert s.region == "flagged" and s.config_file == flagged


def test_from_env_reads_the_file(home: Path, tmp_path: Path) -> None:
    """Settings.from_env (python -m sep, the listener's children, alembic) sees the file
    of DISPATCHER_HOME or DISPATCHER_CONFIG, under the environment; its fields are kept."""
    (home / "dispatcher.toml").write_text('region = "home"\ndatabase_url = "postgresql://h/d"\n')
    s = Settings.from_env({"DISPATCHER_HOME": str(home)})
    assert (s.home, s.database_url, s.region, s.cross_region_url) == (
        home,
        "postgresql://h/d",
        "home",
        None,
    )
    assert s.pgdata == home / "pgdata"
    other = tmp_path / "other.toml"
    other.write_text('region = "other"\n')
    env = {"DISPATCHER_HOME": str(home), "DISPATCHER_CONFIG": str(other)}
    assert Settings.from_env(env).region == "other"
    assert Settings.from_env({**env, "DISPATCHER_REGION": "envy"}).region == "envy"
    assert Settings.from_env(env).with_region("flagged").region == "flagged"


# --- mistakes: one line naming the key and the file, exit 2 -----------------------------

BAD_FILES = [
    ('regoin = "x"\n', "regoin: unknown key"),
    ("[up]\nsepz = 2\n", "up.sepz: unknown key"),
    ("[htpp]\nport = 1\n", "htpp: unknown table"),
    ('[listener]\nport = "7300"\n', 'listener.port: must be an integer, not "7300"'),
    ("region = 5\n", "region: must be a string, not 5"),
    ("[up]\nbatch = true\n", "up.batch: must be an integer, not true"),
    ("[up]\nbatch = 1.5\n", "up.batch: must be an integer, not 1.5"),
    ("up = 3\n", "up: must be a table, not 3"),
    ("[up]\nseps = 0\n", "up.seps: must be 1..1000, not 0"),
    ("[listener]\nport = 70000\n", "listener.port: must be 1..65535, not 70000"),
    ("[http]\nport = 0\n", "http.port: must be 1..65535, not 0"),
    ('log_format = "xml"\n', "log_format: must be one of 'text' or 'json', not \"xml\""),
    ('log_level = "loud"\n', "log_level: must be one of"),
    ('region = "a b"\n', 'region: must be 1-40 letters, digits or _.-, not "a b"'),
    ('[listener]\nhost = ""\n', "listener.host: must not be empty"),
    ("region = \n", "not valid TOML"),
    ("[up]\nseps = 2\n[up]\nbatch = 2\n", "not valid TOML"),
]


@pytest.mark.parametrize(("body", "expected"), BAD_FILES)
def test_a_bad_file_is_one_line_naming_the_key(
    home: Path, tmp_path: Path, body: str, expected: str
) -> None:
    path = tmp_path / "dispatcher.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"DISPATCHER_HOME": str(home)}, config=path)
    assert caught.value.message.startswith(f"{path}: {expected}"), caught.value.message
    assert caught.value.exit_code == 2


def test_a_bad_variable_names_the_variable(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"^DISPATCHER_UP_SEPS: must be 1\.\.1000, not \"0\""):
        load_settings(env={"DISPATCHER_HOME": str(home), "DISPATCHER_UP_SEPS": "0"})
    with pytest.raises(ConfigError, match=r"^DISPATCHER_LISTENER_PORT: must be an integer"):
        load_settings(env={"DISPATCHER_HOME": str(home), "DISPATCHER_LISTENER_PORT": "x"})


def _bad_setups(tmp_path: Path) -> list[tuple[list[str], dict[str, str], str]]:
    """(global options, environment, expected in the one line) for each kind of mistake."""
    setups = []
    for i, (body, expected) in enumerate(BAD_FILES):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(body)
        setups.append((["--config", str(path)], {}, f"{path}: {expected}"))
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes(b'region = "r\xe9gion"\n')
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    setups += [
        (["--config", str(not_utf8)], {}, f"{not_utf8}: not UTF-8"),
        (["--config", str(folder)], {}, f"{folder}: is a directory"),
        (["--config", str(tmp_path / "nope.toml")], {}, "--config: "),
        ([], {"DISPATCHER_CONFIG": str(tmp_path / "nope.toml")}, "DISPATCHER_CONFIG: "),
        ([], {"DISPATCHER_UP_BATCH": "0"}, "DISPATCHER_UP_BATCH: must be 1..1000"),
    ]
    return setups


def test_every_mistake_through_the_cli_runner(home: Path, tmp_path: Path) -> None:
    """CliRunner: exit 2, exactly one line, and `up` did not start the database."""
    for options, env, expected in _bad_setups(tmp_path):
        result = invoke(*options, "up", DISPATCHER_HOME=str(home), **env)
        assert result.exit_code == 2, (options, result.output)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert expected in lines[0], (expected, lines[0])
        assert not (home / "pgdata").exists()


def test_each_kind_of_mistake_as_a_subprocess(home: Path, tmp_path: Path) -> None:
    """`python -m dispatcher [...] up`: exit 2, one line, no traceback, nothing started
    (every fourth bad file, and every other kind of mistake; the CliRunner test above
    has them all)."""
    from concurrent.futures import ThreadPoolExecutor

    setups = _bad_setups(tmp_path)
    chosen = setups[: len(BAD_FILES) : 4] + setups[len(BAD_FILES) :]

    def run(options: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        env = {**_no_dispatcher_env(), "DISPATCHER_HOME": str(home), **extra}
        return python_m("dispatcher", *options, "up", "--port", str(free_port()), env=env)

    with ThreadPoolExecutor(2) as pool:  # one-shot processes: mostly their start-up
        outs = list(pool.map(lambda s: run(s[0], s[1]), chosen))
    for (options, _, expected), out in zip(chosen, outs, strict=True):
        assert out.returncode == 2, (options, out.stderr)
        assert "Traceback" not in out.stderr
        assert out.stderr.splitlines() == [out.stderr.strip()], out.stderr
        assert out.stderr.startswith("error: ") and expected in out.stderr, out.stderr
        assert not (home / "pgdata").exists(), "nothing may be started"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text('region = "x"\n')
    path.chmod(0)
    result = invoke("--config", str(path), "config", "show", DISPATCHER_HOME=str(home))
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {path}: cannot read it")


def test_an_unreadable_file_as_root_too(home: Path, tmp_path: Path) -> None:
    """A path that cannot be read as a file (a FIFO would block: a dangling link)."""
    link = tmp_path / "dangling.toml"
    link.symlink_to(tmp_path / "gone" / "x.toml")
    result = invoke("--config", str(link), "config", "show", DISPATCHER_HOME=str(home))
    assert result.exit_code == 2 and "--config: " in result.stderr


def test_python_m_sep_reports_a_bad_file(home: Path) -> None:
    """A SEP process (Settings.from_env) says what is wrong with the file, exit 2."""
    (home / "dispatcher.toml").write_text("[up]\nseps = 0\n")
    env = {**_no_dispatcher_env(), "DISPATCHER_HOME": str(home)}
    out = python_m("sep", "--app", "dispatcher_examples.sample", env=env)
    assert out.returncode == 2, out.stderr
    assert (
        out.stderr.strip() == f"error: {home / 'dispatcher.toml'}: up.seps: must be 1..1000, not 0"
    )


# --- config show ----------------------------------------------------------------------


def test_config_show_names_each_origin(home: Path) -> None:
    """Text: one line per setting, KEY VALUE ORIGIN; the password is not shown."""
    (home / "dispatcher.toml").write_text(
        'region = "filed"\ndatabase_url = "postgresql://u:secret@h/d"\n[up]\nseps = 3\n'
    )
    result = invoke(
        "--log-level", "error", "config", "show", DISPATCHER_HOME=str(home), DISPATCHER_UP_BATCH="4"
    )
    assert result.exit_code == 0, result.output
    assert "secret" not in result.stdout
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    path = str(home / "dispatcher.toml")
    assert result.stdout.splitlines()[0] == f"# file: {path}"
    assert lines["home"] == [str(home), "env", "DISPATCHER_HOME"]
    assert lines["region"] == ["filed", "file", path]
    assert lines["database_url"] == ["postgresql://u:***@h/d", "file", path]
    assert lines["log_level"] == ["error", "flag", "--log-level"]
    assert lines["up.batch"] == ["4", "env", "DISPATCHER_UP_BATCH"]
    assert lines["up.seps"] == ["3", "file", path]
    assert lines["http.port"] == ["7380", "default"]
    assert lines["cross_region_url"] == ["-", "default"]
    assert set(lines) == {"home", *KEYS}


def test_config_show_json(home: Path) -> None:
    result = invoke("config", "show", "--json", DISPATCHER_HOME=str(home))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["file"] is None
    rows = show_json(result)
    assert rows["up.seps"] == {"key": "up.seps", "value": None, "source": "default", "name": None}
    assert rows["listener.port"]["value"] == 7300
    assert [r["key"] for r in out["settings"]] == ["home", *KEYS]


def test_precedence_of_each_layer_in_a_subprocess(home: Path, tmp_path: Path) -> None:
    """flag > env > file > default, as `python -m dispatcher config show --json` sees it."""
    path = tmp_path / "given.toml"
    path.write_text(FULL)
    env = {
        **_no_dispatcher_env(),
        "DISPATCHER_HOME": str(home),
        "DISPATCHER_REGION": "envy",
        "DISPATCHER_LOG_LEVEL": "debug",
        "DISPATCHER_LISTENER_PORT": "7400",
    }
    out = python_m(
        "dispatcher", "--config", str(path), "--region", "flagged", "config", "show", "--json",
        env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = show_json(out)
    assert json.loads(out.stdout)["file"] == str(path)
    assert (rows["region"]["value"], rows["region"]["source"]) == ("flagged", "flag")
    assert rows["region"]["name"] == "--region"
    assert (rows["log_level"]["value"], rows["log_level"]["name"]) == (
        "debug",
        "DISPATCHER_LOG_LEVEL",
    )
    assert (rows["listener.port"]["value"], rows["listener.port"]["source"]) == (7400, "env")
    assert (rows["up.batch"]["value"], rows["up.batch"]["name"]) == (8, str(path))
    assert rows["log_format"]["value"] == "json" and rows["log_format"]["source"] == "file"
    assert rows["database_url"]["value"] == "postgresql://u:***@db.example/d"
    # without the file: the defaults
    env.pop("DISPATCHER_LOG_LEVEL")
    out = python_m("dispatcher", "config", "show", "--json", env=env)
    rows = show_json(out)
    assert (rows["up.batch"]["value"], rows["up.batch"]["source"]) == (1, "default")
    assert (rows["log_level"]["value"], rows["log_level"]["source"]) == ("info", "default")
    assert (rows["region"]["value"], rows["region"]["source"]) == ("envy", "env")


def test_log_format_from_the_file_reaches_the_logs(home: Path) -> None:
    """log_format = "json" in the file: the log lines are JSON (a flag says text)."""
    (home / "dispatcher.toml").write_text('log_format = "json"\nlog_level = "debug"\n')
    env = {**_no_dispatcher_env(), "DISPATCHER_HOME": str(home)}
    code = "from dispatcher.logs import get_logger; get_logger('t').info('hello', n=1)"
    probe = [
        sys.executable,
        "-c",
        "import sys; from dispatcher.cli import cli; from dispatcher.config import Settings; "
        f"cli.main(sys.argv[1:], standalone_mode=False); {code}",
    ]
    out = subprocess.run(
        [*probe, "config", "show"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stderr.strip().splitlines()[-1])["event"] == "hello"
    out = subprocess.run(
        [*probe, "--log-format", "text", "config", "show"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "event=hello" in out.stderr.strip().splitlines()[-1]


# --- up and listener take their defaults from the configuration --------------------------


def test_up_takes_its_port_from_flag_env_file(home: Path) -> None:
    """`up` checks its listener port first: a busy port shows which one it chose."""
    busy = [socket.socket() for _ in range(3)]
    try:
        ports = []
        for s in busy:
            s.bind(("127.0.0.1", 0))
            s.listen()
            ports.append(s.getsockname()[1])
        file_port, env_port, flag_port = ports
        (home / "dispatcher.toml").write_text(f"[listener]\nport = {file_port}\n")

        def refused(*args: str, **env: str) -> str:
            result = invoke("up", *args, DISPATCHER_HOME=str(home), **env)
            assert result.exit_code == 2, result.output
            return result.stderr

        assert f"127.0.0.1:{file_port}" in refused()
        assert f"127.0.0.1:{env_port}" in refused(DISPATCHER_LISTENER_PORT=str(env_port))
        out = refused("--port", str(flag_port), DISPATCHER_LISTENER_PORT=str(env_port))
        assert f"127.0.0.1:{flag_port}" in out
    finally:
        for s in busy:
            s.close()
    assert not (home / "pgdata").exists()


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """The stderr of PROC until NEEDLE shows (read from the pipe itself: no buffer of
    a file object hides what has come)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            if needle.encode() in seen:
                return seen.decode(errors="replace")
        elif proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} not seen; output:\n{seen.decode(errors='replace')}")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_listener_takes_host_and_port_from_the_file(
    cli_env: dict[str, str], tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    (tmp_path / "dispatcher.toml").write_text(f'[listener]\nhost = "127.0.0.1"\nport = {port}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "listener"],
        env=cli_env,  # DISPATCHER_HOME is tmp_path
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    started.append(proc)
    _read_until(proc, f"listening on 127.0.0.1:{port}", timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_up_runs_what_the_file_says(
    cli_env: dict[str, str], tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    """[up] app, seps, batch and [listener] port of a file named by --config reach the SEP
    supervisor and the listener of `up` (and its children read the same file)."""
    port = free_port()
    path = tmp_path / "elsewhere.toml"
    path.write_text(
        f'[up]\napp = "dispatcher_examples.sample"\nseps = 1\nbatch = 3\n'
        f"[listener]\nport = {port}\n"
    )
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dispatcher", "--config", str(path)),
            *("up", "--no-monitor", "--no-http", "--no-web"),
        ],
        env=cli_env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    started.append(proc)
    seen = _read_until(proc, "Ctrl-C stops everything", timeout=120)
    assert "is up: 1 SEPs running dispatcher_examples.sample" in seen, seen
    assert f"listener   127.0.0.1:{port}" in seen, seen
    children = psutil.Process(proc.pid).children(recursive=True)
    cmdlines = [" ".join(c.cmdline()) for c in children]
    assert any("sep start" in c and "--batch=3" in c for c in cmdlines), cmdlines
    assert any(c.environ().get("DISPATCHER_CONFIG") == str(path.absolute()) for c in children), (
        "the children read the same file"
    )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
