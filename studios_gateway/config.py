"""The gateway's configuration: one frozen object, built once at start.

This module holds the variable table (`VARIABLES`: one `Var` per setting, with its
parser from config_values) and the `Config` object it describes, with the errors that
name a variable and the redaction of secrets. config_loading builds a Config from its
sources. Variable names and defaults are the seed's Connect table, exactly; variables
the seed does not have are ours and say so in their documentation.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import studios_gateway.config_values as values
from studios_gateway.durations import format_setting
from studios_gateway.ssh.policy import MaxStartups

REDACTED = "<redacted>"


def redact_password(text: str) -> str:
    """A URL's password as REDACTED: ``redis://user:pw@r:6379`` -> ``redis://user:<redacted>@
    r:6379``; also a bare ``user:pw@host``. Text without one is returned as it is."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at:
        # A password holding "/", "?" or "#" (not percent-encoded, as is common) seemed
        # to end the authority before its "@": it was shown in full. After a user and
        # its colon, the last "@" ends it then (a path with an "@" is over-redacted).
        colon, last = rest.find(":"), rest.rfind("@")
        if 0 <= colon < end <= last and not any(c in rest[:colon] for c in "/?#@"):
            return f"{scheme}{sep}{rest[:colon]}:{REDACTED}@{rest[last + 1:]}"
        return text
    if ":" not in userinfo:
        return text
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:{REDACTED}@{host}{rest[end:]}"


#: The most of a value an error message quotes; a longer one is cut, with its length.
QUOTED_MOST = 80


def _quoted(value: str) -> str:
    """A value as an error message quotes it: ``repr`` of at most QUOTED_MOST characters
    (a 5000-digit number is not repeated in full on the operator's screen)."""
    if len(value) <= QUOTED_MOST:
        return repr(value)
    return f"{value[:QUOTED_MOST]!r}... ({len(value)} characters)"


class ConfigError(ValueError):
    """One invalid setting: names the variable, the value as given and what is expected."""

    #: The warnings about variables that are no setting (a misspelt name, "did you mean
    #: ...?"), said with the errors: such a name is often why a setting is missing.
    warnings: tuple[str, ...] = ()

    def __init__(self, name: str, value: str | None, expected: str, *, secret: bool = False,
                 given_as: str | None = None):
        """`given_as`: how the message names it when not by `name` (a command-line
        option: ``--http-port (CONNECT_HTTP_PORT)``)."""
        self.name = name
        self.value = value
        self.expected = expected
        if value is None:
            shown = " (not set)"
        else:
            shown = "=" + (REDACTED if secret and value else _quoted(redact_password(value)))
        super().__init__(f"{given_as or name}{shown}: expected {expected}")

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Every invalid setting this error reports (here just the one)."""
        return (self,)


class ConfigErrors(ConfigError):
    """Several invalid settings at once: `errors` has each; the message joins theirs with
    '; ' (one line), and name, value and expected are the first's."""

    def __init__(self, errors: Sequence[ConfigError]):
        first = errors[0]
        ValueError.__init__(self, "; ".join(str(e) for e in errors))
        self.name, self.value, self.expected = first.name, first.value, first.expected
        self._errors = tuple(errors)

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors


def raise_all(errors: Sequence[ConfigError]) -> None:
    """Raise the one error, or a ConfigErrors holding them all; nothing when there are none."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


# --- the variable table -------------------------------------------------------

#: A request line or head: held in memory per connection while it arrives, so bounded.
_HEAD_SIZE = values.size_range(1, 1 << 20)
#: A quota or bandwidth: 0 would read as "no limit" to some and "nothing" to others, so
#: neither; unset is no limit.
_NO_ZERO_SIZE = values.size_range(1, None, "; leave it unset for no limit")


@dataclass(frozen=True)
class Var:
    """One configuration variable: its name, documented default and meaning."""

    name: str
    attr: str
    default: str | None
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False
    seed: bool = True  # in the seed's Connect table (names and defaults are a contract)
    section: str = "general"

    @property
    def option(self) -> str:
        """The twistd plugin option: CONNECT_HTTP_PORT -> http-port."""
        n = self.name.lower()
        n = n.removeprefix("connect_")
        return n.replace("_", "-")


def _v(name: str, attr: str, default: str | None, parse: Callable[[str], Any], doc: str,
       **kw: Any) -> Var:
    return Var(name, attr, default, parse, doc, **kw)


VARIABLES: tuple[Var, ...] = (
    # Redis (the shared session store)
    _v("CONNECT_REDIS_ADDRESS", "redis_address", "redis:6379", values.redis_address,
       "Address of the Redis server. When the variable is not set at all the session "
       "registry is this node's alone (single node), kept in CONNECT_STORAGE_ROOT/sessions.json "
       "across restarts; set it (even empty, meaning redis:6379) to use Redis.",
       section="redis"),
    _v("CONNECT_REDIS_USER", "redis_user", None, values.printable, "Redis ACL user name.",
       section="redis"),
    _v("CONNECT_REDIS_PASSWORD", "redis_password", None, values.printable, "Redis password.",
       secret=True, section="redis"),
    _v("CONNECT_REDIS_DB", "redis_db", "0", values.int_range(0, 65535), "Redis database number.",
       section="redis"),
    _v("CONNECT_REDIS_PREFIX", "redis_prefix", "connect:session", values.key_prefix,
       "Prefix of the gateway's keys in Redis.", section="redis"),
    _v("CONNECT_REDIS_TLS_ENABLE", "redis_tls_enable", "false", values.boolean,
       "Connect to Redis over TLS (the server certificate is verified).", section="redis"),
    _v("CONNECT_REDIS_TLS_SKIP_VERIFY", "redis_tls_skip_verify", "false", values.boolean,
       "Do not verify Redis's TLS certificate (insecure; for testing).", section="redis"),
    _v("CONNECT_REDIS_TLS_KEY_FILE", "redis_tls_key_file", None, values.readable_file,
       "Client private key for TLS to Redis.", section="redis"),
    _v("CONNECT_REDIS_TLS_CERT_FILE", "redis_tls_cert_file", None, values.readable_file,
       "Client certificate for TLS to Redis.", section="redis"),
    _v("CONNECT_REDIS_TLS_CA_FILE", "redis_tls_ca_file", None, values.readable_file,
       "CA bundle that signs Redis's certificate (default: the system's).",
       seed=False, section="redis"),
    # Listeners
    _v("CONNECT_BIND_ADDRESS", "bind_address", "0.0.0.0", values.bind_address,
       "Interface the listeners bind to unless their own address names one.",
       seed=False, section="listeners"),
    _v("CONNECT_LISTENER_PORT", "listener_port", "7777", values.port,
       "Port for connections from other gateway nodes.", section="listeners"),
    _v("CONNECT_TUNNEL_PORT", "tunnel_port", "7070", values.port,
       "Port where studios' connect clients open their tunnels (TLS).", section="listeners"),
    _v("CONNECT_MANAGEMENT_PORT", "management_port", None, values.optional_port,
       "Port for /metrics, /live, /ready, /shutdown and the admin API; off when unset.",
       section="listeners"),
    _v("CONNECT_MANAGEMENT_AUTH_KEY", "management_auth_key", None, values.printable,
       "Bearer key required on every management endpoint except /live.",
       secret=True, section="listeners"),
    _v("CONNECT_HOST_DOMAIN", "host_domain", None, values.domain,
       "Host domain of this node, advertised to other nodes.", section="listeners"),
    _v("CONNECT_HTTP_PORT", "http_port", "80", values.port,
       "Port of the HTTP(S) proxy that browsers reach studios through.", section="listeners"),
    # Proxy
    _v("CONNECT_PROXY_URL", "proxy_url", None, values.proxy_url,
       "Base URL (or domain) of Connect, such as https://connect.example.com; no path "
       "(the gateway serves from the root of its host), no user or password. "
       "Unset: http://localhost (https:// with CONNECT_TLS_CERT_FILE; :CONNECT_HTTP_PORT "
       "unless it is the scheme's default), for a demo on one machine.", section="proxy"),
    _v("CONNECT_STUDIOS_DOMAIN", "studios_domain", None, values.domain,
       "Parent domain of the per-studio subdomains. Unset: the host of CONNECT_PROXY_URL.",
       seed=False, section="proxy"),
    _v("CONNECT_TUNNEL_URL", "tunnel_url", None, values.host_port,
       "host:port that connect clients dial for their tunnel. Unset: the proxy host and "
       "CONNECT_TUNNEL_PORT.", section="proxy"),
    _v("PLATFORM_URL", "platform_url", None, values.url,
       "Base URL of Seqera Platform (the OpenID issuer). Unset: logins come from one-time "
       "links minted by the admin API.", section="proxy"),
    _v("CONNECT_STORAGE_ROOT", "storage_root", "/data", values.directory,
       "Directory for the gateway's state (keys, OIDC client registration; without Redis, "
       "the sessions). Unset under systemd: the unit's StateDirectory= ($STATE_DIRECTORY, "
       "/var/lib/studios-gateway).",
       section="proxy"),
    _v("CONNECT_LOG_LEVEL", "log_level", "INFO", values.log_level,
       "trace, debug, info, warn, error or fatal.", section="proxy"),
    _v("CONNECT_CLIENT_NAME", "client_name", "tower-connect-proxy-client", values.nonempty,
       "OIDC client name registered with the Platform.", section="proxy"),
    _v("CONNECT_GRANT_TYPE", "grant_type", "authorization_code", values.grant_type,
       "OAuth grant type of the login flow.", section="proxy"),
    _v("CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN", "oidc_registration_token", None, values.printable,
       "Initial access token for OIDC dynamic client registration.", secret=True,
       section="proxy"),
    _v("LOCAL_CACHE_TTL", "local_cache_ttl", "2m", values.duration,
       "How long a node trusts its cached copy of a session record.", section="proxy"),
    _v("CONNECT_OIDC_ISSUER_URL", "oidc_issuer_url", None, values.url,
       "OpenID issuer to log in against. Unset: PLATFORM_URL.", seed=False, section="proxy"),
    _v("CONNECT_OIDC_CLIENT_ID", "oidc_client_id", None, values.token_text,
       "Static OIDC client id; when set, dynamic registration is skipped.", seed=False,
       section="proxy"),
    _v("CONNECT_OIDC_CLIENT_SECRET", "oidc_client_secret", None, values.printable,
       "Secret of CONNECT_OIDC_CLIENT_ID.", secret=True, seed=False, section="proxy"),
    _v("CONNECT_OIDC_SCOPES", "oidc_scopes", "openid profile email", values.nonempty,
       "Scopes requested at login.", seed=False, section="proxy"),
    _v("CONNECT_OIDC_USER_CLAIM", "oidc_user_claim", "sub", values.token_text,
       "ID-token claim that names the user.", seed=False, section="proxy"),
    _v("CONNECT_LOGIN_TTL", "login_ttl", "12h", values.positive_duration,
       "How long a login (and its cookies) lasts.", seed=False, section="proxy"),
    _v("CONNECT_LOGIN_LINK_TTL", "login_link_ttl", "24h", values.positive_duration,
       "How long a one-time login link stays valid.", seed=False, section="proxy"),
    _v("CONNECT_TLS_CERT_FILE", "tls_cert_file", None, values.readable_file,
       "Certificate chain (PEM) for HTTPS on CONNECT_HTTP_PORT and for the tunnel; it must "
       "cover the proxy host and *.<studios domain>.", seed=False, section="proxy"),
    _v("CONNECT_TLS_KEY_FILE", "tls_key_file", None, values.readable_file,
       "Private key (PEM) of CONNECT_TLS_CERT_FILE.", seed=False, section="proxy"),
    _v("CONNECT_TLS_HANDSHAKE_TIMEOUT", "tls_handshake_timeout", "10s", values.positive_duration,
       "Time from accept to a finished TLS handshake on the tunnel, HTTPS and peer ports "
       "(slower: the socket is reset).", seed=False, section="proxy"),
    _v("CONNECT_TLS_MAX_HANDSHAKES", "tls_max_handshakes", "1000", values.int_range(1, 1_000_000),
       "Connections being set up at once, per TLS port: in their TLS handshake, and on the "
       "tunnel port until the bind is answered. At the cap the port stops accepting until one "
       "is done (new connections wait in the listen queue); established connections do not "
       "count.", seed=False, section="proxy"),
    _v("CONNECT_TRUSTED_PROXY_CIDRS", "trusted_proxy_cidrs", "127.0.0.1/32", values.cidrs,
       "Peers whose X-Forwarded-For is trusted (comma-separated CIDRs).", seed=False,
       section="proxy"),
    _v("TOWER_DATA_STUDIO_ALLOWED_WORKSPACES", "allowed_workspaces", None, values.workspaces,
       "Workspaces allowed to use studios: unset = all, empty = none, else comma-separated ids.",
       seed=False, section="proxy"),
    _v("TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING", "path_routing", "false", values.boolean_empty_false,
       "Route by path (/_studio/<id>/) on the proxy host instead of per-studio subdomains.",
       seed=False, section="proxy"),
    # HTTP proxy limits (ours)
    _v("CONNECT_HTTP_MAX_REQUEST_LINE", "http_max_request_line", "8KiB", _HEAD_SIZE,
       "Longest request line the HTTP proxy accepts (longer: 414); at most 1MiB.", seed=False,
       section="http"),
    _v("CONNECT_HTTP_MAX_HEADER_SIZE", "http_max_header_size", "64KiB", _HEAD_SIZE,
       "Largest request head (request line and header fields; larger: 431); at most 1MiB.",
       seed=False,
       section="http"),
    _v("CONNECT_HTTP_MAX_HEADERS", "http_max_headers", "100", values.int_range(1, 10_000),
       "Most header fields in one request (more: 431).", seed=False, section="http"),
    _v("CONNECT_HTTP_HEADER_TIMEOUT", "http_header_timeout", "30s", values.positive_duration,
       "Time a client has to send a full request head (slower: 408).", seed=False,
       section="http"),
    _v("CONNECT_HTTP_IDLE_TIMEOUT", "http_idle_timeout", "75s", values.positive_duration,
       "A kept-alive browser connection with no request for this long is closed.",
       seed=False, section="http"),
    _v("CONNECT_HTTP_MAX_CONNECTIONS", "http_max_connections", "10000",
       values.int_range(1, 1_000_000),
       "Concurrent browser connections before new ones get 503.", seed=False,
       section="http"),
    _v("CONNECT_HTTP_MAX_BODY", "http_max_body", None, values.size,
       "Largest request body (larger: 413). Unset: no limit (bodies are streamed, not kept).",
       seed=False, section="http"),
    _v("CONNECT_HTTP_CONNECT_TIMEOUT", "http_connect_timeout", "30s", values.positive_duration,
       "Time to get a connection to a studio's tool (longer: 504 page).", seed=False,
       section="http"),
    _v("CONNECT_HTTP_RESPONSE_TIMEOUT", "http_response_timeout", "5m", values.positive_duration,
       "Time from the end of a request to the tool's response head (longer: 504 page).",
       seed=False, section="http"),
    _v("CONNECT_HTTP_POOL_SIZE", "http_pool_size", "32", values.int_range(0, 1000),
       "Idle connections to each studio's tool kept for reuse.", seed=False,
       section="http"),
    _v("CONNECT_HTTP_POOL_IDLE_TIMEOUT", "http_pool_idle_timeout", "4s", values.positive_duration,
       "An idle pooled connection to a tool is closed after this long (keep it below the "
       "tools' own keep-alive, 5s for Node).", seed=False, section="http"),
    # SSH
    _v("CONNECT_SSH_ENABLED", "ssh_enabled", "false", values.boolean,
       "Enable the SSH proxy server.", section="ssh"),
    _v("CONNECT_SSH_ADDR", "ssh_addr", ":2222", values.address,
       "Address the SSH proxy listens on.", section="ssh"),
    _v("CONNECT_SSH_KEY_PATH", "ssh_key_path", None, values.readable_file,
       "SSH host key file; wins over CONNECT_SSH_KEY_VALUE_BASE64.", section="ssh"),
    _v("CONNECT_SSH_KEY_VALUE_BASE64", "ssh_key_value", None, values.pem_base64,
       "Base64 of a PEM SSH host key; used when CONNECT_SSH_KEY_PATH is not set.",
       secret=True, section="ssh"),
    _v("CONNECT_SSH_MAX_CONNECTIONS", "ssh_max_connections", "2000", values.int_range(1, 1_000_000),
       "Concurrent SSH connections before new ones are refused.", section="ssh"),
    _v("CONNECT_SSH_MAX_CONN_CHANNELS", "ssh_max_conn_channels", "30", values.int_range(1, 10_000),
       "Channels one SSH connection may have in use; twice as many with those still "
       "closing at the studio.", section="ssh"),
    _v("CONNECT_SSH_HANDSHAKE_TIMEOUT", "ssh_handshake_timeout", "1m", values.positive_duration,
       "Time allowed for an SSH handshake and login.", section="ssh"),
    _v("CONNECT_SSH_MAX_STARTUPS", "ssh_max_startups", "10:30:100", MaxStartups.parse,
       "SSH connections not logged in yet, as OpenSSH's MaxStartups start:rate:full: from "
       "start on, new ones are closed at accept with rate% chance, rising to all at full. "
       "Only logged-in connections count toward CONNECT_SSH_MAX_CONNECTIONS.", seed=False,
       section="ssh"),
    _v("CONNECT_SSH_KEX_TIMEOUT", "ssh_kex_timeout", "10s", values.positive_duration,
       "Time from accept until the SSH key exchange is done (a silent socket is closed "
       "then); CONNECT_SSH_HANDSHAKE_TIMEOUT still bounds the whole login.", seed=False,
       section="ssh"),
    _v("CONNECT_SSH_CLIENT_TIMEOUT", "ssh_client_timeout", "15m", values.duration,
       "A logged-in SSH connection whose client has sent nothing for this long (asked for "
       "a sign of life every minute meanwhile) is closed: a laptop closed or a path gone "
       "without a word. 0: never.", seed=False, section="ssh"),
    # Tunnel tuning and cluster (ours)
    _v("CONNECT_TUNNEL_WINDOW_SIZE", "tunnel_window_size", "6MiB",
       values.size_range(256 * 1024, 1 << 30, "; 256KiB is the yamux initial window"),
       "Per-stream flow-control window of a tunnel: 256KiB to 1GiB. One download moves at "
       "most about a window per round trip (6MiB over 200 ms: ~31 MB/s).", seed=False,
       section="tunnel"),
    _v("CONNECT_TUNNEL_PING_INTERVAL", "tunnel_ping_interval", "10s", values.positive_duration,
       "How often each end of a tunnel pings the other (told to the studio at bind).",
       seed=False, section="tunnel"),
    _v("CONNECT_TUNNEL_PING_TIMEOUT", "tunnel_ping_timeout", "20s", values.positive_duration,
       "A tunnel over which nothing arrived for this long is dead, at either end.",
       seed=False, section="tunnel"),
    _v("CONNECT_TUNNEL_RETRY_PERIOD", "tunnel_retry_period", "8s", values.duration_range(1, 60),
       "How often a studio tries this node again while it cannot reach it (told to the "
       "studio at bind): each keeps a random phase in this period, so a restarted node's "
       "N studios come back within it, N / period a second. Shorter for a small install "
       "(50 studios: 2s); keep N / period within the binds a second the node can take.",
       seed=False, section="tunnel"),
    _v("CONNECT_TUNNEL_CLAIM_TTL", "tunnel_claim_ttl", "30s", values.positive_duration,
       "How long a node's claim on a tunnel lives in the registry unless refreshed (every "
       "third of it); after a node dies its studios are routed nowhere for up to this long.",
       seed=False, section="tunnel"),
    _v("CONNECT_NODE_ID", "node_id", None, values.node_id,
       "This node's name in the session registry. Unset: host name and port.", seed=False,
       section="tunnel"),
    # Peers: several nodes sharing one Redis (ours; see docs/cluster.md)
    _v("CONNECT_PEER_SECRET", "peer_secret", None, values.peer_secret,
       "Shared secret that gateway nodes prove to each other on CONNECT_LISTENER_PORT "
       "(the same on every node). Without it or peer TLS, every peer is refused.",
       secret=True, seed=False, section="peers"),
    _v("CONNECT_PEER_TLS_CERT_FILE", "peer_tls_cert_file", None, values.readable_file,
       "Certificate (PEM) this node presents to its peers (mutual TLS between nodes).",
       seed=False, section="peers"),
    _v("CONNECT_PEER_TLS_KEY_FILE", "peer_tls_key_file", None, values.readable_file,
       "Private key (PEM) of CONNECT_PEER_TLS_CERT_FILE.", seed=False, section="peers"),
    _v("CONNECT_PEER_TLS_CA_FILE", "peer_tls_ca_file", None, values.readable_file,
       "CA (PEM) that must sign every peer's certificate.", seed=False, section="peers"),
    _v("CONNECT_ADVERTISE_ADDRESS", "advertise_address", None, values.advertise,
       "host or host:port other nodes dial to reach this node's peer listener. Unset: "
       "CONNECT_HOST_DOMAIN, else CONNECT_BIND_ADDRESS (else the host name), with "
       "CONNECT_LISTENER_PORT.", seed=False, section="peers"),
    _v("CONNECT_REUSE_PORT", "reuse_port", "false", values.boolean,
       "Share the HTTP, tunnel and SSH ports with other gateway processes on this host "
       "(SO_REUSEPORT; one process per core, with Redis and CONNECT_PEER_SECRET).",
       seed=False, section="peers"),
    _v("CONNECT_SHUTDOWN_GRACE", "shutdown_grace", "30s", values.duration,
       "How long a graceful shutdown waits for in-flight work. In a cluster the drain "
       "keeps the tunnel of a studio that has not moved to another node for a third of "
       "it, 10 s at most.", seed=False,
       section="general"),
    # Operations: access log, quotas (ours; see docs/operators.md)
    _v("CONNECT_ACCESS_LOG", "access_log", "text", values.access_log,
       "Access log, one line per HTTP request and per WebSocket and SSH session: off, text "
       "or json (log namespace studios_gateway.access; written whatever CONNECT_LOG_LEVEL).",
       seed=False, section="operations"),
    _v("CONNECT_COMPILED_LANE", "compiled_lane", "true", values.boolean,
       "Answer a tool's plain response (Content-Length body, no cookie or redirect) with "
       "one C call and its body as it comes, instead of the Python way; false: always the "
       "Python way. An "
       "install built without a C compiler has only the Python way (check-config says so).",
       seed=False, section="operations"),
    _v("CONNECT_QUOTA_WINDOW", "quota_window", "24h", values.positive_duration,
       "Rolling window of the transfer quotas.", seed=False, section="operations"),
    _v("CONNECT_QUOTA_USER_BYTES", "quota_user_bytes", None, _NO_ZERO_SIZE,
       "Bytes one user may move (both ways, every session, every node) per window; over it "
       "new requests get 429 and WebSocket and SSH connections stop. Unset: no limit (0 is "
       "refused).",
       seed=False, section="operations"),
    _v("CONNECT_QUOTA_SESSION_BYTES", "quota_session_bytes", None, _NO_ZERO_SIZE,
       "Bytes one session may move (both ways, every user, every node) per window. Unset: "
       "no limit (0 is refused).", seed=False, section="operations"),
    _v("CONNECT_QUOTA_SESSION_BANDWIDTH", "quota_session_bandwidth", None, _NO_ZERO_SIZE,
       "Bytes per second one session may move on one node (HTTP, WebSockets and SSH "
       "together, each direction counted); reads are paused to keep to it. Unset: no cap (0 "
       "is refused).",
       seed=False, section="operations"),
)

BY_NAME: dict[str, Var] = {v.name: v for v in VARIABLES}
_BY_ATTR: dict[str, Var] = {v.attr: v for v in VARIABLES}


def default_of(attr: str) -> Any:
    """The parsed default of the setting stored as `attr` (None when it has none). Parts
    that can be built without a Config (in tests) take their defaults from here, so each
    setting has one default."""
    var = _BY_ATTR[attr]
    return None if var.default is None else var.parse(var.default)
BY_OPTION: dict[str, Var] = {v.option: v for v in VARIABLES}

#: Variables of the connect client: known, so not reported as misspellings.
CLIENT_VARIABLES = frozenset({
    "CONNECT_GATEWAY_URL", "CONNECT_SESSION_ID", "CONNECT_SESSION_TOKEN", "CONNECT_TOOL_PORT",
    "CONNECT_TOOL_PATH_PREFIX", "CONNECT_CLIENT_LOG_LEVEL", "CONNECT_STRING", "CONNECT_TOOL",
    "CONNECT_CLIENT_VERSION", "CONNECT_TOOL_WORKDIR", "CONNECT_TOOL_PRESET",
    "CONNECT_UNKNOWN_SESSION_WAIT", "CONNECT_TOOL_RESTART_WAIT",
})


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.6,
                 prefix: str = "") -> str:
    """``"; did you mean X?"``, X the candidate closest to a misspelt variable `name`, or
    "" when none is within `cutoff` (difflib's ratio). With `prefix` (which `name` and
    every candidate start with) only what follows it is compared."""
    n = len(prefix)
    close = difflib.get_close_matches(name[n:], [c[n:] for c in candidates], n=1,
                                      cutoff=cutoff)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


# --- the config object --------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Every setting, parsed. Build it with :func:`load_config`."""

    redis_enabled: bool
    redis_address: tuple[str, int]
    redis_user: str | None
    redis_password: str | None = field(repr=False)
    redis_db: int
    redis_prefix: str
    redis_tls_enable: bool
    redis_tls_skip_verify: bool
    redis_tls_key_file: str | None
    redis_tls_cert_file: str | None
    redis_tls_ca_file: str | None
    bind_address: str
    listener_port: int
    tunnel_port: int
    management_port: int | None
    management_auth_key: str | None = field(repr=False)
    host_domain: str | None
    http_port: int
    proxy_url: str | None
    studios_domain: str | None
    tunnel_url: tuple[str, int] | None
    platform_url: str | None
    storage_root: str
    log_level: str
    client_name: str
    grant_type: str
    oidc_registration_token: str | None = field(repr=False)
    local_cache_ttl: float
    oidc_issuer_url: str | None
    oidc_client_id: str | None
    oidc_client_secret: str | None = field(repr=False)
    oidc_scopes: str
    oidc_user_claim: str
    login_ttl: float
    login_link_ttl: float
    tls_cert_file: str | None
    tls_key_file: str | None
    tls_handshake_timeout: float
    tls_max_handshakes: int
    trusted_proxy_cidrs: tuple[Any, ...]
    allowed_workspaces: frozenset[str] | None
    path_routing: bool
    http_max_request_line: int
    http_max_header_size: int
    http_max_headers: int
    http_header_timeout: float
    http_idle_timeout: float
    http_max_connections: int
    http_max_body: int | None
    http_connect_timeout: float
    http_response_timeout: float
    http_pool_size: int
    http_pool_idle_timeout: float
    ssh_enabled: bool
    ssh_addr: tuple[str, int]
    ssh_key_path: str | None
    ssh_key_value: bytes | None = field(repr=False)
    ssh_max_connections: int
    ssh_max_conn_channels: int
    ssh_handshake_timeout: float
    ssh_max_startups: MaxStartups
    ssh_kex_timeout: float
    ssh_client_timeout: float
    tunnel_window_size: int
    tunnel_ping_interval: float
    tunnel_ping_timeout: float
    tunnel_retry_period: float
    tunnel_claim_ttl: float
    node_id: str | None
    peer_secret: str | None = field(repr=False)
    peer_tls_cert_file: str | None
    peer_tls_key_file: str | None
    peer_tls_ca_file: str | None
    advertise_address: tuple[str, int | None] | None
    reuse_port: bool
    shutdown_grace: float
    access_log: str
    compiled_lane: bool
    quota_window: float
    quota_user_bytes: int | None
    quota_session_bytes: int | None
    quota_session_bandwidth: int | None
    #: Where each variable's value came from: option, environment, env file, state
    #: directory (CONNECT_STORAGE_ROOT only) or default.
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    #: The env file's own lines for the gateway's variables, used or not (an option or
    #: the environment wins over them): a reload says when one that does not win changed.
    env_file_values: Mapping[str, str] = field(default_factory=dict, repr=False,
                                               compare=False)
    #: Each variable's text as given (or its documented default; None: not set), for
    #: messages that quote what the operator wrote.
    raw: Mapping[str, str | None] = field(default_factory=dict, repr=False, compare=False)
    warnings: tuple[str, ...] = field(default=(), repr=False, compare=False)

    # Derived views -----------------------------------------------------------

    @property
    def effective_proxy_url(self) -> str:
        """CONNECT_PROXY_URL, or localhost as this gateway serves it: https when the HTTP
        port has a certificate, with the port when it is not the scheme's default (the
        links it hands out must work as printed)."""
        if self.proxy_url:
            return self.proxy_url
        tls = bool(self.tls_cert_file and self.tls_key_file)
        scheme, default_port = ("https", 443) if tls else ("http", 80)
        port = "" if self.http_port == default_port else f":{self.http_port}"
        return f"{scheme}://localhost{port}"

    @property
    def proxy_host(self) -> str:
        return urlsplit(self.effective_proxy_url).hostname or "localhost"

    @property
    def effective_studios_domain(self) -> str:
        return self.studios_domain or self.proxy_host

    @property
    def effective_tunnel_url(self) -> tuple[str, int]:
        return self.tunnel_url or (self.proxy_host, self.tunnel_port)

    @property
    def effective_node_id(self) -> str:
        import socket

        return self.node_id or f"{socket.gethostname()}-{self.tunnel_port}"

    @property
    def effective_advertise_address(self) -> str:
        """host:port other nodes dial to reach this node's peer listener."""
        import ipaddress
        import socket

        host, port = self.advertise_address or (None, None)
        if host is None:
            host = self.host_domain
        if host is None:
            bind = ipaddress.ip_address(self.bind_address)
            host = socket.gethostname() if bind.is_unspecified else str(bind)
        port = port or self.listener_port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _derived(self, name: str) -> str | None:
        """What an unset variable that defaults to other settings comes to here (check-config
        prints it: an operator needs the node id and addresses actually used)."""
        if name == "CONNECT_PROXY_URL":
            return self.effective_proxy_url
        if name == "CONNECT_STUDIOS_DOMAIN":
            return self.effective_studios_domain
        if name == "CONNECT_TUNNEL_URL":
            host, port = self.effective_tunnel_url
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if name == "CONNECT_OIDC_ISSUER_URL":
            return self.platform_url
        if name == "CONNECT_NODE_ID":
            return self.effective_node_id
        if name == "CONNECT_ADVERTISE_ADDRESS" and self.redis_enabled:
            return self.effective_advertise_address
        return None

    def workspace_allowed(self, workspace_id: str | None) -> bool:
        """TOWER_DATA_STUDIO_ALLOWED_WORKSPACES: unset all, empty none, else listed ids."""
        if self.allowed_workspaces is None:
            return True
        return workspace_id is not None and workspace_id in self.allowed_workspaces

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, effective value with secrets redacted, source), in table order."""
        rows = []
        for var in VARIABLES:
            value = getattr(self, var.attr)
            source = self.sources.get(var.name, "default")
            if var.name == "CONNECT_REDIS_ADDRESS" and not self.redis_enabled:
                rows.append((var.name, "(not set: single node, sessions in CONNECT_STORAGE_ROOT)",
                             source))
                continue
            if source == "default" and var.default is not None:
                rows.append((var.name, var.default, source))  # as the README's table has it
                continue
            derived = self._derived(var.name) if value is None else None
            if derived is not None:
                rows.append((var.name, f"(not set: {redact_password(derived)})", source))
                continue
            shown = _show(var, value)
            if var.name == "CONNECT_REDIS_PREFIX":
                # As the keys have it: 'studios:' makes 'studios::<id>', not the keys of
                # nodes whose prefix is 'studios' (another cluster; cluster.md).
                shown += f" (keys {value}:<session id>)"
            rows.append((var.name, shown, source))
        return rows


def show_value(var: Var, value: Any) -> str:
    """A parsed value as check-config prints it (a secret as <redacted>)."""
    return _show(var, value)


def _show(var: Var, value: Any) -> str:
    """A parsed value in the table's forms: durations in one unit, sizes in KiB/MiB/GiB."""
    if value is None:
        return "(not set)"
    if var.secret:
        return REDACTED
    if var.parse in (values.duration, values.positive_duration):
        return format_setting(value)
    if var.parse in values.SIZE_PARSERS:
        return values.format_size(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset):
        return ",".join(sorted(value)) if value else '"" (none)'
    if var.parse is values.advertise:
        host, port = value
        return host if port is None else f"{host}:{port}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return redact_password(str(value))  # a URL's password, like a secret, is never shown
