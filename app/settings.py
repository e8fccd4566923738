"""Service settings (``VQVAE_*`` environment variables): limits, batching and where the checkpoint lives."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from PIL import Image
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.arguments import MAX_PORT
from app.logs import LogFormat
from app.service_links import is_link_value, link_variables, links_warning
from models.allocator import DEFAULT_RETAIN_MB, MAX_RETAIN_MB
from models.cpus import THREADS_PER_CPU_LIMIT, max_torch_threads
from models.limits import MIN_SIDE

# Resolved from the package, not the working directory, so `vqvae-serve` works from anywhere in a clone.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "weights" / "vqvae.safetensors"

# The smallest VQVAE_MIN_SIZE an operator may set. Below 11x11, SSIM's window is the largest odd one that fits
# (models.quality); scikit-image computes it down to 1x1, but under 7x7 a window holds too few pixels of the
# sigma-1.5 Gaussian for the score to say much about structure.
SSIM_MIN_SIDE = 7
# The highest VQVAE_MAX_PIXELS: Pillow's decompression-bomb threshold (89,478,485 pixels, about 9459x9459). Above it
# Pillow warns of every such image, and refuses those over twice as many before the service's own limit is checked,
# with a message that contradicts the limit the operator set. One forward pass of a 4096x4096 image already took
# 22 s on the 2-core VM with the default model shipped before session 28; the shipped `wide` one took 18.9 s at
# 2048x2048 (README, VQVAE_MAX_PIXELS).
MAX_PIXELS_CEILING = Image.MAX_IMAGE_PIXELS or 89_478_485


QUEUE_IMAGES = 16  # VQVAE_MAX_QUEUE_PIXELS's default, in images of VQVAE_MAX_PIXELS
ENV_PREFIX = "VQVAE_"  # each setting is the environment variable of its name in capitals after this
_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")  # path segments, none empty, no ? or #
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


class Settings(BaseSettings):
    """Everything an operator may tune; architecture is not here, it travels inside the checkpoint."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    checkpoint: Path = Field(
        default=DEFAULT_CHECKPOINT, description="safetensors checkpoint written by models.checkpoint"
    )
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="where inference runs")
    torch_threads: int = Field(
        default=0,
        ge=0,
        description=f"intra-op threads for torch (0: torch's default), {THREADS_PER_CPU_LIMIT} per usable CPU at most",
    )
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="largest request body accepted (413 above)")
    max_json_bytes: int = Field(
        default=256 * 1024,
        ge=1,
        description="largest JSON body (/decode) accepted (413 above): parsed and validated on the event loop, so "
        "kept small (2 MiB of one-index rows held the loop for about 1.2 s); an /encode answer of the largest image "
        "VQVAE_MAX_PIXELS lets through takes at most about 160 KB (a start-up warning says when it could take more)",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="seconds a request body may take to arrive in full after the request's headers (408 after): a "
        "client that stalls or trickles its upload holds a connection until then. 30 s carries the 20 MiB body "
        "limit over about 6 Mbit/s; an MRI slice's few tens of KiB over far slower links (at most 600 s)",
    )
    shutdown_timeout_s: int = Field(
        default=8,
        ge=1,
        le=3600,
        description="seconds requests under way may take to finish once the server is told to stop (SIGTERM, "
        "Ctrl-C); then each gets a 503 and the server exits: 8 s is within `docker stop`'s 10 s before its SIGKILL. "
        "Applied by vqvae-serve (and the Docker image), not by a plain `uvicorn app.main:create_app` (at most 3600 s)",
    )
    port: int = Field(
        default=8000,
        ge=1,
        le=MAX_PORT,
        description="TCP port vqvae-serve listens on when --port is not given. The Docker image's health check asks "
        "this port (reading it as the server does), so set VQVAE_PORT rather than --port there. Not 0: a health check "
        "could not know which free port was taken (--port 0 takes one)",
    )
    keep_alive_s: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="seconds an idle connection is kept open after an answer, for the client's next request "
        "(uvicorn's default, 5 s). Behind a proxy or load balancer that reuses connections, set it above the proxy's "
        "own idle timeout (60 s on an AWS ALB), or the proxy may send a request on a connection the service is "
        "closing and answer its caller 502. Applied by vqvae-serve (and the Docker image), not by a plain "
        "`uvicorn app.main:create_app` (whole seconds, at most 3600)",
    )
    header_timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=600,
        description="seconds a connection may take to send a request's headers in full, from its opening or, on a kept "
        "connection, from the previous answer or the request's first byte, whichever came later (408 and closed "
        "after): a client that sends nothing, or trickles its headers, would "
        "otherwise hold a connection, and a file descriptor, forever. Applied by vqvae-serve (and the Docker image), "
        "not by a plain `uvicorn app.main:create_app` (at most 600 s)",
    )
    max_connections: int = Field(
        default=256,
        ge=1,
        description="connections open at once, idle kept ones included; one more gets a 503 with Retry-After as soon "
        "as it is made, and is closed. Each may be uploading up to VQVAE_MAX_BODY_BYTES, spooled to the temporary "
        "folder past 1 MiB, before the model's queue is asked. Per server process (each of --workers N has its "
        "own, and the kernel may hand one of them more connections than the others). Applied by vqvae-serve (and "
        "the Docker image), not by a plain `uvicorn app.main:create_app`",
    )
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (its chain after it) to serve HTTPS with, with VQVAE_TLS_KEYFILE; unset: plain "
        "HTTP, for a TLS-terminating proxy in front. Applied by vqvae-serve (and the Docker image)",
    )
    tls_keyfile: Path | None = Field(
        default=None, description="the certificate's private key (PEM, unencrypted), with VQVAE_TLS_CERTFILE"
    )
    root_path: str = Field(
        default="",
        description="the path prefix a reverse proxy serves the service under (/vqvae) and strips from the "
        "requests it forwards: the docs pages then load their scripts and schema from under it, and the schema names "
        "it as its server. Empty: served at the root. Applied by vqvae-serve (and the Docker image); a plain "
        "`uvicorn app.main:create_app` takes uvicorn's --root-path",
    )
    max_pixels: int = Field(
        default=1024 * 1024,
        ge=1,
        description="largest width*height accepted (413 above): four times a 512x512 MRI slice. Time and memory grow "
        "with it, and every request queued behind such an image waits for it (README, Settings)",
    )
    min_size: int = Field(
        default=MIN_SIDE, ge=SSIM_MIN_SIDE, description="smallest width and height accepted (422 below)"
    )
    inline_max_bytes: int = Field(
        default=32 * 1024,
        ge=0,
        description="PNG uploads up to this size are decoded on the event loop when their image is small too (see "
        "inline_max_pixels); larger ones, and every other format, on a worker thread",
    )
    inline_max_pixels: int = Field(
        default=512 * 512,
        ge=0,
        description="images up to this many pixels are decoded and encoded on the event loop, larger ones on a "
        "worker thread (0: always a worker thread)",
    )
    parallel_batches: int = Field(
        default=0,
        ge=0,
        description="forward passes run at once under load, each on one torch thread (a lone request still gets "
        "all of them); 0: the torch thread count on the CPU, 1 on CUDA; "
        f"{THREADS_PER_CPU_LIMIT} per usable CPU at most",
    )
    malloc_retain_mb: int = Field(
        default=DEFAULT_RETAIN_MB,
        ge=0,
        le=MAX_RETAIN_MB,
        description="freed memory each thread's malloc arena keeps mapped for the next forward pass, so that the pass "
        f"does not page-fault its buffers in again (glibc only; see models.allocator); 0: glibc's defaults; at most "
        f"{MAX_RETAIN_MB} (glibc takes a C int of bytes)",
    )
    max_batch_size: int = Field(default=4, ge=1, description="most requests grouped into one forward pass")
    max_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="how long a batch waits for companions, only under load (at most 1 s)"
    )
    max_queue: int = Field(default=256, ge=1, description="requests waiting for the model before 503 is answered")
    max_queue_pixels: int = Field(
        default=0,
        ge=0,
        description="pixels of the images waiting for the model before 503 is answered (a request is never refused "
        f"for its size while none waits); 0: {QUEUE_IMAGES} times VQVAE_MAX_PIXELS (with the defaults 256 OASIS "
        "slices, or 16 images of 1024x1024). Counting requests alone let 256 of the largest images queue: minutes of "
        "work and gigabytes of memory from a few hundred KB of uploads",
    )
    log_level: LogLevel = "info"
    log_format: LogFormat = Field(
        default="text",
        description="text: a line per record, its time first; json: one JSON object per line (time, level, logger, "
        "message, and an access line's client, method, path, http_version and status), for log pipelines. Applied "
        "by vqvae-serve (and the Docker image), not by a plain `uvicorn app.main:create_app`",
    )
    log_probes: bool = Field(
        default=False,
        description="write the access-log lines of health probes (GET or HEAD /healthz and /readyz) answered 2xx; "
        "a failed probe is always logged. Applied by vqvae-serve (and the Docker image)",
    )
    docs: bool = Field(
        default=True,
        description="serve the API's docs pages (/docs, /redoc) and its schema (/openapi.json); false: each is a 404",
    )
    metrics: bool = Field(default=True, description="serve GET /metrics (Prometheus); false: a 404")

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        """``VQVAE_CHECKPOINT=`` (a compose file's unset ``${VAR}``) read as ``.``: "a folder, not a checkpoint"."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty; leave it unset to serve the shipped checkpoint, or give a .safetensors file")
        return value

    @field_validator("tls_certfile", "tls_keyfile", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``VQVAE_TLS_CERTFILE=`` (a compose file's unset ``${VAR}``): no TLS, not the current folder."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _certificate_with_its_key(self) -> Settings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            given, missing = ("CERTFILE", "KEYFILE") if self.tls_keyfile is None else ("KEYFILE", "CERTFILE")
            raise ValueError(
                f"{ENV_PREFIX}TLS_{given} is set but {ENV_PREFIX}TLS_{missing} is not: HTTPS needs the certificate "
                "and its private key"
            )
        return self

    @field_validator("port", mode="before")
    @classmethod
    def _not_a_service_link(cls, value: object) -> object:
        """``VQVAE_PORT=tcp://10.96.0.12:8000``, set by Kubernetes for a Service named vqvae, is not a port for
        this process to listen on (``app.service_links``): the default applies, as if it were unset."""
        return cls.model_fields["port"].default if is_link_value(value) else value

    @field_validator("root_path")
    @classmethod
    def _a_path_prefix(cls, value: str) -> str:
        """A prefix a browser can join the docs pages' paths to: ``vqvae`` or ``/vqvae/`` would give ``vqvae/docs``
        or ``/vqvae//docs``, and a query or a fragment would cut them off."""
        if value == "/":  # the root itself: no prefix
            return ""
        if value and not _ROOT_PATH.fullmatch(value):
            raise ValueError("a path that starts with / and does not end with it (/vqvae, /lab/vqvae), or empty")
        return value

    @field_validator("torch_threads", "parallel_batches")
    @classmethod
    def _sane_threads(cls, value: int) -> int:
        """Each parallel batch is a thread with its own buffers: 128 of them took 1.6 GB at start-up."""
        if value > max_torch_threads():
            raise ValueError(f"at most {max_torch_threads()} ({THREADS_PER_CPU_LIMIT} per usable CPU)")
        return value

    @field_validator("max_pixels")
    @classmethod
    def _within_pillows_bomb_threshold(cls, value: int) -> int:
        if value > MAX_PIXELS_CEILING:
            side = math.isqrt(MAX_PIXELS_CEILING)
            raise ValueError(
                f"at most {MAX_PIXELS_CEILING} (Pillow's decompression-bomb threshold, about {side}x{side})"
            )
        return value

    @property
    def queue_pixels(self) -> int:
        """The budget of queued pixels in force (``max_queue_pixels``, or its default)."""
        return self.max_queue_pixels or QUEUE_IMAGES * self.max_pixels

    @model_validator(mode="after")
    def _a_largest_image_can_queue(self) -> Settings:
        """A queue that cannot hold one of the largest images would refuse it whenever another request waits."""
        if self.max_queue_pixels and self.max_queue_pixels < self.max_pixels:
            raise ValueError(
                f"{ENV_PREFIX}MAX_QUEUE_PIXELS ({self.max_queue_pixels}) is under {ENV_PREFIX}MAX_PIXELS "
                f"({self.max_pixels}): the largest images would be refused whenever another request waits; raise "
                "the one or lower the other"
            )
        return self

    @model_validator(mode="after")
    def _an_image_can_pass(self) -> Settings:
        """A pixel limit under the smallest accepted image would refuse every image."""
        if self.max_pixels < self.min_size**2:
            raise ValueError(  # no field to name it by: name the variables, as settings_problems does for one
                f"{ENV_PREFIX}MAX_PIXELS ({self.max_pixels}) is under {ENV_PREFIX}MIN_SIZE squared "
                f"({self.min_size**2}): every image would be refused; raise the one or lower the other"
            )
        return self

    @field_validator("log_level", "log_format", "device", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        """Accept INFO as well as info, CPU as well as cpu: operators type both."""
        return value.lower() if isinstance(value, str) else value


def requested_log_format(environ: Mapping[str, str]) -> LogFormat:
    """``VQVAE_LOG_FORMAT`` as ``Settings`` reads it (the name and the value in any case), "text" unless it says
    json: for the lines written before the settings are known to be valid."""
    name = f"{ENV_PREFIX}LOG_FORMAT"
    value = next((value for key, value in environ.items() if key.upper() == name), "")
    return "json" if value.lower() == "json" else "text"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Warnings for ``VQVAE_*`` variables that name no setting, which pydantic-settings ignores: a misspelt
    ``VQVAE_MAX_PIXEL`` would leave the limit at its default without a word. Each names the nearest setting; the
    service links Kubernetes sets for a Service named vqvae get one warning together."""
    known = [f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields]
    links = link_variables(environ)
    warnings = [links_warning(links)] if links else []
    for variable in sorted(environ):
        name = variable.upper()  # pydantic-settings reads the variables whatever their case
        if name.startswith(ENV_PREFIX) and name not in known and variable not in links:
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            hint = f"; did you mean {near[0]}?" if near else "; the settings are listed in the README"
            warnings.append(f"{variable} is not a setting and is ignored{hint}")
    return warnings
