"""Settings: defaults, layer precedence, validation messages that name the option and its source."""

from __future__ import annotations

import dataclasses

import pytest

from core.config import LOG_LEVELS, OPTIONS, OPTIONS_BY_NAME, Settings, load_settings
from core.errors import ConfigError


def test_defaults_match_the_declared_options() -> None:
    settings = load_settings()
    assert settings == Settings()
    for spec in OPTIONS:
        assert getattr(settings, spec.name) == spec.default
    assert (settings.host, settings.port, settings.workers, settings.log_level) == (
        "127.0.0.1",
        8080,
        0,
        "INFO",
    )


def test_every_option_has_a_unique_env_var_and_flag() -> None:
    envs = [spec.env for spec in OPTIONS]
    flags = [spec.flag for spec in OPTIONS]
    assert len(set(envs)) == len(envs) == len(OPTIONS)
    assert len(set(flags)) == len(flags)
    for spec in OPTIONS:
        assert spec.env and spec.env == spec.env.upper()
        assert spec.flag == "--" + spec.name.replace("_", "-")
        assert spec.help
        assert spec.kind in (str, int, float, bool)
    assert {spec.name for spec in OPTIONS} == {f.name for f in dataclasses.fields(Settings)}


def test_every_default_passes_its_own_validation() -> None:
    flags = {spec.name: str(spec.default) for spec in OPTIONS}
    assert load_settings(flags=flags) == Settings()


@pytest.mark.parametrize(
    ("toml", "env", "flags", "expected"),
    [
        (None, None, None, 8080),
        ("port = 1001", None, None, 1001),
        ("port = 1001", {"WS_PORT": "1002"}, None, 1002),
        ("port = 1001", {"WS_PORT": "1002"}, {"port": "1003"}, 1003),
        (None, {"WS_PORT": "1002"}, {"port": "1003"}, 1003),
        ("port = 1001", None, {"port": "1003"}, 1003),
        ("port = 1001", {"WS_PORT": "1002"}, {"port": None}, 1002),
        ("port = 1001", {"OTHER": "1"}, {"host": "0.0.0.0"}, 1001),
    ],
    ids=[
        "default",
        "toml-over-default",
        "env-over-toml",
        "flag-over-env",
        "flag-over-env-no-toml",
        "flag-over-toml",
        "none-flag-is-absent",
        "unrelated-layers",
    ],
)
def test_precedence(
    toml: str | None, env: dict[str, str] | None, flags: dict[str, str | None] | None, expected: int
) -> None:
    assert load_settings(toml_text=toml, env=env, flags=flags).port == expected


def test_layers_merge_per_option() -> None:
    settings = load_settings(
        toml_text='host = "10.0.0.1"\nworkers = 2\nport = 9000',
        env={"WS_WORKERS": "3", "LOG_LEVEL": "warning"},
        flags={"port": "9100"},
    )
    assert (settings.host, settings.workers, settings.port, settings.log_level) == (
        "10.0.0.1",
        3,
        9100,
        "WARNING",
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"env": {"OBSERVATORY_QUERY_TIMEOUT": " 2.5 "}}, 2.5),
        ({"toml_text": "query_timeout = 5"}, 5.0),
        ({"toml_text": "query_timeout = 5.5"}, 5.5),
        ({"flags": {"query_timeout": "7"}}, 7.0),
    ],
    ids=["env-float", "toml-int-for-float", "toml-float", "flag-int-text"],
)
def test_float_options(kwargs: dict[str, object], expected: float) -> None:
    value = load_settings(**kwargs).query_timeout  # type: ignore[arg-type]
    assert value == expected
    assert isinstance(value, float)


@pytest.mark.parametrize(
    ("source", "text"),
    [(source, text) for source in ("toml", "env", "flag") for text in ("debug", "Warning", "CRITICAL")]
    + [("env", " error "), ("flag", " error ")],
)
def test_log_level_is_case_insensitive(source: str, text: str) -> None:
    kwargs = {
        "toml": {"toml_text": f'log_level = "{text}"'},
        "env": {"env": {"LOG_LEVEL": text}},
        "flag": {"flags": {"log_level": text}},
    }[source]
    level = load_settings(**kwargs).log_level  # type: ignore[arg-type]
    assert level == text.strip().upper()
    assert level in LOG_LEVELS


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"env": {"WS_PORT": "abc"}}, ["port", "WS_PORT", "abc"]),
        ({"env": {"WS_PORT": ""}}, ["port", "WS_PORT"]),
        ({"env": {"WS_PORT": "80.5"}}, ["port", "WS_PORT"]),
        ({"env": {"WS_PORT": "0x50"}}, ["port", "WS_PORT"]),
        ({"env": {"WS_PORT": "0"}}, ["port", "WS_PORT", "below"]),
        ({"env": {"WS_PORT": "65536"}}, ["port", "WS_PORT", "above"]),
        ({"flags": {"port": "-1"}}, ["port", "--port", "below"]),
        ({"flags": {"workers": "many"}}, ["workers", "--workers"]),
        ({"env": {"WS_HEARTBEAT_INTERVAL": "soon"}}, ["heartbeat_interval", "WS_HEARTBEAT_INTERVAL"]),
        ({"env": {"WS_HEARTBEAT_INTERVAL": "0.01"}}, ["heartbeat_interval", "below"]),
        ({"env": {"WS_HEARTBEAT_INTERVAL": "inf"}}, ["heartbeat_interval", "above"]),
        ({"env": {"WS_HEARTBEAT_INTERVAL": "-inf"}}, ["heartbeat_interval", "below"]),
        ({"env": {"LOG_LEVEL": "verbose"}}, ["log_level", "LOG_LEVEL", "DEBUG"]),
        ({"flags": {"log_level": "trace"}}, ["log_level", "--log-level"]),
        ({"env": {"OBSERVATORY_INGEST": "http://x:1"}}, ["ingest_endpoint", "OBSERVATORY_INGEST"]),
        ({"env": {"OBSERVATORY_BUS": "inproc://bus"}}, ["bus_endpoint", "not a ZeroMQ endpoint"]),
        ({"env": {"OBSERVATORY_BUS": "127.0.0.1:5558"}}, ["bus_endpoint", "OBSERVATORY_BUS"]),
        ({"flags": {"query_endpoint": ""}}, ["query_endpoint", "--query-endpoint"]),
        ({"toml_text": "port = true"}, ["port", "config file", "True"]),
        ({"toml_text": "port = 8080.0"}, ["port", "config file"]),
        ({"toml_text": 'port = "8080"'}, ["port", "config file"]),
        ({"toml_text": "heartbeat_interval = false"}, ["heartbeat_interval", "config file"]),
        ({"toml_text": "host = 1"}, ["host", "config file"]),
        ({"toml_text": "log_level = 3"}, ["log_level", "config file"]),
        ({"toml_text": "port = 70000"}, ["port", "config file", "above"]),
        ({"toml_text": 'ingest_endpoint = "udp://x"'}, ["ingest_endpoint", "config file"]),
        ({"toml_text": "bogus = 1\nport = 1"}, ["bogus", "config file"]),
        ({"toml_text": "[server]\nport = 1"}, ["server", "config file"]),
        ({"toml_text": "port = "}, ["config file"]),
        ({"toml_text": "port = 1\nport = 2"}, ["config file"]),
        ({"toml_text": "port = 0", "toml_source": "/etc/obs.toml"}, ["port", "/etc/obs.toml"]),
        ({"toml_text": "nope = 1", "toml_source": "/etc/obs.toml"}, ["nope", "/etc/obs.toml"]),
        ({"toml_text": "port = ", "toml_source": "/etc/obs.toml"}, ["/etc/obs.toml"]),
    ],
    ids=[
        "env-int-not-number",
        "env-int-empty",
        "env-int-is-float",
        "env-int-hex",
        "env-int-below",
        "env-int-above",
        "flag-int-below",
        "flag-int-not-number",
        "env-float-not-number",
        "env-float-below",
        "env-float-inf",
        "env-float-minus-inf",
        "env-log-level",
        "flag-log-level",
        "env-endpoint-scheme",
        "inproc-refused",
        "env-endpoint-no-scheme",
        "flag-endpoint-empty",
        "toml-bool-for-int",
        "toml-float-for-int",
        "toml-string-for-int",
        "toml-bool-for-float",
        "toml-int-for-str",
        "toml-int-for-log-level",
        "toml-int-above",
        "toml-endpoint-scheme",
        "toml-unknown-key",
        "toml-unknown-table",
        "toml-syntax",
        "toml-duplicate-key",
        "toml-source-named-on-value",
        "toml-source-named-on-unknown",
        "toml-source-named-on-syntax",
    ],
)
def test_bad_values_name_option_and_source(kwargs: dict[str, object], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)  # type: ignore[arg-type]
    for needle in needles:
        assert needle in str(caught.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"env": {"WS_HEARTBEAT_INTERVAL": "nan"}}, {"toml_text": "heartbeat_timeout = nan"}],
    ids=["env", "toml"],
)
def test_nan_float_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="heartbeat"):
        load_settings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["tcp://127.0.0.1:1", "ipc:///tmp/obs.sock"])
def test_endpoint_schemes_accepted(scheme: str) -> None:
    assert load_settings(env={"OBSERVATORY_BUS": scheme}).bus_endpoint == scheme


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [(spec.name, spec.low, spec.high) for spec in OPTIONS if spec.low is not None and spec.kind is int],
)
def test_int_bounds_are_inclusive(name: str, low: float, high: float) -> None:
    spec = OPTIONS_BY_NAME[name]
    assert getattr(load_settings(env={spec.env: str(int(low))}), name) == int(low)
    assert getattr(load_settings(env={spec.env: str(int(high))}), name) == int(high)
    with pytest.raises(ConfigError, match=name):
        load_settings(env={spec.env: str(int(low) - 1)})
    with pytest.raises(ConfigError, match=name):
        load_settings(env={spec.env: str(int(high) + 1)})


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    changed = settings.replace(port=9)
    assert (changed.port, settings.port) == (9, 8080)


def test_tls_needs_both_the_certificate_and_the_key() -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_settings(env={"SSL_CERT_PATH": "/etc/cert.pem"})
    assert load_settings(env={"SSL_CERT_PATH": "/c.pem", "SSL_KEY_PATH": "/k.pem"}).ssl_key_path == "/k.pem"


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({"WS_HEARTBEAT_INTERVAL": "5", "WS_HEARTBEAT_TIMEOUT": "5"}, True),
        ({"WS_HEARTBEAT_INTERVAL": "5", "WS_HEARTBEAT_TIMEOUT": "2"}, True),
        ({"WS_HEARTBEAT_INTERVAL": "5", "WS_HEARTBEAT_TIMEOUT": "6"}, False),
        ({"WS_HEARTBEAT_INTERVAL": "5"}, False),  # the default timeout (10) exceeds it
    ],
    ids=["equal", "shorter", "longer", "default-timeout-longer"],
)
def test_heartbeat_timeout_may_not_exceed_the_interval(env: dict[str, str], ok: bool) -> None:
    if ok:
        load_settings(env=env)
    else:
        with pytest.raises(ConfigError, match=r"heartbeat_timeout .* must not exceed heartbeat_interval"):
            load_settings(env=env)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("ON", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("off", False),
        ("0", False),
    ],
)
def test_bool_options_from_text(text: str, expected: bool) -> None:
    assert load_settings(env={"OBSERVATORY_AUTH": text}).auth is expected
    assert load_settings(flags={"auth": text}).auth is expected


def test_bool_option_rejects_other_words() -> None:
    with pytest.raises(ConfigError, match=r"auth .from OBSERVATORY_AUTH.: 'maybe' is not true or false"):
        load_settings(env={"OBSERVATORY_AUTH": "maybe"})
