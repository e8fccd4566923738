"""Settings come from VQVAE_* variables; bad ones stop vqvae-serve with one line, not a traceback."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from app.cli import main
from app.settings import DEFAULT_CHECKPOINT, MAX_PIXELS_CEILING, Settings, unknown_variables


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VQVAE_CHECKPOINT", str(tmp_path / "m.safetensors"))
    monkeypatch.setenv("VQVAE_MAX_PIXELS", "1024")
    monkeypatch.setenv("VQVAE_MAX_WAIT_MS", "0.5")
    monkeypatch.setenv("VQVAE_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("VQVAE_INLINE_MAX_PIXELS", "0")
    monkeypatch.setenv("VQVAE_INLINE_MAX_BYTES", "1000")
    monkeypatch.setenv("VQVAE_BODY_TIMEOUT_S", "2.5")
    monkeypatch.setenv("VQVAE_DEVICE", "CPU")  # as VQVAE_LOG_LEVEL, either case (it was refused)
    monkeypatch.setenv("VQVAE_LOG_FORMAT", "JSON")
    monkeypatch.setenv("VQVAE_LOG_PROBES", "yes")
    monkeypatch.setenv("VQVAE_DOCS", "false")
    monkeypatch.setenv("VQVAE_METRICS", "0")
    settings = Settings()
    assert settings.checkpoint == tmp_path / "m.safetensors"
    assert (settings.max_pixels, settings.max_wait_ms, settings.log_level) == (1024, 0.5, "warning")
    assert (settings.inline_max_pixels, settings.inline_max_bytes) == (0, 1000)
    assert settings.body_timeout_s == 2.5
    assert settings.device == "cpu"
    assert (settings.log_format, settings.log_probes, settings.docs, settings.metrics) == ("json", True, False, False)
    assert Settings(root_path="/").root_path == ""  # no prefix, said as the root itself
    assert settings.queue_pixels == 16 * 1024  # VQVAE_MAX_QUEUE_PIXELS unset: 16 of the largest images
    assert Settings(max_queue_pixels=5000).queue_pixels == 5000


def test_the_default_checkpoint_is_found_from_the_package_not_the_working_directory() -> None:
    assert Path(__file__).resolve().parents[2] / "models" / "weights" / "vqvae.safetensors" == DEFAULT_CHECKPOINT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("min_size", 3),
        ("max_queue", 0),
        ("device", "tpu"),
        ("inline_max_pixels", -1),
        ("inline_max_bytes", -1),
        ("parallel_batches", -1),
        ("max_wait_ms", float("inf")),  # was accepted, then killed the model thread under load
        ("torch_threads", 100_000),  # was a segfault at start-up
        ("parallel_batches", 128),  # a thread each: 1.6 GB at start-up
        ("malloc_retain_mb", 4096),  # glibc takes an int of bytes: clamped, while the log said 4096 MB
        ("max_pixels", 10),  # under min_size squared: every image would be refused
        ("max_queue_pixels", 1000),  # under max_pixels: the largest images refused whenever another waits
        ("max_pixels", 89_478_486),  # over Pillow's bomb threshold: it warned of, then refused, images under it
        ("port", 65536),
        ("port", 0),  # any free port: the Docker health check could not know which
        ("port", -1),
        ("body_timeout_s", 0),
        ("body_timeout_s", -1),
        ("body_timeout_s", 601),
        ("body_timeout_s", float("inf")),
        ("body_timeout_s", float("nan")),
        ("root_path", "vqvae"),  # the docs pages' paths would be vqvae/docs-assets/..., relative to the page
        ("root_path", "/vqvae/"),
        ("root_path", "/lab//vqvae"),
        ("root_path", "/vqvae?x=1"),
        ("root_path", "/vqvae#top"),
        ("log_format", "xml"),
        ("max_connections", 0),
        ("log_probes", "sometimes"),
        ("docs", "maybe"),
    ],
)
def test_invalid_values_are_refused(name: str, value: object) -> None:
    with pytest.raises(ValidationError, match=f"(?i){name}"):  # the field, or its variable (VQVAE_MAX_PIXELS)
        Settings(**{name: value})


def test_the_readme_documents_every_setting() -> None:
    """Each setting is a row of the README's table, so an operator finds the variable (VQVAE_PORT was added with
    its row; nothing checked that)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [line.split(" | ")[0] for line in readme.splitlines() if line.startswith("| `VQVAE_")]
    missing = [name for name in Settings.model_fields if not any(f"`VQVAE_{name.upper()}`" in row for row in rows)]
    assert missing == []


def test_the_pixel_limit_goes_up_to_pillows_bomb_threshold_and_says_so_past_it() -> None:
    """Past Pillow's threshold its bomb guard, not the operator's limit, decided: a warning per image, and a 413
    naming a limit the operator had not set for those over twice the threshold."""
    assert Settings(max_pixels=MAX_PIXELS_CEILING).max_pixels == MAX_PIXELS_CEILING == Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValidationError, match=r"at most 89478485 \(Pillow's decompression-bomb threshold"):
        Settings(max_pixels=MAX_PIXELS_CEILING + 1)


def test_an_empty_thread_count_is_refused_with_any_number_of_workers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: refused with one worker, but with --workers 2 silently replaced by each worker's share of the CPUs."""
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("served with an invalid setting"))
    for workers in ("1", "2"):
        monkeypatch.setenv("VQVAE_TORCH_THREADS", "")
        assert main(["--workers", workers]) == 2
        assert capsys.readouterr().err.startswith("vqvae-serve: invalid settings: VQVAE_TORCH_THREADS:")


def _serve_refusal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str) -> str:
    """What ``vqvae-serve`` prints on stderr when it refuses to start with these variables set (exit 2, not served)."""
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("served with an invalid setting"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([]) == 2
    return capsys.readouterr().err.strip()


def test_serve_reports_invalid_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Named by the variable the operator set, with its value (a review: "min_size: ...", and for a value that is no
    number "unable to parse string as an integer" alone)."""
    error = _serve_refusal(monkeypatch, capsys, VQVAE_MIN_SIZE="3")
    assert error.startswith("vqvae-serve: invalid settings: VQVAE_MIN_SIZE: ") and error.endswith(" (got '3')")
    assert "\n" not in error
    assert _serve_refusal(monkeypatch, capsys, VQVAE_MIN_SIZE="8", VQVAE_MAX_PIXELS="abc") == (
        "vqvae-serve: invalid settings: VQVAE_MAX_PIXELS: Input should be a valid integer, unable to parse string as "
        "an integer (got 'abc')"
    )
    monkeypatch.delenv("VQVAE_MAX_PIXELS")
    # two settings at odds: named by their variables, not by the fields
    assert _serve_refusal(monkeypatch, capsys, VQVAE_MIN_SIZE="2000") == (
        "vqvae-serve: invalid settings: VQVAE_MAX_PIXELS (1048576) is under VQVAE_MIN_SIZE squared (4000000): every "
        "image would be refused; raise the one or lower the other"
    )


@pytest.mark.parametrize(("name", "value"), [("VQVAE_LOG_FORMAT", "json"), ("vqvae_log_format", "JSON")])
def test_under_json_logs_the_lines_before_the_server_are_json_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, value: str
) -> None:
    """A pipeline that parses each line as JSON took the reason of a failed start, plain text, as a line without a
    level: an alert on errors missed it. The variable is read as ``Settings`` reads it, in any case."""
    missing = tmp_path / "nowhere.safetensors"
    env = {name: value, "VQVAE_FROBNICATE": "1", "VQVAE_CHECKPOINT": str(missing)}
    error = _serve_refusal(monkeypatch, capsys, **env)
    warning, refusal = (json.loads(line) for line in error.splitlines())  # every line is JSON, and there are two
    assert {key: warning[key] for key in ("level", "logger")} == {"level": "WARNING", "logger": "vqvae-serve"}
    assert warning["message"].startswith("VQVAE_FROBNICATE is not a setting and is ignored")
    assert {key: refusal[key] for key in ("level", "logger")} == {"level": "ERROR", "logger": "vqvae-serve"}
    assert refusal["message"] == f"cannot load checkpoint: {missing}: checkpoint file not found"
    assert refusal["time"].startswith(str(datetime.now().year))
    # The settings themselves wrong: still JSON, as asked.
    refusal = json.loads(_serve_refusal(monkeypatch, capsys, VQVAE_MIN_SIZE="3").splitlines()[-1])
    assert refusal["level"] == "ERROR" and refusal["message"].startswith("invalid settings: VQVAE_MIN_SIZE: ")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_refused_argument_is_one_json_line_under_json_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    """argparse's usage and error, three plain lines, reached a JSON pipeline as lines without a level (a review)."""
    monkeypatch.setenv("VQVAE_LOG_FORMAT", log_format)
    with pytest.raises(SystemExit) as stopped:
        main(["--port", "99999"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    said = "argument --port: must be a TCP port from 0 to 65535, got 99999"
    if log_format == "text":  # argparse's own, as before
        assert error.startswith("usage: vqvae-serve") and f"vqvae-serve: error: {said}" in error, error
        return
    (line,) = error.splitlines()
    refusal = json.loads(line)
    assert (refusal["level"], refusal["logger"]) == ("ERROR", "vqvae-serve")
    assert refusal["message"] == f"{said} (see vqvae-serve --help)"


def test_a_log_format_that_is_not_json_leaves_the_lines_before_the_server_plain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``VQVAE_LOG_FORMAT=xml`` is itself the invalid setting: said plainly, as the default format would."""
    assert _serve_refusal(monkeypatch, capsys, VQVAE_LOG_FORMAT="xml").startswith(
        "vqvae-serve: invalid settings: VQVAE_LOG_FORMAT: "
    )


def test_an_empty_checkpoint_variable_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``VQVAE_CHECKPOINT=`` was read as ``.``: "cannot load checkpoint: .: a folder, not a checkpoint file"."""
    assert _serve_refusal(monkeypatch, capsys, VQVAE_CHECKPOINT=" ") == (
        "vqvae-serve: invalid settings: VQVAE_CHECKPOINT: empty; leave it unset to serve the shipped checkpoint, or "
        "give a .safetensors file (got ' ')"
    )


def test_variables_that_name_no_setting_are_warned_of_and_the_service_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt ``VQVAE_MAX_PIXEL`` left the limit at its default without a word (a review)."""
    served: list[int] = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: served.append(kwargs["port"]))
    monkeypatch.setenv("VQVAE_MAX_PIXEL", "4096")
    monkeypatch.setenv("VQVAE_FROBNICATE", "1")
    monkeypatch.setenv("vqvae_log_level", "warning")  # a setting, in lower case: read, so no warning
    assert Settings().log_level == "warning" and Settings().max_pixels == Settings.model_fields["max_pixels"].default
    assert main(["--port", "0"]) == 0
    assert served == [0]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert warnings == [
        "vqvae-serve: warning: VQVAE_FROBNICATE is not a setting and is ignored; the settings are listed in the README",
        "vqvae-serve: warning: VQVAE_MAX_PIXEL is not a setting and is ignored; did you mean VQVAE_MAX_PIXELS?",
    ]


_SERVICE_LINKS = {  # what Kubernetes sets in every pod of a namespace with a Service named vqvae (port name "http")
    "VQVAE_PORT": "tcp://10.96.0.12:8000",
    "VQVAE_PORT_8000_TCP": "tcp://10.96.0.12:8000",
    "VQVAE_PORT_8000_TCP_ADDR": "10.96.0.12",
    "VQVAE_PORT_8000_TCP_PORT": "8000",
    "VQVAE_PORT_8000_TCP_PROTO": "tcp",
    "VQVAE_SERVICE_HOST": "10.96.0.12",
    "VQVAE_SERVICE_PORT": "8000",
    "VQVAE_SERVICE_PORT_HTTP": "8000",
}


@pytest.mark.parametrize("service_port", ["8000", "80"])
def test_kubernetes_service_links_are_ignored_with_one_warning_and_the_service_starts(
    service_port: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Service named vqvae set ``VQVAE_PORT=tcp://10.96.0.12:8000``: vqvae-serve, and the Docker image's health
    check (``Settings().port``), stopped on "invalid settings", and the pod never started."""
    served: list[int] = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: served.append(kwargs["port"]))
    for name, value in _SERVICE_LINKS.items():
        monkeypatch.setenv(name.replace("8000", service_port), value.replace("8000", service_port))
    monkeypatch.setenv("VQVAE_FROBNICATE", "1")  # still warned of on its own
    assert Settings().port == Settings.model_fields["port"].default  # the Service's port is not the container's
    assert main([]) == 0
    assert served == [Settings.model_fields["port"].default]
    names = ", ".join(sorted(name.replace("8000", service_port) for name in _SERVICE_LINKS))
    assert [line for line in capsys.readouterr().err.splitlines() if "warning:" in line] == [
        f"vqvae-serve: warning: {names}: the service links Kubernetes sets for Services named vqvae or vqvae-..., not "
        "settings; ignored (the port is not read from VQVAE_PORT). `enableServiceLinks: false` in the pod spec leaves "
        "them out",
        "vqvae-serve: warning: VQVAE_FROBNICATE is not a setting and is ignored; the settings are listed in the README",
    ]


@pytest.mark.parametrize(
    ("value", "port"), [("9000", 9000), (" tcp://vqvae.lab:9000 ", 8000), ("udp://[fd00::1]:53", 8000)]
)
def test_a_port_variable_is_read_unless_it_is_a_service_link(
    value: str, port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The links' other variables may be absent (another Service's names, a pod spec's own ``VQVAE_PORT``): the
    value alone decides, and a link's port is never taken, since it is the Service's and not the container's."""
    monkeypatch.setenv("VQVAE_PORT", value)
    assert Settings().port == port
    warned = "the service links Kubernetes sets" in "\n".join(unknown_variables({"VQVAE_PORT": value}))
    assert warned == (port == 8000)


@pytest.mark.parametrize("value", ["http://10.96.0.12:8000", "tcp://10.96.0.12", "8000/tcp"])
def test_a_port_variable_like_a_link_but_not_one_is_still_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQVAE_PORT", value)
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_a_port_refused_is_not_blamed_on_a_service_link(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default port, not the link's, is the one refused: the message must not send the operator to VQVAE_PORT."""
    monkeypatch.setattr("app.cli.listen_problem", lambda host, port: f"cannot listen on {host}:{port}: in use")
    monkeypatch.setenv("VQVAE_PORT", _SERVICE_LINKS["VQVAE_PORT"])
    assert main([]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "vqvae-serve: cannot listen on 127.0.0.1:8000: in use"
    monkeypatch.setenv("VQVAE_PORT", "8000")
    assert main([]) == 2
    assert (
        capsys.readouterr().err.splitlines()[-1] == "vqvae-serve: cannot listen on 127.0.0.1:8000: in use (VQVAE_PORT)"
    )


def test_another_services_links_are_named_as_such_not_as_misspelt_settings() -> None:
    """A Service named vqvae-api gave seven "not a setting" warnings, the first "did you mean VQVAE_PORT?"."""
    links = {
        "VQVAE_API_PORT": "tcp://10.96.0.13:80",
        "VQVAE_API_PORT_80_TCP": "tcp://10.96.0.13:80",
        "VQVAE_API_PORT_80_TCP_ADDR": "10.96.0.13",
        "VQVAE_API_SERVICE_HOST": "10.96.0.13",
        "VQVAE_API_SERVICE_PORT": "80",
    }
    (warning,) = unknown_variables(links)
    assert warning.startswith(", ".join(sorted(links)) + ": the service links Kubernetes sets")
    assert "(the port is not read" not in warning  # VQVAE_PORT itself is not among them
    (typo,) = unknown_variables({"VQVAE_MAX_PORT": "80"})  # a name of that shape with no link's value
    assert typo.startswith("VQVAE_MAX_PORT is not a setting and is ignored; ")
