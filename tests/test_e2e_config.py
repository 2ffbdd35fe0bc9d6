"""End-to-end config: the YAML files merged into the structured schema, `--set` overrides, the errors
a wrong config gets (one line naming the file or override and the key), the config a run saves."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wavecam.end_to_end.config import Config, as_dict, config_changes, config_yaml, load_config
from wavecam.errors import WavecamError

E2E = Path(__file__).resolve().parents[1] / "end_to_end"
VOC = E2E / "configs" / "voc.yaml"


def edited(tmp_path: Path, edit) -> Path:
    """voc.yaml with `edit` applied to its parsed mapping, written to a file of its own."""
    cfg = yaml.safe_load(VOC.read_text())
    edit(cfg)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize("name", ["voc", "coco", "synthetic"])
def test_shipped_configs_load_with_the_defaults_of_optional_keys(name):
    cfg = load_config(E2E / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config) and cfg.dataset.name == ("coco" if name == "coco" else "voc")
    assert cfg.dataset.cache_dir is None
    assert (cfg.dataset.coco_split_images, cfg.dataset.coco_crowd) == ("annotated", "ignore")
    assert type(cfg.cam.scales) is list and all(type(s) is float for s in cfg.cam.scales)


def test_an_unknown_key_in_the_file_is_refused_naming_file_and_key(tmp_path):
    path = edited(tmp_path, lambda c: c["train"].update(max_iter=100))  # a typo of max_iters
    with pytest.raises(WavecamError, match=rf"^{re.escape(str(path))}: the config has no key 'train.max_iter' "
                                           r"\(a typo\? every key is in end_to_end/configs/voc.yaml\)$"):
        load_config(path)
    with pytest.raises(WavecamError, match="no key 'schedule'"):
        load_config(edited(tmp_path, lambda c: c.update(schedule={"power": 1.0})))


def test_an_unknown_key_in_set_is_refused():
    with pytest.raises(WavecamError, match=r"^--set 'train.max_iter=5': the config has no key 'train.max_iter'"):
        load_config(VOC, ["train.max_iter=5"])
    with pytest.raises(WavecamError, match="no key 'trian'"):
        load_config(VOC, ["trian.max_iters=5"])
    with pytest.raises(WavecamError, match="expected section.key=value"):
        load_config(VOC, ["train.max_iters"])


def test_a_value_of_the_wrong_type_is_refused(tmp_path):
    path = edited(tmp_path, lambda c: c["train"].update(max_iters="20k"))
    with pytest.raises(WavecamError, match=rf"^{re.escape(str(path))}: train.max_iters: Value '20k' .* Integer"):
        load_config(path)
    with pytest.raises(WavecamError, match=r"^--set 'cam.scales=\[1.0, big\]': cam.scales\[1\]: .* Float"):
        load_config(VOC, ["cam.scales=[1.0, big]"])
    with pytest.raises(WavecamError, match="train.amp: .*not a valid bool"):
        load_config(VOC, ["train.amp=sometimes"])
    with pytest.raises(WavecamError, match="work_dir: Incompatible value 'None'"):
        load_config(VOC, ["work_dir=null"])
    with pytest.raises(WavecamError, match="^--set 'train=4': train is a section of keys, not a value"):
        load_config(VOC, ["train=4"])


def test_missing_keys_are_listed_in_one_message(tmp_path):
    def drop(c):
        del c["work_dir"], c["train"]["seed"], c["par"]

    with pytest.raises(WavecamError, match=r": missing config key\(s\) work_dir, train.seed, par.num_iter, "
                                           r"par.dilations; compare with end_to_end/configs/voc.yaml$"):
        load_config(edited(tmp_path, drop))


def test_an_old_config_is_told_what_replaced_samples_per_gpu(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(VOC.read_text().replace("  batch_size: 4", "  samples_per_gpu: 2"))
    with pytest.raises(WavecamError, match="samples_per_gpu is not a key of this config: set train.batch_size"):
        load_config(old)


def test_overrides_are_applied_as_yaml_values_of_the_keys_type():
    cfg = load_config(VOC, ["train.max_iters=100", "test.scales=[1]", "model.pretrained=null",
                            "optimizer.learning_rate=1e-4", "dataset.coco_crowd=background", "train.max_iters=7"])
    assert cfg.train.max_iters == 7  # the last one wins
    assert cfg.test.scales == [1.0] and type(cfg.test.scales[0]) is float
    assert cfg.model.pretrained is None
    assert cfg.optimizer.learning_rate == 1e-4  # PyYAML reads 1e-4 as a string; the key's type makes it a float
    assert cfg.dataset.coco_crowd == "background"  # a key with a default can be set though voc.yaml leaves it out


def test_the_resolved_config_reads_back_and_is_plain(tmp_path):
    cfg = load_config(VOC, ["train.max_iters=7", "dataset.root=/data/VOC2012"])
    saved = tmp_path / "config.yaml"
    saved.write_text(config_yaml(cfg))
    assert load_config(saved) == cfg
    plain = as_dict(cfg)
    assert type(plain) is dict and type(plain["cam"]["scales"]) is list and plain["train"]["max_iters"] == 7


def test_config_changes_count_a_key_an_older_checkpoint_lacks_as_its_default():
    cfg = load_config(VOC)
    written_before_the_defaults = yaml.safe_load(VOC.read_text())  # no dataset.coco_* keys
    assert config_changes(written_before_the_defaults, cfg) == []
    assert config_changes(as_dict(load_config(VOC, ["train.max_iters=9", "dataset.coco_crowd=background"])),
                          cfg) == ["dataset.coco_crowd", "train.max_iters"]


@pytest.mark.slow
def test_a_wrong_override_at_the_front_door_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(E2E / "train.py"), "--config", str(VOC), "--work_dir", "w",
                           "--set", "train.max_iter=5"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --set 'train.max_iter=5': the config has no key 'train.max_iter' "
        "(a typo? every key is in end_to_end/configs/voc.yaml)"]
    assert not (tmp_path / "w").exists()
