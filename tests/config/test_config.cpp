#include <gtest/gtest.h>

#include "config/config.h"
#include "core/error.h"

using namespace onestep;

namespace {
// Runs f, expecting a bad_input Error whose message contains every needle.
template <class F>
void expect_bad_input(F&& f, std::initializer_list<const char*> needles) {
  try {
    f();
    FAIL() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input);
    const std::string msg = e.what();
    for (const char* n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message must be one line: " << msg;
  }
}
}  // namespace

TEST(Config, PresetThenExplicitKeysThenOverrides) {
  RunConfig c = parse_config("[model]\npreset = \"small\"\nn_layers = 6\n[optim]\nname = \"adamw\"\n", "a.toml",
                             {"train.steps=7", "optim.lr=0.001", "data.train=x/*.bin"});
  EXPECT_EQ(c.model.d_model, 512);      // from the preset
  EXPECT_EQ(c.model.n_layers, 6);       // the file's key wins over the preset
  EXPECT_EQ(c.model.vocab_size, 8192);
  EXPECT_EQ(c.train.steps, 7);          // overrides win over the file
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.001);
  EXPECT_EQ(c.data.train, "x/*.bin");
}

TEST(Config, SmolLM2PresetsHaveTheContractShapes) {
  RunConfig a = parse_config("[model]\npreset = \"smollm2-135m\"\n", "a.toml");
  EXPECT_EQ(a.model.d_model, 576);
  EXPECT_EQ(a.model.n_layers, 30);
  EXPECT_EQ(a.model.n_heads, 9);
  EXPECT_EQ(a.model.n_kv_heads, 3);
  EXPECT_EQ(a.model.ffn_hidden, 1536);
  EXPECT_EQ(a.model.vocab_size, 49152);
  EXPECT_FLOAT_EQ(a.model.rope_theta, 100000.0f);
  // SmolLM2-135M has 134.5M parameters (tied) per its model card.
  EXPECT_NEAR(count_params(a.model) / 1e6, 134.5, 0.1);
  RunConfig b = parse_config("[model]\npreset = \"smollm2-360m\"\n", "b.toml");
  EXPECT_EQ(b.model.d_model, 960);
  EXPECT_EQ(b.model.n_kv_heads, 5);
  EXPECT_NEAR(count_params(b.model) / 1e6, 361.8, 0.2);
}

TEST(Config, ResolvedTomlRoundTrips) {
  RunConfig c = parse_config("[model]\npreset = \"tiny\"\n[optim]\nname = \"muon\"\n", "a.toml", {"train.seed=42"});
  RunConfig d = parse_config(to_toml(c), "resolved.toml");
  EXPECT_EQ(to_toml(c), to_toml(d));
  EXPECT_EQ(d.train.seed, 42);
  EXPECT_EQ(d.optim.name, "muon");
}

TEST(ConfigBadInput, UnknownKeyNamesFileAndKey) {
  expect_bad_input([] { parse_config("[train]\nstepz = 3\n", "cfg.toml"); }, {"cfg.toml", "train.stepz", "unknown key"});
  expect_bad_input([] { parse_config("[trian]\nsteps = 3\n", "cfg.toml"); }, {"cfg.toml", "trian.steps"});
  expect_bad_input([] { parse_config("", "cfg.toml", {"train.nope=1"}); }, {"--set", "train.nope"});
}

TEST(ConfigBadInput, WrongType) {
  expect_bad_input([] { parse_config("[train]\nsteps = \"many\"\n", "cfg.toml"); }, {"cfg.toml", "train.steps", "integer"});
  expect_bad_input([] { parse_config("[model]\ntie_embeddings = 1\n", "cfg.toml"); }, {"model.tie_embeddings", "boolean"});
  expect_bad_input([] { parse_config("", "cfg.toml", {"optim.lr=fast"}); }, {"--set", "optim.lr", "number"});
  expect_bad_input([] { parse_config("[train]\nsteps = 3.5\n", "cfg.toml"); }, {"train.steps"});
}

TEST(ConfigBadInput, ImpossibleShapes) {
  expect_bad_input([] { parse_config("[model]\nd_model = 130\nn_heads = 4\n", "m.toml"); }, {"m.toml", "model.n_heads", "divide d_model"});
  expect_bad_input([] { parse_config("[model]\nn_heads = 4\nn_kv_heads = 3\n", "m.toml"); }, {"model.n_kv_heads", "divide n_heads"});
  expect_bad_input([] { parse_config("[model]\npreset = \"huge\"\n", "m.toml"); }, {"model.preset", "huge"});
  expect_bad_input([] { parse_config("[pipeline]\nstages = 9\n", "m.toml"); }, {"pipeline.stages", "n_layers"});
}

TEST(ConfigBadInput, OutOfRangeAndSyntax) {
  expect_bad_input([] { parse_config("[train]\nsteps = 0\n", "c.toml"); }, {"c.toml", "train.steps"});
  expect_bad_input([] { parse_config("[train]\nmicro_batch_size = -1\n", "c.toml"); }, {"train.micro_batch_size"});
  expect_bad_input([] { parse_config("[optim]\nlr = -1.0\n", "c.toml"); }, {"optim.lr"});
  expect_bad_input([] { parse_config("[delay]\nef_coef = nan\n", "c.toml"); }, {"delay.ef_coef"});
  expect_bad_input([] { parse_config("[pipeline]\nschedule = \"zigzag\"\n", "c.toml"); }, {"pipeline.schedule", "zigzag"});
  expect_bad_input([] { parse_config("[pipeline]\nbalance = \"flops\"\n", "c.toml"); }, {"pipeline.balance", "flops"});
  expect_bad_input([] { parse_config("[pipeline]\nlookahead = -1\n", "c.toml"); }, {"c.toml", "pipeline.lookahead", "0..64"});
  expect_bad_input([] { parse_config("[pipeline]\nlookahead = 1.5\n", "c.toml"); }, {"pipeline.lookahead"});
  expect_bad_input([] { parse_config("[train]\ndevice = \"tpu\"\n", "c.toml"); }, {"train.device", "tpu"});
  expect_bad_input([] { parse_config("[train]\nprecision = \"fp8\"\n", "c.toml"); }, {"train.precision", "fp8"});
  expect_bad_input([] { parse_config("[train]\nprecision = \"tf32\"\n", "c.toml"); }, {"train.precision", "cuda"});
  expect_bad_input([] { parse_config("[train]\nprecision = \"bf16\"\n", "c.toml"); }, {"train.precision", "cuda"});
  expect_bad_input([] { parse_config("[train\nsteps = 3\n", "c.toml"); }, {"c.toml", "line 1"});
  expect_bad_input([] { parse_config("", "c.toml", {"trainsteps3"}); }, {"--set", "section.key=value"});
  expect_bad_input([] { load_config("/nonexistent/x.toml"); }, {"/nonexistent/x.toml"});
}
