# Shared setup of the CLI tests: a scratch folder, a tokenizer and token shards built with the binary
# itself from the repository's own source text (so the tests need no download).
set -uo pipefail
BIN="$(realpath "$1")"
SRC="$(realpath "$2")"
WORK="$(mktemp -d /tmp/onestep_cli.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
FAILS=0

fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
ok() { echo "ok: $*"; }

make_data() {
  cat "$SRC"/src/*/*.cpp "$SRC"/src/*/*.h > "$WORK/text.txt"
  head -c 200000 "$WORK/text.txt" > "$WORK/a.txt"
  tail -c 60000 "$WORK/text.txt" > "$WORK/b.txt"
  "$BIN" tokenizer train --input "$WORK/a.txt" --vocab-size 320 --out "$WORK/tok.tok" > /dev/null || fail "tokenizer train"
  "$BIN" tokenize --tokenizer "$WORK/tok.tok" --input "$WORK/a.txt" --out "$WORK/tr" --val-fraction 0 > /dev/null || fail "tokenize train"
  "$BIN" tokenize --tokenizer "$WORK/tok.tok" --input "$WORK/b.txt" --out "$WORK/va" --val-fraction 0 > /dev/null || fail "tokenize val"
  cat > "$WORK/micro.toml" <<TOML
[model]
vocab_size = 320
d_model = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
ffn_hidden = 64
seq_len = 32
[data]
train = "$WORK/tr_train.bin"
val = "$WORK/va_train.bin"
tokenizer = "$WORK/tok.tok"
[train]
steps = 4
micro_batch_size = 2
micro_batches = 2
eval_every = 2
eval_tokens = 256
ckpt_every = 2
threads = 2
[optim]
name = "muon"
TOML
}

# expect_error CODE NEEDLE... -- CMD...: runs CMD, checks the exit code, one line on stderr, each needle in it.
expect_error() {
  local code="$1"; shift
  local needles=()
  while [ "$1" != "--" ]; do needles+=("$1"); shift; done
  shift
  local err rc
  err="$("$@" 2>&1 >/dev/null)"; rc=$?
  if [ "$rc" != "$code" ]; then fail "exit $rc (expected $code): $* :: $err"; return; fi
  if [ "$(printf '%s\n' "$err" | grep -c .)" != "1" ]; then fail "expected one line, got: $err"; return; fi
  for n in "${needles[@]}"; do
    case "$err" in *"$n"*) ;; *) fail "'$n' not in: $err"; return ;; esac
  done
  ok "$err"
}

finish() {
  if [ "$FAILS" -ne 0 ]; then echo "$FAILS failure(s)"; exit 1; fi
  echo "all passed"
}
