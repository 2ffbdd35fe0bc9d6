"""Bad inputs of the report and of the end-to-end evaluate.py: one readable message naming the file,
exit code 2, no traceback. Table-driven, as tests/test_bad_input.py, into which its rows will move."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from wavecam.io import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT / "end_to_end"
CONFIG = E2E / "configs" / "synthetic.yaml"  # MiT-B1 from random initialisation, VOC's 21 classes
VALID = {"miou": 0.5, "iou": [0.6, 0.4], "n_images": 2}


@dataclass(frozen=True)
class Case:
    id: str
    # Writes the bad input under the given folder (with a VOC root at hand); returns the command and
    # the path its error must name.
    setup: Callable[[Path, Path], tuple[list[str], Path]]
    expected: tuple[str, ...]


def report_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "wavecam.report", *map(str, args)]


def work_space(tmp: Path, **results) -> Path:
    """A work space whose results/<pass>.json hold `results`, written verbatim (as text where a
    string is given, so that JSON can be anything)."""
    ws = tmp / "ws"
    (ws / "results").mkdir(parents=True)
    for stage, content in results.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (ws / "results" / f"{stage}.json").write_text(text)
    return ws


def out_is_a_file(tmp: Path, voc: Path):
    out = tmp / "report.txt"
    out.write_text("")
    return report_cmd(work_space(tmp, eval_cam=VALID), "--out", out), out


def out_under_a_file(tmp: Path, voc: Path):
    (tmp / "somefile.txt").write_text("")
    out = tmp / "somefile.txt" / "report"
    return report_cmd(work_space(tmp, eval_cam=VALID), "--out", out), out


def results(stage: str, content, **others):
    def setup(tmp: Path, voc: Path):
        ws = work_space(tmp, **{stage: content}, **others)
        return report_cmd(ws, "--out", tmp / "r"), ws / "results" / f"{stage}.json"
    return setup


def e2e_evaluate(state_dict: Callable[[], dict]):
    """evaluate.py with the synthetic config on a checkpoint holding `state_dict()`; the checkpoint
    is refused before any image is read."""
    def setup(tmp: Path, voc: Path):
        checkpoint = tmp / "other.pth"
        save_checkpoint(checkpoint, state_dict())
        return [sys.executable, str(E2E / "evaluate.py"), "--config", str(CONFIG), "--device", "cpu",
                "--checkpoint", str(checkpoint), "--work_dir", str(tmp / "w"),
                "--set", f"dataset.root={voc}"], checkpoint
    return setup


def resnet_cam() -> dict:
    from wavecam.models import CAMNet

    return CAMNet(20, pretrained=None, arch="resnet18").state_dict()


def mit_b0_train_state() -> dict:
    """A train state of the end-to-end layout whose encoder and decoder are MiT-B0's, a size the
    config does not build."""
    from wavecam.models.e2e import SegFormerHead
    from wavecam.models.mit import mit

    encoder = mit("mit_b0", None, (4, 2, 2, 1))
    model = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    model |= {f"decoder.{k}": v for k, v in SegFormerHead(encoder.embed_dims, 256, 21).state_dict().items()}
    return {"model": model, "iteration": 4}


def mit_b0_segformer() -> dict:
    """An mmseg SegFormer checkpoint on MiT-B0 (its backbone alone)."""
    from wavecam.models.mit import mit

    return {"state_dict": {f"backbone.{k}": v for k, v in mit("mit_b0").state_dict().items()}}


TRIES = "re-run the eval pass that writes it (--{}_pass True"
CASES = [
    Case("report_out_is_a_file", out_is_a_file, ("is a file, not a folder", "choose another --out")),
    Case("report_out_under_a_file", out_under_a_file,
         ("somefile.txt is a file, so no folder can be made under it", "choose another --out")),
    Case("report_results_list", results("eval_cam", "[0.5, 0.4]"),
         ("not a results file of eval_cam", "expected a JSON object with miou, iou, n_images, found a JSON list",
          TRIES.format("eval_cam"))),
    Case("report_results_empty_object", results("eval_cam", {}),
         ("not a results file of eval_cam", "found one without miou, iou, n_images", TRIES.format("eval_cam"))),
    Case("report_results_missing_keys", results("eval_sem_seg", {"miou": 0.5}, eval_cam=VALID),
         ("not a results file of eval_sem_seg", "found one without iou, n_images", TRIES.format("eval_sem_seg"))),
    Case("report_results_garbage_values",
         results("eval_seg", {"miou": "high", "iou": "all", "n_images": -1}, eval_cam=VALID),
         ("not a results file of eval_seg", 'miou is "high", expected a number in 0..1',
          'iou is "all", expected a list of numbers in 0..1 or null', "n_images is -1, expected an integer >= 0")),
    Case("report_results_out_of_range",
         results("eval_cam", {"miou": 1.5, "iou": [0.5, 2], "n_images": 2.5, "threshold": "x"}),
         ("miou is 1.5, expected a number in 0..1", "iou is [0.5, 2], expected", "n_images is 2.5",
          'threshold is "x", expected a number')),
    Case("report_results_not_json", results("eval_cam", "{miou: 0.5"),
         ("not valid JSON", "re-run the pass that writes it")),
    Case("e2e_resnet_cam_checkpoint", e2e_evaluate(resnet_cam),
         ("does not fit the end-to-end WaveCAM network on MiT-B1 with 21 classes (encoder.*, decoder.*",
          "unexpected: stage1.", "It holds no MiT encoder", "Give --checkpoint one written by a run of this config's "
          "model.backbone and dataset")),
    Case("e2e_mit_of_another_size", e2e_evaluate(mit_b0_train_state),
         ("does not fit the end-to-end WaveCAM network on MiT-B1 with 21 classes", "shape mismatch: ",
          "checkpoint (256, 32) vs model (256, 64)", "It holds a MiT-B0 encoder (model.backbone mit_b0) and 21 classes",
          "--set model.backbone=")),
    Case("e2e_segformer_of_another_size", e2e_evaluate(mit_b0_segformer),
         ("does not fit the encoder and decoder of the end-to-end WaveCAM network on MiT-B1 with 21 classes, in "
          "mmseg's SegFormer layout (backbone.*, decode_head.*)", "missing: decoder.",
          "It holds a MiT-B0 encoder (model.backbone mit_b0).")),
]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    from wavecam.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("voc"), n_train=2, n_val=1, size=32, seed=0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_naming_the_file(case, voc, tmp_path):
    cmd, named = case.setup(tmp_path, voc)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index("error: "):]
    assert str(named) in errors[0], message
    for text in case.expected:
        assert text in message, f"{text!r} not in {message}"
