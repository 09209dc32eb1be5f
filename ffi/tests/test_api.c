/*
 * test_api.c: every function of lethe.h, its success path and its error paths (NULL, n = 0,
 * short buffers and the sizes they report, overlapping arrays, unknown and duplicate ids, NaN
 * inputs, bad options and struct sizes, a broken bundle, a state dir of another bundle, closed
 * and foreign handles, a close that cannot persist), that a failed call changes nothing, that
 * Lethe's warnings reach the log callback, erasing a state dir, the text bundle through
 * named tensors and UTF-8 texts, and the image bundle through PNG and JPEG files.
 *
 *   usage: test_api   (run from the repository root: it reads models/ and tests/data/)
 *
 * Built with -Wall -Wextra -Wpedantic -Werror and run under AddressSanitizer and UBSan.
 */
#define _XOPEN_SOURCE 700
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lethe.h"
#include "mnist_npy.h"

#define BUNDLE "models/mnist-core"
#define OTHER_BUNDLE "models/mobilenetv2-imagenet"
#define TEXT_BUNDLE "models/minilm-l6-sentiment"
#define TEXT_D 384

static char g_tmp[] = "/tmp/lethe-c-test-XXXXXX";
static mnist_digits g_train;
static size_t L, C, D; /* input length, classes, feature dim */

/* A path under the test's temp folder. */
static const char *tmp_path(const char *name) {
  static char paths[16][512];
  static int next;
  char *p = paths[next++ % 16];
  snprintf(p, 512, "%s/%s", g_tmp, name);
  return p;
}

/* The inputs, labels and ids of training rows [first, first + n): id = 1000 + row. */
typedef struct batch {
  size_t n;
  float *inputs;
  uint32_t *labels;
  uint64_t *ids;
} batch;

static batch make_batch(size_t first, size_t n) {
  batch b;
  size_t i, *rows = (size_t *)malloc(n * sizeof(size_t));
  b.n = n;
  b.inputs = (float *)malloc(n * L * sizeof(float));
  b.labels = (uint32_t *)malloc(n * sizeof(uint32_t));
  b.ids = (uint64_t *)malloc(n * sizeof(uint64_t));
  CHECK(rows && b.inputs && b.labels && b.ids);
  for (i = 0; i < n; i++) {
    rows[i] = first + i;
    b.labels[i] = g_train.labels[first + i];
    b.ids[i] = 1000 + first + i;
  }
  mnist_inputs(&g_train, rows, n, b.inputs);
  free(rows);
  return b;
}

static void free_batch(batch *b) {
  free(b->inputs);
  free(b->labels);
  free(b->ids);
}

/* Everything observable about a head: summary, canonical weights, ids, predictions. */
typedef struct snapshot {
  lethe_head_summary info;
  double *w, *b;
  uint64_t *ids;
  size_t n_ids;
  float *logits;
} snapshot;

static snapshot take(lethe_head *head, const batch *probe) {
  snapshot s;
  OK(lethe_head_info(head, &s.info, sizeof s.info));
  s.w = (double *)malloc(C * D * sizeof(double));
  s.b = (double *)malloc(C * sizeof(double));
  s.ids = (uint64_t *)malloc((s.info.samples + 1) * sizeof(uint64_t));
  s.logits = (float *)malloc(probe->n * C * sizeof(float));
  CHECK(s.w && s.b && s.ids && s.logits);
  /* weights first: it finishes a pending re-solve, so the predictions below are canonical. */
  OK(lethe_head_weights(head, s.w, C * D, s.b, C, NULL, NULL));
  OK(lethe_head_ids(head, s.ids, s.info.samples + 1, &s.n_ids));
  OK(lethe_head_predict(head, probe->inputs, probe->n, s.logits, probe->n * C, NULL));
  return s;
}

static void free_snapshot(snapshot *s) {
  free(s->w);
  free(s->b);
  free(s->ids);
  free(s->logits);
}

/* Two snapshots are bit-identical. */
static void expect_same(const snapshot *a, const snapshot *b, size_t n_probe) {
  CHECK(a->info.samples == b->info.samples && a->info.num_classes == b->info.num_classes);
  CHECK(a->info.feature_dim == b->info.feature_dim && a->info.lambda == b->info.lambda);
  CHECK(a->info.target_scale == b->info.target_scale && a->info.backend == b->info.backend);
  CHECK(memcmp(a->w, b->w, C * D * sizeof(double)) == 0);
  CHECK(memcmp(a->b, b->b, C * sizeof(double)) == 0);
  CHECK(a->n_ids == b->n_ids && memcmp(a->ids, b->ids, a->n_ids * sizeof(uint64_t)) == 0);
  CHECK(memcmp(a->logits, b->logits, n_probe * C * sizeof(float)) == 0);
}

static void test_version(void) {
  char macros[64];
  CHECK(lethe_version_number() == LETHE_VERSION_NUMBER);
  CHECK(LETHE_VERSION_NUMBER ==
        LETHE_VERSION_MAJOR * 1000000 + LETHE_VERSION_MINOR * 1000 + LETHE_VERSION_PATCH);
  snprintf(macros, sizeof macros, "%d.%d.%d", LETHE_VERSION_MAJOR, LETHE_VERSION_MINOR,
           LETHE_VERSION_PATCH);
  CHECK(strcmp(lethe_version(), macros) == 0);
}

static void test_status_str(void) {
  lethe_status s, t;
  lethe_options o;
  /* Set a message, then check that lethe_status_str and lethe_version keep it. */
  EXPECT(lethe_options_default(NULL, sizeof o), LETHE_ERROR_NULL_ARGUMENT);
  for (s = LETHE_OK; s <= LETHE_ERROR_KEY; s++) {
    CHECK(lethe_status_str(s) != NULL && lethe_status_str(s)[0] != '\0');
    CHECK(strcmp(lethe_status_str(s), "unknown status") != 0);
    for (t = LETHE_OK; t < s; t++) CHECK(strcmp(lethe_status_str(s), lethe_status_str(t)) != 0);
  }
  CHECK(strcmp(lethe_status_str(LETHE_ERROR_KEY + 1), "unknown status") == 0);
  CHECK(strcmp(lethe_status_str(0xFFFFFFFFu), "unknown status") == 0);
  (void)lethe_version();
  CHECK(strstr(lethe_last_error(), "lethe_options_default") != NULL);
  CHECK(strstr(lethe_last_error(), "`options` is NULL") != NULL);
  /* A success clears the message. */
  OK(lethe_options_default(&o, sizeof o));
  CHECK(strcmp(lethe_last_error(), "") == 0);
}

static void test_options_default(void) {
  lethe_options o, garbage;
  size_t bad_sizes[] = {0, 1, sizeof o - 8, sizeof o + 8, (size_t)0xA5A5A5A5u};
  size_t i;
  memset(&o, 0xA5, sizeof o);
  OK(lethe_options_default(&o, sizeof o));
  CHECK(o.struct_size == sizeof o);
  CHECK(o.ort_library == NULL && o.features == NULL);
  CHECK(o.intra_threads == 0 && o.backend == LETHE_BACKEND_CPU && o.require_gpu == 0);
  CHECK(o.cuda_device == 0);
  CHECK(o.lambda == 0.0 && o.target_scale == 0.0);
  /* A size no lethe.h has had writes nothing. */
  memset(&garbage, 0xA5, sizeof garbage);
  for (i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
    memcpy(&o, &garbage, sizeof o);
    EXPECT_MSG(lethe_options_default(&o, bad_sizes[i]), LETHE_ERROR_INVALID_ARGUMENT,
               "options_size");
    CHECK(memcmp(&o, &garbage, sizeof o) == 0);
  }
}

/* Options are checked before anything is opened: a struct_size that is not one of lethe.h's
 * (0, garbage, a newer header's), and integer fields with values they cannot have. */
static void test_options_checked(void) {
  lethe_options o;
  lethe_core *core = NULL;
  uint64_t sizes[] = {0, 8, sizeof o - 8, sizeof o + 8, 0xA5A5A5A5A5A5A5A5u};
  size_t i;
  for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    OK(lethe_options_default(&o, sizeof o));
    o.struct_size = sizes[i];
    EXPECT_MSG(lethe_core_open(BUNDLE, &o, &core), LETHE_ERROR_INVALID_ARGUMENT,
               "struct_size");
  }
  o.struct_size = sizeof o + 8;
  EXPECT_MSG(lethe_core_open(BUNDLE, &o, &core), LETHE_ERROR_INVALID_ARGUMENT, "newer lethe.h");
  /* require_gpu is an integer: whatever bytes a caller leaves there are checked. */
  OK(lethe_options_default(&o, sizeof o));
  memset(&o.require_gpu, 0xA5, sizeof o.require_gpu);
  EXPECT_MSG(lethe_core_open(BUNDLE, &o, &core), LETHE_ERROR_INVALID_ARGUMENT,
             "require_gpu is 2779096485");
  o.require_gpu = 2;
  EXPECT_MSG(lethe_core_open(BUNDLE, &o, &core), LETHE_ERROR_INVALID_ARGUMENT,
             "require_gpu is 2");
  CHECK(core == NULL);
}

/* The log callback: what it received, guarded by a spin lock (Lethe may log from its own
 * threads). */
#define MAX_LOGGED 64
static struct {
  atomic_flag lock;
  int n;
  lethe_log_level level[MAX_LOGGED];
  char message[MAX_LOGGED][512];
  lethe_status reentry[MAX_LOGGED];
} g_log = {ATOMIC_FLAG_INIT, 0, {0}, {{0}}, {0}};
static int g_log_cookie;

static void log_to_memory(void *user_data, lethe_log_level level, const char *message) {
  /* Replacing the callback from inside it is refused (it would wait for itself). */
  lethe_status reentry = lethe_set_log_callback(NULL, NULL, LETHE_LOG_ERROR);
  CHECK(user_data == &g_log_cookie);
  while (atomic_flag_test_and_set(&g_log.lock)) {
  }
  if (g_log.n < MAX_LOGGED) {
    g_log.level[g_log.n] = level;
    g_log.reentry[g_log.n] = reentry;
    snprintf(g_log.message[g_log.n], sizeof g_log.message[0], "%s", message);
    g_log.n++;
  }
  atomic_flag_clear(&g_log.lock);
}

/* The index of the first message that contains `needle`, or -1. */
static int logged(const char *needle) {
  int i, found = -1;
  while (atomic_flag_test_and_set(&g_log.lock)) {
  }
  for (i = 0; i < g_log.n && found < 0; i++)
    if (strstr(g_log.message[i], needle) != NULL) found = i;
  atomic_flag_clear(&g_log.lock);
  return found;
}

/* Installs the callback for warnings and errors, before any core is opened. */
static void test_log_callback_setup(void) {
  EXPECT_MSG(lethe_set_log_callback(log_to_memory, &g_log_cookie, 0),
             LETHE_ERROR_INVALID_ARGUMENT, "max_level 0");
  EXPECT(lethe_set_log_callback(log_to_memory, &g_log_cookie, LETHE_LOG_TRACE + 1),
         LETHE_ERROR_INVALID_ARGUMENT);
  OK(lethe_set_log_callback(log_to_memory, &g_log_cookie, LETHE_LOG_WARN));
}

/* Asking for CUDA where it cannot be used falls back to the CPU with a warning, which reaches
 * the callback; a core that runs on the GPU has nothing to warn about. */
static void test_gpu_fallback_warns(void) {
  lethe_options o;
  lethe_core *core = NULL;
  lethe_backend backend = 99;
  int i;
  OK(lethe_options_default(&o, sizeof o));
  o.backend = LETHE_BACKEND_CUDA;
  o.intra_threads = 1;
  OK(lethe_core_open(BUNDLE, &o, &core));
  OK(lethe_core_backend(core, &backend));
  OK(lethe_core_close(core));
  if (backend == LETHE_BACKEND_CUDA) {
    printf("test_api: a GPU is usable: no fallback warning to check\n");
    CHECK(logged("core on cpu") < 0);
    return;
  }
  CHECK(backend == LETHE_BACKEND_CPU);
  i = logged("core on cpu");
  if (i < 0) FAIL("the fallback to the CPU was not logged");
  CHECK(g_log.level[i] == LETHE_LOG_WARN);
  CHECK(g_log.reentry[i] == LETHE_ERROR_INVALID_ARGUMENT);
}

/* Runs before any core is open: ONNX Runtime is loaded once per process by the first core. */
static void test_ort_library_not_found(void) {
  lethe_options o;
  lethe_core *core = NULL;
  OK(lethe_options_default(&o, sizeof o));
  o.ort_library = "/nonexistent/libonnxruntime.so";
  EXPECT_MSG(lethe_core_open(BUNDLE, &o, &core), LETHE_ERROR_ORT_LIBRARY,
             "/nonexistent/libonnxruntime.so");
  CHECK(core == NULL);
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  CHECK(f != NULL);
  CHECK(fwrite(data, 1, len, f) == len);
  CHECK(fclose(f) == 0);
}

static void test_core_open_errors(void) {
  static char sentinel;
  lethe_core *const untouched = (lethe_core *)(void *)&sentinel;
  lethe_core *core = untouched;
  lethe_options o;
  char manifest[8192];
  size_t len;
  FILE *f;

  OK(lethe_options_default(&o, sizeof o));
  EXPECT_MSG(lethe_core_open(NULL, &o, &core), LETHE_ERROR_NULL_ARGUMENT, "`bundle_dir`");
  EXPECT_MSG(lethe_core_open(BUNDLE, &o, NULL), LETHE_ERROR_NULL_ARGUMENT, "`out`");
  EXPECT_MSG(lethe_core_open("/nonexistent/bundle", &o, &core), LETHE_ERROR_IO,
             "/nonexistent/bundle");

  o.backend = 7;
  EXPECT_MSG(lethe_core_open(BUNDLE, &o, &core), LETHE_ERROR_INVALID_ARGUMENT, "backend 7");
  o.backend = LETHE_BACKEND_CPU;
  o.require_gpu = 1;
  EXPECT_MSG(lethe_core_open(BUNDLE, &o, &core), LETHE_ERROR_INVALID_ARGUMENT, "require_gpu");
  CHECK(core == untouched);

  /* A manifest that is not a manifest, then a core file that does not match its sha256. */
  CHECK(mkdir(tmp_path("bad-bundle"), 0700) == 0);
  write_file(tmp_path("bad-bundle/manifest.json"), "{}", 2);
  OK(lethe_options_default(&o, sizeof o));
  EXPECT_MSG(lethe_core_open(tmp_path("bad-bundle"), &o, &core), LETHE_ERROR_BUNDLE,
             "manifest.json");
  f = fopen(BUNDLE "/manifest.json", "rb");
  CHECK(f != NULL);
  len = fread(manifest, 1, sizeof manifest, f);
  fclose(f);
  CHECK(len > 0 && len < sizeof manifest);
  write_file(tmp_path("bad-bundle/manifest.json"), manifest, len);
  write_file(tmp_path("bad-bundle/core.onnx"), "not an onnx file", 16);
  EXPECT_MSG(lethe_core_open(tmp_path("bad-bundle"), NULL, &core), LETHE_ERROR_BUNDLE,
             "sha256");
  CHECK(core == untouched);
}

/* require_gpu: a GPU core, or LETHE_ERROR_BACKEND_UNAVAILABLE where no GPU can be used. */
static void test_require_gpu(void) {
  lethe_options o;
  lethe_core *core = NULL;
  lethe_backend backend = 99;
  lethe_status status;
  OK(lethe_options_default(&o, sizeof o));
  o.backend = LETHE_BACKEND_AUTO;
  o.require_gpu = 1;
  status = lethe_core_open(BUNDLE, &o, &core);
  if (status == LETHE_OK) {
    OK(lethe_core_backend(core, &backend));
    CHECK(backend == LETHE_BACKEND_CUDA);
    OK(lethe_core_close(core));
    printf("test_api: a GPU is usable: require_gpu gave a CUDA core\n");
  } else {
    CHECK(status == LETHE_ERROR_BACKEND_UNAVAILABLE && core == NULL);
    CHECK(strstr(lethe_last_error(), "lethe_core_open") != NULL);
  }
}

static void test_core_getters(lethe_core *core) {
  size_t v = 12345;
  lethe_backend backend = 99;
  lethe_core *fake = (lethe_core *)(uintptr_t)0xdead0;
  OK(lethe_core_input_len(core, &L));
  OK(lethe_core_num_classes(core, &C));
  OK(lethe_core_feature_dim(core, NULL, &D));
  CHECK(L == 784 && C == 10 && D == 128);
  OK(lethe_core_backend(core, &backend));
  CHECK(backend == LETHE_BACKEND_CPU); /* the default */
  OK(lethe_core_feature_dim(core, "features", &v));
  CHECK(v == 128);
  OK(lethe_core_feature_dim(core, "conv_features", &v));
  CHECK(v == 3136);

  v = 12345;
  EXPECT_MSG(lethe_core_feature_dim(core, "nope", &v), LETHE_ERROR_INVALID_ARGUMENT, "nope");
  EXPECT(lethe_core_feature_dim(core, "\xff", &v), LETHE_ERROR_INVALID_ARGUMENT);
  EXPECT(lethe_core_input_len(NULL, &v), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_core_input_len(core, NULL), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_core_num_classes(NULL, &v), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_core_num_classes(core, NULL), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_core_feature_dim(NULL, NULL, &v), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_core_feature_dim(core, NULL, NULL), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_core_input_len(fake, &v), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_core_num_classes(fake, &v), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_core_feature_dim(fake, NULL, &v), LETHE_ERROR_INVALID_HANDLE);
  CHECK(v == 12345);
  backend = 99;
  EXPECT(lethe_core_backend(NULL, &backend), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_core_backend(core, NULL), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_core_backend(fake, &backend), LETHE_ERROR_INVALID_HANDLE);
  CHECK(backend == 99);
}

static void test_head_open_errors(lethe_core *core) {
  static char sentinel;
  lethe_head *const untouched = (lethe_head *)(void *)&sentinel;
  lethe_head *head = untouched;
  lethe_options o;
  const char *dir = tmp_path("never-created");

  OK(lethe_options_default(&o, sizeof o));
  EXPECT(lethe_head_open(NULL, dir, &o, &head), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_open(core, NULL, &o, &head), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_open(core, dir, &o, NULL), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_open((lethe_core *)(uintptr_t)0xdead0, dir, &o, &head),
         LETHE_ERROR_INVALID_HANDLE);
  o.lambda = -1.0;
  EXPECT_MSG(lethe_head_open(core, dir, &o, &head), LETHE_ERROR_INVALID_ARGUMENT, "lambda");
  o.lambda = NAN;
  EXPECT(lethe_head_open(core, dir, &o, &head), LETHE_ERROR_INVALID_ARGUMENT);
  o.lambda = 0.0;
  o.target_scale = INFINITY;
  EXPECT(lethe_head_open(core, dir, &o, &head), LETHE_ERROR_INVALID_ARGUMENT);
  o.target_scale = 0.0;
  o.features = "nope";
  EXPECT_MSG(lethe_head_open(core, dir, &o, &head), LETHE_ERROR_INVALID_ARGUMENT, "nope");
  o.features = "\xff";
  EXPECT(lethe_head_open(core, dir, &o, &head), LETHE_ERROR_INVALID_ARGUMENT);
  OK(lethe_options_default(&o, sizeof o));
  o.struct_size = 0;
  EXPECT_MSG(lethe_head_open(core, dir, &o, &head), LETHE_ERROR_INVALID_ARGUMENT, "struct_size");
  o.struct_size = sizeof o + 8;
  EXPECT_MSG(lethe_head_open(core, dir, &o, &head), LETHE_ERROR_INVALID_ARGUMENT,
             "newer lethe.h");
  CHECK(head == untouched);
  CHECK(!path_exists(dir)); /* a failed open creates nothing */
}

/* learn, forget, forget_all, predict, weights, info, ids: success and errors. */
static void test_head_calls(lethe_core *core) {
  lethe_head *head = NULL;
  lethe_head_summary info;
  batch base = make_batch(0, 40), extra = make_batch(40, 10), probe = make_batch(100, 8);
  snapshot before, after;
  float *logits = (float *)malloc(probe.n * C * sizeof(float));
  float *bad = (float *)malloc(L * 2 * sizeof(float));
  double *w = (double *)malloc(C * D * sizeof(double)), b[16];
  uint64_t ids[64], dup[2], unknown = 999999;
  uint32_t labels[2];
  size_t count = 777, needed = 777, w_needed = 777, b_needed = 777, i;
  /* probe inputs followed by room for their logits, for the overlap checks */
  float *shared = (float *)malloc((probe.n * L + probe.n * C) * sizeof(float));
  CHECK(logits && bad && w && shared);
  memcpy(shared, probe.inputs, probe.n * L * sizeof(float));

  OK(lethe_head_open(core, tmp_path("head"), NULL, &head));
  CHECK(path_exists(tmp_path("head")));
  OK(lethe_head_info(head, &info, sizeof info));
  CHECK(info.samples == 0 && info.num_classes == C && info.feature_dim == D);
  CHECK(info.lambda == 10.0 && info.target_scale == 16.0);
  CHECK(info.backend == LETHE_BACKEND_CPU);

  /* An empty head predicts the core's logits: W = 0, b = 0; mnist-core has none for 5-9. */
  OK(lethe_head_predict(head, probe.inputs, probe.n, logits, probe.n * C, NULL));
  for (i = 0; i < probe.n; i++) CHECK(logits[i * C + 7] == 0.0f && logits[i * C + 2] != 0.0f);

  OK(lethe_head_learn(head, base.ids, base.inputs, base.n, base.labels));
  OK(lethe_head_info(head, &info, sizeof info));
  CHECK(info.samples == base.n);
  before = take(head, &probe);
  CHECK(before.n_ids == base.n);
  for (i = 0; i < base.n; i++) CHECK(before.ids[i] == base.ids[i]); /* sorted ascending */

  /* learn: every error, and none changes anything. */
  EXPECT(lethe_head_learn(NULL, base.ids, base.inputs, 1, base.labels),
         LETHE_ERROR_NULL_ARGUMENT);
  EXPECT_MSG(lethe_head_learn(head, NULL, extra.inputs, 1, extra.labels),
             LETHE_ERROR_NULL_ARGUMENT, "`ids`");
  EXPECT_MSG(lethe_head_learn(head, extra.ids, NULL, 1, extra.labels),
             LETHE_ERROR_NULL_ARGUMENT, "`inputs`");
  EXPECT_MSG(lethe_head_learn(head, extra.ids, extra.inputs, 1, NULL),
             LETHE_ERROR_NULL_ARGUMENT, "`labels`");
  EXPECT_MSG(lethe_head_learn(head, extra.ids, extra.inputs, 0, extra.labels),
             LETHE_ERROR_INVALID_ARGUMENT, "n must be");
  /* already learned (the second of two) */
  dup[0] = extra.ids[0];
  dup[1] = base.ids[3];
  memcpy(bad, extra.inputs, L * sizeof(float));
  memcpy(bad + L, extra.inputs + L, L * sizeof(float));
  labels[0] = extra.labels[0];
  labels[1] = extra.labels[1];
  EXPECT_MSG(lethe_head_learn(head, dup, bad, 2, labels), LETHE_ERROR_SAMPLE_ID,
             "already learned");
  /* the same id twice in one call */
  dup[1] = dup[0];
  EXPECT_MSG(lethe_head_learn(head, dup, bad, 2, labels), LETHE_ERROR_SAMPLE_ID, "twice");
  /* a label that is not a class */
  dup[1] = extra.ids[1];
  labels[1] = (uint32_t)C;
  EXPECT_MSG(lethe_head_learn(head, dup, bad, 2, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "not a class");
  labels[1] = extra.labels[1];
  /* NaN and infinite inputs (in the second sample) */
  bad[L + 300] = NAN;
  EXPECT_MSG(lethe_head_learn(head, dup, bad, 2, labels), LETHE_ERROR_INVALID_ARGUMENT, "NaN");
  bad[L + 300] = INFINITY;
  EXPECT(lethe_head_learn(head, dup, bad, 2, labels), LETHE_ERROR_INVALID_ARGUMENT);
  EXPECT(lethe_head_learn((lethe_head *)(uintptr_t)0xdead0, dup, bad, 1, labels),
         LETHE_ERROR_INVALID_HANDLE);
  after = take(head, &probe);
  expect_same(&before, &after, probe.n);
  free_snapshot(&after);

  /* predict: errors write nothing (but the size needed, for a too small buffer). */
  for (i = 0; i < probe.n * C; i++) logits[i] = -7.0f;
  EXPECT(lethe_head_predict(NULL, probe.inputs, probe.n, logits, probe.n * C, &needed),
         LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_predict(head, NULL, probe.n, logits, probe.n * C, &needed),
         LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_predict(head, probe.inputs, probe.n, NULL, probe.n * C, &needed),
         LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_predict(head, probe.inputs, 0, logits, probe.n * C, &needed),
         LETHE_ERROR_INVALID_ARGUMENT);
  EXPECT(lethe_head_predict(head, bad, 2, logits, probe.n * C, &needed),
         LETHE_ERROR_INVALID_ARGUMENT);
  bad[L + 300] = NAN;
  EXPECT(lethe_head_predict(head, bad, 2, logits, probe.n * C, &needed),
         LETHE_ERROR_INVALID_ARGUMENT);
  CHECK(needed == 777);
  /* 8 samples x 10 classes need 80 floats: the call says so in `needed` */
  EXPECT_MSG(lethe_head_predict(head, probe.inputs, probe.n, logits, probe.n * C - 1, &needed),
             LETHE_ERROR_BUFFER_TOO_SMALL, "need 80");
  CHECK(needed == 80);
  EXPECT(lethe_head_predict(head, probe.inputs, probe.n, logits, 0, NULL),
         LETHE_ERROR_BUFFER_TOO_SMALL);
  for (i = 0; i < probe.n * C; i++) CHECK(logits[i] == -7.0f);
  /* a larger buffer than needed: only n * C values are written */
  needed = 777;
  OK(lethe_head_predict(head, probe.inputs, 1, logits, probe.n * C, &needed));
  CHECK(needed == C);
  CHECK(memcmp(logits, before.logits, C * sizeof(float)) == 0);
  CHECK(logits[C] == -7.0f);

  /* Inputs and logits that share memory are refused before Lethe touches either: in place,
   * logits starting inside the inputs, inputs starting inside the logits, and `needed` inside
   * the logits. Adjacent arrays are fine. */
  for (i = 0; i < probe.n * C; i++) logits[i] = -7.0f;
  EXPECT_MSG(lethe_head_predict(head, shared, probe.n, shared, probe.n * C, NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "`inputs` and `logits` overlap");
  EXPECT_MSG(lethe_head_predict(head, shared, probe.n, shared + probe.n * L - 1, probe.n * C,
                                NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "overlap");
  EXPECT_MSG(lethe_head_predict(head, shared + 8, 1, shared, 16, NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "overlap");
  EXPECT_MSG(lethe_head_predict(head, probe.inputs, probe.n, logits, probe.n * C,
                                (size_t *)(void *)(logits + 4)),
             LETHE_ERROR_INVALID_ARGUMENT, "`logits` and `logits_needed` overlap");
  for (i = 0; i < probe.n * C; i++) CHECK(logits[i] == -7.0f);
  CHECK(memcmp(shared, probe.inputs, probe.n * L * sizeof(float)) == 0);
  OK(lethe_head_predict(head, shared, probe.n, shared + probe.n * L, probe.n * C, NULL));
  CHECK(memcmp(shared + probe.n * L, before.logits, probe.n * C * sizeof(float)) == 0);

  /* weights */
  b[C] = -7.0;
  EXPECT(lethe_head_weights(NULL, w, C * D, b, C, &w_needed, &b_needed),
         LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_weights(head, NULL, C * D, b, C, &w_needed, &b_needed),
         LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_weights(head, w, C * D, NULL, C, &w_needed, &b_needed),
         LETHE_ERROR_NULL_ARGUMENT);
  CHECK(w_needed == 777 && b_needed == 777);
  for (i = 0; i < C; i++) b[i] = -7.0;
  /* either buffer too small: both sizes needed are reported */
  EXPECT_MSG(lethe_head_weights(head, w, C * D - 1, b, C, &w_needed, &b_needed),
             LETHE_ERROR_BUFFER_TOO_SMALL, "need 1280");
  CHECK(w_needed == C * D && b_needed == C);
  w_needed = b_needed = 777;
  EXPECT_MSG(lethe_head_weights(head, w, C * D, b, C - 1, &w_needed, &b_needed),
             LETHE_ERROR_BUFFER_TOO_SMALL, "need 10");
  CHECK(w_needed == C * D && b_needed == C);
  EXPECT(lethe_head_weights(head, w, 0, b, 0, NULL, NULL), LETHE_ERROR_BUFFER_TOO_SMALL);
  /* overlapping outputs: w and b, and a size inside W */
  EXPECT_MSG(lethe_head_weights(head, w, C * D, w + C * D - 1, C, NULL, NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "`w` and `b` overlap");
  EXPECT_MSG(lethe_head_weights(head, w, C * D, b, C, (size_t *)(void *)w, NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "`w` and `w_needed` overlap");
  EXPECT_MSG(lethe_head_weights(head, w, C * D, b, C, &w_needed, &w_needed),
             LETHE_ERROR_INVALID_ARGUMENT, "`w_needed` and `b_needed` overlap");
  for (i = 0; i < C; i++) CHECK(b[i] == -7.0);
  w_needed = b_needed = 777;
  OK(lethe_head_weights(head, w, C * D, b, C + 1, &w_needed, &b_needed));
  CHECK(w_needed == C * D && b_needed == C);
  CHECK(memcmp(w, before.w, C * D * sizeof(double)) == 0);
  CHECK(memcmp(b, before.b, C * sizeof(double)) == 0 && b[C] == -7.0);

  /* info and ids */
  EXPECT(lethe_head_info(NULL, &info, sizeof info), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_info(head, NULL, sizeof info), LETHE_ERROR_NULL_ARGUMENT);
  memset(&info, 0xA5, sizeof info);
  EXPECT_MSG(lethe_head_info(head, &info, 0), LETHE_ERROR_INVALID_ARGUMENT, "out_size");
  EXPECT_MSG(lethe_head_info(head, &info, sizeof info + 8), LETHE_ERROR_INVALID_ARGUMENT,
             "newer lethe.h");
  CHECK(info.samples == 0xA5A5A5A5A5A5A5A5u);
  EXPECT(lethe_head_ids(NULL, ids, 64, &count), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT_MSG(lethe_head_ids(head, NULL, 64, &count), LETHE_ERROR_NULL_ARGUMENT, "`ids`");
  EXPECT(lethe_head_ids(head, ids, 64, NULL), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT_MSG(lethe_head_ids(head, ids, 64, (size_t *)(void *)(ids + 3)),
             LETHE_ERROR_INVALID_ARGUMENT, "`ids` and `count` overlap");
  CHECK(count == 777);
  /* too small: `count` says how many there are; (NULL, 0) asks for the number only */
  ids[0] = 5;
  EXPECT_MSG(lethe_head_ids(head, ids, base.n - 1, &count), LETHE_ERROR_BUFFER_TOO_SMALL,
             "need 40");
  CHECK(count == base.n && ids[0] == 5);
  count = 777;
  EXPECT(lethe_head_ids(head, NULL, 0, &count), LETHE_ERROR_BUFFER_TOO_SMALL);
  CHECK(count == base.n);

  /* forget: every error, and none changes anything. */
  EXPECT(lethe_head_forget(NULL, base.ids, 1), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_forget(head, NULL, 1), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_forget(head, base.ids, 0), LETHE_ERROR_INVALID_ARGUMENT);
  EXPECT_MSG(lethe_head_forget(head, &unknown, 1), LETHE_ERROR_SAMPLE_ID, "999999");
  dup[0] = base.ids[0];
  dup[1] = unknown; /* one known, one unknown: all or nothing */
  EXPECT(lethe_head_forget(head, dup, 2), LETHE_ERROR_SAMPLE_ID);
  dup[1] = base.ids[0];
  EXPECT_MSG(lethe_head_forget(head, dup, 2), LETHE_ERROR_SAMPLE_ID, "twice");
  EXPECT(lethe_head_forget_all(NULL), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_forget_all((lethe_head *)(uintptr_t)0xdead0), LETHE_ERROR_INVALID_HANDLE);
  after = take(head, &probe);
  expect_same(&before, &after, probe.n);
  free_snapshot(&after);

  /* Forgetting is exact: learn extra, forget it, and the head is bit-identical to before. */
  OK(lethe_head_learn(head, extra.ids, extra.inputs, extra.n, extra.labels));
  OK(lethe_head_info(head, &info, sizeof info));
  CHECK(info.samples == base.n + extra.n);
  after = take(head, &probe);
  CHECK(memcmp(before.w, after.w, C * D * sizeof(double)) != 0);
  free_snapshot(&after);
  OK(lethe_head_forget(head, extra.ids, extra.n));
  after = take(head, &probe);
  expect_same(&before, &after, probe.n);
  free_snapshot(&after);

  /* forget_all: W = 0, b = 0 exactly, no samples, predictions are the core's again. */
  OK(lethe_head_forget_all(head));
  after = take(head, &probe);
  CHECK(after.info.samples == 0 && after.n_ids == 0);
  count = 777;
  OK(lethe_head_ids(head, NULL, 0, &count));
  CHECK(count == 0);
  for (i = 0; i < C * D; i++) CHECK(after.w[i] == 0.0);
  for (i = 0; i < C; i++) CHECK(after.b[i] == 0.0);
  for (i = 0; i < probe.n; i++) CHECK(after.logits[i * C + 7] == 0.0f);
  free_snapshot(&after);
  OK(lethe_head_forget_all(head)); /* idempotent */

  /* Learned again and closed, then reopened: the same canonical state. */
  OK(lethe_head_learn(head, base.ids, base.inputs, base.n, base.labels));
  after = take(head, &probe);
  expect_same(&before, &after, probe.n);
  free_snapshot(&after);
  OK(lethe_head_close(head));
  OK(lethe_head_open(core, tmp_path("head"), NULL, &head));
  after = take(head, &probe);
  expect_same(&before, &after, probe.n);
  free_snapshot(&after);
  OK(lethe_head_close(head));

  free_snapshot(&before);
  free_batch(&base);
  free_batch(&extra);
  free_batch(&probe);
  free(logits);
  free(bad);
  free(w);
  free(shared);
}

/* A head that learned S and T then forgot T equals, bit for bit, a head that learned only S. */
static void test_forget_equals_never_learned(lethe_core *core) {
  lethe_head *a = NULL, *b = NULL;
  batch s = make_batch(200, 30), t = make_batch(230, 15), probe = make_batch(300, 4);
  snapshot sa, sb;
  lethe_receipt ra, rb, rc;
  OK(lethe_head_open(core, tmp_path("a"), NULL, &a));
  OK(lethe_head_open(core, tmp_path("b"), NULL, &b));
  OK(lethe_head_learn(a, t.ids, t.inputs, 7, t.labels));
  OK(lethe_head_learn(a, s.ids, s.inputs, s.n, s.labels));
  OK(lethe_head_learn(a, t.ids + 7, t.inputs + 7 * L, t.n - 7, t.labels + 7));
  OK(lethe_head_forget(a, t.ids + 3, t.n - 3));
  OK(lethe_head_forget(a, t.ids, 3));
  OK(lethe_head_learn(b, s.ids, s.inputs, s.n, s.labels));
  sa = take(a, &probe);
  sb = take(b, &probe);
  expect_same(&sa, &sb, probe.n);
  /* G8: the receipt after the forgets is the one of the head that never learned t. */
  OK(lethe_head_receipt(a, &ra, sizeof ra));
  OK(lethe_head_receipt(b, &rb, sizeof rb));
  CHECK(memcmp(&ra, &rb, sizeof ra) == 0);
  CHECK(ra.samples == s.n && ra.receipt_version == 1 && ra.algorithm_version >= 1);
  OK(lethe_head_learn(b, t.ids, t.inputs, 1, t.labels));
  OK(lethe_head_receipt(b, &rc, sizeof rc));
  CHECK(memcmp(rc.digest, ra.digest, sizeof ra.digest) != 0);
  CHECK(memcmp(rc.ids_digest, ra.ids_digest, sizeof ra.ids_digest) != 0);
  EXPECT(lethe_head_receipt(NULL, &rc, sizeof rc), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_receipt(b, NULL, sizeof rc), LETHE_ERROR_NULL_ARGUMENT);
  EXPECT(lethe_head_receipt(b, &rc, sizeof rc - 1), LETHE_ERROR_INVALID_ARGUMENT);
  free_snapshot(&sa);
  free_snapshot(&sb);
  OK(lethe_head_close(a));
  OK(lethe_head_close(b));
  free_batch(&s);
  free_batch(&t);
  free_batch(&probe);
}

/* State dirs: locked while open, keep their settings, belong to one bundle. */
static void test_state_dirs(lethe_core *core) {
  lethe_head *head = NULL, *second = NULL;
  lethe_core *other = NULL;
  lethe_options o;
  OK(lethe_options_default(&o, sizeof o));
  o.lambda = 2.5;
  OK(lethe_head_open(core, tmp_path("state"), &o, &head));
  EXPECT_MSG(lethe_head_open(core, tmp_path("state"), &o, &second), LETHE_ERROR_STATE,
             "open");
  CHECK(second == NULL);
  OK(lethe_head_close(head));

  /* Settings are recorded: asking for another lambda is an error, the default is not. */
  o.lambda = 3.0;
  EXPECT_MSG(lethe_head_open(core, tmp_path("state"), &o, &second), LETHE_ERROR_STATE,
             "lambda");
  OK(lethe_head_open(core, tmp_path("state"), NULL, &head));
  {
    lethe_head_summary info;
    OK(lethe_head_info(head, &info, sizeof info));
    CHECK(info.lambda == 2.5);
  }
  OK(lethe_head_close(head));

  /* The state dir of an mnist-core head opened over another bundle's core. */
  OK(lethe_core_open(OTHER_BUNDLE, NULL, &other));
  EXPECT_MSG(lethe_head_open(other, tmp_path("state"), NULL, &second), LETHE_ERROR_STATE,
             "mnist-core");
  CHECK(second == NULL);
  OK(lethe_core_close(other));
}

/* A close that cannot persist (a folder where compaction writes journal.tmp) reports it
 * and still releases the handle and the state dir. Nothing acknowledged is lost: opening the
 * state dir again recovers every sample bit for bit, and warns about the torn journal entry
 * this test appends, as after a crash. */
static void test_close_failure(lethe_core *core) {
  lethe_head *head = NULL;
  lethe_head_summary info;
  batch s = make_batch(500, 20), probe = make_batch(560, 4);
  snapshot before, after;
  static const unsigned char torn[8] = {0};
  char blocker[512];
  FILE *f;
  int i;
  OK(lethe_head_open(core, tmp_path("closefail"), NULL, &head));
  OK(lethe_head_learn(head, s.ids, s.inputs, s.n, s.labels));
  before = take(head, &probe);
  snprintf(blocker, sizeof blocker, "%s", tmp_path("closefail/journal.tmp"));
  CHECK(mkdir(blocker, 0700) == 0);
  EXPECT_MSG(lethe_head_close(head), LETHE_ERROR_IO, "journal.tmp");
  EXPECT(lethe_head_info(head, &info, sizeof info), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_head_close(head), LETHE_ERROR_INVALID_HANDLE);
  CHECK(rmdir(blocker) == 0);

  f = fopen(tmp_path("closefail/journal"), "ab");
  CHECK(f != NULL);
  CHECK(fwrite(torn, 1, sizeof torn, f) == sizeof torn && fclose(f) == 0);
  CHECK(logged("incomplete entry") < 0);
  OK(lethe_head_open(core, tmp_path("closefail"), NULL, &head));
  i = logged("incomplete entry");
  if (i < 0) FAIL("the recovery's warning was not logged");
  CHECK(g_log.level[i] == LETHE_LOG_WARN && strstr(g_log.message[i], "closefail") != NULL);
  CHECK(logged("recovering") < 0); /* an info message: below the level asked for */
  after = take(head, &probe);
  expect_same(&before, &after, probe.n);
  OK(lethe_head_close(head));
  free_snapshot(&before);
  free_snapshot(&after);
  free_batch(&s);
  free_batch(&probe);
}

/* An encrypted state dir (options->key): created with the key, it opens only with it
 * (LETHE_ERROR_KEY otherwise, creating and changing nothing); lethe_head_rekey moves it to a
 * new key, after which the old one is refused and the head serves exactly what it did. */
static void test_encrypted_state_dirs(lethe_core *core) {
  lethe_head *head = NULL, *none = NULL;
  lethe_options o;
  batch b = make_batch(500, 8), probe = make_batch(560, 4);
  snapshot before, rekeyed, reopened;
  uint8_t key[32], new_key[32];
  const char *dir = tmp_path("encrypted");
  memset(key, 0x5a, sizeof key);
  memset(new_key, 0xa5, sizeof new_key);
  OK(lethe_options_default(&o, sizeof o));
  CHECK(o.key == NULL && o.key_len == 0);
  o.key = key;
  o.key_len = 31;
  EXPECT_MSG(lethe_head_open(core, dir, &o, &none), LETHE_ERROR_KEY, "32 bytes");
  o.key = NULL;
  o.key_len = 32;
  EXPECT_MSG(lethe_head_open(core, dir, &o, &none), LETHE_ERROR_KEY, "NULL");
  CHECK(none == NULL && !path_exists(dir));
  o.key = key;
  OK(lethe_head_open(core, dir, &o, &head));
  OK(lethe_head_learn(head, b.ids, b.inputs, b.n, b.labels));
  before = take(head, &probe);
  EXPECT_MSG(lethe_head_rekey(head, new_key, 16), LETHE_ERROR_KEY, "32 bytes");
  EXPECT(lethe_head_rekey(head, NULL, 32), LETHE_ERROR_NULL_ARGUMENT);
  OK(lethe_head_close(head));

  EXPECT_MSG(lethe_head_open(core, dir, NULL, &none), LETHE_ERROR_KEY, "encrypted");
  o.key = new_key;
  EXPECT_MSG(lethe_head_open(core, dir, &o, &none), LETHE_ERROR_KEY, "does not open");
  CHECK(none == NULL);
  o.key = key;
  OK(lethe_head_open(core, dir, &o, &head));
  OK(lethe_head_rekey(head, new_key, sizeof new_key));
  rekeyed = take(head, &probe);
  expect_same(&before, &rekeyed, probe.n);
  OK(lethe_head_close(head));
  EXPECT_MSG(lethe_head_open(core, dir, &o, &none), LETHE_ERROR_KEY, "does not open");
  o.key = new_key;
  OK(lethe_head_open(core, dir, &o, &head));
  reopened = take(head, &probe);
  expect_same(&before, &reopened, probe.n);
  OK(lethe_head_close(head));

  /* A state dir without a key refuses one, and has nothing to rekey. */
  o.key = key;
  EXPECT_MSG(lethe_head_open(core, tmp_path("state"), &o, &none), LETHE_ERROR_KEY,
             "not encrypted");
  OK(lethe_head_open(core, tmp_path("state"), NULL, &head));
  EXPECT_MSG(lethe_head_rekey(head, key, sizeof key), LETHE_ERROR_KEY, "not encrypted");
  OK(lethe_head_close(head));
  free_snapshot(&before);
  free_snapshot(&rekeyed);
  free_snapshot(&reopened);
  free_batch(&b);
  free_batch(&probe);
}

/* Erasing a state dir: refused while a head has it open; then every file and the folder go,
 * also when the dir cannot be opened (here: a damaged meta.json); a missing folder is fine; a
 * head erases its own state dir with lethe_head_erase. */
static void test_state_erase(lethe_core *core) {
  lethe_head *head = NULL;
  batch b = make_batch(500, 3);
  const char *dir = tmp_path("erase");
  char meta[600];
  EXPECT(lethe_state_erase(NULL), LETHE_ERROR_NULL_ARGUMENT);
  OK(lethe_head_open(core, dir, NULL, &head));
  OK(lethe_head_learn(head, b.ids, b.inputs, b.n, b.labels));
  EXPECT_MSG(lethe_state_erase(dir), LETHE_ERROR_STATE, "forget-all");
  OK(lethe_head_close(head));
  snprintf(meta, sizeof meta, "%s/meta.json", dir);
  write_file(meta, "{", 1);
  EXPECT(lethe_head_open(core, dir, NULL, &head), LETHE_ERROR_STATE);
  CHECK(path_exists(dir));
  OK(lethe_state_erase(dir));
  CHECK(!path_exists(dir));
  OK(lethe_state_erase(dir));
  /* The path is free for a new, empty head. */
  OK(lethe_head_open(core, dir, NULL, &head));
  {
    lethe_head_summary info;
    OK(lethe_head_info(head, &info, sizeof info));
    CHECK(info.samples == 0);
  }
  OK(lethe_head_close(head));
  /* Erased through its open head: the files and the folder go, and the handle is released. */
  OK(lethe_head_erase(NULL));
  OK(lethe_head_open(core, dir, NULL, &head));
  OK(lethe_head_learn(head, b.ids, b.inputs, b.n, b.labels));
  OK(lethe_head_erase(head));
  CHECK(!path_exists(dir));
  EXPECT(lethe_head_close(head), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_head_erase(head), LETHE_ERROR_INVALID_HANDLE);
  free_batch(&b);
}

/* A head's canonical weights equal `w` (3 x TEXT_D) and `b` bit for bit. */
static void expect_text_weights(lethe_head *head, const double *w, const double *b) {
  double w2[3 * TEXT_D], b2[3];
  OK(lethe_head_weights(head, w2, 3 * TEXT_D, b2, 3, NULL, NULL));
  CHECK(memcmp(w, w2, sizeof w2) == 0 && memcmp(b, b2, sizeof b2) == 0);
}

/* The text bundle: the same samples learned from UTF-8 texts and from named int64 tensors
 * holding their token ids give bit-identical heads and logits; every tensor that does not
 * match the manifest is refused, naming what differs, with the head unchanged; forgetting
 * equals never having learned; an image bundle refuses text and takes its float32 tensor. */
static void test_text_bundle(lethe_core *image_core) {
  const char *texts[3] = {"hello world", "my flight was cancelled again", "what a great day"};
  /* Their token ids in the bundle's tokenizer.json ([CLS] = 101 ... [SEP] = 102), padded to
   * the longest with id 0 and mask 0, as Lethe pads a batch of texts. */
  int64_t ids_in[3 * 7] = {101, 7592, 2088, 102,  0,    0,    0,    /* */
                           101, 2026, 3462, 2001, 8014, 2153, 102,  /* */
                           101, 2054, 1037, 2307, 2154, 102,  0};
  int64_t mask_in[3 * 7] = {1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0};
  int64_t shape[2] = {3, 7}, short_shape[2] = {2, 7};
  int32_t ids32[3 * 7] = {0};
  const uint64_t ids[3] = {1, 2, 3}, new_ids[3] = {4, 5, 6};
  const uint32_t labels[3] = {1, 0, 2};
  const char *bad_texts[2] = {"fine", NULL};
  const char *not_utf8[1] = {"caf\xe9"};
  lethe_core *core = NULL;
  lethe_head *a = NULL, *b = NULL, *c = NULL;
  lethe_options o;
  lethe_tensor in[2], bad[2];
  float from_text[9], from_tensors[9], logits[9];
  double w[3 * TEXT_D], bias[3];
  size_t v = 1, need = 0;

  OK(lethe_options_default(&o, sizeof o));
  o.intra_threads = 1;
  OK(lethe_core_open(TEXT_BUNDLE, &o, &core));
  /* Not one float32 input: the float shorthands have no input length. */
  OK(lethe_core_input_len(core, &v));
  CHECK(v == 0);
  OK(lethe_core_num_classes(core, &v));
  CHECK(v == 3);
  OK(lethe_core_feature_dim(core, NULL, &v));
  CHECK(v == TEXT_D);

  in[0].struct_size = sizeof in[0];
  in[0].name = "input_ids";
  in[0].dtype = LETHE_DTYPE_INT64;
  in[0].rank = 2;
  in[0].shape = shape;
  in[0].data = ids_in;
  in[0].byte_len = sizeof ids_in;
  in[1] = in[0];
  in[1].name = "attention_mask";
  in[1].data = mask_in;

  OK(lethe_head_open(core, tmp_path("text-a"), NULL, &a));
  OK(lethe_head_open(core, tmp_path("text-b"), NULL, &b));
  OK(lethe_head_learn_text(a, ids, texts, 3, labels));
  OK(lethe_head_learn_tensors(b, ids, in, 2, 3, labels));
  OK(lethe_head_weights(a, w, 3 * TEXT_D, bias, 3, NULL, NULL));
  expect_text_weights(b, w, bias);
  OK(lethe_head_predict_text(a, texts, 3, from_text, 9, &need));
  CHECK(need == 9);
  OK(lethe_head_predict_tensors(b, in, 2, 3, from_tensors, 9, NULL));
  CHECK(memcmp(from_text, from_tensors, sizeof from_text) == 0);
  CHECK(from_text[0] != from_text[3] || from_text[1] != from_text[4]);

  /* Tensors that do not match the manifest: refused, naming what differs. */
  memcpy(bad, in, sizeof bad);
  bad[1].name = "mask";
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "no input \"mask\"");
  EXPECT_MSG(lethe_head_predict_tensors(b, bad, 2, 3, logits, 9, NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "input_ids (int64 [n, seq])");
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, in, 1, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "\"attention_mask\" is missing");
  memcpy(bad, in, sizeof bad);
  bad[1].name = "input_ids";
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "given twice");
  memcpy(bad, in, sizeof bad);
  bad[0].dtype = LETHE_DTYPE_INT32;
  bad[0].data = ids32;
  bad[0].byte_len = sizeof ids32;
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "is int32, the core takes int64");
  bad[0].dtype = 3; /* ONNX INT8: not a LETHE_DTYPE_* */
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "LETHE_DTYPE_");
  memcpy(bad, in, sizeof bad);
  bad[0].byte_len -= 1;
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "bytes, got");
  memcpy(bad, in, sizeof bad);
  bad[1].shape = short_shape;
  bad[1].byte_len = 2 * 7 * sizeof(int64_t);
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "same batch size");
  memcpy(bad, in, sizeof bad);
  bad[0].rank = 1;
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "[n, seq]");
  memcpy(bad, in, sizeof bad);
  bad[1].struct_size = 8;
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "struct_size");
  bad[0].struct_size = 8;
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "struct_size");
  memcpy(bad, in, sizeof bad);
  bad[1].name = NULL;
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_NULL_ARGUMENT,
             "inputs[1].name");
  bad[1] = in[1];
  bad[1].data = NULL;
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, bad, 2, 3, labels), LETHE_ERROR_NULL_ARGUMENT,
             "inputs[1].data");
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, in, 0, 3, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "num_inputs");
  EXPECT_MSG(lethe_head_learn_tensors(b, new_ids, in, 2, 2, labels), LETHE_ERROR_INVALID_ARGUMENT,
             "3 samples but there are 2 ids");
  EXPECT_MSG(lethe_head_predict_tensors(b, in, 2, 2, logits, 9, NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "n is 2");
  EXPECT_MSG(lethe_head_predict_tensors(b, in, 2, 3, logits, 8, &need),
             LETHE_ERROR_BUFFER_TOO_SMALL, "logits");
  CHECK(need == 9);
  /* Logits written over an input's data. */
  EXPECT_MSG(lethe_head_predict_tensors(b, in, 2, 3, (float *)(void *)mask_in, 9, NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "overlap");
  EXPECT_MSG(lethe_head_learn_text(a, new_ids, bad_texts, 2, labels), LETHE_ERROR_NULL_ARGUMENT,
             "texts[1]");
  EXPECT_MSG(lethe_head_predict_text(a, not_utf8, 1, logits, 9, NULL),
             LETHE_ERROR_INVALID_ARGUMENT, "UTF-8");
  EXPECT_MSG(lethe_head_predict_text(a, texts, 3, logits, 8, NULL), LETHE_ERROR_BUFFER_TOO_SMALL,
             "logits");
  /* The float32 shorthands name what the core takes. */
  EXPECT_MSG(lethe_head_predict(a, from_tensors, 1, logits, 9, NULL), LETHE_ERROR_INVALID_ARGUMENT,
             "or text");
  expect_text_weights(a, w, bias);
  expect_text_weights(b, w, bias);
  CHECK(mask_in[4] == 0 && mask_in[20] == 0); /* the overlap check wrote nothing */

  /* Forget == never learned: learned in two calls, one forgotten, vs the other call alone
   * (the same batches, so the same features). */
  OK(lethe_head_open(core, tmp_path("text-c"), NULL, &c));
  OK(lethe_head_forget_all(a));
  {
    const char *first[2] = {texts[0], texts[2]};
    const uint64_t first_ids[2] = {1, 3};
    const uint32_t first_labels[2] = {1, 2};
    OK(lethe_head_learn_text(a, first_ids, first, 2, first_labels));
    OK(lethe_head_learn_text(a, ids + 1, texts + 1, 1, labels + 1));
    OK(lethe_head_forget(a, ids + 1, 1));
    OK(lethe_head_learn_text(c, first_ids, first, 2, first_labels));
  }
  OK(lethe_head_weights(c, w, 3 * TEXT_D, bias, 3, NULL, NULL));
  expect_text_weights(a, w, bias);
  OK(lethe_head_close(a));
  OK(lethe_head_close(b));
  OK(lethe_head_close(c));
  OK(lethe_core_close(core));

  /* An image bundle: no text; its float32 input as a named tensor equals the shorthand. */
  {
    batch two = make_batch(500, 2);
    int64_t image_shape[4] = {2, 1, 28, 28};
    lethe_tensor image;
    float *shorthand = (float *)malloc(2 * C * sizeof(float));
    float *named = (float *)malloc(2 * C * sizeof(float));
    CHECK(shorthand && named);
    OK(lethe_head_open(image_core, tmp_path("text-image"), NULL, &a));
    EXPECT_MSG(lethe_head_learn_text(a, ids, texts, 1, labels), LETHE_ERROR_INVALID_ARGUMENT,
               "does not take text");
    OK(lethe_head_learn(a, two.ids, two.inputs, 2, two.labels));
    image.struct_size = sizeof image;
    image.name = "image";
    image.dtype = LETHE_DTYPE_FLOAT32;
    image.rank = 4;
    image.shape = image_shape;
    image.data = two.inputs;
    image.byte_len = 2 * L * sizeof(float);
    OK(lethe_head_predict(a, two.inputs, 2, shorthand, 2 * C, NULL));
    OK(lethe_head_predict_tensors(a, &image, 1, 2, named, 2 * C, NULL));
    CHECK(memcmp(shorthand, named, 2 * C * sizeof(float)) == 0);
    image.dtype = LETHE_DTYPE_FLOAT16;
    image.byte_len = 2 * L * 2;
    EXPECT_MSG(lethe_head_predict_tensors(a, &image, 1, 2, named, 2 * C, NULL),
               LETHE_ERROR_INVALID_ARGUMENT, "is float16, the core takes float32");
    OK(lethe_head_close(a));
    free(shorthand);
    free(named);
    free_batch(&two);
  }
}

/* The whole file at `path`, malloc'd; its size in `*len`. */
static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  unsigned char *bytes;
  long size;
  CHECK(f != NULL);
  CHECK(fseek(f, 0, SEEK_END) == 0);
  size = ftell(f);
  CHECK(size > 0 && fseek(f, 0, SEEK_SET) == 0);
  bytes = (unsigned char *)malloc((size_t)size);
  CHECK(bytes != NULL && fread(bytes, 1, (size_t)size, f) == (size_t)size);
  fclose(f);
  *len = (size_t)size;
  return bytes;
}

/* The image bundle: real PNG and JPEG files learned and predicted; a batch predicts what each
 * file alone predicts; forget-all leaves zero logits (the bundle has no core logits); a NULL
 * file, a file that is not an image and a short buffer are errors that change nothing; a
 * bundle without image preprocessing refuses files. */
static void test_image_bundle(lethe_core *digits_core) {
  const char *paths[3] = {"tests/data/photo_china.png", "tests/data/digit_7.png",
                          "tests/data/photo_flower.jpg"};
  const unsigned char *files[3];
  size_t lens[3], c, i;
  uint64_t ids[3] = {1, 2, 3};
  uint32_t labels[3] = {4, 7, 9};
  const unsigned char not_image[5] = {'h', 'e', 'l', 'l', 'o'};
  const unsigned char *bad[2];
  size_t bad_lens[2];
  float batch[30], alone[10], after[30];
  lethe_core *core = NULL;
  lethe_head *head = NULL;
  lethe_options o;
  OK(lethe_options_default(&o, sizeof o));
  o.intra_threads = 1;
  OK(lethe_core_open(OTHER_BUNDLE, &o, &core));
  OK(lethe_core_num_classes(core, &c));
  CHECK(c == 10);
  for (i = 0; i < 3; i++) files[i] = read_file(paths[i], &lens[i]);
  OK(lethe_head_open(core, tmp_path("images"), NULL, &head));
  OK(lethe_head_learn_images(head, ids, files, lens, 3, labels));
  OK(lethe_head_predict_images(head, files, lens, 3, batch, 30, NULL));
  for (i = 0; i < 3; i++) {
    size_t best = 0, k;
    OK(lethe_head_predict_images(head, files + i, lens + i, 1, alone, 10, NULL));
    CHECK(memcmp(alone, batch + 10 * i, sizeof alone) == 0);
    for (k = 1; k < 10; k++)
      if (alone[k] > alone[best]) best = k;
    CHECK(best == labels[i]); /* each learned image is predicted as its own label */
  }

  bad[0] = files[0];
  bad[1] = NULL;
  bad_lens[0] = lens[0];
  bad_lens[1] = 5;
  EXPECT_MSG(lethe_head_learn_images(head, ids, bad, bad_lens, 2, labels),
             LETHE_ERROR_NULL_ARGUMENT, "files[1]");
  bad[1] = not_image;
  {
    uint64_t new_ids[2] = {10, 11};
    EXPECT_MSG(lethe_head_learn_images(head, new_ids, bad, bad_lens, 2, labels),
               LETHE_ERROR_INVALID_ARGUMENT, "image 1: not a PNG or JPEG");
  }
  EXPECT_MSG(lethe_head_predict_images(head, files, lens, 3, after, 29, NULL),
             LETHE_ERROR_BUFFER_TOO_SMALL, NULL);
  OK(lethe_head_predict_images(head, files, lens, 3, after, 30, NULL));
  CHECK(memcmp(after, batch, sizeof batch) == 0); /* the failed calls changed nothing */

  OK(lethe_head_forget_all(head));
  OK(lethe_head_predict_images(head, files, lens, 3, after, 30, NULL));
  for (i = 0; i < 30; i++) CHECK(after[i] == 0.0f);
  OK(lethe_head_close(head));
  OK(lethe_core_close(core));

  OK(lethe_head_open(digits_core, tmp_path("images-digits"), NULL, &head));
  EXPECT_MSG(lethe_head_learn_images(head, ids, files, lens, 1, labels),
             LETHE_ERROR_INVALID_ARGUMENT, "does not take image files");
  OK(lethe_head_close(head));
  for (i = 0; i < 3; i++) free((void *)files[i]);
}

/* Handles: NULL closes are no-ops; closed, twice-closed and foreign handles are errors. */
static void test_handles(void) {
  lethe_core *core = NULL;
  lethe_head *head = NULL;
  lethe_options o;
  batch one = make_batch(400, 1);
  float logits[16];
  size_t v;

  OK(lethe_core_close(NULL));
  OK(lethe_head_close(NULL));

  OK(lethe_options_default(&o, sizeof o));
  o.intra_threads = 1;
  OK(lethe_core_open(BUNDLE, &o, &core));
  OK(lethe_head_open(core, tmp_path("handles"), &o, &head));
  /* A core handle is not a head handle, and the reverse. */
  EXPECT_MSG(lethe_head_close((lethe_head *)(void *)core), LETHE_ERROR_INVALID_HANDLE,
             "lethe_head");
  EXPECT(lethe_core_close((lethe_core *)(void *)head), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_core_input_len((lethe_core *)(void *)head, &v), LETHE_ERROR_INVALID_HANDLE);

  /* The head keeps its core: closing the core first leaves the head working. */
  OK(lethe_core_close(core));
  EXPECT(lethe_core_close(core), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_core_input_len(core, &v), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_head_open(core, tmp_path("handles2"), NULL, &head), LETHE_ERROR_INVALID_HANDLE);
  OK(lethe_head_learn(head, one.ids, one.inputs, 1, one.labels));
  OK(lethe_head_predict(head, one.inputs, 1, logits, 16, NULL));

  OK(lethe_head_close(head));
  EXPECT(lethe_head_close(head), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_head_predict(head, one.inputs, 1, logits, 16, NULL), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_head_learn(head, one.ids, one.inputs, 1, one.labels), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_head_forget(head, one.ids, 1), LETHE_ERROR_INVALID_HANDLE);
  EXPECT(lethe_head_forget_all(head), LETHE_ERROR_INVALID_HANDLE);
  free_batch(&one);
}

int main(void) {
  lethe_core *core = NULL;
  lethe_options o;
  if (mkdtemp(g_tmp) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  CHECK(mnist_read("tests/data", "train", &g_train) == 0);

  test_version();
  test_status_str();
  test_options_default();
  test_options_checked();
  test_log_callback_setup();
  test_ort_library_not_found();
  test_core_open_errors();
  test_gpu_fallback_warns();

  OK(lethe_options_default(&o, sizeof o));
  o.intra_threads = 1;
  OK(lethe_core_open(BUNDLE, &o, &core));
  test_core_getters(core);
  test_require_gpu();
  test_head_open_errors(core);
  test_head_calls(core);
  test_forget_equals_never_learned(core);
  test_state_dirs(core);
  test_close_failure(core);
  test_encrypted_state_dirs(core);
  test_state_erase(core);
  test_text_bundle(core);
  test_image_bundle(core);
  OK(lethe_core_close(core));
  test_handles();
  OK(lethe_set_log_callback(NULL, NULL, 0));

  mnist_free(&g_train);
  remove_tree(g_tmp);
  printf("test_api: ok\n");
  return 0;
}
