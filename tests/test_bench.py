"""The benchmark suite cannot rot on CPU-only CI: the CLI parses, model-derived shapes are right, every per-op
and end-to-end row's set-up (inputs, reference, torch.compile baseline, SDPA baseline, our drop-ins) builds and
runs once at tiny size, results round-trip through JSON/markdown and bench.compare, and pytest-benchmark times
the CPU-measurable assignment (reference vs ours). No timing thresholds are asserted anywhere."""
import json

import pytest
import torch

from bench import common, e2e, ops, results
from bench.__main__ import parse_args

OURS_OK = ("ok", "not available")  # ours may not be importable yet; it may never error


def _status(row):
    return str(row.get("status", ""))


@pytest.fixture
def one_thread():
    """The smoke runs are hundreds of tiny ops: one thread avoids OpenMP start-up and barrier costs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--ops", "--device", "--out", "--smoke", "--compile-mode", "--budget"):
        assert flag in out


def test_cli_rejects_unknown_section(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--ops", "cib,nonsense"])
    assert e.value.code == 2
    assert "nonsense" in capsys.readouterr().err


def test_shapes_come_from_the_model():
    _, shapes = ops.model_parts("n")  # yolov10n at 640 px, batch 1
    assert shapes["cib"] == ("model.22.m.0", [(1, 128, 20, 20)])
    assert shapes["scdown"] == ("model.5", [(1, 64, 80, 80)])
    assert shapes["psa"] == ("model.10", [(1, 256, 20, 20)])
    assert shapes["cls_head"][1] == [(1, 64, 80, 80), (1, 128, 40, 40), (1, 256, 20, 20)]
    first, rest = ops.default_cases("cuda", quick=False)
    names = {(c.op, c.name) for c in first}
    assert ("cib", "yolov10s b1 640px") in names and ("psa", "yolov10m b64 640px") in names
    assert any(c.op == "psa" and c.res == 1280 for c in rest)  # PSA memory at N = 1600
    # the GPU session's quick run: the YOLO11n / YOLO26n cls head and attention rows (yolov10n's shapes)
    first, rest = ops.default_cases("cuda", quick=True, scales=("n", "s"))
    n_rows = {(c.op, c.batch, tuple(c.also)) for c in first + rest if c.scale == "n"}
    assert n_rows == {(op, b, ("yolo11n", "yolo26n")) for op in ("cls_head", "psa") for b in (1, 64)}, n_rows


def test_sdpa_baseline_computes_the_reference():
    from yolov10.modules import PSA
    torch.manual_seed(0)
    ref = PSA(128, 128).train()
    sdpa = ops.make_sdpa_psa(ref)
    x = torch.randn(2, 128, 3, 5)
    torch.testing.assert_close(sdpa(x), ref(x), rtol=1e-4, atol=1e-5)
    ref.eval(), sdpa.eval()
    torch.testing.assert_close(sdpa(x), ref(x), rtol=1e-4, atol=1e-5)


def test_bn_folding_of_the_infer_rows_keeps_the_function():
    module, _, shapes = ops.op_module("cib", "tiny")
    module.eval()
    x = torch.randn(2, *shapes[0][1:])
    ref = module(x)
    torch.testing.assert_close(ops.fold_bn(module)(x), ref, rtol=1e-4, atol=1e-5)


def test_smoke_every_op_row_on_cpu(one_thread):
    """Each (op, mode, impl) row: inputs, module, baseline or drop-in built and its callable run once."""
    cases = ops.default_cases("cpu", smoke=True)
    rows = ops.run("cpu", common.Budget(10**9), cases, smoke=True, compile_backend="eager")
    assert {r["op"] for r in rows} == set(ops.OPS)
    for case in cases:
        for mode in case.modes:
            for impl in case.impls:
                got = [r for r in rows if (r["op"], r["mode"], r["impl"]) == (case.op, mode, impl)]
                assert len(got) == 1, (case.op, mode, impl)
                st = _status(got[0])
                if impl == "ours":
                    assert st.startswith(OURS_OK), (case.op, mode, st)
                    if st.startswith("ok"):  # the drop-ins really are in place
                        assert got[0]["ours_modules"], got[0]
                else:
                    assert st.startswith("ok"), (case.op, mode, impl, st)


def test_smoke_end_to_end_rows_on_cpu(one_thread):
    rows = e2e.run("cpu", common.Budget(10**9), scales=("tiny",), smoke=True)
    by = {(r["op"], r["impl"], r["batch"]): _status(r) for r in rows}
    assert by[("e2e_train", "eager", 2)].startswith("ok")
    assert by[("e2e_train", "compile", 2)].startswith("ok")
    assert by[("e2e_train", "ours", 2)].startswith(OURS_OK)
    assert by[("e2e_infer", "eager", 1)].startswith("ok")
    assert all(not s.startswith("error") for s in by.values()), by


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU session runs it)")
def test_smoke_every_op_row_on_gpu():
    rows = ops.run("cuda", common.Budget(10**9), ops.default_cases("cuda", smoke=True), smoke=True,
                   compile_backend="eager")
    errors = [(r["op"], r["mode"], r["impl"], _status(r)) for r in rows if not _status(r).startswith(OURS_OK)]
    assert not errors, errors


def test_cpu_timer_quantiles():
    t = common.time_cpu(lambda: torch.ones(1000).sum(), rep_ms=20, warmup_ms=1)
    assert t.samples >= 3 and 0 < t.p20_ms <= t.median_ms <= t.p80_ms


def _fake_result(scale_ours=1.0):
    rows = []
    for impl, ms in (("eager", 3.0), ("compile", 2.0), ("ours", 1.0 * scale_ours)):
        rows.append(common.make_row(op="cib", mode="infer", impl=impl, case="yolov10s b1 640px", dtype="bfloat16",
                                    median_ms=ms, p20_ms=ms * 0.9, p80_ms=ms * 1.1, peak_extra_mb=10.0,
                                    gbps=100.0 / ms, pct_copy_bw=3.0 / ms))
    rows.append(common.make_row(op="cib", mode="train_full", impl="ours", case="yolov10s b64 640px",
                                dtype="bfloat16", status="not available: op not importable"))
    rows.append(common.make_row(op="e2e_train", mode="train_step", impl="eager", case="yolov10n b64 640px",
                                dtype="amp-bfloat16", median_ms=100.0, images_per_s=640.0))
    rows.append(common.make_row(op="e2e_train", mode="train_step", impl="ours", case="yolov10n b64 640px",
                                dtype="amp-bfloat16", median_ms=80.0, images_per_s=800.0))
    env = common.environment("cpu")
    return {"schema": common.SCHEMA, "created": "2026-01-01 00:00 UTC", "env": env, "args": {"quick": True},
            "copy_bandwidth_gbs": 10.0, "wall_s": 1.0, "rows": rows}


def test_results_round_trip_and_compare(tmp_path, capsys):
    a_json, a_md = results.write_results(_fake_result(), tmp_path / "a")
    b_json, _ = results.write_results(_fake_result(scale_ours=0.5), tmp_path / "b")
    assert a_json.name.startswith("cpu-") and a_json.suffix == ".json" and a_md.suffix == ".md"
    data = json.loads(a_json.read_text())
    assert data["env"]["torch"] == torch.__version__ and len(data["rows"]) == 6
    md = a_md.read_text()
    assert "| cib | infer | yolov10s b1 640px | 3.000 | 2.000 | 1.000 | 3.00x | 2.00x |" in md
    assert "| eval CIB block >= 3x eager | 3.00x (3.000 -> 1.000 ms) | yes |" in md
    assert "| eval CIB block >= 2x compile | 2.00x (2.000 -> 1.000 ms) | yes |" in md
    assert "train CIB fwd+bwd >= 2x eager | unmeasured" in md
    assert "| train | yolov10n b64 640px | 640.0 | - | 800.0 | 1.25x | - |" in md
    assert "not available: op not importable" in md
    from bench.compare import main as compare_main
    assert compare_main([str(a_json), str(b_json)]) == 0
    out = capsys.readouterr().out
    assert "| cib | infer | yolov10s b1 640px | ours | 1.0000 | 0.5000 | 0.50 |" in out
    assert compare_main([str(a_md), str(b_json)]) == 2  # not a result file: a clear error
    assert compare_main([str(a_json)]) == 0 and capsys.readouterr().out == md + "\n"  # one file: its .md
    c_json, c_md = results.write_results(_fake_result(), tmp_path / "c", stem="bench", md=False)  # the GPU session's
    assert c_json.is_file() and not c_md.exists()


def test_budget_skips_with_a_reason():
    b = common.Budget(0.0)
    ok, why = b.fits(1.0)
    assert not ok and why.startswith("skipped: time budget")
    rows = ops.run("cpu", b, [ops.Case("scdown", "tiny", 1, 64, ("infer",))], copy_bw=1.0)
    assert rows and all(_status(r).startswith("skipped: time budget") for r in rows)


def test_smoke_ultralytics_assign_section(tmp_path):
    """`python -m bench --ops ultralytics_assign` at smoke size: ultralytics' assigner and ours side by side on
    the same inputs (identical outputs), and ours alone at the larger M."""
    from oracle import module as oracle

    from bench.__main__ import main
    oracle("ultralytics")  # the oracle is needed (YOLOV10_NO_ORACLE=1 skips on a machine without it)
    assert main(["--smoke", "--device", "cpu", "--ops", "ultralytics_assign", "--out", str(tmp_path),
                 "--stem", "ua"]) == 0
    rows = json.loads((tmp_path / "ua.json").read_text())["rows"]
    by = {(r["impl"], r["case"]): r for r in rows}
    assert set(by) == {("ultralytics", "B=2 M=12"), ("ours", "B=2 M=12"), ("ours", "B=2 M=40")}, rows
    assert all(r["op"] == "ultralytics_assign" and _status(r).startswith("ok") and r["median_ms"] > 0
               and r["peak_extra_mb"] >= 0 for r in rows), rows
    side_by_side = by[("ours", "B=2 M=12")]
    assert side_by_side["identical"] and side_by_side["flips"] == 0 and side_by_side["max_score_diff"] == 0
    assert side_by_side["speedup"] > 0 and by[("ultralytics", "B=2 M=12")]["version"]


# ---------------------------------------------------------------------------- pytest-benchmark (CPU)
@pytest.fixture(scope="module")
def assign_inputs():
    from bench.assign import make_inputs
    return make_inputs(2, 30, seed=1)


@pytest.mark.parametrize("topk", [10, 1], ids=["o2m", "o2o"])
@pytest.mark.parametrize("impl", ["reference", "ours"])
def test_benchmark_assign(benchmark, assign_inputs, impl, topk):
    from yolov10.assign import TaskAlignedAssigner
    from yolov10_kernels import FusedTaskAlignedAssigner
    from bench.assign import op_status
    benchmark.group = f"assign topk={topk} B=2 M=30 A=8400"
    ref = TaskAlignedAssigner(topk=topk, num_classes=80, alpha=0.5, beta=6.0)
    if impl == "reference":
        fn = ref
    else:
        ok, how = op_status("cpu")
        benchmark.extra_info["backend"] = how
        fn = FusedTaskAlignedAssigner(topk=topk, num_classes=80, alpha=0.5, beta=6.0)
    out = benchmark.pedantic(fn, args=tuple(assign_inputs), rounds=3, iterations=1, warmup_rounds=1)
    expect = ref(*assign_inputs)
    for i in (0, 3, 4):  # target_labels, fg_mask, target_gt_idx
        assert torch.equal(out[i], expect[i])
