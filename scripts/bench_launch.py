"""Launch benchmark: median wall time of `zt-aas run -- /bin/true` beside bare /bin/true and bubblewrap
(`bwrap --unshare-all ... /bin/true`), interleaved in the same run, with ratios. Prints; asserts nothing."""
import os, shutil, statistics, subprocess, tempfile, time

N = int(os.environ.get("BENCH_N", "200"))
BUILT = os.environ["ZT_AAS"]
ws = tempfile.mkdtemp(prefix="zt-bench.")
state = tempfile.mkdtemp(prefix="zt-bench-state.")
# The binary as installed (`cargo install`, a package, a copy): one name. The one cargo leaves in target/
# has a second, target/*/deps/zt_aas-HASH, and every launch looks for it first (a hard link in a writable
# path would let the agent write the binary): measured apart below.
bindir = tempfile.mkdtemp(prefix="zt-bench-bin.")
ZT = os.path.join(bindir, "zt-aas")
shutil.copy2(BUILT, ZT)
os.chmod(bindir, 0o755)
env = dict(os.environ, XDG_STATE_HOME=state)

def ro(*paths):
    out = []
    for p in paths:
        if os.path.islink(p):
            out += ["--symlink", os.readlink(p), p]
        elif os.path.exists(p):
            out += ["--ro-bind", p, p]
    return out

cases = {
    "bare /bin/true": ["/bin/true"],
    "zt-aas run (all layers)": [ZT, "run", "-q", "--workspace", ws, "--", "/bin/true"],
    "zt-aas run --allow-degraded (no userns)": [ZT, "run", "-q", "--allow-degraded", "--workspace", ws, "--", "/bin/true"],
}
if shutil.which("bwrap"):
    cases["bwrap --unshare-all"] = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
        *ro("/usr", "/bin", "/lib", "/lib64", "/sbin"), "--proc", "/proc", "--dev", "/dev",
        "--tmpfs", "/tmp", "--bind", ws, ws, "--cap-drop", "ALL", "/bin/true"]
# The floor: util-linux `unshare` making the same seven namespaces and exec'ing /bin/true (no root of its
# own, no Landlock, seccomp, capability drop, limits or audit): what any sandbox built on namespaces pays
# on this host before it does anything of its own.
if shutil.which("unshare"):
    cases["unshare -Umnpfiu -C (namespaces only)"] = ["unshare", "-Umnpfiu", "-C", "/bin/true"]
# The same sandbox without the memory limit: joining a cgroup-v1 memory controller is the costliest step
# of a launch on hosts that have one (one write to cgroup.procs), so it is shown apart.
nomem = os.path.join(state, "minimal-no-memory.toml")
with open(os.path.join(os.path.dirname(__file__), "..", "profiles", "minimal.toml")) as f:
    text = "".join(l for l in f if not l.startswith("memory ="))
with open(nomem, "w") as f:
    f.write(text)
cases["zt-aas run (all layers, no memory cgroup)"] = [ZT, "run", "-q", "--profile", nomem, "--workspace", ws, "--", "/bin/true"]
# ...and without any cgroup (no pids limit either): what the launch costs where no cgroup can be joined
# (an unprivileged user on a host without a delegated cgroup v2 subtree). rlimits still apply.
nocg = os.path.join(state, "minimal-no-cgroup.toml")
with open(nomem) as f:
    text = "".join(l for l in f if not l.startswith("pids ="))
with open(nocg, "w") as f:
    f.write(text)
cases["zt-aas run (all layers, no cgroup)"] = [ZT, "run", "-q", "--profile", nocg, "--workspace", ws, "--", "/bin/true"]
cases["zt-aas run (all layers), the binary in target/"] = [BUILT, "run", "-q", "--workspace", ws, "--", "/bin/true"]
degraded_env = dict(env, ZT_AAS_TEST_DISABLE="userns")
times = {k: [] for k in cases}
for _ in range(N):
    for name, argv in cases.items():
        e = degraded_env if "degraded" in name else env
        t0 = time.perf_counter_ns()
        r = subprocess.run(argv, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times[name].append(time.perf_counter_ns() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{name}: exit {r.returncode}: {argv}")
med = {k: statistics.median(v) / 1e6 for k, v in times.items()}
print(f"launch: median of {N} runs each, interleaved (ms)")
for k, v in med.items():
    print(f"  {k:<42} {v:8.2f} ms")
if "bwrap --unshare-all" in med:
    print(f"  ratio zt-aas / bwrap                        {med['zt-aas run (all layers)'] / med['bwrap --unshare-all']:8.2f}x")
    print(f"  ratio zt-aas (no memory cgroup) / bwrap     {med['zt-aas run (all layers, no memory cgroup)'] / med['bwrap --unshare-all']:8.2f}x")
    print(f"  ratio zt-aas (no cgroup) / bwrap            {med['zt-aas run (all layers, no cgroup)'] / med['bwrap --unshare-all']:8.2f}x")
if "unshare -Umnpfiu -C (namespaces only)" in med and "bwrap --unshare-all" in med:
    print(f"  ratio namespaces only (unshare) / bwrap     {med['unshare -Umnpfiu -C (namespaces only)'] / med['bwrap --unshare-all']:8.2f}x")
print(f"  degraded - bare                             {med['zt-aas run --allow-degraded (no userns)'] - med['bare /bin/true']:8.2f} ms")
print("  (degraded = user namespaces made unavailable with ZT_AAS_TEST_DISABLE=userns, a test-utils hook)")
shutil.rmtree(ws, ignore_errors=True); shutil.rmtree(state, ignore_errors=True)
shutil.rmtree(bindir, ignore_errors=True)
