// safetensors (https://github.com/huggingface/safetensors), hand-written: an 8-byte little-endian u64 header
// length N, N bytes of JSON header {"__metadata__": {str: str}, "name": {"dtype", "shape", "data_offsets"}},
// then the data; offsets are relative to the first byte after the header. The writer pads the header with
// spaces to a multiple of 8 and writes F32 tensors only; the reader validates every dtype it knows, but
// copies out F32 only. Host byte order is assumed little-endian (x86-64, aarch64).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace onestep {

struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;  // F32 only for writing; numel(shape) floats
};

// Writes PATH.tmp, fsyncs, renames to PATH (and fsyncs the folder). Tensors are written in the given order;
// names must be unique and not "__metadata__". bad_input naming PATH on any problem.
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Maps the file read-only; validates the header and every tensor's bounds on construction. Copies share the
// mapping.
class SafetensorsReader {
 public:
  // bad_input naming the file on any problem: missing, truncated, bad header length, bad JSON, unknown dtype,
  // size not matching shape, offsets out of range or overlapping.
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // in file (data offset) order
  bool has(const std::string& name) const;
  std::vector<int64_t> shape(const std::string& name) const;  // bad_input if absent
  std::string dtype(const std::string& name) const;           // bad_input if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Copies tensor `name` into dst. bad_input if absent ("PATH: tensor 'X': missing"), not F32, or its shape
  // differs from `expected` ("PATH: tensor 'X': shape [4,8] does not match the model's [4,16]").
  void read_into(const std::string& name, float* dst, const std::vector<int64_t>& expected) const;

 private:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // relative to data_
  };
  struct Mapping;
  const Entry& entry(const std::string& name) const;

  std::string path_;
  std::shared_ptr<Mapping> map_;
  const unsigned char* data_ = nullptr;  // first byte after the header
  std::map<std::string, Entry> entries_;
  std::vector<std::string> order_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace onestep
