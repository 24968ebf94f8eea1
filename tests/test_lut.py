"""LUT format, validation errors on bad input, fingerprints and caching."""

from __future__ import annotations

import json

import pytest

from nas.cost.backends import MacsProxy, OnnxRuntimeCPU
from nas.cost.lut import LatencyLUT
from nas.cost.profiler import cache_path, obtain_lut
from nas.cost.runtime_model import RuntimeModel
from nas.cost.signatures import required_ops
from nas.errors import LUTError
from tests.conftest import MICRO_SPACE, proxy_lut


def test_round_trip_and_version(tmp_path, micro_space, micro_lut):
    path = micro_lut.save(tmp_path / "lut.json")
    data = json.loads(path.read_text())
    assert data["format"] == "spnas-lut" and data["version"] == 3 and data["unit"] == "ms"
    assert data["space"] == {"name": "micro", "digest": micro_space.digest}
    loaded = LatencyLUT.load(path)
    assert loaded.entries == micro_lut.entries
    assert set(loaded.entries) == set(required_ops(micro_space, 1, 10))
    micro_lut.scale, micro_lut.per_op_ms, micro_lut.per_se_op_ms, micro_lut.overhead_ms = 1.2, -0.01, 0.02, 0.3
    assert LatencyLUT.load(micro_lut.save(path)).calibration == {"scale": 1.2, "per_op_ms": -0.01,
                                                                 "per_se_op_ms": 0.02, "overhead_ms": 0.3,
                                                                 "stage_scales": []}
    micro_lut.stage_scales = [1.3, 0.9]
    loaded = LatencyLUT.load(micro_lut.save(path))
    assert loaded.version == 3 and loaded.stage_scales == [1.3, 0.9]
    assert loaded.network_ms(5.0, 4, 1, stage_op_sums=[2.0, 3.0]) == pytest.approx(1.3 * 2 + 0.9 * 3 - 0.04 + 0.02
                                                                                    + 0.3)
    with pytest.raises(LUTError, match="2 stage scales; pass the network's LUT sum per stage"):
        loaded.network_ms(5.0, 4, 1)
    with pytest.raises(LUTError, match="2 stage scales, but space 'x' has 3 cost groups"):
        loaded.check_groups(3, "x")
    with pytest.raises(LUTError, match="'stage_scales' must be a list of finite numbers > 0"):
        LatencyLUT.from_dict({**loaded.to_dict(), "stage_scales": [1.0, -1.0]})


def test_version_1_luts_read_as_scale_and_overhead(tmp_path, micro_lut):
    data = {**micro_lut.to_dict(), "version": 1, "scale": 1.1, "overhead_ms": -0.2}
    data.pop("per_op_ms")
    data.pop("per_se_op_ms")
    lut = LatencyLUT.from_dict(data)
    assert lut.calibration == {"scale": 1.1, "per_op_ms": 0.0, "per_se_op_ms": 0.0, "overhead_ms": -0.2,
                               "stage_scales": []}
    assert lut.calibration["stage_scales"] == [] and lut.stage_scale(1) == 1.1  # every stage: the one scale
    assert lut.network_ms(2.0, kept_ops=7, se_ops=3) == pytest.approx(1.1 * 2.0 - 0.2)
    with pytest.raises(LUTError, match="version 4 is not supported"):
        LatencyLUT.from_dict({**data, "version": 4})
    with pytest.raises(LUTError, match="'per_op_ms' must be a finite number"):
        LatencyLUT.from_dict({**data, "version": 2, "per_op_ms": "x"})


def test_version_2_luts_read_with_every_stage_at_the_global_scale(micro_space, micro_lut):
    """A v2 file (one scale) predicts as before; stage scales in it are ignored (v3 introduced them)."""
    from nas.cost.runtime_model import RuntimeModel

    data = {**micro_lut.to_dict(), "version": 2, "scale": 1.25, "per_op_ms": -0.01, "overhead_ms": 0.1,
            "stage_scales": [3.0, 3.0]}
    lut = LatencyLUT.from_dict(data)
    assert lut.version == 2 and lut.stage_scales == [] and lut.stage_scale(0) == lut.stage_scale(1) == 1.25
    model = RuntimeModel(micro_space, lut, 1, 10)
    arch = micro_space.largest()
    assert model.predict(arch) == pytest.approx(1.25 * model.plain_sum(arch) - 0.01 * 5 + 0.1)  # 5 layers kept


def test_malformed_lut_names_the_file(tmp_path):
    path = tmp_path / "lut.json"
    path.write_text('{"format": "spnas-lut", "version": 1, "entries": ')
    with pytest.raises(LUTError, match=r"lut\.json: malformed LUT, not valid JSON"):
        LatencyLUT.load(path)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(LUTError, match="'format' is 'something-else'"):
        LatencyLUT.load(path)


def test_bad_entry_value_names_the_entry(tmp_path, micro_lut):
    data = micro_lut.to_dict()
    key = sorted(data["entries"])[3]
    data["entries"][key]["ms"] = -1
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LUTError, match=rf"entries\['{key}'\]: 'ms' must be a finite, non-negative number"):
        LatencyLUT.load(path)


def test_lut_missing_a_layer_names_key_and_layer(tmp_path, micro_space, micro_lut):
    key = next(k for k in micro_lut.entries if "_k5_e6_se0.5_" in k and "_r4_i16_o16_" in k)
    del micro_lut.entries[key]
    path = micro_lut.save(tmp_path / "partial.json")
    with pytest.raises(LUTError, match=rf"partial\.json: missing 1 of \d+ entries[\s\S]*{key}\s+\(needed by layer 2"):
        obtain_lut(micro_space, MacsProxy(), 1, 10, lut_path=path)
    with pytest.raises(LUTError, match=rf"no entry '{key}'"):
        RuntimeModel(micro_space, LatencyLUT.load(path), 1, 10)


def test_lut_made_for_another_space_is_rejected(tmp_path, micro_space, micro_lut):
    from nas.space.search_space import SearchSpace

    other = SearchSpace.from_config({**MICRO_SPACE, "name": "other",
                                     "stages": [*MICRO_SPACE["stages"][:2], {"channels": 32, "stride": 1,
                                                                              "repeats": 2}]})
    path = proxy_lut(other).save(tmp_path / "other.json")
    with pytest.raises(LUTError, match=r"made for space 'other' .* but the search uses space 'micro'"):
        obtain_lut(micro_space, MacsProxy(), 1, 10, lut_path=path)


def test_fingerprint_mismatch_warns_or_fails_when_strict(tmp_path, micro_space, micro_lut):
    path = micro_lut.save(tmp_path / "lut.json")
    onnx = OnnxRuntimeCPU(threads=2)
    with pytest.warns(UserWarning, match="does not match the selected hardware"):
        obtain_lut(micro_space, onnx, 1, 10, lut_path=path)
    with pytest.raises(LUTError, match="does not match the selected hardware"):
        obtain_lut(micro_space, onnx, 1, 10, lut_path=path, strict=True)
    assert OnnxRuntimeCPU(threads=1).fingerprint_id() != OnnxRuntimeCPU(threads=2).fingerprint_id()
    assert OnnxRuntimeCPU(batch_size=1).fingerprint_id() != OnnxRuntimeCPU(batch_size=8).fingerprint_id()


class CountingBackend(MacsProxy):
    calls = 0

    def prepare(self, module, input_shape):
        CountingBackend.calls += 1
        return super().prepare(module, input_shape)


def test_cache_profiles_once_per_space_and_hardware(tmp_path, micro_space):
    backend = CountingBackend()
    first = obtain_lut(micro_space, backend, 1, 10, cache_dir=tmp_path, progress=False)
    n_ops = len(required_ops(micro_space, 1, 10))
    assert CountingBackend.calls == n_ops
    assert cache_path(tmp_path, micro_space, backend, 1, 10).is_file()
    second = obtain_lut(micro_space, backend, 1, 10, cache_dir=tmp_path, progress=False)
    assert CountingBackend.calls == n_ops and second.entries == first.entries
    # another data shape needs new stem/head entries only
    obtain_lut(micro_space, backend, 3, 100, cache_dir=tmp_path, progress=False)
    assert CountingBackend.calls == 2 * n_ops
    # a cached LUT from before the current calibration (version 1: no per-op terms, 2: no stage scales) is
    # profiled again, not reused
    path = cache_path(tmp_path, micro_space, backend, 1, 10)
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 1}))
    obtain_lut(micro_space, backend, 1, 10, cache_dir=tmp_path, progress=False)
    assert CountingBackend.calls == 3 * n_ops and LatencyLUT.load(path).version == 3


def test_onnxruntime_profiles_real_ops(micro_space):
    backend = OnnxRuntimeCPU(warmup=1, repeats=3)
    ops = required_ops(micro_space, 1, 10)
    small = ops[next(k for k in ops if "_k3_e3_se0_" in k)]
    entry = backend.measure(small.build(), small.input_shape)
    assert entry.ms > 0 and entry.runs == 3
