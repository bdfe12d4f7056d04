"""The systemd units and the env-file example: current, complete, and accepted by systemd."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studios_gateway.config import VARIABLES
from studios_gateway.config_loading import load_config, read_env_file

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
EXAMPLE = UNITS / "gateway.env.example"
TWISTD = Path(sys.executable).parent / "twistd"


def unit(name: str) -> dict[str, list[str]]:
    """key -> values (in order) of a unit file; sections flattened, comments dropped."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_env_example_is_current() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "packaging" / "env_example.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_env_example_lists_every_variable_with_its_default(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    for var in VARIABLES:
        assert re.search(rf"(?m)^#?{var.name}=", text), var.name
    # Uncommented, every default is a valid setting.
    uncommented = tmp_path / "uncommented.env"
    uncommented.write_text(re.sub(r"(?m)^#([A-Z][A-Z0-9_]*=)", r"\1", text))
    values = read_env_file(str(uncommented))
    assert set(values) == {v.name for v in VARIABLES}
    config = load_config(environ={}, env_file=str(uncommented))
    assert config.storage_root == "/var/lib/studios-gateway"
    assert config.oidc_scopes == "openid profile email"


def test_check_config_of_the_example_as_shipped_checks_the_unit_s_storage_root() -> None:
    # The install steps run check-config --env-file as the service's user: with the
    # storage root commented out it checked the built-in /data, which that user cannot
    # create ("CONNECT_STORAGE_ROOT='/data': expected a writable directory").
    config = load_config(environ={}, env_file=str(EXAMPLE))
    assert config.storage_root == "/var/lib/studios-gateway"
    assert config.sources["CONNECT_STORAGE_ROOT"] == "env file"
    for name in ("studios-gateway.service", "studios-gateway@.service"):
        # the same directory as the units' state directory ($STATE_DIRECTORY)
        assert unit(name)["StateDirectory"] == ["studios-gateway"]


ENV_FILE = "/etc/studios-gateway/gateway.env"


@pytest.mark.parametrize("name", ["studios-gateway.service", "studios-gateway@.service"])
def test_the_gateway_reads_its_env_file_itself_so_a_reload_re_reads_it(name: str) -> None:
    # systemd reads EnvironmentFile= only at start, and the environment wins over the
    # --env-file: with gateway.env there, `systemctl reload` re-read nothing of it.
    u = unit(name)
    (exec_start,) = u["ExecStart"]
    assert f"studios-gateway --env-file {ENV_FILE}" in exec_start
    assert ENV_FILE not in u.get("EnvironmentFile", [])
    # No CONNECT_* of the unit's own: it would win over gateway.env's line.
    assert not [e for e in u.get("Environment", []) if e.startswith(("CONNECT_", "TOWER_"))]


def test_gateway_unit() -> None:
    u = unit("studios-gateway.service")
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30s",
        "Restart": "on-failure",
        "LimitNOFILE": "65536", "User": "studios-gateway", "DynamicUser": "no",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "StateDirectory": "studios-gateway",
        "ExecStart": "/opt/studios-gateway/bin/twistd --nodaemon --pidfile= studios-gateway "
                     "--env-file /etc/studios-gateway/gateway.env",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in expected.items():
        assert u.get(key) == [value], key
    assert "EnvironmentFile" not in u


@pytest.mark.parametrize("name", ["http", "tunnel", "ssh"])
def test_socket_units_name_their_descriptor(name: str) -> None:
    u = unit(f"studios-gateway-{name}.socket")
    assert u["FileDescriptorName"] == [name]
    assert u["Service"] == ["studios-gateway.service"]


@pytest.mark.parametrize("name", ["http", "tunnel", "ssh"])
def test_socket_units_stay_open_across_a_restart_of_the_service(name: str) -> None:
    # PartOf= passed `systemctl restart studios-gateway` on to the sockets, which closed
    # their ports for the moment (connections refused, queued ones reset);
    # StopPropagatedFrom= does the same from systemd 253 on (the restart stops them and
    # leaves them stopped). Nothing but Service= ties a socket to the gateway.
    u = unit(f"studios-gateway-{name}.socket")
    for key in ("PartOf", "BindsTo", "Requires", "StopPropagatedFrom", "Conflicts"):
        assert key not in u, key
    for service in ("studios-gateway.service", "studios-gateway@.service"):
        s = unit(service)
        for key in ("PropagatesStopTo", "Upholds", "ConsistsOf"):
            assert key not in s, (service, key)
    # the unit tells whoever reads it how to stop listening
    assert ("systemctl stop studios-gateway.service studios-gateway-{http,tunnel,ssh}.socket"
            in (UNITS / f"studios-gateway-{name}.socket").read_text())


@pytest.mark.parametrize("name", ["http", "tunnel", "ssh"])
def test_a_sockets_changed_port_is_applied_by_restarting_the_socket_too(name: str) -> None:
    # Without PartOf= a restart of the service no longer restarts the socket, and a
    # listening socket keeps its port until it is restarted itself: the port an operator
    # changed with `systemctl edit` (and `enable --now`, a no-op on an active socket)
    # stayed the old one through every gateway restart. The unit and operators.md say
    # how to apply it.
    apply = f"systemctl restart studios-gateway-{name}.socket studios-gateway.service"
    comments = " ".join(line.lstrip("# ").strip() for line in
                        (UNITS / f"studios-gateway-{name}.socket").read_text().splitlines()
                        if line.startswith("#"))
    assert apply in comments
    operators = (REPO / "docs" / "operators.md").read_text()
    assert ("sudo systemctl restart studios-gateway-http.socket studios-gateway.service"
            in operators)


def test_template_gives_each_instance_its_ports_and_node_id() -> None:
    u = unit("studios-gateway@.service")
    (exec_start,) = u["ExecStart"]
    assert "--management-port 90%i" in exec_start and "--node-id %l-%i" in exec_start
    assert "--listener-port 77%i" in exec_start
    assert u["Sockets"] == ["studios-gateway-http.socket studios-gateway-tunnel.socket "
                            "studios-gateway-ssh.socket"]


@pytest.mark.parametrize("name", ["studios-gateway.service", "studios-gateway@.service",
                                  "studios-connect.service"])
def test_invalid_settings_are_not_restarted_in_a_loop(name: str) -> None:
    # A start refused for its settings exits EX_CONFIG; restarting cannot help, so
    # systemd does not (it did, ten times, until the start limit).
    from studios_gateway.component import EX_CONFIG
    from studios_gateway.studio.main import EXIT_REFUSED

    u = unit(name)
    assert u["Restart"] == ["on-failure"]
    # the connect client's final refusal (a wrong token) is not retried either
    final = [EXIT_REFUSED, EX_CONFIG] if name == "studios-connect.service" else [EX_CONFIG]
    assert u["RestartPreventExitStatus"] == [" ".join(map(str, final))]


def all_units() -> list[Path]:
    return sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".socket"))


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on copies whose paths exist on this machine."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt package systemd)")
    env_file = tmp_path / "gateway.env"
    env_file.write_text(EXAMPLE.read_text())
    names = []
    for path in all_units():
        text = path.read_text()
        text = text.replace("/opt/studios-gateway/bin/twistd", str(TWISTD))
        text = re.sub(r"(?m)^EnvironmentFile=(-?)/etc/studios-gateway/\S+",
                      lambda m: f"EnvironmentFile={m.group(1)}{env_file}", text)
        (tmp_path / path.name).write_text(text)
        names.append(f"./{path.name}" if "@." not in path.name
                     else "./" + path.name.replace("@.", "@01."))
    proc = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "Failed to" in proc.stderr and "bus" in proc.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run here: {proc.stderr.strip()}")
    # Unknown keys are only warnings: any output at all is a failure.
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr
