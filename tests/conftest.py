"""Suite-wide settings, applied before any test module imports ray.

Tests send traffic to the loopback range only. A local Ray cluster otherwise takes the machine's
outward address for 127.0.0.1 and listens on every interface; with this it stays on 127.0.0.1
(``ray._private.services.get_node_ip_address``). Subprocesses inherit it: ``ovdet shard`` runs,
drivers joining a test cluster, the Slurm test jobs' one-node Ray head. ``pipelines/shard.py`` sets
the same for the local clusters it starts itself.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
