#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read other programs' output (fuzz/README.md).
# Installs cargo-fuzz once (cached), builds the targets, then runs each for a bounded time
# from its seed corpus in fuzz/corpus/<target>. Exits non-zero if any target crashes; the
# crashing input is saved under fuzz/artifacts/<target>/.
#   TOPOLVM_FUZZ_SECONDS   seconds per target (default 20)
#   TOPOLVM_FUZZ_TARGETS   space-separated targets (default: every target of fuzz/Cargo.toml)
#   TOPOLVM_CARGO_FUZZ_DIR where cargo-fuzz is installed (default /var/cache/topolvm-rs/cargo-fuzz)
# libFuzzer needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

cargo_fuzz_version=0.13.2
seconds=${TOPOLVM_FUZZ_SECONDS:-20}
root=${TOPOLVM_CARGO_FUZZ_DIR:-/var/cache/topolvm-rs/cargo-fuzz}
export PATH="$root/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $cargo_fuzz_version" ]]; then
    echo "fuzz: installing cargo-fuzz $cargo_fuzz_version into $root (once; about a minute)"
    cargo install cargo-fuzz --locked --quiet --version "$cargo_fuzz_version" --root "$root"
fi

# Apart from the ordinary build: the instrumented artifacts would otherwise replace it.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
# No sanitizer: the code under test is safe Rust; debug assertions catch overflows. Many
# codegen units: a run is seconds long, so a quicker build matters more than peak speed.
flags=(--fuzz-dir fuzz --release --debug-assertions --sanitizer none --codegen-units 16
    --target-dir "$target_dir")

if [[ -n ${TOPOLVM_FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$TOPOLVM_FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

echo "fuzz: building ${#targets[@]} targets with coverage instrumentation into $target_dir"
echo "fuzz: (a first build compiles every dependency again with instrumentation: several minutes)"
for t in "${targets[@]}"; do
    cargo fuzz build "${flags[@]}" "$t"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    seeds="fuzz/corpus/$t"
    echo "fuzz: $t for ${seconds}s from $(find "$seeds" -type f | wc -l) seeds in $seeds"
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    # New inputs go to the scratch corpus (first directory); the seeds stay as committed.
    if cargo fuzz run "${flags[@]}" "$t" "$work/$t" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$work/$t.log" 2>&1; then
        grep -E '^#[0-9]+.*DONE' "$work/$t.log" | tail -n 1 | sed "s/^/fuzz: $t: /"
    else
        tail -n 40 "$work/$t.log"
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/ (replay: cargo fuzz run --fuzz-dir fuzz $t <file>)"
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: crashes in ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: no crashes in ${#targets[@]} targets"
