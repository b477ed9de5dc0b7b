"""Configuration: every ``TMWS_*`` variable, read once into a frozen struct.

``Settings.from_env()`` reads the process environment; tests build settings from a
plain mapping with ``Settings.from_env({...})``. An invalid value raises
:class:`~tmws.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Final

import msgspec

from tmws._redis import SENTINEL_SCHEMES, parse_sentinel_url
from tmws.cache import BASE_LOCAL_SIZE, BASE_TTL
from tmws.errors import ConfigError
from tmws.inputs import InputLimits
from tmws.models import ExecutionMode, PatternLimits

__all__ = ["ENV_PREFIX", "MIN_SECRET_LENGTH", "Settings", "default_pool_size"]

ENV_PREFIX: Final = "TMWS_"
# Names the platform injects, not the operator: Kubernetes service links for a Service
# named "tmws" (TMWS_SERVICE_HOST, TMWS_PORT=tcp://..., TMWS_PORT_8000_TCP_ADDR, ...) and
# Docker's legacy links (TMWS_NAME, TMWS_ENV_*). They must not stop start-up.
_PLATFORM_NAMES: Final = re.compile(
    r"TMWS_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?|NAME|ENV_\w+)")
# HS256 keys shorter than this are guessable offline from one token.
MIN_SECRET_LENGTH: Final = 32

_ENVIRONMENTS: Final = ("development", "staging", "production", "test")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Settings read in any case and stored upper case.
_CASELESS: Final = frozenset({"log_level"})
_MODES: Final = tuple(mode.value for mode in ExecutionMode)
_EMBEDDING_PROVIDERS: Final = ("hash", "openai", "sentence-transformers")
_VECTOR_INDEXES: Final = ("ivfflat", "hnsw")
_RECALL_INDEXES: Final = ("postgres", "memory")
_POOL_MODES: Final = ("session", "transaction")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def default_pool_size() -> int:
    """``min(20, cpu_count * 5)`` (deploy/README.md, Performance Tuning)."""
    return min(20, (os.cpu_count() or 1) * 5)


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "tmws")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """All tmws settings. Field ``x`` is read from ``TMWS_X``."""

    # Application
    environment: str = "development"
    debug: bool = False
    log_level: str = "INFO"
    log_file: str | None = None
    # Server
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    workers: int = 1
    max_query_length: int = 2000
    max_body_bytes: int = 65536
    # Free-form JSON: nesting of any request body and of memory metadata, and metadata's
    # size as JSON (tmws.inputs). Deeper structures crash recursive decoders.
    max_json_depth: int = 32
    max_metadata_bytes: int = 16384
    # Database (unset URL: embedded PostgreSQL with pgvector under data_dir)
    database_url: str | None = None
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    db_max_connections: int = msgspec.field(default_factory=default_pool_size)
    db_max_overflow: int = -1  # -1: half the pool size (deploy/README.md, Performance Tuning)
    # Connections each worker opens at start and keeps (-1: all of db_max_connections);
    # the rest up to max + overflow open on demand and close after 10 idle minutes.
    db_min_connections: int = -1
    db_pool_timeout: float = 30.0
    # Admission (tmws.admission): executions that may use the database at once per worker
    # (the most; 0: TMWS_DB_MAX_CONNECTIONS), whether fewer are used while more would only
    # slow each query down, and how many per pattern type may wait for one (0: four times
    # the most). A request that cannot finish in time is refused at once (503).
    admission_concurrency: int = 0
    admission_adaptive: bool = True
    admission_queue: int = 0
    db_pool_recycle: float = 3600.0
    db_pool_pre_ping: bool = True
    db_echo: bool = False
    db_statement_timeout: int = 30000
    # What pools the connections of TMWS_DATABASE_URL: PostgreSQL itself or a session-mode
    # pooler ("session"), or a transaction-mode pooler such as PgBouncer ("transaction"),
    # where a server connection is shared between clients from one transaction to the next
    # (tmws.database._pooler). Work that needs a session of its own (tmws db reindex,
    # tmws memories reembed, LISTEN) then uses the direct URL, which bypasses the pooler.
    database_pool_mode: str = "session"
    database_direct_url: str | None = None
    # Read replicas (tmws.database._replicas): comma-separated postgresql:// URLs of
    # streaming standbys of TMWS_DATABASE_URL that serve memory reads, and the replay lag in
    # seconds beyond which a replica is skipped (its reads go to the primary).
    database_replica_urls: str | None = None
    database_replica_max_lag: float = 5.0
    # Redis (unset URL: in-process cache only)
    redis_url: str | None = None
    redis_max_connections: int = 50
    redis_timeout: float = 5.0
    # Cache. TTL and size scale the pattern file's per-pattern cache_ttl and per-type
    # cache_config sizes (x cache_ttl/300, x cache_max_size/1000) rather than cap them:
    # every shipped pattern declares a TTL, so a cap or a fallback would leave "increase
    # cache TTL / size" without effect (tmws.cache and deploy/README.md, Performance Tuning).
    cache_ttl: int = BASE_TTL
    cache_max_size: int = BASE_LOCAL_SIZE
    cache_enabled: bool = True
    cache_local_ttl: int = 60  # cap on how long this process trusts a result by itself
    cache_max_value_bytes: int = 1 << 20  # larger results are not cached (counted)
    cache_breaker_failures: int = 5  # Redis failures in a row that open the circuit
    # Seconds before one trial call is let through. Short: the trial is one call bounded by
    # TMWS_REDIS_TIMEOUT, while every second open runs memory results uncached (the soak
    # measured 30 s of that as p99 x2.5 and timeouts at half capacity).
    cache_breaker_reset: float = 5.0
    # Security
    secret_key: str | None = None
    auth_enabled: bool = False
    token_expire_minutes: int = 60
    # Production refuses TMWS_AUTH_ENABLED=false unless this says it is deliberate
    # (e.g. an authenticating proxy in front).
    allow_unauthenticated: bool = False
    rate_limit_enabled: bool = False
    rate_limit_requests: int = 100
    rate_limit_period: int = 60
    # /metrics: comma-separated client networks allowed to scrape (empty: any), and whether
    # a token with the metrics:read scope is also required when auth is on.
    metrics_allowed_networks: str | None = None
    metrics_require_token: bool = False
    # Audit records (executions, pattern and memory changes) in the database; those the
    # database cannot take in time are kept in files here (default: TMWS_DATA_DIR/audit-spill)
    # and written at the next start.
    audit_enabled: bool = True
    audit_spill_dir: str | None = None
    # Seconds SIGTERM waits for in-flight requests before workers are killed.
    shutdown_timeout: int = 30
    # Seconds start-up (`tmws serve`, `tmws db upgrade`) waits for PostgreSQL to accept
    # connections and, for serve, for the schema to be migrated: containers and pods start
    # in no particular order. 0: fail at once.
    startup_wait: float = 0.0
    # Pattern service
    pattern_default_mode: str = "balanced"
    pattern_cache_enabled: bool = True
    pattern_config: str | None = None
    pattern_infra_timeout: int = 50
    pattern_memory_timeout: int = 100
    pattern_hybrid_timeout: int = 200
    # Bounds on what a pattern may declare (file, API or shared set alike).
    pattern_max_cache_ttl: int = 7 * 86400
    pattern_max_cost_tokens: int = 1_000_000
    # A pattern file without patterns is refused at start and on reload unless this is set.
    pattern_allow_empty: bool = False
    # Instances sharing the database and this group share one pattern set; a change waits
    # this many milliseconds for every live instance to run it (tmws._pattern_sync).
    pattern_sync_group: str = "default"
    pattern_sync_timeout: int = 3000
    # Stage 2 of routing (example utterances, when no trigger matches): the score the best
    # pattern must reach (a pattern's min_score overrides it) and its lead over the next.
    # Fitted with `tmws patterns eval --suggest` on the shipped library (bench/README.md).
    router_min_score: float = 0.2
    router_min_margin: float = 0.0
    # A lexicon file (synonyms, off_topic) extending the shipped one (tmws.lexicon).
    router_lexicon: str | None = None
    # With a real embedding model (not the hash embedder): the share of the embedding cosine
    # in the stage-2 score, and the milliseconds a query's embedding may take before stage 2
    # scores that query lexically. Off by default: with WordLlama no weight routed the
    # evaluation sets better than the lexicon alone (bench/README.md, Routing accuracy).
    router_semantic_weight: float = 0.0
    router_embedding_timeout: int = 200
    # Embeddings and the vector index
    embedding_provider: str = "hash"  # hash | openai | sentence-transformers
    embedding_dim: int = 384
    embedding_model: str | None = None  # model name (openai) or path (sentence-transformers)
    embedding_url: str | None = None  # base URL of an OpenAI-compatible server
    embedding_api_key: str | None = None
    embedding_timeout: float = 10.0
    embedding_batch_size: int = 64
    vector_index: str = "ivfflat"  # ivfflat | hnsw
    vector_lists: int = 100  # ivfflat lists at creation; tmws db reindex re-sizes them
    vector_probes: int = 10  # ivfflat lists searched per query
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    # 100, not pgvector's 40: namespace filters apply after the graph search, and at 40 a
    # third of namespaced kNN calls came back short (bench/README.md, memory patterns).
    hnsw_ef_search: int = 100
    # With pgvector >= 0.8: HNSW scans go on until enough rows pass the namespace filter
    # (strict order), instead of returning short pages.
    vector_iterative_scan: bool = True
    # Vector hits less similar than this (cosine) are not recalled: kNN always finds
    # *something*, and an unrelated memory is worse than none.
    recall_min_similarity: float = 0.1
    # Where recall ranks: "postgres" (the SQL in tmws.memory), or "memory": a derived index
    # in each worker (tmws._recall_index), built at start and kept current from PostgreSQL,
    # which stays the source of truth; recall uses the SQL until it is ready.
    recall_index: str = "postgres"
    recall_index_ef_search: int = 100  # HNSW beam of the derived index's larger partitions
    # Seconds the memory change log keeps a row (every process prunes by it, so set it alike
    # everywhere). A derived index whose load takes more than half of it can never catch up.
    recall_index_log_retention: float = 3600.0

    @property
    def db_pool_min(self) -> int:
        """Connections opened at start and kept open."""
        if self.db_min_connections < 0:
            return self.db_max_connections
        return self.db_min_connections

    @property
    def replica_urls(self) -> tuple[str, ...]:
        """TMWS_DATABASE_REPLICA_URLS as a tuple (empty: every read goes to the primary)."""
        return tuple(part.strip() for part in (self.database_replica_urls or "").split(",")
                     if part.strip())

    @property
    def audit_spill_path(self) -> Path:
        return Path(self.audit_spill_dir or Path(self.data_dir) / "audit-spill")

    @property
    def admission_limit(self) -> int:
        return self.admission_concurrency or self.db_max_connections

    @property
    def admission_max_queue(self) -> int:
        return self.admission_queue or 4 * self.admission_limit

    # The original service's settings names, which its connection-pooling snippet reads.
    # Read-only: settings are fixed at start; set TMWS_DB_* instead.
    @property
    def database_pool_size(self) -> int:
        return self.db_max_connections

    @property
    def database_max_overflow(self) -> int:
        return self.db_overflow

    @property
    def database_pool_pre_ping(self) -> bool:
        return self.db_pool_pre_ping

    @property
    def database_pool_recycle(self) -> float:
        return self.db_pool_recycle

    @property
    def db_overflow(self) -> int:
        """Extra connections beyond the pool size."""
        if self.db_max_overflow < 0:
            return self.db_max_connections // 2
        return self.db_max_overflow

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: ``os.environ``).

        Unknown ``TMWS_*`` names are rejected so that a typo is not silently ignored, except
        those Kubernetes and Docker links inject for a service named ``tmws``.
        """
        source = os.environ if environ is None else environ
        fields = {name: typ for name, typ in _field_types().items()}
        values: dict[str, Any] = {}
        known = {cls.env_name(name) for name in fields}
        for key in source:
            if (key.startswith(ENV_PREFIX) and key not in known
                    and not _PLATFORM_NAMES.fullmatch(key)):
                raise ConfigError(key, "unknown setting (check the spelling)")
        for name, parse in fields.items():
            var = cls.env_name(name)
            raw = source.get(var)
            if raw is None:
                continue
            if name in _CASELESS:  # TMWS_LOG_LEVEL=info is as good as INFO
                raw = raw.upper()
            try:
                values[name] = parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(var, f"invalid value {_redact(name, raw)!r}: {exc}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check cross-field rules; raises ConfigError naming the variable."""
        checks: list[tuple[str, bool, str]] = [
            ("environment", self.environment in _ENVIRONMENTS, f"must be one of {_ENVIRONMENTS}"),
            ("log_level", self.log_level in _LOG_LEVELS,
             f"must be one of {_LOG_LEVELS}, in any case"),
            ("pattern_default_mode", self.pattern_default_mode in _MODES,
             f"must be one of {_MODES}"),
            ("api_port", 0 <= self.api_port <= 65535, "must be between 0 and 65535"),
            ("workers", self.workers >= 1, "must be at least 1"),
            ("max_query_length", self.max_query_length >= 1, "must be at least 1"),
            ("max_body_bytes", self.max_body_bytes >= 256, "must be at least 256"),
            ("max_json_depth", 2 <= self.max_json_depth <= 256, "must be between 2 and 256"),
            ("max_metadata_bytes", 2 <= self.max_metadata_bytes <= self.max_body_bytes,
             "must be between 2 and TMWS_MAX_BODY_BYTES"),
            ("db_max_connections", self.db_max_connections >= 1, "must be at least 1"),
            ("db_max_overflow", self.db_max_overflow >= -1, "must be 0 or more"),
            ("db_min_connections", -1 <= self.db_min_connections <= self.db_max_connections,
             "must be between 0 and TMWS_DB_MAX_CONNECTIONS (or -1: all of them)"),
            ("db_pool_timeout", self.db_pool_timeout > 0, "must be positive"),
            ("admission_concurrency", 0 <= self.admission_concurrency <= 10_000,
             "must be between 0 (TMWS_DB_MAX_CONNECTIONS) and 10000"),
            ("admission_queue", 0 <= self.admission_queue <= 1_000_000,
             "must be between 0 (four times the concurrency) and 1000000"),
            ("db_pool_recycle", self.db_pool_recycle > 0, "must be positive"),
            ("db_statement_timeout", self.db_statement_timeout >= 0, "must be 0 (off) or more"),
            ("database_replica_max_lag", 0 < self.database_replica_max_lag <= 3600,
             "must be more than 0 and at most 3600 seconds"),
            ("database_pool_mode", self.database_pool_mode in _POOL_MODES,
             f"must be one of {_POOL_MODES}"),
            ("redis_max_connections", self.redis_max_connections >= 1, "must be at least 1"),
            ("redis_timeout", self.redis_timeout > 0, "must be positive"),
            ("cache_ttl", self.cache_ttl >= 0, "must be 0 or more"),
            ("cache_max_size", self.cache_max_size >= 0, "must be 0 or more"),
            ("cache_local_ttl", self.cache_local_ttl >= 0, "must be 0 or more"),
            ("cache_max_value_bytes", self.cache_max_value_bytes >= 0, "must be 0 or more"),
            ("cache_breaker_failures", self.cache_breaker_failures >= 1, "must be at least 1"),
            ("cache_breaker_reset", self.cache_breaker_reset > 0, "must be positive"),
            ("token_expire_minutes", self.token_expire_minutes >= 1, "must be at least 1"),
            ("rate_limit_requests", self.rate_limit_requests >= 1, "must be at least 1"),
            ("rate_limit_period", self.rate_limit_period >= 1, "must be at least 1"),
            ("shutdown_timeout", self.shutdown_timeout >= 1, "must be at least 1 second"),
            ("startup_wait", 0 <= self.startup_wait <= 3600, "must be 0 to 3600 seconds"),
            ("pattern_infra_timeout", self.pattern_infra_timeout >= 1, "must be at least 1 ms"),
            ("pattern_memory_timeout", self.pattern_memory_timeout >= 1, "must be at least 1 ms"),
            ("pattern_hybrid_timeout", self.pattern_hybrid_timeout >= 1, "must be at least 1 ms"),
            ("pattern_sync_group", 1 <= len(self.pattern_sync_group) <= 64,
             "must be 1 to 64 characters"),
            ("pattern_sync_timeout", 0 <= self.pattern_sync_timeout <= 60_000,
             "must be between 0 and 60000 ms"),
            ("pattern_max_cache_ttl", 0 <= self.pattern_max_cache_ttl <= 10 * 365 * 86400,
             "must be between 0 and 10 years in seconds"),
            ("pattern_max_cost_tokens", 0 <= self.pattern_max_cost_tokens <= 2**31 - 1,
             "must be between 0 and 2147483647"),
            ("router_min_score", 0.0 < self.router_min_score <= 1.0, "must be in (0, 1]"),
            ("router_min_margin", 0.0 <= self.router_min_margin < 1.0, "must be in [0, 1)"),
            ("router_semantic_weight", 0.0 <= self.router_semantic_weight <= 1.0,
             "must be in [0, 1]"),
            ("router_embedding_timeout", self.router_embedding_timeout >= 1,
             "must be at least 1 ms"),
            ("embedding_provider", self.embedding_provider in _EMBEDDING_PROVIDERS,
             f"must be one of {_EMBEDDING_PROVIDERS}"),
            ("embedding_dim", 8 <= self.embedding_dim <= 16000,
             "must be between 8 and 16000 (pgvector's limit)"),
            ("embedding_timeout", self.embedding_timeout > 0, "must be positive"),
            ("embedding_batch_size", 1 <= self.embedding_batch_size <= 2048,
             "must be between 1 and 2048"),
            ("vector_index", self.vector_index in _VECTOR_INDEXES,
             f"must be one of {_VECTOR_INDEXES}"),
            ("vector_lists", 1 <= self.vector_lists <= 32768, "must be between 1 and 32768"),
            ("vector_probes", 1 <= self.vector_probes <= self.vector_lists,
             "must be between 1 and TMWS_VECTOR_LISTS"),
            ("hnsw_m", 2 <= self.hnsw_m <= 100, "must be between 2 and 100"),
            ("hnsw_ef_construction", 4 <= self.hnsw_ef_construction <= 1000,
             "must be between 4 and 1000"),
            ("hnsw_ef_search", 1 <= self.hnsw_ef_search <= 1000, "must be between 1 and 1000"),
            ("recall_min_similarity", -1.0 <= self.recall_min_similarity <= 1.0,
             "must be between -1 and 1"),
            ("recall_index", self.recall_index in _RECALL_INDEXES,
             f"must be one of {_RECALL_INDEXES}"),
            ("recall_index_ef_search", 1 <= self.recall_index_ef_search <= 1000,
             "must be between 1 and 1000"),
            ("recall_index_log_retention", self.recall_index_log_retention >= 60,
             "must be at least 60 seconds"),
        ]
        for field, ok, problem in checks:
            if not ok:
                value = getattr(self, field)
                raise ConfigError(self.env_name(field), f"{problem} (got {value!r})")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigError(
                self.env_name("database_url"), "must be a postgresql:// connection string"
            )
        if self.database_direct_url is not None and not self.database_direct_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigError(
                self.env_name("database_direct_url"), "must be a postgresql:// connection string"
            )
        if self.database_pool_mode == "transaction" and self.database_url is None:
            raise ConfigError(self.env_name("database_pool_mode"),
                              "transaction says TMWS_DATABASE_URL leads to a transaction-mode "
                              "pooler such as PgBouncer; the embedded PostgreSQL (no "
                              "TMWS_DATABASE_URL) has none")
        self._validate_replicas()
        if self.embedding_provider == "openai" and not self.embedding_url:
            raise ConfigError(self.env_name("embedding_url"),
                              "is required with TMWS_EMBEDDING_PROVIDER=openai")
        if self.embedding_provider != "hash" and not self.embedding_model:
            raise ConfigError(self.env_name("embedding_model"),
                              f"is required with TMWS_EMBEDDING_PROVIDER={self.embedding_provider}")
        if self.redis_url is not None:
            if not self.redis_url.startswith(("redis://", "rediss://", "unix://",
                                              *SENTINEL_SCHEMES)):
                raise ConfigError(self.env_name("redis_url"),
                                  "must be a redis://, rediss:// or redis+sentinel:// URL")
            if self.redis_url.startswith(SENTINEL_SCHEMES):
                try:
                    parse_sentinel_url(self.redis_url)
                except ValueError as exc:
                    raise ConfigError(self.env_name("redis_url"), str(exc)) from None
        self.metrics_networks()  # raises on a malformed network
        self._validate_security()

    def _validate_replicas(self) -> None:
        # Messages name an entry by its position, never its text: URLs carry passwords.
        var = self.env_name("database_replica_urls")
        urls = self.replica_urls
        if not urls:
            return
        for position, url in enumerate(urls, 1):
            if not url.startswith(("postgresql://", "postgres://")):
                raise ConfigError(var, f"entry {position} must be a postgresql:// connection "
                                       "string")
        if len(set(urls)) != len(urls):
            raise ConfigError(var, "lists the same replica twice")
        if self.database_url is None:
            raise ConfigError(var, "needs TMWS_DATABASE_URL (the primary the replicas stream "
                                   "from): the embedded PostgreSQL has no replicas")
        if self.database_url in urls:
            raise ConfigError(var, "lists the primary (TMWS_DATABASE_URL) as a replica")

    def _validate_security(self) -> None:
        secret_ok = self.secret_key is not None and len(self.secret_key) >= MIN_SECRET_LENGTH
        if self.auth_enabled and not secret_ok:
            raise ConfigError(self.env_name("secret_key"),
                              f"TMWS_AUTH_ENABLED=true needs a secret of at least "
                              f"{MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`)")
        if self.environment != "production":
            return
        if self.debug:
            raise ConfigError(self.env_name("debug"), "must be false in production")
        if not secret_ok:
            raise ConfigError(self.env_name("secret_key"),
                              f"production needs a secret of at least {MIN_SECRET_LENGTH} "
                              "characters (e.g. `openssl rand -hex 32`)")
        if not self.auth_enabled and not self.allow_unauthenticated:
            raise ConfigError(self.env_name("auth_enabled"),
                              "must be true in production; set TMWS_ALLOW_UNAUTHENTICATED=true "
                              "if an authenticating proxy protects the service")
        if self.database_url is None:
            # Unset means the embedded development database under TMWS_DATA_DIR: in a
            # container that is data lost on the next deploy, and never what was meant.
            raise ConfigError(self.env_name("database_url"),
                              "must be set in production (the embedded PostgreSQL is for "
                              "development only)")

    @property
    def input_limits(self) -> InputLimits:
        return InputLimits(self.max_json_depth, self.max_metadata_bytes)

    @property
    def pattern_limits(self) -> PatternLimits:
        return PatternLimits(self.pattern_max_cache_ttl, self.pattern_max_cost_tokens)

    def metrics_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """The networks allowed to scrape /metrics (empty: any client)."""
        return _parse_networks(self.metrics_allowed_networks or "")

    def timeout_ms(self, pattern_type: str) -> int:
        """The handler timeout for a pattern type, in milliseconds."""
        return {
            "infrastructure": self.pattern_infra_timeout,
            "memory": self.pattern_memory_timeout,
            "hybrid": self.pattern_hybrid_timeout,
        }[pattern_type]


@functools.cache  # parsed once per distinct value, not on every scrape
def _parse_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    networks: list[IPv4Network | IPv6Network] = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ip_network(part.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(Settings.env_name("metrics_allowed_networks"),
                                  f"invalid network {part.strip()!r}: {exc}") from None
    return tuple(networks)


def _redact(field: str, raw: str) -> str:
    if field in ("secret_key", "database_url", "database_direct_url",
                 "database_replica_urls", "redis_url",
                 "embedding_api_key"):
        return "<redacted>"
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false")


def _parse_optional_str(raw: str) -> str | None:
    return raw or None


def _field_types() -> dict[str, Callable[[str], Any]]:
    parsers: dict[Any, Callable[[str], Any]] = {
        int: int,
        float: float,
        bool: _parse_bool,
        str: str,
        "str | None": _parse_optional_str,
    }
    result: dict[str, Callable[[str], Any]] = {}
    for field in msgspec.structs.fields(Settings):
        typ = field.type
        key = "str | None" if typ == (str | None) else typ
        result[field.name] = parsers[key]
    return result
