"""benchmarks/serving.py end to end, tiny sizes: the JSON it writes has every key, sane values."""

import json

from benchmarks.serving import run


def test_serving_benchmark_writes_latencies_ratios_and_profile(tmp_path):
    output = tmp_path / "results" / "serving.json"
    results = run(output=str(output), requests_per_case=3, warmup_requests=1, batch_sizes=(1, 2))
    assert json.loads(output.read_text()) == results
    assert set(results["cases"]) == {f"{protocol}_{signature}_b{batch}"
                                     for protocol in ("rest", "grpc")
                                     for signature in ("serving_default", "classify")
                                     for batch in (1, 2)}
    for case in results["cases"].values():
        assert 0 < case["p50_ms"] <= case["p99_ms"] and case["mean_ms"] > 0
    assert set(results["ratios"]) == {"rest_b1", "rest_b2", "grpc_b1", "grpc_b2"}
    for name, ratio in results["ratios"].items():
        protocol, batch = name.split("_")
        full = results["cases"][f"{protocol}_serving_default_{batch}"]
        light = results["cases"][f"{protocol}_classify_{batch}"]
        assert ratio["p50"] == full["p50_ms"] / light["p50_ms"]
    assert results["latency_ratio_max"] == max(r["p50"] for r in results["ratios"].values())
    profile = results["profile"]["serving_default_b2"]
    assert profile["model_ms"] > 0
    assert profile["rest_response_bytes"] > results["profile"]["classify_b2"]["rest_response_bytes"]
    assert results["input_size"] == [64, 64] and results["machine"]["cpus"] >= 1
