"""The static report as files: bench/results/static-<date>.json and a markdown table beside it.

On disk the rows are packed (`pack`): what a compile determines (kernel, config, constexprs, registers, spills,
shared memory, MMA kind, errors) is stored once per compile job in "compiles", and "rows" is {"columns", "data"}
with one short list per profile and launched config pointing at its compile; `latest` / `unpack` give back the
list of row dicts bench/static.py built."""
import json
import os

# a row's own fields (the rest comes from its compile); longest_loop (bench/static_loops.py) depends on the
# launch's arguments, which one compile serves many of
ROW_FIELDS = ("gpu", "target", "launch", "dtype", "shape", "op", "mode", "tuned", "autotune_key", "launchable",
              "longest_loop", "unknown_loops")


def pack(report):
    """The report with its rows packed (see the module docstring); rows carry their compile job's key in _job."""
    compiles, index, data = [], {}, []
    for r in report["rows"]:
        if r["_job"] not in index:
            index[r["_job"]] = len(compiles)
            compiles.append({k: v for k, v in r.items() if k not in ROW_FIELDS and k != "_job"})
        data.append([r[k] for k in ROW_FIELDS] + [index[r["_job"]]])
    return {**report, "compiles": compiles, "rows": {"columns": list(ROW_FIELDS) + ["compile"], "data": data}}


def unpack(report):
    """The report with its rows as a list of dicts (a packed report's rows joined with their compiles)."""
    rows = report["rows"]
    if isinstance(rows, list):
        return report
    cols = rows["columns"]
    out = []
    for d in rows["data"]:
        r = dict(zip(cols, d))
        out.append({**report["compiles"][r.pop("compile")], **r})
    return {**report, "rows": out}


def _cfg(c):
    return " ".join(f"{k}={v}" for k, v in c.items())


def kernel_summary(rows):
    """Per profile, kernel and dtype: variants, worst regs / spills / smem, MMA kinds, unlaunchable configs."""
    out = {}
    for r in rows:
        s = out.setdefault((r["gpu"], r["kernel"], r["dtype"]), {"configs": 0, "regs": 0, "spill": 0, "smem": 0, "mma": set(),
                                                       "unlaunchable": 0, "errors": 0})
        s["configs"] += 1
        s["regs"] = max(s["regs"], r.get("regs") or 0)
        s["spill"] = max(s["spill"], r.get("spill_bytes") or 0)
        s["smem"] = max(s["smem"], r.get("smem_bytes") or 0)
        s["mma"].add(r.get("mma") or "-")
        s["unlaunchable"] += not r.get("launchable")
        s["errors"] += "error" in r
    return out


def markdown(report):
    report = unpack(report)
    env = report["env"]
    lines = [f"# Static GPU-readiness report ({env['date']}, {', '.join(env['targets'])})", "",
             f"Kernel sources sha256 `{env['sources_sha256'][:16]}`; torch {env['torch']}, triton {env['triton']}; "
             f"{'quick' if env['quick'] else 'full'} mode, {env['seconds']} s. Regenerate: `python -m bench.static`.", "",
             "## Per GPU profile", "",
             "| gpu | target | SMs | smem / block B | bf16 | launches | launchable | configs | spilling configs | "
             "unlaunchable configs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g, s in report["gpus"].items():
        p = env["profiles"][g]
        lines.append(f"| {g} | {p['target']} | {p['sms']} | {p['smem_per_block']} | {p['bf16']} | {s['launches']} | "
                     f"{s['launchable']} | {s['configs']} | {s['spills']} | {s['unlaunchable_configs']} |")
    lines += ["", "## Per GPU and kernel (worst over its configs and shapes)", "",
              "| gpu | kernel | dtype | rows | max regs | max spill B | max smem B | mma | unlaunchable | errors |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (g, k, d), s in sorted(kernel_summary(report["rows"]).items()):
        lines.append(f"| {g} | {k} | {d} | {s['configs']} | {s['regs']} | {s['spill']} | {s['smem']} | "
                     f"{','.join(sorted(s['mma']))} | {s['unlaunchable']} | {s['errors']} |")
    lines += ["", "## Per op", "", "| op | scale | mode | batch | host ops ours / eager | launches ours / eager | "
              "MB ours / eager | byte ceiling |", "|---|---|---|---|---|---|---|---|"]
    for o in report["ops"]:
        lines.append(f"| {o['op']} | {o['scale']} | {o['mode']} | {o['batch']} | {o['host_ops_ours']} / "
                     f"{o['host_ops_eager']} | {o['launches_ours']} / {o['launches_eager']} | "
                     f"{o['bytes_ours'] / 1e6:.1f} / {o['bytes_eager'] / 1e6:.1f} | {o['byte_ceiling']}x |")
    step = report.get("model_step")
    if step:
        e, o = step["eager"], step["ours"]
        lines += ["", f"## yolov10{step['scale']} train step ({step['imgsz']} px, batch {step['batch']}): host ops", "",
                  "| | model fwd + bwd | loss fwd + bwd (both assigners) | total |", "|---|---|---|---|",
                  f"| reference | {e['model_ops']} | {e['loss_ops']} | {e['host_ops']} |",
                  f"| accelerated + fused assigner | {o['model_ops']} | {o['loss_ops']} | {o['host_ops']} |"]
    lines += memory_lines(report.get("memory") or [])
    # every row of every profile would be tens of thousands of lines: the ones that fail a budget, each once
    bad = {}
    for r in report["rows"]:
        if not r["launchable"] or r.get("spill_bytes"):
            bad.setdefault((r["gpu"], r["kernel"], r["dtype"], _cfg(r["config"])), r)
    lines += ["", "## Configs over a budget (unlaunchable, or spilling registers)", "",
              "| gpu | kernel | shape | dtype | config | regs | spill B | smem B | launchable |", "|---|---|---|---|---|---|---|---|---|"]
    for (g, k, d, c), r in sorted(bad.items()):
        lines.append(f"| {g} | {k} | {r['shape']} | {d} | {c} | {r.get('regs')} | {r.get('spill_bytes')} | "
                     f"{r.get('smem_bytes')} | {r['launchable']} |")
    return "\n".join(lines) + "\n"


def memory_lines(rows):
    """The "memory" rows (bench/static_memory.py) as markdown: per model, MiB autograd saves for backward in one AMP
    training step, eager / ours, whole model and per fused module kind, and the model's host ops."""
    if not rows:
        return []
    kinds = sorted({k for r in rows for side in ("eager", "ours") for k in r[side]["saved_bytes"]["by_kind"]}
                   - {"other"})
    r0 = rows[0]
    lines = ["", f"## Saved for backward, one training step (batch {r0['batch']}, {r0['imgsz']} px, AMP {r0['amp']}; "
             "fake tensors, bench/static_memory.py)", "",
             "MiB eager / ours; per fused module kind, what is saved while those modules run (\"other\": the rest of "
             "the model); host ops of the model's forward + backward.", "",
             "| model | fused modules | total MiB | " + " | ".join(f"{k} MiB" for k in kinds) + " | other MiB | host ops |",
             "|---" * (len(kinds) + 5) + "|"]

    def mib(r, kind=None):
        if kind not in (None, "other", *r["fused_modules"]):
            return "-"
        sb = [r[side]["saved_bytes"] for side in ("eager", "ours")]
        return " / ".join(f"{(b['total'] if kind is None else b['by_kind'].get(kind, 0)) / 2**20:.1f}" for b in sb)
    for r in rows:
        fused = ", ".join(f"{n} {k}" for k, n in sorted(r["fused_modules"].items()))
        lines.append(f"| {r['model']} | {fused} | {mib(r)} | " + " | ".join(mib(r, k) for k in kinds)
                     + f" | {mib(r, 'other')} | {r['eager']['host_ops']} / {r['ours']['host_ops']} |")
    return lines


def write_report(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"static-{report['env']['date']}.json")
    with open(path, "w") as f:
        json.dump(pack(report), f, separators=(",", ":"), default=str)
    with open(path[:-5] + ".md", "w") as f:
        f.write(markdown(report))
    return path


def latest(out_dir):
    """The newest static-<date>.json in out_dir, loaded (None when there is none)."""
    names = sorted(n for n in os.listdir(out_dir) if n.startswith("static-") and n.endswith(".json"))
    if not names:
        return None
    with open(os.path.join(out_dir, names[-1])) as f:
        return unpack(json.load(f))
