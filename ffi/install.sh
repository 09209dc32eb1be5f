#!/usr/bin/env bash
# Installs Lethe's C/C++ package from a cargo build: lethe.h, lethe.hpp, liblethe.so,
# liblethe.a, lethe.pc and the CMake package config. `make install` runs it after building;
# the C tests run it into a temporary prefix.
#
#   ffi/install.sh BUILD_DIR PREFIX [LIBDIR [INCLUDEDIR]]
#     BUILD_DIR   the cargo output folder with liblethe.so and liblethe.a (target/release)
#     LIBDIR      default PREFIX/lib; INCLUDEDIR default PREFIX/include
#   DESTDIR is prepended to every path written (for packagers); the files name the final paths.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
build=$1
prefix=$2
libdir=${3:-$prefix/lib}
includedir=${4:-$prefix/include}
dest=${DESTDIR:-}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# The ABI in the SONAME (as build.rs sets it): the major version, or 0.MINOR before 1.0.
abi=${version%%.*}
[ "$abi" = 0 ] && abi=$(echo "$version" | cut -d. -f1,2)
# What the Rust standard library in liblethe.a links (`rustc --print native-static-libs`).
native_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

for f in "$build/liblethe.so" "$build/liblethe.a"; do
  [ -f "$f" ] || { echo "install: $f is missing: build first (cargo build --release --lib)" >&2; exit 1; }
done
subst() {
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@INCLUDEDIR@|$includedir|g" \
      -e "s|@VERSION@|$version|g" -e "s|@ABI@|$abi|g" -e "s|@NATIVE_LIBS@|$native_libs|g" \
      -e "s|@NATIVE_LIBS_CMAKE@|$(echo "$native_libs" | sed 's/-l//g; s/ /;/g')|g" "$1"
}
install -d "$dest$includedir" "$dest$libdir/pkgconfig" "$dest$libdir/cmake/lethe"
install -m 644 ffi/lethe.h ffi/lethe.hpp "$dest$includedir/"
# The shared library under its full version, with the links a system install has: the SONAME
# (liblethe.so.ABI, what programs record at link time) and the development link.
install -m 755 "$build/liblethe.so" "$dest$libdir/liblethe.so.$version"
ln -sf "liblethe.so.$version" "$dest$libdir/liblethe.so.$abi"
ln -sf "liblethe.so.$version" "$dest$libdir/liblethe.so"
install -m 644 "$build/liblethe.a" "$dest$libdir/liblethe.a"
subst ffi/lethe.pc.in > "$dest$libdir/pkgconfig/lethe.pc"
subst ffi/cmake/lethe-config.cmake.in > "$dest$libdir/cmake/lethe/lethe-config.cmake"
subst ffi/cmake/lethe-config-version.cmake.in > "$dest$libdir/cmake/lethe/lethe-config-version.cmake"
echo "installed Lethe $version into $dest$prefix (headers $includedir, libraries $libdir)"
