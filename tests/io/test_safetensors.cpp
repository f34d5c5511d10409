#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "../temp_dir_test.h"

namespace fs = std::filesystem;
using onestep::Error;
using onestep::ExitCode;
using onestep::SafetensorsReader;
using onestep::TensorRef;

namespace {

class SafetensorsTest : public onestep::test::TempDirTest {
 protected:
  std::string file(const std::string& n) const { return (dir_ / n).string(); }
};

std::string u64le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

std::string f32le(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());  // host is little-endian
  return s;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A file made from the spec by hand: header then data, with the given header JSON.
std::string make_file(const std::string& header_json, const std::string& data) {
  return u64le(header_json.size()) + header_json + data;
}

// Expects `f` to throw a bad_input Error whose message names `path` and contains `needle`.
template <class F>
void expect_bad_input(F&& f, const std::string& path, const std::string& needle) {
  try {
    f();
    FAIL() << "no exception; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input);
    std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

}  // namespace

TEST_F(SafetensorsTest, RoundTripWithMetadata) {
  std::vector<float> a = {1.f, -2.5f, 3.25f, 4.f, 5.f, 6.f};
  std::vector<float> b = {7.f, 8.f, 9.f};
  std::vector<float> s = {42.f};
  const std::string p = file("rt.safetensors");
  onestep::write_safetensors(p, {{"zeta", {2, 3}, a.data()}, {"alpha", {3}, b.data()}, {"scalar", {}, s.data()}},
                             {{"format", "pt"}, {"step", "17"}});
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  SafetensorsReader r(p);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"zeta", "alpha", "scalar"}));  // file order
  EXPECT_TRUE(r.has("alpha"));
  EXPECT_FALSE(r.has("beta"));
  EXPECT_EQ(r.shape("zeta"), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r.shape("scalar"), (std::vector<int64_t>{}));
  EXPECT_EQ(r.dtype("alpha"), "F32");
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(r.metadata().at("step"), "17");
  std::vector<float> ga(6), gb(3), gs(1);
  r.read_into("zeta", ga.data(), {2, 3});
  r.read_into("alpha", gb.data(), {3});
  r.read_into("scalar", gs.data(), {});
  EXPECT_EQ(ga, a);
  EXPECT_EQ(gb, b);
  EXPECT_EQ(gs, s);

  // Copies share the mapping and outlive the original.
  SafetensorsReader copy = r;
  { SafetensorsReader gone = std::move(r); }
  std::vector<float> again(6);
  copy.read_into("zeta", again.data(), {2, 3});
  EXPECT_EQ(again, a);
}

TEST_F(SafetensorsTest, OverwriteReplacesFile) {
  const std::string p = file("o.safetensors");
  std::vector<float> a = {1, 2}, b = {3, 4, 5};
  onestep::write_safetensors(p, {{"x", {2}, a.data()}});
  onestep::write_safetensors(p, {{"x", {3}, b.data()}});
  SafetensorsReader r(p);
  EXPECT_EQ(r.shape("x"), (std::vector<int64_t>{3}));
  EXPECT_TRUE(r.metadata().empty());
}

TEST_F(SafetensorsTest, WriterHeaderIsAlignedValidJson) {
  std::vector<float> a(5, 1.f), b(7, 2.f);
  const std::string p = file("h.safetensors");
  onestep::write_safetensors(p, {{"a", {5}, a.data()}, {"b.weight", {7, 1}, b.data()}}, {{"k", "v"}});
  std::ifstream in(p, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 4 * (5 + 7));
  auto h = nlohmann::json::parse(bytes.substr(8, n));  // trailing spaces are JSON whitespace
  EXPECT_EQ(h["__metadata__"]["k"], "v");
  EXPECT_EQ(h["a"]["dtype"], "F32");
  EXPECT_EQ(h["a"]["shape"], nlohmann::json::array({5}));
  EXPECT_EQ(h["a"]["data_offsets"], nlohmann::json::array({0, 20}));
  EXPECT_EQ(h["b.weight"]["shape"], nlohmann::json::array({7, 1}));
  EXPECT_EQ(h["b.weight"]["data_offsets"], nlohmann::json::array({20, 48}));
  float first_b;
  std::memcpy(&first_b, bytes.data() + 8 + n + 20, 4);
  EXPECT_EQ(first_b, 2.f);
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateNames) {
  std::vector<float> a = {1};
  const std::string p = file("d.safetensors");
  expect_bad_input([&] { onestep::write_safetensors(p, {{"x", {1}, a.data()}, {"x", {1}, a.data()}}); }, p,
                   "duplicate");
  EXPECT_FALSE(fs::exists(p));
}

TEST_F(SafetensorsTest, ReadsHandBuiltFile) {
  // Tensors listed out of data order, a non-F32 tensor, an unpadded header: all allowed by the format.
  const std::string header =
      R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]},)"
      R"("__metadata__":{"format":"pt"},)"
      R"("ids":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data = std::string("\x01\x00\x00\x00\x02\x00\x00\x00", 8) + f32le({0.5f, -1.f, 2.f, 1e-3f});
  const std::string p = file("hand.safetensors");
  write_bytes(p, make_file(header, data));
  SafetensorsReader r(p);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"ids", "w"}));
  EXPECT_EQ(r.dtype("ids"), "I32");
  EXPECT_EQ(r.metadata().at("format"), "pt");
  std::vector<float> w(4);
  r.read_into("w", w.data(), {2, 2});
  EXPECT_EQ(w, (std::vector<float>{0.5f, -1.f, 2.f, 1e-3f}));
  expect_bad_input([&] { r.read_into("ids", w.data(), {2}); }, p, "tensor 'ids': dtype I32, expected F32");
}

TEST_F(SafetensorsTest, MissingFile) {
  const std::string p = file("nope.safetensors");
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "cannot open");
}

TEST_F(SafetensorsTest, TruncatedFiles) {
  std::vector<float> a(16, 3.f);
  const std::string good = file("good.safetensors");
  onestep::write_safetensors(good, {{"a", {4, 4}, a.data()}});
  std::ifstream in(good, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  const std::string p = file("trunc.safetensors");
  write_bytes(p, bytes.substr(0, 5));  // inside the length field
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "header");
  write_bytes(p, bytes.substr(0, 20));  // inside the header
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "truncated");
  write_bytes(p, bytes.substr(0, bytes.size() - 4));  // inside the data
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "tensor 'a': data_offsets");
  write_bytes(p, "");
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "header");
}

TEST_F(SafetensorsTest, BadHeaderLength) {
  const std::string p = file("len.safetensors");
  write_bytes(p, u64le(0xFFFFFFFFFFull) + "{}");
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "header: length");
  write_bytes(p, u64le(64) + std::string(16, ' '));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "header: length");
}

TEST_F(SafetensorsTest, BadJson) {
  const std::string p = file("json.safetensors");
  write_bytes(p, make_file(R"({"a": {"dtype": "F32", )", ""));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "invalid JSON");
  write_bytes(p, make_file(R"([1, 2])", ""));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "expected a JSON object");
  write_bytes(p, make_file(R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", f32le({1})));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "unknown dtype");
  write_bytes(p, make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", f32le({1})));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "tensor 'a': shape");
  write_bytes(p, make_file(R"({"__metadata__":{"k":3}})", ""));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "__metadata__.k");
}

TEST_F(SafetensorsTest, OffsetsOutOfBoundsOrInconsistent) {
  const std::string p = file("off.safetensors");
  const std::string data = f32le({1, 2, 3, 4});
  write_bytes(p, make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}})", data));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "tensor 'a': data_offsets: end 20 is past the 16");
  write_bytes(p, make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[8,4]}})", data));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "begin 8 is after end 4");
  write_bytes(p, make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "needs 12");
  write_bytes(p, make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", data));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "tensor 'a': data_offsets");
  write_bytes(p, make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                           data));
  expect_bad_input([&] { SafetensorsReader r(p); }, p, "overlap");
}

TEST_F(SafetensorsTest, ShapeMismatchAndMissingTensor) {
  std::vector<float> a(32, 1.f);
  const std::string p = file("m.safetensors");
  onestep::write_safetensors(p, {{"X", {4, 8}, a.data()}});
  SafetensorsReader r(p);
  std::vector<float> dst(64);
  expect_bad_input([&] { r.read_into("X", dst.data(), {4, 16}); }, p,
                   "tensor 'X': shape [4,8] does not match the model's [4,16]");
  expect_bad_input([&] { r.read_into("Y", dst.data(), {4, 8}); }, p, "tensor 'Y': missing");
  expect_bad_input([&] { r.shape("Y"); }, p, "tensor 'Y': missing");
}
