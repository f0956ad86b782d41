"""Offline weight operations: merges and Model Surgery by hand, and the commands on saved models."""

import math
import subprocess
import sys

import pytest
import torch

from mmpost.tools.weights import linear, slerp_tensor, surgery, ties, train_probe


def test_linear_by_hand():
    a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
    assert linear([a, b], [1.0, 3.0])["w"].tolist() == [2.5, 5.0]


def test_slerp_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    # 90 degrees apart: halfway = sin(pi/4)/sin(pi/2) (a + b)
    assert torch.allclose(slerp_tensor(a, b, 0.5), math.sin(math.pi / 4) * torch.tensor([1.0, 2.0]))
    assert torch.allclose(slerp_tensor(a, b, 0.0), a) and torch.allclose(slerp_tensor(a, b, 1.0), b)
    assert torch.allclose(slerp_tensor(a, 3 * a, 0.5), 2 * a)  # parallel: linear


def test_layer_schedule_by_hand():
    """mergekit's gradient lists: K values at equal spacing over the layers, linear in between, first
    matching filter wins, tensors outside the layers read at position 0 (the worked 32-layer example of
    ``plan.py::plan_slice`` + ``config.py::evaluate_setting``)."""
    from mmpost.tools.weights import layer_t, parse_schedule

    schedule = parse_schedule("domain_adaptation")
    assert schedule == [("self_attn", [0, 0.5, 0.3, 0.7, 1]), ("mlp", [1, 0.5, 0.7, 0.3, 0]), (None, [0.5])]
    attn = "model.layers.{}.self_attn.q_proj.weight"
    assert layer_t(attn.format(0), 32, schedule) == 0.0
    assert layer_t(attn.format(31), 32, schedule) == 1.0
    x = 24 / 31 * 4  # layer 24: between anchors 3 (0.7) and 4 (1.0)
    assert layer_t(attn.format(24), 32, schedule) == pytest.approx(0.7 + (x - 3) * 0.3)
    assert layer_t("model.layers.8.mlp.up_proj.weight", 32, schedule) == pytest.approx(
        0.5 + (8 / 31 * 4 - 1) * 0.2)
    assert layer_t("model.layers.8.input_layernorm.weight", 32, schedule) == 0.5  # neither filter: default
    assert layer_t("model.embed_tokens.weight", 32, parse_schedule("embed=0.2,0.9; 0.5")) == 0.2  # position 0
    with pytest.raises(ValueError, match="domain_adaptation"):
        parse_schedule("self_attn=a,b")


def test_slerp_with_a_schedule_uses_each_layers_t():
    from mmpost.tools.weights import parse_schedule, slerp

    a = {f"model.layers.{i}.self_attn.o_proj.weight": torch.tensor([1.0, 0.0]) for i in range(3)}
    b = {k: torch.tensor([0.0, 1.0]) for k in a}
    merged = slerp([a, b], parse_schedule("self_attn=0,1; 0.5"))
    for i, t in enumerate([0.0, 0.5, 1.0]):  # 3 layers over the anchors 0 and 1
        key = f"model.layers.{i}.self_attn.o_proj.weight"
        assert torch.allclose(merged[key], slerp_tensor(a[key], b[key], t))


def test_ties_by_hand():
    base = {"w": torch.zeros(4)}
    one = {"w": torch.tensor([3.0, -1.0, 0.5, 2.0])}
    two = {"w": torch.tensor([1.0, 2.0, -0.4, -5.0])}
    # density 0.5 keeps the 2 largest of each: one -> [3, 0, 0, 2], two -> [0, 2, 0, -5]
    # elected signs of the sums [3, 2, 0, -3]: +, +, 0, -; agreeing entries averaged
    assert ties(base, [one, two], density=0.5)["w"].tolist() == [3.0, 2.0, 0.0, -5.0]


def test_surgery_edits_the_most_opposed_rows():
    probe = torch.tensor([1.0, 0.0])
    state = {"layers.0.mlp.gate_proj.weight": torch.tensor([[-1.0, 0.0], [1.0, 0.0]]),
             "layers.1.mlp.gate_proj.weight": torch.tensor([[-1.0, 1.0], [0.0, 1.0]]),
             "layers.0.other.weight": torch.tensor([[-1.0, 0.0]])}
    out, edited = surgery(state, probe, k=2, alpha=0.5)
    # -cos: row (0,0) 1.0, (1,0) 0.707, (1,1) 0, (0,1) -1 -> the first two, shifted by 0.5 * probe
    assert edited == [("layers.0.mlp.gate_proj.weight", 0), ("layers.1.mlp.gate_proj.weight", 0)]
    assert out["layers.0.mlp.gate_proj.weight"].tolist() == [[-0.5, 0.0], [1.0, 0.0]]
    assert out["layers.1.mlp.gate_proj.weight"].tolist() == [[-0.5, 1.0], [0.0, 1.0]]
    assert state["layers.0.mlp.gate_proj.weight"][0, 0] == -1.0  # the input is not modified
    assert torch.equal(out["layers.0.other.weight"], state["layers.0.other.weight"])


def test_probe_separates_the_classes():
    torch.manual_seed(0)
    direction = torch.tensor([0.6, 0.8, 0.0])
    pos, neg = torch.randn(50, 3) + 2 * direction, torch.randn(50, 3) - 2 * direction
    assert float(train_probe(pos, neg) @ direction) > 0.9


def test_merge_and_surgery_commands_on_saved_models(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText

    other = tmp_path / "other"
    subprocess.run(["cp", "-r", str(tiny_model_dir), str(other)], check=True)
    weights = load_file(other / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, other / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "merged"
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "merge", str(tiny_model_dir), str(other),
                             "--method", "slerp", "--t", "0.5", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    merged = load_file(out / "model.safetensors")
    key = next(k for k in merged if k.endswith("q_proj.weight"))
    base = load_file(tiny_model_dir + "/model.safetensors")[key]
    assert torch.allclose(merged[key], slerp_tensor(base, base + 0.01, 0.5))
    AutoModelForImageTextToText.from_pretrained(out)  # still a loadable model
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "merge", str(tiny_model_dir), str(other), "--method",
                             "slerp", "--t", "domain_adaptation", "--out", str(tmp_path / "scheduled")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    scheduled = load_file(tmp_path / "scheduled" / "model.safetensors")
    first = next(k for k in scheduled if "layers.0." in k and k.endswith("self_attn.q_proj.weight"))
    assert torch.allclose(scheduled[first], load_file(tiny_model_dir + "/model.safetensors")[first])  # t = 0
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "merge", str(tiny_model_dir), "--method", "ties",
                             "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert result.returncode == 2 and "needs --base" in result.stderr
    hidden = merged[key].shape[1]
    torch.save(torch.randn(hidden), tmp_path / "probe.pt")
    result = subprocess.run([sys.executable, "-m", "mmpost.cli", "surgery", str(out), "--probe",
                             str(tmp_path / "probe.pt"), "--k", "3", "--out", str(tmp_path / "edited")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "edited 3 rows" in result.stdout, result.stderr
    AutoModelForImageTextToText.from_pretrained(tmp_path / "edited")
