"""engine.trainer.Trainer: the one ceremony of every trainer (state, log lines, TensorBoard, the end)."""

import re

import torch

from wavecam.engine.runtime import init, loss_scaler
from wavecam.engine.sampling import batch_plan
from wavecam.engine.state import TrainState
from wavecam.engine.trainer import Trainer
from wavecam.multi_stage.runner import main


def scalars(folder) -> dict[str, list[int]]:
    """The steps of every scalar tag in the TensorBoard event files under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def toy(tmp_path, stop=6, save_iters=2):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    ctx = init("cpu")
    state = TrainState(tmp_path / "state.pth", {"lr": "0.1"}, name="toy")
    trainer = Trainer("toy", ctx, model, opt, sched, loss_scaler(ctx.device, None), state, stop=stop,
                      plan=batch_plan(2, 1), seed=0, log_iters=2, save_iters=save_iters, tb_dir=tmp_path / "tb")
    batches = [{"x": torch.randn(2, 3), "y": torch.randn(2, 1)} for _ in range(stop)]

    def loss_of(batch, t, k):
        return {"loss": ((model(batch["x"]) - batch["y"]) ** 2).mean()}

    return trainer, batches, loss_of


def test_a_run_logs_saves_and_ends_with_its_weights(tmp_path):
    trainer, batches, loss_of = toy(tmp_path)
    assert trainer.open(fresh=False) == 0
    trainer.fit(batches, loss_of)
    assert trainer.state.path.is_file(), "saved every save_iters steps"
    trainer.finish({tmp_path / "w.pth": trainer.model.state_dict()})
    assert (tmp_path / "w.pth").is_file() and not trainer.state.path.exists(), "the end removes the state"
    assert scalars(tmp_path / "tb")["toy/loss"] == [2, 4, 6]


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole, batches, loss_of = toy(tmp_path / "whole")
    whole.open(fresh=False)
    whole.fit(batches, loss_of)

    first, batches, loss_of = toy(tmp_path / "cut", stop=4)
    first.open(fresh=False)
    first.fit(batches[:4], loss_of)  # saved at step 4
    second, batches, loss_of = toy(tmp_path / "cut")
    assert second.open(fresh=False) == 4
    second.fit(batches[4:], loss_of)
    for a, b in zip(whole.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    fresh, _, _ = toy(tmp_path / "cut")
    assert fresh.open(fresh=True) == 0 and not fresh.state.path.exists()


def test_train_cam_logs_and_writes_scalars_like_every_trainer(voc_root, tmp_path):
    ws = tmp_path / "ws"
    argv = (f"--voc12_root {voc_root} --work_space {ws} --pretrained none --num_workers 0 --cam_crop_size 48 "
            "--cam_resize_long 40 56 --cam_batch_size 4 --cam_num_epoches 2 --train_list train "
            "--train_cam_pass True").split()
    assert main("voc", argv) == 0
    log = (ws / "sample_train_eval.log").read_text()
    lines = re.findall(r"iter (\d+)/(\d+)  eta \S+  .*loss .* img/s", log)
    assert lines and lines[-1][0] == lines[-1][1], "a MetricLogger line with ETA, the last at the last step"
    steps = scalars(ws / "tb" / "train_cam")
    assert {"train_cam/loss", "train_cam/lr"} <= set(steps) and steps["train_cam/loss"][-1] == int(lines[-1][1])
