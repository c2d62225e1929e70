#!/usr/bin/env python3
"""scripts/bench: Warren's benchmarks on this machine, written to docs/benchmarks.md.

Builds the release binaries, then runs each warren-load scenario against a
stack of its own (its own Redis and RabbitMQ node on free loopback ports,
bridges, gateways; HAProxy for the drain), in about 12 minutes on 2 cores
(build included; an estimate since the slow-reader pair was added):
  fanout  1,000 subscribers in one room on 2 gateways: rates raised until p99
          passes 100 ms or deliveries fall behind (the saturation rate), then
          3 runs at half that rate
  fanout-steady, fanout-slow  the same subscribers at half the saturation rate,
          3 plain runs each, without and with one slow reader (a socket that
          joins the room and never reads; each run opens a new one), the
          gateways' queue limit lowered to BENCH_SLOW_QUEUE bytes in both so
          that the gateway closes it within a run: "one slow reader" table
  fanout-sse  the fan-out with its subscribers on event streams (/sse)
  idle    19,500 authenticated sockets on one gateway (the most its 20,000
          open files allow), 3 runs, each on a fresh gateway process
  idle-sse  the same with event streams instead of WebSockets
  storm   5,000 logged-in clients opening sockets at once on one gateway, 3 runs
  drain   2,000 clients on one gateway behind HAProxy, SIGTERM, 3 runs
  rooms   20,000 live rooms of 2 members and 80,000 idle rooms (each joined,
          sent to once and left) through HAProxy on 3 gateways and 1 bridge,
          on a RabbitMQ node limited to 1,024 open files (as the machine's):
          joins answered, one send per live room delivered to every member,
          and the RabbitMQ node's descriptors, channels, queues and memory
          before and after; once (its rooms would exist in a second run)
  crowd   1,000 members joining one room within 2 s through HAProxy on 3
          gateways while 10 publishers send 50 msg/s for 20 s: latency,
          messages missing per member, presence frames and `joined` bytes
          per member, the gateways' history and replay counters; once
warren-load reads each measured process's CPU time (utime+stime from
/proc/PID/stat) and RSS (/proc/PID/status) at the start and end of every run;
the JSON summaries are kept in .run/bench/. Only the part of
docs/benchmarks.md between the "bench:begin" and "bench:end" markers is
rewritten; the notes around it are kept (`warren-load report` renders it).

Usage: scripts/bench [--quick] [--slow-pair]
  --quick      tiny sizes: checks the script in a few minutes and writes
               .run/bench/benchmarks-quick.md instead
  --slow-pair  only the slow-reader pair (at BENCH_SLOW_RATE, else half the
               saturation rate in .run/bench/fanout.json); writes its table
               to .run/bench/benchmarks-slow-pair.md
  --help       this text
Env: BENCH_RUNS [3], BENCH_SUBSCRIBERS [1000], BENCH_IDLE [19500],
     BENCH_STORM [5000], BENCH_DRAIN [2000], BENCH_OUT [docs/benchmarks.md],
     BENCH_SLOW_RATE [half the saturation rate], BENCH_SLOW_QUEUE [16384],
     BENCH_ROOMS [20000], BENCH_IDLE_ROOMS [80000], BENCH_CROWD [1000],
     BENCH_DIR [.run/bench]: binaries and summaries (another directory lets
     two runs on one machine not swap each other's binaries)

scripts/bench (bash) installs redis-server, rabbitmq-server and haproxy when
missing and builds the release binaries, then runs this file, which copies
the binaries into BENCH_DIR/bin, runs the scenarios and writes the report.
`bench.py --check-args ARGS...` (used by scripts/bench before the build)
exits 0, silently, when ARGS start a run, else 1.
"""
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USAGE = "usage: scripts/bench [--quick] [--slow-pair]"
BINARIES = ("warren-gateway", "warren-bridge", "warren-load")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')} bench] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def env(name, default):
    """BENCH_* as bash's ${NAME:-default}: unset or empty takes the default."""
    return os.environ.get(name) or default


def parse_args(argv):
    """(quick, pair_only), or None for --help; dies on anything else."""
    quick = pair_only = False
    for arg in argv:
        if arg == "--quick":
            quick = True
        elif arg == "--slow-pair":
            pair_only = True
        elif arg in ("--help", "-h"):
            return None
        else:
            die(USAGE)
    return quick, pair_only


def settings(quick, pair_only):
    """Sizes, durations and paths from the BENCH_* environment."""
    s = {
        "runs": env("BENCH_RUNS", "3"), "subscribers": env("BENCH_SUBSCRIBERS", "1000"),
        "idle": env("BENCH_IDLE", "19500"), "storm": env("BENCH_STORM", "5000"),
        "drain": env("BENCH_DRAIN", "2000"), "out": env("BENCH_OUT", "docs/benchmarks.md"),
        "step_duration": "8s", "duration": "15s", "hold": "5s", "drain_window": "10s",
        "rooms": env("BENCH_ROOMS", "20000"), "idle_rooms": env("BENCH_IDLE_ROOMS", "80000"),
        "crowd": env("BENCH_CROWD", "1000"), "crowd_duration": "20s",
        "slow_queue": env("BENCH_SLOW_QUEUE", "16384"),
    }
    if quick:
        s.update({
            "runs": env("BENCH_RUNS", "1"), "subscribers": env("BENCH_SUBSCRIBERS", "50"),
            "idle": "500", "storm": "300", "drain": "100",
            "step_duration": "1s", "duration": "2s", "hold": "1s", "drain_window": "2s",
            "rooms": "100", "idle_rooms": "50", "crowd": "100", "crowd_duration": "5s",
            "out": env("BENCH_OUT", env("BENCH_DIR", ".run/bench") + "/benchmarks-quick.md"),
        })
    if pair_only:
        s["out"] = env("BENCH_OUT", env("BENCH_DIR", ".run/bench") + "/benchmarks-slow-pair.md")
    s["dir"] = env("BENCH_DIR", os.path.join(ROOT, ".run/bench"))
    return s


def scenario(dir_, name, *args):
    """One warren-load run, its JSON summary to DIR/NAME.json (via NAME.json.tmp).

    A failing run ends the bench with its exit status, as `set -e` did."""
    log(f"{name}: warren-load {' '.join(args)}")
    tmp = os.path.join(dir_, name + ".json.tmp")
    interrupted = False
    with open(tmp, "wb") as out:
        proc = subprocess.Popen([os.path.join(dir_, "bin", "warren-load"), *args], stdout=out)
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # it got the SIGINT too: let it end first
                interrupted = True
    if interrupted:
        sys.exit(130)
    if rc != 0:
        sys.exit(rc if rc > 0 else 128 - rc)
    os.replace(tmp, os.path.join(dir_, name + ".json"))


def slow_rate(dir_):
    """BENCH_SLOW_RATE, else half the saturation rate in DIR/fanout.json, else ""."""
    rate = os.environ.get("BENCH_SLOW_RATE", "")
    path = os.path.join(dir_, "fanout.json")
    if not rate and os.path.isfile(path):
        with open(path) as f:
            r = json.load(f).get("saturation_rate")
        rate = str(r / 2) if r else ""
    return rate


def main(argv):
    if argv[:1] == ["--check-args"]:
        check = argv[1:]
        known = all(a in ("--quick", "--slow-pair") for a in check)
        sys.exit(0 if known else 1)
    parsed = parse_args(argv)
    if parsed is None:
        print(__doc__, end="")
        return 0
    quick, pair_only = parsed
    os.chdir(ROOT)
    s = settings(quick, pair_only)
    dir_, out = s["dir"], s["out"]
    os.makedirs(dir_, exist_ok=True)

    # A copy, so that a build started meanwhile (target/ is shared) cannot swap
    # binaries between two scenarios.
    bin_dir = os.path.join(dir_, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    for b in BINARIES:
        shutil.copy(os.path.join("target/release", b), bin_dir)
    os.environ["WARREN_BIN_DIR"] = bin_dir
    common = ["--private-services", "--runs", s["runs"]]

    with open("/proc/loadavg") as f:
        busy = f.read().split()[0]
    log(f"load average before: {busy} (2 cores; other work on the machine disturbs the figures)")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    fanout = ["fanout", *common, "--gateways", "2", "--subscribers", s["subscribers"],
              "--publishers", "4", "--rooms", "1", "--duration", s["duration"]]
    step = ["--step", "--step-start", "20", "--step-factor", "1.5", "--step-duration", s["step_duration"], "--refine", "2"]
    if not pair_only:
        scenario(dir_, "fanout", *fanout, *step)
    # The slow-reader pair: the same runs as the fan-out's, at half its saturation rate.
    rate = slow_rate(dir_)
    for name in ("fanout-steady", "fanout-slow"):
        try:
            os.remove(os.path.join(dir_, name + ".json"))
        except FileNotFoundError:
            pass
    if rate:
        pair = [*fanout, "--rate", rate, "--gateway-env", f"GATEWAY_MAX_QUEUE_BYTES={s['slow_queue']}"]
        scenario(dir_, "fanout-steady", *pair)
        scenario(dir_, "fanout-slow", *pair, "--slow-readers", "1")
    elif pair_only:
        die(f"--slow-pair needs BENCH_SLOW_RATE or a saturation rate in {dir_}/fanout.json")
    else:
        log("no saturation rate: the slow-reader pair is not run")
    if not pair_only:
        idle = ["idle", *common, "--gateways", "1", "--clients", s["idle"], "--sources", "2", "--hold", s["hold"]]
        scenario(dir_, "fanout-sse", *fanout, "--transport", "sse", *step)
        scenario(dir_, "idle", *idle)
        scenario(dir_, "idle-sse", *idle, "--transport", "sse")
        scenario(dir_, "storm", "storm", *common, "--gateways", "1", "--clients", s["storm"])
        scenario(dir_, "drain", "drain", *common, "--clients", s["drain"], "--room-size", "20",
                 "--rate", "200", "--drain-window", s["drain_window"])
        # rooms always starts a private RabbitMQ node (and Redis): thousands of
        # streams must not exhaust a broker that others share.
        # The broker gets the machine broker's 1,024 descriptors.
        scenario(dir_, "rooms", "rooms", "--rooms", s["rooms"], "--members", "2", "--idle-rooms", s["idle_rooms"],
                 "--send-rate", "2000", "--broker-open-files", "1024")
        scenario(dir_, "crowd", "crowd", "--private-services", "--members", s["crowd"], "--publishers", "10",
                 "--rate", "50", "--duration", s["crowd_duration"])

    log(f"writing {out}")
    # The machine's facts are read now, by the report, on the machine that ran the scenarios.
    report = [os.path.join(bin_dir, "warren-load"), "report", "--dir", dir_, "--out", out,
              "--started", started, "--bench-args=" + " ".join(argv)]
    if pair_only:
        report.append("--slow-pair")
    if os.environ.get("BENCH_SLOW_RATE"):
        report += ["--slow-rate", os.environ["BENCH_SLOW_RATE"]]
    rc = subprocess.run(report, check=False).returncode
    if rc != 0:
        die(f"warren-load report failed (exit status {rc})")
    log(f"done: {out} (summaries in {dir_})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
