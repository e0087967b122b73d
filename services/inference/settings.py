"""Settings of the inference API: the job settings plus serving, batching, cache and limits.

Built once in `python -m services.inference` (or by a test) and passed to `create_app`; every
field reads `MASKFLEET_<FIELD>` from the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.jobs.settings import JobSettings
from shared.auth import SCOPES, Scope
from shared.imaging import DEFAULT_MAX_PIXELS
from shared.redis import RedisEndpoint
from shared.settings import Stage

Role = Literal["stable", "canary"]

PRODUCTION_MAX_BODY_BYTES = 64 * 1024 * 1024
PRODUCTION_MAX_REDIS_TIMEOUT_MS = 1000.0
PRODUCTION_MIN_POLL_SECONDS = 1.0
PRODUCTION_MAX_INFLIGHT_PIXELS = 400_000_000
"""~2 GB of request memory at ~5 bytes per pixel: more no longer fits the chart's 3 GiB pod."""
PRODUCTION_MAX_HEADER_BYTES = 64 * 1024
PRODUCTION_MAX_READ_TIMEOUT_SECONDS = 120.0
DEFAULT_METRICS_PORT = 9090


class InferenceSettings(JobSettings):
    """Everything `create_app` needs beyond the shared and the job settings (the API accepts,
    reads and cancels jobs, so it enforces the same job limits as the worker)."""

    host: str = "0.0.0.0"
    """Interface uvicorn binds; 0.0.0.0 so the pod IP answers probes and traffic."""

    port: int = Field(default=8080, ge=1, le=65535)
    """HTTP port for /v1, /v2 and the probes: the one the Ingress/HTTPRoute reach."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the separate Prometheus endpoint (/metrics), never routed by the Ingress, as
    Triton and KServe keep metrics off the inference port. 0 serves /metrics on `port` instead
    (development only: production refuses it). Unset: 9090 in production, 0 in development,
    so tests and laptops running several APIs do not fight over one port."""

    api_keys_file: str | None = None
    """JSON file of hashed API keys (`maskfleet-keys create`; the chart mounts it from a
    Secret). Required in production unless `trusted_identity_header` is set."""

    anonymous_scopes: Annotated[frozenset[Scope] | None, NoDecode] = None
    """Scopes granted to callers without a key, comma-separated. Unset: none in production or
    when a keys file is set, else `infer,feedback,jobs` (`make run` on a laptop). Production
    refuses any."""

    trusted_identity_header: str | None = None
    """Header naming the caller, set by an authenticating gateway in front of the API (e.g.
    `X-Authenticated-User`); off by default. Only enable it when the API is reachable through
    that gateway alone: anyone who can reach the pods could otherwise claim any identity."""

    trusted_scopes_header: str = "X-Maskfleet-Scopes"
    """With `trusted_identity_header`: the header in which the gateway lists the caller's
    scopes (comma-separated); an identity without it gets `infer` only."""

    docs_enabled: bool | None = None
    """Serve /docs and /openapi.json. Unset: on in development, off in production (the schema
    lists every route an attacker could try)."""

    access_log: bool = True
    """One JSON line per request with its id, route, status, duration and caller key id (never
    the key)."""

    feedback_rate_per_minute: float = Field(default=120.0, gt=0.0)
    """Sustained corrections per minute one key may send (a Redis token bucket shared by every
    API pod); beyond it 429 with Retry-After."""

    feedback_burst: int = Field(default=60, ge=1)
    """Corrections one key may send at once before the per-minute rate applies."""

    jobs_rate_per_minute: float = Field(default=30.0, gt=0.0)
    """Sustained job submissions per minute one key may make (each job may name up to
    job_max_images images, so this bounds queued work per key, not only requests)."""

    jobs_burst: int = Field(default=30, ge=1)
    """Job submissions one key may make at once before the per-minute rate applies."""

    grpc_enabled: bool = True
    """Serve the Open Inference Protocol v2 over gRPC too (Triton/KServe clients such as
    `tritonclient.grpc`), in the same process and on the same model, batcher and limits."""

    grpc_port: int = Field(default=8081, ge=0, le=65535)
    """gRPC port (HTTP/2 cleartext, `inference.GRPCInferenceService` and `grpc.health.v1`);
    Triton's default is 8001, KServe's 8081. 0 takes any free port (tests)."""

    grpc_max_concurrent_rpcs: int = Field(default=1000, ge=1)
    """Most gRPC calls served at once; beyond it gRPC refuses calls with RESOURCE_EXHAUSTED
    itself (the gRPC counterpart of `limit_concurrency`)."""

    batch_max_size: int = Field(default=16, ge=1, le=256)
    """Most images per model call; 8-32 is where this CPU reaches its ceiling."""

    batch_max_wait_ms: float = Field(default=20.0, ge=0.0, le=10_000.0)
    """The longest the first image of a batch waits for company (`batch_wait`)."""

    batch_wait: Literal["decoding", "always"] = "decoding"
    """`decoding`: wait only for images already admitted and being decoded, so a lone request
    never pays the wait and busy moments get larger batches. `always`: TF Serving's and
    Triton's rule, every batch waits up to `batch_max_wait_ms` for requests that have not
    arrived yet: larger batches when requests come spaced out (open-loop traffic), at the
    price of that wait on every request of a quiet server."""

    codec_threads: int = Field(default=2, ge=1, le=32)
    """Threads decoding images and encoding PNG masks beside the single model thread."""

    stage_poll_seconds: float = Field(default=10.0, ge=0.0)
    """How often the followed stage is re-read; 0 disables polling (a new version needs a
    restart). Ignored when a version is pinned."""

    cache_enabled: bool = True
    """Use the Redis result cache; off means every request runs the model."""

    cache_ttl_seconds: int = Field(default=3600, ge=1, le=30 * 24 * 3600)
    """Lifetime of a cached mask; the key already changes with the model version."""

    cache_max_value_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Masks whose cached record is larger are not cached, so one huge image cannot evict
    thousands of normal ones."""

    cache_redis_url: str = "redis://127.0.0.1:6379/0"
    """The volatile Redis of the result cache (no persistence, `allkeys-lru`; losing it costs
    only recomputation). May be the state Redis in local mode; `rediss://` for TLS."""

    cache_redis_password: SecretStr | None = None
    """`requirepass` of the cache Redis (a Kubernetes Secret in the chart); never logged."""

    redis_socket_timeout_ms: float = Field(default=50.0, gt=0.0)
    """Per-command timeout towards the cache Redis; a slow cache must not slow the API down."""

    redis_connect_timeout_ms: float = Field(default=50.0, gt=0.0)
    """Connect timeout towards the cache Redis, short for the same reason."""

    cache_retry_seconds: float = Field(default=1.0, ge=0.0, le=300.0)
    """After a Redis error the cache is bypassed for this long, so a dead Redis costs one
    timeout per interval instead of one per request."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest request body accepted on image routes, enforced while it streams in (413)."""

    max_body_bytes_in_flight: int = Field(default=256 * 1024 * 1024, ge=1024)
    """All request bodies being received or served at once, in bytes (503 with Retry-After
    beyond), gRPC request messages included (each reserves `max_body_bytes` while it is read):
    bodies are held whole, so without it a few hundred slow uploads of `max_body_bytes` each
    would outgrow any memory limit."""

    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest body of the JSON-only routes (/v1/jobs): a job request is a few KB, and a body
    is parsed whole into memory."""

    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Largest width x height of one image, read from its header before decoding (413
    `too_many_pixels`). 16 MP fits a phone photo; the 128-px model gains nothing from more."""

    max_request_pixels: int = Field(default=48_000_000, ge=1)
    """Sum of width x height over one request's images (413 beyond)."""

    max_mask_output_pixels: int = Field(default=16_000_000, ge=1)
    """Sum over the masks of an OIP `mask` (UINT8 tensor) output, which is stacked and
    serialised whole (413 beyond; `mask_png` has no such limit)."""

    max_json_mask_pixels: int = Field(default=1_048_576, ge=1)
    """Sum over the masks of a `mask` output sent as a JSON list, where every pixel becomes a
    list entry; larger masks must be asked for as binary data or `mask_png` (413)."""

    max_inflight_pixels: int = Field(default=96_000_000, ge=1)
    """Pixels of all requests being served at once (decoded images and full-size masks scale
    with them): beyond it a request is shed with 503. With ~4 bytes held per pixel this bounds
    request memory to roughly 400 MB above the model's own footprint."""

    batch_max_queue_images: int = Field(default=32, ge=1)
    """Images waiting for (or being decoded for) the model before new requests are shed with
    503 + Retry-After (TF Serving's max_enqueued_batches, Triton's max_queue_size): two full
    batches, so queueing delay stays near two batch times instead of growing with the
    offered load."""

    codec_max_queue: int = Field(default=64, ge=1)
    """Decode/encode jobs waiting for a codec thread before requests are shed with 503."""

    request_timeout_seconds: float = Field(default=30.0, gt=0.0, le=3600.0)
    """Deadline of an inference request; work still queued when it passes is dropped before
    the model and the caller gets 504. Callers may shorten it (`X-Request-Timeout` seconds,
    OIP `parameters.timeout` microseconds), never extend it."""

    retry_after_seconds: int = Field(default=1, ge=1, le=600)
    """`Retry-After` sent with 503 answers of load shedding."""

    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    """Largest request head (request line and headers); larger heads get 431 and the
    connection is closed."""

    header_timeout_seconds: float = Field(default=10.0, gt=0.0)
    """Time a client has to send a request's head once it started it (slowloris guard:
    408 and close)."""

    body_timeout_seconds: float = Field(default=30.0, gt=0.0)
    """Time a client has to send a request's whole body after its head (guards against
    bodies trickling in: 408 and close)."""

    limit_concurrency: int = Field(default=1000, ge=1)
    """Most connections plus requests uvicorn serves at once; beyond it uvicorn answers 503
    itself, so idle or slow sockets cannot exhaust file descriptors and memory."""

    max_images_per_request: int = Field(default=64, ge=1, le=1024)
    """Most images in one Open Inference Protocol v2 request."""

    path_prefixes: tuple[str, ...] = ("/model-a", "/model-b")
    """Leading path segments stripped before routing: the chart's Ingress fans out by
    `/model-a` and `/model-b`, and networking.k8s.io/v1 cannot rewrite paths by itself."""

    role: Role = "stable"
    """`stable` or `canary`: a metrics label telling the two Deployments of an A/B test apart."""

    shutdown_timeout_seconds: float = Field(default=30.0, gt=0.0)
    """On SIGTERM, how long in-flight requests may take to finish before uvicorn gives up;
    keep it below the pod's terminationGracePeriodSeconds."""

    keep_alive_timeout_seconds: int = Field(default=620, ge=1, le=3600)
    """How long uvicorn keeps an idle keep-alive connection open. Google's load balancers
    reuse backend connections for up to 600 s; a backend that closes first races the
    proxy's next request on that connection, which the client sees as a 502."""

    drain_file: str | None = None
    """A file whose existence makes /readyz answer 503 (`draining`): the chart's preStop hook
    creates it before the pod's SIGTERM, so load balancers stop sending while the pod still
    serves. Unset (the default outside Kubernetes) disables the check."""

    feedback_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of /v1/segment answers kept (image, served mask, version) so that they can receive
    a correction through /v1/feedback; 0 keeps none (every feedback is then a 404)."""

    feedback_ttl_seconds: int = Field(default=86400, ge=1, le=30 * 24 * 3600)
    """How long a kept answer can receive its correction."""

    feedback_max_kept_per_second: float = Field(default=20.0, ge=0.0)
    """Most answers per second this process keeps in Redis (0: no cap), beyond the sample
    rate. Every kept answer sends its whole image to Redis, and `feedback_max_entries` keeps
    only the newest anyway: at 300 answers/s keeping all of them writes 12 MB/s and gives each
    entry 3 s before it is dropped. Capped, light traffic (a person in the web page, a test)
    still gets a token on every answer, and under load the entries kept live
    max_entries / (pods x cap) seconds instead, at a fraction of the event loop's CPU."""

    feedback_max_entries: int = Field(default=1000, ge=1)
    """Most answers kept at once, the oldest dropped first: with max_entry_bytes it bounds the
    Redis memory feedback uses. At R answers/s it also caps the time to correct at
    max_entries / (R x sample_rate) seconds."""

    feedback_max_entry_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Answers whose image plus mask are larger are not kept (their feedback gets a 404)."""

    feedback_uri: str = "./var/data/feedback"
    """Where corrected pairs are stored, in the dataset layout: `<dataset>/feedback`, the
    prefix the retraining loader reads (the default is that of `make run`'s `./var/data`)."""

    feedback_keep_ttl_seconds: int = Field(default=7 * 86400, ge=60, le=90 * 86400)
    """How long an answer kept durably (`/v1/segment?keep=true`, or sampled by
    `feedback_keep_sample_rate`) can still receive its correction: days, for a person painting
    in the web page, where the Redis log keeps answers for seconds under load."""

    feedback_keep_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of the answers not asked to be kept that are kept durably all the same (e.g. to
    collect corrections from clients that correct later); 0 keeps only those asked for."""

    feedback_keep_max_entries: int = Field(default=10_000, ge=1)
    """Most answers kept durably at once, the oldest deleted first."""

    feedback_keep_max_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)
    """Most bytes (images plus served masks) kept durably at once, the oldest deleted first."""

    compare_stage: Stage | None = None
    """A second stage this process also loads and serves on `/v1/segment?stage=<stage>`, for
    the web page's compare view where no gateway splits traffic (a laptop, `make run`). In a
    cluster leave it unset: the canary Deployment serves `candidate` and the page reaches each
    side through the HTTPRoute's variant header. Costs a second model in memory; its batches
    and model metrics are not exported (its HTTP requests are)."""

    ui_variant_header: str = "X-Maskfleet-Variant"
    """Header the page sends to ask the gateway for the stable or the canary Deployment (the
    chart's `abTest.header.name`, which its HTTPRoute matches)."""

    ui_variant_values: tuple[str, str] = ("stable", "canary")
    """Values of `ui_variant_header` for stable and canary (`abTest.header.stableValue`,
    `abTest.header.canaryValue`)."""

    def cache_redis(self) -> RedisEndpoint:
        """The cache role: one attempt per command, then the cache is bypassed for a while."""
        return RedisEndpoint.build(
            "cache", self.cache_redis_url, self.cache_redis_password,
            socket_timeout=self.redis_socket_timeout_ms / 1000,
            connect_timeout=self.redis_connect_timeout_ms / 1000,
            ca_file=self.redis_tls_ca_file, retries=0)

    @model_validator(mode="after")
    def _cache_redis_is_usable(self) -> Self:
        self.cache_redis()
        return self

    @model_validator(mode="after")
    def _budgets_fit_together(self) -> Self:
        if self.max_request_pixels > self.max_inflight_pixels:
            raise ValueError("max_request_pixels must not exceed max_inflight_pixels, or such "
                             "requests could never be admitted")
        return self

    @field_validator("anonymous_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def open_scopes(self) -> frozenset[Scope]:
        """What a caller without a key may do (the resolved `anonymous_scopes`)."""
        if self.anonymous_scopes is not None:
            return self.anonymous_scopes
        if self.environment == "production" or self.api_keys_file:
            return frozenset()
        return frozenset(s for s in SCOPES if s != "admin")

    @property
    def feedback_protected(self) -> tuple[str, ...]:
        """Prefixes no batch job may write: the feedback prefix and, in the dataset layout
        (`<dataset>/feedback`), the dataset around it (its ground truth)."""
        uri = self.feedback_uri.rstrip("/")
        parent, _, leaf = uri.rpartition("/")
        return (uri, parent) if leaf == "feedback" and parent.strip("/.") else (uri,)

    @property
    def metrics_listen_port(self) -> int:
        """The resolved `metrics_port` (0 = on the API port)."""
        if self.metrics_port is not None:
            return self.metrics_port
        return DEFAULT_METRICS_PORT if self.environment == "production" else 0

    @property
    def docs_served(self) -> bool:
        if self.docs_enabled is not None:
            return self.docs_enabled
        return self.environment != "production"

    @model_validator(mode="after")
    def _refuse_unsafe_serving_values(self) -> Self:
        if self.environment != "production":
            return self
        problems = []
        if not self.api_keys_file and not self.trusted_identity_header:
            problems.append("set api_keys_file (or trusted_identity_header behind an "
                            "authenticating gateway): production refuses anonymous callers")
        if self.anonymous_scopes:
            problems.append("anonymous_scopes must be empty: production requires a key")
        if self.metrics_listen_port in (0, self.port):
            problems.append("metrics_port must be its own port, not the API's")
        if self.max_pixels > DEFAULT_MAX_PIXELS:
            problems.append(f"max_pixels above {DEFAULT_MAX_PIXELS} weakens the bomb guard")
        if self.max_body_bytes > PRODUCTION_MAX_BODY_BYTES:
            problems.append(f"max_body_bytes above {PRODUCTION_MAX_BODY_BYTES}")
        if self.max_json_body_bytes > PRODUCTION_MAX_BODY_BYTES:
            problems.append(f"max_json_body_bytes above {PRODUCTION_MAX_BODY_BYTES}")
        slowest = max(self.redis_socket_timeout_ms, self.redis_connect_timeout_ms)
        if slowest > PRODUCTION_MAX_REDIS_TIMEOUT_MS:
            problems.append("Redis timeouts above 1 s let a slow cache stall requests")
        if self.max_inflight_pixels > PRODUCTION_MAX_INFLIGHT_PIXELS:
            problems.append(f"max_inflight_pixels above {PRODUCTION_MAX_INFLIGHT_PIXELS} "
                            "no longer bounds memory within the pod limit")
        if self.max_header_bytes > PRODUCTION_MAX_HEADER_BYTES:
            problems.append(f"max_header_bytes above {PRODUCTION_MAX_HEADER_BYTES}")
        if max(self.header_timeout_seconds,
               self.body_timeout_seconds) > PRODUCTION_MAX_READ_TIMEOUT_SECONDS:
            problems.append("header/body timeouts above 120 s let slow clients hold "
                            "connections")
        if 0 < self.stage_poll_seconds < PRODUCTION_MIN_POLL_SECONDS:
            problems.append("stage_poll_seconds below 1 s hammers the model repository")
        if self.cache_enabled and self.cache_redis().password is None:
            problems.append("the cache Redis has no password; set cache_redis_password")
        problems += self.state_redis_problems()
        if problems:
            raise ValueError("unsafe in production: " + "; ".join(problems))
        return self
