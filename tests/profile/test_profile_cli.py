"""The profile and hw commands say what they know: absent ISA features, module calls and params."""

import json

from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.profile import hardware
from torchslim.profile.hardware import HardwareSpec

AVX2_ONLY = {"avx2": True, "fma": True, "avx512f": False, "avx512_vnni": False, "amx_tile": False}


def test_hw_lists_present_and_absent_isa_features(monkeypatch):
    spec = HardwareSpec("Zen 2", {"float32": 1e11}, 1e10, "test", 2, {"cpu_features": AVX2_ONLY})
    monkeypatch.setattr(hardware, "this_machine", lambda **kwargs: spec)
    result = CliRunner().invoke(app, ["hw"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line.split("│")[2] for line in result.output.splitlines()
            if line.count("│") == 3}  # fmt: skip
    assert rows["ISA features present"].split(",")[0].strip() == "avx2"
    assert "fma" in rows["ISA features present"]
    assert {"avx512f", "avx512_vnni", "amx_tile"} <= {
        name.strip() for name in rows["ISA features absent"].split(",")
    }


def test_profile_json_modules_have_their_params_and_forward_calls(monkeypatch, tmp_path):
    result = CliRunner().invoke(
        app, ["profile", "tiny-resnet8", "--meta", "--hardware", "raspberry-pi-5", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    modules = payload["by_module"]
    assert modules["(model)"]["calls"] == 1
    leaf_convs = [m for name, m in modules.items() if name.endswith("conv1")]
    assert leaf_convs and all(m["calls"] == 1 and m["params"] > 0 for m in leaf_convs)
    assert sum(m["params"] for m in modules.values()) == payload["total"]["params"]
    assert sum(op["params"] for op in payload["by_op"].values()) == payload["total"]["params"]
