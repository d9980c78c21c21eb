# Shared by scripts/run and scripts/test: install what a fresh Debian machine lacks.
# Sourced, not run.

# Build outside the clone so fresh clones (CI) reuse the compiled RocksDB when it exists.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"

say() { printf 'tally: %s\n' "$*" >&2; }

trim_target_dir() {
  # Keeps the shared build directory bounded: past 20 GB, drop what is rebuilt cheaply
  # (incremental state, test and bench executables), keeping the compiled dependencies.
  local dir="$CARGO_TARGET_DIR"
  [ -d "$dir" ] || return 0
  local kb
  kb=$(du -sk "$dir" 2>/dev/null | cut -f1)
  if [ "${kb:-0}" -gt $((20 * 1024 * 1024)) ]; then
    say "the build directory $dir holds $((kb / 1024 / 1024)) GB; removing incremental state and old test executables"
    rm -rf "$dir"/debug/incremental "$dir"/release/incremental
    find "$dir"/debug/deps "$dir"/release/deps -maxdepth 1 -type f -perm -u+x ! -name '*.so' -delete 2>/dev/null || true
  fi
}

apt_install() {
  # Installs the Debian packages given that are not installed yet.
  local missing=()
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_toolchain() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    say "no Rust toolchain found; installing one with rustup (Rust >= 1.88 is needed)"
    apt_install curl ca-certificates
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  # rocksdb's bindings need libclang; its C++ build needs a compiler and make.
  apt_install libclang-dev build-essential pkg-config
}

ensure_python_tools() {
  # The suite's Python tools, in a venv outside the clone: schemathesis fuzzes the API against
  # its own OpenAPI document; confluent-kafka is a producer that is not Tally's own (each
  # compression codec).
  local venv="${TALLY_SCHEMATHESIS_VENV:-$HOME/.cache/tally-schemathesis}"
  if [ -x "$venv/bin/schemathesis" ] && "$venv/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
    return 0
  fi
  if ! python3 -m venv --help >/dev/null 2>&1; then
    apt_install python3 python3-venv python3-pip
  fi
  say "installing schemathesis and confluent-kafka into $venv (PyPI, under a minute)"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.32.5" "confluent-kafka==2.16.1"
}

ensure_tansu() {
  # The Kafka tests run against a real Kafka-protocol broker: Tansu, built from crates.io.
  if command -v tansu >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/tansu" ]; then
    return 0
  fi
  say "installing the Tansu broker for the Kafka tests (cargo install, 15-25 minutes once)"
  # Built in cargo's own temporary directory, not the shared target dir: its 3 GB of
  # intermediate files are not needed once the binary is installed.
  env -u CARGO_TARGET_DIR cargo install tansu --locked --version 0.6.0 --features dynostore,libsql
}
