"""``mmpost report``: the HTML page of a real (short) run shows its curves, table and samples; in a
headless browser when one is installed."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import mmpost
from mmpost.tools.report import write_report

QUICK = {"data.train_size": 8, "data.eval_size": 3, "sft.steps": 4, "sft.batch_size": 2, "rl.steps": 2,
         "rl.batch_size": 2, "rl.sampling.group_size": 2, "rl.sampling.max_new_tokens": 8, "threads": 1, "eval.sampled": False,
         "trackers": [], "eval.every": 2}


@pytest.fixture(scope="module")
def run_dir(mmpost_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    mmpost.train("arithmetic", output_dir=str(out), **QUICK)
    return out


def test_report_has_curves_table_and_samples(run_dir):
    page = write_report(run_dir)
    text = page.read_text()
    for name in ("losses.png", "rewards.png", "kl_entropy.png", "heldout.png"):  # heldout: the eval.every curve
        assert f'src="{name}"' in text
        pixels = np.asarray(Image.open(page.parent / name).convert("L"), dtype=float)
        assert pixels.std() > 5  # a drawn plot, not a blank image
    assert "<th>before</th>" in text and "<th>after_sft</th>" in text and "greedy answer_match" in text
    assert text.count('class="card"') == 3 * 3  # three held-out samples before, after SFT and after


def test_final_model_has_a_model_card(run_dir):
    card = (run_dir / "final" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "| sft | sft | 4 | 2 |" in card and "| greedy answer_match |" in card


def test_report_of_a_non_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        write_report(tmp_path)


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: scripts/report_screenshot.sh needs one")
def test_report_renders_in_a_headless_browser(run_dir, tmp_path):
    page = write_report(run_dir)
    shot = tmp_path / "report.png"
    subprocess.run(["bash", "scripts/report_screenshot.sh", str(run_dir), str(shot)], check=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10 and page.exists()


def test_grounding_samples_get_boxes_drawn(tmp_path):
    """A grounding sample's card shows the model's box (red) and the gold box (green) on the image."""
    import json

    run = tmp_path / "run"
    samples = run / "samples" / "after"
    samples.mkdir(parents=True)
    Image.new("RGB", (112, 112), (255, 255, 255)).save(samples / "000_input0.png")
    (samples / "samples.jsonl").write_text(json.dumps({
        "index": 0, "output": "<answer>[60, 60, 100, 100]</answer>", "reward": 0.1, "reason": None,
        "box": [10, 10, 50, 50], "box_format": "pixels"}) + "\n")
    (run / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "stage_index": 0, "step": 1, "loss/sft": 1.0}) + "\n")
    text = write_report(run).read_text()
    assert 'src="boxes_after_000.png"' in text
    drawn = np.asarray(Image.open(run / "report" / "boxes_after_000.png"))  # drawn at 2x
    assert tuple(drawn[20, 40]) == (0, 200, 0) and tuple(drawn[120, 140]) == (220, 0, 0)


def test_audio_and_video_samples_play_in_the_report(tmp_path):
    """Audio inputs are saved as .wav (an <audio> player in the report), video inputs as a GIF."""
    import json

    import soundfile

    from mmpost.evaluation import save_samples

    run = tmp_path / "run"
    wave = np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)).astype(np.float32)
    clip = np.zeros((4, 3, 32, 32), np.float32)
    for t in range(4):
        clip[t, 0, 8:16, 4 * t:4 * t + 8] = 255  # a red square moving right
    save_samples(run / "samples" / "after", [
        {"row": {"audios": [wave], "question": "How many beeps?"}, "output": "<answer>2</answer>", "reward": 1.0},
        {"row": {"videos": [clip], "question": "Which way?"}, "output": "<answer>left</answer>", "reward": 0.0}])
    (run / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "stage_index": 0, "step": 1, "loss/sft": 1.0}) + "\n")
    saved, rate = soundfile.read(run / "samples" / "after" / "000_input0.wav")
    assert rate == 16000 and np.allclose(saved, wave, atol=1e-4)
    gif = Image.open(run / "samples" / "after" / "001_input0.gif")
    assert gif.n_frames == 4 and gif.convert("RGB").getpixel((5, 10))[0] > 200  # frame 0: square at x 0-7
    text = write_report(run).read_text()
    assert '<audio controls src="../samples/after/000_input0.wav">' in text
    assert 'src="../samples/after/001_input0.gif"' in text
