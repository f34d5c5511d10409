// Train/validation split of a corpus, deterministic and document-level.
//
// Every input file is one document. With two or more (non-empty) documents, each goes whole to one split; with
// only one, it is cut into chunks of about 64 KiB (smaller for a small text, so there are at least ~16) at
// paragraph boundaries ("\n\n", else "\n", else a UTF-8 character boundary) and the chunks are assigned instead.
// Of the n units (documents or chunks), k = round(val_fraction * n), clamped to [1, n - 1] when val_fraction > 0,
// go to validation, evenly spaced: unit i is in val iff floor((i+1) k / n) > floor(i k / n) (the last unit
// always is). An end-of-text token goes before each unit that starts a document, or whose predecessor in the
// same document went to the other split (a discontinuity), as llm.c puts one before each document.
#pragma once
#include <cstddef>
#include <string_view>
#include <vector>

namespace onestep {

struct SplitUnit {
  size_t doc;             // index into the documents
  std::string_view text;  // a view into that document
  bool val;               // goes to the validation split
  bool eot_before;        // put the end-of-text token before it
};

// Empty documents are skipped. val_fraction must lie in [0, 1).
std::vector<SplitUnit> plan_split(const std::vector<std::string_view>& docs, double val_fraction);

// Cuts one text into chunks of about `target` bytes at paragraph boundaries (see above).
std::vector<std::string_view> chunk_text(std::string_view text, size_t target);

}  // namespace onestep
