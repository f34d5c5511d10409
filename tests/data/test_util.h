// Helpers shared by the data tests: a hand-written GPT-2 pre-tokeniser (independent of the PCRE2 one; it knows
// ASCII and the few Unicode ranges used by the test strings), corpora, and error checks.
#pragma once
#include <gtest/gtest.h>

#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace testutil {

enum class Cls { L, N, S, O };

inline Cls classify(uint32_t cp) {
  if (cp < 128) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return Cls::L;
    if (cp >= '0' && cp <= '9') return Cls::N;
    if (cp == ' ' || (cp >= 9 && cp <= 13)) return Cls::S;
    return Cls::O;
  }
  if ((cp >= 0xC0 && cp <= 0x24F && cp != 0xD7 && cp != 0xF7) || (cp >= 0x3041 && cp <= 0x3096) ||
      (cp >= 0x30A1 && cp <= 0x30FA) || (cp >= 0x30FC && cp <= 0x30FF) || (cp >= 0x4E00 && cp <= 0x9FFF))
    return Cls::L;
  if (cp >= 0x1F000 && cp <= 0x1FAFF) return Cls::O;  // emoji, skin-tone modifiers (So, Sk)
  if (cp == 0xA0 || cp == 0x3000) return Cls::S;
  throw std::runtime_error("test pre-tokeniser: unknown code point " + std::to_string(cp));
}

// GPT-2's regex, by hand, for valid UTF-8 made of the classes above.
inline std::vector<std::string> pretokenize(const std::string& s) {
  std::vector<size_t> off;  // byte offset of each code point
  std::vector<Cls> cls;
  std::vector<uint32_t> cps;
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
    uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    off.push_back(i);
    cps.push_back(cp);
    cls.push_back(classify(cp));
    i += len;
  }
  const size_t n = cps.size();
  off.push_back(s.size());
  std::vector<std::string> out;
  auto emit = [&](size_t a, size_t b) { out.push_back(s.substr(off[a], off[b] - off[a])); };
  size_t i = 0;
  while (i < n) {
    if (cps[i] == '\'') {
      bool done = false;
      for (const char* suf : {"s", "t", "re", "ve", "m", "ll", "d"}) {
        std::string x(suf);
        if (s.compare(off[i] + 1, x.size(), x) == 0) {  // ASCII suffix: bytes = code points
          emit(i, i + 1 + x.size());
          i += 1 + x.size();
          done = true;
          break;
        }
      }
      if (done) continue;
    }
    bool matched = false;
    for (Cls want : {Cls::L, Cls::N, Cls::O}) {
      size_t j = i;
      if (cps[i] == ' ' && i + 1 < n && cls[i + 1] == want) j = i + 1;
      if (cls[j] != want) continue;
      size_t k = j;
      while (k < n && cls[k] == want) ++k;
      emit(i, k);
      i = k;
      matched = true;
      break;
    }
    if (matched) continue;
    size_t k = i;  // whitespace: \s+(?!\S) then \s+
    while (k < n && cls[k] == Cls::S) ++k;
    size_t e = k == n ? n : (k - 1 > i ? k - 1 : i + 1);
    emit(i, e);
    i = e;
  }
  return out;
}

// A deterministic English-like corpus: words, punctuation, numbers, contractions, paragraphs.
inline std::string synthetic_corpus(size_t bytes, uint32_t seed = 1) {
  static const char* words[] = {
      "the", "of", "and", "a", "to", "in", "is", "whale", "ship", "sea", "captain", "Ahab", "Ishmael", "water",
      "that", "it", "was", "he", "for", "on", "are", "as", "with", "his", "they", "I", "at", "be", "this", "have",
      "from", "or", "one", "had", "by", "word", "but", "not", "what", "all", "were", "we", "when", "your", "can",
      "said", "there", "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other",
      "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him", "into",
      "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could", "people", "my",
      "than", "first", "been", "call", "who", "its", "now", "find", "long", "down", "day", "did", "get", "come",
      "made", "may", "part", "harpoon", "Queequeg", "Starbuck", "Pequod", "leviathan", "oil", "boat", "deck"};
  const size_t nw = sizeof(words) / sizeof(words[0]);
  std::mt19937 rng(seed);
  std::string s;
  bool sentence_start = true;
  while (s.size() < bytes) {
    uint32_t r = rng();
    size_t w = static_cast<size_t>((static_cast<double>(r) / 4294967296.0) * (static_cast<double>(r) / 4294967296.0) * nw);
    std::string word = words[w % nw];
    if (sentence_start) word[0] = static_cast<char>(std::toupper(word[0]));
    sentence_start = false;
    if (!s.empty() && s.back() != '\n') s += ' ';
    s += word;
    uint32_t p = rng() % 100;
    if (p < 3) s += "'s";
    else if (p < 5) s.append(" ").append(std::to_string(rng() % 2000));
    else if (p < 7) s += " don't";
    else if (p < 8) s += " they'll";
    if (p >= 90 && p < 96) s += ",";
    else if (p >= 96) {
      s += (p == 99 ? "!" : ".");
      sentence_start = true;
      if (rng() % 6 == 0) s += "\n\n";
      else if (rng() % 3 == 0) s += "\n";
    }
  }
  return s;
}

inline std::string random_bytes(std::mt19937& rng, size_t n) {
  static const std::string specials[] = {"\r\n", std::string(1, '\0'), "\xff", "\xc3", "\xe2\x80", "\xf0\x9f\x99\x82",
                                         "\xc3\xa9", "   ", "\n\n", "'s", "<|endoftext|>", "\t"};
  std::string s;
  while (s.size() < n) {
    uint32_t r = rng() % 10;
    if (r < 4) s += static_cast<char>(rng() & 0xff);
    else if (r < 7) s += static_cast<char>('a' + rng() % 26);
    else s += specials[rng() % (sizeof(specials) / sizeof(specials[0]))];
  }
  return s;
}

template <class F>
std::string bad_input_message(F&& f) {
  try {
    f();
  } catch (const onestep::Error& e) {
    EXPECT_EQ(e.code(), onestep::ExitCode::bad_input) << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected onestep::Error (bad input), got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected a bad_input error, none was thrown";
  return "";
}

inline std::string temp_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / ("onestep_test_data_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

}  // namespace testutil
