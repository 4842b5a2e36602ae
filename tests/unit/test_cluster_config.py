"""PUSHSVC_REDIS_CLUSTER_NODES: validated at start-up, kept out of logs."""

from __future__ import annotations

import pytest

from pushsvc.config import ConfigError, Settings


def test_cluster_nodes_and_a_redis_url_together_are_refused_at_start_up():
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env({"PUSHSVC_REDIS_URL": "redis://127.0.0.1:1/0",
                           "PUSHSVC_REDIS_CLUSTER_NODES": "redis://127.0.0.1:2"})
    with pytest.raises(ConfigError, match="PUSHSVC_REDIS_CLUSTER_NODES"):
        Settings.from_env({"PUSHSVC_REDIS_CLUSTER_NODES": "http://127.0.0.1:2"})
    seeds = Settings.from_env({"PUSHSVC_REDIS_CLUSTER_NODES": "rediss://:pw@10.0.0.1:7000,redis://10.0.0.2:7000"})
    assert seeds.redis_cluster_nodes == ("rediss://:pw@10.0.0.1:7000", "redis://10.0.0.2:7000")
    assert "pw" not in repr(seeds)
