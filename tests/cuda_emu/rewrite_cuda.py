#!/usr/bin/env python3
"""Rewrites a .cu/.cuh file of src/kernels/cuda into host C++ for the CPU emulation (tests/cuda_emu).

Only the two pieces of CUDA syntax that C++ cannot express are rewritten; everything else compiles as written
against the emulation's headers (tests/cuda_emu/include):
  kernel<<<grid, block, smem, stream>>>(args);  ->  ::emu::launch_kernel(dim3(grid), dim3(block), smem, stream, key,
                                                        "kernel", [=](auto... a) { kernel(a...); }, args);
  __shared__ T name[N];                         ->  EMU_SHARED(T, name, [N]);        (per-block memory)
  extern __shared__ T name[];                   ->  T* name = static_cast<T*>(::emu::dynamic_shared());
Line numbers are kept (a rewritten launch is padded with its newlines) and a #line directive names the source,
so compiler messages and __FILE__ point at the real file.

usage: rewrite_cuda.py SOURCE OUTPUT
"""
import re
import sys


def split_top_level(text):
    """Splits at the commas outside (), [], {} and <>."""
    parts, depth, cur = [], 0, ''
    for ch in text:
        if ch in '([{<':
            depth += 1
        elif ch in ')]}>':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def matching(text, open_at, opening, closing):
    """Index of the bracket closing the one at open_at."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    raise SystemExit('rewrite_cuda.py: unbalanced %s at offset %d' % (opening, open_at))


def rewrite_launches(src, path):
    out, pos = [], 0
    while True:
        at = src.find('<<<', pos)
        if at < 0:
            out.append(src[pos:])
            return ''.join(out)
        line_start = src.rfind('\n', 0, at) + 1
        if '//' in src[line_start:at]:  # inside a comment
            out.append(src[pos:at + 3])
            pos = at + 3
            continue
        name_end = at
        if src[name_end - 1] == '>':  # explicit template arguments: kernel<T, 4><<<...
            depth, name_end = 0, name_end - 1
            while True:
                depth += src[name_end] == '>'
                depth -= src[name_end] == '<'
                if depth == 0:
                    break
                name_end -= 1
        start = re.search(r'[\w:]+$', src[:name_end]).start()
        kernel = src[start:at]
        cfg_end = src.find('>>>', at)
        cfg = split_top_level(src[at + 3:cfg_end])
        if src[cfg_end + 3] != '(':
            raise SystemExit('%s: a launch without arguments right after >>>' % path)
        args_end = matching(src, cfg_end + 3, '(', ')')
        if src[args_end + 1] != ';':
            raise SystemExit('%s: a launch that is not a statement of its own' % path)
        smem = cfg[2] if len(cfg) > 2 else '0'
        stream = cfg[3] if len(cfg) > 3 else 'nullptr'
        key = 'nullptr' if smem == '0' else 'reinterpret_cast<const void*>(%s)' % kernel
        args = src[cfg_end + 4:args_end].replace('\n', ' ').strip()
        replaced = src[start:args_end + 2]
        out.append(src[pos:start])
        out.append('::emu::launch_kernel(dim3(%s), dim3(%s), static_cast<size_t>(%s), %s, %s, "%s", '
                   '[=](auto... a) { %s(a...); }%s);%s' % (
                       cfg[0], cfg[1], smem, stream, key, kernel.replace('"', ''), kernel, ', ' + args if args else '',
                       '\n' * replaced.count('\n')))
        pos = args_end + 2


def rewrite_shared(src):
    def dynamic(m):
        return '%s* %s = static_cast<%s*>(::emu::dynamic_shared());' % (m.group(2), m.group(3), m.group(2))
    src = re.sub(r'extern\s+__shared__\s+(__align__\(\d+\)\s+)?([\w:]+(?:\s+[\w:]+)*)\s+(\w+)\[\];', dynamic, src)

    def static(m):
        declared = []
        for d in split_top_level(m.group(2)):
            dm = re.match(r'(\w+)\s*((?:\[[^\]]+\])+)$', d)
            if not dm:
                raise SystemExit('rewrite_cuda.py: unsupported __shared__ declaration: %s' % d)
            declared.append('EMU_SHARED(%s, %s, %s)' % (m.group(1), dm.group(1), dm.group(2)))
        return '; '.join(declared) + ';'
    return re.sub(r'(?<!extern )__shared__\s+([\w:]+)\s+([^;]+);', static, src)


def main():
    source, output = sys.argv[1], sys.argv[2]
    src = open(source).read()
    src = rewrite_shared(rewrite_launches(src, source))
    with open(output, 'w') as f:
        f.write('#line 1 "%s"\n' % source)
        f.write(src)


if __name__ == '__main__':
    main()
