#!/usr/bin/env python3
"""Issue-13 figures, each side by side with its baseline (whole-process figures are labelled
and never divided by in-process ones).

    python scripts/bench_scale.py read   --items 10000 --workdir /tmp/vmatch-scale
    python scripts/bench_scale.py add    --items 20000 --workdir /tmp/vmatch-scale --stores int8,fp16,fp32
    python scripts/bench_scale.py start  [--repeat 10]
    python scripts/bench_scale.py query  --items 20000 --workdir /tmp/vmatch-scale     # runs tmk-query (~100 s)
    python scripts/bench_scale.py hash   [--repeat 3] [--jobs N]                       # runs tmk-hash-video
    python scripts/bench_scale.py level2 [--pairs 4096]                                # runs tmk-two-level-score

read:   in-process files/s of `engine.tmkfile.read_batch` (warm cache, 2 workers) against the
        previous reader (read_tmk per file in 8 threads, then stacked) and against plain
        os.read of the same files; whole-process `vmatch score --c1 2 --needle N FILES`
        against `cat FILES` and the reference `tmk-query --c1 2 --level-1-only`.
add:    whole-process `vmatch index add` of N files (files/s, median and best of --repeat, each
        into a fresh index) for each of --stores, next to the disk's own fsynced write rate of
        random bytes (--disk-probe) and the files/s that rate allows for each store's bytes.
start:  whole-process start-up of `vmatch --help`, `info`, `compare`, `index info` (median
        of --repeat runs) next to `python -c pass` and `python -c "import torch"`.
query:  whole-process `vmatch query INDEX needle --c1 -1 --c2 -1` (median and best of --repeat,
        index of --store, built once or given by --index) against the reference
        `tmk-query --c1 -1 --c2 -1 needles.txt haystack.txt` over the same N files, run once.
hash:   one `vmatch hash` of the 14 sample videos against tmk-hash-video run once per video
        (one bash loop), and one short clip per command (whole process both; each repeat runs
        the reference then vmatch, medians, wall and CPU = user + system; at least 5 repeats
        for the short clip).
level2: one-thread in-process level-2 pairs/s from fp32, fp16 and int8 (candidates in memory, a
        bank of near copies and unrelated videos, c2 = 0.7 and c2 = 0) against the reference
        tmk-query measured on this machine (whole process, its level-2 time: total minus a
        level-1-only run).  At c2 = 0.7 also head first (`*_head_first`: block norms kept beside
        the rows, computed untimed as at ingest; engine/index/level2.py), with a check that it
        gives the same matches, scores and offsets.  `*_cpu_time_*`: the same per CPU second of
        each process (one thread both; less affected by other jobs' load than wall time).
Bank files: scripts/_bank.py (perturbed reference hashes, 0.2% near copies).  One JSON object
on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bank import REF, REPO, log, make_bank_files  # noqa: E402

VMATCH = [sys.executable, "-m", "engine.cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def oracle_tool(name: str) -> str:
    sys.path.insert(0, str(REPO))
    from tests.oracle import find_oracle
    o, why = find_oracle()
    if o is None:
        raise SystemExit(f"reference tools unavailable: {why}")
    return str(o.tool(name))


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, env=ENV, cwd=REPO, **kw)
    dt = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"{cmd[:4]}... failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return dt, r


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass


def bench_read(args) -> dict:
    sys.path.insert(0, str(REPO))
    import numpy as np
    from engine.features import FeatureBatch
    from engine.tmkfile import from_bytes, read_batch, read_tmk

    paths = make_bank_files(Path(args.workdir) / f"files-{args.items}", args.items)[:args.read or None]
    warm(paths)
    out: dict = {"files": len(paths)}

    def raw() -> None:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.read(fd, 263_345)
            finally:
                os.close(fd)

    def old() -> None:   # the reader before issue 13: read_tmk (read + from_bytes copies) in 8 threads
        def one(p):
            with open(p, "rb") as fh:
                return from_bytes(fh.read(), p)
        with ThreadPoolExecutor(8) as ex:
            FeatureBatch.stack(list(ex.map(one, paths)))

    def new() -> None:
        read_batch(paths)

    for name, fn in (("raw_os_read", raw), ("previous_reader", old), ("read_batch", new)):
        ts = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[f"{name}_files_per_s"] = round(len(paths) / min(ts), 1)
        log(f"{name}: {out[f'{name}_files_per_s']} files/s")
    out["read_batch_vs_previous"] = round(out["read_batch_files_per_s"] / out["previous_reader_files_per_s"], 2)
    # whole process: vmatch score without level-2, cat, reference tmk-query level-1 only
    needle = str(paths[0])
    files = [str(p) for p in paths]
    t0 = time.perf_counter()
    subprocess.run(["xargs", "cat"], input="\n".join(files).encode(), stdout=subprocess.DEVNULL, check=True)
    out["whole_process_cat_s"] = round(time.perf_counter() - t0, 2)
    t_vm, r = timed([*VMATCH, "score", "--c1", "2", "--needle", needle, *files])
    out["whole_process_vmatch_score_c1_2_s"] = round(t_vm, 2)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "n.txt").write_text(needle + "\n")
        (Path(d) / "h.txt").write_text("\n".join(files) + "\n")
        t_ref, _ = timed([oracle_tool("tmk-query"), "--c1", "2", "--level-1-only", f"{d}/n.txt", f"{d}/h.txt"])
    out["whole_process_reference_tmk_query_level1_only_s"] = round(t_ref, 2)
    out["vmatch_score_vs_reference"] = round(t_ref / t_vm, 2)
    return out


def disk_write_rate(folder: str, mib: int = 1024) -> float:
    """MB/s of writing `mib` MiB of incompressible bytes and fsyncing them (the ceiling of an add:
    zeros are written several times faster by this machine's virtual disk, so `dd if=/dev/zero`
    overstates it)."""
    import numpy as np
    block = np.random.default_rng(0).integers(0, 2 ** 63, size=(4 << 20) // 8, dtype=np.int64).view(np.uint8)
    path = Path(folder) / ".disk-probe"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(mib // 4):
            block[:8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)   # no two blocks alike
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return mib * (1 << 20) / (time.perf_counter() - t0) / 1e6


def bench_add(args) -> dict:
    paths = make_bank_files(Path(args.workdir) / f"files-{args.items}", args.items)
    warm(paths)
    out: dict = {"files": len(paths), "repeat": args.repeat}
    if args.disk_probe:
        out["disk_write_random_fsync_MB_s"] = round(disk_write_rate(args.workdir, args.disk_probe), 1)
        log(f"disk: {out['disk_write_random_fsync_MB_s']} MB/s (random bytes, fsynced)")
    for store in args.stores.split(","):
        ts, written = [], 0
        for _ in range(args.repeat):
            warm(paths)
            with tempfile.TemporaryDirectory(dir=args.workdir) as d:
                ix = f"{d}/ix"
                timed([*VMATCH, "index", "create", ix, "--store", store])
                dt, r = timed([*VMATCH, "index", "add", ix, *map(str, paths)])
                ts.append(dt)
                written = sum(f.stat().st_size for f in Path(ix).rglob("*") if f.is_file())
            log(f"add {store}: {dt:.2f} s, {len(paths) / dt:.0f} files/s")
        med = statistics.median(ts)
        out[f"whole_process_index_add_{store}_s"] = [round(t, 2) for t in ts]
        out[f"whole_process_index_add_{store}_files_per_s_median"] = round(len(paths) / med, 1)
        out[f"whole_process_index_add_{store}_files_per_s_best"] = round(len(paths) / min(ts), 1)
        out[f"index_{store}_bytes_per_file"] = round(written / len(paths))
        if args.disk_probe:   # what the disk alone allows for this store's bytes
            out[f"disk_bound_{store}_files_per_s"] = round(
                out["disk_write_random_fsync_MB_s"] * 1e6 / out[f"index_{store}_bytes_per_file"], 1)
    return out


def bench_start(args) -> dict:
    ref = REF / "tmk"
    a, b = str(ref / "doorknob-hd-no-bar.tmk"), str(ref / "chair-19-sd-bar.tmk")
    with tempfile.TemporaryDirectory() as d:
        timed([*VMATCH, "index", "create", f"{d}/ix"])
        timed([*VMATCH, "index", "add", f"{d}/ix", a, b])
        cmds = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "vmatch --help": [*VMATCH, "--help"],
            "vmatch info": [*VMATCH, "info", a],
            "vmatch compare": [*VMATCH, "compare", a, b],
            "vmatch index info": [*VMATCH, "index", "info", f"{d}/ix"],
        }
        out = {}
        for name, cmd in cmds.items():
            ts, cpu = [], []
            for _ in range(args.repeat):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                ts.append(timed(cmd)[0])
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            # wall time depends on the machine's load; CPU time (user + system) much less
            out[name] = {"median_s": round(statistics.median(ts), 3), "min_s": round(min(ts), 3),
                         "median_cpu_s": round(statistics.median(cpu), 3)}
            log(f"{name}: {out[name]}")
    return out


def bench_query(args) -> dict:
    paths = make_bank_files(Path(args.workdir) / f"files-{args.items}", args.items)
    ix = Path(args.index) if args.index else Path(args.workdir) / f"index-{args.items}-{args.store}"
    out: dict = {"items": len(paths), "store": args.store, "index": str(ix), "repeat": args.repeat}
    if not (ix / "DONE").exists():
        warm(paths)
        timed([*VMATCH, "index", "create", str(ix), "--store", args.store])
        dt, _ = timed([*VMATCH, "index", "add", str(ix), *map(str, paths)])
        out["whole_process_index_add_s"] = round(dt, 2)
        out["whole_process_index_add_files_per_s"] = round(len(paths) / dt, 1)
        log(f"index add: {dt:.1f} s")
        (ix / "DONE").write_text("")
    warm(paths)
    warm(sorted(p for p in ix.rglob("*") if p.is_file()))
    needle = str(paths[1])
    ts, cpu = [], []
    for _ in range(args.repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        dt, r = timed([*VMATCH, "query", str(ix), needle, "--c1", "-1", "--c2", "-1"])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ts.append(dt)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        log(f"vmatch query: {dt:.2f} s ({cpu[-1]:.2f} s CPU)")
    out["whole_process_vmatch_query_s"] = [round(t, 2) for t in ts]
    out["whole_process_vmatch_query_median_s"] = round(statistics.median(ts), 2)
    out["whole_process_vmatch_query_best_s"] = round(min(ts), 2)
    out["whole_process_vmatch_query_median_cpu_s"] = round(statistics.median(cpu), 2)
    out["vmatch_lines"] = len(r.stdout.splitlines())
    if args.no_reference:
        return out
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "n.txt").write_text(needle + "\n")
        (Path(d) / "h.txt").write_text("\n".join(map(str, paths)) + "\n")
        log("running the reference tmk-query (about 100 s)")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t_ref, rr = timed([oracle_tool("tmk-query"), "--c1", "-1", "--c2", "-1", f"{d}/n.txt", f"{d}/h.txt"])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["whole_process_reference_tmk_query_s"] = round(t_ref, 2)
    out["whole_process_reference_tmk_query_cpu_s"] = round(after.ru_utime - before.ru_utime
                                                           + after.ru_stime - before.ru_stime, 2)
    out["reference_lines"] = len(rr.stdout.splitlines())
    out["ratio_median"] = round(t_ref / out["whole_process_vmatch_query_median_s"], 1)
    out["ratio_best"] = round(t_ref / out["whole_process_vmatch_query_best_s"], 1)
    return out


def _run_timed(cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s = user + system of the process and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, env=ENV, cwd=REPO)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:4]}... failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return dt, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def _summary(walls: list[float], cpus: list[float]) -> dict:
    return {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
            "runs_s": [round(w, 3) for w in walls], "median_cpu_s": round(statistics.median(cpus), 3)}


def bench_hash(args) -> dict:
    """Whole process, both sides: each repeat runs the reference then vmatch, interleaved, so
    both see the same load; ratios are of the medians."""
    videos = sorted((REF / "videos").glob("*.mp4"))
    tool = oracle_tool("tmk-hash-video")
    ffmpeg = "/usr/bin/ffmpeg"
    out: dict = {"videos": len(videos), "repeat": args.repeat, "cores": os.cpu_count()}
    jobs = [] if not args.jobs else ["-j", str(args.jobs)]
    with tempfile.TemporaryDirectory() as d:
        ref_script = "\n".join(f"{tool} -f {ffmpeg} -i '{v}' -o '{d}/{v.stem}.ref.tmk' >/dev/null 2>&1 || exit 1"
                                for v in videos)
        ref_cmd = ["bash", "-c", ref_script]
        vm_cmd = [*VMATCH, "hash", *map(str, videos), "-d", f"{d}/vm", *jobs]
        rw, rc, vw, vc = [], [], [], []
        same = True
        for _ in range(args.repeat):
            w, c = _run_timed(ref_cmd)
            rw.append(w), rc.append(c)
            w, c = _run_timed(vm_cmd)
            vw.append(w), vc.append(c)
            same = same and all((Path(d) / "vm" / f"{v.stem}.tmk").read_bytes()
                                == (Path(d) / f"{v.stem}.ref.tmk").read_bytes() for v in videos)
            for v in videos:
                (Path(d) / "vm" / f"{v.stem}.tmk").unlink()
        out["many_videos"] = {"reference_once_per_video": _summary(rw, rc), "vmatch_one_command": _summary(vw, vc),
                              "vmatch_jobs": args.jobs or "default (one per core)",
                              "ratio_of_medians": round(statistics.median(rw) / statistics.median(vw), 2),
                              "byte_identical": same}
        log(f"many: {out['many_videos']}")
        short = min(videos, key=lambda v: v.stat().st_size)
        ref1 = [tool, "-f", ffmpeg, "-i", str(short), "-o", f"{d}/s.ref.tmk"]
        vm1 = [*VMATCH, "hash", str(short), "-o", f"{d}/s.tmk"]
        rw, rc, vw, vc = [], [], [], []
        for _ in range(max(args.repeat, 5)):
            w, c = _run_timed(ref1)
            rw.append(w), rc.append(c)
            w, c = _run_timed(vm1)
            vw.append(w), vc.append(c)
        out["one_short_clip"] = {"video": short.name, "reference": _summary(rw, rc), "vmatch": _summary(vw, vc),
                                 "ratio_of_medians": round(statistics.median(rw) / statistics.median(vw), 2),
                                 "byte_identical": Path(f"{d}/s.tmk").read_bytes() == Path(f"{d}/s.ref.tmk").read_bytes()}
        log(f"short: {out['one_short_clip']}")
    return out


def bench_level2(args) -> dict:
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch
    from engine.index import int8
    from engine.index.level2 import PairScorer
    from engine.synthetic import mixed_strengths, perturbed_features
    from engine.tmkfile import iter_tmk_paths, read_many
    from kernels.score_np import block_norms

    torch.set_num_threads(1)
    bases = [f for f in read_many(iter_tmk_paths([REF / "tmk"])) if f.name != "test-padded-dimensions"]
    n = args.pairs
    feats = perturbed_features(bases, n, mixed_strengths(n, args.near_fraction, seed=1), seed=1)
    rows = np.stack([np.stack([f.cos, f.sin]) for f in feats])
    needle = bases[0]
    scorer = PairScorer(needle.params, torch.device("cpu"))
    n_cos, n_sin = needle.cos[None], needle.sin[None]
    out: dict = {"pairs": n, "near_fraction": args.near_fraction, "torch_threads": 1}
    stores = {"fp32": rows, "fp16": rows.astype(np.float16), "int8": int8.quantize(rows)}
    # block norms as kept beside the rows (computed once at ingest, not timed): head-first reads
    shape = rows.shape[1:]
    norms = {"fp32": block_norms(rows), "fp16": block_norms(stores["fp16"]),
             "int8": int8.block_norms(stores["int8"], shape)}
    results: dict = {}
    for c2 in (0.7, 0.0):
        for name, data in stores.items():
            for head_first in ((False, True) if c2 > 0 else (False,)):
                nrm = norms[name] if head_first else None

                def once() -> tuple[float, float]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    for s in range(0, n, 512):
                        part = data[s:s + 512]
                        k = len(part)
                        nb = None if nrm is None else nrm[s:s + 512]
                        # rows as the index reads them (numpy, scored where they lie: kernels/score_np.py)
                        r = scorer.score(n_cos, n_sin, np.zeros(k, np.int64), np.arange(k), part, c2, nb)
                        results[(c2, name, head_first, s)] = r
                    return time.perf_counter() - t0, time.process_time() - c0
                once()
                runs = [once() for _ in range(args.repeat)]
                best, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
                key = f"{name}_c2_{c2}" + ("_head_first" if head_first else "")
                out[f"{key}_pairs_per_s"] = round(n / best, 1)
                # CPU time of this (one-thread) process: less affected by other jobs' load
                out[f"{key}_cpu_time_pairs_per_cpu_s"] = round(n / max(cpu, 1e-9), 1)
                log(f"{key}: {n / best:.0f} pairs/s ({n / max(cpu, 1e-9):.0f} per CPU second)")
            if c2 > 0:   # head-first changes no answer: same matches, same scores and offsets
                same = True
                for s in range(0, n, 512):
                    (a, oa), (b, ob) = results[(c2, name, False, s)], results[(c2, name, True, s)]
                    ma, mb = a >= c2, b >= c2
                    same &= bool(np.array_equal(ma, mb) and np.array_equal(a[ma], b[mb])
                                 and np.array_equal(oa[ma], ob[mb]))
                out[f"{name}_c2_{c2}_head_first_same_answers"] = same
                out[f"{name}_c2_{c2}_matches"] = int(sum((results[(c2, name, True, s)][0] >= c2).sum()
                                                         for s in range(0, n, 512)))
    # the reference, whole process: tmk-two-level-score of one needle file against K files
    with tempfile.TemporaryDirectory() as d:
        from engine.tmkfile import write_tmk
        k = args.ref_pairs
        files = []
        for i, f in enumerate(feats[:k]):
            p = Path(d) / f"c{i:05d}.tmk"
            write_tmk(p, f)
            files.append(str(p))
        needle_path = str(REF / "tmk" / f"{needle.name}.tmk")
        (Path(d) / "n.txt").write_text(needle_path + "\n")
        (Path(d) / "h.txt").write_text("\n".join(files) + "\n")
        def cpu() -> float:
            r = resource.getrusage(resource.RUSAGE_CHILDREN)
            return r.ru_utime + r.ru_stime
        c0 = cpu()
        t_ref, rr = timed([oracle_tool("tmk-query"), "--c1", "-1", "--c2", "-1", f"{d}/n.txt", f"{d}/h.txt"])
        c1 = cpu()
        t_load, _ = timed([oracle_tool("tmk-query"), "--c1", "2", "--level-1-only", f"{d}/n.txt", f"{d}/h.txt"])
        c2_ = cpu()
    ref = k / max(t_ref - t_load, 1e-9)
    ref_cpu = k / max((c1 - c0) - (c2_ - c1), 1e-9)
    out["reference_cpu_time_pairs_per_cpu_s"] = round(ref_cpu, 1)
    out["reference_tmk_query_pairs"] = k
    out["reference_tmk_query_s"] = round(t_ref, 2)
    out["reference_tmk_query_load_only_s"] = round(t_load, 2)
    out["reference_pairs_per_s"] = round(ref, 1)
    for key in [k_ for k_ in out if k_.endswith("_pairs_per_s") and not k_.startswith("reference")]:
        out[key.replace("_pairs_per_s", "_vs_reference")] = round(out[key] / ref, 1)
    for key in [k_ for k_ in out if k_.endswith("_pairs_per_cpu_s") and not k_.startswith("reference")]:
        out[key.replace("_pairs_per_cpu_s", "_vs_reference_cpu_time")] = round(out[key] / ref_cpu, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["read", "add", "start", "query", "hash", "level2"])
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--workdir", default="/tmp/vmatch-scale")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--store", default="fp32")
    ap.add_argument("--stores", default="fp32,int8")
    ap.add_argument("--pairs", type=int, default=4096)
    ap.add_argument("--near-fraction", type=float, default=0.05)
    ap.add_argument("--ref-pairs", type=int, default=400)
    ap.add_argument("--read", type=int, default=0, help="read: only the first N files of the bank")
    ap.add_argument("--index", help="query: an existing index of the bank (with a DONE file), used read-only")
    ap.add_argument("--no-reference", action="store_true", help="query: vmatch only (no ratio)")
    ap.add_argument("--disk-probe", type=int, default=1024, metavar="MIB",
                    help="add: first write MIB MiB of random bytes with fsync (0: skip)")
    ap.add_argument("--jobs", type=int, default=0, help="hash: vmatch hash -j N (default: its own, one per core)")
    args = ap.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    out = {"what": args.what, "load_avg_start": os.getloadavg()}
    out.update(globals()[f"bench_{args.what}"](args))
    out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
