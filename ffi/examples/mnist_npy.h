/*
 * mnist_npy.h: reads the MNIST digits of Lethe's tests/data (uint8 .npy files) for the
 * examples and the C tests. Header-only; compiles as C99/C11 and C++.
 *
 * The files are plain .npy (format 1.0, C order): images uint8 [n, 28, 28], labels uint8 [n].
 * The mnist-core bundle's input for pixel byte k is k / 256.0f (see tests/data/README.md).
 */
#ifndef LETHE_MNIST_NPY_H
#define LETHE_MNIST_NPY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mnist_digits {
  size_t n;        /* number of digits */
  size_t pixels;   /* bytes per image (784) */
  uint8_t *images; /* n * pixels bytes, image after image */
  uint8_t *labels; /* n labels, 0-9 */
} mnist_digits;

/*
 * Reads a C-order uint8 .npy file of at most 4 dimensions. On success returns the data
 * (malloc'ed, free() it) and writes the shape to dims[0..*ndim); on failure prints why to
 * stderr and returns NULL.
 */
static inline uint8_t *mnist_npy_read_u8(const char *path, size_t dims[4], size_t *ndim) {
  FILE *f = fopen(path, "rb");
  unsigned char prefix[10];
  char *header = NULL;
  uint8_t *data = NULL;
  size_t header_len, total = 1, count = 0;
  const char *p;
  if (f == NULL) {
    fprintf(stderr, "%s: cannot open\n", path);
    return NULL;
  }
  /* magic "\x93NUMPY", version 1.0 (2-byte header length) or 2.0/3.0 (4-byte). */
  if (fread(prefix, 1, 10, f) != 10 || memcmp(prefix, "\x93NUMPY", 6) != 0) goto bad;
  if (prefix[6] == 1) {
    header_len = (size_t)prefix[8] | (size_t)prefix[9] << 8;
  } else {
    unsigned char more[2];
    if (fread(more, 1, 2, f) != 2) goto bad;
    header_len = (size_t)prefix[8] | (size_t)prefix[9] << 8 | (size_t)more[0] << 16 |
                 (size_t)more[1] << 24;
  }
  header = (char *)malloc(header_len + 1);
  if (header == NULL || fread(header, 1, header_len, f) != header_len) goto bad;
  header[header_len] = '\0';
  if (strstr(header, "'descr': '|u1'") == NULL || strstr(header, "'fortran_order': False") == NULL)
    goto bad;
  p = strstr(header, "'shape': (");
  if (p == NULL) goto bad;
  p += strlen("'shape': (");
  while (*p != ')') {
    char *end;
    unsigned long long v = strtoull(p, &end, 10);
    if (end == p || count == 4) goto bad;
    dims[count++] = (size_t)v;
    total *= (size_t)v;
    p = end;
    while (*p == ',' || *p == ' ') p++;
  }
  data = (uint8_t *)malloc(total > 0 ? total : 1);
  if (data == NULL || fread(data, 1, total, f) != total) goto bad;
  free(header);
  fclose(f);
  *ndim = count;
  return data;
bad:
  fprintf(stderr, "%s: not a C-order uint8 .npy file of at most 4 dimensions\n", path);
  free(header);
  free(data);
  fclose(f);
  return NULL;
}

/* Reads <dir>/<split>_images.npy and <dir>/<split>_labels.npy. Returns 0 on success. */
static inline int mnist_read(const char *dir, const char *split, mnist_digits *out) {
  char path[4096];
  size_t dims[4], ndim, label_dims[4], label_ndim;
  uint8_t *images, *labels;
  snprintf(path, sizeof path, "%s/%s_images.npy", dir, split);
  images = mnist_npy_read_u8(path, dims, &ndim);
  if (images == NULL) return -1;
  snprintf(path, sizeof path, "%s/%s_labels.npy", dir, split);
  labels = mnist_npy_read_u8(path, label_dims, &label_ndim);
  if (labels == NULL || ndim != 3 || label_ndim != 1 || label_dims[0] != dims[0]) {
    fprintf(stderr, "%s/%s_*.npy: expected images [n, 28, 28] and labels [n]\n", dir, split);
    free(images);
    free(labels);
    return -1;
  }
  out->n = dims[0];
  out->pixels = dims[1] * dims[2];
  out->images = images;
  out->labels = labels;
  return 0;
}

static inline void mnist_free(mnist_digits *d) {
  free(d->images);
  free(d->labels);
  d->images = NULL;
  d->labels = NULL;
  d->n = 0;
}

/* The core input for the k digits rows[0..k): k * pixels floats, pixel byte / 256. */
static inline void mnist_inputs(const mnist_digits *d, const size_t *rows, size_t k, float *out) {
  size_t i, j;
  for (i = 0; i < k; i++)
    for (j = 0; j < d->pixels; j++)
      out[i * d->pixels + j] = (float)d->images[rows[i] * d->pixels + j] / 256.0f;
}

#endif /* LETHE_MNIST_NPY_H */
