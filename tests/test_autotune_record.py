"""benchmarks.autotune_record: the autotuner's picks read back from Triton's on-disk autotune cache."""
import json

from benchmarks import autotune_record


def _write(path, key, timings):
    path.parent.mkdir(parents=True, exist_ok=True)
    configs = [[{"kwargs": {"BLOCK_M": bm, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "PER_SM": per_sm},
                 "num_warps": 4, "num_stages": 3, "num_ctas": 1, "maxnreg": None}, [ms, ms * 0.9, ms * 1.1]]
               for bm, per_sm, ms in timings]
    path.write_text(json.dumps({"key": key, "configs_timings": configs}))


def test_record_names_the_fastest_config_per_key(tmp_path, capsys):
    cache = tmp_path / "triton"
    _write(cache / "AAA" / "tma_gemm_kernel.autotune.json", [65536, 3072, 768],
           [(128, 1, 0.5694), (256, 1, float("inf")), (128, 2, 0.41), (64, 1, 0.9)])  # inf: failed to run
    _write(cache / "BBB" / "tma_gemm_kernel.autotune.json", [256, 768, 768], [(64, 1, 0.02)])
    (cache / "CCC").mkdir()
    (cache / "CCC" / "fp8_gemm_kernel.autotune.json").write_text("{not json")  # skipped with one line, not fatal
    assert autotune_record.main(["--cache", str(cache), "--out", str(tmp_path / "out")]) == 0
    entries = json.loads((tmp_path / "out" / "autotune.json").read_text())
    assert [e["key"] for e in entries] == [[256, 768, 768], [65536, 3072, 768]]
    picked = entries[1]["configs"]
    assert [c["ms"] for c in picked] == [0.41, 0.5694, 0.9, None] and picked[0]["kwargs"]["PER_SM"] == 2
    assert entries[1]["file"] == "AAA/tma_gemm_kernel.autotune.json"
    assert "Infinity" not in (tmp_path / "out" / "autotune.json").read_text()  # strict JSON
    md = (tmp_path / "out" / "autotune.md").read_text()
    assert ("| `tma_gemm_kernel` | `[65536, 3072, 768]` | 128x128x64 w4s3 PER_SM=2 | 0.4100 | "
            "128x128x64 w4s3 PER_SM=1 | 38.9 | 4 | 119.5 |") in md
    assert "| `tma_gemm_kernel` | `[256, 768, 768]` | 64x128x64 w4s3 PER_SM=1 | 0.0200 | — | — | 1 | — |" in md
    assert "skipped" in capsys.readouterr().err
