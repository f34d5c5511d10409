// The trained tokenizer: size, compression, exact incremental training (against a naive recount trainer),
// encoding against a reference BPE, save/load round trip, losslessness on arbitrary bytes, file errors.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "data/pretokenize.h"
#include "data/tokenizer.h"
#include "test_util.h"

using onestep::Tokenizer;

namespace {

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Merges as saved in our format.
std::vector<std::pair<int, int>> saved_merges(const Tokenizer& t, const std::string& dir) {
  std::string p = dir + "/m.bpe";
  t.save(p);
  std::istringstream in(slurp(p));
  std::string line;
  for (int i = 0; i < 3; ++i) std::getline(in, line);
  std::vector<std::pair<int, int>> m;
  int a, b;
  while (in >> a >> b) m.emplace_back(a, b);
  return m;
}

// Naive trainer: recount every pair of every word before each merge.
std::vector<std::pair<int, int>> naive_train(const std::string& text, int vocab_size) {
  std::map<std::string, int64_t> freq;
  for (auto& p : testutil::pretokenize(text)) ++freq[p];
  std::vector<std::pair<std::vector<int>, int64_t>> words;
  for (auto& [w, c] : freq) {
    std::vector<int> s;
    for (unsigned char ch : w) s.push_back(ch);
    words.emplace_back(s, c);
  }
  std::vector<std::pair<int, int>> merges;
  while (static_cast<int>(merges.size()) < vocab_size - 257) {
    std::map<std::pair<int, int>, int64_t> cnt;
    for (auto& [s, c] : words)
      for (size_t i = 0; i + 1 < s.size(); ++i) cnt[{s[i], s[i + 1]}] += c;
    std::pair<int, int> best{-1, -1};
    int64_t bc = 0;
    for (auto& [p, c] : cnt)
      if (c > bc) bc = c, best = p;  // map order: the first of equal counts is the lowest pair
    if (bc == 0) break;
    int id = 256 + static_cast<int>(merges.size());
    merges.push_back(best);
    for (auto& [s, c] : words) {
      std::vector<int> n;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) n.push_back(id), i += 2;
        else n.push_back(s[i++]);
      }
      s = n;
    }
  }
  return merges;
}

// Reference encoder on ids: lowest-rank pair, all occurrences, until none applies.
std::vector<int32_t> ref_encode(const std::vector<std::pair<int, int>>& merges, const std::string& text) {
  std::map<std::pair<int, int>, int> rank;
  for (size_t r = 0; r < merges.size(); ++r) rank[merges[r]] = static_cast<int>(r);
  std::vector<int32_t> out;
  for (auto& piece : testutil::pretokenize(text)) {
    std::vector<int> s;
    for (unsigned char c : piece) s.push_back(c);
    while (true) {
      int best = INT32_MAX;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        auto it = rank.find({s[i], s[i + 1]});
        if (it != rank.end()) best = std::min(best, it->second);
      }
      if (best == INT32_MAX) break;
      std::vector<int> n;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == merges[best].first && s[i + 1] == merges[best].second) n.push_back(256 + best), i += 2;
        else n.push_back(s[i++]);
      }
      s = n;
    }
    out.insert(out.end(), s.begin(), s.end());
  }
  return out;
}

const std::string& corpus() {
  static std::string c = testutil::synthetic_corpus(300000, 5);
  return c;
}
const Tokenizer& trained() {
  static Tokenizer t = Tokenizer::train(corpus(), 1024);
  return t;
}

}  // namespace

TEST(Pretokenize, PiecesConcatenateToInputAndMatchHandWritten) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    std::string s = testutil::random_bytes(rng, rng() % 300);
    std::string joined;
    onestep::PretokenCursor cur(s);
    std::string_view p;
    while (cur.next(p)) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    ASSERT_EQ(joined, s);
  }
  std::string s = "Hello,   world!!\n\n  x I'm 12345 678 \t\t'S  ";
  std::vector<std::string> got;
  onestep::PretokenCursor cur(s);
  std::string_view p;
  while (cur.next(p)) got.emplace_back(p);
  EXPECT_EQ(got, testutil::pretokenize(s));
  EXPECT_EQ(got, (std::vector<std::string>{"Hello", ",", "  ", " world", "!!", "\n\n ", " x", " I", "'m", " 12345",
                                           " 678", " \t", "\t", "'", "S", "  "}));
}

TEST(Pretokenize, InvalidUtf8BecomesItsOwnPieces) {
  std::string s = "ab\xff\xfe cd\xc3";
  std::vector<std::string> got;
  onestep::PretokenCursor cur(s);
  std::string_view p;
  while (cur.next(p)) got.emplace_back(p);
  EXPECT_EQ(got, (std::vector<std::string>{"ab", "\xff\xfe", " cd", "\xc3"}));
}

TEST(Train, SizeAndCompression) {
  const Tokenizer& t = trained();
  EXPECT_EQ(t.vocab_size(), 1024);
  EXPECT_EQ(t.num_merges(), 1024 - 257);
  EXPECT_EQ(t.eot_token(), 1023);
  EXPECT_EQ(t.token_bytes(1023), "<|endoftext|>");
  auto ids = t.encode(corpus());
  EXPECT_LT(ids.size(), corpus().size() / 3) << "a 1024-token BPE should compress this text > 3x";
  for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 1023);
  EXPECT_EQ(t.decode(ids), corpus());
  auto eot_text = t.encode("<|endoftext|>");
  EXPECT_EQ(std::count(eot_text.begin(), eot_text.end(), t.eot_token()), 0);
}

TEST(Train, MatchesNaiveRecountTrainer) {
  std::string text = testutil::synthetic_corpus(30000, 9) + " aaaa aaaaa ababab 1111 !!!!";  // overlapping pairs
  for (int vs : {300, 600}) {
    Tokenizer t = Tokenizer::train(text, vs);
    EXPECT_EQ(saved_merges(t, testutil::temp_dir("naive")), naive_train(text, vs)) << "vocab " << vs;
  }
}

TEST(Train, DeterministicAndEncodesLikeReference) {
  Tokenizer again = Tokenizer::train(corpus(), 1024);
  std::string d = testutil::temp_dir("det");
  auto m = saved_merges(trained(), d);
  EXPECT_EQ(saved_merges(again, d), m);
  std::string text = testutil::synthetic_corpus(5000, 77) + std::string(600, 'e') + " " + std::string(300, ' ') + "x";
  EXPECT_EQ(trained().encode(text), ref_encode(m, text));
}

TEST(Train, RoundTripsArbitraryBytes) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s = testutil::random_bytes(rng, rng() % 500);
    ASSERT_EQ(trained().decode(trained().encode(s)), s);
  }
}

TEST(Train, TooLittleTextOrTooSmallVocabIsBadInput) {
  std::string msg = testutil::bad_input_message([] { Tokenizer::train("ab ab", 1000); });
  EXPECT_NE(msg.find("vocab_size"), std::string::npos) << msg;
  msg = testutil::bad_input_message([] { Tokenizer::train("hello", 100); });
  EXPECT_NE(msg.find("257"), std::string::npos) << msg;
  Tokenizer t = Tokenizer::train("", 257);  // no merges at all is allowed
  EXPECT_EQ(t.vocab_size(), 257);
  EXPECT_EQ(t.encode("hi"), (std::vector<int32_t>{'h', 'i'}));
}

TEST(SaveLoad, RoundTripGivesIdenticalEncodings) {
  std::string d = testutil::temp_dir("saveload");
  std::string p = d + "/tok.bpe";
  trained().save(p);
  EXPECT_FALSE(std::filesystem::exists(p + ".tmp"));
  std::string first = slurp(p);
  EXPECT_EQ(first.rfind("onestep-bpe v1\nvocab_size 1024\neot 1023\n", 0), 0u);
  Tokenizer t = Tokenizer::load(p);
  EXPECT_EQ(t.vocab_size(), trained().vocab_size());
  EXPECT_EQ(t.eot_token(), trained().eot_token());
  for (int id = 0; id < t.vocab_size(); ++id) ASSERT_EQ(t.token_bytes(id), trained().token_bytes(id));
  EXPECT_EQ(t.encode(corpus()), trained().encode(corpus()));
  std::mt19937 rng(8);
  for (int i = 0; i < 50; ++i) {
    std::string s = testutil::random_bytes(rng, 300);
    ASSERT_EQ(t.encode(s), trained().encode(s));
  }
  t.save(p);
  EXPECT_EQ(slurp(p), first);
}

TEST(SaveLoad, BadFilesAreBadInputNamingTheFile) {
  std::string d = testutil::temp_dir("badtok");
  std::string p = d + "/tok.bpe";
  std::string msg = testutil::bad_input_message([&] { Tokenizer::load(p); });
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  auto write_and_load = [&](const std::string& content) {
    { std::ofstream(p, std::ios::binary) << content; }
    std::string m = testutil::bad_input_message([&] { Tokenizer::load(p); });
    EXPECT_EQ(m.rfind(p + ": ", 0), 0u) << m;
    return m;
  };
  EXPECT_NE(write_and_load("hello\n").find("line 1"), std::string::npos);
  EXPECT_NE(write_and_load("onestep-bpe v1\nvocab_size 259\neot 258\n97 98\n").find("merge"), std::string::npos);
  EXPECT_NE(write_and_load("onestep-bpe v1\nvocab_size 258\neot 7\n97 98\n").find("eot"), std::string::npos);
  EXPECT_NE(write_and_load("onestep-bpe v1\nvocab_size 258\neot 257\n97 300\n").find("line 4"), std::string::npos);
  EXPECT_NE(write_and_load("onestep-bpe v1\nvocab_size 258\neot 257\n97\n").find("line 4"), std::string::npos);
  EXPECT_NE(write_and_load("onestep-bpe v1\nvocab_size x\neot 257\n").find("line 2"), std::string::npos);
  write_and_load("onestep-bpe v1\nvocab_size 259\neot 258\n97 98\n97 98\n");  // duplicate merge
  // A valid minimal file loads.
  { std::ofstream(p, std::ios::binary) << "onestep-bpe v1\nvocab_size 259\neot 258\n97 98\n256 99\n"; }
  Tokenizer t = Tokenizer::load(p);
  EXPECT_EQ(t.encode("abc ab"), (std::vector<int32_t>{257, ' ', 256}));
  EXPECT_EQ(t.token_bytes(257), "abc");
}

TEST(Decode, OutOfRangeIdIsBadInput) {
  testutil::bad_input_message([] { trained().decode({5, 5000}); });
  testutil::bad_input_message([] { trained().token_bytes(-1); });
}
