"""Which tables docs/results.md holds (`python -m training report`): each one's rows, probe files and
reference rows. Adding a run to the report is adding its row here."""

# The 64 px rows, probed on both test sets: (label, run); the probe files are <run>-tin and <run>-c10.
TINY64_ROWS = [
    ("supervised, 12,000 steps (the reference row until 2026-11-26)", "tiny64-supervised"),
    ("ours, paper setting", "tiny64-ours"),
    ("ours, raw photos also real (25%): v3, and v4's features", "tiny64-raw25"),
    ("the same + 12,000 detect steps: v4's and v5's heads", "tiny64-detect"),
    ("v3's game with the mask head off (mask weight 0, from v3's autoencoder)", "tiny64-nomask"),
    ("v3's game with the authors' code quirk (L_C in the repair loss): v5's features", "tiny64-quirk"),
    ("the code quirk on v1's recipe (no raw photos as real, v1's autoencoder)", "tiny64-quirk-noraw"),
    ("v5's features + 7,500 more steps of the same game", "tiny64-quirk-more"),
    ("the same + 7,500 more again", "tiny64-quirk-more2"),
    ("the same + 7,500 more a third time", "tiny64-quirk-more3"),
    ("the same + 7,500 more a fourth time", "tiny64-quirk-more4"),
    ("version 7's features + 7,500 steps of rotations (RotNet's pretext)", "tiny64-v7-rot7500"),
    ("version 7's features + 15,000 steps of rotations", "tiny64-v7-rot15k"),
    ("v7's features + 7,500 steps of rotations, lr 1e-4: v8's features", "tiny64-v7-rot7500-lr1e-4"),
    ("version 8's features + 7,500 more steps of rotations, lr 1e-4: v9's features", "tiny64-v8-rot7500-lr1e-4"),
    ("version 9's features + 7,500 more steps of rotations, lr 1e-4", "tiny64-v9-rot7500-lr1e-4"),
    ("version 9's features + 15,000 more steps of rotations, lr 1e-4: v10's features", "tiny64-v9-rot15k-lr1e-4"),
    ("version 9's features + 15,000 steps of rotations in two schedules, lr 1e-4", "tiny64-v9-rot7500x2-lr1e-4"),
    ("version 9's features + 7,500 steps of 16 images at all four turns, lr 1e-4", "tiny64-v9-rot4x-lr1e-4"),
    ("version 10's features + 7,500 more steps of rotations, lr 1e-4", "tiny64-v10-rot7500-lr1e-4"),
    ("version 10's features + 7,500 steps of 16 images at all four turns, lr 1e-4", "tiny64-v10-rot4x-lr1e-4"),
    ("version 10's features + 18,000 steps of 16 images at all four turns, lr 1e-4", "tiny64-v10-rot4x18k-lr1e-4"),
    ("version 11's features + 18,000 more steps of 16 images at all four turns, lr 1e-4", "tiny64-v11-rot4x18k-lr1e-4"),
    (
        "version 12's features + 18,000 more steps of 16 images at all four turns, lr 1e-4: v13's",
        "tiny64-v12-rot4x18k-lr1e-4",
    ),
    (
        "version 13's features + 18,000 more steps of 16 images at all four turns, lr 1e-4: v14's",
        "tiny64-v13-rot4x18k-lr1e-4",
    ),
    (
        "version 14's features + 6,000 steps of all four turns, half the pictures warped (the 2020 follow-up)",
        "tiny64-v14-rot4x-warp6k-lr1e-4",
    ),
]

# (title, plot file, random row, supervised row, [(label, probe name), ...][, a second supervised row])
# in display order
TABLES = [
    (
        "Tiny-ImageNet-200 val (probes trained on Tiny-ImageNet train labels), 64 px models",
        "probe-tiny-imagenet.png",
        "tiny64-random-tin",
        "tiny64-supervised-long-tin",
        [(label, f"{run}-tin") for label, run in TINY64_ROWS],
        "eq15k-supervised-game-tin",
    ),
    (
        "CIFAR-10 test (transfer: models pre-trained on Tiny-ImageNet, probes on CIFAR-10 train labels)",
        "probe-cifar10-transfer.png",
        "tiny64-random-c10",
        "tiny64-supervised-long-c10",
        [(label, f"{run}-c10") for label, run in TINY64_ROWS],
        "eq15k-supervised-game-c10",
    ),
    (
        "Full width, trained on a lent GPU (H200, 340 s): Tiny-ImageNet-200 val",
        "probe-tiny64-full-tiny-imagenet.png",
        "tiny64-full-random-tin",
        "tiny64-full-supervised-tin",
        [("ours, full width (scripts/train-gpu)", "tiny64-full-ours-tin")],
    ),
    (
        "Full width, trained on a lent GPU (H200, 340 s): CIFAR-10 test (transfer)",
        "probe-tiny64-full-cifar10.png",
        "tiny64-full-random-c10",
        "tiny64-full-supervised-c10",
        [("ours, full width (scripts/train-gpu)", "tiny64-full-ours-c10")],
    ),
    (
        "CIFAR-10 test, ablations at a reduced cifar32 schedule (stage 2: 1,000 steps from one autoencoder)",
        "probe-cifar10-ablations.png",
        "c32-random-c10",
        "c32-supervised-c10",
        [
            ("ours, drop rate 0.7 (paper)", "c32-full-c10"),
            ("the same, seed 1", "c32-full-seed1-c10"),
            ("drop rate 0.5", "c32-drop0.5-c10"),
            ("drop rate 0.3", "c32-drop0.3-c10"),
            ("repair network off", "c32-no-repair-c10"),
            ("mask head off", "c32-no-mask-c10"),
            ("mask head off, seed 1", "c32-no-mask-seed1-c10"),
            ("the authors' code: L_C in the repair loss", "c32-code-quirk-c10"),
            ("the authors' code, seed 1", "c32-code-quirk-seed1-c10"),
        ],
    ),
]


# Equal compute (issue 20): every row trained by the same loop for the same steps of 64 images, probed by
# the same code under both BatchNorm protocols. The rows' files are named eq15k-<row>-<protocol>-<data>.
EQUAL_ROWS = [
    ("rotation only (RotNet's pretext)", "rotation"),
    (
        "the paper's game, clean recipe (autoencoder 5,000 steps, then the game, stopped at chance at step 1,000 "
        "of 10,000; no raw images as real)",
        "game",
    ),
]
EQUAL_DATA = [
    ("Tiny-ImageNet-200 val", "tin"),
    ("CIFAR-10 test (transfer)", "c10"),
]
EQUAL_PROTOCOLS = [
    ("BatchNorm as the pretext left it", "game"),
    ("BatchNorm re-estimated on the probe's training images", "bnprobe"),
]
for _data, _d in EQUAL_DATA:
    for _protocol, _p in EQUAL_PROTOCOLS:
        TABLES.append(
            (
                f"Equal compute, 15,000 steps of 64 images: {_data}, {_protocol}",
                f"probe-eq15k-{_p}-{_d}.png",
                f"eq15k-random-{_p}-{_d}",
                f"eq15k-supervised-{_p}-{_d}",
                [(label, f"eq15k-{row}-{_p}-{_d}") for label, row in EQUAL_ROWS],
            )
        )


# The shipped features under the other BatchNorm protocol (issue 20 asks for both): against the equal-compute
# random and supervised rows probed the same way.
for _data, _d in EQUAL_DATA:
    TABLES.append(
        (
            f"The shipped features (version 14), BatchNorm re-estimated on the probe's training images: {_data}",
            f"probe-v14-bnprobe-{_d}.png",
            f"eq15k-random-bnprobe-{_d}",
            f"eq15k-supervised-bnprobe-{_d}",
            [("version 14's features (`v13-rot4x18k-lr1e-4`)", f"tiny64-v13-rot4x18k-lr1e-4-bnprobe-{_d}")],
        )
    )
