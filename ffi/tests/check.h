/*
 * check.h: tiny assertion helpers for Lethe's C tests (no framework: a failed check prints
 * where and why, with lethe_last_error(), and exits 1).
 */
#ifndef LETHE_TEST_CHECK_H
#define LETHE_TEST_CHECK_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lethe.h"

#define FAIL(...)                                             \
  do {                                                        \
    fprintf(stderr, "%s:%d: FAILED: ", __FILE__, __LINE__);   \
    fprintf(stderr, __VA_ARGS__);                             \
    fprintf(stderr, "\n  last error: %s\n", lethe_last_error()); \
    exit(1);                                                  \
  } while (0)

#define CHECK(cond)                         \
  do {                                      \
    if (!(cond)) FAIL("CHECK(%s)", #cond);  \
  } while (0)

/* `call` returns `want`; an error leaves a message (which contains `needle`, if not NULL) and
 * a success leaves "". */
#define EXPECT_MSG(call, want, needle)                                                      \
  do {                                                                                      \
    lethe_status got_ = (call);                                                             \
    const char *msg_ = lethe_last_error();                                                  \
    if (got_ != (lethe_status)(want))                                                       \
      FAIL("%s returned %u (%s), expected %u (%s)", #call, (unsigned)got_,                  \
           lethe_status_str(got_), (unsigned)(want), lethe_status_str(want));               \
    if ((want) == LETHE_OK && msg_[0] != '\0') FAIL("%s succeeded with message", #call);    \
    if ((want) != LETHE_OK && msg_[0] == '\0') FAIL("%s failed without a message", #call);  \
    if ((needle) != NULL && strstr(msg_, (needle) ? (needle) : "") == NULL)                 \
      FAIL("%s: the message lacks \"%s\"", #call, (needle) ? (needle) : "");                \
  } while (0)

#define EXPECT(call, want) EXPECT_MSG(call, want, (const char *)NULL)
#define OK(call) EXPECT(call, LETHE_OK)

static int check_remove_entry(const char *path, const struct stat *st, int flag,
                              struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

/* Removes a folder tree (ignores a missing one). */
static inline void remove_tree(const char *path) {
  struct stat st;
  if (stat(path, &st) == 0) nftw(path, check_remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static inline int path_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

#endif /* LETHE_TEST_CHECK_H */
