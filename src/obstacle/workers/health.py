"""``python -m obstacle.workers.health``: exit 0 when a worker node of this host answers a ping.

The container health check of ``obstacle worker`` (docker-compose.yml): ``celery inspect ping``
through the broker, restricted to the nodes named ``…@<this host>`` (``obstacle worker`` names its
nodes ``obstacle-cpu-<pid>@%h`` or ``obstacle-gpuN-<pid>@%h``), so another container's healthy
worker does not make this one look healthy. Needs only the broker settings; never imports torch.
"""

from __future__ import annotations

import socket
import sys

from obstacle.platform.celery_app import create_celery, ping_workers
from obstacle.platform.settings import CommonSettings, load_or_exit

__all__ = ["local_nodes", "main"]


def local_nodes(settings: CommonSettings, *, timeout: float) -> list[str]:
    """The worker nodes of this host that answer a ping within ``timeout`` seconds."""
    app = create_celery(settings)
    try:
        suffix = f"@{socket.gethostname()}"
        return [name for name in ping_workers(app, timeout=timeout) if name.endswith(suffix)]
    finally:
        app.close()


def main(timeout: float = 5.0) -> int:
    settings = load_or_exit(CommonSettings)
    try:
        nodes = local_nodes(settings, timeout=timeout)
    except Exception as exc:  # the broker is unreachable: unhealthy, with the reason
        print(f"obstacle: worker health: the broker did not answer ({exc})", file=sys.stderr)
        return 1
    if not nodes:
        print(
            f"obstacle: worker health: no worker node of host {socket.gethostname()} answered a "
            f"ping within {timeout:g} s; see the worker's log",
            file=sys.stderr,
        )
        return 1
    print(f"obstacle: worker health: ok ({', '.join(nodes)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
