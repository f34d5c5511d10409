#include "app/cmd_data.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/timer.h"
#include "data/shards.h"
#include "data/split.h"
#include "data/tokenizer.h"

namespace onestep {
namespace {

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  if (inputs.empty()) bad_input("--input", "expected at least one input file");
  std::vector<std::string> files;
  for (const auto& in : inputs)
    for (auto& f : expand_glob(in, "--input")) files.push_back(std::move(f));
  return files;
}

std::vector<std::string> read_all(const std::vector<std::string>& files) {
  std::vector<std::string> texts;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) bad_input(f, "cannot open the input file");
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) bad_input(f, "cannot read the input file");
    texts.push_back(ss.str());
  }
  return texts;
}

void make_parent_dir(const std::string& path) {
  auto parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(parent, ec);
  if (ec) bad_input(path, "cannot create the folder " + parent.string() + ": " + ec.message());
}

}  // namespace

void cmd_tokenizer_train(const std::vector<std::string>& inputs, int vocab_size, const std::string& out) {
  Stopwatch sw;
  auto files = expand_inputs(inputs);
  auto texts = read_all(files);
  std::vector<std::string_view> docs(texts.begin(), texts.end());
  size_t bytes = 0;
  for (auto d : docs) bytes += d.size();
  Tokenizer tok = Tokenizer::train(docs, vocab_size);
  make_parent_dir(out);
  tok.save(out);
  std::printf("tokenizer: %d tokens (%d merges + 256 bytes + <|endoftext|>) trained on %zu bytes from %zu file(s) "
              "in %.1f s -> %s\n",
              tok.vocab_size(), tok.num_merges(), bytes, files.size(), sw.seconds(), out.c_str());
}

void cmd_tokenize(const std::string& tokenizer, const std::vector<std::string>& inputs, const std::string& out_prefix,
                  double val_fraction) {
  Stopwatch sw;
  Tokenizer tok = Tokenizer::load(tokenizer);
  auto files = expand_inputs(inputs);
  auto texts = read_all(files);
  std::vector<std::string_view> docs(texts.begin(), texts.end());
  size_t bytes = 0;
  for (auto d : docs) bytes += d.size();
  if (bytes == 0) bad_input("--input", "all input files are empty");
  auto units = plan_split(docs, val_fraction);

  std::vector<int32_t> train, val;
  size_t n_train = 0, n_val = 0;
  for (const auto& u : units) {
    auto& dst = u.val ? val : train;
    (u.val ? n_val : n_train)++;
    if (u.eot_before) dst.push_back(tok.eot_token());
    tok.encode_append(u.text, dst);
  }
  const std::string train_path = out_prefix + "_train.bin", val_path = out_prefix + "_val.bin";
  make_parent_dir(train_path);
  write_shard(train_path, train, tok.vocab_size());
  write_shard(val_path, val, tok.vocab_size());
  const char* unit = docs.size() - std::count(docs.begin(), docs.end(), std::string_view()) == 1 ? "chunks" : "documents";
  std::printf("tokenize: %zu bytes from %zu file(s) in %.1f s (vocabulary %d)\n", bytes, files.size(), sw.seconds(),
              tok.vocab_size());
  std::printf("  train: %zu tokens (%zu %s) -> %s\n", train.size(), n_train, unit, train_path.c_str());
  std::printf("  val:   %zu tokens (%zu %s) -> %s\n", val.size(), n_val, unit, val_path.c_str());
  if (val.empty() && val_fraction > 0)
    std::fprintf(stderr, "warning: the validation split is empty (the text is too small to split)\n");
}

}  // namespace onestep
