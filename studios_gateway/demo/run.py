"""`studios-gateway demo`: a gateway and one demo studio on this machine, in one command.

It starts `twistd -n studios-gateway` on the embedded default (one node, no
Redis: sessions in --storage-root; no Platform), creates a session through the
admin API, starts a studio through `studios-connect` in entry-point mode
(JupyterLab through its preset when it is installed, otherwise the built-in demo
tool), and prints the URL to open.
With --ssh it also runs the gateway's SSH proxy on 127.0.0.1, registers your public key
for the studio's owner and prints the `ssh` command that opens a shell in the studio.
Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _free_port() -> int:
    return _free_ports(1, set())[0]


def _free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now, none of them in ``taken``. Each
    socket stays bound until all are picked: asked one at a time, the kernel may hand
    out the same free port twice (a demo then refused its own ports as the same one)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in taken and port not in ports:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _check_ports_free(given: dict[str, int]) -> None:
    """Stop before anything starts when a port given (or the default 8080) cannot be had
    on 127.0.0.1, naming the option that chooses another and one that is free. Before,
    the gateway said `cannot listen for the HTTP proxy (CONNECT_HTTP_PORT) ...: Address
    already in use` among its start-up lines, a variable the demo sets itself."""
    for option, port in given.items():
        if not port:
            continue
        e = _bind_error(port)
        if e is not None:
            why = ("is in use by another program" if e.errno == errno.EADDRINUSE
                   else f"cannot be used ({e.strerror})")
            others = set(given.values())
            free = next((p for p in range(port + 1, min(port + 100, 65536))
                         if p not in others and _bindable(p)), None)
            hint = f", for example {option} {free}" if free is not None else ""
            raise SystemExit(f"studios-gateway demo: port {port} ({option}) {why} on "
                             f"127.0.0.1; choose another with {option}{hint}")


def _bind_error(port: int) -> OSError | None:
    """Why `port` on 127.0.0.1 cannot be listened on, or None when it can."""
    try:
        with socket.socket() as s:
            # as Twisted listens: a port left in TIME_WAIT by an earlier run is usable
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    except OSError as e:
        return e
    return None


def _bindable(port: int) -> bool:
    return _bind_error(port) is None


def _wait_ready(url: str, key: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Poll /ready until it answers 200 (the event we need), or the gateway dies."""
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})  # noqa: S310
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"studios-gateway demo: the gateway exited ({proc.returncode}); "
                             "see its log above")
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit("studios-gateway demo: the gateway did not become ready within "
                     f"{timeout:g}s")


def _api(base: str, key: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,  # noqa: S310
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


def _wait_connected(base: str, key: str, sid: str, studio: subprocess.Popen[bytes],
                    timeout: float) -> None:
    """Poll the admin API until the studio's tunnel is bound (the tool answers first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if studio.poll() is not None:
            raise SystemExit(f"studios-gateway demo: the studio exited ({studio.returncode}); "
                             "see its log above")
        try:
            if _api(base, key, "GET", f"/api/sessions/{sid}").get("connected"):
                return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"studios-gateway demo: the studio did not connect within {timeout:g}s")


#: The public keys `--ssh` looks for when no --ssh-key is given, in this order.
DEFAULT_SSH_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_ecdsa.pub", "~/.ssh/id_rsa.pub")
#: The private keys OpenSSH offers by itself (no -i needed in the printed command).
SSH_DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


def ssh_public_key(given: str | None) -> tuple[Path, str]:
    """The person's public key for `--ssh`: the file given, else the first of
    DEFAULT_SSH_KEYS there is; its path and text. SystemExit before anything starts when
    there is none, it cannot be read or it is not a public key the gateway accepts, saying
    how to make one."""
    from studios_gateway.ssh.keys import parse_public_keys

    make = ("make one with `ssh-keygen -t ed25519` (press Enter at each question), or give "
            "one with --ssh-key FILE.pub")
    if given is None:
        found = [Path(p).expanduser() for p in DEFAULT_SSH_KEYS]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise SystemExit("studios-gateway demo: --ssh needs your public SSH key and there "
                             f"is none at {' or '.join(DEFAULT_SSH_KEYS)}; {make}")
    else:
        path = Path(given).expanduser()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SystemExit(f"studios-gateway demo: --ssh-key {path}: cannot read it "
                         f"({e.strerror}); {make}") from None
    if "PRIVATE KEY" in text:
        raise SystemExit(f"studios-gateway demo: --ssh-key {path} is a private key; give its "
                         f"public half ({path}.pub, or `ssh-keygen -y -f {path}` prints it)")
    try:
        keys = parse_public_keys(text)
    except ValueError as e:
        raise SystemExit(f"studios-gateway demo: --ssh-key {path}: not a public key the "
                         f"gateway accepts ({e}); {make}") from None
    if not keys:
        raise SystemExit(f"studios-gateway demo: --ssh-key {path} holds no key; {make}")
    return path, "\n".join(keys) + "\n"


def demo_host_key(directory: Path) -> tuple[Path, str]:
    """The demo gateway's SSH host key, made once under ``directory`` (mode 0600, as the
    gateway makes one when none is configured) and kept across runs with the same
    --storage-root; its path and its public line."""
    from studios_gateway.ssh.keys import GENERATED_NAME, generated_host_key

    key = generated_host_key(directory)
    return directory / GENERATED_NAME, key.public().toString("OPENSSH").decode("ascii")


def ssh_fingerprint(public_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key line."""
    from twisted.conch.ssh.keys import Key

    from studios_gateway.ssh.keys import fingerprint

    return fingerprint(Key.fromString(public_line.encode("ascii")))


def ssh_command(user: str, sid: str, port: int, known_hosts: Path, public_key: Path) -> str:
    """The `ssh` command line that opens a shell in the studio: its host key is checked
    against the demo's own known_hosts file (the person's is left alone, and a demo with
    another --storage-root on the same port raises no "host key changed" alarm); `-i` when
    the key is not one ssh offers by itself."""
    words = ["ssh", "-p", str(port), "-o", f"UserKnownHostsFile={known_hosts}"]
    private = public_key.with_suffix("") if public_key.suffix == ".pub" else None
    defaults = {Path(p).expanduser() for p in SSH_DEFAULT_IDENTITIES}
    if private is not None and private.is_file() and private not in defaults:
        words += ["-i", str(private)]
    words.append(f"{user}@{sid}@127.0.0.1")
    return shlex.join(words)


#: `--tool` choices: the studio tools with a preset, the built-in page, or auto.
TOOLS = ("auto", "jupyterlab", "vscode", "xpra", "ride", "builtin")
#: How to get each preset's program onto this machine, for the error when it is missing.
INSTALL_HINT = {
    "jupyterlab": "`.venv/bin/pip install jupyterlab` (scripts/setup --test does)",
    "vscode": "`sudo scripts/install-studio-tools code-server`",
    "xpra": "`sudo scripts/install-studio-tools xpra`",
    "ride": "RStudio Server from Posit (not in Debian's archive)",
}


def _search_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _not_installed(tool: str, program: str) -> SystemExit:
    """The demo's refusal of a `--tool` whose program is not on PATH, and how to get it."""
    return SystemExit(f"studios-gateway demo: --tool {tool} needs {program}, which is not "
                      f"on PATH; install it with {INSTALL_HINT[tool]}")


def preset_command(tool: str) -> list[str]:
    """`studios-connect` arguments for a tool with a preset, its program looked up the way
    the preset will; SystemExit naming the program and how to install it if it is not
    there."""
    from studios_gateway.studio.presets import pick
    from studios_gateway.studio.presets.base import Place

    search = _search_path()
    preset = pick(tool, [], lambda name: shutil.which(name, path=search) is not None)
    assert preset is not None
    program = preset.default_command(Place(0))[0]
    if shutil.which(program, path=search) is None:
        raise _not_installed(tool, program)
    return ["--tool", tool]


def tool_command(port: int, prefix: str, force_builtin: bool,
                 tool: str = "auto") -> tuple[str, list[str]]:
    """`studios-connect` arguments: the tool asked for through its preset; by default
    JupyterLab through its preset when installed (and not refused), else the built-in
    demo tool as the child command."""
    if force_builtin:
        tool = "builtin"
    if tool in ("vscode", "xpra", "ride"):
        return tool, preset_command(tool)
    jupyter = shutil.which("jupyter", path=_search_path())
    if tool == "jupyterlab" and jupyter is None:
        raise _not_installed(tool, "jupyter")
    if jupyter and tool in ("auto", "jupyterlab"):
        probe = subprocess.run([jupyter, "lab", "--version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            # The preset adds the rest (loopback, port, base path from the gateway, login
            # off, ...) and says so in one line; this keeps the demo's own lines readable.
            return "jupyterlab", ["--tool", "jupyterlab", "--", jupyter, "lab",
                                  "--ServerApp.log_level=WARN"]
        if tool == "jupyterlab":
            raise SystemExit("studios-gateway demo: --tool jupyterlab: `jupyter lab "
                             f"--version` failed: {probe.stderr.decode(errors='replace')[-300:]}")
    return "generic", ["--", sys.executable, "-m", "studios_gateway.demo.tool", "--port",
                       str(port), "--prefix", prefix]


def _register_key(base: str, key: str, user: str, keys: str) -> None:
    """Make ``keys`` the user's registered SSH keys (the admin API's PUT); SystemExit with
    the gateway's words when it refuses them."""
    try:
        _api(base, key, "PUT", f"/api/users/{user}/keys", {"keys": keys.splitlines()})
    except urllib.error.HTTPError as e:
        said = e.read().decode(errors="replace")[:300]
        raise SystemExit(f"studios-gateway demo: the gateway refused the SSH key "
                         f"(HTTP {e.code}): {said}") from None


STOP_WAIT = 15.0  # seconds for the gateway and the studio to stop before we kill them

#: Under --storage-root: the id of the session the last demo run made there.
SESSION_FILE = "demo-session"
#: Under --storage-root: this run's management port and key, for `studios-gateway sessions`
#: and `status` (--env-file); the port is a new free one at each run.
ENV_FILE = "demo.env"


def write_env_file(storage_root: Path, port: int, key: str) -> Path:
    """The env file that `studios-gateway sessions` and `status` read this run's management
    endpoint from, readable by its owner alone (it holds the bearer key). Before, a
    newcomer had to make up --url and CONNECT_MANAGEMENT_AUTH_KEY from the printed admin
    URL, and again at each run. A new file (0600 from its start) put in the old one's
    place: whatever was at that path (a symlink, another's file) is replaced, not written
    through, and a reader never sees half of it."""
    path = storage_root / ENV_FILE
    fd, written = tempfile.mkstemp(prefix=f".{ENV_FILE}.", dir=storage_root)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("CONNECT_BIND_ADDRESS=127.0.0.1\n"
                    f"CONNECT_MANAGEMENT_PORT={port}\nCONNECT_MANAGEMENT_AUTH_KEY={key}\n")
        os.replace(written, path)
    except BaseException:
        Path(written).unlink(missing_ok=True)
        raise
    return path


def previous_session(storage_root: Path) -> str | None:
    """The session id the last demo run with this storage root made (the gateway keeps
    its sessions there), or None when there was none or the file is not one of ours."""
    try:
        text = (storage_root / SESSION_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if re.fullmatch(r"[0-9a-f]{8}", text) else None


def open_session(base: str, key: str, sid: str, owner: str, tool: str,
                 ssh: bool) -> tuple[dict[str, Any], bool]:
    """The session `sid` for this run and whether it is the last run's: kept when the
    gateway still has it for the same owner and tool (a page left open on it then comes
    back by itself once the studio is up), with a new connect token and login link; made
    afresh otherwise (one for another owner or tool is deleted first). Before, every run
    made a new session: a page left open on the last one stayed on "Server Connection
    Error" for good, and each run left one more unreachable session in sessions.json."""
    try:
        old = _api(base, key, "GET", f"/api/sessions/{sid}")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        old = None
    if old is not None and old.get("owner") == owner and old.get("tool") == tool:
        if bool(old.get("ssh_enabled")) != ssh:
            _api(base, key, "PATCH", f"/api/sessions/{sid}", {"ssh_enabled": ssh})
        # (the new token's answer is a creation's: its address, connect string and a
        # login link for its owner)
        return _api(base, key, "POST", f"/api/sessions/{sid}/token", {}), True
    if old is not None:
        _api(base, key, "DELETE", f"/api/sessions/{sid}")
    return _api(base, key, "POST", "/api/sessions",
                {"id": sid, "owner": owner, "tool": tool, "ssh_enabled": ssh}), False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="studios-gateway demo", description=__doc__)
    p.add_argument("--http-port", type=int, default=8080, help="browser port (default 8080)")
    p.add_argument("--management-port", type=int, default=0, help="default: a free port")
    p.add_argument("--tunnel-port", type=int, default=0, help="default: a free port")
    p.add_argument("--storage-root", default="./var/demo",
                   help="state directory (default ./var/demo); a demo run again with the same "
                        "one, owner and tool keeps the last run's session and its address")
    p.add_argument("--path-routing", action="store_true",
                   help="route by /_studio/<id>/ instead of <id>.localhost")
    p.add_argument("--tool", choices=TOOLS, default="auto",
                   help="the studio's tool: jupyterlab, vscode (code-server), xpra or ride "
                        "(RStudio Server) through their presets when installed, or builtin "
                        "(a small page with a WebSocket echo); auto (the default): JupyterLab "
                        "if it is installed, else builtin")
    p.add_argument("--builtin-tool", action="store_true",
                   help="the same as --tool builtin")
    p.add_argument("--owner", default="demo", help="the studio's owner (default: demo)")
    p.add_argument("--ssh", action="store_true",
                   help="also run the gateway's SSH proxy on 127.0.0.1 (--ssh-port), register "
                        "your public key (--ssh-key) for the studio's owner and print the "
                        "ssh command that opens a shell in the studio (see docs/ssh.md)")
    p.add_argument("--ssh-port", type=int,
                   help="with --ssh: the SSH port on 127.0.0.1 (default 2222; 0: a free one)")
    p.add_argument("--ssh-key", metavar="FILE",
                   help="with --ssh: your public key file (default: ~/.ssh/id_ed25519.pub, "
                        "else id_ecdsa.pub, else id_rsa.pub)")
    p.add_argument("--start-timeout", type=float, default=180,
                   help="seconds to wait for the studio to connect (default 180)")
    args = p.parse_args(argv)
    # Ctrl-C stops the demo even when it was started where SIGINT is ignored (after `&`
    # in a script, or under nohup): Python then leaves it ignored and Ctrl-C did nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    if not args.ssh and (args.ssh_key is not None or args.ssh_port is not None):
        p.error("--ssh-key and --ssh-port go with --ssh")
    ssh_port = 2222 if args.ssh_port is None else args.ssh_port
    user_key = ssh_public_key(args.ssh_key) if args.ssh else None
    ports = {"--http-port": args.http_port, "--management-port": args.management_port,
             "--tunnel-port": args.tunnel_port}
    if args.ssh:
        ports["--ssh-port"] = ssh_port
    _check_ports_free(ports)
    bindir = Path(sys.executable).parent
    # The ports it picks itself: distinct, and none of those given.
    given = set(ports.values()) - {0}
    picked = iter(_free_ports(4, given))
    mport = args.management_port or next(picked)
    tport = args.tunnel_port or next(picked)
    ssh_port = ssh_port or next(picked)
    lport = next(picked)  # the peer listener's (one node: nobody dials it)
    key = secrets.token_urlsafe(24)
    storage_root = Path(args.storage_root).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({
        "CONNECT_BIND_ADDRESS": "127.0.0.1", "CONNECT_HTTP_PORT": str(args.http_port),
        "CONNECT_MANAGEMENT_PORT": str(mport), "CONNECT_TUNNEL_PORT": str(tport),
        "CONNECT_LISTENER_PORT": str(lport), "CONNECT_MANAGEMENT_AUTH_KEY": key,
        "CONNECT_PROXY_URL": f"http://localhost:{args.http_port}",
        "CONNECT_STORAGE_ROOT": str(storage_root),
        "CONNECT_SHUTDOWN_GRACE": "5s",  # a demo: stop promptly
        "TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING": "true" if args.path_routing else "false",
    })
    ssh_dir = storage_root / "ssh"
    known_hosts, host_public = ssh_dir / "known_hosts", ""
    if args.ssh:
        host_key, host_public = demo_host_key(ssh_dir)
        known_hosts.write_text(f"[127.0.0.1]:{ssh_port} {host_public}\n")
        env.update({"CONNECT_SSH_ENABLED": "true",
                    "CONNECT_SSH_ADDR": f"127.0.0.1:{ssh_port}",
                    "CONNECT_SSH_KEY_PATH": str(host_key)})
    children: list[subprocess.Popen[bytes]] = []

    def stop_all(*_: Any) -> None:
        # A second Ctrl-C (or the SIGTERM below reaching us) must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # One at a time, the studio first: a studio that saw its gateway go first would
        # try to reach it again while it stops.
        deadline = time.monotonic() + STOP_WAIT
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"==> pid {child.pid} did not stop within {STOP_WAIT:g}s; killing it",
                      flush=True)
                child.kill()
                child.wait()

    # The tool first: one that is not installed is said before anything starts.
    tool_port = _free_port()
    sid = previous_session(storage_root) or secrets.token_hex(4)
    prefix = f"/_studio/{sid}/" if args.path_routing else "/"
    tool, command = tool_command(tool_port, prefix, args.builtin_tool, args.tool)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        print(f"==> starting the gateway (HTTP on 127.0.0.1:{args.http_port}, "
              f"management on 127.0.0.1:{mport}); its warnings about a self-signed "
              "tunnel certificate and CONNECT_REDIS_ADDRESS are expected in a demo "
              "(docs/operators.md says when to set each)", flush=True)
        gateway = subprocess.Popen([str(bindir / "twistd"), "-n", "--pidfile=",
                                    "studios-gateway"], env=env,
                                   process_group=0)
        children.append(gateway)
        base = f"http://127.0.0.1:{mport}"
        _wait_ready(base + "/ready", key, gateway)
        created, kept = open_session(base, key, sid, args.owner, tool, args.ssh)
        (storage_root / SESSION_FILE).write_text(sid + "\n", encoding="ascii")
        if user_key is not None:
            _register_key(base, key, args.owner, user_key[1])
        print(f"==> session {sid} "
              + ("kept from the last run (a page still open on it comes back by itself)"
                 if kept else "created")
              + f"; starting the studio ({tool})", flush=True)
        # The studio's own directory (JupyterLab's notebooks land there), not the
        # directory the demo was started from.
        home = storage_root / "studio"
        home.mkdir(parents=True, exist_ok=True)
        client_env = {k: v for k, v in env.items() if not k.startswith("CONNECT_")}
        client_env.update({"CONNECT_STRING": created["connect_string"],
                           "CONNECT_TOOL_PORT": str(tool_port), "CONNECT_TOOL": tool,
                           "CONNECT_TOOL_WORKDIR": str(home)})
        # JupyterLab keeps its open tabs per user (~/.jupyter/lab/workspaces): each demo's
        # own, so a new --storage-root does not reopen another demo's notebooks.
        client_env.setdefault("JUPYTERLAB_WORKSPACES_DIR",
                              str(storage_root / "jupyterlab-workspaces"))
        if args.path_routing and tool == "generic":  # the preset learns it from the gateway
            client_env["CONNECT_TOOL_PATH_PREFIX"] = prefix
        studio = subprocess.Popen([str(bindir / "studios-connect"), *command], env=client_env,
                                  cwd=home, process_group=0)
        children.append(studio)
        _wait_connected(base, key, sid, studio, args.start_timeout)
        print(f"\n==> studio {sid} is up. Open this one-time link in your browser; it logs "
              f"you in as {args.owner} and opens the studio:\n\n  {created['login_link']}\n",
              flush=True)
        print(f"  The studio's address (after logging in): {created['url']}")
        print(f"  Admin API: {base}/api/sessions  (Authorization: Bearer {key})")
        env_file = shlex.quote(str(write_env_file(storage_root, mport, key)))
        tool_bin = shlex.quote(str(bindir / "studios-gateway"))
        print(f"  Its sessions: {tool_bin} sessions --env-file {env_file} list\n"
              f"  Its status:   {tool_bin} status --env-file {env_file}")
        if user_key is not None:
            print(f"\n==> SSH: your key {user_key[0]} is registered for {args.owner}. A shell "
                  f"in the studio (add a command at the end to run just that):\n\n  "
                  f"{ssh_command(args.owner, sid, ssh_port, known_hosts, user_key[0])}\n")
            print(f"  The gateway's host key ({ssh_fingerprint(host_public)}) is in "
                  f"{known_hosts}; scp, sftp and -L as in docs/ssh.md.")
        print("  Stop with Ctrl-C.\n", flush=True)
        pid, _ = os.wait()  # until any of our processes ends
        name = "the gateway" if pid == gateway.pid else "the studio"
        print(f"==> {name} ended; stopping the demo", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\n==> stopping", flush=True)
        return 0
    finally:
        stop_all()
