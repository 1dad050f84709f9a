"""An out-of-repo layer variant with its own weights and KV cache goes through the decode check via --attn-variants."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DECODE_TESTS = REPO / "test_correctness" / "test_decode_layers.py"
GENERIC_TESTS = REPO / "test_correctness" / "test_variants.py"
EXAMPLE = REPO / "examples" / "external_decode_layer.py"


def _run(pytester, variants: str, only: str, *files: Path, keyword: str = "test_decode_steps_match_the_full_forward"):
    pytester.syspathinsert(REPO)
    return pytester.runpytest_inprocess(
        *map(str, files or (DECODE_TESTS,)), "--rootdir", str(REPO), "-p", "no:cacheprovider", "-v",
        "--attn-variants", variants, "--attn-only", only, "-k", keyword,
    )


def test_external_decoding_layer_is_checked_alone_and_passes(pytester):
    """The decode check (fp32, bf16) and the generic checks (fp32: its fused q/k/v weight mapped back to the
    canonical gradients), in one run: an external module is loaded once per process."""
    result = _run(pytester, str(EXAMPLE), "external-gqa-kvcache", DECODE_TESTS, GENERIC_TESTS,
                  keyword="test_decode_steps_match_the_full_forward or (test_variants.py and fp32)")
    text = result.stdout.str()
    outcomes = result.parseoutcomes()
    # decode: the gqa-layer family's causal problems up to 40 tokens on CPU (GQA 4:2 and MQA 4:1), fp32 and bf16
    decoded = re.findall(r"test_decode_steps_match_the_full_forward\[([^\]]+)\] PASSED", text)
    assert len(decoded) == 4 and outcomes.get("failed", 0) == 0, text[-3000:]
    assert "external-gqa-kvcache@b1-q33-h4:1-d16-m40-causal-tl-fp32-cpu-mqa-decode-prefill7-steps1,3,1" in decoded
    generic = re.findall(r"test_variants.py::test_\w+\[[^\]]+\] PASSED", text)
    assert len(generic) >= 12, text[-3000:]
    ran = re.findall(r"::test_\w+\[([^@\]]+)@", text)
    assert set(ran) == {"external-gqa-kvcache"}, f"--attn-only did not select the external variant alone: {set(ran)}"


def test_external_layer_whose_step_forgets_the_cache_fails_naming_the_step(pytester, tmp_path):
    broken = tmp_path / "broken_decode_layer.py"
    broken.write_text(textwrap.dedent('''
        from attnsuite.registry import register
        from attnsuite_impls.gqa.gqa import GqaLayerSdpa

        @register
        class ForgetsCache(GqaLayerSdpa):
            name = "external-forgets-cache"

            def step(self, module, x_new, cache):
                y, _ = super().step(module, x_new, cache)
                return y, cache   # the new tokens never reach the cache
    '''))
    result = _run(pytester, str(broken), "external-forgets-cache")
    text = result.stdout.str()
    assert result.parseoutcomes().get("failed", 0) == 4, text[-3000:]
    assert ("external-forgets-cache on b2-q17-h4:2-d16-m48-causal-tl-fp32-cpu: decode FAILED" in text), text[-3000:]
    assert "above the bound: step 2 of 3 tokens (rows 8..10)" in text, text[-3000:]

