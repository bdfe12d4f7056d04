"""The `studios-gateway` command: check-config (and, as they land, sessions and demo)."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from studios_gateway import versions
from studios_gateway.config import ConfigError
from studios_gateway.config_loading import load_config, read_env_file
from studios_gateway.wire import tools


def check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(env_file=args.env_file)
    except ConfigError as e:
        for warning in e.warnings:  # a misspelt name, often the errors' cause
            print(f"warning: {warning}", file=sys.stderr)
        for error in e.errors:  # every invalid variable, one line each
            print(f"studios-gateway: {error}", file=sys.stderr)
        return 2
    rows = config.describe()
    width = max(len(name) for name, _, _ in rows)
    vwidth = min(48, max(len(value) for _, value, _ in rows))
    if not args.quiet:
        for name, value, source in rows:
            print(f"{name:<{width}}  {value:<{vwidth}}  {source}")
        print()
    for warning in config.warnings:
        print(f"warning: {warning}")
    from studios_gateway.http import lane

    no_lane = lane.missing(config.compiled_lane)
    if no_lane is not None:
        print(f"warning: {no_lane}")
    if config.redis_enabled:
        from studios_gateway.registry.redis_link import reply_parser_missing

        no_parser = reply_parser_missing()
        if no_parser is not None:
            print(f"warning: {no_parser}")
    from studios_gateway import storage_root
    from studios_gateway.http.component import check_https_certificate
    from studios_gateway.peers.component import check_peer_tls

    # What the start would refuse beyond the values themselves.
    from studios_gateway.registry.redis_link import check_tls_files
    from studios_gateway.service import check_saved_sessions, check_self_signed
    from studios_gateway.ssh.component import check_host_key

    problems = [check_https_certificate(config), check_peer_tls(config),
                check_tls_files(config), check_host_key(config)]
    try:
        storage_root.check(config.storage_root)
    except ConfigError as e:
        problems.append(str(e))
    else:  # (what is kept there, once it is known usable)
        from studios_gateway.auth.login import check_signing_key

        problems += [check_self_signed(config), check_saved_sessions(config),
                     check_signing_key(config)]
    problems = [p for p in problems if p is not None]
    if getattr(args, "connect", False):
        if not config.redis_enabled:
            print("no Redis configured (CONNECT_REDIS_ADDRESS unset): sessions kept by this "
                  "node")
        problems += _try_links(config)
    for problem in problems:
        print(f"studios-gateway: {problem}", file=sys.stderr)
    if any("Permission denied" in (p or "") for p in problems):
        from studios_gateway.config_values import user_name

        print(f"studios-gateway: (check-config ran as {user_name()}: a file the "
              "gateway's own user may read is checked as that user, e.g. sudo -u "
              "studios-gateway studios-gateway check-config)", file=sys.stderr)
    if problems:
        return 2
    print("configuration OK")
    return 0


def _peer_pool(config: Any, reactor: Any) -> Any:
    """The peer links a node of this configuration would make (None: it accepts and makes
    none, said elsewhere), for check-config --connect to try one to every registered node
    (a CONNECT_PEER_SECRET that differs is said before the start)."""
    from studios_gateway.peers.component import checked_peer_tls, settings_from
    from studios_gateway.peers.handshake import PeerAuth
    from studios_gateway.peers.link import PeerPool

    tls, problem = checked_peer_tls(config)
    if problem is not None:  # (said by the file checks)
        return None
    auth = PeerAuth(config.peer_secret, mutual_tls=tls is not None)
    if not auth.enabled:
        return None
    return PeerPool(reactor, auth, config.effective_node_id, settings_from(config), tls=tls)


def _try_links(config: Any) -> list[str]:
    """check-config --connect: connect to the configured Redis once and ask the OpenID
    issuer what a start would (one reactor run for both); print what they say, return the
    problems (empty: both answered as a node needs)."""
    from twisted.internet import defer, task

    from studios_gateway.auth.issuer_check import check_issuer
    from studios_gateway.registry.node_settings import shared_settings
    from studios_gateway.registry.redis_probe import probe_redis, store_from_config

    found: dict[str, Any] = {}

    def run(clock: Any) -> Any:
        calls = []
        if config.redis_enabled:
            host, port = config.redis_address
            pool = _peer_pool(config, clock)
            d = probe_redis(lambda: store_from_config(config, clock, reconnect_delay=(0.5, 1.0)),
                            f"{host}:{port}", clock, settings=shared_settings(config),
                            link=pool.connect if pool is not None else None)
            d.addBoth(lambda r: found.__setitem__("redis", r))
            if pool is not None:
                d.addCallback(lambda _: pool.close())
            calls.append(d)
        issuer = check_issuer(config, clock)
        if issuer is not None:
            calls.append(issuer.addBoth(lambda r: found.__setitem__("issuer", r)))
        return defer.gatherResults(calls)

    try:
        task.react(run, [])
    except SystemExit:  # react's way to end; the results are in `found`
        pass
    problems: list[str] = []
    if "redis" in found:
        problems += _said_redis(config, found["redis"])
    if "issuer" in found:
        result = found["issuer"]
        if not hasattr(result, "problems"):
            return problems + [f"the OpenID issuer: the check failed: {result}"]
        for note in result.notes:
            print(note)
        problems += result.problems
    return problems


def _said_redis(config: Any, result: Any) -> list[str]:
    """Print what the Redis probe found; its problem, if any."""
    host, port = config.redis_address
    if not hasattr(result, "problem"):
        return [f"Redis at {host}:{port}: the check failed: {result}"]
    for note in result.notes:
        print(note)
    for warning in result.warnings:
        print(f"warning: {warning}")
    return [result.problem] if result.problem is not None else []


def image_tag(args: argparse.Namespace) -> int:
    """Print the two tags an image of this tool version is pushed with (seed 000)."""
    try:
        update = None if args.update is None else versions.parse_update(args.update)
        connect = versions.parse_connect_version(args.connect) if args.connect \
            else versions.CONNECT_PROTOCOL_VERSION
        tags = versions.published_tags(args.tool_version, update, connect)
    except versions.VersionError as e:
        print(f"studios-gateway: image-tag: {e}", file=sys.stderr)
        return 2
    for tag in tags:
        print(tag)
    return 0


def _settings(args: argparse.Namespace) -> dict[str, str]:
    """The environment over the --env-file's lines (as for the gateway: the environment
    wins), for the management port, key and bind address."""
    found: dict[str, str] = {}
    env_file = getattr(args, "env_file", None)
    if env_file:
        try:
            found.update(read_env_file(env_file))
        except ConfigError as e:
            raise SystemExit(f"studios-gateway: {e}") from None
    found.update(os.environ)
    return found


def _management_url(args: argparse.Namespace) -> str:
    if args.url:
        if not args.url.startswith(("http://", "https://")):
            raise SystemExit("studios-gateway: --url must be an http:// or https:// URL")
        return args.url.rstrip("/")
    settings = _settings(args)
    port = settings.get("CONNECT_MANAGEMENT_PORT")
    if not port:
        raise SystemExit("studios-gateway: give --url, --env-file with the gateway's settings, "
                         "or set CONNECT_MANAGEMENT_PORT (the gateway's management port)")
    # The management port listens on CONNECT_BIND_ADDRESS: loopback when it is every
    # interface, else that address.
    host = settings.get("CONNECT_BIND_ADDRESS", "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


#: Seconds an admin API call may take (a gateway whose reactor is stuck never answers).
API_TIMEOUT = 30.0


def api_call(args: argparse.Namespace, method: str, path: str, body: Any = None,
             answers: tuple[int, ...] = ()) -> Any:
    """Call the admin API; print its error and exit 1 on failure (an HTTP status in
    `answers` is no failure: its JSON is returned, as /ready's 503)."""
    url = _management_url(args) + path
    headers = {"Accept": "application/json"}
    key = _settings(args).get("CONNECT_MANAGEMENT_AUTH_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=API_TIMEOUT) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        if e.code in answers:
            return json.loads(e.read() or b"null")
        try:
            message = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            message = e.reason
        if e.code == 401:  # which key, and where it comes from
            message += ("; the key is the gateway's CONNECT_MANAGEMENT_AUTH_KEY, "
                        + ("and the one given is not it" if key else
                           "and none was given: set it, or give --env-file with it"))
        raise SystemExit(f"studios-gateway: {method} {path}: {e.code} {message}") from None
    except urllib.error.URLError as e:
        raise SystemExit(f"studios-gateway: cannot reach the gateway at {url}: {e.reason}") \
            from None
    except (OSError, http.client.HTTPException) as e:
        # Connected, then no answer in time (TimeoutError) or the connection ended
        # (a gateway stopping): urllib passes these on as they are (a traceback).
        why = "no answer in time" if isinstance(e, TimeoutError) else (str(e) or repr(e))
        raise SystemExit(f"studios-gateway: {method} {path}: the gateway at {url} did not "
                         f"answer: {why}") from None


def _print_session(s: dict[str, Any]) -> None:
    from studios_gateway.away import state_words

    state = "connected" if s.get("connected") else state_words(s.get("away"), time.time())
    users = ",".join(s.get("allowed_users") or []) or "-"
    # What is known of the versions (the image's tag, or what the studio's client said);
    # nothing at all for a session made without an image and not connected.
    known = [f"{name} {s[key]}" for name, key in (("tool", "tool_version"),
                                                  ("connect", "connect_version"))
             if s.get(key)]
    versions_ = f" ({', '.join(known)})" if known else ""
    print(f"{s['id']}  {s['tool']:<10}  owner={s['owner']}  users={users}  "
          f"workspace={s.get('workspace_id') or '-'}  ssh={'on' if s.get('ssh_enabled') else 'off'}"
          f"  {state}  image={s.get('image') or '-'}{versions_}")


def sessions_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"owner": args.owner, "allowed_users": args.allow or [],
                            "ssh_enabled": args.ssh}
    if args.tool:
        body["tool"] = args.tool
    if args.image:
        body["image"] = args.image
    if args.id:
        body["id"] = args.id
    if args.workspace:
        body["workspace_id"] = args.workspace
    created = api_call(args, "POST", "/api/sessions", body)
    if args.json:
        print(json.dumps(created, indent=1))
        return 0
    print(f"session:        {created['id']}")
    print(f"open:           {created['url']}")
    if created.get("login_link"):
        print(f"login link:     {created['login_link']}")
    if created.get("image"):
        print(f"image:          {created['image']} (tool {created['tool']} "
              f"{created['tool_version']}, connect {created['connect_version']})")
    print(f"connect string: {created['connect_string']}")
    tool = created.get("tool") or "generic"
    if created.get("image") and not args.tool and tool == "generic":
        # The image's name named no tool: a studio that runs one would be served as a web
        # application of its own, Xpra, VS Code and R-IDE broken in path mode.
        print("note:           the image's repository name names no tool, so this is a "
              "generic studio; for a JupyterLab, R-IDE, VS Code or Xpra image, delete it and "
              "create it with --tool")
    # The connect string holds the studio's token: in the environment, not as an
    # argument (every local user can read a process's arguments, with ps).
    run_it = "run in the studio: CONNECT_STRING='<connect string>' studios-connect"
    if tool == "generic":  # a web app of your own, already listening on PORT
        print(f"{run_it} --tool-port PORT")
    else:  # the preset starts the tool (docs/studios.md)
        print(f"{run_it} --tool {tool}")
    print("  (or CONNECT_STRING in the container's environment or an env file; not "
          "--connect, whose value other local users can read with ps)")
    return 0


def sessions_list(args: argparse.Namespace) -> int:
    found = api_call(args, "GET", "/api/sessions")["sessions"]
    if args.json:
        print(json.dumps(found, indent=1))
    for s in found if not args.json else []:
        _print_session(s)
    if not found and not args.json:
        print("no sessions")
    return 0


def sessions_show(args: argparse.Namespace) -> int:
    print(json.dumps(api_call(args, "GET", f"/api/sessions/{args.id}"), indent=1))
    return 0


def sessions_users(args: argparse.Namespace) -> int:
    add, remove = args.add or [], args.remove or []
    if (add or remove) and args.users:
        raise SystemExit("studios-gateway: sessions users: give the whole list, or --add and "
                         "--remove, not both")
    users = args.users
    if add or remove:  # the list as it is now, changed (retyping it could drop someone)
        current = api_call(args, "GET", f"/api/sessions/{args.id}")["allowed_users"]
        users = [u for u in [*current, *add] if u not in remove]
    changed = api_call(args, "PATCH", f"/api/sessions/{args.id}",
                       {"allowed_users": list(dict.fromkeys(users))})
    _print_session(changed)
    return 0


def sessions_ssh(args: argparse.Namespace) -> int:
    changed = api_call(args, "PATCH", f"/api/sessions/{args.id}",
                       {"ssh_enabled": args.state == "on"})
    _print_session(changed)
    return 0


def sessions_link(args: argparse.Namespace) -> int:
    minted = api_call(args, "POST", f"/api/sessions/{args.id}/login-links", {"user": args.user})
    print(minted["login_link"])
    return 0


def sessions_token(args: argparse.Namespace) -> int:
    rotated = api_call(args, "POST", f"/api/sessions/{args.id}/token")
    print(f"connect string: {rotated['connect_string']}")
    print("the old token no longer binds, and a tunnel bound with it was closed: give the "
          "studio this connect string (CONNECT_STRING)")
    return 0


def sessions_delete(args: argparse.Namespace) -> int:
    api_call(args, "DELETE", f"/api/sessions/{args.id}")
    print(f"session {args.id} ended")
    return 0


def status(args: argparse.Namespace) -> int:
    """Whether the running gateway is ready (/ready), each check on a line, and how many
    sessions it knows (/api/sessions): exit 0 when ready, 1 when not or not reachable."""
    ready = api_call(args, "GET", "/ready", answers=(503,))
    # A session store that is away is why a gateway is not ready: the sessions' 503 is
    # said on their line, after the checks that say it too.
    listed = api_call(args, "GET", "/api/sessions", answers=(503,))
    found = listed.get("sessions") if isinstance(listed, dict) else None
    if found is None:
        error = listed.get("error") if isinstance(listed, dict) else None
        counts: dict[str, Any] = {"sessions": None, "sessions_error": error or "no answer"}
        said = f"sessions: unknown ({counts['sessions_error']})"
    else:
        connected = sum(1 for s in found if s.get("connected"))
        counts = {"sessions": len(found), "connected": connected}
        said = f"sessions: {len(found)} ({connected} connected)"
    if args.json:
        print(json.dumps({**ready, **counts}, indent=1))
    else:
        print(f"{ready['status']} ({_management_url(args)})")
        checks = ready.get("checks", {})
        width = max((len(name) for name in checks), default=0)
        for name, state in checks.items():
            print(f"  {name:<{width}}  {state}")
        print(said)
    return 0 if ready.get("status") == "ready" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studios-gateway",
        description="Studios gateway tools. The gateway itself runs as `twistd studios-gateway`.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "check-config", help="print the effective configuration and check it",
        description="Print every setting's effective value and where it came from (the "
                    "environment, --env-file or the default; secrets as <redacted>), then "
                    "warnings. Exits 2 on the errors the gateway would "
                    "stop on, one line each in the same words; 0 otherwise. Run it as the "
                    "gateway's user: CONNECT_STORAGE_ROOT must be a directory that user can "
                    "write or create (nothing is left behind).")
    p.add_argument("--env-file", help="also read variables from this file (NAME=value lines)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    p.add_argument("--connect", action="store_true",
                   help="also connect to the configured Redis as a node would (credentials, "
                        "db, TLS, channel rights) and say whether it persists and may evict, "
                        "and ask the OpenID issuer what a start would (discovery, keys, "
                        "whether it accepts the client id and secret)")
    p.set_defaults(func=check_config)

    t = sub.add_parser("image-tag", help="print the two tags a studio image is pushed with",
                       description="Print the tags of a studio image built for this Connect "
                                   "version: <TOOL_VERSION>-[u<N>-]<MAJOR>.<MINOR> (the one "
                                   "the Platform shows) and ...<MAJOR>.<MINOR>.<PATCH>.")
    t.add_argument("tool_version", metavar="TOOL_VERSION", help="the tool's version, e.g. 4.2.5")
    t.add_argument("--update", metavar="uN", help="update flag for a backwards incompatible "
                                                  "change of the tool, e.g. u1")
    t.add_argument("--connect", metavar="VERSION",
                   help=f"Connect version (default this one's, "
                        f"{versions.CONNECT_PROTOCOL_VERSION})")
    t.set_defaults(func=image_tag)

    sub.add_parser("demo", help="start a gateway and a demo studio on this machine "
                                "(see `studios-gateway demo --help`)")

    url_help = ("management URL (default http://127.0.0.1:$CONNECT_MANAGEMENT_PORT, or "
                "CONNECT_BIND_ADDRESS when that is one address); the key comes from "
                "CONNECT_MANAGEMENT_AUTH_KEY")
    env_help = ("read CONNECT_MANAGEMENT_PORT, CONNECT_MANAGEMENT_AUTH_KEY and "
                "CONNECT_BIND_ADDRESS from the gateway's env file too (the environment "
                "wins), e.g. /etc/studios-gateway/gateway.env")
    st = sub.add_parser(
        "status", help="whether the running gateway is ready, and its sessions",
        description="Ask the running gateway's management port whether it is ready (as a "
                    "load balancer's /ready does), print each check on a line and how many "
                    "sessions it knows and how many are connected. Exits 0 when ready, 1 "
                    "when not ready or not reachable. The process itself: systemctl status "
                    "studios-gateway.")
    st.add_argument("--url", help=url_help)
    st.add_argument("--env-file", help=env_help)
    st.add_argument("--json", action="store_true", help="print /ready's JSON answer with the "
                                                        "session counts")
    st.set_defaults(func=status)

    sp = sub.add_parser("sessions", help="create, list, show and end sessions (admin API)")
    sp.add_argument("--url", help=url_help)
    sp.add_argument("--env-file", help=env_help)
    # --url and --env-file before or after the action (`sessions list --url URL`): the
    # action's copy sets it only when given, so `sessions --url URL list` keeps working.
    url_after = argparse.ArgumentParser(add_help=False)
    url_after.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    url_after.add_argument("--env-file", default=argparse.SUPPRESS, help=env_help)
    ssub = sp.add_subparsers(dest="action", required=True)

    def action(name: str, **kw: Any) -> argparse.ArgumentParser:
        return ssub.add_parser(name, parents=[url_after], **kw)

    c = action("create", help="create a session and print its connect string")
    c.add_argument("--owner", required=True, help="the user who owns the studio")
    c.add_argument("--tool", help=f"the studio's tool: {tools.accepted()}; default: the one "
                                   "the image's name names, else generic")
    c.add_argument("--image", help="the studio's image, such as registry.example/"
                                   "data-studio-jupyter:4.2.5-0.12.0: its tag gives the tool "
                                   "and Connect versions")
    c.add_argument("--id", help="session id (default: 8 random hex characters)")
    c.add_argument("--workspace", help="workspace id")
    c.add_argument("--allow", action="append", metavar="USER", help="another allowed user")
    c.add_argument("--ssh", action="store_true", help="allow SSH into the studio")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer")
    c.set_defaults(func=sessions_create)
    ls = action("list", help="list sessions")
    ls.add_argument("--json", action="store_true", help="print the API's JSON answer")
    ls.set_defaults(func=sessions_list)
    sh = action("show", help="one session, with its tunnel")
    sh.add_argument("id")
    sh.set_defaults(func=sessions_show)
    u = action("users", help="set a session's allow-list (users taken off it are "
                                      "disconnected)")
    u.add_argument("id")
    u.add_argument("users", nargs="*", metavar="USER", help="the allowed users (none: only "
                                                            "the owner)")
    u.add_argument("--add", action="append", metavar="USER",
                   help="add this user to the list as it is (repeatable)")
    u.add_argument("--remove", action="append", metavar="USER",
                   help="take this user off the list as it is (repeatable)")
    u.set_defaults(func=sessions_users)
    ss = action("ssh", help="allow or refuse SSH into a session's studio (off: its open "
                            "SSH connections are closed)")
    ss.add_argument("id")
    ss.add_argument("state", choices=("on", "off"))
    ss.set_defaults(func=sessions_ssh)
    lk = action("link", help="print a one-time login link for the owner or an allowed user "
                             "(gateways without an OpenID issuer; the connect token is kept)")
    lk.add_argument("id")
    lk.add_argument("user", metavar="USER")
    lk.set_defaults(func=sessions_link)
    tk = action("token", help="give a session a new connect token and print its connect "
                              "string (the old token stops working; a tunnel bound with it "
                              "is closed)")
    tk.add_argument("id")
    tk.set_defaults(func=sessions_token)
    d = action("delete", help="end a session and close its tunnel")
    d.add_argument("id")
    d.set_defaults(func=sessions_delete)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from studios_gateway.demo.run import main as demo_main

        return demo_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


def console() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`sessions list | head -1`): what is left of the output
        # has nobody to read it. Python printed a traceback, and another at exit when it
        # flushed stdout again; the shell's pipeline says 141 for a command killed so.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + 13  # SIGPIPE's
    sys.exit(code)


if __name__ == "__main__":
    console()
