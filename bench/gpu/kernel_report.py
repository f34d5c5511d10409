#!/usr/bin/env python3
"""What nvcc makes of a CUDA source, without a GPU: per kernel, ptxas's registers, spills and stack, and the PTX's
static instruction counts by kind (tensor-core products, shared and global memory, barriers, exponentials).

    bench/gpu/kernel_report.py src/kernels/cuda/attention_flash.cu [--baseline REV] [--filter flash_]
        [--arch sm_90] [--instance DF=4]

--baseline REV compiles the same file from git revision REV (its whole src/ tree) too and prints both, so that a
change's effect on the generated code reads off one table. Counts are static (each instruction once, however
often it runs; loops over tiles are not unrolled, the loops inside a tile are): a proxy for what the hardware
issues per tile, not a timing. Standard-library Python; needs nvcc and c++filt.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

# PTX instruction kinds, by the opcode's prefix.
KINDS = [
    ("mma", r"mma\.sync"),
    ("ldmatrix", r"ldmatrix"),
    ("ld.shared", r"ld\.shared"),
    ("st.shared", r"st\.shared"),
    ("cp.async", r"cp\.async\.c[ag]"),
    ("ld.global", r"ld\.global"),
    ("st.global", r"st\.global"),
    ("bar.sync", r"(bar|barrier)\.sync"),
    ("ex2", r"ex2\."),
    ("shfl", r"shfl\."),
]


def compile_file(src_root, rel_path, arch):
    """(ptx text, ptxas -v text) of src_root/rel_path."""
    with tempfile.TemporaryDirectory() as tmp:
        base = ["nvcc", "-std=c++20", "-O3", f"-arch={arch}", f"-I{os.path.join(src_root, 'src')}"]
        path = os.path.join(src_root, rel_path)
        ptx_path = os.path.join(tmp, "k.ptx")
        subprocess.run(base + ["-ptx", path, "-o", ptx_path], check=True)
        res = subprocess.run(base + ["-Xptxas", "-v", "-cubin", path, "-o", os.path.join(tmp, "k.cubin")],
                             check=True, capture_output=True, text=True)
        with open(ptx_path) as f:
            return f.read(), res.stderr


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(demangled):
    """'void ns::(anonymous namespace)::flash_fwd_kernel<4, __nv_bfloat16>(...)' -> 'flash_fwd_kernel<4, bf16>'."""
    m = re.search(r"(\w+)(<[^()]*>)?\(", demangled)
    name = m.group(1) + (m.group(2) or "") if m else demangled
    return name.replace("__nv_bfloat16", "bf16")


def ptx_counts(ptx):
    """{mangled kernel: {kind: count, 'instructions': n}}."""
    kernels, current, depth = {}, None, 0
    for line in ptx.splitlines():
        m = re.match(r"\s*(\.visible\s+)?\.entry\s+(\S+?)\(", line)
        if m:
            current, depth = m.group(2), 0
            kernels[current] = {k: 0 for k, _ in KINDS}
            kernels[current]["instructions"] = 0
            continue
        if current is None:
            continue
        depth += line.count("{") - line.count("}")
        if depth < 0 or (depth == 0 and "}" in line):
            current = None
            continue
        stmt = line.strip()
        if not stmt.endswith(";") or stmt.startswith((".", "//")):
            continue
        opcode = re.sub(r"^@!?%\w+\s+", "", stmt).split()[0]  # drop a predicate guard
        kernels[current]["instructions"] += 1
        for kind, pattern in KINDS:
            if re.match(pattern, opcode):
                kernels[current][kind] += 1
    return kernels


def ptxas_stats(text):
    """{mangled kernel: 'registers, spills, stack'} from ptxas -v."""
    stats, current = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = m.group(1)
            stats[current] = {}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            stats[current].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            stats[current]["registers"] = int(m.group(1))
    return stats


def report(src_root, rel_path, arch, name_filter, instance):
    ptx, ptxas = compile_file(src_root, rel_path, arch)
    counts, stats = ptx_counts(ptx), ptxas_stats(ptxas)
    # The two compilations mangle an anonymous namespace differently: kernels are matched by demangled name.
    names = demangle(list(counts) + list(stats))
    stats = {short_name(names[m]): s for m, s in stats.items()}
    rows = {}
    for mangled, c in counts.items():
        name = short_name(names[mangled])
        if name_filter not in name or instance not in name:
            continue
        rows[name] = dict(c, **stats.get(name, {}))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a .cu file, relative to the repository root")
    ap.add_argument("--baseline", help="a git revision to compare with")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--filter", default="", help="only kernels whose name contains this")
    ap.add_argument("--instance", default="", help="only kernels whose template arguments contain this, e.g. '<4,'")
    args = ap.parse_args()
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    versions = [("now", report(root, args.file, args.arch, args.filter, args.instance))]
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "-C", root, "archive", args.baseline, "src"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            versions.insert(0, (args.baseline[:10], report(tmp, args.file, args.arch, args.filter, args.instance)))
    columns = ["registers", "spill_st", "stack", "instructions"] + [k for k, _ in KINDS]
    print(f"{args.file}, {args.arch}: ptxas registers, spill-store and stack bytes; static PTX instruction counts\n")
    print("| kernel | version | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    names = sorted(set().union(*(rows.keys() for _, rows in versions)))
    for name in names:
        for label, rows in versions:
            if name in rows:
                r = rows[name]
                print(f"| {name} | {label} | " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
