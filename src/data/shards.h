// Token shards in llm.c's format: a header of 256 little-endian int32 ([0] magic 20240520, [1] version:
// 1 = uint16 tokens, 2 = uint32 tokens, [2] number of tokens), then the tokens, little-endian.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace onestep {

constexpr int32_t kShardMagic = 20240520;
constexpr int kShardHeaderInts = 256;

// Version 1 iff vocab_size <= 65536, else 2. Every token must lie in [0, vocab_size) (internal error if not).
// Written to path.tmp, then renamed.
void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int vocab_size);

// Validates the magic, the version, the size against the header's count, and (vocab_size > 0) every token.
// Errors are bad_input naming PATH, e.g. "PATH: token 123456 at position 17 is outside the vocabulary (size 4096)".
std::vector<int32_t> read_shard(const std::string& path, int vocab_size);

// Expands a glob pattern (sorted). No match: bad_input(field, "no file matches 'PATTERN'").
std::vector<std::string> expand_glob(const std::string& pattern, const std::string& field);

}  // namespace onestep
