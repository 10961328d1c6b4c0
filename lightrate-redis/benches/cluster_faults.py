#!/usr/bin/env python3
"""Issue 24's table, from outside: a 6-node Redis Cluster (3 primaries, 3 replicas,
cluster-node-timeout 1000 ms), a release `lightrate-server --redis-cluster ...` in front of it,
four HTTP clients (keep-alive, one request at a time each) sending steady consume calls for 60
users spread over every slot range, on a rule that never limits them: three clients for the users
whose keys live on the healthy primaries, one for the victim's users; then one primary killed (SIGKILL) or stalled (SIGSTOP for 4 s).

    python3 lightrate-redis/benches/cluster_faults.py --server target/release/lightrate-server \
        --fault kill|stop [--full-coverage yes|no] [--base-port 30001]

Prints, for the requests whose keys live on the healthy primaries and for those on the victim:
how many were answered 200 while the fault lasted, the slowest answer, and when everything
was 200 again. Needs redis-server and redis-cli on PATH; stdlib only.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

USERS = 60
CLIENTS = 4
APP = "bench"
RULE = "bench"
CLIENT_TIMEOUT = 2.5


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True)
    return out.stdout.strip()


def wait_for(what, condition, limit=30.0):
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            sys.exit(f"{what}: not within {limit} s")
        time.sleep(0.02)


def start_cluster(base, full_coverage, scratch, nodes):
    ports = [base + i for i in range(6)]
    for port in ports:
        if redis_cli(port, "PING"):
            sys.exit(f"port {port} is taken: pick another --base-port")
    for port in ports:
        d = os.path.join(scratch, str(port))
        os.makedirs(d)
        nodes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", d,
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "1000",
             "--cluster-require-full-coverage", full_coverage, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for port in ports:
        wait_for(f"redis on {port}", lambda p=port: redis_cli(p, "PING") == "PONG")
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "1", "--cluster-yes"],
                   check=True, capture_output=True)
    wait_for("cluster ok", lambda: all(
        "cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO") for p in ports))
    wait_for("replicas in sync", lambda: all(
        "role:master" in (i := redis_cli(p, "INFO", "replication"))
        or "master_link_status:up" in i for p in ports))


def primary_of(port, slot):
    """The port of the primary serving `slot`, as the node at `port` sees it."""
    for line in redis_cli(port, "CLUSTER", "NODES").splitlines():
        f = line.split()
        if len(f) < 8 or "master" not in f[2] or "fail" in f[2]:
            continue
        for r in f[8:]:
            a, _, b = r.partition("-")
            if a.isdigit() and int(a) <= slot <= int(b or a):
                return int(f[1].split("@")[0].rsplit(":", 1)[1])
    return None


class Client(threading.Thread):
    def __init__(self, port, users, key, stop, start):
        super().__init__(daemon=True)
        self.port, self.users, self.key, self.stop, self.t0 = port, users, key, stop, start
        self.seen = []  # (start s, latency s, user, status)

    def run(self):
        conn = None
        i = 0
        while not self.stop.is_set():
            user = self.users[i % len(self.users)]
            i += 1
            body = json.dumps({"applicationId": APP, "userIdentifier": user, "operation": "bench",
                               "tokensRequested": 1})
            at = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=CLIENT_TIMEOUT)
                conn.request("POST", "/api/v1/tokens/consume", body,
                             {"Authorization": f"Bearer {self.key}",
                              "Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception:
                status = 0  # no answer within the client's timeout, or a broken connection
                if conn is not None:
                    conn.close()
                conn = None
            self.seen.append((at - self.t0, time.monotonic() - at, user, status))
            if status != 200:
                time.sleep(0.005)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--fault", choices=["kill", "stop"], required=True)
    ap.add_argument("--full-coverage", choices=["yes", "no"], default="no")
    ap.add_argument("--clients", choices=["split", "mixed"], default="split",
                    help="split: three clients for the healthy keys, one for the victim's; "
                         "mixed: each client cycles over every slot range")
    ap.add_argument("--base-port", type=int, default=30001)
    ap.add_argument("--http-port", type=int, default=18080)
    args = ap.parse_args()

    scratch = tempfile.mkdtemp(prefix="lightrate-cluster-bench-")
    nodes = {}
    server = None
    try:
        start_cluster(args.base_port, args.full_coverage, scratch, nodes)
        rules = os.path.join(scratch, "rules.toml")
        with open(rules, "w") as f:
            f.write('[default]\nrefill_rate = 1\nburst_rate = 5\n\n[[rules]]\nid = "bench"\n'
                    'name = "Bench"\nmatcher = "^bench$"\nrefill_rate = 1000000\n'
                    'burst_rate = 100000000\n')
        key = "bench-key-0123456789"
        env = dict(os.environ, LIGHTRATE_API_KEY=key, LIGHTRATE_APPLICATION_ID=APP,
                   RUST_LOG="warn")
        urls = ",".join(f"redis://127.0.0.1:{p}" for p in nodes)
        log = open(os.path.join(scratch, "server.log"), "w")
        server = subprocess.Popen(
            [args.server, "--listen", f"127.0.0.1:{args.http_port}", "--config", rules,
             "--redis-cluster", urls], env=env, stdout=log, stderr=log)

        def up():
            try:
                c = http.client.HTTPConnection("127.0.0.1", args.http_port, timeout=1)
                c.request("GET", "/health")
                return c.getresponse().status == 200
            except Exception:
                return False
        wait_for("server up", up)

        first = args.base_port
        users = [f"user-{i}" for i in range(USERS)]
        slot = {u: int(redis_cli(first, "CLUSTER", "KEYSLOT", f"lightrate:{APP}:{RULE}:{u}"))
                for u in users}
        victim = primary_of(first, slot[users[0]])
        on_victim = {u for u in users if primary_of(first, slot[u]) == victim}

        stop = threading.Event()
        t0 = time.monotonic()
        # The healthy keys' own clients (three), and the victim's keys' client apart, so that
        # healthy requests are not queued behind stalled ones on one connection.
        healthy_users = [u for u in users if u not in on_victim]
        groups = [healthy_users[i::CLIENTS - 1] for i in range(CLIENTS - 1)]
        groups.append(sorted(on_victim))
        if args.clients == "mixed":
            groups = [users[i::CLIENTS] for i in range(CLIENTS)]
        clients = [Client(args.http_port, g, key, stop, t0) for g in groups]
        for c in clients:
            c.start()
        time.sleep(5)  # the baseline: a length of traffic, not a wait for a condition
        fault_at = time.monotonic() - t0
        if args.fault == "kill":
            nodes[victim].kill()
            nodes[victim].wait()
            fault_end = None
        else:
            os.kill(nodes[victim].pid, signal.SIGSTOP)
            time.sleep(4)
            os.kill(nodes[victim].pid, signal.SIGCONT)
            fault_end = time.monotonic() - t0
        # Run on until every request has been 200 for 3 s (or 30 s).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = time.monotonic() - t0
            recent = [s for c in clients for s in c.seen[-200:]
                      if s[0] > fault_at and s[0] + s[1] > now - 3]
            if now > fault_at + 3 and recent and all(s[3] == 200 for s in recent):
                break
        stop.set()
        for c in clients:
            c.join()
        seen = [s for c in clients for s in c.seen]
        bad = [s for s in seen if s[3] != 200 and s[0] + s[1] >= fault_at]
        last_bad = max((s[0] + s[1] for s in bad), default=fault_at)
        end = max(last_bad, fault_end or fault_at)
        during = [s for s in seen if s[0] + s[1] >= fault_at and s[0] <= end]
        before = [s for s in seen if s[0] + s[1] < fault_at]

        def share(group):
            ok = sum(1 for s in group if s[3] == 200)
            return f"{ok}/{len(group)} = {100.0 * ok / max(1, len(group)):.1f} %"

        def p50(group):
            lat = sorted(s[1] for s in group)
            return f"{1000 * lat[len(lat) // 2]:.2f} ms" if lat else "-"
        healthy_d = [s for s in during if s[2] not in on_victim]
        victim_d = [s for s in during if s[2] in on_victim]
        statuses = {}
        for s in bad:
            statuses[s[3]] = statuses.get(s[3], 0) + 1
        print(json.dumps({
            "fault": args.fault, "full_coverage": args.full_coverage, "clients": args.clients,
            "users_on_victim": len(on_victim), "requests": len(seen),
            "fault_window_s": round(end - fault_at, 2),
            "healthy_200_during": share(healthy_d),
            "victim_200_during": share(victim_d),
            "healthy_p50_before": p50([s for s in before if s[2] not in on_victim]),
            "healthy_p50_during": p50(healthy_d),
            "slowest_s": round(max(s[1] for s in seen), 3),
            "all_200_again_after_fault_s": round(last_bad - fault_at, 2),
            "all_200_again_after_resume_s":
                round(last_bad - fault_end, 2) if fault_end else None,
            "non_200_statuses": statuses,
        }, indent=1))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        for p in nodes.values():
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            p.kill()
            p.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
