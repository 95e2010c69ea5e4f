#!/usr/bin/env bash
# Read-path benchmark against a loopback S3 server. Every figure is a ratio to a baseline measured
# in the same run (the machine is shared and noisy): direct parallel ranged GETs from the same
# server for cold reads, the same bytes on local disk for warm reads and listings.
#
#   scripts/bench.sh [--json]
#
# Needs root, /dev/fuse, python3, and a fast S3 server binary: $S3_SERVER_BIN (s3s-fs compatible
# flags: --host --port --access-key --secret-key ROOT), or the patched s3s-fs that
# ../shared/s3-bed/install.sh builds when that folder is present. Sizes: BENCH_BIG_MIB (2048),
# BENCH_SMALL_COUNT (10000), BENCH_LS_COUNT (100000), BENCH_SYNC_MIB (1024), BENCH_SYNC_COUNT (1000);
# BENCH_MULTI_MIB (256, per mount), BENCH_DATASET_COUNT (100000), BENCH_PACKED_COUNT (100000),
# BENCH_PUSH_MIB (1024), BENCH_PUSH_COUNT (10000), BENCH_PATCH_MIB (2048); BENCH_PARTS picks
# workloads (default "read small ls sync packed multi dataset push patch opens"; "huge" adds generated versions of BENCH_HUGE_COUNTS
# files, default "1000000 10000000").
set -euo pipefail
cd "$(dirname "$0")/.."
json=0; [[ ${1:-} == --json ]] && json=1
say() { ((json)) || echo "$@" >&2; }

BIG_MIB=${BENCH_BIG_MIB:-2048}
SMALL_COUNT=${BENCH_SMALL_COUNT:-10000}
LS_COUNT=${BENCH_LS_COUNT:-100000}
SYNC_MIB=${BENCH_SYNC_MIB:-1024}
SYNC_COUNT=${BENCH_SYNC_COUNT:-1000}
MULTI_MIB=${BENCH_MULTI_MIB:-256}
DATASET_COUNT=${BENCH_DATASET_COUNT:-100000}
PACKED_COUNT=${BENCH_PACKED_COUNT:-100000}
PUSH_MIB=${BENCH_PUSH_MIB:-1024}
PUSH_COUNT=${BENCH_PUSH_COUNT:-10000}
PATCH_MIB=${BENCH_PATCH_MIB:-2048}
HUGE_COUNTS=${BENCH_HUGE_COUNTS:-1000000 10000000}
PARTS=" ${BENCH_PARTS:-read small ls sync packed multi dataset push patch opens} "  # which workloads to run
want() { [[ $PARTS == *" $1 "* ]]; }

server=${S3_SERVER_BIN:-}
if [[ -z $server && -x ../shared/s3-bed/install.sh ]]; then
    say "building the loopback S3 server (../shared/s3-bed) if needed"
    server=$(../shared/s3-bed/install.sh 2>/dev/null)
fi
[[ -x ${server:-} ]] || { echo "bench: no S3 server: set S3_SERVER_BIN" >&2; exit 2; }

say "building datumfs (release)"
cargo build --release -q --bin datumfs --example s3bench
bin=$PWD/target/release/datumfs
s3bench=$PWD/target/release/examples/s3bench

T=$(mktemp -d /var/tmp/datumfs-bench.XXXXXX)
export DATUMFS_HOME=$T/home AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
server_pid=""; mounts=()
cleanup() {
    for m in "${mounts[@]}"; do "$bin" unmount --force "$m" >/dev/null 2>&1 || true; done
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/s3/bench" "$T/src" "$DATUMFS_HOME"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$server" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$T/s3" >"$T/s3.log" 2>&1 &
server_pid=$!
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.4f}')"; }
rss_of() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
peak=0
mount_at() {  # mount_at NAME CACHE ARGS... -> mounts at $T/mnt-NAME, sets MNT and PID
    MNT=$T/mnt-$1; local cache=$2; shift 2
    mkdir -p "$MNT"; mounts+=("$MNT")
    "$bin" mount "$MNT" --cache-dir "$cache" "$@"
    PID=$("$bin" status "$MNT" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
}
unmount_it() {
    local r; r=$(rss_of "$PID"); ((r > peak)) && peak=$r
    "$bin" unmount "$MNT"
}
results=()
record() { results+=("$1 $2 $3"); say "$(printf '%-34s %8.3f s  baseline %8.3f s  ratio %.2f' "$1" "$2" "$3" "$(python3 -c "print($3/$2 if $2 > 0 else 0)")")"; }

if want read; then
# 1. One big object: cold sequential read vs direct parallel ranged GETs; warm vs local disk.
say "making a ${BIG_MIB} MiB object"
head -c $((BIG_MIB << 20)) /dev/urandom >"$T/src/big.bin"
"$s3bench" put-file "$T/src/big.bin" s3://bench/big/big.bin >/dev/null
sync  # the test data just written must not count against the cache's own writes
direct=$("$s3bench" get s3://bench/big/big.bin 8 8388608 | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
mount_at big "$T/cache-big" --input big=s3://bench/big/
t0=$(now); cat "$MNT/inputs/big/big.bin" >/dev/null; t1=$(now)
cold=$(secs "$t0" "$t1")
record "cold sequential ${BIG_MIB} MiB" "$cold" "$direct"
# A second baseline for the same read: the same GETs written into a new local file (a plain
# download, as `aws s3 cp` does). A cache that keeps the bytes pays for the memory they land in;
# on VMs whose hypervisor backs guest memory only when first touched, that dominates.
download=$("$s3bench" get s3://bench/big/big.bin 8 8388608 "$T/download.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
rm -f "$T/download.bin"
record "  same, vs GETs into a local file" "$cold" "$download"
t0=$(now); cat "$MNT/inputs/big/big.bin" >/dev/null; t1=$(now)
l0=$(now); cat "$T/src/big.bin" >/dev/null; l1=$(now)
record "hot sequential (same mount)" "$(secs "$t0" "$t1")" "$(secs "$l0" "$l1")"
unmount_it
mount_at big "$T/cache-big" --input big=s3://bench/big/
t0=$(now); cat "$MNT/inputs/big/big.bin" >/dev/null; t1=$(now)
l0=$(now); cat "$T/src/big.bin" >/dev/null; l1=$(now)
record "warm sequential (remount)" "$(secs "$t0" "$t1")" "$(secs "$l0" "$l1")"
randread() {
    python3 - "$1" <<'PY'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size; r = random.Random(1)
offs = [r.randrange(0, size // 4096) * 4096 for _ in range(20000)]
t = time.time()
for o in offs: os.pread(fd, 4096, o)
print(f"{time.time() - t:.4f}")
PY
}
record "random 4 KiB reads, warm (20k)" "$(randread "$MNT/inputs/big/big.bin")" "$(randread "$T/src/big.bin")"
unmount_it
# The cold read again on a fresh cache, with as much guest memory as the object touched just
# before (a file written and deleted): on VMs that back guest memory only when first touched and
# take freed memory back (free page reporting), that first touch, not datumfs, dominates the
# cold figure above; this row shows the read path without it.
mount_at big2 "$T/cache-big2" --input big=s3://bench/big/
direct=$("$s3bench" get s3://bench/big/big.bin 8 8388608 | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
dd if=/dev/zero of="$T/ballast" bs=1M count=$((BIG_MIB + 512)) status=none; rm -f "$T/ballast"
t0=$(now); cat "$MNT/inputs/big/big.bin" >/dev/null; t1=$(now)
record "  same, guest memory touched first" "$(secs "$t0" "$t1")" "$direct"
unmount_it
rm -rf "$T/cache-big2"

fi

if want small; then
# 2. Many small files: 100 KiB each, cold. 8 and 16 readers vs direct GETs with as many in
#    flight; 1 reader walking in listing order vs a plain download with 16 GETs in flight (a
#    walk should get the files after the one it reads fetched ahead).
say "uploading $SMALL_COUNT x 100 KiB objects"
"$s3bench" put-many "$SMALL_COUNT" 102400 s3://bench/small/ >/dev/null
sync
for readers in 1 8 16; do
    inflight=$readers; ((readers == 1)) && inflight=16
    direct=$("$s3bench" get-many s3://bench/small/ "$inflight" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
    mount_at "small$readers" "$T/cache-small$readers" --input small=s3://bench/small/
    t0=$(now); (cd "$MNT/inputs/small" && find . -type f -print0 | xargs -0 -P "$readers" -n 64 cat >/dev/null); t1=$(now)
    record "small files cold, $readers reader(s) vs $inflight GETs" "$(secs "$t0" "$t1")" "$direct"
    if ((readers == 1)); then
        # The same walk vs a plain download: the 16 GETs each written into a new local file.
        download=$("$s3bench" get-many s3://bench/small/ 16 "$T/download" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
        rm -rf "$T/download"
        record "  same, vs a download into files" "$(secs "$t0" "$t1")" "$download"
    fi
    unmount_it
done
# A shuffled loader (files in a random order, each worker opening one at a time): nothing to
# fetch ahead, so it scales only with its readers. 16 readers vs 16 GETs in flight.
direct=$("$s3bench" get-many s3://bench/small/ 16 | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
mount_at small-shuffled "$T/cache-small-shuffled" --input small=s3://bench/small/
(cd "$MNT/inputs/small" && find . -type f) | python3 -c 'import random,sys; f=sys.stdin.read().split(); random.Random(7).shuffle(f); sys.stdout.write("\0".join(f))' >"$T/shuffled"
t0=$(now)
(cd "$MNT/inputs/small" && python3 - "$T/shuffled" 16 <<'PY'
import sys, threading
files, lock = iter(open(sys.argv[1]).read().split("\0")), threading.Lock()
def worker():
    while True:
        with lock:
            name = next(files, None)
        if name is None:
            return
        with open(name, "rb") as f:
            while f.read(1 << 20):
                pass
workers = [threading.Thread(target=worker) for _ in range(int(sys.argv[2]))]
for w in workers:
    w.start()
for w in workers:
    w.join()
PY
)
t1=$(now)
record "small files cold, shuffled, 16 readers" "$(secs "$t0" "$t1")" "$direct"
unmount_it

fi

if want ls; then
# 3. ls -lR of many objects (made on the server's disk directly), cold and warm, vs local ls -lR.
say "making $LS_COUNT objects for ls -lR"
python3 - "$T/s3/bench/tree" "$LS_COUNT" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 100:03d}", f"e{i % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}.txt"), "w") as f: f.write("x")
PY
sync
l0=$(now); ls -lR "$T/s3/bench/tree" >/dev/null; l1=$(now); local_ls=$(secs "$l0" "$l1")
mount_at tree "$T/cache-tree" --input tree=s3://bench/tree/
t0=$(now); ls -lR "$MNT/inputs/tree" >/dev/null; t1=$(now)
record "ls -lR $LS_COUNT objects, cold" "$(secs "$t0" "$t1")" "$local_ls"
t0=$(now); ls -lR "$MNT/inputs/tree" >/dev/null; t1=$(now)
record "ls -lR $LS_COUNT objects, warm" "$(secs "$t0" "$t1")" "$local_ls"
unmount_it

fi

if want sync; then
# 4. Write-then-sync: a big file and many small ones written into outputs, then `datumfs sync`
#    until all are datums in the store, vs uploading the same files directly.
say "making ${SYNC_MIB} MiB + $SYNC_COUNT x 100 KiB output files"
mkdir -p "$T/out/small"
head -c $((SYNC_MIB << 20)) /dev/urandom >"$T/out/model.bin"
python3 - "$T/out/small" "$SYNC_COUNT" <<'PY'
import os, sys
for i in range(int(sys.argv[2])):
    with open(os.path.join(sys.argv[1], f"s{i:05d}.bin"), "wb") as f: f.write(os.urandom(102400))
PY
sync
direct=$("$s3bench" put-dir "$T/out" s3://bench/direct/ | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
mount_at sync "$T/cache-sync" --input model=s3://bench/direct/model.bin --store s3://bench/store
t0=$(now)
cp -r "$T/out/." "$MNT/outputs/"
"$bin" sync "$MNT" --json >"$T/sync.json"
t1=$(now)
record "write + sync ${SYNC_MIB} MiB + $SYNC_COUNT files" "$(secs "$t0" "$t1")" "$direct"
unmount_it

fi

if want packed; then
# 5b. Many small outputs: PACKED_COUNT x 10 KiB written into outputs and synced (packed into tars),
#    vs a tar of the same files and one PUT; then read back cold as the dataset:// version the
#    sync published, 8 readers, vs GETs of that tar into a local file and extracting it.
say "making $PACKED_COUNT x 10 KiB output files"
mkdir -p "$T/pk/files" "$T/pk/x" "$T/pk/local"
python3 - "$T/pk/files" "$PACKED_COUNT" <<'PY'
import json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
with open(os.path.join(root, "valohai.metadata.jsonl"), "w") as meta:
    for i in range(n):
        rel = f"shard-{i // 1000:03d}/item-{i:06d}.bin"
        if i % 1000 == 0: os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f: f.write(os.urandom(10240))
        meta.write(json.dumps({"file": rel, "metadata": {"valohai.dataset-versions": ["dataset://packed/v1"]}}) + "\n")
PY
sync
t0=$(now)
tar -cf "$T/pk/all.tar" -C "$T/pk/files" --exclude valohai.metadata.jsonl .
"$s3bench" put-file "$T/pk/all.tar" s3://bench/pk/all.tar >/dev/null
t1=$(now)
tar_put=$(secs "$t0" "$t1")
mount_at packed "$T/cache-packed" --store s3://bench/pkstore
t0=$(now)
cp -r "$T/pk/files/." "$MNT/outputs/"
t1=$(now)
"$bin" sync "$MNT" --json >"$T/pk/sync.json"
t2=$(now)
# The same copy into a local directory: creating that many files on this disk is part of both.
l0=$(now); cp -r "$T/pk/files/." "$T/pk/local/"; l1=$(now)
record "write + sync $PACKED_COUNT x 10 KiB" "$(secs "$t0" "$t2")" "$tar_put"
record "  the write, vs cp to a local dir" "$(secs "$t0" "$t1")" "$(secs "$l0" "$l1")"
record "  the sync, vs tar + one PUT" "$(secs "$t1" "$t2")" "$tar_put"
sync_rss=$(rss_of "$PID")
unmount_it
rm -rf "$T/pk/local"
rm -f "$T/pk/all.tar"; sync
t0=$(now)
"$s3bench" get s3://bench/pk/all.tar 8 8388608 "$T/pk/got.tar" >/dev/null
tar -xf "$T/pk/got.tar" -C "$T/pk/x"
t1=$(now)
untar=$(secs "$t0" "$t1")
mount_at packedread "$T/cache-packedread" --store s3://bench/pkstore --input d=dataset://packed/v1
t0=$(now)
find "$MNT/inputs/d" -type f -print0 | xargs -0 -P8 -n 2000 cat >/dev/null
t1=$(now)
record "read back $PACKED_COUNT packed, 8 readers" "$(secs "$t0" "$t1")" "$untar"
say "$(printf '%-34s %8d MiB writing + syncing, %d MiB reading back' "  peak daemon RSS" $((sync_rss / 1024)) $(($(rss_of "$PID") / 1024)))"
unmount_it
rm -rf "$T/pk"

fi

if want multi; then
# 5. One daemon, several mounts: four mounts on one cache dir each read their own object at
#    once, vs one mount reading one; peak RSS of the one daemon for each, and the time of the
#    four reads vs direct GETs of the four objects (4 readers).
say "uploading 4 x ${MULTI_MIB} MiB objects"
for i in 0 1 2 3; do
    head -c $((MULTI_MIB << 20)) /dev/urandom >"$T/src/m$i.bin"
    "$s3bench" put-file "$T/src/m$i.bin" "s3://bench/multi/m$i.bin" >/dev/null
    rm -f "$T/src/m$i.bin"
done
sync
mount_at one "$T/cache-one" --input m=s3://bench/multi/m0.bin
cat "$MNT/inputs/m/m0.bin" >/dev/null
one_rss=$(rss_of "$PID"); unmount_it
direct=$("$s3bench" get-many s3://bench/multi/ 4 | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
pts=()
for i in 0 1 2 3; do mount_at "multi$i" "$T/cache-multi" --input "m=s3://bench/multi/m$i.bin"; pts+=("$MNT"); done
daemons=$(for m in "${pts[@]}"; do "$bin" status "$m" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; done | sort -u | wc -l)
t0=$(now)
readers=()
for i in 0 1 2 3; do cat "${pts[$i]}/inputs/m/m$i.bin" >/dev/null & readers+=($!); done
wait "${readers[@]}"
t1=$(now)
record "4 mounts x ${MULTI_MIB} MiB cold, 1 daemon" "$(secs "$t0" "$t1")" "$direct"
four_rss=$(rss_of "$PID")
for m in "${pts[@]}"; do MNT=$m; unmount_it; done
say "$(printf '%-34s %8d MiB with 1 mount, %d MiB with 4 mounts (%d daemon process)' "peak RSS, one daemon" $((one_rss / 1024)) $((four_rss / 1024)) "$daemons")"

fi

if want dataset; then
# 6. A dataset version of many files: resolution (mount) time vs reading its manifest with
#    python, and ls -lR through the mount vs ls -lR of the same tree on local disk.
say "making a $DATASET_COUNT-file dataset version"
for i in 0 1 2 3; do head -c $((1000 + i)) /dev/urandom >"$T/src/p$i"; done
ids=$("$bin" push "$T/src/p0" "$T/src/p1" "$T/src/p2" "$T/src/p3" --json | python3 -c 'import json,sys; print(" ".join(d["datum"] for d in json.load(sys.stdin)["datums"]))')
"$bin" dataset create bench >/dev/null
python3 - "$DATUMFS_HOME/store" "$DATASET_COUNT" "$T/dstree" $ids <<'PY'
import json, os, sys
store, n, tree, ids = sys.argv[1], int(sys.argv[2]), sys.argv[3], [i.removeprefix("datum://") for i in sys.argv[4:]]
recs = [json.load(open(f"{store}/.datumfs/datums/{i}.json")) for i in ids]
files = []
for i in range(n):
    r = recs[i % 4]; path = f"shard-{i // 1000:04d}/item-{i:07d}.bin"
    files.append({"path": path, "datum": r["id"], "size": r["size"], "checksums": r["checksums"], "object_uri": r["object_uri"]})
    os.makedirs(os.path.join(tree, os.path.dirname(path)), exist_ok=True)
    open(os.path.join(tree, path), "wb").close()
d = f"{store}/.datumfs/datasets/bench/versions"; os.makedirs(d, exist_ok=True)
json.dump({"dataset": "bench", "version": "v1", "created_at": "2026-11-01T00:00:00Z", "host": "bench", "files": files}, open(f"{d}/v1.json", "w"))
PY
sync
manifest="$DATUMFS_HOME/store/.datumfs/datasets/bench/versions/v1.json"
l0=$(now); python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$manifest"; l1=$(now)
json_load=$(secs "$l0" "$l1")
t0=$(now); mount_at dataset "$T/cache-dataset" --input "d=dataset://bench/v1"; t1=$(now)
record "resolve+mount $DATASET_COUNT-file version" "$(secs "$t0" "$t1")" "$(secs "$l0" "$l1")"
l0=$(now); ls -lR "$T/dstree" >/dev/null; l1=$(now); local_ls=$(secs "$l0" "$l1")
t0=$(now); ls -lR "$MNT/inputs/d" >/dev/null; t1=$(now)
record "ls -lR $DATASET_COUNT-file version" "$(secs "$t0" "$t1")" "$local_ls"
say "$(printf '%-34s %8d MiB' "  daemon RSS after it" $(( $(rss_of "$PID") / 1024 )))"
unmount_it
# The same files as a chunked manifest (v1 above is in the one-record format of older
# versions): made with --from, then mounted; the baseline is still reading the JSON record.
t0=$(now); "$bin" dataset version create bench/v2 --from bench/v1 >/dev/null; t1=$(now)
record "version create --from, $DATASET_COUNT files" "$(secs "$t0" "$t1")" "$json_load"
chunks=$(du -sk "$DATUMFS_HOME/store/.datumfs/datasets/bench/chunks" | cut -f1)
say "$(printf '%-34s %8d KiB (one JSON record: %d KiB)' "chunked manifest" "$chunks" $(( $(stat -c %s "$manifest") / 1024 )))"
t0=$(now); mount_at dataset2 "$T/cache-dataset2" --input "d=dataset://bench/v2"; t1=$(now)
record "resolve+mount, chunked manifest" "$(secs "$t0" "$t1")" "$json_load"
t0=$(now); ls -lR "$MNT/inputs/d" >/dev/null; t1=$(now)
record "ls -lR, chunked manifest" "$(secs "$t0" "$t1")" "$local_ls"
say "$(printf '%-34s %8d MiB' "  daemon RSS after it" $(( $(rss_of "$PID") / 1024 )))"
unmount_it

fi

# 6b. Generated versions of millions of files (chunked manifests written directly): resolve +
#     mount vs mounting a one-file input, ls -lR vs the same tree on local disk (made for the
#     smallest count only; listed warm, and with its dentries and inodes dropped), a second
#     ls -lR, reading 10,000 of its files, and the daemon's peak RSS over it all.
if want huge; then
cargo build --release -q --example make_version
make_version=$PWD/target/release/examples/make_version
for i in 0 1 2 3; do head -c $((10000 + i)) /dev/urandom >"$T/src/h$i"; done
hids=$("$bin" push "$T/src/h0" "$T/src/h1" "$T/src/h2" "$T/src/h3" --json | python3 -c 'import json,sys; print(" ".join(d["datum"] for d in json.load(sys.stdin)["datums"]))')
"$bin" dataset create huge >/dev/null
mount_at one "$T/cache-one" --input "one=$T/src/h0"; unmount_it
t0=$(now); mount_at one "$T/cache-one" --input "one=$T/src/h0"; t1=$(now); one_mount=$(secs "$t0" "$t1"); unmount_it
first=1
for n in $HUGE_COUNTS; do
    say "making a generated $n-file dataset version"
    "$make_version" "$DATUMFS_HOME/store" huge "v$n" "$n" $hids >/dev/null
    if ((first)); then
        python3 - "$T/hugetree" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for s in range((n + 999) // 1000):
    d = os.path.join(root, f"shard-{s:04d}"); os.makedirs(d)
    for i in range(s * 1000, min(n, s * 1000 + 1000)):
        open(os.path.join(d, f"item-{i:08d}.bin"), "wb").close()
PY
        sync
        l0=$(now); ls -lR "$T/hugetree" >/dev/null; l1=$(now); huge_local_ls=$(secs "$l0" "$l1"); huge_local_n=$n
        # The tree just made has every dentry and inode in memory; a fresh mount has none. The
        # same listing with those dropped first (slab only: the page cache stays) is the local
        # counterpart of a first listing; the warm one, of a second.
        echo 2 >/proc/sys/vm/drop_caches
        l0=$(now); ls -lR "$T/hugetree" >/dev/null; l1=$(now); huge_local_cold=$(secs "$l0" "$l1")
    fi
    scaled() { python3 -c "print($1 * $n / $huge_local_n)"; }
    t0=$(now); mount_at "huge$n" "$T/cache-huge$n" --input "d=dataset://huge/v$n"; t1=$(now)
    record "resolve+mount $n-file version" "$(secs "$t0" "$t1")" "$one_mount"
    label="ls -lR $n-file version"; ((first)) || label="$label (x$huge_local_n)"
    t0=$(now); ls -lR "$MNT/inputs/d" >/dev/null; t1=$(now)
    record "$label" "$(secs "$t0" "$t1")" "$(scaled "$huge_local_ls")"
    record "  the same, vs local, dentries dropped" "$(secs "$t0" "$t1")" "$(scaled "$huge_local_cold")"
    t0=$(now); ls -lR "$MNT/inputs/d" >/dev/null; t1=$(now)
    record "  a second ls -lR, vs local warm" "$(secs "$t0" "$t1")" "$(scaled "$huge_local_ls")"
    t0=$(now); find "$MNT/inputs/d" -path '*/shard-000[0-9]/*' -type f | xargs -P 8 -n 100 cat >/dev/null; t1=$(now)
    say "$(printf '%-34s %8.3f s' "  read 10,000 of its files" "$(secs "$t0" "$t1")")"
    say "$(printf '%-34s %8d MiB (limit %s)' "  daemon peak RSS" $(( $(rss_of "$PID") / 1024 )) "$( ((n > 1000000)) && echo 1024 || echo 256) MiB")"
    unmount_it
    first=0
done
rm -rf "$T/hugetree"
fi

# 6c. Hydrating a volume without a job: `datumfs volume push` of PUSH_MIB + PUSH_COUNT x 10 KiB
#    vs a plain parallel upload of the same tree; then the same push again (nothing changed).
if want push; then
say "making ${PUSH_MIB} MiB + $PUSH_COUNT x 10 KiB files to push"
mkdir -p "$T/push/small"
head -c $((PUSH_MIB << 20)) /dev/urandom >"$T/push/big.bin"
python3 - "$T/push/small" "$PUSH_COUNT" <<'PY'
import os, sys
for i in range(int(sys.argv[2])):
    with open(os.path.join(sys.argv[1], f"s{i:05d}.bin"), "wb") as f: f.write(os.urandom(10240))
PY
sync
direct=$("$s3bench" put-dir "$T/push" s3://bench/push-direct/ | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
t0=$(now); "$bin" volume push "$T/push" s3://bench/pushed/ --json >"$T/push.json"; t1=$(now)
record "volume push ${PUSH_MIB} MiB + $PUSH_COUNT files" "$(secs "$t0" "$t1")" "$direct"
t0=$(now); "$bin" volume push "$T/push" s3://bench/pushed/ --json >"$T/push2.json"; t1=$(now)
say "$(printf '%-34s %8.3f s' "  the same push again (no change)" "$(secs "$t0" "$t1")")"
rm -rf "$T/push"
fi

# 6d. Patching a big file in place in a writable volume: 1% of a PATCH_MIB file rewritten at 100
#     places, then `datumfs volume sync`, vs a direct re-upload of the whole file.
if want patch; then
say "making a ${PATCH_MIB} MiB file in a volume"
head -c $((PATCH_MIB << 20)) /dev/urandom >"$T/patch.bin"
"$s3bench" put-file "$T/patch.bin" s3://bench/vol/model.bin >/dev/null
direct=$("$s3bench" put-file "$T/patch.bin" s3://bench/vol-direct/model.bin | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
mount_at patch "$T/cache-patch" --volume "v=s3://bench/vol/:rw" --execution bench-patch
patch_py='
import os, random, sys
random.seed(7)
f = open(sys.argv[1], "r+b"); size = os.path.getsize(sys.argv[1]); piece = size // 10000
for i in range(100):
    f.seek(i * (size // 100)); f.write(random.randbytes(piece))
f.close()'
t0=$(now)
python3 -c "$patch_py" "$MNT/volumes/v/model.bin"
tp=$(now)
"$bin" volume sync "$MNT" v --json >"$T/patch.json"
t1=$(now)
say "$(printf '%-34s %8.3f s, sync %.3f s' "  patch (copies the file in)" "$(secs "$t0" "$tp")" "$(secs "$tp" "$t1")")"
record "patch 1% of ${PATCH_MIB} MiB in a volume + sync" "$(secs "$t0" "$t1")" "$direct"
python3 -c "$patch_py" "$T/patch.bin"
want_sha=$(sha256sum "$T/patch.bin" | cut -d" " -f1)
got_sha=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["put"][0]["sha256"])' "$T/patch.json")
[[ $want_sha == "$got_sha" ]] || { echo "bench: the synced volume file is not the patched file" >&2; exit 1; }
unmount_it
rm -f "$T/patch.bin"
fi

# 7. Opens of new small cache objects (sled index, pack slot) from 8 threads at once vs the same
#    number from one thread: a cache-wide lock shows as a ratio well below 1.
if want opens; then
cargo build --release -q --example cache_opens
opens=$PWD/target/release/examples/cache_opens
o1=$("$opens" "$T/opens1" 1 16000 | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
o8=$("$opens" "$T/opens8" 8 2000 | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
record "16000 cache opens, 8 threads" "$o8" "$o1"
fi

say "$(printf '%-34s %8d MiB (limit 200 MiB)' "peak daemon RSS" $((peak / 1024)))"
if ((json)); then
    printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
out = {"results": [], "peak_rss_mib": round(int(sys.argv[1]) / 1024, 1)}
for line in sys.stdin:
    *name, t, base = line.split()
    t, base = float(t), float(base)
    out["results"].append({"name": " ".join(name), "seconds": t, "baseline_seconds": base, "ratio": round(base / t, 3) if t else None})
print(json.dumps(out, indent=2))' "$peak"
fi
