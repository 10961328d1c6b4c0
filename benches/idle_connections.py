#!/usr/bin/env python3
"""Idle connections against a demo app: starts the app under `ulimit -n 1024`, opens N idle
TCP connections to it (sending nothing), and asks `GET /healthz` once a second for 25 s.

    cargo build --release --example axum_app
    python3 benches/idle_connections.py target/release/examples/axum_app 1100 held
    python3 benches/idle_connections.py target/release/examples/axum_app 1100 reconnect

`held` keeps the N sockets open (the server may close them); `reconnect` replaces every socket
the server closed, once a second. Prints (seconds since start, /healthz status, seconds it
took) for each probe (status 000: no answer within 20 s). 127.0.0.1 only; stops by itself.
"""
import socket, sys, time, subprocess, os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
binary, n, reconnect = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "reconnect"
env = dict(os.environ, PORT="0", RUST_LOG="warn")
env = {k: v for k, v in env.items() if not k.startswith("LIGHTRATE_")}
app = subprocess.Popen(["bash", "-c", f"ulimit -n 1024; exec {binary}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
line = app.stdout.readline().decode().strip()
port = int(line.rsplit(":", 1)[1])
def connect():
    s = socket.socket(); s.settimeout(2)
    try: s.connect(("127.0.0.1", port))
    except OSError as e: print("connect failed", e)
    s.setblocking(False)
    return s
socks = [connect() for _ in range(n)]
time.sleep(0.5)
print("server fds after connecting:", len(os.listdir(f"/proc/{app.pid}/fd")))
def health(timeout=30):
    t = time.time()
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout), f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True)
    return r.stdout, round(time.time() - t, 2)
results = []
end = time.time() + 25
while time.time() < end:
    code, took = health(20)
    results.append((round(time.time() - (end - 25), 1), code, took))
    if reconnect:
        # Keep n connections open: replace those the server closed.
        import select
        alive = []
        for s in socks:
            try:
                data = s.recv(1, socket.MSG_PEEK)
                if data == b"": s.close(); alive.append(connect()); continue
            except BlockingIOError: pass
            except OSError: s.close(); alive.append(connect()); continue
            alive.append(s)
        socks = alive
    time.sleep(1)
fds = len(os.listdir(f"/proc/{app.pid}/fd")) if os.path.exists(f"/proc/{app.pid}/fd") else -1
app.kill()
print(binary.rsplit("/",1)[1], "reconnect" if reconnect else "held", "healthz (t, code, seconds):", results, "server fds at end:", fds)
