// llm.c token shards, globs, and the train/val split plan.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "data/shards.h"
#include "data/split.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace onestep;

namespace {
std::vector<int32_t> header_ints(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::vector<int32_t> h(256);
  f.read(reinterpret_cast<char*>(h.data()), 1024);
  return h;
}
}  // namespace

TEST(Shards, RoundTripVersion1And2) {
  std::string d = testutil::temp_dir("shards");
  std::mt19937 rng(1);
  for (int vocab : {50257, 65536, 65537, 200000}) {
    std::vector<int32_t> toks(10007);
    for (auto& t : toks) t = static_cast<int32_t>(rng() % vocab);
    toks[0] = 0, toks[1] = vocab - 1;
    std::string p = d + "/s" + std::to_string(vocab) + ".bin";
    write_shard(p, toks, vocab);
    EXPECT_FALSE(fs::exists(p + ".tmp"));
    auto h = header_ints(p);
    EXPECT_EQ(h[0], 20240520);
    EXPECT_EQ(h[1], vocab <= 65536 ? 1 : 2);
    EXPECT_EQ(h[2], 10007);
    EXPECT_EQ(fs::file_size(p), 1024u + 10007u * (vocab <= 65536 ? 2 : 4));
    EXPECT_EQ(read_shard(p, vocab), toks);
    EXPECT_EQ(read_shard(p, 0), toks);  // no vocabulary check
  }
  write_shard(d + "/empty.bin", {}, 4096);
  EXPECT_TRUE(read_shard(d + "/empty.bin", 4096).empty());
}

TEST(Shards, WrongMagicTruncatedAndOutOfVocabularyAreBadInput) {
  std::string d = testutil::temp_dir("shardbad");
  std::vector<int32_t> toks = {1, 2, 3, 4000, 5, 6, 7, 8, 9, 10};
  std::string p = d + "/a.bin";

  write_shard(p, toks, 4096);
  {
    std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
    int32_t bad = 12345;
    f.write(reinterpret_cast<char*>(&bad), 4);
  }
  std::string m = testutil::bad_input_message([&] { read_shard(p, 4096); });
  EXPECT_EQ(m, p + ": header[0] (magic): expected 20240520, found 12345");

  write_shard(p, toks, 4096);
  fs::resize_file(p, 1024 + 2 * 7 + 1);
  m = testutil::bad_input_message([&] { read_shard(p, 4096); });
  EXPECT_EQ(m, p + ": truncated: header says 10 tokens, file holds 7");
  fs::resize_file(p, 100);
  m = testutil::bad_input_message([&] { read_shard(p, 4096); });
  EXPECT_EQ(m.rfind(p + ": truncated", 0), 0u) << m;

  write_shard(p, toks, 4096);
  m = testutil::bad_input_message([&] { read_shard(p, 1000); });
  EXPECT_EQ(m, p + ": token 4000 at position 3 is outside the vocabulary (size 1000)");

  {
    std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(4);
    int32_t v = 7;
    f.write(reinterpret_cast<char*>(&v), 4);
  }
  m = testutil::bad_input_message([&] { read_shard(p, 4096); });
  EXPECT_NE(m.find("header[1] (version)"), std::string::npos) << m;

  m = testutil::bad_input_message([&] { read_shard(d + "/nope.bin", 4096); });
  EXPECT_NE(m.find(d + "/nope.bin"), std::string::npos) << m;
}

TEST(Glob, SortedAndNoMatchIsBadInput) {
  std::string d = testutil::temp_dir("glob");
  for (const char* n : {"c.bin", "a.bin", "b.bin", "x.txt"}) std::ofstream(d + "/" + n) << "x";
  EXPECT_EQ(expand_glob(d + "/*.bin", "data.train"),
            (std::vector<std::string>{d + "/a.bin", d + "/b.bin", d + "/c.bin"}));
  EXPECT_EQ(expand_glob(d + "/x.txt", "f"), std::vector<std::string>{d + "/x.txt"});
  std::string m = testutil::bad_input_message([&] { expand_glob(d + "/*.nothing", "data.val"); });
  EXPECT_EQ(m, "data.val: no file matches '" + d + "/*.nothing'");
}

TEST(Split, SingleDocumentIsChunkedAtParagraphsAndValIsNotEmpty) {
  std::string doc = testutil::synthetic_corpus(1200000, 2);
  auto units = plan_split({doc}, 0.1);
  ASSERT_GE(units.size(), 10u);
  std::string joined;
  size_t val_bytes = 0, n_val = 0;
  for (size_t i = 0; i < units.size(); ++i) {
    const auto& u = units[i];
    EXPECT_EQ(u.doc, 0u);
    EXPECT_LE(u.text.size(), 2u * 64 * 1024);
    if (i + 1 < units.size()) {
      EXPECT_EQ(u.text.substr(u.text.size() - 2), "\n\n") << "chunk " << i;
    }
    joined += u.text;
    if (u.val) val_bytes += u.text.size(), ++n_val;
    bool expect_eot = i == 0 || units[i - 1].val != u.val;
    EXPECT_EQ(u.eot_before, expect_eot) << i;
  }
  EXPECT_EQ(joined, doc);
  EXPECT_GE(n_val, 1u);
  EXPECT_GT(val_bytes, doc.size() / 20);
  EXPECT_LT(val_bytes, doc.size() / 5);
  // Deterministic.
  auto again = plan_split({doc}, 0.1);
  for (size_t i = 0; i < units.size(); ++i) EXPECT_EQ(again[i].val, units[i].val);
  // A small single document still gets a non-empty val split.
  std::string small = testutil::synthetic_corpus(3000, 4);
  auto su = plan_split({small}, 0.1);
  EXPECT_GE(su.size(), 2u);
  EXPECT_TRUE(std::any_of(su.begin(), su.end(), [](auto& u) { return u.val; }));
  EXPECT_TRUE(std::any_of(su.begin(), su.end(), [](auto& u) { return !u.val; }));
  // No newline at all: cut at character boundaries.
  std::string line(5000, 'z');
  auto lu = plan_split({line}, 0.5);
  EXPECT_GE(lu.size(), 2u);
}

TEST(Split, ManyDocumentsGoWholeToOneSplit) {
  std::vector<std::string> texts;
  for (int i = 0; i < 30; ++i) texts.push_back(testutil::synthetic_corpus(1000 + 100 * i, 100 + i));
  texts.insert(texts.begin() + 5, "");  // skipped
  std::vector<std::string_view> docs(texts.begin(), texts.end());
  auto units = plan_split(docs, 0.1);
  ASSERT_EQ(units.size(), 30u);
  size_t n_val = 0;
  for (auto& u : units) {
    EXPECT_EQ(u.text, docs[u.doc]);
    EXPECT_TRUE(u.eot_before);
    n_val += u.val;
  }
  EXPECT_EQ(n_val, 3u);
  // Two documents, small fraction: still one in val, one in train.
  auto two = plan_split({docs[0], docs[1]}, 0.01);
  EXPECT_NE(two[0].val, two[1].val);
  auto none = plan_split({docs[0], docs[1]}, 0.0);
  EXPECT_FALSE(none[0].val || none[1].val);
  testutil::bad_input_message([&] { plan_split({docs[0]}, 1.0); });
  testutil::bad_input_message([&] { plan_split({docs[0]}, -0.1); });
}
