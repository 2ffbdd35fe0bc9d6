"""The proxy benchmark (bench/proxy.py, wavecam/proxy.py): its recipe, the command at toy sizes, and
the table merged from seeds run as separate commands. Nothing here depends on the numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wavecam.errors import WavecamError
from wavecam.multi_stage.flags import finalize, parse_args
from wavecam.proxy import CRITERIA, ROWS, SECTIONS, TOY_CHANGES, load_recipe, table, with_changes

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "proxy.py"
RECIPES = sorted((ROOT / "multi_stage" / "configs").glob("proxy*.yaml"))
TOY = list(TOY_CHANGES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_proxy_recipes_hold_flags_the_runner_takes(path, tmp_path):
    """The passes and stage3 sections are --config files of run_wavecam_voc.py: a typo fails here."""
    recipe = load_recipe(path)
    for i, flags in enumerate((recipe.passes, recipe.stage3)):
        file = tmp_path / f"{i}.yaml"
        file.write_text(yaml.safe_dump(flags))
        finalize(parse_args("voc", ["--config", str(file), "--work_space", str(tmp_path)]))
    assert recipe.data["style"] == "proxy"


def test_recipe_mistakes_are_refused(tmp_path):
    good = yaml.safe_load(RECIPES[0].read_text())
    cases = [({**good, "pasess": {}}, "expected the sections"),
             ({**good, "fine_tune": {"learning_rat": 1}}, "unknown fine_tune keys"),
             ({**good, "passes": {**good["passes"], "wavecam_learning_rate": 1}}, "belong in fine_tune")]
    for i, (raw, message) in enumerate(cases):
        path = tmp_path / f"{i}.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(WavecamError, match=message):
            load_recipe(path)
    with pytest.raises(WavecamError, match="SECTION.KEY=VALUE"):
        with_changes(load_recipe(RECIPES[0]), ["cam_num_epoches=3"])
    assert with_changes(load_recipe(RECIPES[0]), ["passes.cam_resize_long=[1,2]"]).passes["cam_resize_long"] == [1, 2]


def test_table_shows_every_seed_mean_range_and_criteria():
    rows = {key: 0.1 * (i + 1) / len(ROWS) for i, (key, _, _) in enumerate(ROWS)}
    recipe = {k: getattr(load_recipe(RECIPES[0]), k) for k in SECTIONS}
    summaries = [{"seed": k, "rows": {key: v + 0.01 * k for key, v in rows.items()}, "n_eval": {"train": 8, "val": 4},
                  "recipe": recipe} for k in (0, 2)]
    text = table(summaries)
    body = text.splitlines()
    assert body[0].split()[2:] == ["seed", "0", "seed", "2", "mean", "min-max"]
    assert len([line for line in body if line.startswith(("CAM", "ReCAM", "WaveCAM", "IRN", "stage"))]) == len(ROWS)
    criteria = [line for line in body if line.startswith(("1.", "2.", "3."))]
    assert len(criteria) == len(CRITERIA) and all("seed 0" in c and "seed 2" in c for c in criteria)
    # Seeds of two regimes make no table.
    summaries[1]["recipe"] = {**recipe, "data": {**recipe["data"], "size": 128}}
    with pytest.raises(WavecamError, match="seeds 0 and 2 ran different recipes \\(data.size\\)"):
        table(summaries)


@pytest.mark.slow
def test_proxy_command_at_toy_sizes_merges_seeds_run_apart(tmp_path):
    out = tmp_path / "proxy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def proxy(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--workers", "0", *args],
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    first = proxy("--seeds", "0", "--set", *TOY).stdout
    assert "seed 0, seconds per stage" in first and "total" in first
    second = proxy("--seeds", "1", "--set", *TOY).stdout
    merged = second[second.rindex("\nlabels ") + 1:]  # the passes print tables of their own before it
    rows = [line for line in merged.splitlines()[2:] if line and line[0].isalpha()]
    labels = [line[:26].strip() for line in rows if not line[0].isdigit() and not line.startswith("(")]
    assert labels == [label for _, label, _ in ROWS]
    for line in rows[:len(ROWS)]:
        cells = line[26:].split()
        assert cells[0] in ("train", "val") and len(cells) == 1 + 2 + 2  # on, two seeds, mean, min-max
    assert all(f"{text}:" in second for text, _, _, _ in CRITERIA)

    summary = json.loads((out / "seed1" / "summary.json").read_text())
    assert set(summary["rows"]) == {key for key, _, _ in ROWS} and summary["recipe"]["data"]["n_train"] == 16
    assert all(0 <= v <= 1 for v in summary["rows"].values())
    # Same folder, the seeds already run: the table alone, nothing run again.
    again = proxy("--seeds", "0", "1", "--set", *TOY).stdout
    assert "seed 0: summarised already" in again and again.endswith(merged)
    assert proxy("--table-only").stdout.strip() == merged.strip()
    # A seed summarised under another recipe is refused before anything runs, and kept.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--seeds", "2",
                           "--set", *TOY, "data.size=72"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "seed0 was run with another recipe (data.size)" in proc.stderr
    assert not (out / "seed2").exists() and (out / "seed0" / "summary.json").is_file()
