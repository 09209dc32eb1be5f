/*
 * test_header.c: lethe.h compiles as C11 and as C++17 (this file is built as both), may be
 * included twice, and its version macros agree with Cargo.toml (LETHE_CARGO_VERSION, passed
 * by the build) and with the library.
 */
#include "lethe.h"
#include "lethe.h"

#include <stdio.h>
#include <string.h>

#ifndef LETHE_CARGO_VERSION
#error "build with -DLETHE_CARGO_VERSION=\"<version in Cargo.toml>\""
#endif

#define LETHE_STR_(x) #x
#define LETHE_STR(x) LETHE_STR_(x)

int main(void) {
  const char *macros = LETHE_STR(LETHE_VERSION_MAJOR) "." LETHE_STR(
      LETHE_VERSION_MINOR) "." LETHE_STR(LETHE_VERSION_PATCH);
  lethe_status status = LETHE_OK;
  lethe_backend backend = LETHE_BACKEND_CPU;
  lethe_options options;
  lethe_head_summary summary;
  lethe_core *core = NULL;
  lethe_head *head = NULL;
  if (strcmp(macros, LETHE_CARGO_VERSION) != 0) {
    fprintf(stderr, "lethe.h says %s, Cargo.toml %s\n", macros, LETHE_CARGO_VERSION);
    return 1;
  }
  if (strcmp(lethe_version(), LETHE_CARGO_VERSION) != 0 ||
      lethe_version_number() != LETHE_VERSION_NUMBER) {
    fprintf(stderr, "the library is %s (%u), lethe.h %s (%u)\n", lethe_version(),
            (unsigned)lethe_version_number(), macros, (unsigned)LETHE_VERSION_NUMBER);
    return 1;
  }
  if (lethe_options_default(&options, sizeof options) != LETHE_OK ||
      options.backend != backend || options.struct_size != sizeof options)
    return 1;
  memset(&summary, 0, sizeof summary);
  status = lethe_core_close(core);
  status |= lethe_head_close(head);
  printf("test_header: ok (%s, lethe.h %s)\n",
#ifdef __cplusplus
         "C++",
#else
         "C",
#endif
         macros);
  return status == LETHE_OK && summary.samples == 0 ? 0 : 1;
}
