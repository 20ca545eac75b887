"""benchmarks/serving.py end to end, tiny sizes: the JSON it writes has every key, sane values.

One small model stands in for the VGG-16 shape under its name (the real one takes minutes), so
the headline keys that the full run writes are checked too."""

import json

from benchmarks.serving import NO_PART_MAPS, ModelCase, run


def test_serving_benchmark_writes_latencies_ratios_and_profile(tmp_path):
    output = tmp_path / "results" / "serving.json"
    stand_in = ModelCase("vgg16", "small_vgg", 3, input_size=48, requests_per_case=3,
                         warmup_requests=1, profile_repeats=2)
    results = run(output=str(output), models=(stand_in,), batch_sizes=(1, 2))
    assert json.loads(output.read_text()) == results
    model = results["models"]["vgg16"]
    signatures = ("serving_default", "classify")
    assert set(model["cases"]) == {f"{protocol}_{signature}_b{batch}"
                                   for protocol in ("rest", "grpc") for signature in signatures
                                   for batch in (1, 2)} | {f"grpc_{NO_PART_MAPS}_b{batch}"
                                                           for batch in (1, 2)}
    for case in model["cases"].values():
        assert 0 < case["p50_ms"] <= case["p99_ms"] and case["mean_ms"] > 0
        assert case["server_cpu_ms"] >= 0  # the server's own CPU time, from /proc
    assert set(model["ratios"]) == {"rest_b1", "rest_b2", "grpc_b1", "grpc_b2",
                                    "grpc_no_part_maps_b1", "grpc_no_part_maps_b2"}
    for name, ratio in model["ratios"].items():
        protocol, batch = name.split("_")[0], name.split("_")[-1]
        signature = NO_PART_MAPS if "no_part_maps" in name else "serving_default"
        full = model["cases"][f"{protocol}_{signature}_{batch}"]
        light = model["cases"][f"{protocol}_classify_{batch}"]
        assert ratio["p50"] == full["p50_ms"] / light["p50_ms"]
    full_ratios = [model["ratios"][name]["p50"] for name in ("rest_b1", "rest_b2", "grpc_b1",
                                                             "grpc_b2")]
    assert model["latency_ratio_max"] == max(full_ratios)
    assert model["latency_ratio_max_no_part_maps"] == max(
        model["ratios"][f"grpc_no_part_maps_b{batch}"]["p50"] for batch in (1, 2))
    cpu_ratios = [model["ratios"][name]["server_cpu"] for name in ("rest_b1", "rest_b2",
                                                                  "grpc_b1", "grpc_b2")]
    # None only where classify took less than one clock tick (10 ms) of CPU per request
    assert model["server_cpu_ratio_max"] == max((r for r in cpu_ratios if r is not None),
                                                default=None)
    assert results["server_cpu_ratio_max_vgg16"] == model["server_cpu_ratio_max"]
    assert results["latency_ratio_max_vgg16"] == model["latency_ratio_max"]
    assert results["latency_ratio_max_vgg16_no_part_maps"] == model[
        "latency_ratio_max_no_part_maps"]
    assert "latency_ratio_max" not in results  # the default model was not run
    profile = model["profile"]["serving_default_b2"]
    assert profile["model_ms"] > 0 and profile["model_cpu_ms"] > 0
    assert profile["rest_response_bytes"] > model["profile"]["classify_b2"]["rest_response_bytes"]
    assert model["input_size"] == [48, 48] and results["machine"]["cpus"] >= 1
