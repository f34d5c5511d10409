// GPT-2's pre-tokenisation: the text is cut into pieces by the regular expression
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (PCRE2, UTF + UCP). BPE merges never cross a piece boundary.
// Bytes that are not valid UTF-8 are never matched by the expression (PCRE2_MATCH_INVALID_UTF); each maximal
// run of them becomes a piece of its own, so the pieces always concatenate back to the input, byte for byte.
#pragma once
#include <string_view>

namespace onestep {

class PretokenCursor {
 public:
  explicit PretokenCursor(std::string_view text);
  ~PretokenCursor();
  PretokenCursor(const PretokenCursor&) = delete;
  PretokenCursor& operator=(const PretokenCursor&) = delete;
  // Sets piece to the next pre-token (never empty) and returns true, or returns false at the end.
  bool next(std::string_view& piece);

 private:
  std::string_view text_;
  size_t pos_ = 0;
  size_t pending_begin_ = 0, pending_end_ = 0;  // a match found after a gap of invalid bytes
  void* match_data_ = nullptr;
  void* match_context_ = nullptr;
  void* jit_stack_ = nullptr;
};

}  // namespace onestep
