"""What do hostile clients cost a running `obstacle serve`? (issue 13: bounded before authenticated)

Starts a local `obstacle serve` with its own data directory and token, then attacks it all at once,
``--rounds`` times: six 200 MiB JSON bodies to POST /v1/runs (anonymous, unknown token, valid
token; each with Content-Length and chunked), ``--slow-clients`` clients that send their headers one
byte every 0.5 s and as many whose upload body stops after 100 bytes. Prints the server's RSS growth,
/healthz latency measured during the attack (p50 and max over ``--probes`` probes), what each flood
was answered and how long the slow clients were held before the server cut them.
Acceptance (issue 13): RSS growth < 100 MB, /healthz within 100 ms.

    python bench/service_attacks.py [--rounds 3] [--slow-clients 20] [--probes 20]
        [--header-timeout 10] [--body-idle-timeout 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _machine import describe_machine
from _service import serve

# The same attacks as tests/service/test_attacks.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "service"))
from attacks import attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow-clients", type=int, default=20)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--body-idle-timeout", type=float, default=30.0)
    args = parser.parse_args()
    os.environ["OBSTACLE_HEADER_TIMEOUT_S"] = str(args.header_timeout)
    os.environ["OBSTACLE_BODY_IDLE_TIMEOUT_S"] = str(args.body_idle_timeout)
    print(describe_machine(f"load average {os.getloadavg()[0]:.2f} at the start"))
    print(
        f"settings: OBSTACLE_HEADER_TIMEOUT_S={args.header_timeout:g}, "
        f"OBSTACLE_BODY_IDLE_TIMEOUT_S={args.body_idle_timeout:g}, the other limits at defaults"
    )
    with tempfile.TemporaryDirectory(prefix="obstacle-attacks-") as scratch:
        process, url, token = serve(Path(scratch))
        try:
            run = httpx.post(
                f"{url}/v1/runs",
                json={"name": "target"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).json()
            for round_ in range(1, args.rounds + 1):
                started = time.monotonic()
                figures = attack(
                    url,
                    process.pid,
                    token=token,
                    run_id=run["id"],
                    slow_clients=args.slow_clients,
                    probes=args.probes,
                )
                print(f"round {round_} ({time.monotonic() - started:.1f} s):")
                for line in figures.lines():
                    print(f"  {line}")
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
