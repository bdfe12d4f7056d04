"""The Grafana dashboard in packaging/: up to date with its generator, and every metric it
queries is one a gateway (with Redis peers and SSH on) exports."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from studios_gateway.config_loading import load_config
from studios_gateway.service import make_service

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "packaging" / "grafana" / "studios-gateway.json"


def test_dashboard_is_generated() -> None:
    sys.path.insert(0, str(DASHBOARD.parent))
    try:
        import make_dashboard
    finally:
        sys.path.remove(str(DASHBOARD.parent))
    assert make_dashboard.render() == DASHBOARD.read_text(), \
        "run: python packaging/grafana/make_dashboard.py"


def test_every_queried_metric_exists(tmp_path: Path) -> None:
    config = load_config(environ={
        "CONNECT_STORAGE_ROOT": str(tmp_path), "CONNECT_REDIS_ADDRESS": "127.0.0.1:1",
        "CONNECT_PEER_SECRET": "a-long-enough-peer-secret", "CONNECT_SSH_ENABLED": "true",
        "CONNECT_MANAGEMENT_PORT": "9000"})
    gateway = make_service(config, reactor=MemoryReactorClock())
    exported = set()
    for family in gateway.metrics.registry.collect():
        # Labelled families have no samples before their first use: name every series.
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        exported.update(family.name + s for s in suffixes.get(family.type, [""]))
    text = DASHBOARD.read_text()
    queried = set(re.findall(r"\b((?:studios_gateway|process)_[a-z_]+)", text))
    assert len(queried) > 15
    assert queried <= exported, sorted(queried - exported)
    panels = json.loads(text)["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
