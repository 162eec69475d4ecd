"""The cluster: several workers and hosts as one server, on Redis and PostgreSQL.

    leases   one authority per group, with a fencing epoch that only grows
"""

from __future__ import annotations

from .leases import Lease, Leases, Owner

__all__ = ["Lease", "Leases", "Owner"]
