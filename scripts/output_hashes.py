"""Hash every output of two small runs, to show that a refactoring changes no result.

    python scripts/output_hashes.py run OUT [--repo CHECKOUT]   # writes OUT/hashes.json
    python scripts/output_hashes.py hash OUT [--repo CHECKOUT]  # hashes an earlier run's OUT again
    python scripts/output_hashes.py compare A/hashes.json B/hashes.json

`run` drives a checkout's front doors (default: this one; give an older commit's worktree to get
the "before"): the quick demo (`multi_stage/run_demo.py --quick --stage3`: both work spaces, their report)
and a 12-iteration end-to-end run on the synthetic data (validation and checkpoints at 6 and 12,
then the test with the CRF). Then every output file is hashed: label maps, CAMs and images by
their bytes, checkpoints by their tensors (torch.save's bytes differ between runs, the tensors do
not), JSON files with their timing fields dropped (a record's time of writing too, and the hashes
of the input records it names, which hold theirs); the run's folders are replaced by placeholders
in JSON, text files and checkpoints' settings. Logs, TensorBoard event files and the dataset caches
(which hold their source files' times) are left out. `compare` lists every file whose hash differs
or that only one run wrote; exit 1 if any.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SKIPPED_SUFFIXES = (".log", ".html", ".txt")
TEXT_SUFFIXES = (".yaml", ".csv", ".md")
TIME_KEYS = ("time", "seconds", "written", "date", "elapsed", "eta")
# A provenance record names its input folders by a hash of their own records, which hold when they were
# written: that hash differs between any two runs. The input records are hashed themselves.
DERIVED_KEYS = ("record",)


def _replace(text: str, places: dict[str, str]) -> str:
    for path, name in places.items():
        text = text.replace(path, name)
    return text


def _tensor_hash(obj, digest, places: dict[str, str]) -> None:
    if isinstance(obj, torch.Tensor):
        digest.update(str((obj.dtype, tuple(obj.shape))).encode())
        digest.update(obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            digest.update(str(key).encode())
            _tensor_hash(obj[key], digest, places)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _tensor_hash(item, digest, places)
    else:
        digest.update(_replace(repr(obj), places).encode())


def _json_clean(obj, places: dict[str, str]):
    if isinstance(obj, dict):
        return {k: _json_clean(v, places) for k, v in obj.items()
                if k not in DERIVED_KEYS and not any(t in k.lower() for t in TIME_KEYS)}
    if isinstance(obj, list):
        return [_json_clean(v, places) for v in obj]
    if isinstance(obj, str):
        return _replace(obj, places)
    return obj


def file_hash(path: Path, places: dict[str, str]) -> str:
    digest = hashlib.sha256()
    if path.suffix == ".pth":
        _tensor_hash(torch.load(path, map_location="cpu", weights_only=True), digest, places)
    elif path.suffix == ".json":
        digest.update(json.dumps(_json_clean(json.loads(path.read_text()), places), sort_keys=True).encode())
    elif path.suffix in TEXT_SUFFIXES:
        digest.update(_replace(path.read_text(), places).encode())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def hash_tree(out: Path, places: dict[str, str]) -> dict[str, str]:
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and p.suffix not in SKIPPED_SUFFIXES
             and "tfevents" not in p.name and "/tb/" not in str(p) and p.name != "hashes.json"
             and p.relative_to(out).parts[0] != "cache"]  # derived caches hold file times
    return {str(p.relative_to(out)): file_hash(p, places) for p in files}


def run(out: Path, repo: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable

    # The checkout's own package first, whatever the interpreter has installed.
    env = {**os.environ, "PYTHONPATH": str(repo), "WAVECAM_CACHE": str(out / "cache")}

    def call(*argv: str) -> None:
        print("+", " ".join(argv), flush=True)
        subprocess.run([py, *argv], cwd=repo, env=env, check=True)

    call("multi_stage/run_demo.py", "--quick", "--stage3", "--out", str(out / "demo"))
    data, e2e = out / "synthetic_voc", out / "e2e"
    call("-m", "wavecam.data.synthetic", "--out", str(data), "--n-train", "40", "--n-val", "10", "--size", "128",
         "--seed", "0")
    settings = ["--set", f"dataset.root={data}", f"dataset.cache_dir={out / 'cache'}", "train.max_iters=12",
                "train.cam_iters=4", "train.prop_label_iters=8", "train.eval_iters=6", "train.log_iters=6"]
    call("end_to_end/train.py", "--config", "end_to_end/configs/synthetic.yaml", "--work_dir", str(e2e),
         "--device", "cpu", *settings)
    call("end_to_end/test.py", "--config", "end_to_end/configs/synthetic.yaml", "--work_dir", str(e2e),
         "--device", "cpu", "--crf", *settings)
    write_hashes(out, repo)


def write_hashes(out: Path, repo: Path) -> None:
    hashes = hash_tree(out, {str(out.resolve()): "<OUT>", str(out): "<OUT>", str(repo.resolve()): "<REPO>"})
    (out / "hashes.json").write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(f"{len(hashes)} files hashed into {out / 'hashes.json'}")


def compare(a: Path, b: Path) -> int:
    ha, hb = json.loads(a.read_text()), json.loads(b.read_text())
    differ = sorted(k for k in ha.keys() & hb.keys() if ha[k] != hb[k])
    only_a, only_b = sorted(ha.keys() - hb.keys()), sorted(hb.keys() - ha.keys())
    for title, names in (("differ", differ), (f"only in {a}", only_a), (f"only in {b}", only_b)):
        for name in names:
            print(f"{title}: {name}")
    print(f"{len(ha.keys() & hb.keys()) - len(differ)} files identical, {len(differ)} differ, "
          f"{len(only_a)} + {len(only_b)} in one run only")
    return 1 if differ or only_a or only_b else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    h = sub.add_parser("hash", help="hash the outputs of an earlier `run` again")
    h.add_argument("out", type=Path)
    h.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args()
    if args.command == "run":
        run(args.out.resolve(), args.repo.resolve())
        return 0
    if args.command == "hash":
        write_hashes(args.out.resolve(), args.repo.resolve())
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
