#!/usr/bin/env bash
# Builds a Debian package of datumfs: the binary (/usr/bin/datumfs), the mount helper mount(8)
# looks for (/usr/sbin/mount.fuse.datumfs, so `mount -t fuse.datumfs` and /etc/fstab work), man
# pages, bash/zsh/fish completions, the systemd unit, and the fstab and Kubernetes examples.
#
#   scripts/package.sh [--binary PATH] [--out DIR] [--json]
#
# Without --binary it makes a release build first. Prints the .deb's path (or, with --json,
# {"deb": PATH, "version": V, "architecture": A, "files": N}).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=""; out=target/debian; json=0
while (($#)); do
    case $1 in
        --binary) binary=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --json) json=1; shift ;;
        *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb dpkg gzip; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing (apt-get install dpkg-dev)" >&2; exit 1; }
done
if [[ -z $binary ]]; then
    cargo build --release --locked -q --bin datumfs
    binary=target/release/datumfs
fi
[[ -x $binary ]] || { echo "package.sh: $binary is not an executable" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
mkdir -p "$out"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
install -D -m 0755 "$binary" "$root/usr/bin/datumfs"
strip --strip-debug "$root/usr/bin/datumfs" 2>/dev/null || true
mkdir -p "$root/usr/sbin"
ln -s ../bin/datumfs "$root/usr/sbin/mount.fuse.datumfs"
man=$root/usr/share/man/man1
mkdir -p "$man"
"$binary" man --dir "$man" >/dev/null 2>&1 || { echo "package.sh: $binary man failed" >&2; exit 1; }
gzip -9n "$man"/*.1
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
"$binary" completions bash >"$root/usr/share/bash-completion/completions/datumfs"
"$binary" completions zsh >"$root/usr/share/zsh/vendor-completions/_datumfs"
"$binary" completions fish >"$root/usr/share/fish/vendor_completions.d/datumfs.fish"
install -d "$root/usr/lib/systemd/system"
sed 's|/usr/local/bin/datumfs|/usr/bin/datumfs|g' contrib/systemd/datumfs@.service \
    >"$root/usr/lib/systemd/system/datumfs@.service"
doc=$root/usr/share/doc/datumfs
install -d "$doc/examples/kubernetes"
install -m 0644 contrib/systemd/fstab.example "$doc/examples/"
install -m 0644 deploy/kubernetes/*.yaml "$doc/examples/kubernetes/"
gzip -9n <README.md >"$doc/README.md.gz"
cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: datumfs
Files: *
License: $(sed -n 's/^license = "\(.*\)"/\1/p' Cargo.toml | head -1 | grep . || echo "see the project's repository")
COPYRIGHT
chmod -R u=rwX,go=rX "$root/usr"
install -d "$root/DEBIAN"
size=$(du -sk "$root/usr" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: datumfs
Version: $version
Architecture: $arch
Maintainer: datumfs developers <datumfs@localhost>
Installed-Size: $size
Depends: fuse3, libc6, ca-certificates
Section: utils
Priority: optional
Description: object-store data as plain files for machine-learning jobs
 A FUSE filesystem: MOUNTPOINT/inputs/ is served lazily from S3, GCS, Azure,
 HTTP and versioned datum:// and dataset:// references through a local block
 cache; MOUNTPOINT/outputs/ is staged on local disk and uploaded as immutable,
 checksummed datums with lineage when the job syncs.
CONTROL
# systemd learns of the unit at install and forgets it at removal (only where systemd runs).
for script in postinst postrm; do
    cat >"$root/DEBIAN/$script" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
    chmod 0755 "$root/DEBIAN/$script"
done
(cd "$root" && find usr -type f -exec md5sum {} + >DEBIAN/md5sums)
deb=$out/datumfs_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
files=$(dpkg-deb --contents "$deb" | grep -vc '/$')
if ((json)); then
    printf '{"deb": "%s", "version": "%s", "architecture": "%s", "files": %d}\n' "$deb" "$version" "$arch" "$files"
else
    echo "$deb"
fi
