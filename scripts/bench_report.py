#!/usr/bin/env python3
"""The report of scripts/bench: the machine it ran on, and docs/benchmarks.md's
tables rendered from the JSON each warren-load scenario wrote.

scripts/bench.py calls machine() and render() directly. By hand:
Usage: bench_report.py machine STARTED        (prints the machine's JSON)
       bench_report.py render DIR OUT MACHINE_JSON ARGS PAIR_ONLY
"""
import json
import os
import re
import subprocess
import sys


def machine(started):
    """The machine's facts (a dict for render's MACHINE), STARTED the start time."""
    def sh(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""
    cpuinfo = open("/proc/cpuinfo").read()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+)", open("/proc/meminfo").read())
    return {
        "started": started,
        "nproc": os.cpu_count(),
        "model": model.group(1) if model else "unknown",
        "memory_gib": round(int(mem.group(1)) / 1048576, 1) if mem else None,
        "kernel": sh("uname", "-r"),
        "rustc": sh("rustc", "--version"),
        "haproxy": sh("haproxy", "-v").splitlines()[0] if sh("haproxy", "-v") else "",
        "revision": sh("git", "rev-parse", "--short", "HEAD") + (" + uncommitted changes" if sh("git", "status", "--porcelain", "--untracked-files=no") else ""),
    }


def render(dir_, out, machine, args, pair_only):
    """Writes the report to OUT from the summaries in DIR_: MACHINE is machine()'s
    dict, ARGS scripts/bench's arguments (one string), PAIR_ONLY true (or a
    non-empty string) for --slow-pair."""
    names = ("fanout-steady", "fanout-slow") if pair_only else ("fanout", "idle", "storm", "drain", "rooms", "crowd")
    S = {n: json.load(open(os.path.join(dir_, n + ".json"))) for n in names}
    S.update({n: json.load(open(os.path.join(dir_, n + ".json")))
              for n in ("fanout-steady", "fanout-slow", "fanout-sse", "idle-sse") if os.path.exists(os.path.join(dir_, n + ".json"))})

    def num(v, digits=0):
        if v is None:
            return "–"
        if isinstance(v, float) and digits:
            return f"{v:,.{digits}f}"
        return f"{round(v):,}"

    def cpu_cols(cpu):
        """CPU seconds (and % of one core) per process, gateways and bridges first."""
        order = lambda w: (0 if w["name"].startswith("gw") else 1 if w["name"].startswith("bridge") else 2, w["name"])
        return ", ".join(f'{w["name"]} {w["cpu_s"]:.2f} s ({w["cpu_pct"]:.0f} %)' for w in sorted(cpu, key=order))

    def loads(s):
        m = s["machine"]
        return f'{m["loadavg_start"][0]:.2f} → {m["loadavg_end"][0]:.2f}'

    L = []
    w = L.append

    def slow_pair():
        """The "one slow reader" table: the pair of fan-out runs without and with one."""
        w("### One slow reader")
        w("")
        a, b = S.get("fanout-steady"), S.get("fanout-slow")
        if not (a and b):
            w("Not run: the fan-out found no saturation rate.")
            return
        p = b["params"]
        env = " ".join(b["target"]["own_stack"]["gateway_env"])
        rate = "set by BENCH_SLOW_RATE" if os.environ.get("BENCH_SLOW_RATE") else "half the saturation rate"
        w(f'The fan-out again at {p["rate"]:g} msg/s ({rate}): {b["setup"]["subscribers_joined"]:,} '
          f'subscribers in {p["rooms"]} room(s) on {b["target"]["own_stack"]["gateways"]} gateways, {p["publishers"]} '
          f'publishers, plain runs of {p["duration_s"]:g} s ({len(b["runs"])} each), twice: without and with one slow reader, a '
          f'socket that joins the room and then never reads (2 KiB receive buffer, 1,460-byte segments; each run opens a '
          f'new one). Both with `{env}`, so that the gateway\'s queue for it fills and it is closed (`slow`) within a run. '
          f'Deliveries and latency are the subscribers\' only; load average {loads(a)} and {loads(b)}.')
        w("")
        w("| slow readers | deliveries/s | p50 | p90 | **p99** | max (ms) | p99 of each run (ms) | missing | duplicates | "
          "slow readers closed by the gateway, client's view | gateways' `slow` closes | gateway CPU (s) |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for count, s in (("0", a), ("1", b)):
            m = s["median"]; lat = m["latency"]
            each = " / ".join(str(r["latency"]["p99_ms"]) for r in s["runs"])
            sr = s.get("slow_readers")
            ended = "–" if not sr else (f'{sr["closed_by_gateway"]} of {sr["opened"]} (`slow` close frame {sr["close_slow"]}, '
                                        f'no close frame {sr["eof"] + sr["reset"]}; still open {sr["still_open"]})')
            closes = "–" if not sr else num(sr.get("gateway_slow_closes"))
            w(f'| {count} | {num(m["deliveries_per_s"])} | {lat["p50_ms"]} | {lat["p90_ms"]} | **{lat["p99_ms"]}** | '
              f'{lat["max_ms"]} | {each} | {s["missing"]} | {s["duplicates"]} | {ended} | {closes} | {m["gateway_cpu_s"]} |')
        w("")

    command = " ".join(["scripts/bench"] + args.split())
    w(f'Measured {machine["started"]} by `{command}` at revision {machine["revision"]}.')
    w("")
    if pair_only:
        slow_pair()
        open(out, "w").write("\n".join(L))
        return
    w("| machine | |")
    w("|---|---|")
    w(f'| CPU | {machine["nproc"]} × {machine["model"]} |')
    w(f'| memory | {machine["memory_gib"]} GiB |')
    w(f'| kernel | {machine["kernel"]} |')
    w(f'| toolchain | {machine["rustc"]} |')
    w("| load average (1 min) at start → end of each scenario | " +
      ", ".join(f"{n} {loads(S[n])}" for n in ("fanout", "fanout-sse", "idle", "idle-sse", "storm", "drain", "rooms", "crowd") if n in S) + " |")
    w("")
    w("Everything (RabbitMQ, Redis, bridge, gateways, HAProxy and the load generator) shares these cores, so "
      "every figure comes with the CPU time each process used over the same window (utime+stime from "
      "`/proc/PID/stat`). Each scenario runs against a stack of its own: its own Redis and RabbitMQ node, "
      "release builds, gateways started with their abuse limits raised (`" +
      " ".join(S["fanout"]["target"]["own_stack"]["limits_env"]) + "`), default logging (`info`, to /dev/null).")
    w("")

    f = S["fanout"]; p = f["params"]
    w("### Fan-out")
    w("")
    w(f'{f["setup"]["subscribers_joined"]:,} subscribers in {p["rooms"]} room(s), spread over '
      f'{f["target"]["own_stack"]["gateways"]} gateways (directly, no balancer), {p["publishers"]} publishers, '
      f'{p["text_bytes"]}-byte texts, 1 bridge. Latency is end to end: the send time travels in the message text '
      f'and is compared with the clock when the subscriber reads the frame (publish, broker confirm, stream, '
      f'bridge, gateway, socket, load generator). Step mode: each step sends for {p["step"]["duration_s"]:g} s; '
      f'a step fails when p99 > {p["step"]["p99_limit_ms"]} ms or deliveries fall behind.')
    w("")
    w("| step rate (msg/s) | sent/s | deliveries/s | deliveries per CPU-s (gw+bridge) | p50 | p90 | p99 | max (ms) | behind | CPU per process |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for st in f.get("steps", []):
        lat = st["latency"]
        w(f'| {num(st["rate"], 1)} | {num(st["send_rate"], 1)} | {num(st["deliveries_per_s"])} | {num(st["deliveries_per_cpu_s"])} | '
          f'{lat["p50_ms"]} | {lat["p90_ms"]} | {lat["p99_ms"]} | {lat["max_ms"]} | {"yes" if st["behind"] else "no"} | {cpu_cols(st["cpu"])} |')
    w("")
    sat = f.get("saturation_rate")
    w(f'**Saturation rate: {num(sat, 1)} msg/s** = {num(f.get("saturation_deliveries_per_s"))} deliveries/s '
      f'(the highest step that held). At half of it ({num(sat / 2 if sat else None, 1)} msg/s), {len(f["runs"])} runs of {p["duration_s"]:g} s:')
    w("")
    w("| run | deliveries/s | deliveries per CPU-s (gw+bridge) | p50 | p90 | p99 | max (ms) | missing | duplicates | CPU per process |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(f["runs"], 1):
        lat = r["latency"]
        w(f'| {i} | {num(r["deliveries_per_s"])} | {num(r["deliveries_per_cpu_s"])} | {lat["p50_ms"]} | {lat["p90_ms"]} | '
          f'{lat["p99_ms"]} | {lat["max_ms"]} | {r["missing"]} | {r["duplicates"]} | {cpu_cols(r["cpu"])} |')
    m = f.get("median") or {}
    if m:
        lat = m.get("latency", {})
        w(f'| **median** | **{num(m.get("deliveries_per_s"))}** | **{num(m.get("deliveries_per_cpu_s"))}** | {lat.get("p50_ms")} | '
          f'{lat.get("p90_ms")} | **{lat.get("p99_ms")}** | {lat.get("max_ms")} | {m.get("missing")} | {m.get("duplicates")} | '
          f'gateways {m.get("gateway_cpu_s")} s, bridge {m.get("bridge_cpu_s")} s |')
    w("")
    slow_pair()

    i_ = S["idle"]; p = i_["params"]
    w("### Idle sockets")
    w("")
    w(f'{p["clients"]:,} authenticated sockets opened ({p["concurrency"]} at a time, from {p["sources"]} source addresses) '
      f'and held {p["hold_s"]:g} s on one gateway, a fresh gateway process for each run; RSS per socket = '
      f'(gateway VmRSS after − before) / sockets. Logins beforehand: {num(i_["setup"]["logins_per_s"])}/s.')
    w("")
    w("| run | opened | failed | still open | setup/s | opens per gateway CPU-s | gateway RSS before → after (MiB) | **RSS per socket** | CPU per process (setup) |")
    w("|---|---|---|---|---|---|---|---|---|")
    for n, r in enumerate(i_["runs"], 1):
        w(f'| {n} | {r["opened"]:,} | {r["failed"]} | {r["still_open"]:,} | {num(r["setup_per_s"])} | {num(r["opens_per_gateway_cpu_s"])} | '
          f'{r["gateway_rss_kib_before"] / 1024:.1f} → {r["gateway_rss_kib_after"] / 1024:.1f} | '
          f'{r["gateway_rss_per_socket_bytes"] / 1024:.1f} KiB | {cpu_cols(r["setup_cpu"])} |')
    m = i_["median"]
    w(f'| **median** | {m["opened"]:,} | {m["failed"]} | {m["still_open"]:,} | {num(m["setup_per_s"])} | {num(m["opens_per_gateway_cpu_s"])} | | '
      f'**{m["gateway_rss_per_socket_bytes"] / 1024:.1f} KiB** | gateway {m["gateway_cpu_s"]} s |')
    w("")

    def event_streams():
        fs, isse = S.get("fanout-sse"), S.get("idle-sse")
        if not fs or not isse:
            return
        w("### Event streams beside WebSockets")
        w("")
        w("The same fan-out (step mode, then runs at half the saturation rate) with the subscribers on event "
          "streams (`/sse`; publishers stay on WebSockets), and the same idle run with streams instead of sockets.")
        w("")
        w("| | saturation rate (msg/s) | deliveries/s at half | p99 at half (ms) | deliveries per CPU-s (gw+bridge) | missing | duplicates | idle RSS per connection |")
        w("|---|---|---|---|---|---|---|---|")
        for label, fan, idle in (("WebSocket", S["fanout"], S["idle"]), ("event stream", fs, isse)):
            m = fan.get("median") or {}
            w(f'| {label} | {num(fan.get("saturation_rate"), 1)} | {num(m.get("deliveries_per_s"))} | '
              f'{m.get("latency", {}).get("p99_ms")} | {num(m.get("deliveries_per_cpu_s"))} | {m.get("missing")} | '
              f'{m.get("duplicates")} | {idle["median"]["gateway_rss_per_socket_bytes"] / 1024:.1f} KiB |')
        w("")

    event_streams()

    s_ = S["storm"]; p = s_["params"]
    w("### Connect storm")
    w("")
    w(f'{p["clients"]:,} clients, logged in beforehand, open their sockets at the same instant against one gateway '
      f'(each upgrade checks the session in Redis); handshakes/s = welcomed / time to the last `welcome`.')
    w("")
    w("| run | welcomed | failed | handshakes/s | **handshakes per gateway CPU-s** | time to welcome p50 | p90 | p99 | max (ms) | CPU per process |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for n, r in enumerate(s_["runs"], 1):
        t = r["time_to_welcome"]
        w(f'| {n} | {r["welcomed"]:,} | {r["failed"]} | {num(r["handshakes_per_s"])} | {num(r["handshakes_per_gateway_cpu_s"])} | '
          f'{t["p50_ms"]} | {t["p90_ms"]} | {t["p99_ms"]} | {t["max_ms"]} | {cpu_cols(r["cpu"])} |')
    m = s_["median"]; t = m["time_to_welcome"]
    w(f'| **median** | {m["welcomed"]:,} | {m["failed"]} | **{num(m["handshakes_per_s"])}** | **{num(m["handshakes_per_gateway_cpu_s"])}** | '
      f'{t["p50_ms"]} | {t["p90_ms"]} | **{t["p99_ms"]}** | {t["max_ms"]} | gateway {m["gateway_cpu_s"]} s |')
    w("")

    d = S["drain"]; p = d["params"]
    w("### Drain")
    w("")
    w(f'{p["clients"]:,} clients (the chaos suite\'s agents: `/session`, `join` with `since`, resend unacked) in rooms of '
      f'{p["room_size"]}, sending {p["rate"]:g} msg/s together, all on one gateway behind HAProxy; a second gateway is '
      f'started, then the first gets SIGTERM (drain window {p["drain_window_ms"] / 1000:g} s). "All back" = the last client '
      f'joined again on the other gateway; "all receiving" = the last client\'s first message there. The drained '
      f'gateway has exited by the end of the window, so its CPU is not in the last column.')
    w("")
    w("| run | back | all back (s) | all receiving (s) | reconnect p50 / p99 (ms) | old gateway exited (s) | acked | missed | duplicates | relogins | CPU per process |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    sec = lambda ms: "–" if ms is None else f"{ms / 1000:.2f}"
    for n, r in enumerate(d["runs"], 1):
        w(f'| {n} | {r["back"]:,} | {sec(r["all_back_ms"])} | {sec(r["all_receiving_ms"])} | {r["reconnect_p50_ms"]} / {r["reconnect_p99_ms"]} | '
          f'{sec(r["gateway_exit_ms"])} | {r["acked"]:,} | {r["missed"]} | {r["duplicates"]} | {r["relogins"]} | {cpu_cols(r["cpu"])} |')
    m = d["median"]
    w(f'| **median** | {m["back"]:,} | **{sec(m.get("all_back_ms"))}** | **{sec(m.get("all_receiving_ms"))}** | {m["reconnect_p50_ms"]} / {m["reconnect_p99_ms"]} | '
      f'{sec(m.get("gateway_exit_ms"))} | {m["acked"]:,} | **{m["missed"]}** | {m["duplicates"]} | {m["relogins"]} | |')
    w("")

    def codes(counts):
        """Error counts by code, or a dash."""
        return ", ".join(f"`{k}` {v:,}" for k, v in sorted(counts.items())) if counts else "–"

    r = S["rooms"]; p = r["params"]; b = r["broker"]
    w("### Many rooms")
    w("")
    w(f'{p["rooms"]:,} live rooms of {p["members"]} members (different users, on {r["joins"]["sockets"]:,} sockets: at most '
      f'{p["rooms_per_socket"]} rooms per socket and {p["sockets_per_user"]} sockets per user, the gateways\' defaults) and '
      f'{p["idle_rooms"]:,} idle rooms (each joined, sent to once and left first), through HAProxy on '
      f'{r["target"]["own_stack"]["gateways"]} gateways and {r["target"]["own_stack"]["bridges"]} bridge, on a private '
      f'RabbitMQ node; then one send into every live room at {p["send_rate"]:g}/s. A message is expected once acked. '
      f'Broker figures: descriptors from `/proc/PID/fd`, the rest from `rabbitmqctl`; read before, after the idle '
      f'rooms, and at the end with the live sockets still joined. Load average {loads(r)}.')
    w("")
    j, sd, d, i_ = r["joins"], r["sends"], r["deliveries"], r["idle"]
    w("| idle rooms acked | joins `joined` / asked | join errors | sends acked / rooms | send errors | rooms heard by every member | "
      "deliveries received / expected | missing | duplicates | send → delivery p50 / p99 (ms) | wall (s) |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    w(f'| {i_["acked"]:,} of {i_["rooms"]:,} | {j["joined"]:,} / {j["expected"]:,} | {codes(j["errors"])} | '
      f'{sd["acked"]:,} / {sd["rooms"]:,} | {codes(sd["errors"])} | {d["rooms_heard_by_every_member"]:,} | '
      f'{d["received"]:,} / {d["expected"]:,} | **{d["missing"]}** | {d["duplicates"]} | '
      f'{d["latency"]["p50_ms"]} / {d["latency"]["p99_ms"]} | {r["wall_s"]:.1f} |')
    w("")
    w("| broker | descriptors | channels | queues | memory (MiB) |")
    w("|---|---|---|---|---|")
    mib = lambda v: "–" if v is None else f"{v / 1048576:,.0f}"
    for label, reading in (("before", b["before"]), ("after the idle rooms", b.get("after_idle")), ("at the end", b["after"])):
        if reading:
            w(f'| {label} | {num(reading.get("fds"))} of {num(reading.get("fd_limit"))} | {num(reading.get("channels"))} | '
              f'{num(reading.get("queues"))} | {mib(reading.get("memory_bytes"))} |')
    unread = {k: v for reading in (b["before"], b["after"]) for k, v in reading.get("unreadable", {}).items()}
    if unread:
        w("")
        w("Not read: " + "; ".join(f"{k}: {v}" for k, v in sorted(unread.items())) + ".")
    w("")

    c = S["crowd"]; p = c["params"]; jn = c["joins"]; pr = c["presence"]; jf = c["joined_frames"]; dl = c["deliveries"]
    w("### Crowd")
    w("")
    w(f'{p["members"]:,} members join one room within {p["join_within_s"]:g} s through HAProxy on '
      f'{c["target"]["own_stack"]["gateways"]} gateways while {p["publishers"]} publishers (in the room first) send '
      f'{p["rate"]:g} msg/s for {p["duration_s"]:g} s, from the first member\'s `joined` on (publishing began '
      f'{jn["publishing_began_ms"]} ms after the first member was let go, the last member joined at '
      f'{jn["last_joined_ms"]} ms). A message is owed to a member when its ack came after the member\'s `joined`; '
      f'latency counts messages sent after the receiver\'s `joined`. Presence: old `presence` frames and batched '
      f'`presence_diff` frames both counted. Load average {loads(c)}.')
    w("")
    lat = c["latency"]; jl = jn["joined_latency"]
    w("| p50 | p90 | **p99** | max (ms) | missing | duplicates | presence frames per member, max / mean (total) | "
      "`joined` bytes per member, max / mean | join → `joined` p50 / p99 (ms) | CPU per process |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    frames = {k: pr["presence_frames"][k] + pr["presence_diff_frames"][k] for k in ("max", "mean", "total")}
    w(f'| {lat["p50_ms"]} | {lat["p90_ms"]} | **{lat["p99_ms"]}** | {lat["max_ms"]} | **{dl["missing"]}** | {dl["duplicates"]} | '
      f'{num(frames["max"])} / {frames["mean"]:,.1f} ({num(frames["total"])}) | {num(jf["bytes"]["max"])} / {jf["bytes"]["mean"]:,.0f} | '
      f'{jl["p50_ms"]} / {jl["p99_ms"]} | {cpu_cols(c["cpu"])} |')
    g = c.get("gateways") or {}
    if g:
        w("")
        w("The gateways' own counters over the run: " +
          ", ".join(f"`{k}` {v:,.0f}" for k, v in sorted(g.items()) if "heartbeat" not in k) + ".")

    section = "\n".join(L)
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if os.path.exists(out) and begin in open(out).read():
        text = open(out).read()
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        text = f"{head}{begin}\n{section}\n{end}{tail}"
    else:
        text = f"# Benchmarks\n\n{begin}\n{section}\n{end}\n"
    open(out, "w").write(text)


if __name__ == "__main__":
    cmd, rest = sys.argv[1:2], sys.argv[2:]
    if cmd == ["machine"] and len(rest) == 1:
        print(json.dumps(machine(rest[0])))
    elif cmd == ["render"] and len(rest) == 5:
        render(rest[0], rest[1], json.loads(rest[2]), rest[3], rest[4])
    else:
        sys.exit("usage: bench_report.py machine STARTED | render DIR OUT MACHINE_JSON ARGS PAIR_ONLY")
