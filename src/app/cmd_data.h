// Bodies of `onestep tokenizer train` and `onestep tokenize` (the CLI wiring is in main.cpp).
#pragma once
#include <string>
#include <vector>

namespace onestep {

// Trains a byte-level BPE of vocab_size tokens on the input files (globs allowed; each file one document)
// and saves it to `out` in onestep's format.
void cmd_tokenizer_train(const std::vector<std::string>& inputs, int vocab_size, const std::string& out);

// Tokenizes the input files (globs allowed; each file one document, the end-of-text token before each) and
// writes OUT_PREFIX_train.bin and OUT_PREFIX_val.bin (llm.c shards). The split is document-level and
// deterministic (see data/split.h); a single document is split at paragraph boundaries instead.
void cmd_tokenize(const std::string& tokenizer, const std::vector<std::string>& inputs, const std::string& out_prefix,
                  double val_fraction);

}  // namespace onestep
