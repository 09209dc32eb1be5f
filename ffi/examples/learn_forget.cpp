// learn_forget.cpp: Lethe's C++ wrapper (lethe.hpp) end to end on real MNIST digits.
//
// The bundled mnist-core was trained on digits 0-4 only. A head learns all ten digits from a
// few of the user's examples, predicts, forgets one class exactly, forgets everything, and is
// the core again. Errors are lethe::Error exceptions.
//
//   usage: learn_forget_cpp [BUNDLE_DIR [DATA_DIR [STATE_DIR]]]
//          defaults: models/mnist-core, tests/data, a new folder under the temp directory
//
// Build against an installed Lethe (see ffi/README.md):
//   c++ -std=c++17 learn_forget.cpp $(pkg-config --cflags --libs lethe) -o learn_forget_cpp

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include "lethe.hpp"
#include "mnist_npy.h"

namespace {

constexpr std::size_t kPerClass = 20;  // examples of each digit the user teaches
constexpr std::size_t kTestDigits = 500;

struct Digits {
  mnist_digits d{};
  Digits(const std::string &dir, const char *split) {
    if (mnist_read(dir.c_str(), split, &d) != 0) throw std::runtime_error("cannot read digits");
  }
  ~Digits() { mnist_free(&d); }
  Digits(const Digits &) = delete;
  Digits &operator=(const Digits &) = delete;

  std::vector<float> inputs(const std::vector<std::size_t> &rows) const {
    std::vector<float> out(rows.size() * d.pixels);
    mnist_inputs(&d, rows.data(), rows.size(), out.data());
    return out;
  }
};

double accuracy(const std::vector<float> &logits, std::size_t classes, const Digits &test,
                int lo, int hi) {
  std::size_t right = 0, total = 0;
  for (std::size_t i = 0; i < kTestDigits; i++) {
    int label = test.d.labels[i];
    if (label < lo || label > hi) continue;
    auto row = logits.begin() + static_cast<std::ptrdiff_t>(i * classes);
    auto best = std::max_element(row, row + static_cast<std::ptrdiff_t>(classes)) - row;
    total++;
    right += best == label;
  }
  return total ? 100.0 * static_cast<double>(right) / static_cast<double>(total) : 0.0;
}

void report(const char *stage, const lethe::Head &head, const std::vector<float> &test_inputs,
            const Digits &test) {
  std::vector<float> logits = head.predict(test_inputs);
  std::printf("%-28s %4llu samples | test accuracy: 0-4 %5.1f%%  5-9 %5.1f%%  all %5.1f%%\n",
              stage, static_cast<unsigned long long>(head.info().samples),
              accuracy(logits, head.num_classes(), test, 0, 4),
              accuracy(logits, head.num_classes(), test, 5, 9),
              accuracy(logits, head.num_classes(), test, 0, 9));
}

}  // namespace

int main(int argc, char **argv) try {
  namespace fs = std::filesystem;
  std::string bundle = argc > 1 ? argv[1] : "models/mnist-core";
  std::string data = argc > 2 ? argv[2] : "tests/data";
  bool temporary = argc <= 3;
  fs::path state = temporary ? fs::temp_directory_path() /
                                   ("lethe-example-cpp-" + std::to_string(::getpid()))
                             : fs::path(argv[3]);
  std::cout << "Lethe " << lethe::version() << ": bundle " << bundle << ", state dir "
            << state.string() << "\n";

  lethe::Options options;
  options.intra_threads = 1;
  lethe::Core core(bundle, options);
  {
    lethe::Head head(core, state.string(), options);
    Digits train(data, "train"), test(data, "test");

    // The user's examples: the first kPerClass training digits of each class, id = row.
    std::vector<std::size_t> rows;
    std::vector<std::uint64_t> ids, sevens;
    std::vector<std::uint32_t> labels;
    std::vector<std::size_t> per_class(10);
    for (std::size_t i = 0; i < train.d.n; i++) {
      std::uint32_t label = train.d.labels[i];
      if (per_class[label]++ >= kPerClass) continue;
      rows.push_back(i);
      ids.push_back(i);
      labels.push_back(label);
      if (label == 7) sevens.push_back(i);
    }
    std::vector<std::size_t> test_rows(kTestDigits);
    for (std::size_t i = 0; i < kTestDigits; i++) test_rows[i] = i;
    std::vector<float> test_inputs = test.inputs(test_rows);

    report("core alone (head empty)", head, test_inputs, test);
    head.learn(ids, train.inputs(rows), labels);
    report("learned", head, test_inputs, test);
    head.forget(sevens);
    report("forgot every 7", head, test_inputs, test);
    head.forget_all();
    report("forgot everything", head, test_inputs, test);

    try {
      head.forget(sevens);
    } catch (const lethe::Error &e) {
      std::cout << "forgetting the 7s again: " << lethe_status_str(e.status()) << ": "
                << e.what() << "\n";
    }
    head.close();
  }
  if (temporary) fs::remove_all(state);
  return 0;
} catch (const std::exception &e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
