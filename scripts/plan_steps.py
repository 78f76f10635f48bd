"""Split a training time budget between the two stages from a short run's measured speed.

    python scripts/plan_steps.py RUN/metrics.jsonl SECONDS  ->  prints "AE_STEPS SPOT_STEPS"

Each stage's speed is its last logged window (the first includes warm-up); a quarter of the time
goes to the autoencoder, the rest to the discriminator stage, as in the CPU runs' ratio.
"""

import json
import sys
from pathlib import Path

metrics = Path(sys.argv[1])
rows = [json.loads(line) for line in metrics.open()]
budget = float(sys.argv[2])
batch = json.loads(metrics.with_name("config.json").read_text())["train"]["batch_size"]
speed = {r["stage"]: r["img_per_s"] / batch for r in rows}  # steps/s, last window wins
ae_steps = max(10, int(0.25 * budget * speed["ae"]) // 10 * 10)
spot_steps = max(10, int(0.75 * budget * speed["spot"]) // 10 * 10)
print(f"speed (steps/s): {speed}", file=sys.stderr)
print(ae_steps, spot_steps)
