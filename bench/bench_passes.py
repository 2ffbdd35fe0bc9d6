"""Throughput and peak memory of every multi-stage pass, ours against the plain formulation of the
paper's code, side by side in one run, with the outputs of the two compared.

    python bench/bench_passes.py [--device cuda] [--crop 512] [--cam-batch 16] [--irn-batch 32]
                                 [--cases train_cam,make_wavecam,...] [--json out.json]

Each (pass, variant) runs in a fresh process, so its peak memory is its own: peak RSS on the CPU,
`torch.cuda.max_memory_allocated` on a GPU. "ours" is what the pipeline runs with its default
flags (channels_last, cuDNN benchmark for training, same-size inference batches, vectorised losses, shared CRF
lattice, stencil random walk; `--amp` adds bf16 autocast); "plain" is the same computation written
as the reference code writes it (NCHW float32, per-image loops, ReCAM's broadcast product, one CRF
per refinement, IRN's dense transition matrix). Training figures are the network step alone
(forward, loss, backward, SGD) on in-memory batches: the data loader is left out, as it runs in
--num_workers processes beside the step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CASES = ("train_cam", "train_wavecam", "train_irn", "make_wavecam", "cam_to_ir_label", "make_sem_seg", "eval",
         "train_seg", "make_seg")


# ---------------------------------------------------------------- timing helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# ---------------------------------------------------------------- training passes
def train_case(name: str, variant: str, a, device: torch.device) -> dict:
    # A sibling module: Python puts bench/ on the path of a script run as python bench/<script>.py.
    from bench_hot_paths import plain_class_features, plain_predictor_loss

    from wavecam.labels.randomwalk import PathIndex
    from wavecam.models import CAMNet, ClassPredictor, WaveCAMNet
    from wavecam.models import cam as cam_module
    from wavecam.models.irn import AffinityDisplacementLoss, IRNet

    ours = variant == "ours"
    torch.backends.cudnn.benchmark = ours
    fmt = torch.channels_last if ours else torch.contiguous_format
    amp = ours and a.amp  # bf16 autocast; on a CPU too, where it checks the same code path
    torch.manual_seed(0)
    batch = {"train_irn": a.irn_batch, "train_seg": a.seg_batch}.get(name, a.cam_batch)
    crop = a.seg_crop if name == "train_seg" else a.crop
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, crop, crop, generator=gen).to(device, memory_format=fmt)

    if name == "train_seg":
        from wavecam.models.deeplab import build_seg_network, msc_loss, param_groups

        net = build_seg_network("deeplabv2_resnet101_msc", 21, n_blocks=a.seg_blocks)
        params = [p for g in param_groups(net, 2.5e-4, 5e-4) for p in g["params"]]
        target = torch.randint(0, 21, (batch, crop, crop), generator=gen).to(device)

        def losses():
            logits = [x.float() for x in net(images)]
            # The reference resizes each image's labels with PIL, one image at a time, on the CPU.
            return msc_loss(logits, target) if ours else sum(
                F.cross_entropy(x, plain_resize_labels(target, x.shape[-2:]).to(device), ignore_index=255)
                for x in logits)
    elif name == "train_irn":
        path_index = PathIndex(min(10, a.crop // 8), (a.crop // 4, a.crop // 4))  # IRN: radius 10
        d, s = len(path_index.search_dst), len(path_index.src_indices)
        net = IRNet(arch=a.arch)
        loss_fn = AffinityDisplacementLoss(path_index).to(device)
        labels = [(torch.rand(batch, d, s, generator=gen) < p).float().to(device) for p in (0.3, 0.3, 0.2)]
        params = [p for group in net.trainable_parameters() for p in group]

        def losses():
            edge, dp = net(images)
            return loss_fn(edge, dp, *labels)["total"]
    else:
        label = (torch.rand(batch, 20, generator=gen) < 0.15).float()
        label[:, 0] = 1
        label = label.to(device)
        if name == "train_cam":
            net = CAMNet(20, arch=a.arch)
            params = list(net.parameters())

            def losses():
                return F.multilabel_soft_margin_loss(net(images).float(), label)
        else:
            net = WaveCAMNet(20, arch=a.arch)
            predictor = ClassPredictor(20, net.classifier.in_channels).to(device)
            params = [*net.parameters(), *predictor.parameters()]
            if not ours:  # ReCAM's (B, C, D, h*w) product and its per-image predictor loop
                cam_module.class_features = plain_class_features

            def losses():
                logits, fused = net(images)
                fused = fused.float()
                ce = predictor(fused, label)[0] if ours else plain_predictor_loss(predictor, fused, label)
                return F.multilabel_soft_margin_loss(logits.float(), label) + ce
    net.to(device, memory_format=fmt).train()
    opt = torch.optim.SGD([p for p in params if p.requires_grad], lr=1e-4, momentum=0.9)

    values = []

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = losses()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        values.append(loss.item())

    for _ in range(a.warmup):
        step()
    times = [timed(step, device) for _ in range(a.steps)]
    per_step = statistics.median(times)
    res = {"seconds": per_step, "per": f"step of {batch}", "throughput": batch / per_step, "unit": "images/s",
           "outputs": {"loss": values}}
    res["peak_mb"] = peak_mb(device)  # before the loader timing, which is not the step's
    if ours and a.loader_images and name != "train_seg":
        res["loader_s"] = loader_seconds(name, a)
    return res


def loader_seconds(name: str, a, resample: str = "pil") -> float:
    """Median time one loader worker takes for one sample of the pass (JPEG decoding, augmentation,
    for IRN the pair labels, for make_wavecam the resized scales unless `resample` is "torch") on
    synthetic VOC-sized images; training samples at --loader-crop."""
    from wavecam.data.datasets import AffinityDataset, ClassificationDataset, InferenceDataset
    from wavecam.data.synthetic import make_synthetic_voc
    from wavecam.data.voc import VOC12
    from wavecam.labels.randomwalk import PathIndex

    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    root = make_synthetic_voc(tmp, n_train=a.loader_images, n_val=2, size=max(a.size), seed=0)
    source = VOC12(root, tmp / "cache")
    ids = source.split("train")
    if name == "train_irn":
        # ir_label maps: the ground truth stands in for them (same sizes and label values).
        (tmp / "ir_label").mkdir()
        for i in ids:
            (tmp / "ir_label" / f"{i}.png").write_bytes(source.mask_path(i).read_bytes())
        crop = a.loader_crop
        path_index = PathIndex(min(10, crop // 8), (crop // 4, crop // 4))
        data = AffinityDataset(source, ids, str(tmp / "ir_label"), path_index, crop_size=crop)
    elif name == "make_wavecam":
        data = InferenceDataset(source, ids, scales=tuple(a.scales) if resample == "pil" else None)
    else:
        data = ClassificationDataset(source, ids, crop_size=a.loader_crop)
    data[0]
    times = []
    for i in range(len(data)):
        start = time.perf_counter()
        data[i]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- make_wavecam
def plain_multiscale_cam(features_fn, image, weight, keys, scales):
    """IRN/ReCAM's make_cam for one image: per scale, the image and its flip as a batch of two,
    the CAMs of every class resized, summed, then restricted to the present classes."""
    from wavecam.labels.cam import _rescale, strided_size, strided_up_size

    size = tuple(image.shape[1:])
    small, up = strided_size(size, 4), strided_up_size(size, 16)
    outputs = []
    for s in scales:
        x = _rescale(image[None], s)[0]
        cams = F.relu(F.conv2d(features_fn(torch.stack([x, x.flip(-1)])), weight))
        outputs.append(cams[0] + cams[1].flip(-1))
    strided = torch.sum(torch.stack([F.interpolate(o[None], small, mode="bilinear", align_corners=False)[0]
                                     for o in outputs]), 0)[keys]
    high_res = torch.sum(torch.stack([F.interpolate(o[None], up, mode="bilinear", align_corners=False)[0]
                                      for o in outputs]), 0)[keys][:, : size[0], : size[1]]
    strided /= F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5
    high_res /= F.adaptive_max_pool2d(high_res, (1, 1)) + 1e-5
    return strided, high_res


def make_wavecam_case(variant: str, a, device: torch.device) -> dict:
    from wavecam.labels.cam import multiscale_cam_batch
    from wavecam.models import CAMNet
    from wavecam.models.cam import cam_weight

    ours = variant == "ours"
    torch.backends.cudnn.benchmark = False  # as the pipeline: VOC image sizes vary
    torch.manual_seed(0)
    net = CAMNet(20, arch=a.arch)
    # make_wavecam's kernel: classifier times predictor weight.
    weight = cam_weight(net.classifier.weight, torch.randn_like(net.classifier.weight)).to(device)
    fmt = torch.channels_last if ours else torch.contiguous_format
    net.to(device, memory_format=fmt).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(a.images, 3, *a.size, generator=gen).to(device)
    keys = [torch.tensor([0, 7]).to(device) for _ in range(a.images)]
    dtype = torch.bfloat16 if ours and a.amp else None
    batch = a.infer_batch or (8 if device.type == "cuda" else 1)
    out = []

    @torch.no_grad()
    def run_all():
        out.clear()
        if ours:
            for k in range(0, a.images, batch):
                out.extend(multiscale_cam_batch(net.features, images[k:k + batch], weight, keys[k:k + batch],
                                                a.scales, memory_format=fmt, amp_dtype=dtype))
        else:
            out.extend(plain_multiscale_cam(net.features, img, weight, k, a.scales) for img, k in zip(images, keys))

    run_all()  # warm-up (and cuDNN's algorithm search)
    seconds = statistics.median(timed(run_all, device) for _ in range(a.repeats)) / a.images
    first = out[0]
    res = {"seconds": seconds, "per": "image", "throughput": 1 / seconds, "unit": "images/s",
           "outputs": {"cam": first[0].float().cpu().numpy(), "high_res": first[1].float().cpu().numpy()}}
    if ours and a.loader_images:
        # What resizing the scales as the reference does (PIL, in the loader) costs over --cam_resample torch.
        res["loader_s"] = loader_seconds("make_wavecam", a)
        res["loader_s_torch"] = loader_seconds("make_wavecam", a, resample="torch")
    return res


# ---------------------------------------------------------------- cam_to_ir_label
def _scene_inputs(a):
    """Synthetic VOC-sized images with smooth, imperfect CAMs made from their masks."""
    from wavecam.data.synthetic import make_synthetic_voc
    from wavecam.data.voc import VOC12

    tmp = Path(tempfile.mkdtemp(prefix="bench_voc_"))
    root = make_synthetic_voc(tmp, n_train=a.crf_images, n_val=2, size=max(a.size), seed=0)
    source = VOC12(root, tmp / "cache")
    rng = np.random.default_rng(0)
    items = []
    for image_id in source.split("train")[: a.crf_images]:
        img, gt = source.load_image(image_id), source.load_gt(image_id)
        keys = np.unique(gt[(gt > 0) & (gt < 255)]) - 1
        hr = np.stack([(gt == k + 1).astype(np.float32) for k in keys]) if len(keys) else np.zeros((0, *gt.shape))
        if len(keys):
            hr = F.avg_pool2d(torch.from_numpy(hr)[None], 31, 1, 15, count_include_pad=False)[0].numpy()
            hr = np.clip(hr * rng.uniform(0.6, 1.0, (len(keys), 1, 1)), 0, 1).astype(np.float32)
        items.append((img, {"keys": keys.astype(np.int64), "high_res": hr}))
    return items


def _plain_confident_label(img, cam, fg_thres, bg_thres):
    from wavecam.classes import IGNORE_INDEX
    from wavecam.labels.crf import crf_inference_label

    keys = np.concatenate([[0], cam["keys"] + 1])
    hr = cam["high_res"]

    def refined(thres):
        scores = np.concatenate([np.full((1, *hr.shape[1:]), thres, hr.dtype), hr])
        return keys[crf_inference_label(img, scores.argmax(0), n_labels=len(keys))]

    fg, bg = refined(fg_thres), refined(bg_thres)
    conf = fg.copy()
    conf[fg == 0] = IGNORE_INDEX
    conf[(fg == 0) & (bg == 0)] = 0
    return conf.astype(np.uint8)


def _ours_confident_label(item):
    from wavecam.multi_stage.passes.cam_to_ir_label import confident_label

    return confident_label(item[0], item[1], 0.35, 0.1)


def cam_to_ir_label_case(variant: str, a, device: torch.device) -> dict:
    import multiprocessing as mp

    items = _scene_inputs(a)
    if variant == "ours" and a.workers > 1:
        # The pass's own parallelism: images over --num_workers processes (spawned, as the pass does).
        with mp.get_context("spawn").Pool(a.workers) as pool:
            pool.map(_ours_confident_label, items[:1])  # workers start and import
            start = time.perf_counter()
            labels = pool.map(_ours_confident_label, items, chunksize=1)
            seconds = (time.perf_counter() - start) / len(items)
    else:
        fn = _ours_confident_label if variant == "ours" else (lambda it: _plain_confident_label(*it, 0.35, 0.1))
        start = time.perf_counter()
        labels = [fn(it) for it in items]
        seconds = (time.perf_counter() - start) / len(items)
    return {"seconds": seconds, "per": f"image ({items[0][0].shape[1]}x{items[0][0].shape[0]})",
            "throughput": 1 / seconds, "unit": "images/s", "outputs": {"labels": np.stack([lab.ravel()[:20000]
                                                                                         for lab in labels])}}


# ---------------------------------------------------------------- make_sem_seg
def make_sem_seg_case(variant: str, a, device: torch.device) -> dict:
    """Compared at --size on a GPU; on a CPU the dense walk only fits at --dense-size, so both run
    there and ours is also timed at --size."""
    ours = variant == "ours"
    torch.backends.cudnn.benchmark = False  # as the pipeline: VOC image sizes vary
    compared = tuple(a.size) if device.type == "cuda" else tuple(a.dense_size)
    res = _sem_seg_at(compared, ours, a, device)
    if ours and compared != tuple(a.size):
        res["full"] = {k: v for k, v in _sem_seg_at(tuple(a.size), ours, a, device).items() if k != "outputs"}
    return res


def _sem_seg_at(size, ours: bool, a, device: torch.device) -> dict:
    from wavecam.labels.randomwalk import propagate, propagate_dense, rw_to_label
    from wavecam.models.irn import EdgeDisplacement

    torch.manual_seed(0)
    model = EdgeDisplacement(crop_size=max(512, *size), arch=a.arch)
    model.to(device, memory_format=torch.channels_last if ours else torch.contiguous_format).eval()
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(3, *size, generator=gen).to(device)
    h, w = (size[0] + 3) // 4, (size[1] + 3) // 4
    cams = torch.rand(2, h, w, generator=gen).to(device)
    walk = propagate if ours else propagate_dense
    out = {}

    @torch.no_grad()
    def one():
        edge, _ = model(image)
        rw = walk(cams, edge, beta=10, exp_times=8, radius=5)
        out["label"] = rw_to_label(rw, np.array([0, 7]), 0.28, size)
        out["rw"] = rw.float().cpu().numpy()

    one()
    seconds = statistics.median(timed(one, device) for _ in range(a.repeats))
    return {"seconds": seconds, "per": f"image ({size[1]}x{size[0]})", "throughput": 1 / seconds,
            "unit": "images/s", "outputs": {"label": out["label"], "rw": out["rw"]}}


# ---------------------------------------------------------------- evaluation
def eval_case(variant: str, a, device: torch.device) -> dict:
    from bench_hot_paths import plain_confusion, streaming_of

    rng = np.random.default_rng(0)
    n = a.eval_images
    gts = [rng.integers(0, 21, (375, 500)).astype(np.uint8) for _ in range(n)]
    preds = [rng.integers(0, 21, (375, 500)).astype(np.uint8) for _ in range(n)]
    k = n if variant == "ours" else min(n, a.plain_eval_images)  # the plain loop is timed on k and scaled
    start = time.perf_counter()
    mat = streaming_of(preds[:k], gts[:k]) if variant == "ours" else plain_confusion(preds[:k], gts[:k], 21)
    seconds = (time.perf_counter() - start) * n / k
    first = streaming_of(preds[: a.plain_eval_images], gts[: a.plain_eval_images]) if variant == "ours" else mat
    return {"seconds": seconds, "per": f"{n} masks 500x375", "throughput": n / seconds, "unit": "masks/s",
            "outputs": {"confusion": first}}


# ---------------------------------------------------------------- stage 3
def plain_resize_labels(labels: torch.Tensor, size) -> torch.Tensor:
    """deeplab-pytorch's resize_labels: each label map through PIL's nearest, on the CPU."""
    from PIL import Image

    h, w = size
    out = [np.asarray(Image.fromarray(x.cpu().numpy().astype(np.float32)).resize((w, h), Image.NEAREST))
           for x in labels]
    return torch.as_tensor(np.stack(out)).long()


def make_seg_case(variant: str, a, device: torch.device) -> dict:
    """The segmenter on whole images (the network, its bilinear upsampling and softmax, per image as the
    reference's test loop): ours channels_last (bf16 with --amp), plain NCHW float32."""
    from wavecam.models.deeplab import build_seg_network

    ours = variant == "ours"
    torch.manual_seed(0)
    net = build_seg_network("deeplabv2_resnet101_msc", 21, n_blocks=a.seg_blocks)
    fmt = torch.channels_last if ours else torch.contiguous_format
    net.to(device, memory_format=fmt).eval()
    gen = torch.Generator().manual_seed(2)
    images = [torch.randn(1, 3, *a.size, generator=gen).to(device, memory_format=fmt) for _ in range(a.seg_images)]
    labels = []

    @torch.no_grad()
    def run_all():
        labels.clear()
        for x in images:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ours and a.amp):
                logits = net(x)
            probs = F.interpolate(logits.float(), size=a.size, mode="bilinear", align_corners=False).softmax(1)
            labels.append(probs.argmax(1).cpu().numpy())

    run_all()  # warm-up
    per = statistics.median(timed(run_all, device) for _ in range(a.repeats)) / len(images)
    return {"seconds": per, "per": "image", "throughput": 1 / per, "unit": "images/s",
            "outputs": {"labels": np.concatenate(labels)}}


# ---------------------------------------------------------------- driver
def run_case(name: str, variant: str, a) -> dict:
    device = torch.device(a.device)
    if name.startswith("train_"):
        res = train_case(name, variant, a, device)
    else:
        cases = {"make_wavecam": make_wavecam_case, "cam_to_ir_label": cam_to_ir_label_case,
                 "make_sem_seg": make_sem_seg_case, "eval": eval_case, "make_seg": make_seg_case}
        res = cases[name](variant, a, device)
    res.setdefault("peak_mb", peak_mb(device))
    return res


def compare(name: str, ours: dict, plain: dict) -> str:
    if name.startswith("train_"):
        rel = [abs(x - y) / abs(y) for x, y in zip(ours["loss"], plain["loss"])]
        return f"loss rel diff {rel[0]:.1e} at step 1, {max(rel):.1e} over {len(rel)}"
    if name == "make_wavecam":
        return f"max diff {max(np.abs(ours[k] - plain[k]).max() for k in ('cam', 'high_res')):.1e}"
    if name in ("cam_to_ir_label", "make_seg"):
        return f"labels {100 * np.mean(ours['labels'] == plain['labels']):.2f}% equal"
    if name == "make_sem_seg":
        return f"labels {100 * np.mean(ours['label'] == plain['label']):.2f}% equal, rw rel diff " \
               f"{np.abs(ours['rw'] - plain['rw']).max() / np.abs(plain['rw']).max():.1e}"
    return "equal" if np.array_equal(ours["confusion"], plain["confusion"]) else "DIFFERENT"


def child(a) -> None:
    res = run_case(a.case, a.variant, a)
    np.savez(a.out, **{k: np.asarray(v) for k, v in res.pop("outputs").items()})
    print("RESULT " + json.dumps(res))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--cam-batch", type=int, default=16)
    p.add_argument("--irn-batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="training steps before timing (cuDNN benchmarking)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    p.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    p.add_argument("--scales", type=float, nargs="+", default=(1.0, 0.5, 1.5, 2.0))
    p.add_argument("--images", type=int, default=8, help="images per make_wavecam timing")
    p.add_argument("--infer-batch", type=int, default=0, help="make_wavecam same-size batch (0: 8 CUDA, 1 CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--crf-images", type=int, default=8)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cam_to_ir_label processes")
    p.add_argument("--dense-size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"),
                   help="image size of the plain (dense) random walk on a CPU, where VOC size does not fit")
    p.add_argument("--loader-images", type=int, default=16,
                   help="synthetic VOC-sized images to time the training loaders on (0: skip)")
    p.add_argument("--loader-crop", type=int, default=512, help="crop of the loader timing (the paper's)")
    p.add_argument("--eval-images", type=int, default=1449)
    p.add_argument("--plain-eval-images", type=int, default=50)
    p.add_argument("--seg-crop", type=int, default=321, help="train_seg's crop (deeplab-pytorch's)")
    p.add_argument("--seg-batch", type=int, default=5, help="train_seg's images per forward (BATCH_SIZE.TRAIN)")
    p.add_argument("--seg-blocks", type=int, nargs=4, default=(3, 4, 23, 3), help="DeepLab-v2's blocks per stage")
    p.add_argument("--seg-images", type=int, default=4, help="images per make_seg timing")
    p.add_argument("--amp", action="store_true", help="ours with bf16 autocast")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p, p.parse_args(argv)


def main(argv=None) -> int:
    parser, a = parse(argv)
    if a.case:
        child(a)
        return 0
    forwarded = [x for x in (argv if argv is not None else sys.argv[1:]) if x != "--json"]
    if a.json:
        forwarded = [x for x in forwarded if x != a.json]
    if a.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = f"CPU, {torch.get_num_threads()} threads"
    print(f"{device_name}; torch {torch.__version__}; crop {a.crop}, CAM batch {a.cam_batch}, IRN batch {a.irn_batch}, "
          f"{a.arch}{', bf16 autocast' if a.amp else ''}")
    print(f"{'pass':<16} {'per':<22} {'ours s':>9} {'plain s':>9} {'speed-up':>8} {'ours MB':>9} {'plain MB':>9}"
          "   outputs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.cases.split(","):
            if name not in CASES:
                parser.error(f"unknown case {name}; choose from {', '.join(CASES)}")
            res, outs = {}, {}
            for variant in ("ours", "plain"):
                out = os.path.join(tmp, f"{name}_{variant}.npz")
                cmd = [sys.executable, __file__, *forwarded, "--case", name, "--variant", variant, "--out", out]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not lines:
                    print(f"{name} {variant} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    return 1
                res[variant] = json.loads(lines[-1][len("RESULT "):])
                with np.load(out, allow_pickle=False) as z:
                    outs[variant] = {k: z[k] for k in z.files}
            o, pl = res["ours"], res["plain"]
            cmp = compare(name, outs["ours"], outs["plain"])
            ratio = pl["seconds"] / o["seconds"] if o["per"] == pl["per"] else None
            ratio_s = f"{ratio:7.1f}x" if ratio else "       -"
            print(f"{name:<16} {o['per']:<22} {o['seconds']:9.4f} {pl['seconds']:9.4f} {ratio_s} "
                  f"{o['peak_mb']:9.0f} {pl['peak_mb']:9.0f}   {cmp}" + ("" if ratio else f" (plain per {pl['per']})"))
            if "full" in o:
                print(f"{name:<16} {o['full']['per']:<22} {o['full']['seconds']:9.4f} {'-':>9} {'-':>8}"
                      f" {'':9} {'':9}   dense walk does not fit here")
            rows.append({"pass": name, "ours": o, "plain": pl, "speedup": ratio, "outputs": cmp})
    loaders = []
    for r in rows:
        o = r["ours"]
        # Training steps were timed at --crop: their throughput is scaled by pixel count to the loader's crop.
        scale = 1.0 if r["pass"] == "make_wavecam" else (a.crop / a.loader_crop) ** 2
        if "loader_s" in o:
            loaders.append((r["pass"], o["loader_s"], o["throughput"] * scale))
        if "loader_s_torch" in o:
            loaders.append((f"{r['pass']} (torch)", o["loader_s_torch"], o["throughput"] * scale))
    if loaders:
        print(f"\n{f'loader (training at crop {a.loader_crop})':<30} {'s/sample':>9} {'workers to keep up':>19}")
        for name, sec, throughput in loaders:
            print(f"{name:<30} {sec:9.4f} {sec * throughput:19.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": device_name, "settings": {
            k: v for k, v in vars(a).items() if k not in ("case", "variant", "out", "json")}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
