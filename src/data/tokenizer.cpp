#include "data/tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "core/error.h"
#include "data/pretokenize.h"

namespace onestep {
namespace {

constexpr const char* kEotText = "<|endoftext|>";

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the rest to U+0100.. in byte order.
std::array<uint32_t, 256> gpt2_byte_to_codepoint() {
  std::array<uint32_t, 256> m{};
  uint32_t n = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    m[b] = printable ? b : 256 + n++;
  }
  return m;
}

// Decodes one of GPT-2's unicode-mapped strings (UTF-8) back to bytes; false if it is not one.
bool gpt2_unmap(const std::string& s, const std::unordered_map<uint32_t, uint8_t>& inv, std::string& out) {
  out.clear();
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    int len;
    if (c < 0x80) {
      cp = c, len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F, len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F, len = 3;
    } else {
      return false;  // the map only uses code points below U+0800
    }
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    auto it = inv.find(cp);
    if (it == inv.end()) return false;
    out.push_back(static_cast<char>(it->second));
    i += len;
  }
  return true;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) bad_input(path, "cannot open the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool parse_int(std::string_view s, long long& v) {
  if (s.empty() || s.size() > 18) return false;
  long long r = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    r = r * 10 + (c - '0');
  }
  v = r;
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------- loading

Tokenizer Tokenizer::load(const std::string& path) {
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) return load_gpt2(path);
  return load_native(path);
}

Tokenizer Tokenizer::from_merges(const std::vector<std::pair<int32_t, int32_t>>& merges, const std::string& where) {
  Tokenizer t;
  t.vocab_.reserve(256 + merges.size() + 1);
  for (int b = 0; b < 256; ++b) {
    t.vocab_.emplace_back(1, static_cast<char>(b));
    t.byte_token_[b] = b;
  }
  for (size_t r = 0; r < merges.size(); ++r) {
    auto [a, b] = merges[r];
    int32_t id = static_cast<int32_t>(256 + r);
    if (a < 0 || b < 0 || a >= id || b >= id)
      bad_input(where, "merge " + std::to_string(r) + ": token ids must be below " + std::to_string(id) +
                           ", found " + std::to_string(a) + " " + std::to_string(b));
    t.merges_.push_back({a, b, id});
    t.vocab_.push_back(t.vocab_[a] + t.vocab_[b]);
  }
  t.eot_ = static_cast<int32_t>(t.vocab_.size());
  t.vocab_.push_back(kEotText);
  t.native_layout_ = true;
  t.build_index(where);
  return t;
}

void Tokenizer::build_index(const std::string& where) {
  merge_map_.clear();
  merge_map_.reserve(merges_.size() * 2);
  for (size_t r = 0; r < merges_.size(); ++r) {
    const Merge& m = merges_[r];
    if (!merge_map_.emplace(key(m.left, m.right), MergeInfo{static_cast<int32_t>(r), m.result}).second)
      bad_input(where, "merge " + std::to_string(r) + ": the pair " + std::to_string(m.left) + " " +
                           std::to_string(m.right) + " is listed twice");
  }
}

Tokenizer Tokenizer::load_native(const std::string& path) {
  std::string text = read_file(path);
  std::vector<std::string_view> lines;
  {
    std::string_view s(text);
    size_t p = 0;
    while (p < s.size()) {
      size_t e = s.find('\n', p);
      if (e == std::string_view::npos) e = s.size();
      lines.push_back(s.substr(p, e - p));
      p = e + 1;
    }
  }
  auto line_err = [&](size_t i, const std::string& what) -> void {
    bad_input(path, "line " + std::to_string(i + 1) + ": " + what);
  };
  if (lines.empty() || lines[0] != "onestep-bpe v1")
    bad_input(path, "line 1: expected 'onestep-bpe v1' (a tokenizer saved by onestep, or GPT-2's encoder.json)");
  long long n = 0, eot = 0;
  if (lines.size() < 3) line_err(lines.size(), "expected 'vocab_size N' and 'eot ID' lines");
  if (lines[1].substr(0, 11) != "vocab_size " || !parse_int(lines[1].substr(11), n) || n < 257 || n > INT32_MAX)
    line_err(1, "expected 'vocab_size N' with N >= 257");
  if (lines[2].substr(0, 4) != "eot " || !parse_int(lines[2].substr(4), eot))
    line_err(2, "expected 'eot ID'");
  if (eot != n - 1) line_err(2, "eot: expected " + std::to_string(n - 1) + " (the last token), found " + std::to_string(eot));
  size_t n_merges = static_cast<size_t>(n - 257);
  if (lines.size() - 3 != n_merges)
    bad_input(path, "merges: vocab_size " + std::to_string(n) + " needs " + std::to_string(n_merges) +
                        " merge lines, found " + std::to_string(lines.size() - 3));
  std::vector<std::pair<int32_t, int32_t>> merges;
  merges.reserve(n_merges);
  for (size_t i = 3; i < lines.size(); ++i) {
    std::string_view l = lines[i];
    size_t sp = l.find(' ');
    long long a, b;
    if (sp == std::string_view::npos || !parse_int(l.substr(0, sp), a) || !parse_int(l.substr(sp + 1), b))
      line_err(i, "expected a merge 'A B' (two token ids)");
    if (a >= static_cast<long long>(256 + i - 3) || b >= static_cast<long long>(256 + i - 3))
      line_err(i, "merge ids must be below " + std::to_string(256 + i - 3));
    merges.emplace_back(static_cast<int32_t>(a), static_cast<int32_t>(b));
  }
  return from_merges(merges, path);
}

Tokenizer Tokenizer::load_gpt2(const std::string& encoder_path) {
  std::string text = read_file(encoder_path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    bad_input(encoder_path, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object() || j.empty()) bad_input(encoder_path, "expected a JSON object mapping tokens to ids");

  auto b2c = gpt2_byte_to_codepoint();
  std::unordered_map<uint32_t, uint8_t> c2b;
  for (int b = 0; b < 256; ++b) c2b[b2c[b]] = static_cast<uint8_t>(b);

  Tokenizer t;
  size_t n = j.size();
  t.vocab_.assign(n, std::string());
  std::vector<char> seen(n, 0);
  std::unordered_map<std::string, int32_t> by_bytes;
  by_bytes.reserve(n * 2);
  std::string bytes;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_number_integer())
      bad_input(encoder_path, "\"" + it.key() + "\": expected an integer token id");
    long long id = it.value().get<long long>();
    if (id < 0 || id >= static_cast<long long>(n))
      bad_input(encoder_path, "\"" + it.key() + "\": id " + std::to_string(id) + " outside 0.." + std::to_string(n - 1));
    if (seen[id]) bad_input(encoder_path, "id " + std::to_string(id) + " is used twice");
    seen[id] = 1;
    if (it.key() == kEotText) {
      bytes = kEotText;
      t.eot_ = static_cast<int32_t>(id);
    } else if (!gpt2_unmap(it.key(), c2b, bytes)) {
      bad_input(encoder_path, "\"" + it.key() + "\": not a GPT-2 byte-mapped token");
    }
    t.vocab_[id] = bytes;
    if (it.key() != kEotText) by_bytes.emplace(bytes, static_cast<int32_t>(id));
  }
  if (t.eot_ < 0) bad_input(encoder_path, "\"<|endoftext|>\": missing");
  for (int b = 0; b < 256; ++b) {
    auto it = by_bytes.find(std::string(1, static_cast<char>(b)));
    if (it == by_bytes.end()) bad_input(encoder_path, "the single-byte token for byte " + std::to_string(b) + " is missing");
    t.byte_token_[b] = it->second;
  }

  std::string bpe_path = (std::filesystem::path(encoder_path).parent_path() / "vocab.bpe").string();
  std::string merges_text = read_file(bpe_path);
  std::string_view s(merges_text);
  size_t p = 0, line_no = 0;
  std::string lb, rb;
  while (p < s.size()) {
    size_t e = s.find('\n', p);
    if (e == std::string_view::npos) e = s.size();
    std::string_view l = s.substr(p, e - p);
    p = e + 1;
    ++line_no;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty() || (line_no == 1 && l.substr(0, 8) == "#version")) continue;
    size_t sp = l.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp + 1 >= l.size() || l.find(' ', sp + 1) != std::string_view::npos)
      bad_input(bpe_path, "line " + std::to_string(line_no) + ": expected a merge 'A B'");
    if (!gpt2_unmap(std::string(l.substr(0, sp)), c2b, lb) || !gpt2_unmap(std::string(l.substr(sp + 1)), c2b, rb))
      bad_input(bpe_path, "line " + std::to_string(line_no) + ": not GPT-2 byte-mapped tokens");
    auto ia = by_bytes.find(lb), ib = by_bytes.find(rb), ir = by_bytes.find(lb + rb);
    if (ia == by_bytes.end() || ib == by_bytes.end() || ir == by_bytes.end())
      bad_input(bpe_path, "line " + std::to_string(line_no) + ": merge '" + std::string(l) +
                              "' uses or makes a token missing from " + encoder_path);
    t.merges_.push_back({ia->second, ib->second, ir->second});
  }
  t.native_layout_ = false;
  t.build_index(bpe_path);
  return t;
}

// ---------------------------------------------------------------------------------------------- saving

void Tokenizer::save(const std::string& path) const {
  if (!native_layout_) internal_error("Tokenizer::save: only onestep-trained vocabularies can be saved (not GPT-2's)");
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) bad_input(path, "cannot write " + tmp);
    std::string out;
    out.reserve(merges_.size() * 12 + 64);
    out += "onestep-bpe v1\nvocab_size " + std::to_string(vocab_size()) + "\neot " + std::to_string(eot_) + "\n";
    for (const Merge& m : merges_) {
      out += std::to_string(m.left);
      out += ' ';
      out += std::to_string(m.right);
      out += '\n';
    }
    f.write(out.data(), static_cast<std::streamsize>(out.size()));
    f.close();
    if (!f) bad_input(path, "write to " + tmp + " failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) bad_input(path, "cannot rename " + tmp + ": " + ec.message());
}

// ---------------------------------------------------------------------------------------------- encoding

// Short pieces: arrays, with each adjacent pair's rank kept and only the pairs next to a merge looked up again.
void Tokenizer::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  constexpr int kMax = 256;
  const int n = static_cast<int>(piece.size());
  if (n == 1) {
    out.push_back(byte_token_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (n > kMax) {
    bpe_long(piece, out);
    return;
  }
  int32_t sym[kMax], rk[kMax], res[kMax], orig[kMax];
  bool changed[kMax];
  int m = n;
  for (int i = 0; i < m; ++i) sym[i] = byte_token_[static_cast<unsigned char>(piece[i])];
  auto look = [&](int i) {
    const MergeInfo* mi = find(sym[i], sym[i + 1]);
    rk[i] = mi ? mi->rank : INT32_MAX;
    res[i] = mi ? mi->result : -1;
  };
  for (int i = 0; i + 1 < m; ++i) look(i);
  while (m > 1) {
    int32_t r = INT32_MAX;
    for (int i = 0; i + 1 < m; ++i) r = std::min(r, rk[i]);
    if (r == INT32_MAX) break;
    int w = 0;
    for (int i = 0; i < m; ++w) {  // merge every occurrence of the pair, left to right
      if (i + 1 < m && rk[i] == r) {
        sym[w] = res[i], changed[w] = true, i += 2;
      } else {
        sym[w] = sym[i], changed[w] = false, orig[w] = i, i += 1;
      }
    }
    m = w;
    for (int i = 0; i + 1 < m; ++i) {
      if (!changed[i] && !changed[i + 1]) {
        rk[i] = rk[orig[i]], res[i] = res[orig[i]];  // orig[i] >= i: not yet overwritten
      } else {
        look(i);
      }
    }
  }
  out.insert(out.end(), sym, sym + m);
}

// Long pieces (e.g. a long run of spaces or symbols): linked list + heap of (rank, position). All entries of
// the lowest rank are applied before new pairs are pushed, which is exactly "merge all occurrences".
void Tokenizer::bpe_long(std::string_view piece, std::vector<int32_t>& out) const {
  const int n = static_cast<int>(piece.size());
  std::vector<int32_t> tok(n), nxt(n), prv(n);
  std::vector<char> alive(n, 1);
  for (int i = 0; i < n; ++i) {
    tok[i] = byte_token_[static_cast<unsigned char>(piece[i])];
    nxt[i] = i + 1 < n ? i + 1 : -1;
    prv[i] = i - 1;
  }
  struct E {
    int32_t rank, pos, left, right, result;
    bool operator>(const E& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<E, std::vector<E>, std::greater<E>> heap;
  auto push = [&](int i) {
    if (i < 0 || nxt[i] < 0) return;
    if (const MergeInfo* mi = find(tok[i], tok[nxt[i]])) heap.push({mi->rank, i, tok[i], tok[nxt[i]], mi->result});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<int> merged;
  while (!heap.empty()) {
    int32_t r = heap.top().rank;
    merged.clear();
    while (!heap.empty() && heap.top().rank == r) {
      E e = heap.top();
      heap.pop();
      int p = e.pos;
      if (!alive[p] || nxt[p] < 0 || tok[p] != e.left || tok[nxt[p]] != e.right) continue;
      int q = nxt[p];
      tok[p] = e.result;
      alive[q] = 0;
      nxt[p] = nxt[q];
      if (nxt[q] >= 0) prv[nxt[q]] = p;
      merged.push_back(p);
    }
    for (int p : merged) {
      push(prv[p]);
      push(p);
    }
  }
  for (int i = 0; i >= 0; i = nxt[i]) out.push_back(tok[i]);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  encode_append(text, out);
  return out;
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out) const {
  // A cache per call: keys are views into `text`, so it is thread-safe and needs no eviction.
  std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;
  std::vector<int32_t> store;
  PretokenCursor cur(text);
  std::string_view piece;
  while (cur.next(piece)) {
    if (piece.size() == 1) {
      out.push_back(byte_token_[static_cast<unsigned char>(piece[0])]);
      continue;
    }
    auto it = cache.find(piece);
    if (it != cache.end()) {
      out.insert(out.end(), store.begin() + it->second.first, store.begin() + it->second.first + it->second.second);
      continue;
    }
    size_t s = out.size();
    bpe(piece, out);
    cache.emplace(piece, std::make_pair(static_cast<uint32_t>(store.size()), static_cast<uint32_t>(out.size() - s)));
    store.insert(store.end(), out.begin() + static_cast<std::ptrdiff_t>(s), out.end());
  }
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    bad_input("token id", std::to_string(id) + " is outside the vocabulary (size " + std::to_string(vocab_size()) + ")");
  return vocab_[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size())
      bad_input("token id", std::to_string(id) + " is outside the vocabulary (size " + std::to_string(vocab_size()) + ")");
    s += vocab_[id];
  }
  return s;
}

}  // namespace onestep
