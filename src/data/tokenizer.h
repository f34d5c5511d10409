// Byte-level BPE tokenizer (GPT-2 style).
//
// Text is first cut into pre-tokens by GPT-2's regular expression (data/pretokenize.h); each pre-token's bytes
// start as byte tokens and are merged by rank: repeatedly the adjacent pair with the lowest merge rank is
// merged, all its occurrences left to right. Decoding concatenates token bytes, so any byte string (invalid
// UTF-8, NULs, CRLF) round-trips. "<|endoftext|>" inside text is ordinary text; only eot_token() is special.
//
// Two vocabularies can be loaded (Tokenizer::load picks by the path):
//  * GPT-2's: PATH ending in ".json" is GPT-2's encoder.json, with vocab.bpe (merges by rank, first line a
//    "#version" comment) in the same folder. Keys use GPT-2's bytes_to_unicode map. Encodes exactly as GPT-2.
//  * onestep's own text format ("onestep-bpe v1"), written by save():
//        onestep-bpe v1
//        vocab_size N
//        eot ID
//        A B            <- N - 257 lines, one merge per line in rank order
//    Token ids 0..255 are the single bytes 0..255; merge r (0-based) joins tokens A and B (decimal ids, both
//    < 256 + r) into token 256 + r; the last token, ID = N - 1, is <|endoftext|>. Lines end in '\n'.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace onestep {

class Tokenizer {
 public:
  // Our own saved format, or GPT-2's encoder.json (with vocab.bpe beside it) when the path ends in .json.
  // A bad or missing file throws bad_input naming the file.
  static Tokenizer load(const std::string& path);
  // Trains `vocab_size` tokens (256 bytes + merges + <|endoftext|>) with GPT-2's pre-tokenisation. Ties are
  // broken by the highest count, then the lowest (left id, right id). Throws bad_input when vocab_size < 257
  // or the text has too few distinct pairs to reach vocab_size.
  static Tokenizer train(const std::string& text, int vocab_size);
  // Same, on several documents (no pre-token spans two documents).
  static Tokenizer train(const std::vector<std::string_view>& docs, int vocab_size);

  // Writes the onestep format to path.tmp, then renames it. Only tokenizers in our own id layout (trained or
  // loaded from our format) can be saved; GPT-2's cannot (internal error).
  void save(const std::string& path) const;

  std::vector<int32_t> encode(std::string_view text) const;
  void encode_append(std::string_view text, std::vector<int32_t>& out) const;
  std::string decode(const std::vector<int32_t>& ids) const;  // ids out of range: bad_input
  std::string token_bytes(int32_t id) const;
  int vocab_size() const { return static_cast<int>(vocab_.size()); }
  int32_t eot_token() const { return eot_; }
  int num_merges() const { return static_cast<int>(merges_.size()); }

 private:
  struct Merge {
    int32_t left, right, result;
  };
  struct MergeInfo {
    int32_t rank, result;
  };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  static Tokenizer from_merges(const std::vector<std::pair<int32_t, int32_t>>& merges, const std::string& where);
  static Tokenizer load_gpt2(const std::string& encoder_path);
  static Tokenizer load_native(const std::string& path);
  void build_index(const std::string& where);
  const MergeInfo* find(int32_t a, int32_t b) const {
    auto it = merge_map_.find(key(a, b));
    return it == merge_map_.end() ? nullptr : &it->second;
  }
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_long(std::string_view piece, std::vector<int32_t>& out) const;

  std::vector<std::string> vocab_;        // id -> bytes
  std::array<int32_t, 256> byte_token_{};  // byte -> id
  std::vector<Merge> merges_;             // by rank
  std::unordered_map<uint64_t, MergeInfo> merge_map_;
  int32_t eot_ = -1;
  bool native_layout_ = false;
};

}  // namespace onestep
