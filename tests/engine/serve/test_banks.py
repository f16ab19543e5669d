"""BankStore in-process: readiness, group commits, ids, read views, another process's commits."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.index import VideoIndex
from engine.serve.banks import BankError, BankStore
from engine.serve.hashing import HashPool
from engine.serve.service import LocalService
from engine.synthetic import random_signatures


def started(path, **kw) -> BankStore:
    s = BankStore(path, device="cpu", **kw)
    s.start()
    assert s.ready.wait(60)
    return s


def test_not_ready_until_loaded(tmp_path):
    s = BankStore(tmp_path / "d", device="cpu")
    with pytest.raises(BankError) as e:
        s.check_ready()
    assert e.value.status == 503
    svc = LocalService(s, HashPool(lambda: None))
    assert asyncio.run(svc.ready()) == "INDEX-NOT-LOADED"       # GET /status answers 503
    s.start()
    assert s.ready.wait(60) and asyncio.run(svc.ready()) is None
    asyncio.run(svc.close())


def test_concurrent_adds_are_group_committed_with_unique_ids(tmp_path):
    s = started(tmp_path / "d")
    s.create_bank("G").result()
    sigs = random_signatures(40, seed=3)
    futs, lock = [], threading.Lock()

    def add(f):
        fut = s.add("G", [(f, None, None)])
        with lock:
            futs.append(fut)

    threads = [threading.Thread(target=add, args=(f,)) for f in sigs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = sorted(i for f in futs for i in f.result(60))
    assert ids == list(range(ids[0], ids[0] + 40))                # unique, none lost
    assert s.bank("G").size == 40
    segments = VideoIndex(tmp_path / "d" / "G" / "index").info()["segments"]
    assert segments < 40                                          # fewer commits than adds
    s.close()
    s2 = started(tmp_path / "d")                                  # ids continue after a restart
    assert s2.add("G", [(sigs[0], None, None)]).result(60)[0] > ids[-1]
    s2.close()


def test_commits_by_another_process_are_picked_up(tmp_path):
    s = started(tmp_path / "d", poll_s=0.05)
    s.create_bank("EXT").result()
    reader = started(tmp_path / "d", writable=False, poll_s=0.05)   # e.g. a Ray matcher replica
    f = random_signatures(1, seed=8)[0]
    ix = VideoIndex(tmp_path / "d" / "EXT" / "index", device="cpu")   # like `vmatch index add`
    ix.add([f], ids=["900000"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(st.banks.get("EXT") and st.bank("EXT").size == 1 for st in (s, reader)):
            break
        time.sleep(0.02)
    for st in (s, reader):
        got = st.lookup([f], ["EXT"])[0]
        assert [(b, m.id) for b, m in got] == [("EXT", "900000")]
    with pytest.raises(BankError) as e:
        reader.add("EXT", [(f, None, None)])
    assert e.value.status == 405
    s.close()
    reader.close()


def test_two_writable_stores_on_one_data_dir(tmp_path):
    """What `--workers 2` runs: ids unique across the processes, each sees the other's commits,
    bank creations and deletions."""
    a = started(tmp_path / "d", poll_s=0.05)
    b = started(tmp_path / "d", poll_s=0.05)
    a.create_bank("W").result(60)
    assert b.bank("W").size == 0                       # created elsewhere: found at once
    with pytest.raises(BankError) as e:
        b.create_bank("W").result(60)
    assert e.value.status == 403
    sigs = random_signatures(24, seed=5)
    futs = [(st.add("W", [(f, None, None)]), f) for k, f in enumerate(sigs) for st in [(a, b)[k % 2]]]
    ids = [fut.result(60)[0] for fut, _ in futs]
    assert len(set(ids)) == len(ids) == 24             # unique across the two stores
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (a.bank("W").size == b.bank("W").size == 24):
        time.sleep(0.02)
    for st in (a, b):                                  # every add visible in both read views
        assert st.bank("W").size == 24
        for (_, f), cid in zip(futs, ids):
            assert [m.id for _, m in st.lookup([f], ["W"])[0]] == [str(cid)]
    a.close()
    c = started(tmp_path / "d")                        # a restart continues above every id given
    assert c.add("W", [(sigs[0], None, None)]).result(60)[0] > max(ids)
    c.delete_bank("W").result(60)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "W" in b.banks:
        time.sleep(0.02)
    with pytest.raises(BankError) as e:
        b.bank("W")
    assert e.value.status == 404                       # deleted elsewhere: gone here too
    b.close()
    c.close()


def test_background_compaction_merges_the_small_segments(tmp_path):
    s = started(tmp_path / "d", compact_segments=4, poll_s=0.05)
    s.create_bank("C").result(60)
    sigs = random_signatures(12, seed=61)
    ids = [s.add("C", [(f, None, None)]).result(60)[0] for f in sigs]      # one commit each
    root = tmp_path / "d" / "C" / "index"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(VideoIndex(root, device="cpu").manifest.segments[0]) > 4:
        time.sleep(0.05)
    assert len(VideoIndex(root, device="cpu").manifest.segments[0]) <= 4 and s.compactions >= 1
    deadline = time.monotonic() + 5                   # the store's read view follows the merge
    while time.monotonic() < deadline and len(s.bank("C").view.manifest.segments[0]) > 4:
        time.sleep(0.05)
    assert len(s.bank("C").view.manifest.segments[0]) <= 4
    for f, cid in zip(sigs, ids):
        assert [m.id for _, m in s.lookup([f], ["C"])[0]] == [str(cid)]
    assert s.add("C", [(sigs[0], None, None)]).result(60)[0] > max(ids)
    VideoIndex(root, device="cpu").verify()
    s.close()
