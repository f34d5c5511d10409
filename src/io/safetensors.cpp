#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace onestep {

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the reference implementation's limit

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Bytes per element; 0 for an unknown dtype.
uint64_t dtype_size(const std::string& d) {
  static const std::map<std::string, uint64_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2},  {"BF16", 2}, {"I32", 4}, {"U32", 4},     {"F32", 4},     {"F64", 8}, {"I64", 8},
      {"U64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

// numel, or nullopt-like false on a negative dim or overflow.
bool checked_numel(const std::vector<int64_t>& shape, uint64_t& n) {
  n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / 16 / static_cast<uint64_t>(d)) return false;
    n *= static_cast<uint64_t>(d);
  }
  return true;
}

std::string errno_str() { return std::strerror(errno); }

void write_all(int fd, const void* p, size_t n, const std::string& tmp) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      errno = e;
      bad_input(tmp, "cannot write: " + errno_str());
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") bad_input(path, "tensor '" + t.name + "': invalid name");
    if (!seen.insert(t.name).second) bad_input(path, "tensor '" + t.name + "': duplicate name");
    uint64_t n = 0;
    if (!checked_numel(t.shape, n)) bad_input(path, "tensor '" + t.name + "': invalid shape " + shape_str(t.shape));
    if (n > 0 && t.data == nullptr) bad_input(path, "tensor '" + t.name + "': no data");
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + 4 * n}}};
    offset += 4 * n;
  }
  std::string hs = header.dump();
  hs.append((8 - hs.size() % 8) % 8, ' ');
  unsigned char len[8];
  uint64_t hn = hs.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(hn >> (8 * i));

  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) bad_input(tmp, "cannot create: " + errno_str());
  write_all(fd, len, 8, tmp);
  write_all(fd, hs.data(), hs.size(), tmp);
  for (const auto& t : tensors) {
    uint64_t n = 0;
    checked_numel(t.shape, n);
    if (n > 0) write_all(fd, t.data, 4 * n, tmp);
  }
  const bool synced = ::fsync(fd) == 0;
  std::string sync_err = synced ? "" : errno_str();
  const bool closed = ::close(fd) == 0;
  if (!synced || !closed) {
    std::string e = synced ? errno_str() : sync_err;
    ::unlink(tmp.c_str());
    bad_input(tmp, "cannot write: " + e);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string e = errno_str();
    ::unlink(tmp.c_str());
    bad_input(path, "cannot rename " + tmp + " to it: " + e);
  }
  // Make the rename durable; failure here is not fatal (some filesystems refuse fsync on folders).
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

struct SafetensorsReader::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr) ::munmap(addr, size);
  }
};

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path), map_(std::make_shared<Mapping>()) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) bad_input(path, "cannot open: " + errno_str());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string e = errno_str();
    ::close(fd);
    bad_input(path, "cannot stat: " + e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    bad_input(path, "not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    bad_input(path, "header: file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  std::string map_err = addr == MAP_FAILED ? errno_str() : "";
  ::close(fd);
  if (addr == MAP_FAILED) bad_input(path, "cannot map: " + map_err);
  map_->addr = addr;
  map_->size = size;
  const auto* bytes = static_cast<const unsigned char*>(addr);

  uint64_t hn = 0;
  for (int i = 0; i < 8; ++i) hn |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  if (hn > kMaxHeader)
    bad_input(path, "header: length " + std::to_string(hn) + " exceeds the 100 MiB limit (not a safetensors file?)");
  if (hn > size - 8)
    bad_input(path, "header: length " + std::to_string(hn) + " runs past the end of the " + std::to_string(size) +
                        "-byte file (truncated?)");
  if (hn < 2) bad_input(path, "header: length " + std::to_string(hn) + " is too short for a JSON object");
  data_ = bytes + 8 + hn;
  const uint64_t data_size = size - 8 - hn;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + hn);
  } catch (const nlohmann::json::exception& e) {
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    bad_input(path, "header: invalid JSON (" + what + ")");
  }
  if (!header.is_object()) bad_input(path, "header: expected a JSON object");

  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad_input(path, "header: __metadata__: expected an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) bad_input(path, "header: __metadata__." + m.key() + ": expected a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!v.is_object()) bad_input(path, where + "expected an object with dtype, shape, data_offsets");
    Entry e;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) bad_input(path, where + "dtype: expected a string");
    e.dtype = dt->get<std::string>();
    const uint64_t esize = dtype_size(e.dtype);
    if (esize == 0) bad_input(path, where + "dtype: unknown dtype '" + e.dtype + "'");
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) bad_input(path, where + "shape: expected an array of integers");
    for (const auto& d : *sh) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        bad_input(path, where + "shape: expected non-negative integers");
      e.shape.push_back(d.get<int64_t>());
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      bad_input(path, where + "data_offsets: expected [begin, end] with non-negative integers");
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    if (e.begin > e.end)
      bad_input(path, where + "data_offsets: begin " + std::to_string(e.begin) + " is after end " +
                          std::to_string(e.end));
    if (e.end > data_size)
      bad_input(path, where + "data_offsets: end " + std::to_string(e.end) + " is past the " +
                          std::to_string(data_size) + " data bytes in the file (truncated?)");
    uint64_t n = 0;
    if (!checked_numel(e.shape, n) || n * esize != e.end - e.begin)
      bad_input(path, where + "data_offsets: " + std::to_string(e.end - e.begin) + " bytes, but shape " +
                          shape_str(e.shape) + " of " + e.dtype + " needs " + std::to_string(n * esize));
    auto [pos, inserted] = entries_.emplace(name, std::move(e));
    spans.push_back({pos->second.begin, pos->second.end, &pos->first});
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end)
      bad_input(path, "tensor '" + *spans[i].name + "': data_offsets overlap those of tensor '" +
                          *spans[i - 1].name + "'");
  }
  for (const auto& s : spans) order_.push_back(*s.name);
}

std::vector<std::string> SafetensorsReader::names() const { return order_; }

bool SafetensorsReader::has(const std::string& name) const { return entries_.count(name) != 0; }

const SafetensorsReader::Entry& SafetensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) bad_input(path_, "tensor '" + name + "': missing");
  return it->second;
}

std::vector<int64_t> SafetensorsReader::shape(const std::string& name) const { return entry(name).shape; }

std::string SafetensorsReader::dtype(const std::string& name) const { return entry(name).dtype; }

void SafetensorsReader::read_into(const std::string& name, float* dst, const std::vector<int64_t>& expected) const {
  const Entry& e = entry(name);
  if (e.dtype != "F32") bad_input(path_, "tensor '" + name + "': dtype " + e.dtype + ", expected F32");
  if (e.shape != expected)
    bad_input(path_, "tensor '" + name + "': shape " + shape_str(e.shape) + " does not match the model's " +
                         shape_str(expected));
  if (e.end > e.begin) std::memcpy(dst, data_ + e.begin, e.end - e.begin);
}

}  // namespace onestep
