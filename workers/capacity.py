"""What the cluster the worker is attached to has free, for admission (runs.admission)."""

import logging
import os
import sys

logger = logging.getLogger(__name__)


def cluster_free_gpus() -> float | None:
    """Ray's free GPUs when this process is attached to a Ray cluster (Ray initialised
    here, or RAY_ADDRESS names a cluster to connect to), else None: trust pool capacity.

    Call it only from the worker's admission task: it may connect to the cluster, and it
    never starts a local Ray."""
    address = os.environ.get("RAY_ADDRESS")
    if "ray" not in sys.modules and not address:
        return None  # Ray was never used here and no cluster is configured
    import ray

    try:
        if not ray.is_initialized():
            if not address:
                return None
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        return float(ray.available_resources().get("GPU", 0.0))
    except Exception:
        logger.exception("could not read free GPUs from Ray at %s; trusting pool capacity", address or "this process")
        return None
