// test_cpp.cpp: lethe.hpp, the C++ wrapper. RAII and moves, exceptions carrying the status and
// the message, std::vector overloads (and std::span ones when built as C++20), sizes checked
// before calling Lethe, the same learn/forget exactness as through the C API, a close that
// cannot persist, Lethe's warnings reaching a std::function, the text bundle through
// lethe::Tensor views and std::string texts, and the image bundle through PNG files.
//
//   usage: test_cpp   (run from the repository root)
//
// Built as C++17 and C++20 with -Wall -Wextra -Wpedantic -Werror, run under ASan and UBSan.

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "lethe.hpp"
#include "mnist_npy.h"

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::fprintf(stderr, "%s:%d: FAILED: CHECK(%s)\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

// `expr` throws a lethe::Error with status `want` whose message contains `needle`.
#define CHECK_THROWS(expr, want, needle)                                                 \
  do {                                                                                   \
    bool thrown_ = false;                                                                \
    try {                                                                                \
      expr;                                                                              \
    } catch (const lethe::Error &e) {                                                    \
      thrown_ = true;                                                                    \
      if (e.status() != (want) ||   std::strstr(e.what(), (needle)) == nullptr) {        \
        std::fprintf(stderr, "%s:%d: %s threw %u: %s\n", __FILE__, __LINE__, #expr,      \
                     static_cast<unsigned>(e.status()), e.what());                       \
        std::exit(1);                                                                    \
      }                                                                                  \
    }                                                                                    \
    if (!thrown_) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s did not throw\n", __FILE__, __LINE__, #expr);      \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

namespace fs = std::filesystem;

namespace {

struct Batch {
  std::vector<std::uint64_t> ids;
  std::vector<float> inputs;
  std::vector<std::uint32_t> labels;
};

Batch batch(const mnist_digits &d, std::size_t first, std::size_t n) {
  Batch b;
  std::vector<std::size_t> rows;
  for (std::size_t i = first; i < first + n; i++) {
    rows.push_back(i);
    b.ids.push_back(5000 + i);
    b.labels.push_back(d.labels[i]);
  }
  b.inputs.resize(n * d.pixels);
  mnist_inputs(&d, rows.data(), n, b.inputs.data());
  return b;
}

}  // namespace

int main() {
  fs::path tmp = fs::temp_directory_path() / ("lethe-cpp-test-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  mnist_digits digits{};
  CHECK(mnist_read("tests/data", "train", &digits) == 0);
  Batch base = batch(digits, 0, 30), extra = batch(digits, 30, 5), probe = batch(digits, 60, 3);

  CHECK(lethe::version() == lethe_version());
  CHECK_THROWS(lethe::Core("/nonexistent/bundle"), LETHE_ERROR_IO, "/nonexistent/bundle");

  // Lethe's warnings reach a std::function; what it throws stays in the wrapper.
  std::mutex log_mutex;
  std::vector<std::pair<lethe_log_level, std::string>> log;
  lethe::set_log_callback([&](lethe_log_level level, const char *message) {
    std::lock_guard<std::mutex> lock(log_mutex);
    log.emplace_back(level, message);
    throw std::runtime_error("not for Lethe");
  });
  // The level of the first message that contains `needle`, or 0.
  auto logged = [&](const char *needle) -> lethe_log_level {
    std::lock_guard<std::mutex> lock(log_mutex);
    for (const auto &entry : log)
      if (entry.second.find(needle) != std::string::npos) return entry.first;
    return 0;
  };
  CHECK_THROWS(lethe::set_log_callback([](lethe_log_level, const char *) {}, 9),
               LETHE_ERROR_INVALID_ARGUMENT, "max_level 9");

  lethe::Options options;
  options.intra_threads = 1;
  lethe::Options cuda = options;
  cuda.backend = LETHE_BACKEND_CUDA;
  if (lethe::Core("models/mnist-core", cuda).backend() == LETHE_BACKEND_CPU)
    CHECK(logged("core on cpu") == LETHE_LOG_WARN);
  else
    std::printf("test_cpp: a GPU is usable: no fallback warning to check\n");
  lethe::Core core("models/mnist-core", options);
  CHECK(core.input_len() == 784 && core.num_classes() == 10);
  CHECK(core.feature_dim() == 128 && core.feature_dim("conv_features") == 3136);
  CHECK(core.backend() == LETHE_BACKEND_CPU);
  CHECK_THROWS(core.feature_dim("nope"), LETHE_ERROR_INVALID_ARGUMENT, "nope");

  lethe::Options bad = options;
  bad.lambda = -1;
  CHECK_THROWS(lethe::Head(core, (tmp / "bad").string(), bad), LETHE_ERROR_INVALID_ARGUMENT,
               "lambda");

  std::vector<float> before;
  lethe::Weights weights_before;
  {
    lethe::Head head(core, (tmp / "head").string(), options);
    CHECK(head.info().samples == 0 && head.ids().empty());
    head.learn(base.ids, base.inputs, base.labels);
    CHECK(head.info().samples == 30 && head.ids() == base.ids);
    before = head.predict(probe.inputs);
    CHECK(before.size() == 3 * 10);
    weights_before = head.weights();
    CHECK(weights_before.w.size() == 10 * 128 && weights_before.b.size() == 10);
    const lethe_receipt receipt_before = head.receipt();
    CHECK(receipt_before.samples == 30);

    // Lethe's errors, as exceptions with the status and the message.
    CHECK_THROWS(head.learn(base.ids, base.inputs, base.labels), LETHE_ERROR_SAMPLE_ID,
                 "already learned");
    CHECK_THROWS(head.forget(std::vector<std::uint64_t>{42}), LETHE_ERROR_SAMPLE_ID,
                 "id 42 is not learned");
    std::vector<float> one_logit(1);
    CHECK_THROWS(head.predict(probe.inputs.data(), 3, one_logit.data(), one_logit.size()),
                 LETHE_ERROR_BUFFER_TOO_SMALL, "need 30");
    // Sizes checked by the wrapper before calling Lethe.
    std::vector<float> partial(probe.inputs.begin(), probe.inputs.end() - 1);
    CHECK_THROWS(head.predict(partial), LETHE_ERROR_INVALID_ARGUMENT, "whole number");
    CHECK_THROWS(head.learn(extra.ids, base.inputs, extra.labels), LETHE_ERROR_INVALID_ARGUMENT,
                 "ids and inputs");
    std::vector<std::uint32_t> short_labels(extra.labels.begin(), extra.labels.end() - 1);
    CHECK_THROWS(head.learn(extra.ids, extra.inputs, short_labels),
                 LETHE_ERROR_INVALID_ARGUMENT, "ids and labels");
    CHECK(head.info().samples == 30);

    // Learn and forget: bit-identical weights and predictions afterwards.
    head.learn(extra.ids, extra.inputs, extra.labels);
    CHECK(head.info().samples == 35 && head.weights().w != weights_before.w);
    CHECK(std::memcmp(head.receipt().digest, receipt_before.digest, 32) != 0);
    head.forget(extra.ids);
    CHECK(head.weights().w == weights_before.w && head.weights().b == weights_before.b);
    const lethe_receipt receipt_after = head.receipt();
    CHECK(std::memcmp(&receipt_after, &receipt_before, sizeof receipt_after) == 0);
    CHECK(head.predict(probe.inputs) == before);

#ifdef __cpp_lib_span
    // The span overloads (C++20).
    std::array<float, 30> logits{};
    head.predict(std::span<const float>(probe.inputs), std::span<float>(logits));
    CHECK(std::vector<float>(logits.begin(), logits.end()) == before);
    std::span<const std::uint64_t> ids(extra.ids);
    head.learn(ids, std::span<const float>(extra.inputs),
               std::span<const std::uint32_t>(extra.labels));
    head.forget(ids.subspan(0, 2));
    head.forget(ids.subspan(2));
    CHECK(head.weights().w == weights_before.w);
    std::array<float, 29> small{};
    CHECK_THROWS(head.predict(std::span<const float>(probe.inputs), std::span<float>(small)),
                 LETHE_ERROR_BUFFER_TOO_SMALL, "need 30");
#endif

    // Moves transfer the handle; the moved-from object closes nothing.
    lethe::Head moved(std::move(head));
    CHECK(moved.info().samples == 30);
    lethe::Head other(core, (tmp / "other").string(), options);
    other = std::move(moved);  // closes "other", takes the head
    CHECK(other.predict(probe.inputs) == before);

    // Opening an open state dir fails (the head above still holds it).
    CHECK_THROWS(lethe::Head(core, (tmp / "head").string(), options), LETHE_ERROR_STATE,
                 "open");
    other.forget_all();
    CHECK(other.info().samples == 0);
    for (double w : other.weights().w) CHECK(w == 0.0);
    other.learn(base.ids, base.inputs, base.labels);
    other.close();
    other.close();  // a closed Head holds nothing: a no-op
  }

  // The core may die before its heads; the state dir reopens with the same weights.
  lethe::Head reopened = [&] {
    lethe::Core second("models/mnist-core", options);
    return lethe::Head(second, (tmp / "head").string(), options);
  }();
  CHECK(reopened.ids() == base.ids);
  CHECK(reopened.weights().w == weights_before.w);
  CHECK(reopened.predict(probe.inputs) == before);
  reopened.close();
  CHECK_THROWS(reopened.info(), LETHE_ERROR_NULL_ARGUMENT, "`head` is NULL");

  // A close that cannot persist throws and releases the head; opening the state dir again
  // recovers what it had learned (and warns about the torn journal entry appended here).
  {
    fs::path dir = tmp / "closefail";
    lethe::Head head(core, dir.string(), options);
    head.learn(base.ids, base.inputs, base.labels);
    fs::create_directory(dir / "journal.tmp");
    CHECK_THROWS(head.close(), LETHE_ERROR_IO, "journal.tmp");
    CHECK_THROWS(head.info(), LETHE_ERROR_NULL_ARGUMENT, "`head` is NULL");
    fs::remove(dir / "journal.tmp");
    const char torn[8] = {0};
    std::ofstream(dir / "journal", std::ios::binary | std::ios::app).write(torn, sizeof torn);
    CHECK(logged("incomplete entry") == 0);
    lethe::Head recovered(core, dir.string(), options);
    CHECK(logged("incomplete entry") == LETHE_LOG_WARN);
    CHECK(recovered.ids() == base.ids && recovered.weights().w == weights_before.w);
    CHECK_THROWS(lethe::erase_state(dir.string()), LETHE_ERROR_STATE, "forget-all");
    recovered.close();
    lethe::erase_state(dir.string());
    CHECK(!fs::exists(dir));
    // A head erases its own state dir, and is released.
    lethe::Head own(core, dir.string(), options);
    own.learn(base.ids, base.inputs, base.labels);
    own.erase();
    CHECK(!fs::exists(dir));
    CHECK_THROWS(own.info(), LETHE_ERROR_NULL_ARGUMENT, "`head` is NULL");
  }

  // An encrypted state dir: it opens only with its key; rekey moves it to another.
  {
    fs::path dir = tmp / "encrypted";
    lethe::Options keyed = options;
    keyed.key.assign(32, 0x5a);
    std::vector<std::uint8_t> new_key(32, 0xa5);
    lethe::Head head(core, dir.string(), keyed);
    head.learn(base.ids, base.inputs, base.labels);
    head.close();
    CHECK_THROWS(lethe::Head(core, dir.string(), options), LETHE_ERROR_KEY, "encrypted");
    lethe::Head again(core, dir.string(), keyed);
    again.rekey(new_key);
    again.close();
    CHECK_THROWS(lethe::Head(core, dir.string(), keyed), LETHE_ERROR_KEY, "does not open");
    keyed.key = new_key;
    lethe::Head rekeyed(core, dir.string(), keyed);
    CHECK(rekeyed.ids() == base.ids && rekeyed.weights().w == weights_before.w);
    rekeyed.close();
  }
  lethe::set_log_callback(nullptr);

  // The text bundle: texts and the same token ids as int64 tensors give the same logits.
  {
    lethe::Core text("models/minilm-l6-sentiment", options);
    CHECK(text.input_len() == 0 && text.num_classes() == 3);
    lethe::Head head(text, (tmp / "text").string(), options);
    std::vector<std::string> texts = {"hello world", "what a great day"};
    // [CLS] hello world [SEP] / [CLS] what a great day [SEP], padded to the longest with 0.
    std::vector<std::int64_t> ids = {101, 7592, 2088, 102, 0, 0, 101, 2054, 1037, 2307, 2154, 102};
    std::vector<std::int64_t> mask = {1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1};
    std::vector<lethe::Tensor> inputs = {lethe::Tensor("input_ids", ids, {2, 6}),
                                         lethe::Tensor("attention_mask", mask, {2, 6})};
    head.learn_text({1, 2}, texts, {2, 0});
    std::vector<float> from_text = head.predict_text(texts);
    CHECK(from_text.size() == 6 && from_text == head.predict_tensors(inputs));
    lethe::Weights w = head.weights();
    CHECK_THROWS(head.learn_tensors({3, 4}, inputs, {0}), LETHE_ERROR_INVALID_ARGUMENT,
                 "ids and labels");
    CHECK_THROWS(head.learn_text({3}, texts, {0}), LETHE_ERROR_INVALID_ARGUMENT,
                 "ids and texts");
    std::vector<std::int32_t> ids32(ids.begin(), ids.end());
    CHECK_THROWS(head.predict_tensors({lethe::Tensor("input_ids", ids32, {2, 6}), inputs[1]}),
                 LETHE_ERROR_INVALID_ARGUMENT, "is int32, the core takes int64");
    CHECK_THROWS(head.predict_tensors({inputs[0]}), LETHE_ERROR_INVALID_ARGUMENT,
                 "\"attention_mask\" is missing");
    CHECK_THROWS(head.predict(std::vector<float>(4)), LETHE_ERROR_INVALID_ARGUMENT,
                 "whole number of samples");
    CHECK(head.weights().w == w.w && head.ids() == std::vector<std::uint64_t>({1, 2}));
    head.learn_tensors({3, 4}, inputs, {1, 1});
    head.forget({3, 4});
    CHECK(head.weights().w == w.w && head.predict_text(texts) == from_text);
    head.close();
  }

  // The image bundle: PNG files learned and predicted; forget-all leaves zero logits.
  {
    lethe::Core images("models/mobilenetv2-imagenet", options);
    lethe::Head head(images, (tmp / "images").string(), options);
    std::vector<std::vector<std::uint8_t>> files;
    for (const char *path : {"tests/data/photo_china.png", "tests/data/digit_7.png"}) {
      std::ifstream in(path, std::ios::binary);
      files.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      CHECK(files.back().size() > 100);
    }
    head.learn_images({1, 2}, files, {3, 8});
    std::vector<float> logits = head.predict_images(files);
    CHECK(logits.size() == 20);
    // Each learned image is predicted as its own label.
    CHECK(std::max_element(logits.begin(), logits.begin() + 10) - logits.begin() == 3);
    CHECK(std::max_element(logits.begin() + 10, logits.end()) - logits.begin() == 18);
    CHECK_THROWS(head.learn_images({3}, files, {0}), LETHE_ERROR_INVALID_ARGUMENT,
                 "ids and files");
    CHECK_THROWS(head.predict_images({std::vector<std::uint8_t>{'n', 'o'}}),
                 LETHE_ERROR_INVALID_ARGUMENT, "not a PNG or JPEG");
    head.forget_all();
    for (float v : head.predict_images(files)) CHECK(v == 0.0f);
    head.close();
  }

  mnist_free(&digits);
  fs::remove_all(tmp);
  std::printf("test_cpp: ok (C++%ld)\n", static_cast<long>(__cplusplus / 100 % 100));
  return 0;
}
