#!/usr/bin/env bash
# Installs a release build of datumfs on this machine: the binary, the mount helper mount(8)
# looks for (so `mount -t fuse.datumfs` and /etc/fstab work), man pages, shell completions and
# the systemd unit. Run as root. `--uninstall` removes exactly what it installs.
#
#   scripts/install.sh [--prefix /usr/local] [--uninstall]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local; uninstall=0
while (($#)); do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
bin=$prefix/bin/datumfs
helper=/sbin/mount.fuse.datumfs
man_dir=$prefix/share/man/man1
bash_dir=$prefix/share/bash-completion/completions
zsh_dir=$prefix/share/zsh/site-functions
fish_dir=$prefix/share/fish/vendor_completions.d
unit=/etc/systemd/system/datumfs@.service
if ((uninstall)); then
    rm -f "$helper" "$bin" "$bash_dir/datumfs" "$zsh_dir/_datumfs" "$fish_dir/datumfs.fish" "$unit"
    rm -f "$man_dir"/datumfs.1 "$man_dir"/datumfs-*.1
    echo "datumfs uninstalled from $prefix"
    exit 0
fi
cargo build --release -q --bin datumfs
install -D -m 0755 target/release/datumfs "$bin"
ln -sf "$bin" "$helper"
mkdir -p "$man_dir" "$bash_dir" "$zsh_dir" "$fish_dir"
"$bin" man --dir "$man_dir"
"$bin" completions bash >"$bash_dir/datumfs"
"$bin" completions zsh >"$zsh_dir/_datumfs"
"$bin" completions fish >"$fish_dir/datumfs.fish"
sed "s|/usr/local/bin/datumfs|$bin|g" contrib/systemd/datumfs@.service >"$unit"
echo "datumfs installed: $bin, mount helper $helper, man pages, completions, $unit"
