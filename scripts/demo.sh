#!/usr/bin/env bash
# The main job on the embedded local store, no cloud account needed: builds datumfs, puts sample
# data into the local store, mounts it as an input, lists and reads it, shows the checksums, writes
# an output, syncs it as a datum, reads that datum back in a second job (`datumfs run`), makes a
# dataset version, and trains, approves and serves a model version.
# Everything lives under a temporary DATUMFS_HOME that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v fusermount3 >/dev/null 2>&1 || { echo "installing fuse3 and attr"; apt-get install -y -q fuse3 attr >/dev/null; }
cargo build --release -q
bin="$PWD/target/release/datumfs"

export DATUMFS_HOME="$(mktemp -d /tmp/datumfs-demo.XXXXXX)"
mnt="$DATUMFS_HOME/mnt"
cleanup() { "$bin" unmount --discard "$mnt" 2>/dev/null || true; rm -rf "$DATUMFS_HOME"; }
trap cleanup EXIT

data="$DATUMFS_HOME/store/demo/train"
mkdir -p "$data/cats" "$data/dogs" "$mnt"
for i in 1 2 3; do head -c $((i * 300000)) /dev/urandom >"$data/cats/cat$i.jpg"; done
for i in 1 2; do head -c $((i * 200000)) /dev/urandom >"$data/dogs/dog$i.jpg"; done
printf 'file,label\ncats/cat1.jpg,cat\ndogs/dog1.jpg,dog\n' >"$DATUMFS_HOME/store/demo/labels.csv"

echo "== datumfs mount $mnt --input images=$data/ --input labels=.../labels.csv"
"$bin" mount "$mnt" --input "images=file://$data/" --input "labels=file://$DATUMFS_HOME/store/demo/labels.csv"
echo "== ls -lR $mnt/inputs"
ls -lR "$mnt/inputs"
echo "== cat $mnt/inputs/labels/labels.csv"
cat "$mnt/inputs/labels/labels.csv"
echo "== sha256sum of every image, read through the mount"
find "$mnt/inputs/images" -type f -exec sha256sum {} +
echo "== the checksums datumfs recorded (xattr user.datumfs.sha256)"
getfattr -n user.datumfs.sha256 "$mnt/inputs/images/cats/cat1.jpg" 2>/dev/null | grep sha256
echo "== $mnt/config/inputs.json (first lines)"
head -20 "$mnt/config/inputs.json"
echo "== datumfs status"
"$bin" status "$mnt"
echo "== a job writes an output, with a sidecar giving it tags and an alias"
cut -d, -f2 "$mnt/inputs/labels/labels.csv" | sort | uniq -c >"$mnt/outputs/label-counts.txt"
echo '{"valohai.tags": ["demo"], "valohai.alias": "demo-counts", "valohai.dataset-versions": ["dataset://demo-stats/v1"]}' >"$mnt/outputs/label-counts.txt.metadata.json"
echo "== datumfs unmount $mnt (refused: the output is not synced yet)"
"$bin" unmount "$mnt" || true
echo "== datumfs sync $mnt"
"$bin" sync "$mnt"
"$bin" unmount "$mnt"
echo "== datumfs datum show demo-counts"
"$bin" datum show demo-counts
echo "== datumfs run: a second job reads the datum by its alias and writes a derived output"
"$bin" run "$mnt" --input counts=datum://demo-counts -- sh -c 'wc -l "$VH_INPUTS_DIR/counts/label-counts.txt" | tee "$VH_OUTPUTS_DIR/lines.txt"'
echo "== datumfs lineage demo-counts (what made it, what read it)"
"$bin" lineage demo-counts
echo "== the sync also made dataset version demo-stats/v1; v2 adds the second job's output, production points at it"
"$bin" dataset show demo-stats/v1
lines=$("$bin" datum ls --json | python3 -c 'import json,sys; print([d["uri"] for d in json.load(sys.stdin) if d["path"] == "lines.txt"][-1])')
"$bin" dataset version create demo-stats/v2 --from demo-stats/v1 --add "$lines"
"$bin" dataset alias set demo-stats production v2
"$bin" dataset show demo-stats
echo "== a third job mounts dataset://demo-stats/production"
"$bin" run "$mnt" --input stats=dataset://demo-stats/production -- sh -c 'ls -l "$VH_INPUTS_DIR/stats"; cat "$VH_INPUTS_DIR/stats/lines.txt"'
echo "== a training job with parameters writes a model; its version is approved and served"
"$bin" run "$mnt" --input stats=dataset://demo-stats/production --execution demo-train --param lr=0.01 -- sh -c '
    cat "$VH_CONFIG_DIR/parameters.json"
    echo "weights trained on $(cat "$VH_INPUTS_DIR/stats/lines.txt")" >"$VH_OUTPUTS_DIR/model.txt"
    echo "{\"valohai.model-versions\": [{\"model_uri\": \"model://demo-model/\", \"model_release_note\": \"first\"}]}" \
        >"$VH_OUTPUTS_DIR/model.txt.metadata.json"'
"$bin" model show demo-model
"$bin" model version approve demo-model/v1 --reason "looks right"
"$bin" run "$mnt" --input model=model://demo-model/approved -- sh -c 'cat "$VH_INPUTS_DIR/model/model.txt"'
"$bin" execution show demo-train
echo "demo finished"
