// BPE training: pre-token frequencies, then merges with incremental pair counts. Each merge touches only the
// words that contain its pair (an index pair -> words), and a lazy max-heap keyed by (count, -left, -right)
// gives the next pair: an entry whose count is stale is re-pushed with the current count when popped.
#include <algorithm>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "data/pretokenize.h"
#include "data/tokenizer.h"

namespace onestep {
namespace {

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }
int32_t left_of(uint64_t k) { return static_cast<int32_t>(k >> 32); }
int32_t right_of(uint64_t k) { return static_cast<int32_t>(k & 0xffffffffu); }

struct Entry {
  int64_t count;
  uint64_t pair;  // (left << 32 | right): a lower key is a lower (left, right)
  bool operator<(const Entry& o) const {  // max-heap: higher count first, then the lower pair
    return count != o.count ? count < o.count : pair > o.pair;
  }
};

}  // namespace

Tokenizer Tokenizer::train(const std::string& text, int vocab_size) {
  return train(std::vector<std::string_view>{std::string_view(text)}, vocab_size);
}

Tokenizer Tokenizer::train(const std::vector<std::string_view>& docs, int vocab_size) {
  if (vocab_size < 257)
    bad_input("vocab_size", "must be at least 257 (256 bytes + <|endoftext|>), got " + std::to_string(vocab_size));
  const size_t target = static_cast<size_t>(vocab_size) - 257;

  // 1. Pre-token frequencies.
  std::unordered_map<std::string_view, int64_t> freq;
  size_t total_bytes = 0;
  for (std::string_view d : docs) {
    total_bytes += d.size();
    PretokenCursor cur(d);
    std::string_view piece;
    while (cur.next(piece))
      if (piece.size() > 1) ++freq[piece];  // single bytes hold no pair
  }
  // Sorted for a deterministic word order (the result does not depend on it, but the run time does not vary).
  std::vector<std::pair<std::string_view, int64_t>> uniq(freq.begin(), freq.end());
  freq.clear();
  std::sort(uniq.begin(), uniq.end());

  std::vector<std::vector<int32_t>> words(uniq.size());
  std::vector<int64_t> wcount(uniq.size());
  std::unordered_map<uint64_t, int64_t> count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  count.reserve(1 << 16);
  where.reserve(1 << 16);
  for (size_t w = 0; w < uniq.size(); ++w) {
    auto& s = words[w];
    for (char c : uniq[w].first) s.push_back(static_cast<unsigned char>(c));
    wcount[w] = uniq[w].second;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      uint64_t k = pair_key(s[i], s[i + 1]);
      count[k] += wcount[w];
      auto& v = where[k];
      if (v.empty() || v.back() != static_cast<int32_t>(w)) v.push_back(static_cast<int32_t>(w));
    }
  }
  std::vector<Entry> init;
  init.reserve(count.size());
  for (auto& [k, c] : count) init.push_back({c, k});
  std::priority_queue<Entry> heap(std::less<Entry>(), std::move(init));

  // 2. Merges.
  std::vector<std::pair<int32_t, int32_t>> merges;
  merges.reserve(target);
  std::vector<uint64_t> touched;
  std::vector<int32_t> merged_word;
  while (merges.size() < target) {
    if (heap.empty())
      bad_input("vocab_size", "the training text (" + std::to_string(total_bytes) + " bytes) supports at most " +
                                  std::to_string(256 + merges.size() + 1) + " tokens, " + std::to_string(vocab_size) +
                                  " were asked for");
    Entry e = heap.top();
    heap.pop();
    auto cit = count.find(e.pair);
    int64_t cur = cit == count.end() ? 0 : cit->second;
    if (cur != e.count) {
      if (cur > 0) heap.push({cur, e.pair});
      continue;
    }
    if (cur <= 0) continue;
    const int32_t a = left_of(e.pair), b = right_of(e.pair);
    const int32_t id = static_cast<int32_t>(256 + merges.size());
    merges.emplace_back(a, b);

    std::vector<int32_t> list = std::move(where[e.pair]);
    where.erase(e.pair);
    std::sort(list.begin(), list.end());
    list.erase(std::unique(list.begin(), list.end()), list.end());
    touched.clear();
    for (int32_t w : list) {
      auto& s = words[w];
      const int64_t c = wcount[w];
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) count[pair_key(s[i], s[i + 1])] -= c;
      merged_word.clear();
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          merged_word.push_back(id);
          i += 2;
        } else {
          merged_word.push_back(s[i]);
          i += 1;
        }
      }
      s.swap(merged_word);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        uint64_t k = pair_key(s[i], s[i + 1]);
        count[k] += c;
        if (s[i] == id || s[i + 1] == id) {  // only pairs with the new token are new to this word
          auto& v = where[k];
          if (v.empty() || v.back() != w) v.push_back(w);
          touched.push_back(k);
        }
      }
    }
    count.erase(e.pair);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t k : touched) heap.push({count[k], k});
  }
  return from_merges(merges, "vocab_size");
}

}  // namespace onestep
