#!/usr/bin/env python3
"""HTTP load for `ptuning serve` where wrk is not installed (the GPU machine):
keep-alive connections, each POSTing one request after another to
/v1/adapters/a<k>/predict with k drawn from 1..--adapters and the body drawn
from bench/serve_bodies.txt (one JSON body per line, as the wrk script of
bench/serve_load.sh sends them). Standard library only.

Connections are spread over processes (the GIL would cap one process), each
connection a thread. Prints one line: requests/s, p50 and p99 latency in ms,
and how many answers were not 200, as serve_load.sh reads them:

    python3 bench/http_load.py --addr 127.0.0.1:18181 --adapters 8 --conns 64 --seconds 10
    1234.5 12.34 45.67 0
"""

import argparse
import http.client
import multiprocessing
import os
import random
import threading
import time

BODIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_bodies.txt")


def connection_loop(addr, adapters, bodies, deadline, seed, out):
    """One keep-alive connection until `deadline`: (latencies in s, non-200 count) into `out`."""
    rng = random.Random(seed)
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    latencies, bad = [], 0
    headers = {"Content-Type": "application/json"}
    while time.monotonic() < deadline:
        path = f"/v1/adapters/a{rng.randint(1, adapters)}/predict"
        start = time.monotonic()
        try:
            conn.request("POST", path, rng.choice(bodies), headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            # A dropped connection counts as a failed request; reconnect.
            bad += 1
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            continue
        latencies.append(time.monotonic() - start)
        bad += response.status != 200
    conn.close()
    out.append((latencies, bad))


def process_main(args):
    addr, adapters, bodies, deadline, conns, seed = args
    out = []
    threads = [
        threading.Thread(target=connection_loop, args=(addr, adapters, bodies, deadline, seed * 1000 + i, out))
        for i in range(conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = [x for lat, _ in out for x in lat]
    return latencies, sum(b for _, b in out)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", required=True, help="host:port of the server")
    ap.add_argument("--adapters", type=int, default=1, help="requests go to a1 .. aN")
    ap.add_argument("--conns", type=int, default=32, help="connections in all")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=0, help="processes (default: min(conns, cores))")
    args = ap.parse_args()
    if args.adapters < 1 or args.conns < 1 or args.seconds <= 0:
        ap.error("--adapters and --conns must be at least 1 and --seconds positive")
    with open(BODIES) as f:
        bodies = [line.strip() for line in f if line.strip()]
    if not bodies:
        ap.error(f"{BODIES}: no request bodies")
    procs = args.procs or min(args.conns, os.cpu_count() or 1)
    per_proc = [args.conns // procs + (i < args.conns % procs) for i in range(procs)]
    start = time.monotonic()
    deadline = start + args.seconds
    with multiprocessing.Pool(procs) as pool:
        results = pool.map(
            process_main, [(args.addr, args.adapters, bodies, deadline, n, i) for i, n in enumerate(per_proc) if n]
        )
    elapsed = time.monotonic() - start
    latencies = sorted(x for lat, _ in results for x in lat)
    bad = sum(b for _, b in results)
    rps = len(latencies) / elapsed
    print(f"{rps:.1f} {1e3 * percentile(latencies, 0.5):.2f} {1e3 * percentile(latencies, 0.99):.2f} {bad}")


if __name__ == "__main__":
    main()
