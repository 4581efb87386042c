#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read other programs' output (fuzz/README.md).
# Installs cargo-fuzz once per machine, builds the targets, then runs each for a bounded time
# from its seed corpus in fuzz/corpus/<target>. Exits non-zero if any target fails; only then
# is the failing input copied to fuzz/artifacts/<target>/ (ignored by git).
#   TOPOLVM_FUZZ_SECONDS     seconds per target (default 15: 75 s for the five targets)
#   TOPOLVM_FUZZ_TARGETS     space-separated targets (default: every target of fuzz/Cargo.toml)
#   TOPOLVM_FUZZ_TARGET_DIR  build cache (default /var/cache/topolvm-rs/fuzz-target)
#   TOPOLVM_CARGO_FUZZ_DIR   where cargo-fuzz is installed (default /var/cache/topolvm-rs/cargo-fuzz)
# libFuzzer needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

cargo_fuzz_version=0.13.2
seconds=${TOPOLVM_FUZZ_SECONDS:-15}
root=${TOPOLVM_CARGO_FUZZ_DIR:-/var/cache/topolvm-rs/cargo-fuzz}
# Built once per machine: a clean clone reuses the instrumented dependencies and rebuilds only
# our crates. Apart from target/, whose ordinary builds the instrumented ones would replace.
target_dir=${TOPOLVM_FUZZ_TARGET_DIR:-/var/cache/topolvm-rs/fuzz-target}
export PATH="$root/bin:$PATH"
export RUSTC_BOOTSTRAP=1

started=$SECONDS
if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $cargo_fuzz_version" ]]; then
    echo "fuzz: installing cargo-fuzz $cargo_fuzz_version into $root (once per machine, under a minute)"
    cargo install cargo-fuzz --locked --quiet --version "$cargo_fuzz_version" --root "$root"
    echo "fuzz: cargo-fuzz installed in $((SECONDS - started)) s"
fi

# No sanitizer: the code under test is safe Rust; debug assertions make an overflow a crash.
# Many codegen units: a run is seconds long, so a quicker build matters more than peak speed.
flags=(--fuzz-dir fuzz --release --debug-assertions --sanitizer none --codegen-units 16
    --target-dir "$target_dir")

if [[ -n ${TOPOLVM_FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$TOPOLVM_FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

echo "fuzz: building ${#targets[@]} targets (${targets[*]}) with coverage instrumentation into $target_dir"
echo "fuzz: the first build on a machine compiles every dependency (about 5 minutes on 2 cores); later ones only our crates (30-90 s)"
build_started=$SECONDS
if [[ -z ${TOPOLVM_FUZZ_TARGETS:-} ]]; then
    cargo fuzz build "${flags[@]}"
else
    for t in "${targets[@]}"; do
        cargo fuzz build "${flags[@]}" "$t"
    done
fi
echo "fuzz: built in $((SECONDS - build_started)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
run_started=$SECONDS
for t in "${targets[@]}"; do
    seeds="fuzz/corpus/$t"
    echo "fuzz: $t for ${seconds} s from $(find "$seeds" -type f | wc -l) seeds in $seeds"
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048
        -artifact_prefix="$work/$t/artifacts/")
    if [[ -f fuzz/dict/$t.dict ]]; then
        options+=(-dict="fuzz/dict/$t.dict")
    fi
    # New inputs go to the scratch corpus (the first directory); the seeds stay as committed.
    if cargo fuzz run "${flags[@]}" "$t" "$work/$t/corpus" "$seeds" -- "${options[@]}" \
        >"$work/$t.log" 2>&1; then
        grep -E '^#[0-9]+.*DONE' "$work/$t.log" | tail -n 1 | sed "s/^/fuzz: $t: /"
        # cargo fuzz makes fuzz/artifacts/<target> on every run; leave it only with a failure in it.
        rmdir "fuzz/artifacts/$t" fuzz/artifacts 2>/dev/null || true
    else
        # The panic's message, else libFuzzer's last words (a timeout, a leak, out of memory).
        if grep -q 'panicked at' "$work/$t.log"; then
            sed -n '/panicked at/,/^stack backtrace/p' "$work/$t.log" | head -n 30
        fi
        grep -E '^(==[0-9]+== ERROR|SUMMARY|MS:)' "$work/$t.log" || tail -n 20 "$work/$t.log"
        mkdir -p "fuzz/artifacts/$t"
        cp "$work/$t/artifacts/"* "fuzz/artifacts/$t/" 2>/dev/null || true
        echo "fuzz: $t FAILED ($(grep -m1 -o 'Seed: [0-9]*' "$work/$t.log" || echo 'no seed'));" \
            "the input is in fuzz/artifacts/$t/:"
        ls "fuzz/artifacts/$t/"
        echo "fuzz: replay with RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t fuzz/artifacts/$t/<file>"
        failed+=("$t")
    fi
done
echo "fuzz: ran ${#targets[@]} targets in $((SECONDS - run_started)) s; $((SECONDS - started)) s in all"

if ((${#failed[@]})); then
    echo "fuzz: failures in ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: no failures in ${#targets[@]} targets"
