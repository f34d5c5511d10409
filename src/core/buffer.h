// A flat array that lives on one device: host memory (Device::cpu) or CUDA device memory (Device::cuda,
// only in builds with ONESTEP_CUDA). The model's activations and a stage's weights, gradients and updates
// are Buffers, so one model and one trainer serve both backends; only the kernels that read the memory differ.
// Host buffers are a std::vector underneath (zero-filled, as before); device buffers are cudaMalloc'd.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace onestep {

enum class Device { cpu, cuda };
const char* device_name(Device d);

namespace device_memory {
// Raw device memory (cudaMalloc / cudaFree / cudaMemset / cudaMemcpy). Each throws Error(bad_input) in a
// build without CUDA, and Error(bad_input) naming the bytes requested and free when the GPU is out of memory.
void* alloc(size_t bytes);
void release(void* p);
void zero(void* p, size_t bytes);
enum class Copy { host_to_device, device_to_host, device_to_device };
void copy(void* dst, const void* src, size_t bytes, Copy kind);  // either side on any GPU of the process
// Bytes of device memory held by Buffers (alloc / release) on all GPUs: now, and the most since the last
// reset_peak(). Stream-ordered scratch (cudaMallocAsync) is not counted here (gpu/gpu_info.h reports its pool).
struct MemoryStats {
  int64_t in_use = 0, peak = 0;
};
MemoryStats memory_stats();
void reset_peak();  // peak = in_use
// GPUs: how many this process sees (0 without CUDA, a driver or a device), and which one the calling host
// thread allocates on and launches on (cudaSetDevice; every new thread starts on GPU 0).
int gpu_count();
void use_gpu(int ordinal);
int current_gpu();
// Stream-ordered hand-over between host threads (each queues work on its own default stream): copy_async queues
// a copy on the calling thread's stream; mark() records the point that stream has reached; wait(m) makes the
// calling thread's stream wait for that point and releases m. Nothing blocks the host.
using StreamMark = void*;  // a CUDA event
void copy_async(void* dst, const void* src, size_t bytes);
StreamMark mark();
void wait(StreamMark m);
void drop(StreamMark m);  // releases m unwaited (never throws)
// Lets GPUs 0..n-1 read each other's memory where the hardware allows (cudaDeviceEnablePeerAccess): copies between
// them then skip the host. Copies work without it.
void connect_gpus(int n);
}  // namespace device_memory

template <class T>
class Buffer {
 public:
  explicit Buffer(Device d = Device::cpu) : device_(d) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      free_device();
      device_ = o.device_, host_ = std::move(o.host_), dev_ = std::exchange(o.dev_, nullptr), n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~Buffer() { free_device(); }

  Device device() const { return device_; }
  T* data() { return device_ == Device::cpu ? host_.data() : dev_; }
  const T* data() const { return device_ == Device::cpu ? host_.data() : dev_; }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  int64_t bytes() const { return static_cast<int64_t>(n_ * sizeof(T)); }

  // n zeros (the previous contents are dropped).
  void zeros(size_t n) {
    if (device_ == Device::cpu) {
      host_.assign(n, T{});
    } else {
      if (n != n_) free_device(), dev_ = n ? static_cast<T*>(device_memory::alloc(n * sizeof(T))) : nullptr;
      if (n) device_memory::zero(dev_, n * sizeof(T));
    }
    n_ = n;
  }
  // Resizes to n and copies n values from HOST memory.
  void upload(const T* src, size_t n) {
    if (device_ == Device::cpu) {
      host_.assign(src, src + n);
      n_ = n;
      return;
    }
    if (n != n_) zeros(n);
    if (n) device_memory::copy(dev_, src, n * sizeof(T), device_memory::Copy::host_to_device);
  }
  // Copies the contents to HOST memory (size() values).
  void download(T* dst) const {
    if (device_ == Device::cpu) std::copy(host_.begin(), host_.end(), dst);
    else if (n_) device_memory::copy(dst, dev_, n_ * sizeof(T), device_memory::Copy::device_to_host);
  }
  std::vector<T> to_host() const {
    std::vector<T> out(n_);
    download(out.data());
    return out;
  }
  Buffer& operator=(const std::vector<T>& host) {  // upload
    upload(host.data(), host.size());
    return *this;
  }
  // The same size and contents as `src` (any device to this one's).
  void copy_from(const Buffer& src) {
    if (src.device_ == Device::cpu) return upload(src.host_.data(), src.n_);
    if (device_ == Device::cpu) {
      host_.resize(src.n_), n_ = src.n_;
      return src.download(host_.data());
    }
    if (src.n_ != n_) zeros(src.n_);
    if (n_) device_memory::copy(dev_, src.dev_, n_ * sizeof(T), device_memory::Copy::device_to_device);
  }

  void swap(Buffer& o) noexcept {
    std::swap(device_, o.device_), host_.swap(o.host_), std::swap(dev_, o.dev_), std::swap(n_, o.n_);
  }

  // Host buffers only (the CPU trainer and the tests): element access.
  T& operator[](size_t i) { return host_[i]; }
  const T& operator[](size_t i) const { return host_[i]; }
  T* begin() { return host_.data(); }
  T* end() { return host_.data() + host_.size(); }
  const T* begin() const { return host_.data(); }
  const T* end() const { return host_.data() + host_.size(); }

 private:
  void free_device() {
    if (dev_) device_memory::release(dev_);
    dev_ = nullptr;
  }
  Device device_ = Device::cpu;
  std::vector<T> host_;
  T* dev_ = nullptr;
  size_t n_ = 0;
};

}  // namespace onestep
