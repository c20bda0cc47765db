"""Predictions must not import jax: it is most of a cold `perfmodel fusion` (1.5 s of 2.6 s on the 2-core Xeon)."""

import subprocess
import sys

_PROBE = """
import sys
import kernels
from perfmodel.fusion import predict_fusion
r = predict_fusion(chip="v5e", tokens=2048, D=1024, F=4096, E=8, glu=True)
assert r.speedup > 0
print("jax" in sys.modules)
"""


def test_fusion_prediction_and_kernels_package_do_not_import_jax():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"


def test_kernels_api_still_loads_on_first_use():
    import kernels

    assert callable(kernels.moe_ffn) and kernels.moe_ffn is kernels.api.moe_ffn
