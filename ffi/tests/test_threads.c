/*
 * test_threads.c: G6 through the C API. Several threads predict (and read the weights) while
 * another thread learns and forgets the same samples over and over. Every prediction must be
 * the prediction of the old or of the new weights for the whole batch, never a mix, and every
 * weights read must be bit-identical to one of the two canonical states. Each thread's
 * lethe_last_error() is its own.
 *
 *   usage: test_threads   (run from the repository root)
 *
 * Built with -Wall -Wextra -Wpedantic -Werror and run under AddressSanitizer and UBSan.
 */
#define _XOPEN_SOURCE 700
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "lethe.h"
#include "mnist_npy.h"

#define PREDICTORS 4
#define ROUNDS 12 /* learn + forget cycles */
#define BASE 40   /* samples learned before the threads start */
#define EXTRA 12  /* samples learned and forgotten by the writer */
#define PROBE 6   /* samples per prediction */

/* Served weights before the background re-solve differ from the canonical ones by rounding
 * only; two predictions of the same state agree to this, two states differ by far more. */
#define SAME_STATE_TOL 1e-3f

static lethe_head *g_head;
static size_t L, C, D;
static float *g_probe;              /* PROBE inputs */
static float *g_expected[2];        /* logits of the probe: [0] base, [1] base + extra */
static double *g_w[2], *g_b[2];     /* canonical weights of the two states */
static atomic_int g_done;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static long g_seen[2], g_weights_seen[2];

static int matches(const float *logits, const float *expected) {
  size_t i;
  for (i = 0; i < PROBE * C; i++)
    if (fabsf(logits[i] - expected[i]) > SAME_STATE_TOL * (1.0f + fabsf(expected[i]))) return 0;
  return 1;
}

static void *predictor(void *arg) {
  float *logits = (float *)malloc(PROBE * C * sizeof(float));
  long seen[2] = {0, 0};
  int id = (int)(intptr_t)arg, stop = 0;
  CHECK(logits != NULL);
  while (!stop) {
    stop = atomic_load(&g_done);
    OK(lethe_head_predict(g_head, g_probe, PROBE, logits, PROBE * C, NULL));
    if (matches(logits, g_expected[0]))
      seen[0]++;
    else if (matches(logits, g_expected[1]))
      seen[1]++;
    else
      FAIL("predictor %d: a prediction that is neither the old nor the new weights'", id);
    /* This thread's error message is its own, whatever the other threads do. */
    EXPECT_MSG(lethe_head_predict(g_head, g_probe, 0, logits, PROBE * C, NULL),
               LETHE_ERROR_INVALID_ARGUMENT, "n must be");
    CHECK(strstr(lethe_last_error(), "lethe_head_predict: n must be") != NULL);
  }
  pthread_mutex_lock(&g_lock);
  g_seen[0] += seen[0];
  g_seen[1] += seen[1];
  pthread_mutex_unlock(&g_lock);
  free(logits);
  return NULL;
}

static void *weights_reader(void *arg) {
  double *w = (double *)malloc(C * D * sizeof(double)), *b = (double *)malloc(C * sizeof(double));
  lethe_head_summary info;
  int stop = 0, k;
  (void)arg;
  CHECK(w && b);
  while (!stop) {
    stop = atomic_load(&g_done);
    OK(lethe_head_weights(g_head, w, C * D, b, C, NULL, NULL));
    for (k = 0; k < 2; k++)
      if (memcmp(w, g_w[k], C * D * sizeof(double)) == 0 &&
          memcmp(b, g_b[k], C * sizeof(double)) == 0)
        break;
    if (k == 2) FAIL("weights that are neither state's canonical weights");
    g_weights_seen[k]++;
    OK(lethe_head_info(g_head, &info, sizeof info));
    CHECK(info.samples == BASE || info.samples == BASE + EXTRA);
  }
  free(w);
  free(b);
  return NULL;
}

/* The canonical weights and the probe's logits in the current state (no thread running). */
static void record_state(int k) {
  g_w[k] = (double *)malloc(C * D * sizeof(double));
  g_b[k] = (double *)malloc(C * sizeof(double));
  g_expected[k] = (float *)malloc(PROBE * C * sizeof(float));
  CHECK(g_w[k] && g_b[k] && g_expected[k]);
  /* canonical from here on */
  OK(lethe_head_weights(g_head, g_w[k], C * D, g_b[k], C, NULL, NULL));
  OK(lethe_head_predict(g_head, g_probe, PROBE, g_expected[k], PROBE * C, NULL));
}

int main(void) {
  char tmp[] = "/tmp/lethe-c-threads-XXXXXX";
  lethe_core *core = NULL;
  lethe_options o;
  mnist_digits train;
  size_t rows[BASE + EXTRA + PROBE], i;
  uint64_t ids[BASE + EXTRA];
  uint32_t labels[BASE + EXTRA];
  float *inputs, gap = 0.0f;
  pthread_t threads[PREDICTORS + 1];
  struct timespec pause = {0, 5 * 1000 * 1000}; /* 5 ms */
  int round;

  CHECK(mkdtemp(tmp) != NULL);
  CHECK(mnist_read("tests/data", "train", &train) == 0);
  OK(lethe_options_default(&o, sizeof o));
  o.intra_threads = 1;
  OK(lethe_core_open("models/mnist-core", &o, &core));
  OK(lethe_core_input_len(core, &L));
  OK(lethe_core_num_classes(core, &C));
  OK(lethe_core_feature_dim(core, NULL, &D));
  OK(lethe_head_open(core, tmp, &o, &g_head));
  OK(lethe_core_close(core)); /* the head keeps it */

  for (i = 0; i < BASE + EXTRA + PROBE; i++) rows[i] = 500 + i;
  inputs = (float *)malloc((BASE + EXTRA) * L * sizeof(float));
  g_probe = (float *)malloc(PROBE * L * sizeof(float));
  CHECK(inputs && g_probe);
  mnist_inputs(&train, rows, BASE + EXTRA, inputs);
  mnist_inputs(&train, rows + BASE + EXTRA, PROBE, g_probe);
  for (i = 0; i < BASE + EXTRA; i++) {
    ids[i] = i;
    labels[i] = train.labels[rows[i]];
  }

  /* The two states the writer moves between, recorded single-threaded. */
  OK(lethe_head_learn(g_head, ids, inputs, BASE, labels));
  record_state(0);
  OK(lethe_head_learn(g_head, ids + BASE, inputs + BASE * L, EXTRA, labels + BASE));
  record_state(1);
  OK(lethe_head_forget(g_head, ids + BASE, EXTRA));
  for (i = 0; i < PROBE * C; i++)
    if (fabsf(g_expected[0][i] - g_expected[1][i]) > gap)
      gap = fabsf(g_expected[0][i] - g_expected[1][i]);
  /* The test can only tell the states apart if learning moved the logits well past the
   * tolerance. */
  CHECK(gap > 100 * SAME_STATE_TOL);

  for (i = 0; i < PREDICTORS; i++)
    CHECK(pthread_create(&threads[i], NULL, predictor, (void *)(intptr_t)i) == 0);
  CHECK(pthread_create(&threads[PREDICTORS], NULL, weights_reader, NULL) == 0);
  for (round = 0; round < ROUNDS; round++) {
    /* Stay a moment in each state so that the readers see both. */
    OK(lethe_head_learn(g_head, ids + BASE, inputs + BASE * L, EXTRA, labels + BASE));
    nanosleep(&pause, NULL);
    OK(lethe_head_forget(g_head, ids + BASE, EXTRA));
    nanosleep(&pause, NULL);
  }
  atomic_store(&g_done, 1);
  for (i = 0; i <= PREDICTORS; i++) CHECK(pthread_join(threads[i], NULL) == 0);

  CHECK(g_seen[0] > 0 && g_seen[1] > 0); /* the readers did overlap the writer */
  OK(lethe_head_close(g_head));
  printf("test_threads: ok (%ld predictions of the old state, %ld of the new; %ld and %ld "
         "weight reads)\n",
         g_seen[0], g_seen[1], g_weights_seen[0], g_weights_seen[1]);
  for (i = 0; i < 2; i++) {
    free(g_w[i]);
    free(g_b[i]);
    free(g_expected[i]);
  }
  free(inputs);
  free(g_probe);
  mnist_free(&train);
  remove_tree(tmp);
  return 0;
}
