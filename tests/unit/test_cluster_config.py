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


def test_every_node_is_reached_with_the_first_seeds_password_and_tls_options():
    from pushsvc.broker.cluster import ClusterBroker
    from pushsvc.publisher import _cluster_options

    seeds = ["rediss://:pw@10.0.0.1:7000?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false", "rediss://10.0.0.2:7000"]
    broker = ClusterBroker(seeds)
    assert broker._url("10.0.0.9:7001") == \
        "rediss://:pw@10.0.0.9:7001?ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false"
    options = _cluster_options(seeds)
    assert (options["password"], options["ssl"], options["ssl_ca_certs"], options["ssl_check_hostname"]) == \
        ("pw", True, "/etc/ca.pem", False)
