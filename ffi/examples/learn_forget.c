/*
 * learn_forget.c: Lethe's C API end to end on real MNIST digits.
 *
 * The bundled mnist-core was trained on digits 0-4 only. A head learns all ten digits from a
 * few of the user's examples (so it now knows 5-9), predicts, forgets one class exactly,
 * forgets everything, and is the core again.
 *
 *   usage: learn_forget_c [BUNDLE_DIR [DATA_DIR [STATE_DIR]]]
 *          defaults: models/mnist-core, tests/data, a new folder under /tmp
 *
 * Build against an installed Lethe (see ffi/README.md):
 *   cc -std=c11 learn_forget.c $(pkg-config --cflags --libs lethe) -o learn_forget_c
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lethe.h"
#include "mnist_npy.h"

#define PER_CLASS 20 /* examples of each digit the user teaches */
#define TEST_DIGITS 500

/* Prints the failed call and its message, then exits. */
static void check(lethe_status status, const char *what) {
  if (status != LETHE_OK) {
    fprintf(stderr, "%s failed: %s (%s)\n", what, lethe_status_str(status), lethe_last_error());
    exit(1);
  }
}

static size_t argmax(const float *v, size_t n) {
  size_t best = 0, i;
  for (i = 1; i < n; i++)
    if (v[i] > v[best]) best = i;
  return best;
}

/* Accuracy on the test digits whose label is in [lo, hi]. */
static double accuracy(const float *logits, size_t classes, const mnist_digits *test, int lo,
                       int hi) {
  size_t i, right = 0, total = 0;
  for (i = 0; i < TEST_DIGITS; i++) {
    if (test->labels[i] < lo || test->labels[i] > hi) continue;
    total++;
    right += argmax(logits + i * classes, classes) == test->labels[i];
  }
  return total ? 100.0 * (double)right / (double)total : 0.0;
}

static void report(const char *stage, lethe_head *head, const float *test_inputs,
                   const mnist_digits *test, float *logits, size_t classes) {
  lethe_head_summary info;
  check(lethe_head_predict(head, test_inputs, TEST_DIGITS, logits, TEST_DIGITS * classes,
                           NULL),
        "lethe_head_predict");
  check(lethe_head_info(head, &info, sizeof info), "lethe_head_info");
  printf("%-28s %4llu samples | test accuracy: 0-4 %5.1f%%  5-9 %5.1f%%  all %5.1f%%\n", stage,
         (unsigned long long)info.samples, accuracy(logits, classes, test, 0, 4),
         accuracy(logits, classes, test, 5, 9), accuracy(logits, classes, test, 0, 9));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

int main(int argc, char **argv) {
  const char *bundle = argc > 1 ? argv[1] : "models/mnist-core";
  const char *data = argc > 2 ? argv[2] : "tests/data";
  char temp[] = "/tmp/lethe-example-XXXXXX";
  const char *state = argc > 3 ? argv[3] : NULL;
  lethe_options options;
  lethe_core *core = NULL;
  lethe_head *head = NULL;
  mnist_digits train, test;
  size_t input_len, classes, rows[10 * PER_CLASS], test_rows[TEST_DIGITS], n = 0, i;
  uint64_t ids[10 * PER_CLASS], sevens[PER_CLASS];
  uint32_t labels[10 * PER_CLASS];
  size_t n_sevens = 0;
  float *inputs, *test_inputs, *logits;

  if (lethe_version_number() != LETHE_VERSION_NUMBER) {
    fprintf(stderr, "liblethe %s does not match lethe.h\n", lethe_version());
    return 1;
  }
  check(lethe_options_default(&options, sizeof options), "lethe_options_default");
  options.intra_threads = 1;
  check(lethe_core_open(bundle, &options, &core), "lethe_core_open");
  if (state == NULL && (state = mkdtemp(temp)) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  printf("Lethe %s: bundle %s, state dir %s\n", lethe_version(), bundle, state);
  check(lethe_core_input_len(core, &input_len), "lethe_core_input_len");
  check(lethe_core_num_classes(core, &classes), "lethe_core_num_classes");
  check(lethe_head_open(core, state, &options, &head), "lethe_head_open");

  if (mnist_read(data, "train", &train) != 0 || mnist_read(data, "test", &test) != 0) return 1;
  if (train.pixels != input_len || test.n < TEST_DIGITS) {
    fprintf(stderr, "the digits do not fit the bundle's input (%zu values)\n", input_len);
    return 1;
  }

  /* The user's examples: the first PER_CLASS training digits of each class, id = row. */
  for (i = 0; i < train.n && n < 10 * PER_CLASS; i++) {
    size_t seen = 0, j;
    for (j = 0; j < n; j++) seen += labels[j] == train.labels[i];
    if (seen == PER_CLASS) continue;
    rows[n] = i;
    ids[n] = (uint64_t)i;
    labels[n] = train.labels[i];
    if (labels[n] == 7) sevens[n_sevens++] = ids[n];
    n++;
  }
  for (i = 0; i < TEST_DIGITS; i++) test_rows[i] = i;
  inputs = (float *)malloc(n * input_len * sizeof(float));
  test_inputs = (float *)malloc(TEST_DIGITS * input_len * sizeof(float));
  logits = (float *)malloc(TEST_DIGITS * classes * sizeof(float));
  if (inputs == NULL || test_inputs == NULL || logits == NULL) return 1;
  mnist_inputs(&train, rows, n, inputs);
  mnist_inputs(&test, test_rows, TEST_DIGITS, test_inputs);

  report("core alone (head empty)", head, test_inputs, &test, logits, classes);

  check(lethe_head_learn(head, ids, inputs, n, labels), "lethe_head_learn");
  report("learned", head, test_inputs, &test, logits, classes);
  printf("  first test digit: label %d, predicted %zu\n", test.labels[0],
         argmax(logits, classes));

  check(lethe_head_forget(head, sevens, n_sevens), "lethe_head_forget");
  report("forgot every 7", head, test_inputs, &test, logits, classes);
  printf("  test accuracy on 7s: %5.1f%% (no longer taught)\n",
         accuracy(logits, classes, &test, 7, 7));

  check(lethe_head_forget_all(head), "lethe_head_forget_all");
  report("forgot everything", head, test_inputs, &test, logits, classes);

  check(lethe_head_close(head), "lethe_head_close");
  check(lethe_core_close(core), "lethe_core_close");
  free(inputs);
  free(test_inputs);
  free(logits);
  mnist_free(&train);
  mnist_free(&test);
  if (argc <= 3 && nftw(state, remove_entry, 8, FTW_DEPTH | FTW_PHYS) != 0) perror(state);
  return 0;
}
