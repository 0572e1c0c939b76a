"""Tables from bench result files, and the comparison of two of them.

  python -m bench.compare A.json B.json [--all]

prints, for every row the two files share (same op, mode, case, dtype, impl), A's and B's median and B/A.
Within one file, `ratio_table` puts eager, compile and ours side by side (speed-up = baseline ms / ours ms)
and `target_table` checks the performance targets of issues 4, 5 and 6."""
import argparse
import sys

from .common import BASELINE_IMPLS, COMPILE_IMPLS, load_results, row_key

# (what, op, mode, case substring, ours impl family, baseline impl, minimum speed-up) -- issues 4, 5, 6.
# "case" matches Case.name of bench/ops.py ("yolov10s b1 640px") or the assignment rows' own case labels.
TARGETS = [
    ("eval CIB block >= 3x eager", "cib", "infer", "yolov10s b1 640px", "eager", 3.0),
    ("eval CIB block >= 2x compile", "cib", "infer", "yolov10s b1 640px", "compile", 2.0),
    ("eval SCDown >= 1.5x eager", "scdown", "infer", "yolov10s b1 640px", "eager", 1.5),
    ("eval SCDown >= 1.5x compile", "scdown", "infer", "yolov10s b1 640px", "compile", 1.5),
    ("train CIB fwd+bwd >= 2x eager", "cib", "train_full", "yolov10s b64 640px", "eager", 2.0),
    ("train CIB fwd+bwd >= 1.5x compile", "cib", "train_full", "yolov10s b64 640px", "compile", 1.5),
    ("train cls head fwd+bwd >= 2x eager", "cls_head", "train_full", "yolov10s b64 640px", "eager", 2.0),
    ("train cls head fwd+bwd >= 1.5x compile", "cls_head", "train_full", "yolov10s b64 640px", "compile", 1.5),
    ("PSA s fwd+bwd >= 2x eager", "psa", "train_full", "yolov10s b64 640px", "eager", 2.0),
    ("PSA s fwd+bwd >= 1.2x SDPA compile", "psa", "train_full", "yolov10s b64 640px", "compile_sdpa", 1.2),
    ("PSA m fwd+bwd >= 2x eager", "psa", "train_full", "yolov10m b64 640px", "eager", 2.0),
    ("PSA m fwd+bwd >= 1.2x SDPA compile", "psa", "train_full", "yolov10m b64 640px", "compile_sdpa", 1.2),
]
BANDWIDTH_TARGET = 70.0  # % of the measured copy bandwidth, "large-shape kernels" (issue 4): ours, infer b64


def _is_ours(impl):
    return impl not in BASELINE_IMPLS and impl not in COMPILE_IMPLS


def ok_rows(rows):
    return [r for r in rows if str(r.get("status", "")).startswith("ok") and r.get("median_ms")]


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def grouped(rows):
    """{key: {impl: row}} over ok rows, key = (op, mode, case, dtype), keys in first-seen order."""
    out = {}
    for r in ok_rows(rows):
        out.setdefault(row_key(r), {})[r["impl"]] = r
    return out


def ratio_table(rows, keys=None):
    """Markdown: eager / compile / ours side by side, with ours-vs-eager and ours-vs-compile speed-ups."""
    lines = ["| op | mode | case | eager ms | compile ms | ours ms | ours vs eager | ours vs compile "
             "| ours GB/s (% copy) | peak MiB eager / ours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    g = grouped([r for r in rows if not str(r.get("op", "")).startswith("e2e_")])  # e2e: own table
    for key in (keys or g):
        impls = g.get(key)
        if not impls:
            continue
        base = next((impls[i] for i in BASELINE_IMPLS if i in impls), None)
        comps = [impls[i] for i in COMPILE_IMPLS if i in impls]
        comp = min(comps, key=lambda r: r["median_ms"]) if comps else None
        ours = [r for i, r in impls.items() if _is_ours(i)]
        if not ours:
            continue
        o = min(ours, key=lambda r: r["median_ms"])
        comp_s = _fmt(comp["median_ms"]) + (f" ({comp['impl']})" if comp and comp["impl"] != "compile" else "") \
            if comp else "-"
        bw = "-" if o.get("gbps") is None else (
            f"{o['gbps']:.0f}" + (f" ({o['pct_copy_bw']:.0f}%)" if o.get("pct_copy_bw") else ""))
        peaks = f"{_fmt(base.get('peak_extra_mb') if base else None, 1)} / {_fmt(o.get('peak_extra_mb'), 1)}"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {_fmt(base['median_ms']) if base else '-'} | {comp_s} "
            f"| {_fmt(o['median_ms'])}{'' if o['impl'] == 'ours' else ' (' + o['impl'] + ')'} "
            f"| {_x(base['median_ms'] / o['median_ms']) if base else '-'} "
            f"| {_x(comp['median_ms'] / o['median_ms']) if comp else '-'} | {bw} | {peaks} |")
    return "\n".join(lines) + "\n"


def e2e_table(rows):
    """Markdown: images/s per model and impl, with ours vs eager / compile."""
    ok = ok_rows([r for r in rows if str(r.get("op", "")).startswith("e2e_")])
    if not ok:
        return ""
    lines = ["| e2e | case | eager img/s | compile img/s | ours img/s | ours vs eager | ours vs compile |",
             "|---|---|---|---|---|---|---|"]
    seen = []
    for r in ok:
        k = (r["op"], r["case"])
        if k not in seen:
            seen.append(k)
    for op, case in seen:
        by = {r["impl"]: r for r in ok if r["op"] == op and r["case"] == case}
        e, c, o = (by.get(i, {}).get("images_per_s") for i in ("eager", "compile", "ours"))
        f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {op[4:]} | {case} | {f(e)} | {f(c)} | {f(o)} | "
                     f"{'-' if not (e and o) else format(o / e, '.2f') + 'x'} | "
                     f"{'-' if not (c and o) else format(o / c, '.2f') + 'x'} |")
    return "\n".join(lines) + "\n"


def target_status(rows):
    """[(target, measured text, met: True/False/None=unmeasured)] for the kernel issues' targets."""
    g = grouped(rows)
    out = []
    for what, op, mode, case, vs, need in TARGETS:
        key = next((k for k in g if k[0] == op and k[1] == mode and k[2] == case), None)
        impls = g.get(key, {})
        ours = impls.get("ours")
        base = impls.get(vs)
        if ours is None or base is None:
            missing = [n for n, r in (("ours", ours), (vs, base)) if r is None]
            out.append((what, f"unmeasured (no ok row for {', '.join(missing)})", None))
            continue
        ratio = base["median_ms"] / ours["median_ms"]
        out.append((what, f"{ratio:.2f}x ({base['median_ms']:.3f} -> {ours['median_ms']:.3f} ms)", ratio >= need))
    bw = [r for r in ok_rows(rows) if r["impl"] == "ours" and r["mode"] == "infer" and r.get("batch", 0) >= 32
          and r.get("pct_copy_bw") is not None]
    for r in bw:
        out.append((f"{r['op']} {r['case']} ours >= {BANDWIDTH_TARGET:.0f}% of copy bandwidth",
                    f"{r['pct_copy_bw']:.0f}% ({r['gbps']:.0f} GB/s)", r["pct_copy_bw"] >= BANDWIDTH_TARGET))
    psa_mem = [r for r in ok_rows(rows) if r["op"] == "psa" and r.get("res", 640) >= 1280 and r.get("peak_extra_mb")]
    for r in psa_mem:
        b, s = r.get("batch", 1), r.get("scale", "s")
        heads = {"n": 2, "s": 4, "m": 4, "b": 4, "l": 4, "x": 5}.get(s, 4)
        n = (r["res"] // 32) ** 2
        scores_mb = b * heads * n * n * 2 / 2**20
        if r["impl"] == "ours":
            out.append((f"PSA {r['case']} peak without a B x heads x N^2 term ({scores_mb:.0f} MiB in bf16)",
                        f"ours peak {r['peak_extra_mb']:.0f} MiB", r["peak_extra_mb"] < scores_mb))
    for r in ok_rows(rows):  # the assignment rows state their own targets (bench/assign.py)
        if r.get("target") and r.get("target_met") is not None:
            out.append((r["target"], str(r.get("target_measured", "")), bool(r["target_met"])))
    return out


def target_table(rows):
    lines = ["| target | measured | met |", "|---|---|---|"]
    for what, text, met in target_status(rows):
        lines.append(f"| {what} | {text} | {'yes' if met else 'no' if met is False else 'unmeasured'} |")
    return "\n".join(lines) + "\n"


def rows_table(rows):
    cols = ["op", "mode", "case", "impl", "status", "median_ms", "p20_ms", "p80_ms", "peak_extra_mb", "gbps",
            "pct_copy_bw", "compile_s", "compile_mode", "timer", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c)
            if c in ("peak_extra_mb", "gbps", "pct_copy_bw", "compile_s"):
                v = _fmt(v, 1)
            elif isinstance(v, float):
                v = _fmt(v, 4)
            vals.append("-" if v in (None, "") else str(v).replace("|", "/"))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def header(result):
    env = result["env"]
    bits = [f"**{env.get('device_name')}**", f"torch {env.get('torch')}", f"triton {env.get('triton')}"]
    if env.get("cuda"):
        bits.append(f"CUDA {env['cuda']}, cuDNN {env.get('cudnn')}")
    bits.append(f"commit {env.get('git_commit')}{' (dirty)' if env.get('git_dirty') else ''}")
    bits.append(result.get("created", ""))
    s = ", ".join(bits) + "\n\n"
    if result.get("copy_bandwidth_gbs"):
        s += f"Copy bandwidth measured in this run: {result['copy_bandwidth_gbs']:.0f} GB/s (read + write).\n"
    a = result.get("args", {})
    s += (f"Settings: {a.get('dtype')} {a.get('memory_format')}, compile mode {a.get('compile_mode')} "
          f"(e2e: {a.get('e2e_compile_mode')}), {'quick' if a.get('quick') else 'full'} run, "
          f"{result.get('wall_s', 0):.0f} s wall.\n")
    if env.get("device_type") == "cpu":
        s += (f"CPU: {env.get('cpu_count')} cores, {a.get('threads')} torch threads, load average at start "
              f"{env.get('load_average')} (a load above the core count makes host timings noisy).\n")
    return s


def short_tables(result):
    rows = result["rows"]
    e2e = e2e_table(rows)
    return ("### Speed-ups (speed-up = baseline ms / ours ms; > 1 is faster)\n\n" + ratio_table(rows) +
            ("\n### End to end (images/s)\n\n" + e2e if e2e else "") +
            "\n### Targets of issues 4-6\n\n" + target_table(rows))


def markdown(result):
    skipped = [r for r in result["rows"] if not str(r.get("status", "")).startswith("ok")]
    s = f"# yolov10-kernels benchmark\n\n{header(result)}\n{short_tables(result)}\n"
    s += "## All rows\n\n" + rows_table(result["rows"])
    if skipped:
        s += f"\n{len(skipped)} rows did not run; their status column says why.\n"
    return s


def compare(a, b, show_all=False):
    ka = {row_key(r) + (r["impl"],): r for r in ok_rows(a["rows"])}
    kb = {row_key(r) + (r["impl"],): r for r in ok_rows(b["rows"])}
    lines = [f"A: {a['env'].get('device_name')} {a.get('created', '')} (commit {a['env'].get('git_commit')})",
             f"B: {b['env'].get('device_name')} {b.get('created', '')} (commit {b['env'].get('git_commit')})", "",
             "| op | mode | case | impl | A ms | B ms | B/A |", "|---|---|---|---|---|---|---|"]
    shared = [k for k in ka if k in kb]
    for k in shared:
        ra, rb = ka[k], kb[k]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[4]} | {ra['median_ms']:.4f} | {rb['median_ms']:.4f} "
                     f"| {rb['median_ms'] / ra['median_ms']:.2f} |")
    if show_all:
        for name, only in (("A", [k for k in ka if k not in kb]), ("B", [k for k in kb if k not in ka])):
            for k in only:
                lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[4]} | only in {name} | | |")
    lines.append(f"\n{len(shared)} shared rows ({len(ka)} ok rows in A, {len(kb)} in B).")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.compare",
                                description="Compare two bench result files (rows matched by op, mode, case, dtype "
                                            "and impl); B/A < 1 means B is faster. One file: its tables (the .md).")
    p.add_argument("a", help="result JSON (baseline)")
    p.add_argument("b", nargs="?", help="result JSON (new); without it, A's markdown tables are printed")
    p.add_argument("--all", action="store_true", help="also list rows present in only one file")
    args = p.parse_args(argv)
    try:
        a, b = load_results(args.a), load_results(args.b) if args.b else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(compare(a, b, args.all) if b else markdown(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
