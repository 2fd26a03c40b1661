"""Egress benchmark: added latency per HTTP request through the proxy (`network.mode = "proxy"`) vs direct,
on loopback, and throughput of one large plain-HTTP download. Needs a binary built with
feature test-utils (the resolver override maps the test name to the local server). Prints; asserts nothing."""
import http.server, os, shutil, subprocess, tempfile, textwrap, threading

ZT = os.environ["ZT_AAS"]
N = int(os.environ.get("BENCH_N", "300"))
BIG = int(os.environ.get("BENCH_BYTES", str(64 << 20)))
PAYLOAD = b"x" * 1024


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        body = PAYLOAD if self.path != "/big" else None
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if body else BIG))
        self.end_headers()
        if body:
            self.wfile.write(body)
        else:
            chunk = b"y" * (1 << 20)
            for _ in range(BIG // len(chunk)):
                self.wfile.write(chunk)

    def log_message(self, *a):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
PORT = srv.server_address[1]
threading.Thread(target=srv.serve_forever, daemon=True).start()

# The same client inside and outside: raw sockets, one request per connection (the proxy closes each).
CLIENT = textwrap.dedent(f"""
    import socket, sys, time
    host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    def get(path):
        s = socket.create_connection((host, port))
        target = f"http://{{name}}{{path}}" if port == 3128 else path
        s.sendall(f"GET {{target}} HTTP/1.1\\r\\nHost: {{name}}\\r\\n\\r\\n".encode())
        n = 0
        while True:
            c = s.recv(1 << 20)
            if not c: break
            n += len(c)
        s.close()
        return n
    lat = []
    for i in range({N}):
        a = time.perf_counter_ns(); get("/small"); lat.append(time.perf_counter_ns() - a)
    lat.sort()
    a = time.perf_counter_ns(); n = get("/big"); t = (time.perf_counter_ns() - a) / 1e9
    print(f"p50 {{lat[len(lat)//2]/1000:8.1f}} us  p99 {{lat[len(lat)*99//100]/1000:8.1f}} us  "
          f"{{n/t/1e6:8.0f}} MB/s ({{n>>20}} MiB)")
""")


def project(fsync):
    d = tempfile.mkdtemp(prefix="zt-bench-egress.")
    os.makedirs(f"{d}/keys")
    subprocess.run([ZT, "keygen", "--out", f"{d}/keys/issuer"], check=True, stdout=subprocess.DEVNULL)
    with open(f"{d}/policy.toml", "w") as f:
        f.write(textwrap.dedent(f"""
            version = 1
            name = "bench"
            agent = "bot"
            [issuers]
            keys = ["keys/issuer.pub"]
            [audit]
            log = "audit.jsonl"
            key = "keys/audit.key"
            fsync = {"true" if fsync else "false"}
            [network]
            mode = "proxy"
            allow = ["bench.test"]
            [[action]]
            name = "net.connect"
            builtin = "net.connect"
            [[rule]]
            effect = "allow"
            actions = ["net.connect"]
        """))
    subprocess.run([ZT, "token", "issue", "--policy", f"{d}/policy.toml", "--key", f"{d}/keys/issuer.key",
                    "--agent", "bot", "--action", "net.connect", "--ttl", "30m", "--out", f"{d}/t.tok"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(f"{d}/client.py", "w") as f:
        f.write(CLIENT)
    return d


d = project(True)
print(f"egress, {N} requests of 1 KiB, then one {BIG >> 20} MiB download, loopback:")
out = subprocess.run(["python3", f"{d}/client.py", "127.0.0.1", str(PORT), "bench.test"],
                     capture_output=True, text=True, timeout=600)
print(f"  direct (no sandbox)        {out.stdout.strip()}")
for fsync in (True, False):
    d = project(fsync)
    env = dict(os.environ, ZT_AAS_TEST_RESOLVE=f"bench.test=127.0.0.1:{PORT}")
    out = subprocess.run([ZT, "run", "-q", "--policy", f"{d}/policy.toml", "--token", f"{d}/t.tok",
                          "--workspace", d, "--", "python3", f"{d}/client.py", "127.0.0.1", "3128",
                          "bench.test"], capture_output=True, text=True, env=env, timeout=600)
    label = "proxy, fsync per record " if fsync else "proxy, relaxed audit     "
    print(f"  {label}   {out.stdout.strip() or out.stderr.strip()[-300:]}")
    shutil.rmtree(d, ignore_errors=True)
srv.shutdown()
