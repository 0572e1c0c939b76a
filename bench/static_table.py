"""The static report as files: bench/results/static-<date>.json and a markdown table beside it."""
import json
import os


def _cfg(c):
    return " ".join(f"{k}={v}" for k, v in c.items())


def kernel_summary(rows):
    """Per kernel and dtype: variants, worst regs / spills / smem, MMA kinds, unlaunchable configs."""
    out = {}
    for r in rows:
        s = out.setdefault((r["kernel"], r["dtype"]), {"configs": 0, "regs": 0, "spill": 0, "smem": 0, "mma": set(),
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
    env = report["env"]
    lines = [f"# Static GPU-readiness report ({env['date']}, {env['target']})", "",
             f"Kernel sources sha256 `{env['sources_sha256'][:16]}`; torch {env['torch']}, triton {env['triton']}; "
             f"{'quick' if env['quick'] else 'full'} mode, {env['seconds']} s. Regenerate: `python -m bench.static`.", "",
             "## Per kernel (worst over its configs and shapes)", "",
             "| kernel | dtype | rows | max regs | max spill B | max smem B | mma | unlaunchable | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (k, d), s in sorted(kernel_summary(report["rows"]).items()):
        lines.append(f"| {k} | {d} | {s['configs']} | {s['regs']} | {s['spill']} | {s['smem']} | "
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
    lines += ["", "## Every row", "", "| kernel | shape | dtype | config | regs | spill B | smem B | mma | compile s | "
              "launchable |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['dtype']} | {_cfg(r['config'])} | {r.get('regs')} | "
                     f"{r.get('spill_bytes')} | {r.get('smem_bytes')} | {r.get('mma')} | {r.get('compile_s')} | "
                     f"{r.get('launchable')} |")
    return "\n".join(lines) + "\n"


def write_report(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"static-{report['env']['date']}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(path[:-5] + ".md", "w") as f:
        f.write(markdown(report))
    return path


def latest(out_dir):
    """The newest static-<date>.json in out_dir, loaded (None when there is none)."""
    names = sorted(n for n in os.listdir(out_dir) if n.startswith("static-") and n.endswith(".json"))
    if not names:
        return None
    with open(os.path.join(out_dir, names[-1])) as f:
        return json.load(f)
