#!/usr/bin/env bash
# Build the compiled decoders (this folder: Rust, PyO3) with maturin and install them into the
# virtualenv whose bin/ is $1 -- when a Rust toolchain is there (cargo on PATH, or rustup's
# ~/.cargo/bin). Without one, say so in one line: kaspwatch then runs its pure-Python decoders,
# which are the reference anyway. Called by make; KASPWATCH_NATIVE=required turns a failed
# build into a failed make instead of a fallback.
set -euo pipefail
bin="$1"
here="$(cd "$(dirname "$0")" && pwd)"
pure() {
  "$bin/pip" uninstall -q -y kaspwatch-native >/dev/null 2>&1 || true
  echo "kaspwatch: compiled decoders $1: using the pure-Python decoders"
}
cargo="$(command -v cargo || true)"
rustup_bin="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
if [[ -z "$cargo" && -x "$rustup_bin/cargo" ]]; then
  cargo="$rustup_bin/cargo"
fi
if [[ -z "$cargo" ]]; then
  pure "not built (no Rust toolchain)"
  exit 0
fi
export PATH="$(dirname "$cargo"):$PATH"
rm -rf "$here/target/wheels"
started=$SECONDS
if ! "$bin/maturin" build --release --locked --quiet -m "$here/Cargo.toml" -i "$bin/python" \
  -o "$here/target/wheels"; then
  [[ "${KASPWATCH_NATIVE:-}" == required ]] && exit 1
  pure "failed to build (see above)"
  exit 0
fi
"$bin/pip" install -q --no-deps --force-reinstall "$here"/target/wheels/kaspwatch_native-*.whl
echo "kaspwatch: compiled decoders built and installed ($((SECONDS - started)) s)"
