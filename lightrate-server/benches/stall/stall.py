#!/usr/bin/env python3
"""Stalled clients against a lightrate-server on this machine (see BENCHMARKS.md).

Opens N connections to ADDR, each sending the headers of a consume announcing a 64 KiB body
and 60 KB of it, never the rest; with --key, the API key is in the headers. Then, for HOLD
seconds, watches what the server does with them (answers and closes) and, every 0.25 s, probes
GET /health on a new connection and reads the server's RSS from /proc (--pid).

Loopback only, bounded in count and time; standard library only.

  stall.py 127.0.0.1:8080 --pid 1234 [--connections 1100] [--key KEY] [--hold 15]
"""

import argparse
import selectors
import socket
import statistics
import time


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return float("nan")
    return float("nan")


def probe_health(host, port, timeout):
    """GET /health on a new connection: the status code, or what went wrong."""
    start = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return f"connect:{e.__class__.__name__}", time.monotonic() - start
    try:
        s.settimeout(timeout)
        s.sendall(b"GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        data = s.recv(4096)
        if not data:
            return "closed", time.monotonic() - start
        return data.split(b" ", 2)[1].decode(), time.monotonic() - start
    except socket.timeout:
        return "timeout", time.monotonic() - start
    except OSError as e:
        return e.__class__.__name__, time.monotonic() - start
    finally:
        s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--connections", type=int, default=1100)
    p.add_argument("--key", default=None)
    p.add_argument("--hold", type=float, default=15.0)
    args = p.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)

    auth = f"x-api-key: {args.key}\r\n" if args.key else ""
    head = (
        "POST /api/v1/tokens/consume HTTP/1.1\r\nhost: t\r\n"
        f"content-type: application/json\r\n{auth}content-length: 65536\r\n\r\n"
    ).encode()
    body = b" " * 60_000

    rss_start = rss_mb(args.pid)
    sel = selectors.DefaultSelector()
    opened_at, first_byte, status, closed_at = {}, {}, {}, {}
    t0 = time.monotonic()
    failed_connects = 0
    for i in range(args.connections):
        try:
            s = socket.create_connection((host, port), timeout=2)
            opened_at[i] = time.monotonic()
            s.setblocking(False)
            try:
                s.send(head + body)
            except OSError:
                pass
            sel.register(s, selectors.EVENT_READ, i)
        except OSError:
            failed_connects += 1
    opened = time.monotonic() - t0
    rss_peak = rss_mb(args.pid)
    probes = []
    next_probe = time.monotonic()
    end = t0 + args.hold
    while time.monotonic() < end:
        timeout = max(0.0, min(next_probe, end) - time.monotonic())
        for key, _ in sel.select(timeout):
            s, i = key.fileobj, key.data
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            now = time.monotonic()
            if data:
                if i not in first_byte:
                    first_byte[i] = now - opened_at[i]
                    status[i] = data.split(b" ", 2)[1].decode(errors="replace")
            else:
                closed_at[i] = now - opened_at[i]
                sel.unregister(s)
                s.close()
        if time.monotonic() >= next_probe:
            code, took = probe_health(host, port, 1.0)
            probes.append((time.monotonic() - t0, code, took))
            rss_peak = max(rss_peak, rss_mb(args.pid))
            next_probe += 0.25
    rss_end = rss_mb(args.pid)
    still_open = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()

    def summary(values):
        if not values:
            return "-"
        v = sorted(values)
        return (f"n={len(v)} p50={statistics.median(v)*1000:.0f}ms "
                f"max={v[-1]*1000:.0f}ms")

    by_status = {}
    for i, code in status.items():
        by_status.setdefault(code, []).append(first_byte[i])
    print(f"connections: {args.connections} asked, {len(opened_at)} opened in "
          f"{opened*1000:.0f} ms, {failed_connects} failed to connect; key: "
          f"{'yes' if args.key else 'no'}")
    for code, times in sorted(by_status.items()):
        print(f"  answered {code}: {summary(times)} after connect")
    print(f"  no answer: {len(opened_at) - len(status)}")
    print(f"  closed by the server: {summary(list(closed_at.values()))}; "
          f"still open after {args.hold:.0f} s: {still_open}")
    print(f"server RSS: {rss_start:.1f} MB before, peak {rss_peak:.1f} MB, "
          f"{rss_end:.1f} MB at the end")
    ok = [t for t, code, _ in probes if code == "200"]
    codes = {}
    for _, code, _ in probes:
        codes[code] = codes.get(code, 0) + 1
    print(f"/health probes: {len(probes)}, by answer {codes}; first 200 at "
          f"{(ok[0] if ok else float('nan')):.2f} s; slowest probe "
          f"{max((took for _, _, took in probes), default=0)*1000:.0f} ms")
    line = " ".join(f"{t:.1f}s:{code}" for t, code, _ in probes[::4])
    print(f"  timeline (every 1 s): {line}")


if __name__ == "__main__":
    main()
