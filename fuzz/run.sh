#!/usr/bin/env bash
# Builds and runs a libFuzzer target of moe's readers (clang; the main build uses g++).
#
#   fuzz/run.sh [seconds=60] [build dir=build/fuzz] [target=pickle|json|safetensors]
#
# Exits 77 (ctest: skipped) when clang++ or libFuzzer is not available, 0 when the run found
# nothing, non-zero with the crashing input saved under <build dir>/artifacts/ otherwise.
set -euo pipefail
secs="${1:-60}"
src="$(cd "$(dirname "$0")" && pwd)"
build="${2:-$src/../build/fuzz}"
target="${3:-pickle}"
python="${MOE_PYTHON:-/usr/bin/python3}"

cxx="${MOE_FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || true)}"
if [ -z "$cxx" ]; then
  echo "fuzz: clang++ not found; skipping (Debian: apt-get install clang libclang-rt-14-dev)"
  exit 77
fi
mkdir -p "$build"
probe="$build/libfuzzer_probe"
if ! printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' |
    "$cxx" -x c++ -fsanitize=fuzzer - -o "$probe" 2>/dev/null; then
  echo "fuzz: $cxx cannot link libFuzzer (-fsanitize=fuzzer); skipping"
  exit 77
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$src" -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target "fuzz_$target"

seeds="$build/seeds_$target"
corpus="$build/corpus_$target"
mkdir -p "$corpus" "$build/artifacts"
"$python" "$src/make_seed_corpus.py" "$seeds" "$target"

echo "fuzz: running fuzz_$target for $secs s"
exec "$build/fuzz_$target" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
  -max_len=65536 -dict="$src/$target.dict" -artifact_prefix="$build/artifacts/" \
  -print_final_stats=1 "$corpus" "$seeds"
