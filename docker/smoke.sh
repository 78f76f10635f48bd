#!/usr/bin/env bash
# Smoke test of the CPU image: build it, run it, wait for /readyz, send a real photo to /features and
# /spot, check the answers, then stop and remove the container.
#
#   docker/smoke.sh [DATA_DIR]            # DATA_DIR: arg, else $SPOT_DATA, else ../shared/data
#   BASE=spot-test/python:3.11-bookworm docker/smoke.sh   # a local base (docker/test-base.sh) where
#                                                         # Docker Hub cannot be reached
# Other settings: IMAGE (tag to build, spot-artifacts:cpu), PORT (18000; the container uses the host's
# network so no bridge or published port is needed), PHOTO (photos/sklearn/china.jpg under DATA_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${SPOT_DATA:-../shared/data}}
PHOTO=${PHOTO:-$DATA/photos/sklearn/china.jpg}
IMAGE=${IMAGE:-spot-artifacts:cpu}
PORT=${PORT:-18000}
URL=http://127.0.0.1:$PORT
NAME=spot-smoke-$$
[ -f "$PHOTO" ] || { echo "FAIL: no photo at $PHOTO (pass DATA_DIR or set SPOT_DATA / PHOTO)"; exit 1; }

echo "== build $IMAGE${BASE:+ on $BASE}"
build_started=$(date +%s)
nice -n 10 docker build --network host ${BASE:+--build-arg BASE="$BASE"} -f docker/Dockerfile -t "$IMAGE" . \
  >/tmp/$NAME.build.log 2>&1 || { tail -30 /tmp/$NAME.build.log; echo "FAIL: docker build"; exit 1; }
echo "built in $(($(date +%s) - build_started)) s (log /tmp/$NAME.build.log)"

cleanup() { docker rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== run $NAME on $URL"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
started=$(now_ms)
# --read-only + /tmp as tmpfs: what Kubernetes' readOnlyRootFilesystem in deploy/k8s asks of the image.
docker run -d --name "$NAME" --network host --read-only --tmpfs /tmp -e PORT="$PORT" \
  "$IMAGE" --host 127.0.0.1 --port "$PORT" >/dev/null
until curl -sf "$URL/readyz" >/tmp/$NAME.readyz.json; do
  if [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" != true ]; then
    docker logs "$NAME" | tail -20
    echo "FAIL: the container exited"
    exit 1
  fi
  if (($(now_ms) - started > 120000)); then
    docker logs "$NAME" | tail -20
    echo "FAIL: /readyz not 200 after 120 s"
    exit 1
  fi
  sleep 0.1
done
cold_start=$(printf %.2f "$(($(now_ms) - started))e-3")
echo "ready after ${cold_start} s: $(cat /tmp/$NAME.readyz.json)"

echo "== POST /features and /spot with $PHOTO"
curl -sf -F "files=@$PHOTO" "$URL/features?layers=conv4,conv5&pool=avg" >/tmp/$NAME.features.json
curl -sf -F "files=@$PHOTO" "$URL/spot?heatmap=png" >/tmp/$NAME.spot.json
python3 - "/tmp/$NAME.features.json" "/tmp/$NAME.spot.json" <<'EOF'
import json, math, sys

features, spot = (json.load(open(p)) for p in sys.argv[1:])
assert features["model"] == "spot-tiny64" and features["provider"] == "CPUExecutionProvider", features
f = features["results"][0]["features"]
for layer in ("conv4", "conv5"):
    values = f[layer]["values"]
    assert f[layer]["shape"] == [len(values)] and all(math.isfinite(v) for v in values), layer
print(f"/features: conv4 {f['conv4']['shape']}, conv5 {f['conv5']['shape']}")
r = spot["results"][0]
assert 0.0 <= r["artifact_score"] <= 1.0 and 0.0 <= r["peak_score"] <= 1.0, r
cells = [v for row in r["mask"]["values"] for v in row]
assert len(cells) == r["mask"]["rows"] * r["mask"]["cols"] and all(0.0 <= v <= 1.0 for v in cells)
assert r["heatmap"]["shape"] == [r["height"], r["width"]] and r["heatmap"]["png_base64"]
print(f"/spot: artifact_score {r['artifact_score']:.4f} on {r['width']}x{r['height']}, "
      f"{r['tiling']['tiles']} tiles, mask {r['mask']['rows']}x{r['mask']['cols']}")
EOF

echo "== image checks"
uid=$(docker exec "$NAME" id -u)
[ "$uid" != 0 ] || { echo "FAIL: the service runs as root"; exit 1; }
docker exec "$NAME" python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in image'"
for _ in $(seq 60); do  # the HEALTHCHECK (every 10 s) must agree
  health=$(docker inspect -f '{{.State.Health.Status}}' "$NAME")
  [ "$health" = starting ] || break
  sleep 1
done
[ "$health" = healthy ] || { echo "FAIL: docker health is $health"; exit 1; }
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "uid $uid, no torch, docker health $health"

echo "== result ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "image $IMAGE: $((size / 1000000)) MB; cold start (docker run -> /readyz 200): ${cold_start} s"
echo "PASS"
