"""Ray clusters of simulated NPU nodes on this machine, on the loopback address only.

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (set in conftest before ray is imported) makes every Ray process of
the tests use 127.0.0.1 for its own address, so no traffic leaves the loopback interface.
"""

from __future__ import annotations

from typing import Any

LOOPBACK = "127.0.0.1"


def start_cluster(head: dict[str, Any], *nodes: dict[str, Any]) -> Any:
    """A head and more nodes (each its own raylet), all bound to the loopback address; the driver joins it."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": LOOPBACK, **head})
    for node in nodes:
        add_node(cluster, node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
    return cluster


def add_node(cluster: Any, node: dict[str, Any]) -> Any:
    return cluster.add_node(node_ip_address=LOOPBACK, **node)


def stop_cluster(cluster: Any) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()
