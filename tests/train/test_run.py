"""End to end through the command line: a tiny run writes checkpoints, survives kill -9 and resumes to
exactly the weights of an uninterrupted run; a 2-process gloo torchrun run completes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from training import checkpoint
from training.log import read_metrics

from ..conftest import REPO, perturbed_copy, run_cli

STEPS = ["--ae_steps=60", "--spot_steps=30", "--ckpt_every=5", "--log_every=10", "--sample_every=30"]


def _cli(run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "training",
        "train",
        "--preset",
        "tiny",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *STEPS,
        *extra,
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir, data_root):
    run_dir = tmp_path_factory.mktemp("full")
    result = subprocess.run(_cli(run_dir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_a_tiny_run_writes_what_a_person_needs(uninterrupted):
    names = {p.name for p in uninterrupted.iterdir()}
    assert {"checkpoint.pt", "config.json", "metrics.jsonl", "summary.jsonl", "samples", "tensorboard"} <= names
    assert sorted(p.name for p in (uninterrupted / "samples").iterdir()) == [
        "ae-0000030.png",
        "ae-0000060.png",
        "spot-0000030.png",
    ]
    assert any(p.name.startswith("events.") for p in (uninterrupted / "tensorboard").iterdir())
    records = read_metrics(uninterrupted)
    assert [r["step"] for r in records if r["stage"] == "ae"] == [10, 20, 30, 40, 50, 60]
    spot = [r for r in records if r["stage"] == "spot"][-1]
    for key in (
        "loss/disc/ce",
        "loss/disc/mask",
        "loss/repair/adv",
        "loss/repair/rec",
        "img_per_s",
        "val/mask_ap",
        "val/psnr",
    ):
        assert key in spot
    state = checkpoint.load(uninterrupted / "checkpoint.pt")
    assert state["stage"] == "spot" and state["step"] == 30 and state["completed"] == ["ae", "spot"]
    assert json.loads((uninterrupted / "config.json").read_text())["train"]["spot_steps"] == 30


def test_kill_9_then_resume_reaches_the_same_weights(tmp_path, uninterrupted):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cli(run_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.load(run_dir / "checkpoint.pt")
    result = subprocess.run(_cli(run_dir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from stage {killed_at['stage']} step {killed_at['step']}" in result.stderr
    resumed = checkpoint.load(run_dir / "checkpoint.pt")
    reference = checkpoint.load(uninterrupted / "checkpoint.pt")
    assert (resumed["stage"], resumed["step"]) == ("spot", 30)
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]  # half-written files are cleaned up
    logged = [(r["stage"], r["step"]) for r in read_metrics(run_dir)]
    assert logged == [(r["stage"], r["step"]) for r in read_metrics(uninterrupted)]  # none twice
    for net in ("ae", "repair", "disc"):
        for key, value in reference["networks"][net].items():
            assert torch.allclose(resumed["networks"][net][key].float(), value.float(), atol=1e-5), (
                f"{net}.{key} differs"
            )


def test_records_logged_after_the_checkpoint_are_forgotten_on_resume(tmp_path):
    """Killed at spot step 25 with its checkpoint at 20: step 25 will be logged again, so it goes now."""
    from training.log import forget_records_after

    rows = [("ae", 10), ("ae", 20), ("spot", 10), ("spot", 20), ("spot", 25)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"stage": a, "step": b}) + "\n" for a, b in rows))
    (tmp_path / "summary.jsonl").write_text(json.dumps({"stage": "ae", "steps": 20}) + "\n")
    forget_records_after(tmp_path, {"stage": "spot", "step": 20, "completed": ["ae"]})
    assert [(r["stage"], r["step"]) for r in read_metrics(tmp_path)] == rows[:4]
    assert (tmp_path / "summary.jsonl").read_text().count("\n") == 1
    forget_records_after(tmp_path, None)  # no checkpoint: the run starts over
    assert read_metrics(tmp_path) == [] and (tmp_path / "summary.jsonl").read_text() == ""


def test_stopped_between_two_stages_then_resumed_reaches_the_same_weights(tmp_path, uninterrupted):
    """The autoencoder's stage done, the next not begun: the spot stage starts from the random state the
    run stopped with (it used to start from the one the networks' construction left)."""
    run_dir = tmp_path / "between"
    first = subprocess.run(_cli(run_dir, "--stages=ae"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert checkpoint.load(run_dir / "checkpoint.pt")["completed"] == ["ae"]
    result = subprocess.run(_cli(run_dir, "--stages=ae,spot"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = checkpoint.load(run_dir / "checkpoint.pt")
    reference = checkpoint.load(uninterrupted / "checkpoint.pt")
    for net in ("ae", "repair", "disc"):
        for key, value in reference["networks"][net].items():
            assert torch.allclose(resumed["networks"][net][key].float(), value.float(), atol=1e-5), f"{net}.{key}"


def test_a_run_folder_is_resumed_as_its_own_preset(tmp_path, uninterrupted):
    result = subprocess.run(
        [sys.executable, "-m", "training", "train", "--preset", "tiny64", "--run-dir", str(uninterrupted)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "holds a tiny run" in result.stderr


def test_a_finished_run_is_left_alone_and_cannot_silently_grow(tmp_path, uninterrupted):
    before = (uninterrupted / "checkpoint.pt").read_bytes()
    again = subprocess.run(_cli(uninterrupted), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already finished; nothing to do" in again.stderr, again.stderr[-2000:]
    longer = subprocess.run(
        _cli(uninterrupted, "--spot_steps=40"), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert longer.returncode == 2 and "spot already finished" in longer.stderr and "--init_from" in longer.stderr
    assert (uninterrupted / "checkpoint.pt").read_bytes() == before
    assert json.loads((uninterrupted / "config.json").read_text())["train"]["spot_steps"] == 30
    typo = _cli(
        tmp_path / "typo", "--stages=spot", f"--init_from={uninterrupted / 'checkpoint.pt'}", "--init_networks=ae,disk"
    )
    result = subprocess.run(typo, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "'disk' is not one of" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_killed_at_random_points_several_times_still_reaches_the_same_weights(tmp_path, uninterrupted):
    import random

    rng = random.Random(7)
    run_dir = tmp_path / "killed-often"
    kills, killed = [], 0
    for _ in range(4):
        proc = subprocess.Popen(_cli(run_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 8.0))  # anywhere: start-up, mid-step, mid-checkpoint-write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        if (run_dir / "checkpoint.pt").exists():
            state = checkpoint.load(run_dir / "checkpoint.pt")  # never truncated: loads every time
            kills.append((state["stage"], state["step"]))
    result = subprocess.run(_cli(run_dir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert killed >= 2 and kills, (killed, kills)  # really killed mid-run, after checkpoints existed
    resumed = checkpoint.load(run_dir / "checkpoint.pt")
    reference = checkpoint.load(uninterrupted / "checkpoint.pt")
    assert (resumed["stage"], resumed["step"]) == ("spot", 30)
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    for net in ("ae", "repair", "disc"):
        for key, value in reference["networks"][net].items():
            assert torch.allclose(resumed["networks"][net][key].float(), value.float(), atol=1e-5), f"{net}.{key}"


def test_a_corrupt_checkpoint_is_refused_with_a_clear_message(tmp_path, uninterrupted):
    run_dir = tmp_path / "corrupt"
    run_dir.mkdir()
    data = (uninterrupted / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    result = run_cli("train", "--run-dir", str(run_dir), "--no-progress")
    assert result.returncode == 2
    assert "corrupt" in result.stderr and "Traceback" not in result.stderr


def test_resume_with_another_model_shape_is_refused(tmp_path, uninterrupted):
    from training.config import Config
    from training.loop import train

    cfg = Config.from_dict(checkpoint.load(uninterrupted / "checkpoint.pt")["config"])
    cfg.model.width = 0.25
    with pytest.raises(ValueError, match="another model config"):
        train(cfg, uninterrupted, progress=False)


def test_torchrun_two_processes_with_gloo(tmp_path, cache_dir, data_root):
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
        "-m", "training", "train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
        "--ae_steps=6", "--spot_steps=6", "--log_every=3", "--ckpt_every=3", "--sample_every=6",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["completed"] == ["ae", "spot"] and state["world_size"] == 2
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [3, 6, 3, 6]  # rank 0 alone writes
    assert records[-1]["img_per_s"] > 0


def test_spot_eval_reports_every_metric(tmp_path, uninterrupted, data_root):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(data_root / "photos" / "sklearn" / "flower.jpg").resize((90, 70)).save(photos / "flower.png")
    Image.new("L", (40, 50), 90).save(photos / "grey.png")
    out = tmp_path / "spot.json"
    args = ["spot-eval", "--checkpoint", str(uninterrupted / "checkpoint.pt"), "--drop-rates", "0.7,0.3"]
    result = run_cli(*args, "--photos", str(photos), "--limit", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [p["drop_rate"] for p in report["pairs"]] == [0.7, 0.3]
    for pair in report["pairs"]:
        assert {"roc_auc", "ap", "acc", "real_acc", "fake_acc", "mask_ap"} <= set(pair)
        assert 0 <= pair["roc_auc"] <= 1 and 0 <= pair["mask_ap"] <= 1
    assert report["images"] == 64 and 0 <= report["raw_heldout_false_alarm_rate"] <= 1
    assert report["summary"]["spot/roc_auc@drop0.7"] == round(report["pairs"][0]["roc_auc"], 4)
    photos_report = report["raw_photos"]
    assert (
        photos_report["photos"] == 2 and photos_report["per_photo"]["flower.png"]["tiles"] == 20
    )  # 4 rows x 5 columns of 32 px tiles at half overlap


def test_evaluate_reports_psnr_and_spotting(uninterrupted):
    result = run_cli("evaluate", "--checkpoint", str(uninterrupted / "checkpoint.pt"), "--limit", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["images"] == 64 and report["stage"] == "spot"
    assert 5 < report["psnr"] < 60 and report["summary"]["ae/psnr_heldout_db"] == round(report["psnr"], 4)
    assert {"acc_real", "acc_fake", "auc", "mask_ap", "acc_raw"} <= set(report)


def test_a_slower_repair_net_takes_fewer_and_smaller_steps(tmp_path, uninterrupted):
    """repair_every=3 over 6 steps: the discriminator is updated 6 times, the repair net twice (steps 0
    and 3), and at repair_lr_scale=0.1 its learning rate is a tenth of the discriminator's."""
    run_dir = tmp_path / "rebalanced"
    init = ["--stages=spot", f"--init_from={uninterrupted / 'checkpoint.pt'}", "--init_networks=ae,disc,repair"]
    result = subprocess.run(
        _cli(run_dir, *init, "--spot_steps=6", "--repair_every=3", "--repair_lr_scale=0.1"),
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    state = checkpoint.load(run_dir / "checkpoint.pt")
    opt = state["optimizer"]
    updates = {int(s["step"]) for s in opt["state"].values()}
    assert updates == {6, 2}
    disc, repair = (g for g in opt["param_groups"] if g["weight_decay"] > 0)
    assert disc["lr_scale"] == 1.0 and repair["lr_scale"] == 0.1
    assert repair["lr"] == pytest.approx(0.1 * disc["lr"])


def test_the_detect_stage_trains_the_discriminator_alone_against_the_frozen_repair_net(tmp_path, uninterrupted):
    run_dir = tmp_path / "detect"
    init = [f"--init_from={uninterrupted / 'checkpoint.pt'}", "--init_networks=ae,disc,repair"]
    result = subprocess.run(
        _cli(run_dir, *init, "--stages=detect", "--detect_steps=4", "--log_every=2"),
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    before = checkpoint.load(uninterrupted / "checkpoint.pt")["networks"]
    state = checkpoint.load(run_dir / "checkpoint.pt")
    after = state["networks"]
    for name in ("ae", "repair"):
        for key, value in before[name].items():
            assert torch.equal(value, after[name][key]), f"frozen {name}.{key} changed"
    assert any(not torch.equal(v, after["disc"][k]) for k, v in before["disc"].items() if v.is_floating_point())
    from training.config import Config
    from training.networks import build_networks

    disc = build_networks(Config.from_dict(state["config"]).model)["disc"]
    assert len(state["optimizer"]["state"]) == len(list(disc.parameters()))  # Adam held the discriminator only
    assert state["completed"] == ["detect"]
    from training.export import init_provenance

    init = init_provenance(Config.from_dict(state["config"]))  # the card counts both stages of the first run
    assert init["stages"] == {"ae": 60, "spot": 30} and init["wall_time_s"] > 0
    detect = [r for r in read_metrics(run_dir) if r["stage"] == "detect"]
    assert [r["step"] for r in detect] == [2, 4]
    assert {"val/auc", "val/mask_ap", "val/acc_raw", "loss/repair/adv"} <= set(detect[-1])  # adv: how fooled it is


def test_spot_eval_with_another_generator(tmp_path, uninterrupted):
    """--generator swaps in another run's autoencoder + repair net: the same weights give the same pairs
    (and figures) as the run's own, other weights other figures, reported under spot@RUN."""
    own = tmp_path / "own.json"
    args = ["spot-eval", "--checkpoint", str(uninterrupted / "checkpoint.pt"), "--drop-rates", "0.7", "--limit", "64"]
    assert run_cli(*args, "--out", str(own)).returncode == 0
    perturbed_copy(uninterrupted / "checkpoint.pt", "repair", 0.5, tmp_path / "other")
    reports = {}
    for name, generator in (("same", uninterrupted), ("other", tmp_path / "other")):
        out = tmp_path / f"{name}.json"
        result = run_cli(*args, "--generator", str(generator / "checkpoint.pt"), "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        reports[name] = json.loads(out.read_text())
    plain = json.loads(own.read_text())
    assert reports["same"]["pairs"] == plain["pairs"]
    assert reports["other"]["pairs"][0]["mask_ap"] != plain["pairs"][0]["mask_ap"]
    assert reports["other"]["generator"] == str(tmp_path / "other" / "checkpoint.pt")
    assert set(reports["other"]["summary"]) == {
        f"spot@other/{k}@drop0.7" for k in plain["pairs"][0] if k != "drop_rate"
    }


def test_a_heads_only_detect_stage_leaves_the_features_as_they_were(tmp_path, uninterrupted):
    """detect_heads_only: the mask head and fc1/fc2 learn; conv1..conv5 and their BatchNorm statistics
    (what /features serves) come out bit-identical."""
    run_dir = tmp_path / "heads"
    init = [f"--init_from={uninterrupted / 'checkpoint.pt'}", "--init_networks=ae,disc,repair"]
    result = subprocess.run(
        _cli(run_dir, *init, "--stages=detect", "--detect_steps=4", "--detect_heads_only=true", "--log_every=2"),
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    from training.stages import HEADS

    before = checkpoint.load(uninterrupted / "checkpoint.pt")["networks"]["disc"]
    after = checkpoint.load(run_dir / "checkpoint.pt")["networks"]["disc"]
    trunk = [k for k in before if not k.startswith(HEADS)]
    assert any(k.startswith("bn5.") for k in trunk) and any(k.startswith("conv1.") for k in trunk)
    for key in trunk:
        assert torch.equal(before[key], after[key]), f"trunk {key} changed"
    changed = [k for k in before if k.startswith(HEADS) and not torch.equal(before[k], after[k])]
    assert {k.split(".")[0] for k in changed} >= {"mask_head", "fc2"}
