#!/usr/bin/env bash
# Build the real Suricata from a source tarball, once, into a cache outside the repository.
#
#   tools/build_suricata.sh PATH/TO/suricata-X.Y.Z.tar.gz
#
# Prints the path of the built binary on its last line. A second run with the same tarball reuses the
# build (~8 minutes on 2 cores the first time). KASPWATCH_PEERS_CACHE moves the cache
# (default /var/cache/kaspwatch-peers if writable, else ~/.cache/kaspwatch-peers).
# Needs the Debian build dependencies (installed with apt if missing, as root or with sudo) and a Rust
# toolchain (cargo); cbindgen is installed with `cargo install --locked cbindgen` if absent.
set -euo pipefail

tarball=${1:-}
if [[ -z "$tarball" || ! -f "$tarball" ]]; then
  echo "build_suricata: give the Suricata source tarball as the argument (got '${tarball}'): e.g. tools/build_suricata.sh suricata-8.0.6.tar.gz" >&2
  exit 2
fi
tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")
name=$(basename "$tarball" .tar.gz)

if [[ -n "${KASPWATCH_PEERS_CACHE:-}" ]]; then
  cache=$KASPWATCH_PEERS_CACHE
elif mkdir -p /var/cache/kaspwatch-peers 2>/dev/null && [[ -w /var/cache/kaspwatch-peers ]]; then
  cache=/var/cache/kaspwatch-peers
else
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/kaspwatch-peers
fi
prefix=$cache/$name
binary=$prefix/bin/suricata
sum=$(sha256sum "$tarball" | cut -d' ' -f1)

if [[ -x "$binary" && -f "$prefix/.source-sha256" && $(cat "$prefix/.source-sha256") == "$sum" ]]; then
  echo "build_suricata: cached build of $name in $prefix" >&2
  echo "$binary"
  exit 0
fi

need=()
for pkg in build-essential autoconf automake libtool pkg-config libpcap-dev libyaml-dev libjansson-dev \
  libpcre2-dev libcap-ng-dev zlib1g-dev liblz4-dev libmagic-dev libnet1-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "build_suricata: installing ${need[*]}" >&2
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  echo "build_suricata: needs a Rust toolchain (cargo); install it with rustup, then run again" >&2
  exit 2
fi
command -v cbindgen >/dev/null || cargo install --locked cbindgen

src=$cache/src
rm -rf "$src/$name"
mkdir -p "$src"
tar xzf "$tarball" -C "$src"
cd "$src/$name"
[[ -x configure ]] || ./autogen.sh
./configure --prefix="$prefix" --disable-gccmarch-native --disable-suricata-update --disable-shared
make -j"$(nproc)"
make install
make install-conf
echo "$sum" >"$prefix/.source-sha256"
echo "build_suricata: built $binary" >&2
echo "$binary"
