#include "data/shards.h"

#include <glob.h>

#include <algorithm>
#include <climits>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace onestep {
namespace {

void put_le32(unsigned char* p, uint32_t v) {
  p[0] = v & 0xff, p[1] = (v >> 8) & 0xff, p[2] = (v >> 16) & 0xff, p[3] = (v >> 24) & 0xff;
}
uint32_t get_le32(const unsigned char* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

}  // namespace

void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int vocab_size) {
  if (vocab_size <= 0) internal_error("write_shard: vocab_size must be positive");
  if (tokens.size() > static_cast<size_t>(INT32_MAX))
    bad_input(path, "too many tokens for one shard (" + std::to_string(tokens.size()) + ")");
  const int version = vocab_size <= 65536 ? 1 : 2;
  const size_t width = version == 1 ? 2 : 4;
  std::vector<unsigned char> buf(kShardHeaderInts * 4 + tokens.size() * width, 0);
  put_le32(&buf[0], kShardMagic);
  put_le32(&buf[4], version);
  put_le32(&buf[8], static_cast<uint32_t>(tokens.size()));
  unsigned char* p = buf.data() + kShardHeaderInts * 4;
  for (size_t i = 0; i < tokens.size(); ++i) {
    int32_t t = tokens[i];
    if (t < 0 || t >= vocab_size)
      internal_error("write_shard " + path + ": token " + std::to_string(t) + " at position " + std::to_string(i) +
                     " is outside the vocabulary (size " + std::to_string(vocab_size) + ")");
    if (version == 1) {
      p[0] = t & 0xff, p[1] = (t >> 8) & 0xff, p += 2;
    } else {
      put_le32(p, static_cast<uint32_t>(t)), p += 4;
    }
  }
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) bad_input(path, "cannot write " + tmp + ": " + std::strerror(errno));
    f.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    f.close();
    if (!f) bad_input(path, "write to " + tmp + " failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) bad_input(path, "cannot rename " + tmp + ": " + ec.message());
}

std::vector<int32_t> read_shard(const std::string& path, int vocab_size) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) bad_input(path, std::string("cannot open: ") + std::strerror(errno));
  const auto size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  constexpr uint64_t hb = kShardHeaderInts * 4;
  if (size < hb)
    bad_input(path, "truncated: the file is " + std::to_string(size) + " bytes, shorter than the 1024-byte header");
  unsigned char header[hb];
  f.read(reinterpret_cast<char*>(header), hb);
  if (!f) bad_input(path, "cannot read the header");
  const auto magic = static_cast<int32_t>(get_le32(header));
  const auto version = static_cast<int32_t>(get_le32(header + 4));
  const auto n = static_cast<int32_t>(get_le32(header + 8));
  if (magic != kShardMagic)
    bad_input(path, "header[0] (magic): expected " + std::to_string(kShardMagic) + ", found " + std::to_string(magic));
  if (version != 1 && version != 2)
    bad_input(path, "header[1] (version): expected 1 (uint16 tokens) or 2 (uint32 tokens), found " + std::to_string(version));
  if (n < 0) bad_input(path, "header[2] (token count): expected >= 0, found " + std::to_string(n));
  const uint64_t width = version == 1 ? 2 : 4;
  const uint64_t holds = (size - hb) / width;
  if (holds < static_cast<uint64_t>(n))
    bad_input(path, "truncated: header says " + std::to_string(n) + " tokens, file holds " + std::to_string(holds));
  if (size != hb + width * static_cast<uint64_t>(n))
    bad_input(path, "size: header says " + std::to_string(n) + " tokens (" + std::to_string(hb + width * n) +
                        " bytes), but the file has " + std::to_string(size) + " bytes");
  std::vector<unsigned char> raw(width * static_cast<uint64_t>(n));
  f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  if (!f) bad_input(path, "cannot read the tokens");
  std::vector<int32_t> tokens(n);
  for (int32_t i = 0; i < n; ++i) {
    const unsigned char* q = raw.data() + width * i;
    uint32_t t = version == 1 ? uint32_t(q[0]) | uint32_t(q[1]) << 8 : get_le32(q);
    if ((vocab_size > 0 && t >= static_cast<uint32_t>(vocab_size)) || t > static_cast<uint32_t>(INT32_MAX))
      bad_input(path, "token " + std::to_string(t) + " at position " + std::to_string(i) +
                          " is outside the vocabulary (size " + std::to_string(vocab_size) + ")");
    tokens[i] = static_cast<int32_t>(t);
  }
  return tokens;
}

std::vector<std::string> expand_glob(const std::string& pattern, const std::string& field) {
  glob_t g{};
  int rc = ::glob(pattern.c_str(), GLOB_BRACE | GLOB_TILDE, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  if (out.empty()) bad_input(field, "no file matches '" + pattern + "'");
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace onestep
