#!/usr/bin/python3
"""Benchmark of moe::WeightResidency through the grok1 example (docs/performance.md, "Weights
larger than RAM").

    /usr/bin/python3 tools/bench_residency.py --grok1 build/release/examples/grok1 \\
        --checkpoint /work/tmp/full3 [--cgroup 5G] [--budget 4G] [--new-tokens 6] [--repeat 2]

For every configuration (cache policy x speculation) it drops the checkpoint's cached pages
(posix_fadvise DONTNEED), runs grok1 inside a cgroup v1 memory controller capped at --cgroup
(page cache included; root only, else unlimited with a note) and reports decode tokens/s, bytes
read from storage per decode token, the disk GB/s over the run, hit rates and peak RSS. In the
same run it measures the disk itself: an O_DIRECT sequential read (dd iflag=direct, 8 MiB
blocks) of the checkpoint's files, so that the ratio says how close the decoder gets to the
disk, and the same read by --direct-streams concurrent dd processes of --direct-block requests
(several large requests in flight, as the page cache's readahead and speculation's prefetch
issue them: on this host's virtio disk that reads faster than one 8 MiB stream). Medians over --repeat runs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def parse_bytes(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


def drop_cached_pages(directory):
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cgroup_dir(limit):
    try:
        with open("/proc/self/cgroup") as f:
            mine = next(l.split(":", 2)[2].strip() for l in f if ":memory:" in l)
        path = f"/sys/fs/cgroup/memory{mine}/moe_bench_{os.getpid()}"
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        return path
    except (OSError, StopIteration) as e:
        print(f"note: no cgroup v1 memory controller ({e}); the page cache is not limited")
        return None


def direct_read(directory, limit_bytes, streams=1, block="8M"):
    """GB/s of an O_DIRECT sequential read of the checkpoint's largest files (up to limit), by
    `streams` concurrent dd processes (file i read by stream i % streams) of `block`-sized
    requests: one stream has one request in flight; more streams and larger blocks keep the
    device busier, as the page cache's readahead and a prefetching reader do."""
    files = []
    for root, _, names in os.walk(directory):
        files += [os.path.join(root, n) for n in names if n.startswith("tensor")]
    files.sort(key=os.path.getsize, reverse=True)
    chosen, total = [], 0
    for path in files:
        if total >= limit_bytes:
            break
        chosen.append(path)
        total += os.path.getsize(path)
    t0 = time.time()
    procs = [subprocess.Popen(["sh", "-c", " && ".join(
        f"dd if={p} of=/dev/null bs={block} iflag=direct 2>/dev/null" for p in chosen[i::streams])])
        for i in range(min(streams, len(chosen)))]
    for p in procs:
        if p.wait() != 0:
            sys.exit("dd failed")
    return total / (time.time() - t0) / 1e9


def run_grok1(args, cg, extra):
    drop_cached_pages(args.checkpoint)

    def enter():
        if cg:
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    cmd = [args.grok1, "--checkpoint", args.checkpoint, "--tokens", "1,2,3,4",
           "--max-new-tokens", str(args.new_tokens), "--temperature", "0", "--json",
           "--prefill-chunk", "1", "--ram-budget", args.budget, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=enter, timeout=7200)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grok1", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cgroup", default="5G")
    ap.add_argument("--budget", default="4G")
    ap.add_argument("--new-tokens", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--direct-bytes", default="8G", help="bytes of the O_DIRECT reference read")
    ap.add_argument("--direct-streams", type=int, default=4,
                    help="concurrent dd streams of the second O_DIRECT reference (0: none)")
    ap.add_argument("--direct-block", default="64M", help="dd block size of the second reference")
    ap.add_argument("--configs", default="lru:on,lru:off,none:on,none:off,most-used:on",
                    help="cache policy:speculation pairs to run")
    ap.add_argument("--extra", default="", help="more grok1 options for every run")
    args = ap.parse_args()

    cg = cgroup_dir(parse_bytes(args.cgroup))
    configs = [(c.split(":")[0], c.split(":")[1] == "on") for c in args.configs.split(",")]
    rows = []
    try:
        for policy, spec in configs:
            extra = ["--cache-policy", policy] + (["--speculation"] if spec else [])
            extra += args.extra.split()
            runs, direct, direct_par = [], [], []
            for _ in range(args.repeat):
                drop_cached_pages(args.checkpoint)
                direct.append(direct_read(args.checkpoint, parse_bytes(args.direct_bytes)))
                if args.direct_streams > 0:
                    drop_cached_pages(args.checkpoint)
                    direct_par.append(direct_read(args.checkpoint, parse_bytes(args.direct_bytes),
                                                  args.direct_streams, args.direct_block))
                runs.append(run_grok1(args, cg, extra))
            med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
            res = runs[0]["residency"]
            row = dict(
                policy=policy, speculation=spec,
                decode_tps=med(lambda r: r["timings"]["decode_tokens_per_second"]),
                gb_per_token=med(lambda r: r["io"]["read_bytes_per_decode_token"]) / 1e9,
                disk=med(lambda r: r["io"]["disk_gb_per_second"]),
                direct=statistics.median(direct),
                direct_par=statistics.median(direct_par) if direct_par else 0.0,
                cache_hit=med(lambda r: r["residency"]["cache_hit_rate"]),
                spec_hit=med(lambda r: r["residency"]["speculation_hit_rate"]),
                rss=max(r["peak_rss_bytes"] for r in runs) / 2**30,
                capacity=res["cache_capacity_bytes"] / 1e9,
                attention_streamed=res["attention_streamed"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if cg:
            try:
                os.rmdir(cg)
            except OSError:
                pass
    print()
    print(f"| cache | speculation | decode tok/s | GB read / token | disk GB/s (run) | O_DIRECT "
          f"GB/s | ratio | O_DIRECT {args.direct_streams} x {args.direct_block} GB/s | ratio | cache hits | spec. hits "
          f"| peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        par = r["direct_par"]
        print(f"| {r['policy']} ({r['capacity']:.1f} GB) | {'on' if r['speculation'] else 'off'} "
              f"| {r['decode_tps']:.3f} | {r['gb_per_token']:.2f} | {r['disk']:.2f} | "
              f"{r['direct']:.2f} | {r['disk'] / r['direct']:.2f} | "
              f"{par:.2f} | {r['disk'] / par if par else 0:.2f} | {r['cache_hit']:.2f} | "
              f"{r['spec_hit']:.2f} | {r['rss']:.2f} |")


if __name__ == "__main__":
    main()
