#!/usr/bin/env bash
# The C and C++ tests of Lethe's C API; `make test` runs them after the cargo tests.
#
#   1. lethe.h compiles as C11 and as C++17, included twice; its version macros match
#      Cargo.toml and the library.
#   2. test_api and test_threads (C11, pthreads), built with -Wall -Wextra -Wpedantic -Werror
#      and run under AddressSanitizer + UBSan (any report fails the test).
#   3. test_cpp (lethe.hpp) built as C++17 and as C++20 (std::span), same flags, same checks.
#   4. The package: install into a temporary prefix, build the C and C++ examples against it
#      with pkg-config and with CMake find_package(lethe) (shared and static), and run them.
#
# Uses the debug build (cargo build --lib). Run from anywhere; works in the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
CARGO=${CARGO:-cargo}
CC=${CC:-cc}
CXX=${CXX:-c++}
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$root/$target ;; esac
out=$target/ffi-test
# The library as it is installed: liblethe.so.VERSION with the links liblethe.so.ABI (its
# SONAME, what programs record: the major version, or 0.MINOR before 1.0) and liblethe.so
# (what the linker finds).
lib=$out/lib
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
abi=${version%%.*}
[ "$abi" = 0 ] && abi=$(echo "$version" | cut -d. -f1,2)
start=$(date +%s)

step() { printf '\n== %s (%ss)\n' "$1" $(($(date +%s) - start)); }

for tool in "$CC" "$CXX" pkg-config cmake; do
  command -v "$tool" >/dev/null || {
    echo "ffi tests: $tool is required (e.g. apt-get install build-essential pkg-config cmake)" >&2
    exit 1
  }
done

step "build liblethe (debug)"
$CARGO build --lib --quiet
rm -rf "$out"
mkdir -p "$lib"
cp "$target/debug/liblethe.so" "$lib/liblethe.so.$version"
ln -s "liblethe.so.$version" "$lib/liblethe.so.$abi"
ln -s "liblethe.so.$version" "$lib/liblethe.so"
cp "$target/debug/liblethe.a" "$lib/liblethe.a"
soname=$(readelf -d "$lib/liblethe.so.$version" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[ "$soname" = "liblethe.so.$abi" ] || { echo "liblethe.so's SONAME is '$soname', not liblethe.so.$abi" >&2; exit 1; }

warn=(-Wall -Wextra -Wpedantic -Werror)
san=(-g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
link=(-L"$lib" -llethe -Wl,-rpath,"$lib")
inc=(-Iffi -Iffi/examples -Iffi/tests)
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1

step "lethe.h as C11 and C++17, included twice; version macros = Cargo.toml ($version)"
$CC -std=c11 "${warn[@]}" "${inc[@]}" -DLETHE_CARGO_VERSION="\"$version\"" \
  ffi/tests/test_header.c "${link[@]}" -o "$out/test_header_c"
$CXX -std=c++17 "${warn[@]}" "${inc[@]}" -DLETHE_CARGO_VERSION="\"$version\"" \
  -x c++ ffi/tests/test_header.c -x none "${link[@]}" -o "$out/test_header_cpp"
# lethe.hpp on its own (it includes lethe.h), as C++17 and C++20.
for std in c++17 c++20; do
  echo '#include "lethe.hpp"
#include "lethe.hpp"
int main() { return lethe::version().empty(); }' |
    $CXX -std=$std "${warn[@]}" "${inc[@]}" -x c++ - -x none "${link[@]}" -o "$out/hpp_$std"
  "$out/hpp_$std"
done
"$out/test_header_c"
"$out/test_header_cpp"

step "C tests under ASan + UBSan"
$CC -std=c11 "${warn[@]}" "${san[@]}" "${inc[@]}" ffi/tests/test_api.c "${link[@]}" \
  -o "$out/test_api"
$CC -std=c11 "${warn[@]}" "${san[@]}" "${inc[@]}" ffi/tests/test_threads.c "${link[@]}" \
  -lpthread -o "$out/test_threads"
"$out/test_api"
"$out/test_threads"

step "C++ tests (lethe.hpp) under ASan + UBSan"
for std in c++17 c++20; do
  $CXX -std=$std "${warn[@]}" "${san[@]}" "${inc[@]}" ffi/tests/test_cpp.cpp "${link[@]}" \
    -o "$out/test_cpp_$std"
  "$out/test_cpp_$std"
done

step "install into a temporary prefix"
prefix=$out/prefix
ffi/install.sh "$target/debug" "$prefix" >/dev/null
for link in liblethe.so liblethe.so.$abi; do
  [ "$(readlink "$prefix/lib/$link")" = "liblethe.so.$version" ] || { echo "install: $link is not a link to liblethe.so.$version" >&2; exit 1; }
done
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[ "$(pkg-config --modversion lethe)" = "$version" ]

step "examples built with pkg-config"
libdir=$(pkg-config --variable=libdir lethe)
# shellcheck disable=SC2046 # pkg-config's output is meant to be split
$CC -std=c11 "${warn[@]}" ffi/examples/learn_forget.c $(pkg-config --cflags --libs lethe) \
  -Wl,-rpath,"$libdir" -o "$out/pc_learn_forget_c"
# shellcheck disable=SC2046
$CXX -std=c++17 "${warn[@]}" ffi/examples/learn_forget.cpp $(pkg-config --cflags --libs lethe) \
  -Wl,-rpath,"$libdir" -o "$out/pc_learn_forget_cpp"
"$out/pc_learn_forget_c"
"$out/pc_learn_forget_cpp"

step "examples built with CMake find_package(lethe)"
cmake -S ffi/examples -B "$out/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_C_FLAGS="${warn[*]}" -DCMAKE_CXX_FLAGS="${warn[*]}" >/dev/null
cmake --build "$out/cmake" -j 2 >/dev/null
for example in learn_forget_c learn_forget_cpp learn_forget_c_static; do
  # Same programs as above: show their output only if they fail.
  "$out/cmake/$example" >"$out/$example.log" 2>&1 || { cat "$out/$example.log"; exit 1; }
  echo "$example: ok"
done
if ldd "$out/cmake/learn_forget_c_static" | grep -q liblethe; then
  echo "learn_forget_c_static should not need liblethe.so" >&2
  exit 1
fi

rm -rf "$out"
step "C/C++ tests passed"
