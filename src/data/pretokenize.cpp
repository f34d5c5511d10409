#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/pretokenize.h"

#include <pcre2.h>

#include <string>

#include "core/error.h"

namespace onestep {
namespace {

constexpr const char* kPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  Compiled() {
    int err = 0;
    PCRE2_SIZE off = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      internal_error("pre-tokeniser regex does not compile: " + std::string(reinterpret_cast<char*>(buf)));
    }
    jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Compiled() { pcre2_code_free(code); }
};

const Compiled& compiled() {
  static const Compiled c;  // thread-safe initialisation; matching with a shared code is thread-safe
  return c;
}

}  // namespace

PretokenCursor::PretokenCursor(std::string_view text) : text_(text) {
  const Compiled& c = compiled();
  match_data_ = pcre2_match_data_create_from_pattern(c.code, nullptr);
  if (c.jit) {
    auto* mctx = pcre2_match_context_create(nullptr);
    auto* stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(mctx, nullptr, stack);
    match_context_ = mctx;
    jit_stack_ = stack;
  }
  if (!match_data_) internal_error("pre-tokeniser: out of memory");
}

PretokenCursor::~PretokenCursor() {
  pcre2_match_data_free(static_cast<pcre2_match_data*>(match_data_));
  pcre2_match_context_free(static_cast<pcre2_match_context*>(match_context_));
  pcre2_jit_stack_free(static_cast<pcre2_jit_stack*>(jit_stack_));
}

bool PretokenCursor::next(std::string_view& piece) {
  if (pending_end_ > pending_begin_) {
    piece = text_.substr(pending_begin_, pending_end_ - pending_begin_);
    pos_ = pending_end_;
    pending_begin_ = pending_end_ = 0;
    return true;
  }
  if (pos_ >= text_.size()) return false;
  auto* md = static_cast<pcre2_match_data*>(match_data_);
  int rc = pcre2_match(compiled().code, reinterpret_cast<PCRE2_SPTR>(text_.data()), text_.size(), pos_, 0, md,
                       static_cast<pcre2_match_context*>(match_context_));
  if (rc == PCRE2_ERROR_NOMATCH) {  // only invalid UTF-8 is left
    piece = text_.substr(pos_);
    pos_ = text_.size();
    return true;
  }
  if (rc < 0) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(rc, buf, sizeof buf);
    internal_error("pre-tokeniser: pcre2_match failed at byte " + std::to_string(pos_) + ": " +
                   std::string(reinterpret_cast<char*>(buf)));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  size_t b = ov[0], e = ov[1];
  if (e <= b || b < pos_) internal_error("pre-tokeniser: empty or backward match");
  if (b > pos_) {  // a run of invalid UTF-8 before the match is a piece of its own
    piece = text_.substr(pos_, b - pos_);
    pending_begin_ = b;
    pending_end_ = e;
    pos_ = b;
    return true;
  }
  piece = text_.substr(b, e - b);
  pos_ = e;
  return true;
}

}  // namespace onestep
