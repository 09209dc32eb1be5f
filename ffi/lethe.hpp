/*
 * lethe.hpp: header-only C++17 wrapper of Lethe's C API (lethe.h).
 *
 * - lethe::Core and lethe::Head own a handle each (RAII, move-only); the destructor closes it.
 *   Head::close() closes explicitly and reports a failure to persist, which a destructor cannot.
 * - Every failure throws lethe::Error, which carries the lethe_status and lethe_last_error()
 *   (e.g. LETHE_ERROR_POISONED: the head must be closed and opened again).
 * - lethe::Options fills a lethe_options with lethe_options_default(), so struct_size is that of
 *   the lethe.h the program is built with.
 * - lethe::set_log_callback() sends Lethe's log messages to a std::function.
 * - lethe::erase_state() erases a state dir, also one that cannot be opened.
 * - Arrays are taken as std::vector, as std::span (C++20, when the library has <span>), or as
 *   pointer + count. Vector and span overloads check their sizes against the core's input
 *   length and the head's classes before calling Lethe.
 * - A core with other inputs (several, integer, dynamic axes: a text bundle's) takes named
 *   lethe::Tensor views (learn_tensors, predict_tensors); one that ships a tokenizer also
 *   takes UTF-8 strings (learn_text, predict_text), and an image bundle's PNG or JPEG files
 *   (learn_images, predict_images).
 * - Thread safety is that of the C API (see lethe.h): a const Head may be used from many
 *   threads at once, also while one thread calls learn/forget on it.
 *
 *   lethe::Core core("models/mnist-core");
 *   lethe::Head head(core, "/var/lib/app/user-42");
 *   head.learn(ids, inputs, labels);
 *   std::vector<float> logits = head.predict(inputs);
 *   head.forget(ids);
 *   head.close();
 */
#ifndef LETHE_HPP
#define LETHE_HPP

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if __cplusplus >= 202002L && defined(__has_include)
#if __has_include(<span>)
#include <span>
#endif
#endif

#include "lethe.h"

namespace lethe {

/// A failed Lethe call: status() is the lethe_status, what() the message.
class Error : public std::runtime_error {
 public:
  Error(lethe_status status, const std::string &message)
      : std::runtime_error(message), status_(status) {}
  lethe_status status() const noexcept { return status_; }

 private:
  lethe_status status_;
};

namespace detail {
/// Throws the calling thread's last error if `status` is not LETHE_OK.
inline void check(lethe_status status) {
  if (status != LETHE_OK) throw Error(status, lethe_last_error());
}

inline std::size_t samples_of(std::size_t values, std::size_t per_sample, const char *what) {
  if (per_sample == 0 || values % per_sample != 0)
    throw Error(LETHE_ERROR_INVALID_ARGUMENT,
                std::string(what) + ": " + std::to_string(values) +
                    " values are not a whole number of samples of " +
                    std::to_string(per_sample));
  return values / per_sample;
}

inline void same_count(std::size_t a, std::size_t b, const char *what) {
  if (a != b)
    throw Error(LETHE_ERROR_INVALID_ARGUMENT, std::string(what) + ": " + std::to_string(a) +
                                                  " vs " + std::to_string(b) + " samples");
}
}  // namespace detail

/// The library's version ("0.2.0"); LETHE_VERSION_NUMBER is the header's.
inline std::string version() { return lethe_version(); }

/// Receives Lethe's log messages (see lethe_set_log_callback in lethe.h): it may be called on
/// any thread, on several at once, and must not call Lethe. What it throws is dropped: an
/// exception must not cross into Lethe.
using LogFunction = std::function<void(lethe_log_level level, const char *message)>;

namespace detail {
struct LogState {
  std::mutex mutex;
  std::unique_ptr<LogFunction> current;
};

/// Never destroyed: Lethe's threads may log while the program exits.
inline LogState &log_state() {
  static LogState *state = new LogState;
  return *state;
}

inline void log_trampoline(void *function, lethe_log_level level, const char *message) noexcept {
  try {
    (*static_cast<LogFunction *>(function))(level, message);
  } catch (...) {
  }
}
}  // namespace detail

/// Sends Lethe's messages of `max_level` and more severe to `function`; an empty function stops
/// logging. The previous function is destroyed once Lethe no longer calls it.
inline void set_log_callback(LogFunction function, lethe_log_level max_level = LETHE_LOG_WARN) {
  detail::LogState &state = detail::log_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  std::unique_ptr<LogFunction> next;
  if (function) next.reset(new LogFunction(std::move(function)));
  detail::check(lethe_set_log_callback(next ? detail::log_trampoline : nullptr, next.get(),
                                       max_level));
  state.current = std::move(next);
}

/// Erases the state dir `state_dir` (see lethe_state_erase in lethe.h): scrubs and removes
/// every Lethe file, also when the state dir cannot be opened; throws if a head has it open.
inline void erase_state(const std::string &state_dir) {
  detail::check(lethe_state_erase(state_dir.c_str()));
}

/// Options for opening a core and a head (see lethe_options in lethe.h). Empty strings and
/// zeros mean "the default".
struct Options {
  std::string ort_library;  ///< libonnxruntime.so; empty = the documented search
  std::uint32_t intra_threads = 0;  ///< ONNX Runtime threads per session; 0 = its default
  lethe_backend backend = LETHE_BACKEND_CPU;  ///< or LETHE_BACKEND_AUTO, LETHE_BACKEND_CUDA
  bool require_gpu = false;  ///< fail instead of falling back to the CPU
  std::uint32_t cuda_device = 0;  ///< CUDA device ordinal
  std::string features;  ///< the head's features output; empty = the bundle's default
  double lambda = 0;  ///< ridge strength of a new head; 0 = the bundle's default
  double target_scale = 0;  ///< target scale of a new head; 0 = the bundle's default
  /// The state dir's key (32 bytes); empty = none. See lethe_options.key.
  std::vector<std::uint8_t> key;

  /// The C struct; its strings point into this object, which must outlive its use.
  lethe_options c_options() const {
    lethe_options o;
    detail::check(lethe_options_default(&o, sizeof o));
    o.ort_library = ort_library.empty() ? nullptr : ort_library.c_str();
    o.intra_threads = intra_threads;
    o.backend = backend;
    o.require_gpu = require_gpu ? 1 : 0;
    o.cuda_device = cuda_device;
    o.features = features.empty() ? nullptr : features.c_str();
    o.lambda = lambda;
    o.target_scale = target_scale;
    o.key = key.empty() ? nullptr : key.data();
    o.key_len = key.size();
    return o;
  }
};

/// An open core (lethe_core). Heads keep what they need, so a Core may die before its heads.
class Core {
 public:
  explicit Core(const std::string &bundle_dir, const Options &options = Options()) {
    lethe_options o = options.c_options();
    detail::check(lethe_core_open(bundle_dir.c_str(), &o, &handle_));
  }
  ~Core() { lethe_core_close(handle_); }
  Core(Core &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Core &operator=(Core &&other) noexcept {
    if (this != &other) {
      lethe_core_close(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  Core(const Core &) = delete;
  Core &operator=(const Core &) = delete;

  /// Floats per sample of input.
  std::size_t input_len() const {
    std::size_t n = 0;
    detail::check(lethe_core_input_len(handle_, &n));
    return n;
  }
  /// Classes C of heads over this core.
  std::size_t num_classes() const {
    std::size_t n = 0;
    detail::check(lethe_core_num_classes(handle_, &n));
    return n;
  }
  /// The dimension of a features output (empty = the bundle's default).
  std::size_t feature_dim(const std::string &features = std::string()) const {
    std::size_t n = 0;
    detail::check(
        lethe_core_feature_dim(handle_, features.empty() ? nullptr : features.c_str(), &n));
    return n;
  }
  /// Where the core runs: LETHE_BACKEND_CPU or LETHE_BACKEND_CUDA.
  lethe_backend backend() const {
    lethe_backend b = LETHE_BACKEND_CPU;
    detail::check(lethe_core_backend(handle_, &b));
    return b;
  }
  /// Releases the handle now (the destructor then does nothing).
  void close() { detail::check(lethe_core_close(std::exchange(handle_, nullptr))); }

  lethe_core *handle() const noexcept { return handle_; }

 private:
  lethe_core *handle_ = nullptr;
};

/// One named input tensor (see lethe_tensor in lethe.h): a view of the caller's values, which
/// must outlive the call it is passed to. Lethe checks the name, type and shape against the
/// bundle's manifest.
class Tensor {
 public:
  Tensor(std::string name, const std::vector<float> &values, std::vector<std::int64_t> shape)
      : Tensor(std::move(name), LETHE_DTYPE_FLOAT32, values.data(), values.size() * 4,
               std::move(shape)) {}
  Tensor(std::string name, const std::vector<std::int64_t> &values,
         std::vector<std::int64_t> shape)
      : Tensor(std::move(name), LETHE_DTYPE_INT64, values.data(), values.size() * 8,
               std::move(shape)) {}
  Tensor(std::string name, const std::vector<std::int32_t> &values,
         std::vector<std::int64_t> shape)
      : Tensor(std::move(name), LETHE_DTYPE_INT32, values.data(), values.size() * 4,
               std::move(shape)) {}
  Tensor(std::string name, const std::vector<std::uint8_t> &values,
         std::vector<std::int64_t> shape)
      : Tensor(std::move(name), LETHE_DTYPE_UINT8, values.data(), values.size(),
               std::move(shape)) {}
  /// Any element type: `byte_len` bytes of `dtype` values at `data`.
  Tensor(std::string name, lethe_dtype dtype, const void *data, std::size_t byte_len,
         std::vector<std::int64_t> shape)
      : name_(std::move(name)),
        dtype_(dtype),
        data_(data),
        byte_len_(byte_len),
        shape_(std::move(shape)) {}

  /// The batch size (the first axis), 0 for a tensor without axes.
  std::size_t samples() const noexcept {
    return shape_.empty() ? 0 : static_cast<std::size_t>(shape_[0]);
  }

  /// The C struct; it points into this object, which must outlive its use.
  lethe_tensor c_tensor() const noexcept {
    lethe_tensor t;
    t.struct_size = sizeof t;
    t.name = name_.c_str();
    t.dtype = dtype_;
    t.rank = static_cast<std::uint32_t>(shape_.size());
    t.shape = shape_.data();
    t.data = data_;
    t.byte_len = byte_len_;
    return t;
  }

 private:
  std::string name_;
  lethe_dtype dtype_;
  const void *data_;
  std::size_t byte_len_;
  std::vector<std::int64_t> shape_;
};

namespace detail {
inline std::vector<lethe_tensor> c_tensors(const std::vector<Tensor> &tensors) {
  std::vector<lethe_tensor> out;
  for (const Tensor &t : tensors) out.push_back(t.c_tensor());
  return out;
}

inline std::size_t batch_of(const std::vector<Tensor> &tensors) {
  if (tensors.empty())
    throw Error(LETHE_ERROR_INVALID_ARGUMENT, "tensors: pass one per core input");
  return tensors[0].samples();
}

inline void file_views(const std::vector<std::vector<std::uint8_t>> &files,
                       std::vector<const std::uint8_t *> &data, std::vector<std::size_t> &lens) {
  for (const std::vector<std::uint8_t> &f : files) {
    data.push_back(f.data());
    lens.push_back(f.size());
  }
}

inline std::vector<const char *> c_strings(const std::vector<std::string> &texts) {
  std::vector<const char *> out;
  for (const std::string &t : texts) out.push_back(t.c_str());
  return out;
}
}  // namespace detail

/// W (C x d, row-major) and b (C) in double precision.
struct Weights {
  std::size_t num_classes = 0;
  std::size_t feature_dim = 0;
  std::vector<double> w;
  std::vector<double> b;
};

/// An open head (lethe_head).
class Head {
 public:
  Head(const Core &core, const std::string &state_dir, const Options &options = Options())
      : input_len_(core.input_len()), num_classes_(core.num_classes()) {
    lethe_options o = options.c_options();
    detail::check(lethe_head_open(core.handle(), state_dir.c_str(), &o, &handle_));
  }
  /// Closes the head; a failure to persist is ignored here (call close() to see it).
  ~Head() { lethe_head_close(handle_); }
  Head(Head &&other) noexcept
      : handle_(std::exchange(other.handle_, nullptr)),
        input_len_(other.input_len_),
        num_classes_(other.num_classes_) {}
  Head &operator=(Head &&other) noexcept {
    if (this != &other) {
      lethe_head_close(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
      input_len_ = other.input_len_;
      num_classes_ = other.num_classes_;
    }
    return *this;
  }
  Head(const Head &) = delete;
  Head &operator=(const Head &) = delete;

  /// Persists and releases the head; throws if persisting failed (the handle is released
  /// either way, as lethe_head_close does: open the state dir again to recover it).
  void close() { detail::check(lethe_head_close(std::exchange(handle_, nullptr))); }

  /// Erases the head's state dir instead of closing it, while the head still holds it, and
  /// releases the head; throws if erasing failed (the handle is released either way, as
  /// lethe_head_erase does).
  void erase() { detail::check(lethe_head_erase(std::exchange(handle_, nullptr))); }

  /// Learns n samples (inputs: n * input_len floats). All or nothing.
  void learn(const std::uint64_t *ids, const float *inputs, std::size_t n,
             const std::uint32_t *labels) {
    detail::check(lethe_head_learn(handle_, ids, inputs, n, labels));
  }
  void learn(const std::vector<std::uint64_t> &ids, const std::vector<float> &inputs,
             const std::vector<std::uint32_t> &labels) {
    checked_learn(ids.data(), ids.size(), inputs.data(), inputs.size(), labels.data(),
                  labels.size());
  }

  /// Forgets the samples with these ids, exactly. All or nothing.
  void forget(const std::uint64_t *ids, std::size_t n) {
    detail::check(lethe_head_forget(handle_, ids, n));
  }
  void forget(const std::vector<std::uint64_t> &ids) { forget(ids.data(), ids.size()); }

  /// Forgets every sample: the head predicts exactly the core's logits again.
  void forget_all() { detail::check(lethe_head_forget_all(handle_)); }

  /// Seals the encrypted state dir under `new_key` (32 bytes); see lethe_head_rekey.
  void rekey(const std::vector<std::uint8_t> &new_key) {
    detail::check(lethe_head_rekey(handle_, new_key.data(), new_key.size()));
  }

  /// Writes n * C logits for n samples to `logits` (which holds logits_len floats).
  void predict(const float *inputs, std::size_t n, float *logits, std::size_t logits_len) const {
    detail::check(lethe_head_predict(handle_, inputs, n, logits, logits_len, nullptr));
  }
  /// The logits (n x C, row-major) of the samples in `inputs`.
  std::vector<float> predict(const std::vector<float> &inputs) const {
    std::size_t n = detail::samples_of(inputs.size(), input_len_, "inputs");
    std::vector<float> logits(n * num_classes_);
    predict(inputs.data(), n, logits.data(), logits.size());
    return logits;
  }

  /// Learns one sample per row of the named tensors (one per core input, n rows each). All or
  /// nothing.
  void learn_tensors(const std::vector<std::uint64_t> &ids, const std::vector<Tensor> &inputs,
                     const std::vector<std::uint32_t> &labels) {
    detail::same_count(ids.size(), detail::batch_of(inputs), "ids and inputs");
    detail::same_count(ids.size(), labels.size(), "ids and labels");
    std::vector<lethe_tensor> c = detail::c_tensors(inputs);
    detail::check(
        lethe_head_learn_tensors(handle_, ids.data(), c.data(), c.size(), ids.size(),
                                 labels.data()));
  }
  /// The logits (n x C, row-major) of the named tensors' n rows.
  std::vector<float> predict_tensors(const std::vector<Tensor> &inputs) const {
    std::size_t n = detail::batch_of(inputs);
    std::vector<lethe_tensor> c = detail::c_tensors(inputs);
    std::vector<float> logits(n * num_classes_);
    detail::check(lethe_head_predict_tensors(handle_, c.data(), c.size(), n, logits.data(),
                                             logits.size(), nullptr));
    return logits;
  }

  /// Learns one sample per UTF-8 text, for a bundle that ships a tokenizer. All or nothing.
  void learn_text(const std::vector<std::uint64_t> &ids, const std::vector<std::string> &texts,
                  const std::vector<std::uint32_t> &labels) {
    detail::same_count(ids.size(), texts.size(), "ids and texts");
    detail::same_count(ids.size(), labels.size(), "ids and labels");
    std::vector<const char *> c = detail::c_strings(texts);
    detail::check(lethe_head_learn_text(handle_, ids.data(), c.data(), c.size(), labels.data()));
  }
  /// The logits (n x C, row-major) of n UTF-8 texts.
  std::vector<float> predict_text(const std::vector<std::string> &texts) const {
    std::vector<const char *> c = detail::c_strings(texts);
    std::vector<float> logits(texts.size() * num_classes_);
    detail::check(lethe_head_predict_text(handle_, c.data(), c.size(), logits.data(),
                                          logits.size(), nullptr));
    return logits;
  }

  /// Learns one sample per image file (PNG or JPEG bytes), for a bundle that declares its image
  /// preprocessing. All or nothing.
  void learn_images(const std::vector<std::uint64_t> &ids,
                    const std::vector<std::vector<std::uint8_t>> &files,
                    const std::vector<std::uint32_t> &labels) {
    detail::same_count(ids.size(), files.size(), "ids and files");
    detail::same_count(ids.size(), labels.size(), "ids and labels");
    std::vector<const std::uint8_t *> data;
    std::vector<std::size_t> lens;
    detail::file_views(files, data, lens);
    detail::check(lethe_head_learn_images(handle_, ids.data(), data.data(), lens.data(),
                                          files.size(), labels.data()));
  }
  /// The logits (n x C, row-major) of n image files.
  std::vector<float> predict_images(const std::vector<std::vector<std::uint8_t>> &files) const {
    std::vector<const std::uint8_t *> data;
    std::vector<std::size_t> lens;
    detail::file_views(files, data, lens);
    std::vector<float> logits(files.size() * num_classes_);
    detail::check(lethe_head_predict_images(handle_, data.data(), lens.data(), files.size(),
                                            logits.data(), logits.size(), nullptr));
    return logits;
  }

#ifdef __cpp_lib_span
  void learn(std::span<const std::uint64_t> ids, std::span<const float> inputs,
             std::span<const std::uint32_t> labels) {
    checked_learn(ids.data(), ids.size(), inputs.data(), inputs.size(), labels.data(),
                  labels.size());
  }
  void forget(std::span<const std::uint64_t> ids) { forget(ids.data(), ids.size()); }
  /// Writes the logits of the samples in `inputs` to `logits` (at least n * C floats).
  void predict(std::span<const float> inputs, std::span<float> logits) const {
    std::size_t n = detail::samples_of(inputs.size(), input_len_, "inputs");
    predict(inputs.data(), n, logits.data(), logits.size());
  }
#endif

  /// The canonical weights.
  Weights weights() const {
    Weights out;
    lethe_head_summary s = info();
    out.num_classes = static_cast<std::size_t>(s.num_classes);
    out.feature_dim = static_cast<std::size_t>(s.feature_dim);
    out.w.resize(out.num_classes * out.feature_dim);
    out.b.resize(out.num_classes);
    detail::check(lethe_head_weights(handle_, out.w.data(), out.w.size(), out.b.data(),
                                     out.b.size(), nullptr, nullptr));
    return out;
  }

  lethe_head_summary info() const {
    lethe_head_summary s;
    detail::check(lethe_head_info(handle_, &s, sizeof s));
    return s;
  }

  /// The receipt of the head's state (G8): equal for every head holding the same samples.
  lethe_receipt receipt() const {
    lethe_receipt r;
    detail::check(lethe_head_receipt(handle_, &r, sizeof r));
    return r;
  }

  /// The learned ids, in increasing order.
  std::vector<std::uint64_t> ids() const {
    std::vector<std::uint64_t> out;
    for (;;) {
      std::size_t count = 0;
      lethe_status status =
          lethe_head_ids(handle_, out.empty() ? nullptr : out.data(), out.size(), &count);
      out.resize(count);
      // Too small: `count` says how many there are now (a concurrent learn may add more).
      if (status == LETHE_ERROR_BUFFER_TOO_SMALL) continue;
      detail::check(status);
      return out;
    }
  }

  std::size_t input_len() const noexcept { return input_len_; }
  std::size_t num_classes() const noexcept { return num_classes_; }
  lethe_head *handle() const noexcept { return handle_; }

 private:
  void checked_learn(const std::uint64_t *ids, std::size_t n_ids, const float *inputs,
                     std::size_t n_inputs, const std::uint32_t *labels, std::size_t n_labels) {
    detail::same_count(n_ids, detail::samples_of(n_inputs, input_len_, "inputs"),
                       "ids and inputs");
    detail::same_count(n_ids, n_labels, "ids and labels");
    learn(ids, inputs, n_ids, labels);
  }

  lethe_head *handle_ = nullptr;
  std::size_t input_len_;
  std::size_t num_classes_;
};

}  // namespace lethe

#endif  // LETHE_HPP
