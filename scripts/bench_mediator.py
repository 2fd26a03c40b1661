"""Mediator benchmark: sys.ping round trips from inside a real sandbox, p50/p99 and calls/s, with the audit
log fsynced per record and in the relaxed mode ([audit] fsync = false), each with a Python agent and with
the same loop compiled (examples/ping_agent.rs: the round trip without an interpreter's share).
Prints; asserts nothing."""
import os, shutil, subprocess, tempfile, textwrap

ZT = os.environ["ZT_AAS"]
# examples/ping_agent.rs: the same loop compiled (the round trip without an interpreter's share).
NATIVE = os.environ["ZT_AAS_PING_AGENT"]
N = int(os.environ.get("BENCH_N", "5000"))
AGENT = textwrap.dedent(f"""
    import json, socket, time
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=3)
    lat = []
    t0 = time.perf_counter_ns()
    for i in range({N}):
        a = time.perf_counter_ns()
        s.send(json.dumps({{"id": i, "action": "sys.ping"}}).encode())
        r = json.loads(s.recv(65536))
        lat.append(time.perf_counter_ns() - a)
        assert r["decision"] == "allow", r
    total = time.perf_counter_ns() - t0
    lat.sort()
    rate = {N} / (total / 1e9)
    print(f"p50 {{lat[len(lat)//2]/1000:8.1f}} us  p99 {{lat[len(lat)*99//100]/1000:8.1f}} us  {{rate:8.0f}} calls/s")
""")

def run(fsync):
    d = tempfile.mkdtemp(prefix="zt-bench-med.")
    os.makedirs(f"{d}/keys"); os.makedirs(f"{d}/ws")
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
            [[action]]
            name = "sys.ping"
            builtin = "sys.ping"
            [[rule]]
            effect = "allow"
            actions = ["sys.ping"]
        """))
    subprocess.run([ZT, "token", "issue", "--policy", f"{d}/policy.toml", "--key", f"{d}/keys/issuer.key",
                    "--agent", "bot", "--action", "sys.ping", "--out", f"{d}/t.tok"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.copy(NATIVE, f"{d}/ws/ping_agent")
    label = "fsync per record" if fsync else "relaxed (no fsync)"
    for client, agent in (("python3", ["python3", "-c", AGENT]), ("compiled", [f"{d}/ws/ping_agent", str(N)])):
        out = subprocess.run([ZT, "run", "-q", "--policy", f"{d}/policy.toml", "--token", f"{d}/t.tok",
                              "--workspace", f"{d}/ws", "--", *agent], capture_output=True, text=True)
        print(f"mediator sys.ping x{N} {label:<20} {client:<9} {out.stdout.strip() or out.stderr.strip()}")
    shutil.rmtree(d, ignore_errors=True)

run(True)
run(False)
