"""The cluster: several workers and hosts as one server, on Redis and PostgreSQL.

    leases     one authority per group, with a fencing epoch that only grows
    requests   a request to another worker and its answer, in order with the group frames
    node       this worker in the cluster: its hub, its leases, its loops, the requests it answers
    load       how late this worker's event loop runs: a busy worker leaves new groups to others
"""

from __future__ import annotations

from .leases import Lease, Leases, Owner
from .node import Node

__all__ = ["Lease", "Leases", "Node", "Owner"]
