"""The cluster: several workers and hosts as one server, on Redis and PostgreSQL.

    leases     one authority per group, with a fencing epoch that only grows
    requests   a request to another worker and its answer, in order with the group frames
    node       this worker in the cluster: its hub, the groups it claims and holds, its life
    heartbeats its heartbeat, the workers heard from, the connections a gone worker left open
    placement  where groups go: a busy worker's asks and hand-overs, the orphans claimed
    inbox      the requests it answers for the other workers, and the cluster's notices
    load       how late this worker's event loop runs: a busy worker leaves new groups to others
"""

from __future__ import annotations

from .leases import Lease, Leases, Owner
from .node import Node

__all__ = ["Lease", "Leases", "Node", "Owner"]
