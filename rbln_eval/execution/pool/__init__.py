"""Data parallelism: one bundle, K replicas, each in its own worker on its own group of NPUs.

- :mod:`~rbln_eval.execution.pool.protocol`: the messages between the parent and its workers, and how a worker fails;
- :mod:`~rbln_eval.execution.pool.worker`: what runs inside a worker (load the bundle, serve calls);
- :mod:`~rbln_eval.execution.pool.transport`: how the parent reaches its workers, and local worker processes;
- :mod:`~rbln_eval.execution.pool.call_state` and :mod:`~rbln_eval.execution.pool.dispatcher`: :class:`PoolExecutor`,
  which hands a call's items to the workers as their batch rows free up;
- :mod:`~rbln_eval.execution.pool.ray_transport` and :mod:`~rbln_eval.execution.pool.growing`: replicas as Ray
  actors, and a pool that takes more of them while NPUs stay free;
- :mod:`~rbln_eval.execution.pool.preload`: what the local workers' fork server imports once.

Ray is imported only when a Ray transport is used.
"""

from rbln_eval.execution.pool.dispatcher import PoolExecutor
from rbln_eval.execution.pool.growing import Growing, free_npus
from rbln_eval.errors import RayUnavailableError, WorkerDiedError, WorkerFailedError
from rbln_eval.execution.pool.protocol import WorkerSpec
from rbln_eval.execution.pool.ray_transport import RayTransport, connect, forwarded_env
from rbln_eval.execution.pool.transport import ProcessTransport, Transport
from rbln_eval.execution.pool.worker import load_replica, ray_node_id, serve_calls

__all__ = [
    "Growing",
    "PoolExecutor",
    "ProcessTransport",
    "RayTransport",
    "RayUnavailableError",
    "Transport",
    "WorkerDiedError",
    "WorkerFailedError",
    "WorkerSpec",
    "connect",
    "forwarded_env",
    "free_npus",
    "load_replica",
    "ray_node_id",
    "serve_calls",
]
