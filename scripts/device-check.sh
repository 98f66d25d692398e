#!/usr/bin/env bash
# Rudder on a GPU: numerical parity of the tiny Hugging Face fixtures and speed against PyTorch
# on the same GPU, in one run (made for the lent device machine, which has CUDA, PyTorch and
# transformers but no Rust toolchain and no network).
#
# Build the CUDA binary first; no GPU is needed. candle-kernels runs nvcc at build time and
# cudarc links libcuda, libcublas(Lt), libcurand, libcudart, so the link needs those too. From PyPI,
# into a venv outside the repo: nvidia-cuda-nvcc nvidia-cuda-crt nvidia-cuda-runtime
# nvidia-cuda-cccl nvidia-nvvm nvidia-cublas nvidia-cuda-nvrtc (all ==13.0.*) nvidia-curand==10.4.0.*;
# then a folder L with lib{cublas,cublasLt,nvrtc,cudart,curand}.so links to $C/lib/*.so.N and a
# stub libcuda.so (soname libcuda.so.1: one empty function per `pub unsafe fn cu*` of cudarc's
# src/driver/sys/mod.rs; the driver's real libcuda.so.1 is used at run time):
#   C=.../site-packages/nvidia/cu13
#   CUDA_HOME=$C NVCC=$C/bin/nvcc PATH=$C/bin:$PATH LIBRARY_PATH=$L:$C/lib CUDA_COMPUTE_CAP=90 \
#   CUDARC_CUDA_VERSION=13000 CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda
# nvcc must not be newer than the GPU machine's driver (580 = CUDA 13.0): candle's PTX is JIT
# compiled there. Strip and gzip the binary to carry it (~14 MB instead of ~60 MB).
#
# Then, on the GPU machine, from the repository root:
#   scripts/device-check.sh [--bin target-cuda/release/rudder|FILE.gz] [--device cuda] [--runs 10]
#                           [--seqs 64,256] [--python python3] [--out DIR] [--no-cpu]
# Locally, as a dry run of everything but the GPU:
#   scripts/device-check.sh --bin target/release/rudder --device cpu --python /path/to/python
#
# Steps: environment (nvidia-smi, where libcuda/libcudart/libcublas/libcublasLt/libcurand/
# libnvrtc come from; LD_LIBRARY_PATH gets PyTorch's nvidia/*/lib folders) -> `rudder model
# verify --json` on llama, gemma, siglip_vision, paligemma on the device (and on the CPU for
# comparison) -> the 29.5M Llama of benches/llama_vs_torch.py (hidden 512, 8 layers, MLP 1376,
# 8/8 heads, vocab 4096, untied, fp32, seed 0) saved as a Hub checkpoint -> `rudder bench llama`
# on the device and on the CPU -> PyTorch forward on the same weights and token ids (b1, full
# logits, no KV cache, fp32 without TF32, inference_mode, synchronised, median of >= 10 after
# 3 warm-ups) -> parity and speed tables. Everything lands in --out (default $OUT or
# out/device-check): verify.jsonl, bench-<dev>.json, torch-<dev>.json, bench-cpu.json,
# torch-cpu.json, summary.txt.
# Exit status: 0 all parity passed; 1 a parity failure; 2 bad arguments or missing binary;
# 3 no GPU / CUDA libraries; 4 the binary cannot use the device.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=target-cuda/release/rudder
DEV=cuda
RUNS=10
SEQS=64,256
PY=python3
CPU=1
OUTDIR="${OUT:-out/device-check}"
FIXTURES="llama gemma siglip_vision paligemma pi0"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --device) DEV="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --seqs) SEQS="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --no-cpu) CPU=0; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "device-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$RUNS" -ge 10 ] 2>/dev/null || { echo "device-check: --runs must be >= 10" >&2; exit 2; }

T0=$SECONDS
say() { printf '\n=== [%3ds] %s\n' "$((SECONDS - T0))" "$*"; }
bail() { echo "device-check: FATAL: $2" >&2; exit "$1"; }

mkdir -p "$OUTDIR" || bail 2 "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d /tmp/device-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
case "$BIN" in
  *.gz) # a gzipped binary travels in a third of the space (the CUDA build is ~58 MB stripped)
    [ -f "$BIN" ] || bail 2 "no rudder binary at $BIN"
    gzip -dc "$BIN" >"$WORK/rudder" && chmod +x "$WORK/rudder" || bail 2 "cannot unpack $BIN"
    echo "unpacked $BIN -> $WORK/rudder"; BIN="$WORK/rudder" ;;
esac
[ -x "$BIN" ] || bail 2 "no executable rudder binary at $BIN (build it with --features cuda, carry it)"
HAVE_PY=1
command -v "$PY" >/dev/null 2>&1 || { HAVE_PY=0; echo "device-check: no $PY: the PyTorch side is skipped"; }

say "environment"
echo "host $(uname -srm), $(nproc) cores; binary $BIN ($(stat -c %s "$BIN") bytes); device $DEV"
case "$DEV" in
  cuda|cuda:*)
    command -v nvidia-smi >/dev/null 2>&1 || bail 3 "nvidia-smi not found: no NVIDIA driver here"
    nvidia-smi || bail 3 "nvidia-smi failed: no usable GPU"
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv
    ;;
esac
if [ "$HAVE_PY" = 1 ]; then
  # cudarc dlopen()s libcuda, libcublas(Lt), libcurand, libnvrtc; the binary itself needs
  # libcudart.so.13. PyTorch's wheels carry all but libcuda: put their folders on the path.
  LIBDIRS=$("$PY" - <<'EOF' 2>/dev/null
import glob, os
dirs = []
try:
    import nvidia
    for p in list(nvidia.__path__):
        dirs += sorted(glob.glob(os.path.join(p, "*", "lib")))
except Exception:
    pass
try:
    import importlib.util
    s = importlib.util.find_spec("torch")
    if s and s.origin:
        dirs.append(os.path.join(os.path.dirname(s.origin), "lib"))
except Exception:
    pass
dirs += ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/local/cuda/lib64"]
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)
  [ -n "$LIBDIRS" ] && export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
MISSING_LIBS=""
for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  where=""
  IFS=: read -r -a dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do [ -n "$d" ] && [ -e "$d/$lib" ] && { where="$d/$lib"; break; }; done
  [ -z "$where" ] && where=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l {print $NF; exit}')
  printf '  %-18s %s\n' "$lib" "${where:-NOT FOUND}"
  [ -z "$where" ] && MISSING_LIBS="$MISSING_LIBS $lib"
done
if command -v ldd >/dev/null 2>&1; then
  echo "ldd $BIN:"; ldd "$BIN" | sed 's/^/  /'
  ldd "$BIN" | grep -q "not found" && bail 3 "the binary has unresolved libraries (see ldd above)"
fi
case "$DEV" in
  cuda|cuda:*) [ -n "$MISSING_LIBS" ] && bail 3 "CUDA libraries not found:$MISSING_LIBS" ;;
esac
if [ "$HAVE_PY" = 1 ]; then
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); import transformers; print("transformers", transformers.__version__)' \
    || echo "device-check: python imports failed (see above)"
fi

# --- parity -----------------------------------------------------------------------------------
verify_one() { # fixture device -> appends one JSON line (or an error line) to verify.jsonl
  local f=$1 d=$2 out err rc
  out=$(timeout 180 "$BIN" model verify --model "fixtures/hf-tiny/$f" --device "$d" --atol 1e-4 --json 2>"$WORK/err")
  rc=$?
  err=$(grep -v '^ *[0-9]*: \|^ *at ' "$WORK/err" | tail -c 2000)  # no backtrace frames
  if [ -n "$out" ] && printf '%s' "$out" | head -c1 | grep -q '{'; then
    printf '{"fixture":"%s","device":"%s","rc":%d,"report":%s}\n' "$f" "$d" "$rc" "$out" >>"$OUTDIR/verify.jsonl"
    echo "  $f on $d: exit $rc"
    return 0
  fi
  echo "  $f on $d: NO REPORT (exit $rc): $err"
  printf '{"fixture":"%s","device":"%s","rc":%d,"error":%s}\n' "$f" "$d" "$rc" \
    "$(printf '%s' "$err" | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read()))' 2>/dev/null || echo '"?"')" \
    >>"$OUTDIR/verify.jsonl"
  return 1
}
say "parity: rudder model verify --device $DEV"
: >"$OUTDIR/verify.jsonl"
first=1
for f in $FIXTURES; do
  if ! verify_one "$f" "$DEV" && [ $first = 1 ]; then
    bail 4 "the first verify on $DEV produced no report: the binary cannot use the device (error above)"
  fi
  first=0
done
if [ "$CPU" = 1 ] && [ "$DEV" != cpu ]; then
  say "parity: the same on the CPU, for comparison"
  for f in $FIXTURES; do verify_one "$f" cpu; done
fi

# --- speed ------------------------------------------------------------------------------------
MODEL="$WORK/llama-29m"
IDS_PY='def ids_for(s, vocab):  # the token ids rudder bench llama uses
    return [(i * 7919 + 13) % vocab for i in range(s)]'
if [ "$HAVE_PY" = 1 ]; then
  say "the 29.5M Llama (seed 0) -> $MODEL"
  timeout 180 "$PY" - "$MODEL" <<'EOF'
import json, os, sys
import torch
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
H, L, F, NH, NKV, V = 512, 8, 1376, 8, 8, 4096
try:
    import transformers as T
    cfg = T.LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=F, num_hidden_layers=L,
                        num_attention_heads=NH, num_key_value_heads=NKV, max_position_embeddings=1024,
                        tie_word_embeddings=False, attn_implementation="sdpa")
    m = T.LlamaForCausalLM(cfg).eval()
    m.save_pretrained(out)
    n = sum(p.numel() for p in m.parameters())
    print(f"transformers {T.__version__}: saved LlamaForCausalLM, {n/1e6:.2f}M parameters")
except ImportError:
    # No transformers: write the Hub layout by hand (normal(0, 0.02) weights, unit norms).
    hd = H // NH
    g = torch.Generator().manual_seed(0)
    w = lambda *s: torch.randn(*s, generator=g) * 0.02
    t = {"model.embed_tokens.weight": w(V, H), "model.norm.weight": torch.ones(H), "lm_head.weight": w(V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(NH * hd, H)
        t[p + "self_attn.k_proj.weight"] = w(NKV * hd, H)
        t[p + "self_attn.v_proj.weight"] = w(NKV * hd, H)
        t[p + "self_attn.o_proj.weight"] = w(H, NH * hd)
        t[p + "mlp.gate_proj.weight"] = w(F, H)
        t[p + "mlp.up_proj.weight"] = w(F, H)
        t[p + "mlp.down_proj.weight"] = w(H, F)
        t[p + "input_layernorm.weight"] = torch.ones(H)
        t[p + "post_attention_layernorm.weight"] = torch.ones(H)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
               "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": NH,
               "num_key_value_heads": NKV, "head_dim": hd, "vocab_size": V, "hidden_act": "silu",
               "rms_norm_eps": 1e-6, "max_position_embeddings": 1024, "tie_word_embeddings": False,
               "attention_bias": False, "mlp_bias": False, "dtype": "float32",
               "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}},
              open(os.path.join(out, "config.json"), "w"), indent=1)
    print(f"no transformers: wrote the Hub layout by hand, {sum(v.numel() for v in t.values())/1e6:.2f}M parameters")
EOF
  [ $? = 0 ] || { echo "device-check: could not create the benchmark model: speed part skipped"; MODEL=""; }
else
  MODEL=""
fi

bench_one() { # device -> bench-<device>.json
  local d=$1 f="$OUTDIR/bench-${1//:/_}.json"
  echo "  rudder bench llama --device $d --seqs $SEQS --runs $RUNS"
  if timeout 240 "$BIN" bench llama --model "$MODEL" --seqs "$SEQS" --runs "$RUNS" --json --device "$d" >"$f" 2>"$WORK/err"; then
    cat "$f"
  else
    echo "  FAILED (exit $?): $(grep -v '^ *[0-9]*: \|^ *at ' "$WORK/err" | tail -c 2000)"; rm -f "$f"
  fi
}
torch_one() { # device -> torch-<device>.json
  local d=$1 f="$OUTDIR/torch-${1//:/_}.json"
  echo "  PyTorch forward on $d"
  timeout 240 "$PY" - "$MODEL" "$d" "$SEQS" "$RUNS" >"$f" 2>"$WORK/err" <<EOF
$IDS_PY
import json, os, statistics, sys, time
import torch
model_dir, dev, seqs, runs = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")], int(sys.argv[4])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
cuda = dev.startswith("cuda")
sync = torch.cuda.synchronize if cuda else (lambda: None)
import transformers as T
m = T.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().to(dev)
vocab = m.config.vocab_size
def med(fn, warm=3):
    for _ in range(warm):
        fn()
    sync()
    ts = []
    for _ in range(runs):
        sync(); t = time.perf_counter(); fn(); sync(); ts.append(1e3 * (time.perf_counter() - t))
    return {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts)}
res = {"torch": torch.__version__, "transformers": T.__version__, "device": dev,
       "threads": torch.get_num_threads(), "runs": runs,
       "gpu": torch.cuda.get_device_name() if cuda else None}
n = 1024
a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
res["matmul_1024_gflops"] = 2 * n**3 / (med(lambda: a @ b)["median_ms"] * 1e-3) / 1e9
for impl in ("sdpa", "eager"):
    try:
        m.set_attn_implementation(impl)
    except Exception as e:
        if impl != "sdpa":
            res[f"error_{impl}"] = repr(e); continue
    for s in seqs:
        ids = torch.tensor([ids_for(s, vocab)], device=dev)
        with torch.inference_mode():
            lg = m(input_ids=ids, use_cache=False).logits
            assert lg.shape == (1, s, vocab), lg.shape
            res[f"fwd_b1_s{s}_{impl}"] = med(lambda: m(input_ids=ids, use_cache=False).logits)
print(json.dumps(res))
EOF
  if [ $? = 0 ]; then cat "$f"; else echo "  FAILED: $(tail -c 2000 "$WORK/err")"; rm -f "$f"; fi
}

if [ -n "$MODEL" ]; then
  say "speed on $DEV"
  bench_one "$DEV"
  torch_one "$DEV"
  if [ "$CPU" = 1 ] && [ "$DEV" != cpu ]; then
    say "speed on the CPU"
    bench_one cpu
    torch_one cpu
  fi
fi

# --- tables -----------------------------------------------------------------------------------
say "summary"
if [ "$HAVE_PY" = 0 ]; then
  echo "no python: raw results in $OUTDIR"; cat "$OUTDIR"/*.json* 2>/dev/null
  exit 0
fi
"$PY" - "$OUTDIR" "$DEV" "$SEQS" <<'EOF' | tee "$OUTDIR/summary.txt"
import json, os, sys
od, dev, seqs = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
rows = [json.loads(l) for l in open(os.path.join(od, "verify.jsonl")) if l.strip()]
by = {(r["fixture"], r["device"]): r for r in rows}
fixtures = list(dict.fromkeys(r["fixture"] for r in rows))
all_pass = True
print(f"PARITY on {dev}: max_abs_diff per output (atol 1e-4); 'cpu' = the same binary on the CPU")
print(f"{'fixture':14s} {'outputs':>7s} {'pass@1e-4':>9s} {'<=1e-5':>7s} {'worst '+dev:>12s} {'worst cpu':>12s}  worst output")
for f in fixtures:
    r = by.get((f, dev))
    c = by.get((f, "cpu"))
    if r is None or "report" not in r:
        all_pass = False
        print(f"{f:14s}  NO REPORT: {r.get('error', '?')[:200] if r else 'not run'}")
        continue
    o = r["report"]["outputs"]
    worst = max(o, key=lambda x: x["max_abs_diff"])
    cw = max((x["max_abs_diff"] for x in c["report"]["outputs"]), default=float("nan")) if c and "report" in c else float("nan")
    npass = sum(x["pass"] for x in o)
    n5 = sum(x["max_abs_diff"] <= 1e-5 for x in o)
    all_pass &= r["report"]["pass"]
    print(f"{f:14s} {len(o):7d} {npass:5d}/{len(o):<3d} {n5:3d}/{len(o):<3d} {worst['max_abs_diff']:12.3e} {cw:12.3e}  {worst['name']}"
          + ("" if r["report"]["pass"] else "   FAIL"))
print()
for f in fixtures:
    r = by.get((f, dev))
    if not r or "report" not in r:
        continue
    c = by.get((f, "cpu"))
    cd = {x["name"]: x["max_abs_diff"] for x in c["report"]["outputs"]} if c and "report" in c else {}
    print(f"{f}: output, max_abs_diff on {dev}, on cpu")
    for x in r["report"]["outputs"]:
        print(f"  {x['name']:44s} {x['max_abs_diff']:10.3e} {cd.get(x['name'], float('nan')):10.3e}"
              + ("" if x["pass"] else "  FAIL"))
    for s in r["report"].get("skipped", []):
        print(f"  skipped {s['name']}: {s['reason']}")
print()
def load(name):
    p = os.path.join(od, name)
    return json.load(open(p)) if os.path.exists(p) else None
d_ = dev.replace(":", "_")
rb, tb, rc, tc = load(f"bench-{d_}.json"), load(f"torch-{d_}.json"), load("bench-cpu.json"), load("torch-cpu.json")
if dev == "cpu":
    rc, tc = None, None
def g(j, *k):
    try:
        for x in k:
            j = j[x]
        return float(j)
    except Exception:
        return float("nan")
gpu = (tb or {}).get("gpu")
print(f"SPEED: 29.5M Llama fp32, b1, full logits, no KV cache, median ms of {(tb or {}).get('runs', '?')} runs"
      + (f"; GPU {gpu}" if gpu else ""))
print(f"rudder {dev} threads/params: {g(rb, 'threads'):.0f} / {g(rb, 'params_M'):.2f}M; torch {(tb or {}).get('torch')} transformers {(tb or {}).get('transformers')}")
hdr = f"{'seq':>5s} {'rudder '+dev:>12s} {'torch '+dev:>12s} {'ratio':>7s} {'torch eager':>12s} {'ratio':>7s} {'hooks idle':>11s}"
if rc or tc:
    hdr += f" {'rudder cpu':>11s} {'torch cpu':>10s} {'ratio':>7s}"
print(hdr)
for s in seqs:
    r = g(rb, f"fwd_b1_s{s}", "median_ms")
    t = g(tb, f"fwd_b1_s{s}_sdpa", "median_ms")
    te = g(tb, f"fwd_b1_s{s}_eager", "median_ms")
    line = f"{s:5d} {r:12.3f} {t:12.3f} {r/t:7.3f} {te:12.3f} {r/te:7.3f} {g(rb, f'fwd_b1_s{s}', 'idle_hooks_median_ms'):11.3f}"
    if rc or tc:
        a, b = g(rc, f"fwd_b1_s{s}", "median_ms"), g(tc, f"fwd_b1_s{s}_sdpa", "median_ms")
        line += f" {a:11.3f} {b:10.3f} {a/b:7.3f}"
    print(line)
print(f"matmul 1024 fp32 GFLOP/s: rudder {dev} {g(rb, 'matmul_1024_gflops'):.0f}, torch {dev} {g(tb, 'matmul_1024_gflops'):.0f}"
      + (f"; rudder cpu {g(rc, 'matmul_1024_gflops'):.0f} ({g(rc, 'threads'):.0f} threads), torch cpu {g(tc, 'matmul_1024_gflops'):.0f} ({g(tc, 'threads'):.0f} threads)" if rc or tc else ""))
print("ratio = rudder / torch (below 1: rudder faster); 'torch' = SDPA attention, 'torch eager' = eager attention")
print()
print("PARITY RESULT:", "PASS" if all_pass and fixtures else "FAIL")
sys.exit(0 if all_pass and fixtures else 1)
EOF
rc=${PIPESTATUS[0]}
say "done in $((SECONDS - T0)) s; results in $OUTDIR"
exit "$rc"
